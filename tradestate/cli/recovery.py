"""``tradestate recover`` and ``tradestate checkpoint``: crash recovery from checkpoints."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from ..domain.errors import TradestateError
from ..render import render_report
from .common import (AccountOption, BaseUrlOption, BrokerOption, ClientIdOption, ConfigOption, DbOption, ExitCode,
                     HostOption, IbAccountOption, JsonOption, PortOption, SimStateOption, StrictOption, StreamUrlOption,
                     VenueOption, broker_flags, command, exit_codes, fail, make_adapters, open_log, settings)


def register(app: typer.Typer) -> None:
    """Add ``recover`` and ``checkpoint`` to the ``tradestate`` command."""
    from ..render import console, to_json

    @app.command(epilog=exit_codes("not ready to trade (a failed step, a blocked account, or a venue not "
                                   "reachable)"))
    @command
    def recover(
        db: DbOption = None,
        engine_id: Annotated[Optional[str], typer.Option("--engine-id", help="The engine whose stop is checked "
                                                         "(default: $TRADESTATE_ENGINE_ID, else every engine in "
                                                         "the log).")] = None,
        strict: StrictOption = None,
        broker: BrokerOption = None,
        account: AccountOption = None,
        venue: VenueOption = None,
        config: ConfigOption = None,
        base_url: BaseUrlOption = None,
        stream_url: StreamUrlOption = None,
        host: HostOption = None,
        port: PortOption = None,
        client_id: ClientIdOption = None,
        ib_account: IbAccountOption = None,
        sim_state: SimStateOption = None,
        ramp: Annotated[Optional[int], typer.Option(metavar="[50|75|100]", help="Resume at 50, 75 or 100 % of the "
                                                    "limits (default: 50 after a crash).")] = None,
        full_verify: Annotated[bool, typer.Option("--full-verify", help="Walk the whole digest chain, not only "
                                                                        "its links and the tail.")] = False,
        no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip the digest chain.")] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Append nothing: reconciliation only plans (says "
                                                                "what it would append); no report, no resumption.")] = False,
        rewound: Annotated[Optional[str], typer.Option("--rewound", metavar="FILE", help="A JSON file holding the "
                                                       "LogRewound a client raised (error.as_dict()): the report "
                                                       "names the acknowledged events the log lost, and "
                                                       "reconciliation re-establishes them from the venues.")] = None,
        json: Annotated[bool, typer.Option("--json", help="Print the report as JSON (errors too, on stderr).")] = False,
        from_venue: Annotated[bool, typer.Option("--from-venue", help="An empty or lost log: import each broker "
                                                 "account it holds nothing of from the venue first (creates the "
                                                 "log if need be; see reconcile --bootstrap).")] = False,
        drop_copy: Annotated[Optional[str], typer.Option("--drop-copy", help="Also read the one --broker account's "
                             "FIX 4.4 drop copy (fix://HOST:PORT?sender=..&target=..&store=DIR) and reconcile three "
                             "ways (see reconcile --drop-copy): when the API and the drop copy disagree, nothing is "
                             "corrected and the engine is not ready.")] = None,
    ) -> None:
        """Recover after a crash: detect, verify, load the newest valid checkpoint, replay the tail,
        reconcile with each broker, check health, and record the report. Exit 0 = ready to trade."""
        from ..gates import GateConfig
        from ..recovery import recover as run_recovery

        if ramp is not None and ramp not in (50, 75, 100):
            fail("--ramp must be 50, 75 or 100")
        rewind = _read_rewound(rewound) if rewound else None
        s = settings(config, db=db, engine_id=engine_id, ramp=ramp,
                     **broker_flags(broker=broker, account=account, venue=venue, strict=strict, base_url=base_url,
                                    stream_url=stream_url, host=host, port=port, client_id=client_id,
                                    ib_account=ib_account, sim_state=sim_state))
        if from_venue and not s.broker:
            fail("--from-venue needs --broker (the venue to import from)")
        if from_venue:
            from ..adapters.store import open_store

            store = open_store(s.db)  # the log may be lost: start a new one
        else:
            store = open_log(s.db)
        if drop_copy and len(s.broker or []) != 1:
            fail("--drop-copy needs exactly one --broker (the drop copy is of that account)")
        drops: list[Any] = []
        try:
            adapters = make_adapters(s)
            if drop_copy:
                from .reconcile import _drop_copy_of

                drops.append(_drop_copy_of(drop_copy, adapters[0]))
        except BaseException:
            store.close()
            raise
        try:
            report, client = run_recovery(store, engine_id=s.engine_id, strict=s.strict, adapters=adapters,
                                          verify="none" if no_verify else ("full" if full_verify else "tail"),
                                          ramp=s.ramp, record=not dry_run, rewound=rewind, from_venue=from_venue,
                                          gates=GateConfig.from_settings(s), drop_copies=drops)
        except (TradestateError, ValueError) as e:
            store.close()
            fail(str(e))
        finally:
            for adapter in [*adapters, *drops]:
                adapter.close()
        with client:
            if json:
                print(to_json(report.as_dict()))
            else:
                render_report(report, console)
        raise typer.Exit(ExitCode.OK if report.ready else ExitCode.PROBLEM)

    @app.command(epilog=exit_codes())
    @command
    def checkpoint(
        db: DbOption = None,
        list_only: Annotated[bool, typer.Option("--list", help="List the checkpoints, whether each is authenticated "
                                                "(a MAC under $TRADESTATE_CHECKPOINT_KEY) and valid.")] = False,
        json: JsonOption = False,
        config: ConfigOption = None,
    ) -> None:
        """Write a checkpoint of the current state now (or --list them, newest first, with validation)."""
        from datetime import datetime, timezone

        from ..adapters.store import checkpoints
        from ..loading import state_at

        with open_log(settings(config, db=db).db) as store:
            if list_only:
                rows = []
                head = store.trading.head()
                loaded = checkpoints.load(store, head=head)
                key = checkpoints.checkpoint_key()
                refused = {r.checkpoint.id: r.reasons for r in loaded.rejected}
                for c in checkpoints.list_checkpoints(store):
                    valid = "newest valid" if loaded.checkpoint and c.id == loaded.checkpoint.id else (
                        "refused: " + "; ".join(refused[c.id][:2]) if c.id in refused else "not checked (older)")
                    rows.append({"id": c.id, "position": c.position, "created_at": c.created_at.isoformat(),
                                 "open_orders": c.open_orders, "finished_orders": c.finished_orders,
                                 "bytes": c.size, "authenticated": checkpoints.authentication(store, c, key),
                                 "status": valid})
                if json:
                    print(to_json({"head": head, "checkpoints": rows}))
                    return
                from rich.table import Table

                table = Table(title=f"checkpoints (log head {head:,})")
                for col in ("id", "position", "created_at", "open_orders", "finished_orders", "bytes", "authenticated",
                            "status"):
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


def _read_rewound(path: str) -> dict[str, Any]:
    """The ``LogRewound.as_dict()`` kept in ``path``; a clear error for a missing or malformed file."""
    import json as jsonlib

    keys = ("known_position", "known_event_id", "found_head", "found_event_id", "lost")
    try:
        with open(path, encoding="utf-8") as f:
            data = jsonlib.load(f)
    except OSError as e:
        fail(f"--rewound: cannot read {path!r}: {e.strerror or e}")
    except ValueError as e:
        fail(f"--rewound: {path!r} is not JSON: {e}")
    if not isinstance(data, dict) or any(k not in data for k in keys) or not isinstance(data["lost"], list):
        fail(f"--rewound: {path!r} is not a LogRewound record (keys: {', '.join(keys)})")
    return data
