"""Reading the logs for post-mortems: events with their envelope, time axes, windows, parsing.

Replay only reads. Two time axes:

* ``recorded`` — the store's clock at commit (``recorded_at``). It follows log order up to the
  skew between concurrent writers (SQLite stamps a row just before taking the write lock,
  PostgreSQL uses the transaction's start time), so "the last position at or before T" is found by
  binary search over positions, then a bounded look-ahead (``LOOKAHEAD`` rows) for stragglers
  stamped at or before T but committed after a later one.
* ``occurred`` — the venue's or engine's clock (``occurred_at`` in the payload; ``recorded_at``
  when an event has none). It is *not* monotonic in log order. The state at T on this axis is
  the fold, in log order, of every event whose occurred_at <= T — except that once an event of a
  stream is left out, the later events of that stream are left out too (a stream's history is
  causal: a fill is never applied to an order whose intent is "in the future"). It needs a scan
  of the log. A bar's time on this axis is its close (start + timeframe): when it became known.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Literal

import orjson

from ..adapters.store import Store
from ..domain.errors import InvalidInput
from ..domain.state import VOID_TYPE

Axis = Literal["recorded", "occurred"]
AXES = ("recorded", "occurred")
LOOKAHEAD = 256
UTC = timezone.utc

TIMEFRAMES = {"1s": timedelta(seconds=1), "5s": timedelta(seconds=5), "1m": timedelta(minutes=1),
              "5m": timedelta(minutes=5), "15m": timedelta(minutes=15), "1h": timedelta(hours=1),
              "1d": timedelta(days=1)}


class ReplayError(InvalidInput):
    """Bad input to a replay query (a time outside the log, an unknown order, a bad window)."""


# ---------------------------------------------------------------------------------- parsing


def parse_time(value: str | datetime, what: str = "time") -> datetime:
    """An aware UTC datetime from ISO-8601 (``Z`` accepted); naive times are refused."""
    if isinstance(value, datetime):
        dt = value
    else:
        text = str(value).strip()
        try:
            dt = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            raise ReplayError(f"{what} is not an ISO-8601 time: {value!r} (e.g. 2026-11-20T14:31:05Z)") from None
    if dt.tzinfo is None:
        raise ReplayError(f"{what} needs a time zone: {value!s} (e.g. 2026-11-20T14:31:05Z)")
    return dt.astimezone(UTC)


_UNITS = {"ms": timedelta(milliseconds=1), "s": timedelta(seconds=1), "m": timedelta(minutes=1),
          "min": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|m|h|d)\s*$")


def parse_duration(value: str | timedelta, what: str = "window") -> timedelta:
    """``60s``, ``30m``, ``1.5h``, ``500ms``, ``1d`` (positive)."""
    if isinstance(value, timedelta):
        duration = value
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ReplayError(f"{what} {value!r} is not a duration: use a number and a unit of ms, s, m, h or d "
                              "(e.g. 60s, 30m, 2h)")
        duration = _UNITS[m.group(2)] * float(m.group(1))
    if duration <= timedelta(0):
        raise ReplayError(f"{what} must be positive, got {value!r}")
    return duration


def parse_speed(value: str | float | int | None) -> float | None:
    """``10x``, ``0.5x``, ``10`` or ``max`` (None: as fast as possible)."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        speed = float(value)
    else:
        text = str(value).strip().lower()
        if text in ("max", "inf", "full"):
            return None
        m = re.match(r"^(\d+(?:\.\d+)?)x?$", text)
        if not m:
            raise ReplayError(f"speed {value!r} is not a speed: use e.g. 1x, 10x, 0.5x or max")
        speed = float(m.group(1))
    if not speed > 0:
        raise ReplayError(f"speed must be positive, got {value!r}")
    return speed


def check_axis(axis: str) -> Axis:
    """``axis`` if it is ``recorded`` or ``occurred``; ``ReplayError`` otherwise."""
    if axis not in AXES:
        raise ReplayError(f"time axis {axis!r} is not one of: recorded, occurred")
    return axis  # type: ignore[return-value]


def iso(dt: datetime | None) -> str | None:
    """``dt`` as ISO-8601 in UTC with a ``Z`` suffix; None for None."""
    return None if dt is None else dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


# ----------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class LoggedEvent:
    """One row of a log with its payload decoded (JSON form, as stored)."""

    log: str  # "trading" | "market"
    position: int
    stream_id: str
    version: int
    type: str
    recorded_at: datetime
    payload: dict[str, Any]

    @classmethod
    def from_row(cls, row: tuple[Any, ...], log: str = "trading") -> LoggedEvent:
        """The event of one log row (position, stream, version, type, data, recorded_at); a naive
        ``recorded_at`` is taken as UTC, a ``$void`` row gets an empty payload."""
        position, stream, version, type_name, data, recorded_at = row
        if recorded_at.tzinfo is None:
            recorded_at = recorded_at.replace(tzinfo=UTC)
        payload = orjson.loads(bytes(data)) if type_name != VOID_TYPE else {}
        return cls(log, position, stream, version, type_name, recorded_at.astimezone(UTC), payload)

    @property
    def event_id(self) -> str | None:
        """The payload's ``event_id`` (None when absent)."""
        return self.payload.get("event_id")

    @property
    def occurred_at(self) -> datetime | None:
        """The payload's ``occurred_at`` as a UTC datetime (None when absent)."""
        value = self.payload.get("occurred_at")
        return parse_time(value) if value else None

    @property
    def correlation_id(self) -> str | None:
        """The payload's ``correlation_id`` (None when absent)."""
        return self.payload.get("correlation_id")

    @property
    def causation_id(self) -> str | None:
        """The payload's ``causation_id`` (None when absent)."""
        return self.payload.get("causation_id")

    @property
    def account(self) -> str | None:
        """The payload's ``account`` (None when absent)."""
        return self.payload.get("account")

    @property
    def kind(self) -> str:
        """The stream's kind: the stream id up to its first ``-`` (``order``, ``account``...)."""
        return self.stream_id.split("-", 1)[0]

    def time(self, axis: Axis) -> datetime:
        """The event's time on ``axis``: ``recorded_at``; or on ``occurred``, a bar's close, else
        ``occurred_at``, else ``recorded_at``."""
        if axis == "recorded":
            return self.recorded_at
        if self.type == "BarRecorded":
            return bar_close(self.payload)
        return self.occurred_at or self.recorded_at

    def envelope(self) -> dict[str, Any]:
        """The event's metadata as JSON-ready values (no payload)."""
        return {
            "log": self.log,
            "position": self.position,
            "stream_id": self.stream_id,
            "version": self.version,
            "type": self.type,
            "recorded_at": iso(self.recorded_at),
            "event_id": self.event_id,
            "occurred_at": self.payload.get("occurred_at"),
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
        }

    def to_json(self) -> dict[str, Any]:
        """The envelope, a one-line summary and the payload."""
        return {**self.envelope(), "summary": describe(self), "payload": self.payload}


def bar_close(payload: dict[str, Any]) -> datetime:
    """A bar payload's close: its start plus its timeframe (the start for an unknown timeframe)."""
    return parse_time(payload["start"]) + TIMEFRAMES.get(payload.get("timeframe", "1m"), timedelta(0))


def _n(value: Any) -> str:
    if value is None:
        return "-"
    try:
        return f"{Decimal(value).normalize():f}"
    except Exception:  # noqa: BLE001 - a description never fails
        return str(value)


def describe(e: LoggedEvent) -> str:
    """A one-line human account of an event."""
    d, t = e.payload, e.type
    coid = d.get("client_order_id")
    who = f"{d.get('account')}/{coid}" if coid else (d.get("account") or "")
    if t == "OrderIntentRecorded":
        px = f" @{_n(d.get('limit_price'))}" if d.get("limit_price") else ""
        px += f" stop {_n(d.get('stop_price'))}" if d.get("stop_price") else ""
        strat = f" [{d['strategy_id']}]" if d.get("strategy_id") else ""
        return f"{who} intent {d['side']} {_n(d['qty'])} {d['symbol']} {d['order_type']}{px}{strat}"
    if t == "OrderImported":
        return f"{who} imported from venue: {d['side']} {_n(d['qty'])} {d['symbol']} ({d.get('venue_status')})"
    if t == "IntentRejectedByRisk":
        return f"{who} refused by risk: {', '.join(d.get('reasons', []))}"
    if t == "RiskCheckPassed":
        return f"{who} risk check passed ({d['side']} {_n(d['qty'])} {d['symbol']})"
    if t == "OrderAcknowledged":
        return f"{who} acknowledged as {d['venue_order_id']}"
    if t == "OrderFilled":
        return f"{who} fill {d['exec_id']}: {_n(d['qty'])} @{_n(d['price'])} fee {_n(d.get('fee'))}"
    if t == "OrderReplaced":
        return f"{who} replaced: qty {_n(d['qty'])} limit {_n(d.get('limit_price'))}"
    if t == "DiscrepancyRecorded":
        return f"{who} discrepancy {d['kind']}: {d.get('detail', '')}".rstrip(": ")
    if t in ("OrderRejected", "OrderCancelled", "OrderCancelRequested"):
        return f"{who} {t[5:].lower()} {d.get('reason', '')}".rstrip()
    if t.startswith("Order"):
        return f"{who} {t[5:].lower()}"
    if t == "RiskLimitChanged":
        sym = f" {d['symbol']}" if d.get("symbol") else ""
        return f"{who} limit {d['limit']}{sym} = {_n(d.get('value'))}"
    if t == "CircuitBreakerTripped":
        until = f" until {d['until']}" if d.get("until") else ""
        return f"{who} circuit breaker TRIPPED: {d['reason']}{until}"
    if t == "CircuitBreakerReset":
        return f"{who} circuit breaker reset {d.get('reason', '')}".rstrip()
    if t == "KillSwitchEngaged":
        return f"{who} kill switch ENGAGED by {d.get('by')}: {d['reason']}"
    if t == "KillSwitchReleased":
        return f"{who} kill switch released by {d.get('by')}"
    if t == "DailyLimitBreached":
        return f"{who} daily limit {d['limit']} breached: {_n(d['value'])} > {_n(d['threshold'])}"
    if t == "TradingResumed":
        return f"{who} trading resumed at {d['ramp_pct']}%"
    if t == "PositionCorrected":
        return f"{who} position {d['symbol']} corrected {_n(d['qty_before'])} -> {_n(d['qty_after'])}"
    if t == "CashBalanceRecorded":
        return f"{who} cash {d.get('currency')} = {_n(d['balance'])}"
    if t == "ReconciliationCompleted":
        return f"{who} reconciliation {d['reconciliation_id']} {d['status']}"
    if t == "TradingBlocked":
        return f"{who} trading BLOCKED: {d['reason']}"
    if t == "DiscrepancyAcknowledged":
        return f"{who} discrepancies acknowledged by {d.get('by')}: {d.get('decision')}"
    if t == "SignalRecorded":
        return f"{d['strategy_id']} signal {d['signal']} {d['symbol']} value {_n(d.get('value'))}"
    if t in ("EngineStarted", "EngineStopped"):
        return f"engine {d['engine_id']} {t[6:].lower()} {d.get('reason', '')}".rstrip()
    if t == "RecoveryCompleted":
        return f"engine {d['engine_id']} recovery {'ready' if d.get('ready') else 'NOT ready'}"
    if t == "BarRecorded":
        return (f"bar {d['symbol']} {d['timeframe']} {d['start']} O {_n(d['open'])} H {_n(d['high'])} "
                f"L {_n(d['low'])} C {_n(d['close'])} V {_n(d['volume'])}")
    if t == VOID_TYPE:
        return "(void position)"
    return t


# ------------------------------------------------------------------------------ positions


def _row_at(log: Any, position: int) -> tuple[Any, ...] | None:
    for row in log.iter_rows(position - 1, position, batch=1):
        return row
    return None


def _recorded_at(log: Any, position: int) -> datetime:
    row = _row_at(log, position)
    if row is None:
        raise ReplayError(f"the log has no event at position {position}")
    at = row[5]
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Bounds:
    """A log's first and last positions and their ``recorded_at``."""

    first: int
    last: int
    first_at: datetime
    last_at: datetime


def bounds(store: Store, log: str = "trading") -> Bounds:
    """First and last positions of a log and their recorded_at (refuses an empty log)."""
    event_log = getattr(store, log)
    head = event_log.head()
    if head == 0:
        raise ReplayError(f"the {log} log in {store.display_url} is empty: nothing to replay")
    return Bounds(1, head, _recorded_at(event_log, 1), _recorded_at(event_log, head))


def check_within(t: datetime, b: Bounds, what: str = "time") -> None:
    """Raise ``ReplayError`` when ``t`` is before the log's first or after its last ``recorded_at``;
    ``what`` names ``t`` in the message."""
    if t < b.first_at:
        raise ReplayError(f"{what} {iso(t)} is before the log starts (first event recorded at {iso(b.first_at)})")
    if t > b.last_at:
        raise ReplayError(f"{what} {iso(t)} is after the log ends (last event recorded at {iso(b.last_at)}, "
                          f"position {b.last})")


def position_at(store: Store, t: datetime, *, log: str = "trading", b: Bounds | None = None,
                check: bool = True) -> int:
    """The last position recorded at or before ``t`` (0 if none): binary search, then look-ahead."""
    event_log = getattr(store, log)
    b = b or bounds(store, log)
    if check:
        check_within(t, b)
    if t < b.first_at:
        lo = 0
    elif t >= b.last_at:
        return b.last
    else:
        lo, hi = b.first, b.last  # invariant: recorded_at(lo) <= t < recorded_at(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _recorded_at(event_log, mid) <= t:
                lo = mid
            else:
                hi = mid
    # stragglers: a row stamped at or before t committed after one stamped later
    best = lo
    for row in event_log.iter_rows(lo, min(lo + LOOKAHEAD, b.last), batch=LOOKAHEAD):
        at = row[5] if row[5].tzinfo else row[5].replace(tzinfo=UTC)
        if at <= t:
            best = row[0]
    return best


def first_position_from(store: Store, t: datetime, *, log: str = "trading", b: Bounds | None = None) -> int:
    """The first position that may be recorded at or after ``t`` (for window scans)."""
    b = b or bounds(store, log)
    if t <= b.first_at:
        return b.first
    before = position_at(store, t - timedelta(microseconds=1), log=log, b=b, check=False)
    return max(b.first, before - LOOKAHEAD + 1)


def iter_events(store: Store, after: int = 0, stop: int | None = None, *, log: str = "trading",
                progress: Callable[[int], None] | None = None) -> Iterator[LoggedEvent]:
    """Events (voids skipped) with ``after < position <= stop`` in log order."""
    event_log = getattr(store, log)
    for row in event_log.iter_rows(after, stop):
        if progress is not None:
            progress(row[0])
        if row[3] == VOID_TYPE:
            continue
        yield LoggedEvent.from_row(row, log)


def window_events(store: Store, start: datetime, end: datetime, *, axis: Axis = "recorded", log: str = "trading",
                  progress: Callable[[int, int], None] | None = None) -> list[LoggedEvent]:
    """Events of one log whose time on ``axis`` is in [start, end], in log order."""
    event_log = getattr(store, log)
    if event_log.head() == 0:
        return []
    b = bounds(store, log)
    if axis == "recorded":
        if end < b.first_at or start > b.last_at:
            return []
        after = first_position_from(store, start, log=log, b=b) - 1
        stop = min(b.last, position_at(store, end, log=log, b=b, check=False) + LOOKAHEAD)
    else:
        after, stop = 0, b.last
    total = stop - after
    out = []
    for e in iter_events(store, after, stop, log=log,
                         progress=(lambda p: progress(p - after, total)) if progress else None):
        if start <= e.time(axis) <= end:
            out.append(e)
    return out


def order_symbols(store: Store, events: list[LoggedEvent]) -> dict[str, dict[str, Any]]:
    """For every order stream in ``events``: its intent's account, symbol and strategy (read from
    the stream when the intent is not among ``events``)."""
    out: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.type in ("OrderIntentRecorded", "OrderImported"):
            out[e.stream_id] = {"symbol": e.payload["symbol"], "strategy_id": e.payload.get("strategy_id"),
                                "account": e.payload["account"]}
    for e in events:
        if e.kind == "order" and e.stream_id not in out:
            first = store.trading.read_stream(e.stream_id)[:1]
            d = orjson.loads(first[0].state) if first else {}
            out[e.stream_id] = {"symbol": d.get("symbol"), "strategy_id": d.get("strategy_id"),
                                "account": d.get("account")}
    return out
