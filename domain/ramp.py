"""The ramp after a recovery (seed 002 step 9): 50 % -> 75 % -> 100 % of the account's limits,
one step after each healthy interval. Pure: the decision is a function of the folded account, the
gates that still wait, the live checks the caller measured and the time.

The ramp's memory is the log: ``TradingResumed`` / ``RampStepped`` / ``RampHealthy`` start a
healthy interval (``AccountState.ramp_since``) and fix the counters "no new discrepancy" and "no
breaker trip" compare with (``ramp_baseline``); ``RampHeld`` says a check failed (``ramp_held``).
So a runner that restarts decides exactly as the one before it would have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from .state import AccountState

STEPS = {50: 75, 75: 100}


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str


@dataclass(frozen=True)
class RampDecision:
    """``kind``: ``step`` (record ``RampStepped`` to ``to_pct``), ``hold`` (record ``RampHeld``
    with ``reason``), ``healthy`` (checks pass again after a hold: record ``RampHealthy``),
    ``wait`` (nothing to record; ``due`` is when a step could come) or ``idle`` (no ramp under
    way). ``checks``: every check by name with ok and detail, as recorded."""

    kind: str
    account: str
    from_pct: int
    to_pct: int | None = None
    reason: str = ""
    due: datetime | None = None
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)


def account_checks(account: AccountState, pending_gates: Sequence[Mapping[str, Any]], now: datetime,
                   live: Mapping[str, Check]) -> dict[str, Check]:
    """The ramp's checks for one account: from the fold (no new discrepancy or breaker trip since
    the interval began, no breaker, kill switch or block now, no gate waiting, trading mode) and
    the ``live`` ones the caller measured (projector caught up, venue reachable...)."""
    discrepancies, trips = account.ramp_baseline
    new_discrepancies = account.discrepancies - discrepancies
    new_trips = account.breaker_trips - trips
    checks = {
        "no_new_discrepancy": Check(new_discrepancies <= 0, f"{new_discrepancies} new discrepancy(ies)"
                                    if new_discrepancies > 0 else "none since the interval began"),
        "no_breaker_trip": Check(new_trips <= 0 and not account.breaker_active(now),
                                 f"circuit breaker tripped ({account.breaker_reason or 'tripped and reset'})"
                                 if new_trips > 0 or account.breaker_active(now) else "no trip"),
        "no_kill_switch": Check(not account.kill_switch, f"kill switch engaged ({account.kill_switch_reason})"
                                if account.kill_switch else "released"),
        "not_blocked": Check(not account.blocked, f"blocked ({account.blocked_reason})" if account.blocked
                             else "not blocked"),
        "gates_approved": Check(not pending_gates, "waiting for approval of " + ", ".join(
            g["gate_id"] for g in pending_gates) if pending_gates else "no gate waiting"),
        "trading_mode": Check(account.mode == "trading", f"{account.mode} ({account.mode_reason})"
                              if account.mode != "trading" else "trading"),
    }
    checks.update(live)
    return checks


def decide(account: AccountState, checks: Mapping[str, Check], now: datetime, interval: timedelta) -> RampDecision:
    """The ramp's next move for ``account``: hold when a check fails (once per reason), mark it
    healthy again when they all pass after a hold, step up once the current level has been healthy
    for ``interval``, else wait."""
    pct = account.ramp_pct
    shown = {name: {"ok": c.ok, "detail": c.detail} for name, c in checks.items()}
    if pct >= 100 or account.ramp_since is None:
        return RampDecision("idle", account.account, pct, checks=shown)
    failed = [f"{name}: {c.detail}" for name, c in checks.items() if not c.ok]
    if failed:
        reason = "; ".join(failed)[:1000]
        if reason == account.ramp_held:
            return RampDecision("wait", account.account, pct, reason=reason, checks=shown)
        return RampDecision("hold", account.account, pct, reason=reason, checks=shown)
    if account.ramp_held:
        return RampDecision("healthy", account.account, pct, checks=shown)
    due = account.ramp_since + interval
    if now >= due:
        healthy = (now - account.ramp_since).total_seconds()
        shown["healthy_seconds"] = {"ok": True, "detail": f"{healthy:.3f} s at {pct} % (interval "
                                                            f"{interval.total_seconds():g} s)"}
        return RampDecision("step", account.account, pct, STEPS[pct], checks=shown,
                            reason=f"healthy for {healthy:.3f} s at {pct} %")
    return RampDecision("wait", account.account, pct, due=due, checks=shown,
                        reason=f"healthy; next step at {due.isoformat()}")


__all__ = ["STEPS", "Check", "RampDecision", "account_checks", "decide"]
