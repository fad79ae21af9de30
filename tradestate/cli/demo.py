"""``tradestate demo``: the whole story on the embedded default."""

from __future__ import annotations

from typing import Annotated

import typer

from ..domain.errors import TradestateError
from ..render import console
from .common import DbOption
from .common import fail as _fail


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        db: DbOption = None,
        reset: Annotated[bool, typer.Option(help="Drop the tradestate tables in --db first.")] = False,
    ) -> None:
        """Record a simulated trading session, then read the same state back in a new process."""
        from ..tools.demo.session import main as run_demo

        try:
            code = run_demo(db, reset=reset, console=console)
        except TradestateError as e:
            _fail(str(e))
        raise typer.Exit(code)
