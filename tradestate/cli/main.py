"""The ``tradestate`` command: one Typer app; each command family registers itself from its module."""

from __future__ import annotations

import sys

import typer

from ..domain.errors import TradestateError
from ..render import console
from . import bench, chaos, demo, integrity, project, reconcile, recovery, replay, serve, state

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Event-sourced trading state: a durable log of every intent, fill and risk action.",
)

for _module in (demo, state, project, serve, bench, recovery, integrity, reconcile, chaos, replay):
    _module.register(app)


def main() -> None:
    """Run the command line; a ``TradestateError`` that escapes a command is one line and exit 2."""
    try:
        app()
    except TradestateError as e:
        console.print(f"[bold red]error:[/] {e}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
