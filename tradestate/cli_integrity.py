"""``tradestate verify``, ``backup`` and ``restore``: the digest chain and backups of the log."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``tradestate`` command."""
