"""``tradestate replay ...``: post-mortems from the log."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``tradestate`` command."""
