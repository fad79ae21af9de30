"""The safety gates' inputs, fetched: crash history from the engine streams, positions and prices
from the fold, bars from the market log, the market's hours from an exchange calendar
(``exchange_calendars``). The decisions themselves are ``domain.gates`` (pure).

``evaluate`` returns the decisions; ``record`` appends them (``GateEvaluated`` on the recovering
engine's stream, ``TradingModeChanged`` for the accounts a closed market puts in monitoring mode).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

from .adapters.store import Store
from .domain import gates as g
from .domain.ids import bar_stream_id, engine_stream_id
from .domain.instruments import instrument_rate
from .domain.state import TradingState


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the gates (``Settings.gate_*``): see ``tradestate.settings``."""

    max_crashes: int = 3
    crash_window: timedelta = timedelta(minutes=5)
    max_gross_exposure: Decimal | None = None
    max_move: Decimal | None = Decimal("0.05")
    volatility_window: timedelta = timedelta(minutes=15)
    bar_timeframe: str = "1m"
    calendars: dict[str, str] = field(default_factory=dict)  # venue -> exchange_calendars name

    @classmethod
    def from_settings(cls, s: Any) -> GateConfig:
        return cls(max_crashes=s.gate_max_crashes, crash_window=timedelta(seconds=s.gate_crash_window),
                   max_gross_exposure=s.gate_max_gross_exposure, max_move=s.gate_max_move,
                   volatility_window=timedelta(seconds=s.gate_volatility_window),
                   bar_timeframe=s.gate_bar_timeframe, calendars=dict(s.gate_calendars))


# --------------------------------------------------------------------------------- calendar


@functools.lru_cache(maxsize=32)
def _calendar(name: str) -> Any:
    import exchange_calendars  # loading one takes about a second: once per process and name

    return exchange_calendars.get_calendar(name)


def market_session(venue: str, calendar: str | None, now: datetime) -> g.MarketSession:
    """The exchange calendar's answer for ``venue`` at ``now`` (its regular session, holidays and
    early closes included). A calendar that cannot answer (unknown name, a time outside its range)
    is an answer with ``error``: judged closed, never open by default."""
    if calendar is None:
        return g.MarketSession(venue, None, True)
    try:
        import warnings

        import pandas as pd

        with warnings.catch_warnings():  # pandas deprecations raised inside the calendar library
            warnings.simplefilter("ignore")
            return _session(venue, calendar, pd.Timestamp(now).tz_convert("UTC").floor("min"))
    except Exception as e:  # noqa: BLE001 - any calendar failure is "could not answer", recorded as such
        return g.MarketSession(venue, calendar, False, error=f"{type(e).__name__}: {e}"[:300])


def _session(venue: str, calendar: str, minute: Any) -> g.MarketSession:
    cal = _calendar(calendar)
    is_open = bool(cal.is_open_on_minute(minute))
    next_open = None if is_open else cal.next_open(minute).to_pydatetime()
    next_close = cal.next_close(minute).to_pydatetime() if is_open else None
    return g.MarketSession(venue, calendar, is_open, next_open, next_close)


# ---------------------------------------------------------------------------------- inputs


def crash_times(store: Store, now: datetime) -> dict[str, list[datetime]]:
    """Every engine's crash times (``domain.gates.crash_times``), by engine id."""
    from .recovery import engine_ids

    out = {}
    for engine in engine_ids(store):
        rows = store.trading.read_stream(engine_stream_id(engine))
        events = []
        for e in rows:
            data = orjson.loads(e.state)
            at = data.get("occurred_at")
            events.append((e.topic, data, datetime.fromisoformat(at) if at else e.recorded_at))
        out[engine] = g.crash_times(events, now)
    return out


def holdings(state: TradingState) -> list[g.Holding]:
    """Every non-flat position with its last price, else its average cost; for a registered
    instrument, the value of one unit: the price times its multiplier, in the account's currency
    by the last recorded FX rate (none recorded: unpriced, so the gate says it left it out)."""
    out = []
    for (account, venue, symbol), p in state.positions.items():
        if p.qty:
            price = p.last_price if p.last_price is not None else (p.avg_cost if p.cost else None)
            if price is not None and p.spec is not None:
                rate = instrument_rate(state.fx_rates, p.spec)
                price = None if rate is None else price * p.spec.multiplier * rate
            out.append(g.Holding(account, venue, symbol, p.qty, price))
    return out


def traded(state: TradingState) -> dict[str, set[tuple[str, str]]]:
    """account -> the (venue, symbol) pairs it holds or has open orders on."""
    out: dict[str, set[tuple[str, str]]] = {}
    for (account, venue, symbol), p in state.positions.items():
        if p.qty:
            out.setdefault(account, set()).add((venue, symbol))
    for a in state.accounts.values():
        for o in a.open_orders.values():
            out.setdefault(a.account, set()).add((o.venue, o.symbol))
    return out


def recorded_bars(store: Store, pairs: Iterable[tuple[str, str]], timeframe: str, since: datetime,
                  until: datetime) -> dict[str, list[g.Bar]]:
    """The market log's bars of each (venue, symbol) starting in [since, until], by "venue/symbol"."""
    out: dict[str, list[g.Bar]] = {}
    for venue, symbol in sorted(set(pairs)):
        # a bar's stream version is its start in epoch seconds: read from the window's start on
        rows = store.market.read_stream(bar_stream_id(venue, symbol, timeframe), max(0, int(since.timestamp()) - 1))
        bars = []
        for row in rows:
            d = orjson.loads(row.state)
            start = datetime.fromisoformat(d["start"])
            if since <= start <= until:
                bars.append(g.Bar(start, Decimal(d["open"]), Decimal(d["high"]), Decimal(d["low"]), Decimal(d["close"])))
        out[f"{venue}/{symbol}"] = bars
    return out


def monitoring_accounts(state: TradingState, decision: g.GateDecision, config: GateConfig) -> dict[str, str]:
    """account -> why it starts in monitoring mode: it holds or orders at a venue whose market is
    closed (an account with nothing held or ordered: any configured venue closed)."""
    closed = {venue for venue, v in decision.values.items() if v.get("calendar") and not v.get("open")}
    if not closed:
        return {}
    held = traded(state)
    out = {}
    for name in sorted(state.accounts):
        venues = {venue for venue, _symbol in held.get(name, ())} or set(config.calendars)
        hit = sorted(venues & closed)
        if hit:
            out[name] = f"market closed at {', '.join(hit)} ({decision.detail})"[:1000]
    return out


# ----------------------------------------------------------------------------- the gates


def evaluate(store: Store, state: TradingState, now: datetime, config: GateConfig,
             timings: dict[str, float] | None = None) -> list[g.GateDecision]:
    """Every gate's decision now, on the folded ``state`` and the store's logs; ``timings`` (when
    given) gets each gate's seconds, inputs fetched included."""
    import time

    timings = {} if timings is None else timings
    started = time.perf_counter()

    def lap(gate: str) -> None:
        nonlocal started
        now_ = time.perf_counter()
        timings[gate] = now_ - started
        started = now_

    crashes = crash_times(store, now)
    times = [t for ts in crashes.values() for t in ts]
    crash = g.repeated_crashes(times, now, max_crashes=config.max_crashes, window=config.crash_window)
    crash.values["by_engine"] = {e: sum(1 for t in ts if t >= now - config.crash_window)
                                 for e, ts in sorted(crashes.items()) if ts}
    lap(g.REPEATED_CRASHES)
    exposure = g.gross_exposure(holdings(state), config.max_gross_exposure)
    lap(g.GROSS_EXPOSURE)
    pairs = {pair for pairs in traded(state).values() for pair in pairs}
    bars = recorded_bars(store, pairs, config.bar_timeframe, now - config.volatility_window, now)
    vol = g.volatility(bars, config.max_move, window=config.volatility_window)
    lap(g.VOLATILITY)
    venues = sorted(set(config.calendars) | {venue for venue, _symbol in pairs})
    market = g.market_hours([market_session(v, config.calendars.get(v), now) for v in venues])
    lap(g.MARKET_HOURS)
    return [crash, exposure, vol, market]


def gate_id(decision: g.GateDecision, head: int) -> str:
    """The id an operator approves: the gate and the log head the recovery started from."""
    return (f"{decision.gate}@{head}" + (f".{decision.account}" if decision.account else ""))[:64]


def record(client: Any, engine_id: str, decisions: Sequence[g.GateDecision], head: int, config: GateConfig,
           *, now: datetime) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Append a ``GateEvaluated`` per decision, and ``TradingModeChanged`` for each account a
    closed market puts in monitoring mode (or an open one takes out of it). Returns (the decisions
    as recorded: gate_id, gate, passed, action, detail, values; account -> its new mode's reason)."""
    from . import writer as w
    from .domain import events as ev

    rows = []
    modes: dict[str, str] = {}
    for d in decisions:
        gid = gate_id(d, head)
        e = w.build_event(ev.GateEvaluated, **client.writer.envelope(), engine_id=engine_id, gate_id=gid,
                          gate=d.gate, passed=d.passed, action=d.action, requires_approval=d.requires_approval,
                          account=d.account, values=d.values, detail=d.detail[:1000])
        client.writer.record_event(engine_stream_id(engine_id), e)
        rows.append({"gate_id": gid, "gate": d.gate, "passed": d.passed, "action": d.action,
                     "requires_approval": d.requires_approval, "detail": d.detail, "values": d.values})
        if d.gate == g.MARKET_HOURS:
            monitoring = monitoring_accounts(client.state, d, config)
            for account, why in monitoring.items():
                if client.state.accounts[account].mode != "monitoring":
                    client._account_fact(ev.TradingModeChanged, account, mode="monitoring", reason=why)
                modes[account] = why
            for name, a in sorted(client.state.accounts.items()):
                if a.mode == "monitoring" and name not in monitoring:
                    client._account_fact(ev.TradingModeChanged, name, mode="trading", reason=d.detail[:1000])
    return rows, modes


__all__ = ["GateConfig", "approve", "crash_times", "evaluate", "gate_id", "holdings", "market_session", "monitoring_accounts",
           "record", "recorded_bars", "traded"]


def approve(client: Any, gate_id: str, operator: str, reason: str = "", *, account: str | None = None) -> Any:
    """``client.approve_gate``: record an operator's ``GateApproved`` of a gate waiting for one. An
    unknown gate id is ``InvalidInput``, nothing appended; a gate already approved returns its
    approval's position (nothing appended)."""
    return client.approve_gate(gate_id, operator=operator, reason=reason, account=account)
