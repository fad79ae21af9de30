"""``tradestate state``: the folded state of the log, now or at a given clock."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from typing import Annotated, Optional

import typer

from ..domain.integrity import quarantine_report
from ..render import console, limits_table, orders_table, positions_table, risk_table, state_json, to_json
from .common import ConfigOption, DbOption, JsonOption, command, exit_codes, fail, open_log, settings


def register(app: typer.Typer) -> None:
    """Add ``state`` to the ``tradestate`` command."""

    @app.command(epilog=exit_codes())
    @command
    def state(
        db: DbOption = None,
        json: JsonOption = False,
        at: Annotated[Optional[str], typer.Option(help="Clock for time-dependent views (ISO-8601, default now).")] = None,
        config: ConfigOption = None,
    ) -> None:
        """Open the log, fold it, and print positions, orders and risk state."""
        from ..client import TradestateClient

        s = settings(config, db=db)
        try:
            now = datetime.fromisoformat(at) if at else datetime.now(timezone.utc)
        except ValueError:
            fail(f"--at is not an ISO-8601 time: {at!r}")
        if now.tzinfo is None:
            fail("--at needs a time zone (e.g. 2026-11-20T14:31:05Z)")
        started = time.perf_counter()
        client = TradestateClient(open_log(s.db), clock=lambda: now)
        open_ms = (time.perf_counter() - started) * 1000
        with client:
            if json:
                payload = state_json(client.state, now)
                payload.update(open_ms=open_ms, pid=os.getpid(), quarantined=quarantine_report(client.state))
                print(to_json(payload))
            else:
                console.print(positions_table(client.state))
                console.print(orders_table(client.state))
                console.print(risk_table(client.state, now))
                console.print(limits_table(client.state, now))
                for q in quarantine_report(client.state):
                    console.print(f"[bold red]QUARANTINED[/] {q['kind']} {q['name']} from position {q['position']}: "
                                  f"{q['reason']} (no decision is taken on it)", highlight=False)
                console.print(f"{client.position} events folded in {open_ms:.1f} ms")
