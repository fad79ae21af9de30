"""What every ``tradestate`` command module shares: the --db option and the error exit."""

from __future__ import annotations

from typing import Annotated, NoReturn, Optional

import typer

from ..render import console

DbOption = Annotated[
    Optional[str],
    typer.Option("--db", help="Database URL: sqlite:///path.db or postgresql://... (default: $TRADESTATE_DB, then sqlite:///tradestate.db)"),
]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a clear error (no traceback) and exit with ``code`` (2: bad input)."""
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)
