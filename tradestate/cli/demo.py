"""``tradestate demo``: the whole story on the embedded default."""

from __future__ import annotations

from typing import Annotated

import typer

from ..render import console, err_console, to_json
from .common import ConfigOption, DbOption, command, exit_codes, redact, settings


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the ``tradestate`` command."""

    @app.command(epilog=exit_codes("a step of the demo failed"))
    @command
    def demo(
        db: DbOption = None,
        reset: Annotated[bool, typer.Option(help="Drop the tradestate tables in --db first.")] = False,
        json: Annotated[bool, typer.Option("--json", help="The story on stderr; at the end one JSON object on "
                                                          "stdout (ok, exit_code, db).")] = False,
        config: ConfigOption = None,
    ) -> None:
        """Record a simulated trading session, then read the same state back in a new process
        (default database: demo-data/ in this directory; never $TRADESTATE_DB or the config file's
        database, so a demo cannot write into a configured trading log unless --db names it)."""
        from ..tools.demo.session import DEMO_URL
        from ..tools.demo.session import main as run_demo

        settings(config)  # a malformed config file is still refused
        url = db or DEMO_URL
        code = run_demo(url, reset=reset, console=err_console if json else console)
        if json:
            print(to_json({"ok": code == 0, "exit_code": code, "db": redact(url)}))
        raise typer.Exit(code)
