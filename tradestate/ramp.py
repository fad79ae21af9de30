"""The ramp that runs itself (seed 002 step 9), in a long-lived process: ``tradestate ramp --follow``.

Every ``poll`` seconds the runner folds the log, measures the live checks (projector caught up,
venue reachable), and for each account whose ramp is under way (``TradingResumed`` below 100 %)
asks ``domain.ramp.decide`` what follows: ``RampStepped`` (50 -> 75 -> 100 % after a healthy
``interval``), ``RampHeld`` (a check failed: which and why), ``RampHealthy`` (the checks pass again:
the interval restarts). Accounts a closed market put in monitoring mode go back to trading
(``TradingModeChanged``) once the calendar says the market is open.

All of the ramp's memory is in the log, so a runner that is killed and started again (or a second
one) carries on where the first stopped; each decision is taken inside the append (on the freshest
state), so two runners never step the same level twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from .adapters.store import Store
from .domain import events as ev
from .domain import orders as rules
from .domain.ids import account_stream_id
from .domain.ramp import Check, RampDecision, account_checks, decide
from .writer import Decided, build_event

LiveCheck = Callable[[], Check]


def projector_check(url: str, max_lag_seconds: float = 10.0) -> LiveCheck:
    """A check that the projector is caught up: the oldest event it has not projected is at most
    ``max_lag_seconds`` old. A database where no projector ever ran passes, saying so (nothing to
    wait for)."""

    def check() -> Check:
        from .projections.queries import DatabaseUnavailable, lag, open_reader

        try:
            reader = open_reader(url)
            try:
                with reader.read() as tx:
                    snap = lag(tx)
            finally:
                reader.close()
        except DatabaseUnavailable as e:
            if "no tradestate log" in str(e) or type(e).__name__ == "NotProjected":
                return Check(True, "no projector has run here (not checked)")
            return Check(False, f"read model unreadable: {e}")
        if snap["projection_position"] == 0 and snap["log_head"] > 0 and snap["projection_updated_at"] is None:
            return Check(True, "no projector has run here (not checked)")
        behind = snap["lag_seconds"]
        ok = behind <= max_lag_seconds
        return Check(ok, f"{snap['lag_events']} event(s) behind, oldest {behind:.1f} s old (at most "
                         f"{max_lag_seconds:g} s)")

    return check


def venue_check(adapters: list[Any], timeout: float = 10.0) -> LiveCheck:
    """A check that every configured broker answers a positions query within ``timeout`` seconds.
    No broker configured: passes, saying it was not checked."""

    def check() -> Check:
        if not adapters:
            return Check(True, "no broker configured (not checked)")
        problems, answered = [], []
        for adapter in adapters:
            box: dict[str, Any] = {}

            def ask(a: Any = adapter, out: dict[str, Any] = box) -> None:
                try:
                    a.positions()
                    out["ok"] = True
                except Exception as e:  # noqa: BLE001 - any failure means "not reachable", said as it is
                    out["error"] = f"{type(e).__name__}: {e}"

            worker = threading.Thread(target=ask, daemon=True)
            worker.start()
            worker.join(timeout)
            name = f"{adapter.broker}/{adapter.account}"
            if box.get("ok"):
                answered.append(name)
            else:
                problems.append(f"{name}: {box.get('error', f'no answer in {timeout:g} s')}")
        if problems:
            return Check(False, "; ".join(problems)[:500])
        return Check(True, "answered: " + ", ".join(answered))

    return check


@dataclass
class Tick:
    """What one round did: the decision per account, and the events it recorded (type names)."""

    at: datetime
    decisions: list[RampDecision] = field(default_factory=list)
    recorded: list[str] = field(default_factory=list)


class RampRunner:
    """Runs the ramp over ``store`` (the runner's own client, unfenced: it writes account events,
    not an engine's; ``close`` closes the store). ``interval``: healthy time at each level; ``live``: named checks measured
    each round; ``gates``: a ``tradestate.gates.GateConfig`` whose calendars take accounts out of
    monitoring mode when their market opens (None: nothing does, an operator must)."""

    def __init__(self, store: Store, *, interval: timedelta, live: Mapping[str, LiveCheck] | None = None,
                 clock: Callable[[], datetime] | None = None, gates: Any = None,
                 on_tick: Callable[[Tick], None] | None = None):
        from .client import TradestateClient

        self.store = store
        self.interval = interval
        self.live = dict(live or {})
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.gates = gates
        self.on_tick = on_tick
        # an injected clock is the caller's own time: no guard against it running "backwards"
        self.client = TradestateClient(store, clock=self.clock, clock_guard=clock is None, clock_skew_threshold=None,
                                       max_clock_skew=None)

    def _market_opened(self, now: datetime) -> list[str]:
        """Record ``TradingModeChanged(trading)`` for each account in monitoring mode whose market is open."""
        from .domain import gates as g
        from .gates import market_session, monitoring_accounts, traded

        state = self.client.state
        waiting = [a for a in state.accounts.values() if a.mode == "monitoring"]
        if not waiting or self.gates is None or not self.gates.calendars:
            return []
        venues = sorted(set(self.gates.calendars) | {v for pairs in traded(state).values() for v, _s in pairs})
        market = g.market_hours([market_session(v, self.gates.calendars.get(v), now) for v in venues])
        still = monitoring_accounts(state, market, self.gates)
        done = []
        for a in waiting:
            if a.account not in still:
                self.client._account_fact(ev.TradingModeChanged, a.account, mode="trading",
                                          reason=f"ramp runner: {market.detail}"[:1000])
                done.append("TradingModeChanged")
        return done

    def tick(self) -> Tick:
        """One round: catch up, measure the live checks, decide and record for every account."""
        now = self.clock()
        self.client.catch_up()
        out = Tick(now)
        out.recorded += self._market_opened(now)
        live = {name: check() for name, check in self.live.items()}
        for name in sorted(self.client.state.accounts):
            decision = self._decide_and_record(name, live, now)
            out.decisions.append(decision)
            if decision.kind in ("step", "hold", "healthy"):
                out.recorded.append({"step": "RampStepped", "hold": "RampHeld", "healthy": "RampHealthy"}[decision.kind])
        if self.on_tick is not None:
            self.on_tick(out)
        return out

    def _decide_and_record(self, account: str, live: Mapping[str, Check], now: datetime) -> RampDecision:
        writer = self.client.writer

        def decide_on(state: Any) -> Decided[RampDecision]:
            acct = state.accounts[account]
            decision = decide(acct, account_checks(acct, state.pending_gates(account), now, live), now, self.interval)
            envelope = writer.envelope()
            if decision.kind == "step":
                e: ev.Event = build_event(ev.RampStepped, **envelope, account=account, from_pct=decision.from_pct,
                                          to_pct=decision.to_pct, checks=decision.checks, reason=decision.reason)
            elif decision.kind == "hold":
                e = build_event(ev.RampHeld, **envelope, account=account, pct=decision.from_pct,
                                reason=decision.reason, checks=decision.checks)
            elif decision.kind == "healthy":
                e = build_event(ev.RampHealthy, **envelope, account=account, pct=decision.from_pct,
                                checks=decision.checks)
            else:
                return Decided(rules.AlreadyRecorded(state.position), decision)
            return Decided(rules.Append([(account_stream_id(account), e)]), decision)

        return writer.record(decide_on).value

    def run(self, poll: float, *, stop: threading.Event | None = None, until: Callable[[], bool] | None = None,
            max_errors: int = 10) -> None:
        """Tick every ``poll`` seconds until ``stop`` is set (or ``until()`` is true). A round that
        fails (the database away) is retried next round; ``max_errors`` failures in a row end it."""
        stop = stop or threading.Event()
        errors = 0
        while not stop.is_set() and not (until and until()):
            try:
                self.tick()
                errors = 0
            except Exception:
                errors += 1
                if errors >= max_errors:
                    raise
            stop.wait(poll)

    def close(self) -> None:
        self.client.close()


__all__ = ["RampRunner", "Tick", "projector_check", "venue_check"]
