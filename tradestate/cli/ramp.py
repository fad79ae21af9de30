"""``tradestate ramp`` (the ramp after a recovery, run unattended) and ``tradestate gates`` (the
safety gates waiting for an operator's approval, and the approval)."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Annotated, Optional

import typer

from .common import (BrokerOption, ConfigOption, DbOption, ExitCode, JsonOption, SimStateOption, command, exit_codes,
                     fail, make_adapters, open_log, settings)


def register(app: typer.Typer) -> None:
    """Add ``ramp`` and ``gates`` to the ``tradestate`` command."""

    @app.command(epilog=exit_codes())
    @command
    def ramp(
        db: DbOption = None,
        follow: Annotated[bool, typer.Option("--follow", help="Keep running: check every --poll seconds until "
                                                              "SIGTERM/SIGINT (a restart carries on from the log).")] = False,
        interval: Annotated[Optional[float], typer.Option("--interval", help="Healthy seconds at each level before "
                                                          "the next (default: ramp_step_seconds, 300).")] = None,
        poll: Annotated[Optional[float], typer.Option("--poll", help="Seconds between checks with --follow "
                                                      "(default: ramp_poll_seconds, 1).")] = None,
        max_projector_lag: Annotated[float, typer.Option("--max-projector-lag", help="Seconds the projector may "
                                                         "be behind and still count as caught up.")] = 10.0,
        broker: BrokerOption = None,
        sim_state: SimStateOption = None,
        json: JsonOption = False,
        config: ConfigOption = None,
    ) -> None:
        """Step the limits of every recovered account 50 -> 75 -> 100 % after healthy intervals (no new
        discrepancy, no breaker trip, projector caught up, venue reachable); a failed check holds
        the ramp and says why. Each step and hold is an event. Without --follow: one round."""
        from ..gates import GateConfig
        from ..ramp import RampRunner, projector_check, venue_check
        from ..render import console, to_json
        from .project import _stop_on_signals as stop_on_signals

        s = settings(config, db=db, ramp_step_seconds=interval, ramp_poll_seconds=poll, broker=broker,
                     sim_state=sim_state)
        if s.db is None:
            fail("give --db or TRADESTATE_DB")
        store = open_log(s.db)
        adapters = make_adapters(s) if s.broker else []
        runner = RampRunner(store, interval=timedelta(seconds=s.ramp_step_seconds),
                            live={"projector_caught_up": projector_check(s.db, max_projector_lag),
                                  "venue_reachable": venue_check(adapters)},
                            gates=GateConfig.from_settings(s))

        def show(tick: object) -> None:
            for d in tick.decisions:  # type: ignore[attr-defined]
                if d.kind in ("idle", "wait"):
                    continue  # only what was recorded: a follower's output stays proportional to events
                if json:
                    print(to_json({"at": tick.at, "account": d.account, "kind": d.kind, "from_pct": d.from_pct,  # type: ignore[attr-defined]
                                   "to_pct": d.to_pct, "reason": d.reason, "due": d.due, "checks": d.checks}),
                          flush=True)
                else:
                    what = {"step": f"stepped {d.from_pct} -> {d.to_pct} %", "hold": f"HELD at {d.from_pct} %",
                            "healthy": f"healthy again at {d.from_pct} %"}[d.kind]
                    console.print(f"{d.account}: {what}: {d.reason}", highlight=False)

        runner.on_tick = show
        try:
            if follow:
                stop = threading.Event()
                with stop_on_signals(stop):
                    runner.run(s.ramp_poll_seconds, stop=stop)
            else:
                runner.tick()
        finally:
            runner.close()
            for adapter in adapters:
                adapter.close()
            store.close()

    @app.command(epilog=exit_codes("a gate waits for approval (without --approve)"))
    @command
    def gates(
        db: DbOption = None,
        approve: Annotated[Optional[str], typer.Option("--approve", metavar="GATE_ID", help="Approve this gate.")] = None,
        operator: Annotated[Optional[str], typer.Option("--operator", help="Who approves (required with "
                                                        "--approve).")] = None,
        reason: Annotated[str, typer.Option("--reason", help="Why it is safe to resume.")] = "",
        json: JsonOption = False,
        config: ConfigOption = None,
    ) -> None:
        """List the safety gates waiting for an operator's approval after a recovery, or --approve one
        (a GateApproved event with the operator and reason)."""
        from ..client import TradestateClient
        from ..gates import approve as approve_gate
        from ..render import console, to_json

        s = settings(config, db=db)
        store = open_log(s.db)
        try:
            client = TradestateClient(store, clock_skew_threshold=None, max_clock_skew=None)
            with client:
                if approve is not None:
                    if not operator:
                        fail("--approve needs --operator (who approves)")
                    recorded = approve_gate(client, approve, operator, reason)
                    out = {"approved": approve, "position": recorded.position, "duplicate": recorded.duplicate,
                           "waiting": [g["gate_id"] for g in client.state.pending_gates()]}
                    if json:
                        print(to_json(out))
                    else:
                        console.print(f"gate {approve} approved by {operator} at position {recorded.position}"
                                      + (" (already approved)" if recorded.duplicate else "")
                                      + (f"; still waiting: {', '.join(out['waiting'])}" if out["waiting"] else ""),
                                      highlight=False)
                    return
                waiting = client.state.pending_gates()
                if json:
                    print(to_json({"waiting": waiting}))
                else:
                    for g in waiting:
                        console.print(f"[bold yellow]WAITING[/] {g['gate_id']} (engine {g['engine_id']}): "
                                      f"{g['detail']}", highlight=False)
                    if not waiting:
                        console.print("no gate waits for approval")
        finally:
            store.close()
        raise typer.Exit(int(ExitCode.PROBLEM if waiting else ExitCode.OK))
