"""Export the log (or a window of it) for notebooks and BI tools: files (Parquet or JSON lines)
and in-memory Arrow tables.

Kinds (``kind=``):

* ``events`` — one row per event: position, stream_id, version, type, recorded_at, event_id,
  occurred_at, correlation_id, causation_id, payload. In Parquet the payload is the stored JSON
  text (keys sorted); in JSON lines it is a JSON object (decimals as strings inside it).
* ``fills`` — one row per ``OrderFilled``, with the order's symbol, side, venue and strategy.
* ``orders`` — one row per order whose intent (or import) is in the selection, with its lifecycle
  as far as the selected events tell (status, fills, fees, venue order id, refusal, times).
* ``bars`` — one row per ``BarRecorded`` of the market log, with its start and close times.
* ``risk`` — limit changes, breaker trips and resets, kill switch, daily-limit breaches, risk
  refusals, trading blocked and resumed.

Typed kinds use ``decimal128(28, 12)`` for money and quantities: exact over the domain's range
(below 1e15, at most 12 decimal places; a computed value with more places, such as an average fill
price or a breach's P&L, is rounded half-even to 12). ``pyarrow.compute.sum`` gives a
``decimal128(38, 12)``; for a product (qty × price) cast both to ``decimal256`` first. Instants are
``timestamp[us, tz=UTC]``, trading days ``date32``, ids plain strings. In JSON lines, decimals are
strings and times ISO-8601 ``Z`` strings. ``$void`` positions are
left out. Parquet files carry key-value metadata: kind, log, time axis, window, log head and the
export schema version.

Files are written to a temporary file in the target folder and renamed into place: a failed
export leaves nothing behind; an existing file is kept unless ``overwrite=True``; a symbolic link
as the target and a missing folder are refused with :class:`ReplayError` (an ``InvalidInput``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from ..adapters.store import Store
from .log import (
    Axis,
    LoggedEvent,
    ReplayError,
    bar_close,
    bounds,
    check_axis,
    first_position_from,
    iso,
    iter_events,
    parse_time,
    position_at,
)

if TYPE_CHECKING:
    import pyarrow as pa

COLUMNS = ("position", "stream_id", "version", "type", "recorded_at", "event_id", "occurred_at", "correlation_id",
           "causation_id", "payload")
FORMATS = ("parquet", "jsonl")
KINDS = ("events", "fills", "orders", "bars", "risk")
EXPORT_SCHEMA_VERSION = 1
DECIMAL_PRECISION, DECIMAL_SCALE = 28, 12
_QUANTUM = Decimal(1).scaleb(-DECIMAL_SCALE)

RISK_TYPES = ("RiskLimitChanged", "CircuitBreakerTripped", "CircuitBreakerReset", "KillSwitchEngaged",
              "KillSwitchReleased", "DailyLimitBreached", "IntentRejectedByRisk", "TradingBlocked", "TradingResumed",
              "RampStepped", "RampHeld", "TradingModeChanged")
_ORDER_STATUS = {"OrderSubmitted": "submitted", "OrderAcknowledged": "acknowledged", "OrderRejected": "rejected",
                 "OrderCancelled": "cancelled", "OrderExpired": "expired", "IntentRejectedByRisk": "refused"}


# ------------------------------------------------------------------------------ selection


def _selected(store: Store, start: datetime | str | None, end: datetime | str | None, axis: Axis, log: str,
              progress: Callable[[int, int], None] | None) -> Iterator[LoggedEvent]:
    check_axis(axis)
    lo = parse_time(start, "--start") if start is not None else None
    hi = parse_time(end, "--end") if end is not None else None
    if lo is not None and hi is not None and hi < lo:
        raise ReplayError(f"--end {iso(hi)} is before --start {iso(lo)}")
    event_log = getattr(store, log)
    head = event_log.head()
    if head == 0:
        return
    after, stop = 0, head
    if axis == "recorded" and (lo or hi):
        b = bounds(store, log)
        if lo is not None:
            after = first_position_from(store, lo, log=log, b=b) - 1
        if hi is not None:
            stop = min(head, position_at(store, hi, log=log, b=b, check=False))
    total = max(stop - after, 1)
    for e in iter_events(store, after, stop, log=log,
                         progress=(lambda p: progress(p - after, total)) if progress else None):
        if lo is not None or hi is not None:
            t = e.time(axis)
            if (lo is not None and t < lo) or (hi is not None and t > hi):
                continue
        yield e


def _check(kind: str, log: str) -> str:
    if kind not in KINDS:
        raise ReplayError(f"export kind {kind!r} is not one of: {', '.join(KINDS)}")
    if log not in ("trading", "market"):
        raise ReplayError(f"log {log!r} is not one of: trading, market")
    return "market" if kind == "bars" else "trading" if kind != "events" else log


# ---------------------------------------------------------------------------- typed rows


def _dec(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    d = Decimal(str(value))
    return d if d.as_tuple().exponent >= -DECIMAL_SCALE else d.quantize(_QUANTUM, ROUND_HALF_EVEN)  # type: ignore[operator]


def _ts(value: Any) -> datetime | None:
    return parse_time(value) if value else None


def _day(value: Any) -> date | None:
    return date.fromisoformat(value) if value else None


def _intent_of(store: Store, stream_id: str, seen: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The intent (or import) payload of an order stream: from the selection, else the stream's first event."""
    if stream_id not in seen:
        first = store.trading.read_stream(stream_id)[:1]
        seen[stream_id] = orjson.loads(first[0].state) if first else {}
    return seen[stream_id]


def _fill_rows(store: Store, events: Iterator[LoggedEvent], account: str | None) -> Iterator[dict[str, Any]]:
    intents: dict[str, dict[str, Any]] = {}
    for e in events:
        d = e.payload
        if e.type in ("OrderIntentRecorded", "OrderImported"):
            intents[e.stream_id] = d
        if e.type != "OrderFilled" or (account is not None and d.get("account") != account):
            continue
        intent = _intent_of(store, e.stream_id, intents)
        yield {"position": e.position, "recorded_at": e.recorded_at, "occurred_at": _ts(d.get("occurred_at")),
               "account": d.get("account"), "client_order_id": d.get("client_order_id"),
               "venue": intent.get("venue"), "symbol": intent.get("symbol"), "side": intent.get("side"),
               "strategy_id": intent.get("strategy_id"), "exec_id": d.get("exec_id"), "qty": _dec(d.get("qty")),
               "price": _dec(d.get("price")), "fee": _dec(d.get("fee", "0")),
               "fee_currency": d.get("fee_currency", "USD"), "liquidity": d.get("liquidity", "unknown"),
               "venue_order_id": d.get("venue_order_id"), "event_id": d.get("event_id"),
               "correlation_id": d.get("correlation_id")}


def _order_rows(store: Store, events: Iterator[LoggedEvent], account: str | None) -> Iterator[dict[str, Any]]:
    orders: dict[str, dict[str, Any]] = {}
    notional: dict[str, Decimal] = {}
    for e in events:
        d = e.payload
        if account is not None and d.get("account") != account:
            continue
        if e.type in ("OrderIntentRecorded", "OrderImported"):
            imported = e.type == "OrderImported"
            orders[e.stream_id] = {
                "position": e.position, "recorded_at": e.recorded_at, "occurred_at": _ts(d.get("occurred_at")),
                "account": d.get("account"), "client_order_id": d.get("client_order_id"), "venue": d.get("venue"),
                "symbol": d.get("symbol"), "side": d.get("side"), "order_type": d.get("order_type"),
                "qty": _dec(d.get("qty")), "limit_price": _dec(d.get("limit_price")),
                "stop_price": _dec(d.get("stop_price")), "time_in_force": d.get("time_in_force", "day"),
                "strategy_id": d.get("strategy_id"), "source": "imported" if imported else "intent",
                "status": "acknowledged" if imported else "new",
                "refusal": None, "venue_order_id": d.get("venue_order_id"), "filled_qty": Decimal(0),
                "avg_fill_price": None, "fees": Decimal(0), "fills": 0, "discrepancies": 0,
                "cancel_requested": False, "reason": None, "submitted_at": None, "acknowledged_at": None,
                "first_fill_at": None, "last_fill_at": None, "closed_at": None, "last_position": e.position,
                "event_id": d.get("event_id"),
            }
            notional[e.stream_id] = Decimal(0)
            continue
        o = orders.get(e.stream_id)
        if o is None:
            continue
        o["last_position"] = e.position
        at = _ts(d.get("occurred_at")) or e.recorded_at
        if e.type in _ORDER_STATUS:
            o["status"] = _ORDER_STATUS[e.type]
        if e.type == "IntentRejectedByRisk":
            o["refusal"] = ",".join(d.get("reasons", []))
            o["closed_at"] = at
        elif e.type == "OrderSubmitted":
            o["submitted_at"] = at
        elif e.type == "OrderAcknowledged":
            o["acknowledged_at"], o["venue_order_id"] = at, d.get("venue_order_id")
        elif e.type == "OrderFilled":
            qty, price = Decimal(d["qty"]), Decimal(d["price"])
            o["filled_qty"] += qty
            o["fees"] += Decimal(d.get("fee", "0"))
            o["fills"] += 1
            notional[e.stream_id] += qty * price
            o["avg_fill_price"] = _dec(notional[e.stream_id] / o["filled_qty"])
            o["first_fill_at"] = o["first_fill_at"] or at
            o["last_fill_at"] = at
            o["venue_order_id"] = d.get("venue_order_id") or o["venue_order_id"]
            filled = o["qty"] is not None and o["filled_qty"] >= o["qty"]
            o["status"] = "filled" if filled else "partially_filled"
            if filled:
                o["closed_at"] = at
        elif e.type == "FillCorrected":  # as the fold books it: the corrected fill had these values
            q0, q1 = Decimal(d["previous_qty"]), Decimal(d["qty"])
            f0 = Decimal(d.get("previous_fee") or 0)
            f1 = (Decimal(0) if d.get("fee_pending") else Decimal(d["fee"]) if d.get("fee") is not None
                  else f0 if q1 else Decimal(0))
            o["filled_qty"] += q1 - q0
            o["fees"] += f1 - f0
            o["fills"] -= 0 if q1 else 1  # a bust takes the fill away
            notional[e.stream_id] += q1 * Decimal(d["price"]) - q0 * Decimal(d["previous_price"])
            o["avg_fill_price"] = _dec(notional[e.stream_id] / o["filled_qty"]) if o["filled_qty"] else None
            o["venue_order_id"] = d.get("venue_order_id") or o["venue_order_id"]
            if o["status"] in ("new", "submitted", "acknowledged", "partially_filled"):  # a finished one stays so
                if o["qty"] is not None and o["filled_qty"] >= o["qty"]:
                    o["status"], o["closed_at"] = "filled", at
                elif o["filled_qty"] > 0:
                    o["status"] = "partially_filled"
                elif o["status"] == "partially_filled":
                    o["status"] = "acknowledged" if o["venue_order_id"] else "submitted"
        elif e.type == "FeeCharged" and not d.get("in_kind"):  # a fee reported apart, on the order's stream
            o["fees"] += Decimal(d["amount"])
        elif e.type == "OrderReplaced":
            o["qty"], o["limit_price"] = _dec(d.get("qty")), _dec(d.get("limit_price"))
            o["stop_price"] = _dec(d.get("stop_price")) if d.get("stop_price") else o["stop_price"]
        elif e.type == "OrderCancelRequested":
            o["cancel_requested"] = True
        elif e.type == "DiscrepancyRecorded":
            o["discrepancies"] += 1
        if e.type in ("OrderRejected", "OrderCancelled", "OrderExpired"):
            o["closed_at"], o["reason"] = at, d.get("reason") or None
    yield from orders.values()


def _bar_rows(events: Iterator[LoggedEvent], symbol: str | None) -> Iterator[dict[str, Any]]:
    for e in events:
        d = e.payload
        if e.type != "BarRecorded" or (symbol is not None and d.get("symbol") != symbol):
            continue
        yield {"position": e.position, "recorded_at": e.recorded_at, "venue": d.get("venue"),
               "symbol": d.get("symbol"), "timeframe": d.get("timeframe"), "start": _ts(d["start"]),
               "end": bar_close(d), "open": _dec(d["open"]), "high": _dec(d["high"]), "low": _dec(d["low"]),
               "close": _dec(d["close"]), "volume": _dec(d["volume"]), "event_id": d.get("event_id")}


def _risk_rows(events: Iterator[LoggedEvent], account: str | None) -> Iterator[dict[str, Any]]:
    for e in events:
        d = e.payload
        if e.type not in RISK_TYPES or (account is not None and d.get("account") != account):
            continue
        reasons = d.get("reasons")
        yield {"position": e.position, "recorded_at": e.recorded_at, "occurred_at": _ts(d.get("occurred_at")),
               "account": d.get("account"), "type": e.type, "limit": d.get("limit"), "symbol": d.get("symbol"),
               "value": _dec(d.get("value")), "threshold": _dec(d.get("threshold")),
               "trading_day": _day(d.get("trading_day")),
               "reason": ",".join(reasons) if reasons else (d.get("reason") or None),
               "client_order_id": d.get("client_order_id"), "by": d.get("by"), "until": _ts(d.get("until")),
               "ramp_pct": d.get("ramp_pct", d.get("to_pct", d.get("pct"))), "event_id": d.get("event_id")}


def _envelope_row(e: LoggedEvent) -> dict[str, Any]:
    occurred = e.payload.get("occurred_at")
    return {"position": e.position, "stream_id": e.stream_id, "version": e.version, "type": e.type,
            "recorded_at": e.recorded_at, "event_id": e.event_id,
            "occurred_at": parse_time(occurred) if occurred else None, "correlation_id": e.correlation_id,
            "causation_id": e.causation_id, "payload": e.payload}


def _rows(store: Store, kind: str, events: Iterator[LoggedEvent], account: str | None,
          symbol: str | None) -> Iterator[dict[str, Any]]:
    if kind == "fills":
        return _fill_rows(store, events, account)
    if kind == "orders":
        return _order_rows(store, events, account)
    if kind == "bars":
        return _bar_rows(events, symbol)
    if kind == "risk":
        return _risk_rows(events, account)
    return (_envelope_row(e) for e in events if account is None or e.account == account)


# ------------------------------------------------------------------------------- schemas


def schema(kind: str) -> pa.Schema:
    """The Arrow schema of an export kind (``events``, ``fills``, ``orders``, ``bars``, ``risk``)."""
    import pyarrow as pa

    _check(kind, "trading")
    ts, s, i64 = pa.timestamp("us", tz="UTC"), pa.string(), pa.int64()
    dec = pa.decimal128(DECIMAL_PRECISION, DECIMAL_SCALE)
    fields: dict[str, list[tuple[str, Any]]] = {
        "events": [("position", i64), ("stream_id", s), ("version", i64), ("type", s), ("recorded_at", ts),
                   ("event_id", s), ("occurred_at", ts), ("correlation_id", s), ("causation_id", s),
                   ("payload", s)],
        "fills": [("position", i64), ("recorded_at", ts), ("occurred_at", ts), ("account", s),
                  ("client_order_id", s), ("venue", s), ("symbol", s), ("side", s), ("strategy_id", s),
                  ("exec_id", s), ("qty", dec), ("price", dec), ("fee", dec), ("fee_currency", s),
                  ("liquidity", s), ("venue_order_id", s), ("event_id", s), ("correlation_id", s)],
        "orders": [("position", i64), ("recorded_at", ts), ("occurred_at", ts), ("account", s),
                   ("client_order_id", s), ("venue", s), ("symbol", s), ("side", s), ("order_type", s),
                   ("qty", dec), ("limit_price", dec), ("stop_price", dec), ("time_in_force", s),
                   ("strategy_id", s), ("source", s), ("status", s), ("refusal", s), ("venue_order_id", s),
                   ("filled_qty", dec), ("avg_fill_price", dec), ("fees", dec), ("fills", i64),
                   ("discrepancies", i64), ("cancel_requested", pa.bool_()), ("reason", s), ("submitted_at", ts),
                   ("acknowledged_at", ts), ("first_fill_at", ts), ("last_fill_at", ts), ("closed_at", ts),
                   ("last_position", i64), ("event_id", s)],
        "bars": [("position", i64), ("recorded_at", ts), ("venue", s), ("symbol", s), ("timeframe", s),
                 ("start", ts), ("end", ts), ("open", dec), ("high", dec), ("low", dec), ("close", dec),
                 ("volume", dec), ("event_id", s)],
        "risk": [("position", i64), ("recorded_at", ts), ("occurred_at", ts), ("account", s), ("type", s),
                 ("limit", s), ("symbol", s), ("value", dec), ("threshold", dec), ("trading_day", pa.date32()),
                 ("reason", s), ("client_order_id", s), ("by", s), ("until", ts), ("ramp_pct", i64),
                 ("event_id", s)],
    }
    return pa.schema(fields[kind])


def _metadata(store: Store, kind: str, log: str, axis: str, start: Any, end: Any) -> dict[bytes, bytes]:
    meta = {"kind": kind, "log": log, "time_axis": axis,
            "window_start": iso(parse_time(start)) if start is not None else "",
            "window_end": iso(parse_time(end)) if end is not None else "",
            "log_head": str(getattr(store, log).head()), "schema_version": str(EXPORT_SCHEMA_VERSION)}
    return {f"tradestate.{k}".encode(): v.encode() for k, v in meta.items()}


def _arrow_row(kind: str, row: dict[str, Any]) -> dict[str, Any]:
    if kind == "events":
        return {**row, "payload": orjson.dumps(row["payload"], option=orjson.OPT_SORT_KEYS).decode()}
    return row


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, date):
        return value.isoformat()
    return value


# ------------------------------------------------------------------------------ in memory


def _open(store_or_url: Store | str) -> tuple[Store, bool]:
    if isinstance(store_or_url, str):
        from ..adapters.store import open_store

        return open_store(store_or_url, create=False), True
    return store_or_url, False


def frame(store_or_url: Store | str, kind: str, start: datetime | str | None = None,
          end: datetime | str | None = None, *, account: str | None = None, symbol: str | None = None,
          axis: Axis = "recorded", log: str = "trading") -> pa.Table:
    """The selected rows of ``kind`` as a ``pyarrow.Table`` with :func:`schema` (``kind``) and the
    export metadata; ``.to_pandas()`` on it needs pandas. ``store_or_url`` is an open store (left
    open) or a database URL (opened read-only for the call). ``account`` filters account-level
    kinds, ``symbol`` filters bars; ``start``/``end`` bound the window on ``axis`` (inclusive)."""
    import pyarrow as pa

    log = _check(kind, log)
    store, owned = _open(store_or_url)
    try:
        sch = schema(kind).with_metadata(_metadata(store, kind, log, axis, start, end))
        rows = [_arrow_row(kind, r) for r in _rows(store, kind, _selected(store, start, end, axis, log, None),
                                                   account, symbol)]
        return pa.Table.from_pylist(rows, schema=sch)
    finally:
        if owned:
            store.close()


def fills(store_or_url: Store | str, start: datetime | str | None = None, end: datetime | str | None = None,
          account: str | None = None, *, axis: Axis = "recorded") -> pa.Table:
    """Every fill in the window (one row per ``OrderFilled``) as a typed Arrow table: qty, price and
    fee are ``decimal128``, so ``pyarrow.compute.sum(t["qty"])`` is the exact total."""
    return frame(store_or_url, "fills", start, end, account=account, axis=axis)


def orders(store_or_url: Store | str, start: datetime | str | None = None, end: datetime | str | None = None,
           account: str | None = None, *, axis: Axis = "recorded") -> pa.Table:
    """Every order whose intent (or import) is in the window, with its lifecycle as far as the
    window's events tell: status, filled qty, average fill price, fees, refusal and times."""
    return frame(store_or_url, "orders", start, end, account=account, axis=axis)


def bars(store_or_url: Store | str, start: datetime | str | None = None, end: datetime | str | None = None,
         symbol: str | None = None, *, axis: Axis = "recorded") -> pa.Table:
    """Every recorded bar in the window (market log): OHLCV as ``decimal128``, start and close times."""
    return frame(store_or_url, "bars", start, end, symbol=symbol, axis=axis)


def risk_events(store_or_url: Store | str, start: datetime | str | None = None, end: datetime | str | None = None,
                account: str | None = None, *, axis: Axis = "recorded") -> pa.Table:
    """Limit changes, breaker trips and resets, kill switch, daily-limit breaches, risk refusals and
    trading blocked/resumed in the window, one row per event (``type`` names it)."""
    return frame(store_or_url, "risk", start, end, account=account, axis=axis)


# ---------------------------------------------------------------------------------- files


def _target(path: str, overwrite: bool) -> Path:
    """Check that ``path`` may be written: its folder exists, it is not a symbolic link or a
    folder, and it is absent unless ``overwrite``."""
    target = Path(path)
    folder = target.parent
    if not folder.is_dir():
        raise ReplayError(f"cannot write {path}: the folder {folder} does not exist (create it first)")
    if target.is_symlink():
        raise ReplayError(f"cannot write {path}: it is a symbolic link, and an export does not write through one")
    if target.is_dir():
        raise ReplayError(f"cannot write {path}: it is a folder")
    if target.exists() and not overwrite:
        raise ReplayError(f"{path} already exists: pass --force (overwrite=True) to replace it")
    return target


def _write_atomically(target: Path, write: Callable[[str], None]) -> None:
    """Run ``write`` on a temporary file beside ``target``, then rename it over ``target``; on any
    failure the temporary file is removed and ``target`` is left as it was."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def export(store: Store, path: str, *, fmt: str | None = None, start: datetime | str | None = None,
           end: datetime | str | None = None, axis: Axis = "recorded", log: str = "trading",
           progress: Callable[[int, int], None] | None = None, batch: int = 50_000, kind: str = "events",
           account: str | None = None, symbol: str | None = None, overwrite: bool = False) -> int:
    """Write the selected rows of ``kind`` to ``path`` (Parquet or JSON lines, from ``fmt`` or the
    file's extension); returns the number of rows written. ``log`` chooses the log for ``events``
    (``bars`` always read the market log). Bad input (format, kind, window, a missing folder, a
    symbolic link, an existing file without ``overwrite``) raises :class:`ReplayError` before
    anything is written; the file appears only once complete."""
    fmt = fmt or ("parquet" if path.endswith(".parquet") else "jsonl" if path.endswith((".jsonl", ".ndjson")) else None)
    if fmt not in FORMATS:
        raise ReplayError(f"export format {fmt!r} is not one of: parquet, jsonl (or name the file .parquet / .jsonl)")
    log = _check(kind, log)
    check_axis(axis)
    for value, what in ((start, "--start"), (end, "--end")):
        if value is not None:
            parse_time(value, what)
    target = _target(path, overwrite)
    count = 0

    def rows() -> Iterator[dict[str, Any]]:
        return _rows(store, kind, _selected(store, start, end, axis, log, progress), account, symbol)

    def write_jsonl(tmp: str) -> None:
        nonlocal count
        with open(tmp, "wb") as f:
            for r in rows():
                f.write(orjson.dumps({k: _json_value(v) for k, v in r.items()}) + b"\n")
                count += 1

    def write_parquet(tmp: str) -> None:
        nonlocal count
        import pyarrow as pa
        import pyarrow.parquet as pq

        sch = schema(kind).with_metadata(_metadata(store, kind, log, axis, start, end))
        with pq.ParquetWriter(tmp, sch) as writer:
            chunk: list[dict[str, Any]] = []
            for r in rows():
                chunk.append(_arrow_row(kind, r))
                if len(chunk) >= batch:
                    writer.write_table(pa.Table.from_pylist(chunk, schema=sch))
                    count += len(chunk)
                    chunk = []
            if chunk or count == 0:
                writer.write_table(pa.Table.from_pylist(chunk, schema=sch))
                count += len(chunk)

    _write_atomically(target, write_jsonl if fmt == "jsonl" else write_parquet)
    return count
