"""``tradestate chaos``: the kill -9 harness."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``tradestate`` command."""
