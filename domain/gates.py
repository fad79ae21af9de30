"""Safety gates before trading resumes after a recovery (seed 002: the recovery decision tree,
steps 2, 7 and 8). Pure decisions: every input (crash history, positions and prices, bars, the
calendar's answer) is fetched by the caller (``tradestate.gates``) and passed in.

Each gate returns a ``GateDecision``: passed or not, what follows (``proceed``, ``approval``: an
operator must approve before intents are accepted again, ``monitoring``: a closed market, no new
intents until it opens) and the values it saw, which go into the ``GateEvaluated`` event and the
recovery report as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

REPEATED_CRASHES = "repeated_crashes"
GROSS_EXPOSURE = "gross_exposure"
VOLATILITY = "volatility"
MARKET_HOURS = "market_hours"
GATES = (REPEATED_CRASHES, GROSS_EXPOSURE, VOLATILITY, MARKET_HOURS)


@dataclass(frozen=True)
class GateDecision:
    """One gate's answer. ``action``: proceed | approval | monitoring. ``values``: JSON-ready
    (Decimals as strings) facts the gate saw, thresholds included."""

    gate: str
    passed: bool
    action: str
    detail: str
    values: dict[str, Any] = field(default_factory=dict)
    account: str | None = None

    @property
    def requires_approval(self) -> bool:
        return self.action == "approval"


def _s(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


# ------------------------------------------------------------------------- repeated crashes


def crash_times(events: Iterable[tuple[str, Mapping[str, Any], datetime]], now: datetime) -> list[datetime]:
    """When an engine crashed, from its stream's (type, payload, recorded time) in log order: a
    start while it was running (the run before never stopped cleanly), a lease that expired
    (``LeaseExpired``, or ``LeaseAcquired`` as ``expired`` without one recorded for that epoch),
    and a run still open at the end (the crash being recovered now: at ``now``)."""
    times: list[datetime] = []
    running = False
    expired_epochs: set[int] = set()
    for topic, data, at in events:
        if topic == "EngineStarted":
            if running:
                times.append(at)
            running = True
        elif topic in ("EngineStopped", "LeaseReleased", "RecoveryCompleted"):
            running = False  # a recovery closes the crashed run it recovered (as ``recovery.detect``)
        elif topic == "LeaseExpired":
            expired_epochs.add(int(data.get("epoch", 0)))
            times.append(at)
            running = False
        elif topic == "LeaseAcquired" and data.get("reason") == "expired":
            if int(data.get("previous_epoch", 0)) not in expired_epochs:
                times.append(at)
            running = False
    if running:
        times.append(now)
    return times


def repeated_crashes(times: Sequence[datetime], now: datetime, *, max_crashes: int = 3,
                     window: timedelta = timedelta(minutes=5)) -> GateDecision:
    """More than ``max_crashes`` crashes within ``window`` before ``now``: automatic resumption
    is disabled, an operator must approve (seed 002 step 2)."""
    since = now - window
    recent = sorted(t for t in times if since <= t <= now)
    values = {"crashes_in_window": len(recent), "max_crashes": max_crashes, "window_seconds": window.total_seconds(),
              "crash_times": [t.isoformat() for t in recent[-20:]]}
    if len(recent) > max_crashes:
        return GateDecision(REPEATED_CRASHES, False, "approval",
                            f"{len(recent)} crashes in the last {window.total_seconds():g} s (more than "
                            f"{max_crashes}): automatic resumption disabled until an operator approves", values)
    return GateDecision(REPEATED_CRASHES, True, "proceed",
                        f"{len(recent)} crash(es) in the last {window.total_seconds():g} s (at most {max_crashes})",
                        values)


# ---------------------------------------------------------------------------- gross exposure


@dataclass(frozen=True)
class Holding:
    """A position as the exposure gate sees it: ``price`` is the last price, else the average cost
    (None: unpriced, reported and left out of the sum)."""

    account: str
    venue: str
    symbol: str
    qty: Decimal
    price: Decimal | None


def gross_exposure(holdings: Iterable[Holding], threshold: Decimal | None) -> GateDecision:
    """Sum of |qty| x price over every position; above ``threshold`` an operator must approve
    (seed 002 step 7). ``threshold`` None: the gate is not configured and passes, still saying
    what the exposure is."""
    total = Decimal(0)
    by_account: dict[str, Decimal] = {}
    unpriced: list[str] = []
    for h in holdings:
        if not h.qty:
            continue
        if h.price is None:
            unpriced.append(f"{h.account}/{h.venue}/{h.symbol}")
            continue
        amount = abs(h.qty) * h.price
        total += amount
        by_account[h.account] = by_account.get(h.account, Decimal(0)) + amount
    values = {"gross_exposure": str(total), "threshold": _s(threshold),
              "by_account": {k: str(v) for k, v in sorted(by_account.items())}, "unpriced": unpriced[:50]}
    note = f"; {len(unpriced)} position(s) without a price left out" if unpriced else ""
    if threshold is None:
        return GateDecision(GROSS_EXPOSURE, True, "proceed", f"gross exposure {total} (no threshold configured){note}",
                            values)
    if total > threshold:
        return GateDecision(GROSS_EXPOSURE, False, "approval",
                            f"gross exposure {total} above the threshold {threshold}: an operator must approve{note}",
                            values)
    return GateDecision(GROSS_EXPOSURE, True, "proceed", f"gross exposure {total} within {threshold}{note}", values)


# -------------------------------------------------------------------------------- volatility


@dataclass(frozen=True)
class Bar:
    start: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal


def price_move(bars: Sequence[Bar]) -> Decimal | None:
    """How far a symbol's recorded bars moved: (highest high - lowest low) / the first bar's open,
    in start order. None without bars."""
    if not bars:
        return None
    ordered = sorted(bars, key=lambda b: b.start)
    first = ordered[0].open
    return (max(b.high for b in ordered) - min(b.low for b in ordered)) / first


def volatility(bars_by_symbol: Mapping[str, Sequence[Bar]], threshold: Decimal | None, *,
               window: timedelta) -> GateDecision:
    """A symbol whose bars over ``window`` moved more than ``threshold`` (a fraction: 0.05 is 5 %)
    needs an operator's approval (seed 002 step 8). Symbols without bars are named, not judged."""
    moves = {sym: price_move(bars) for sym, bars in sorted(bars_by_symbol.items())}
    measured = {sym: m for sym, m in moves.items() if m is not None}
    values = {"threshold": _s(threshold), "window_seconds": window.total_seconds(),
              "moves": {sym: str(m.quantize(Decimal("0.000001"))) for sym, m in measured.items()},
              "bars": {sym: len(b) for sym, b in sorted(bars_by_symbol.items())},
              "no_bars": [sym for sym, m in moves.items() if m is None][:50]}
    over = sorted(sym for sym, m in measured.items() if threshold is not None and m > threshold)
    values["over_threshold"] = over
    if threshold is None:
        return GateDecision(VOLATILITY, True, "proceed", "no volatility threshold configured", values)
    if over:
        listed = ", ".join(f"{sym} {measured[sym]:.2%}" for sym in over[:10])
        return GateDecision(VOLATILITY, False, "approval",
                            f"moved more than {threshold:.2%} in {window.total_seconds():g} s: {listed}; "
                            "an operator must approve", values)
    if not measured:
        return GateDecision(VOLATILITY, True, "proceed",
                            f"no recorded bars in the last {window.total_seconds():g} s for "
                            f"{len(moves)} symbol(s) held or ordered: nothing to judge", values)
    top = max(measured.values())
    return GateDecision(VOLATILITY, True, "proceed",
                        f"largest move {top:.2%} within {threshold:.2%} ({len(measured)} symbol(s))", values)


# ------------------------------------------------------------------------------ market hours


@dataclass(frozen=True)
class MarketSession:
    """A calendar's answer for one venue at one time. ``calendar`` None: no calendar configured
    for the venue (not judged). ``error``: the calendar could not answer (judged closed)."""

    venue: str
    calendar: str | None
    open: bool
    next_open: datetime | None = None
    next_close: datetime | None = None
    error: str | None = None


def market_hours(sessions: Sequence[MarketSession], account: str | None = None) -> GateDecision:
    """A venue whose market is closed (or whose calendar could not answer) puts the account in
    monitoring mode: venue facts recorded, no new intents, until it opens (seed 002 step 8)."""
    values: dict[str, Any] = {
        s.venue: {"calendar": s.calendar, "open": s.open,
                  "next_open": s.next_open.isoformat() if s.next_open else None,
                  "next_close": s.next_close.isoformat() if s.next_close else None,
                  **({"error": s.error} if s.error else {})}
        for s in sessions}
    judged = [s for s in sessions if s.calendar is not None]
    closed = [s for s in judged if not s.open]
    if closed:
        parts = []
        for s in closed:
            why = f"calendar {s.calendar} could not answer ({s.error})" if s.error else \
                f"closed by {s.calendar}" + (f", opens {s.next_open.isoformat()}" if s.next_open else "")
            parts.append(f"{s.venue}: {why}")
        return GateDecision(MARKET_HOURS, False, "monitoring",
                            "market closed, monitoring mode (no new intents): " + "; ".join(parts), values, account)
    if not judged:
        return GateDecision(MARKET_HOURS, True, "proceed",
                            "no trading calendar configured for " + (", ".join(s.venue for s in sessions) or
                                                                      "any venue"), values, account)
    return GateDecision(MARKET_HOURS, True, "proceed",
                        "open: " + ", ".join(f"{s.venue} ({s.calendar})" for s in judged), values, account)


__all__ = ["GATES", "GROSS_EXPOSURE", "MARKET_HOURS", "REPEATED_CRASHES", "VOLATILITY", "Bar", "GateDecision",
           "Holding", "MarketSession", "crash_times", "gross_exposure", "market_hours", "price_move",
           "repeated_crashes", "volatility"]
