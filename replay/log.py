"""Reading the logs for post-mortems: events with their envelope, time axes, windows, parsing.

Replay only reads. Two time axes:

* ``recorded`` — the log's time: at a position, the latest ``recorded_at`` (the store's clock at
  commit) at or before it, so it never runs backwards along the log (the rule ``Writer.now``
  decides by). It is the row's own stamp except where the stamps went back: a store clock that
  stepped back (a failover to a server whose clock is behind), or, over microseconds, a
  concurrent writer committing after a later stamp (PostgreSQL stamps with the transaction's
  start). The state at T is the log up to the last position whose log time is at or before T: it
  holds no event stamped after T, and leaves out the events stamped at or before T that came
  after the log's time had passed T (``SteppedBack`` runs, reported with the answer). A window
  [start, end] is the positions whose log time is in it, so the state at ``end`` is the state
  just before ``start`` plus the window's events. ``LogTimes`` finds positions by binary search
  over the log time, after one scan of the log in the database for the stepped-back runs.
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
from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Literal

import orjson

from ..adapters.store import Store, as_time
from ..adapters.store.sql import read_cursor
from ..domain.errors import InvalidInput
from ..domain.state import VOID_TYPE

Axis = Literal["recorded", "occurred"]
AXES = ("recorded", "occurred")
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
    log_time: datetime | None = None  # the log's time at the event (None: its own recorded_at)

    @classmethod
    def from_row(cls, row: tuple[Any, ...], log: str = "trading", log_time: datetime | None = None) -> LoggedEvent:
        """The event of one log row (position, stream, version, type, data, recorded_at); a naive
        ``recorded_at`` is taken as UTC, a ``$void`` row gets an empty payload. ``log_time``: the
        log's time at the row when it is later than the row's stamp."""
        position, stream, version, type_name, data, recorded_at = row
        if recorded_at.tzinfo is None:
            recorded_at = recorded_at.replace(tzinfo=UTC)
        recorded_at = recorded_at.astimezone(UTC)
        payload = orjson.loads(bytes(data)) if type_name != VOID_TYPE else {}
        if log_time is not None and log_time <= recorded_at:
            log_time = None
        return cls(log, position, stream, version, type_name, recorded_at, payload, log_time)

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
        """The event's time on ``axis``: on ``recorded``, the log's time at it (its ``recorded_at``
        unless the store's clock had stepped back); on ``occurred``, a bar's close, else
        ``occurred_at``, else ``recorded_at``."""
        if axis == "recorded":
            return self.log_time or self.recorded_at
        if self.type == "BarRecorded":
            return bar_close(self.payload)
        return self.occurred_at or self.recorded_at

    def envelope(self) -> dict[str, Any]:
        """The event's metadata as JSON-ready values (no payload); ``log_time`` only for an event
        stamped before the time the log had reached (the store's clock stepped back)."""
        out = {
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
        if self.log_time is not None:
            out["log_time"] = iso(self.log_time)
        return out

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


def _is_zero(value: Any) -> bool:
    try:
        return Decimal(value) == 0
    except Exception:  # noqa: BLE001 - a description never fails
        return False


def _currency(d: dict[str, Any]) -> str:
    currency = d.get("fee_currency")
    return f" {currency}" if currency and currency != "USD" else ""


def _prices(d: dict[str, Any]) -> str:
    return "".join(f" {name} {_n(d[key])}" for key, name in (("limit_price", "limit"), ("stop_price", "stop"))
                   if d.get(key) is not None)


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
        fee = "fee to come (reported later)" if d.get("fee_pending") else f"fee {_n(d.get('fee'))}{_currency(d)}"
        return f"{who} fill {d['exec_id']}: {_n(d['qty'])} @{_n(d['price'])} {fee}"
    if t == "FillCorrected":
        before = f"{_n(d['previous_qty'])} @{_n(d['previous_price'])}"
        if not _is_zero(d["qty"]):
            after = f"{_n(d['qty'])} @{_n(d['price'])}"
            fee = (", its fee to come" if d.get("fee_pending") else
                   f", fee {_n(d['fee'])}{_currency(d)}" if d.get("fee") is not None else "")
            return f"{who} venue corrected execution {d['corrected_exec_id']} ({before}) to {d['exec_id']}: {after}{fee}"
        return f"{who} venue BUSTED execution {d['corrected_exec_id']} ({before}; {d['exec_id']})"
    if t == "OrderReplaceRequested":
        return (f"{who} amendment {d['replace_id']} asked: qty {_n(d['qty'])}{_prices(d)}; the order keeps its "
                "terms until the venue confirms")
    if t == "OrderReplaceRefused":
        detail = f": {d['detail']}" if d.get("detail") else ""
        return f"{who} amendment {d['replace_id']} REFUSED by {d.get('by', 'risk')} ({', '.join(d['reasons'])}){detail}"
    if t == "OrderReplaced":
        venue_id = f" (venue id {d['venue_order_id']})" if d.get("venue_order_id") else ""
        return f"{who} replaced by the venue: qty {_n(d['qty'])}{_prices(d) or ' limit -'}{venue_id}"
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
        return f"{who} kill switch ENGAGED by {d.get('operator') or d.get('by')}: {d['reason']}"
    if t == "KillSwitchReleased":
        return f"{who} kill switch released by {d.get('operator') or d.get('by')}"
    if t == "DailyLimitBreached":
        return f"{who} daily limit {d['limit']} breached: {_n(d['value'])} > {_n(d['threshold'])}"
    if t == "TradingResumed":
        return f"{who} trading resumed at {d['ramp_pct']}%"
    if t == "PositionCorrected":
        return f"{who} position {d['symbol']} corrected {_n(d['qty_before'])} -> {_n(d['qty_after'])}"
    if t == "CashBalanceRecorded":
        return f"{who} cash {d.get('currency')} = {_n(d['balance'])} at {d.get('venue')}"
    if t == "FeeCharged":
        what = d.get("exec_id") or d["fee_id"]
        order = f" of order {d['client_order_id']}" if d.get("client_order_id") else ""
        if d.get("in_kind"):
            return (f"{who} fee {_n(d['amount'])} {d['symbol']} for {what}{order} at {d['venue']}, taken in kind: "
                    f"the {d['symbol']} position shrinks by it")
        on = f" on {d['symbol']}" if d.get("symbol") else ""
        return f"{who} fee {_n(d['amount'])} {d.get('currency', 'USD')} for {what}{order}{on} at {d['venue']}"
    if t == "OptionSettled":
        how = {"exercise": "exercised", "assignment": "assigned", "expiry": "expired worthless"}[d["action"]]
        ref = f" (venue ref {d['venue_ref']})" if d.get("venue_ref") else ""
        return f"{who} option {d['symbol']}: {_n(d['qty'])} contracts {how} at {d['venue']}{ref}"
    if t == "VariationMarginSettled":
        ref = f" (venue ref {d['venue_ref']})" if d.get("venue_ref") else ""
        return (f"{who} {d['symbol']} daily settlement {d['business_date']} at {d['venue']}: {_n(d['qty'])} contracts "
                f"marked at {_n(d['settlement_price'])}, variation margin {_n(d['amount'])} {d.get('currency', 'USD')}"
                f"{ref}")
    if t == "InstrumentDefined":
        terms = [f"{d['asset_class']} x{_n(d.get('multiplier') or 1)} in {d.get('quote_currency') or 'USD'}"]
        if d.get("settlement_currency") and d["settlement_currency"] != (d.get("quote_currency") or "USD"):
            terms.append(f"settles in {d['settlement_currency']}")
        if d.get("asset_class") == "option":
            terms.append(f"{d.get('right')} on {d.get('underlying')} strike {_n(d.get('strike'))}")
        terms += [f"{k} {_n(d[k])}" for k in ("tick_size", "lot_size") if d.get(k) is not None]
        terms.append("fractional" if d.get("fractional") else "whole units")
        if d.get("expiry"):
            terms.append(f"expires {d['expiry']}")
        return f"instrument {d['symbol']} defined: {', '.join(terms)}"
    if t == "FxRateRecorded":
        source = f" ({d['source']})" if d.get("source") else ""
        return f"FX rate 1 {d['base']} = {_n(d['rate'])} {d['quote']}{source}"
    if t == "CorporateActionRecorded":
        by = f"from the {d.get('source', 'operator')}"
        if d["action"] == "split":
            old, new = _n(d["ratio_from"]), _n(d["ratio_to"])
            kind = "reverse split" if Decimal(d["ratio_to"]) < Decimal(d["ratio_from"]) else "split"
            return (f"corporate action: {d['symbol']} {new}-for-{old} {kind} effective {d['effective_at']} ({by}): "
                    "quantities scale, cost basis kept")
        return f"corporate action: {d['symbol']} becomes {d['new_symbol']} effective {d['effective_at']} ({by})"
    if t == "ReconciliationCompleted":
        return f"{who} reconciliation {d['reconciliation_id']} {d['status']}"
    if t == "TradingBlocked":
        return f"{who} trading BLOCKED: {d['reason']}"
    if t == "DiscrepancyAcknowledged":
        return f"{who} discrepancies acknowledged by {d.get('by')}: {d.get('decision')}"
    if t == "GateApproved":
        return f"gate {d['gate_id']} approved by {d['operator']}: {d['reason']}"
    if t == "SignalRecorded":
        return f"{d['strategy_id']} signal {d['signal']} {d['symbol']} value {_n(d.get('value'))}"
    if t in ("EngineStarted", "EngineStopped"):
        return f"engine {d['engine_id']} {t[6:].lower()} {d.get('reason', '')}".rstrip()
    if t == "RecoveryCompleted":
        return f"engine {d['engine_id']} recovery {'ready' if d.get('ready') else 'NOT ready'}"
    if t == "ShutdownCompleted":
        return (f"engine {d['engine_id']} {d['kind']} shutdown, policy {d['policy']}: "
                f"{len(d.get('cancel_requested') or [])} cancels, {len(d.get('flatten_intents') or [])} flattening "
                f"intents, checkpoint at {d.get('checkpoint_position')}")
    if t == "AccountBootstrapped":
        counts = d.get("counts") or {}
        return (f"{who} bootstrapped from {d['broker']} at {d['venue']}: {counts.get('positions', 0)} positions, "
                f"{counts.get('orders_imported', 0)} orders, {counts.get('balances', 0)} balances")
    if t == "RampStepped":
        return f"{who} ramp {d['from_pct']}% -> {d['to_pct']}% {d.get('reason', '')}".rstrip()
    if t == "RampHeld":
        return f"{who} ramp HELD at {d['pct']}%: {d['reason']}"
    if t == "RampHealthy":
        return f"{who} ramp healthy again at {d['pct']}%"
    if t == "TradingModeChanged":
        return f"{who} {d['mode'].upper()} mode: {d.get('reason', '')}".rstrip()
    if t == "GateEvaluated":
        verdict = "passed" if d["passed"] else ("WAITS FOR APPROVAL" if d.get("requires_approval") else d["action"])
        return f"engine {d['engine_id']} gate {d['gate_id']} {verdict}: {d.get('detail', '')}".rstrip()
    if t == "BarRecorded":
        return (f"bar {d['symbol']} {d['timeframe']} {d['start']} O {_n(d['open'])} H {_n(d['high'])} "
                f"L {_n(d['low'])} C {_n(d['close'])} V {_n(d['volume'])}")
    if t == "DrillCompleted":
        return (f"restore drill {d['outcome']}: RTO {_n(d.get('rto_seconds'))} s, RPO {_n(d.get('rpo_seconds'))} s"
                + (f" ({d['reason']})" if d.get("reason") else ""))
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
    return _utc(row[5])


@dataclass(frozen=True)
class SteppedBack:
    """A run of positions stamped before the time the log had already reached: the store's clock
    stepped back (a failover to a server whose clock is behind), or, over microseconds, a
    concurrent writer's commit landed after a later stamp. Every position of the run has the log
    time ``log_time`` (the latest stamp before ``first``); its own stamps run from ``earliest`` to
    ``latest``, all before ``log_time``."""

    first: int
    last: int
    log_time: datetime
    earliest: datetime
    latest: datetime

    def covers(self, t: datetime) -> bool:
        """Whether ``t`` is stamped again by this run: some of its rows are stamped at or before
        ``t`` although the log's time had passed ``t`` before them."""
        return self.earliest <= t < self.log_time

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {"first": self.first, "last": self.last, "log_time": iso(self.log_time),
                "earliest": iso(self.earliest), "latest": iso(self.latest)}


def _utc(at: Any) -> datetime:
    at = as_time(at)
    return at if at.tzinfo else at.replace(tzinfo=UTC)


class LogTimes:
    """The log's time at each position: the latest ``recorded_at`` at or before it (the running
    maximum), so log time never runs backwards (the rule ``Writer.now`` decides by). It equals
    the row's own stamp except in the runs stamped before the time already reached
    (``SteppedBack``), which this keeps: one pass over the log in the database (a window query
    that returns one row per run; on SQLite only from the first row stamped below the one before
    it), then extended by scanning only the rows appended since. With the
    runs in memory, the log time of a position is one indexed row read (or none, inside a run),
    so the last position at or before an instant is a binary search. ``$void`` rows are not
    events: their stamp (when a reader voided the hole) does not move the log's time. Rows still
    in flight on PostgreSQL when a part was scanned (holes below the head) are not in it."""

    def __init__(self, store: Store, log: str = "trading"):
        self.store = store
        self.log = log
        self.event_log = getattr(store, log)
        self.upto = 0  # scanned up to this position
        self.high: datetime | None = None  # the log time at ``upto``
        self.upto_stamp: datetime | None = None  # the stamp at ``upto`` (to notice a log replaced under us)
        self.runs: list[SteppedBack] = []
        self._firsts: list[int] = []

    # -------------------------------------------------------------------------- building

    def refresh(self) -> LogTimes:
        """Take in the rows appended since the last scan (all of them the first time, or after the
        log was rewound or replaced)."""
        head = self.event_log.head()
        if head < self.upto or (self.upto and self._stamp(self.upto) != self.upto_stamp):
            self.__init__(self.store, self.log)  # type: ignore[misc]
        if head > self.upto:
            self._scan(self.upto, head)
        return self

    @property
    def _archived(self) -> Any:
        """The stamps of the log's archived ranges (``archive.ArchivedTimes``; falsy without any)."""
        found = self.__dict__.get("_archived_times")
        if found is None:
            found = ()
            if self.store.dialect.is_postgres:
                from ..adapters.store.archive import ArchivedTimes

                found = ArchivedTimes(self.store, self.event_log.table)
            self.__dict__["_archived_times"] = found
        return found

    def _stamp(self, position: int) -> datetime | None:
        """The ``recorded_at`` of the row at ``position`` (None: no row there)."""
        if self._archived and (at := self._archived.stamp(position)) is not None:
            return _utc(at)
        with read_cursor(self.store) as cur:
            cur.execute(f"SELECT recorded_at FROM {self._table} WHERE position = {self._p}", (position,))
            row = cur.fetchone()
        return None if row is None else _utc(row[0])

    def _event_at_or_before(self, position: int) -> tuple[int, datetime] | None:
        """(position, stamp) of the last event at or before ``position``: ``$void`` rows (holes a
        reader gave up waiting for, stamped when they were voided) and missing rows are not events
        and do not move the log's time."""
        with read_cursor(self.store) as cur:
            cur.execute(f"SELECT position, recorded_at FROM {self._table} WHERE position <= {self._p}"
                        f" AND type <> '{VOID_TYPE}' ORDER BY position DESC LIMIT 1", (position,))
            row = cur.fetchone()
        found = None if row is None else (int(row[0]), _utc(row[1]))
        if self._archived:  # an archived event may be the later one
            archived = self._archived.event_at_or_before(position)
            if archived is not None and (found is None or archived[0] > found[0]):
                found = (int(archived[0]), _utc(archived[1]))
        return found

    @property
    def _table(self) -> str:
        return self.store.dialect.name(self.event_log.table)

    @property
    def _p(self) -> str:
        return self.store.dialect.param

    def _time_param(self, at: datetime) -> Any:
        # SQLite keeps stamps as the store's own UTC ISO-8601 text: its order is time order
        return self.store.dialect.time_value(at.astimezone(UTC))

    def _first_irregular(self, after: int, head: int) -> int | None:
        """The first position in ``after+1..head`` where the stamps stop rising one row at a time:
        stamped before the time already reached (the row before it, or the log's time at
        ``after``), or right after a missing position (None: they rise all the way). One pass
        of the table joined to itself on the next position: no window function, cheap."""
        table, p = self._table, self._p
        if self.high is not None:
            first = self._stamp(after + 1)
            if first is not None and first < self.high:
                return after + 1
        with read_cursor(self.store) as cur:
            cur.execute(f"SELECT a.position + 1 FROM {table} a LEFT JOIN {table} b ON b.position = a.position + 1"
                        f" WHERE a.position > {p} AND a.position < {p} AND (b.position IS NULL"
                        f" OR b.recorded_at < a.recorded_at OR a.type = '{VOID_TYPE}' OR b.type = '{VOID_TYPE}')"
                        " ORDER BY a.position LIMIT 1", (after, head))
            row = cur.fetchone()
        return None if row is None else int(row[0])

    def _scan(self, after: int, head: int) -> None:
        """Take in the rows ``after+1..head``: the runs, by the running maximum (a window query,
        grouped into runs in the database, so a long run costs one row), on SQLite only from the
        first row where the stamps stop rising."""
        # SQLite's window functions cost four times a pass of the table joined to itself, so it
        # looks for the first irregular row first; on PostgreSQL the window query is the cheaper
        start = self._first_irregular(after, head) if self.store.dialect.is_sqlite else after + 1
        if start is not None:
            # up to start - 1 the stamps rose: the log's time there is the later of its stamp and ``high``
            high = self.high
            if start - 1 > after:
                below = self._time_of(start - 1)
                high = below if high is None or (below is not None and below > high) else high
            self._runs_from(start - 1, head, high)
        last = self.runs[-1] if self.runs else None
        top = last.log_time if last is not None and last.last == head else self._time_of(head)
        if top is not None and (self.high is None or top > self.high):
            self.high = top
        self.upto = head
        self.upto_stamp = self._stamp(head)

    def _runs_from(self, after: int, head: int, high: datetime | None) -> None:
        """The stepped-back runs of ``after+1..head`` given the log time ``high`` at ``after``:
        archived pieces from the archives' stamps, live ones by the window query."""
        if not self._archived:
            self._merge_runs(self._runs_in_table(after, head, high))
            return
        for first, last, archived in self._archived.segments(after, head):
            if archived:
                found, high = _runs_of(self._archived.stamps(first, last), high)
                self._merge_runs(found)
                continue
            self._merge_runs(self._runs_in_table(first - 1, last, high))
            with read_cursor(self.store) as cur:
                cur.execute(f"SELECT max(recorded_at) FROM {self._table} WHERE position > {self._p} AND position <= "
                            f"{self._p} AND type <> '{VOID_TYPE}'", (first - 1, last))
                top = cur.fetchone()[0]
            if top is not None and (high is None or _utc(top) > high):
                high = _utc(top)

    def _runs_in_table(self, after: int, head: int, high: datetime | None) -> list[tuple[Any, ...]]:
        d, table, p = self.store.dialect, self._table, self._p
        before = "max(stamp) OVER (ORDER BY position ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)"
        stamp = f"CASE WHEN type = '{VOID_TYPE}' THEN NULL ELSE recorded_at END"  # a $void row is not an event
        params: tuple[Any, ...] = (after, head)
        log_time = "before"
        if high is not None:
            cast = f"CAST({p} AS timestamptz)" if d.is_postgres else p
            log_time = f"CASE WHEN before IS NULL OR before < {cast} THEN {cast} ELSE before END"
            params = (self._time_param(high), self._time_param(high)) + params  # they come first in the text
        with read_cursor(self.store) as cur:
            cur.execute(
                f"SELECT min(position), max(position), log_time, min(stamp), max(stamp) FROM ("
                " SELECT position, stamp, log_time, position - row_number() OVER (ORDER BY position) AS island"
                f" FROM (SELECT position, stamp, {log_time} AS log_time FROM ("
                f"  SELECT position, stamp, {before} AS before FROM (SELECT position, {stamp} AS stamp FROM {table}"
                f"  WHERE position > {p} AND position <= {p}) AS stamped) AS ordered) AS timed"
                " WHERE stamp < log_time) AS behind GROUP BY island, log_time ORDER BY 1", params)
            return cur.fetchall()

    def _merge_runs(self, found: list[tuple[Any, ...]]) -> None:
        for first, last_position, at, earliest, latest in found:
            run = SteppedBack(int(first), int(last_position), _utc(at), _utc(earliest), _utc(latest))
            last = self.runs[-1] if self.runs else None
            if last is not None and last.last == run.first - 1 and last.log_time == run.log_time:
                self.runs[-1] = SteppedBack(last.first, run.last, run.log_time, min(last.earliest, run.earliest),
                                            max(last.latest, run.latest))
            else:
                self.runs.append(run)
                self._firsts.append(run.first)

    # -------------------------------------------------------------------------- queries

    def run_at(self, position: int) -> SteppedBack | None:
        """The stepped-back run holding ``position`` (None: the position's stamp is its log time)."""
        i = bisect_right(self._firsts, position) - 1
        if i >= 0 and self.runs[i].last >= position:
            return self.runs[i]
        return None

    def time_at(self, position: int) -> datetime:
        """The log's time at ``position`` (1 <= position <= ``upto``): the latest stamp up to it."""
        at = self._time_of(position)
        if at is None:
            raise ReplayError(f"the {self.log} log has no event at or before position {position}")
        return at

    def _time_of(self, position: int) -> datetime | None:
        run = self.run_at(position)
        if run is not None:
            return run.log_time
        found = self._event_at_or_before(position)
        if found is None:
            return None
        event_position, at = found
        if event_position != position:  # a $void or missing row: the log's time at the event before it
            run = self.run_at(event_position)
            if run is not None:
                return run.log_time
        return at

    def position_at(self, t: datetime) -> int:
        """The last position whose log time is at or before ``t`` (0: the first event is later).
        The log up to it holds no event stamped after ``t``; it leaves out the events after it
        stamped at or before ``t`` once the log's time had passed ``t`` (``covering(t)``)."""
        if self.upto == 0 or t < self.time_at(1):
            return 0
        if self.high is not None and t >= self.high:
            return self.upto
        lo, hi = 1, self.upto  # invariant: time_at(lo) <= t < time_at(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.time_at(mid) <= t:
                lo = mid
            else:
                hi = mid
        return lo

    def covering(self, t: datetime, after: int = 0) -> list[SteppedBack]:
        """The runs after position ``after`` that stamp ``t`` again (``SteppedBack.covers``)."""
        return [r for r in self.runs if r.last > after and r.covers(t)]

    def within(self, first: int, last: int) -> list[SteppedBack]:
        """The runs that hold any position in ``first..last``."""
        return [r for r in self.runs if r.last >= first and r.first <= last]


def _runs_of(stamps: Iterator[tuple[int, datetime | None]], high: datetime | None
             ) -> tuple[list[tuple[int, int, datetime, datetime, datetime]], datetime | None]:
    """The stepped-back runs of rows ``(position, stamp or None for $void)`` in order, given the
    log time ``high`` before them, as ``LogTimes``'s window query finds them; and the log time after."""
    found: list[tuple[int, int, datetime, datetime, datetime]] = []
    run: list[Any] | None = None
    for position, stamp in stamps:
        at = None if stamp is None else _utc(stamp)
        if at is not None and high is not None and at < high:
            if run is not None and run[1] == position - 1 and run[2] == high:
                run[1], run[3], run[4] = position, min(run[3], at), max(run[4], at)
            else:
                if run is not None:
                    found.append(tuple(run))  # type: ignore[arg-type]
                run = [position, position, high, at, at]
        if at is not None and (high is None or at > high):
            high = at
    if run is not None:
        found.append(tuple(run))  # type: ignore[arg-type]
    return found, high


def log_times(store: Store, log: str = "trading") -> LogTimes:
    """The ``LogTimes`` of ``store``'s ``log``, kept with the store and brought up to its head."""
    cache = store.__dict__.setdefault("_log_times", {})
    times = cache.get(log)
    if times is None:
        times = cache[log] = LogTimes(store, log)
    return times.refresh()


@dataclass(frozen=True)
class Bounds:
    """A log's first and last positions, the first's ``recorded_at`` and the log's time at the
    last (its latest stamp: later than the last row's own when the store's clock stepped back)."""

    first: int
    last: int
    first_at: datetime
    last_at: datetime


def bounds(store: Store, log: str = "trading") -> Bounds:
    """First and last positions of a log and their log times (refuses an empty log)."""
    event_log = getattr(store, log)
    if event_log.head() == 0:
        raise ReplayError(f"the {log} log in {store.display_url} is empty: nothing to replay")
    times = log_times(store, log)
    return Bounds(1, times.upto, times.time_at(1), times.high)  # type: ignore[arg-type]


def check_within(t: datetime, b: Bounds, what: str = "time") -> None:
    """Raise ``ReplayError`` when ``t`` is before the log's first ``recorded_at`` or after its
    latest; ``what`` names ``t`` in the message."""
    if t < b.first_at:
        raise ReplayError(f"{what} {iso(t)} is before the log starts (first event recorded at {iso(b.first_at)})")
    if t > b.last_at:
        raise ReplayError(f"{what} {iso(t)} is after the log ends (latest event recorded at {iso(b.last_at)}, "
                          f"head position {b.last})")


def position_at(store: Store, t: datetime, *, log: str = "trading", b: Bounds | None = None,
                check: bool = True) -> int:
    """The last position whose log time is at or before ``t`` (0 if none; ``LogTimes.position_at``)."""
    b = b or bounds(store, log)
    if check:
        check_within(t, b)
    return min(b.last, log_times(store, log).position_at(t))


def first_position_from(store: Store, t: datetime, *, log: str = "trading", b: Bounds | None = None) -> int:
    """The first position whose log time is at or after ``t`` (for window scans)."""
    b = b or bounds(store, log)
    if t <= b.first_at:
        return b.first
    return position_at(store, t - timedelta(microseconds=1), log=log, b=b, check=False) + 1


def iter_events(store: Store, after: int = 0, stop: int | None = None, *, log: str = "trading",
                progress: Callable[[int], None] | None = None) -> Iterator[LoggedEvent]:
    """Events (voids skipped) with ``after < position <= stop`` in log order, with their log time."""
    event_log = getattr(store, log)
    high = log_times(store, log).time_at(after) if after > 0 else None
    for row in event_log.iter_rows(after, stop):
        if progress is not None:
            progress(row[0])
        if row[3] == VOID_TYPE:  # not an event: its stamp (when it was voided) is not the log's time
            continue
        at = row[5]
        if high is None or at > high:
            high = at if at.tzinfo else at.replace(tzinfo=UTC)
        yield LoggedEvent.from_row(row, log, high)


def window_events(store: Store, start: datetime, end: datetime, *, axis: Axis = "recorded", log: str = "trading",
                  progress: Callable[[int, int], None] | None = None) -> list[LoggedEvent]:
    """Events of one log whose time on ``axis`` is in [start, end], in log order (on ``recorded``,
    the log's time: one stretch of positions)."""
    event_log = getattr(store, log)
    if event_log.head() == 0:
        return []
    b = bounds(store, log)
    if axis == "recorded":
        if end < b.first_at or start > b.last_at:
            return []
        after = first_position_from(store, start, log=log, b=b) - 1
        stop = position_at(store, end, log=log, b=b, check=False)
        if stop <= after:
            return []
    else:
        after, stop = 0, b.last
    total = max(stop - after, 1)
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
