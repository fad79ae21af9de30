"""``tradestate recover`` and ``tradestate checkpoint``: crash recovery from checkpoints."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``tradestate`` command."""
