"""``tradestate recover`` and ``tradestate checkpoint``: crash recovery from checkpoints."""

from __future__ import annotations

import os
from typing import Annotated, Any, Optional

import typer

from .common import DbOption
from .common import fail as _fail
from ..domain.errors import TradestateError
from ..render import render_report

def _adapters(broker: list[str], options: dict[str, Any]) -> list[Any]:
    if not broker:
        return []
    from ..reconcile import make_adapter

    return [make_adapter(name, options) for name in broker]


def register(app: typer.Typer) -> None:
    from ..render import console, to_json

    @app.command()
    def recover(
        db: DbOption = None,
        engine_id: Annotated[str, typer.Option("--engine-id", help="The engine whose stop is checked.")] = "engine",
        strict: Annotated[bool, typer.Option("--strict", help="Any discrepancy exits non-zero and blocks trading "
                                                               "until `tradestate reconcile --ack`.")] = False,
        broker: Annotated[Optional[list[str]], typer.Option("--broker", help="Reconcile with this broker "
                                                            "(sim, alpaca, ib); repeat for several.")] = None,
        account: Annotated[Optional[str], typer.Option(help="Our account id at the broker.")] = None,
        venue: Annotated[Optional[str], typer.Option(help="The venue name our orders carry for this broker "
                                                          "(as in the intents: e.g. sim, ALPACA, IB).")] = None,
        config: Annotated[Optional[str], typer.Option(help="TOML file with the broker options.")] = None,
        sim_state: Annotated[Optional[str], typer.Option("--sim-state", help="Simulated broker state file.")] = None,
        ramp: Annotated[Optional[int], typer.Option(help="Resume at 50, 75 or 100 % of the limits (default: 50 "
                                                         "after a crash).")] = None,
        full_verify: Annotated[bool, typer.Option("--full-verify", help="Walk the whole digest chain, not only "
                                                                        "its links and the tail.")] = False,
        no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the digest chain.")] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Append nothing: reconciliation only plans (says "
                                                                "what it would append); no report, no resumption.")] = False,
        json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Recover after a crash: detect, verify, load the newest valid checkpoint, replay the tail,
        reconcile with each broker, check health, and record the report. Exit 0 = ready to trade."""
        from ..adapters.store import open_store
        from ..recovery import recover as run_recovery

        if ramp is not None and ramp not in (50, 75, 100):
            _fail("--ramp must be 50, 75 or 100")
        options: dict[str, Any] = {"account": account, "venue": venue, "config": config, "sim_state": sim_state,
                                   "api_key": os.environ.get("APCA_API_KEY_ID"),
                                   "secret_key": os.environ.get("APCA_API_SECRET_KEY")}
        try:
            store = open_store(db, create=False)
        except TradestateError as e:
            _fail(str(e))
        try:
            adapters = _adapters(broker or [], options)
            report, client = run_recovery(store, engine_id=engine_id, strict=strict, adapters=adapters,
                                          verify="none" if no_verify else ("full" if full_verify else "tail"),
                                          ramp=ramp, record=not dry_run)
        except (TradestateError, ValueError) as e:
            store.close()
            _fail(str(e))
        for adapter in adapters:
            adapter.close()
        if json:
            print(to_json(report.as_dict()))
        else:
            render_report(report, console)
        client.close()
        raise typer.Exit(0 if report.ready else 1)

    @app.command()
    def checkpoint(
        db: DbOption = None,
        list_only: Annotated[bool, typer.Option("--list", help="List the checkpoints and whether each is valid.")] = False,
        json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Write a checkpoint of the current state now (or --list them, newest first, with validation)."""
        from datetime import datetime, timezone

        from ..adapters.store import checkpoints, open_store
        from ..loading import state_at

        try:
            store = open_store(db, create=False)
        except TradestateError as e:
            _fail(str(e))
        with store:
            if list_only:
                rows = []
                head = store.trading.head()
                loaded = checkpoints.load(store, head=head)
                refused = {r.checkpoint.id: r.reasons for r in loaded.rejected}
                for c in checkpoints.list_checkpoints(store):
                    valid = "newest valid" if loaded.checkpoint and c.id == loaded.checkpoint.id else (
                        "refused: " + "; ".join(refused[c.id][:2]) if c.id in refused else "not checked (older)")
                    rows.append({"id": c.id, "position": c.position, "created_at": c.created_at.isoformat(),
                                 "open_orders": c.open_orders, "finished_orders": c.finished_orders,
                                 "bytes": c.size, "status": valid})
                if json:
                    print(to_json({"head": head, "checkpoints": rows}))
                    return
                from rich.table import Table

                table = Table(title=f"checkpoints (log head {head:,})")
                for col in ("id", "position", "created_at", "open_orders", "finished_orders", "bytes", "status"):
                    table.add_column(col)
                for r in rows:
                    table.add_row(*(f"{v:,}" if isinstance(v, int) else str(v) for v in r.values()))
                console.print(table)
                return
            state = state_at(store)
            info = checkpoints.write(store, state, now=datetime.now(timezone.utc))
            if json:
                print(to_json({"id": info.id, "position": info.position, "bytes": info.size,
                               "open_orders": info.open_orders, "finished_orders": info.finished_orders}))
            else:
                console.print(f"checkpoint {info.id} written at position {info.position:,} ({info.size:,} bytes, "
                              f"{info.open_orders} open and {info.finished_orders} finished orders)", highlight=False)
