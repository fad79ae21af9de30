"""``tradestate engines``: the operator view of the engines and their leases."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import ConfigOption, DbOption, ExitCode, JsonOption, command, exit_codes, open_log, settings


def register(app: typer.Typer) -> None:
    """Add ``engines`` to the ``tradestate`` command."""

    @app.command(epilog=exit_codes("with --check: an engine is dead (its lease expired unrenewed)"))
    @command
    def engines(
        db: DbOption = None,
        json: JsonOption = False,
        check: Annotated[bool, typer.Option("--check", help="Exit 1 when an engine is dead (for scripts and "
                                                            "alerting).")] = False,
        config: ConfigOption = None,
    ) -> None:
        """List the engines: state (active, standby, dead, stopped), lease holder, epoch and the age
        of the last lease renewal. Read-only: works on a hot standby."""
        from ..engines import engines as engine_rows
        from ..render import console, engines_table, to_json

        s = settings(config, db=db)
        store = open_log(s.db)
        try:
            rows = engine_rows(store)
        finally:
            store.close()
        dead = [r["engine_id"] for r in rows if r["state"] == "dead"]
        code = ExitCode.PROBLEM if check and dead else ExitCode.OK
        if json:
            print(to_json({"ok": code == ExitCode.OK, "exit_code": int(code), "engines": rows, "dead": dead}))
        else:
            console.print(engines_table(rows) if rows else "no engines: none has started with an engine id yet")
            for name in dead:
                console.print(f"[bold red]DEAD[/] engine {name}: its lease was not renewed in time (crashed, hung "
                              "or cut off); a standby or `tradestate recover` takes over", highlight=False)
        raise typer.Exit(int(code))
