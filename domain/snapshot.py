"""Snapshots of ``TradingState`` for checkpoints: what to keep, how to check it, how to load it.

A snapshot keeps everything the engine and the risk checks need *now*: positions, accounts
(limits, breaker, kill switch, ramp, block, cash, trading-day statistics), open orders in full,
signals, engines, the versions of every stream that is not a finished order, and the part of the
execution-id index a venue can still repeat (``EXEC_ID_DAYS``, ``EXEC_ID_ORDERS``: the bounded
recent window), and so of the ids of the fees charged (``FEE_IDS_KEPT``, version 4). Finished orders (filled, cancelled, rejected, expired, refused) are most of a long
log and are almost never touched again: a snapshot keeps only how many there are (version 3;
versions 1 and 2 kept their ids, 16 bytes each, which made a checkpoint grow with the history:
32 MB at ten million events). The restored state's ``OrderBook`` then treats any order stream not
in memory as possibly a finished order in the log, which the application answers with an indexed
read of that stream before a decision (a re-sent intent, a late venue fact, a query:
``tradestate.loading``). That keeps a checkpoint, and a warm start, proportional to the open
state, not to the history.

Pure: no I/O. The bytes are canonical (orjson, sorted keys) so their checksum is stable.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from bisect import bisect_left
from itertools import repeat
from operator import itemgetter
from typing import Any
from uuid import UUID

import orjson

from .instruments import InstrumentSpec
from .state import (
    OPEN_STATUSES,
    AccountState,
    DailyStats,
    OrderState,
    PositionState,
    TradingState,
)

SNAPSHOT_VERSION = 4
# Versions ``restore`` reads: 1 had no execution-id index (restored empty); 1 and 2 came with the
# packed ids of every finished order (restored as a book that knows them: ``OrderBook(ids)``); 3
# keeps only their count (restored as a book that asks the log: ``OrderBook(in_log=count)``); up
# to 3 every account kept the id of every fee it was ever charged (``fee_ids``), 4 the recent ones
# (``FEE_IDS_KEPT``). Each loads as it was written.
READABLE_VERSIONS = (1, 2, 3, 4)
IDS_UNTIL = 2  # the last version that came with the finished orders' ids
# The execution ids a snapshot keeps: those of open orders, and those of the orders filled in the
# last EXEC_ID_DAYS trading days with fills, at most the EXEC_ID_ORDERS most recently filled. A
# venue repeats an execution id close in time (a replayed report, a reconnect); the whole index
# would make a checkpoint, and a warm start, grow with the history (at 1M events of one trading
# day, 245k ids: +16 MB and +0.26 s to a warm start on PostgreSQL).
EXEC_ID_DAYS = 2
EXEC_ID_ORDERS = 20_000
# The ``FeeCharged`` ids an account's snapshot keeps: the FEE_IDS_KEPT folded last. An id makes a
# fee idempotent (``decide_fee`` answers a repeat with the first; the fold books it once); a venue
# re-posts a fee close in time (a reconnect, the next reconciliation), and the whole set, one id
# per fee ever charged, made every checkpoint grow with the history.
FEE_IDS_KEPT = 20_000
ORDER_PREFIX = "order-"
ABSURD = Decimal("1e15")  # no quantity, price or amount in a valid state reaches this
# rows of one order stream: (position, stream_id, version, type, payload bytes, recorded_at)
OrderRows = Iterable[tuple[int, str, int, str, bytes, datetime]]
OrderLoader = Callable[[str, int], OrderRows]
LogReader = Callable[[int], OrderRows]  # every row up to a position, in order (one pass)


class SnapshotInvalid(ValueError):
    """A snapshot failed validation; the message says which check and where."""


# ------------------------------------------------------------------------------ finished orders


class _PackedIds:
    """A read-only sequence view of packed 16-byte ids (``bisect`` searches it in place)."""

    __slots__ = ("blob",)

    def __init__(self, blob: bytes):
        self.blob = blob

    def __len__(self) -> int:
        return len(self.blob) // 16

    def __getitem__(self, i: int) -> bytes:
        return self.blob[16 * i:16 * i + 16]


def merge_ids(ordered: bytes, keys: Iterable[bytes]) -> bytes:
    """The packed ids of ``ordered`` (sorted) and ``keys`` (16 bytes each, any order), sorted,
    each once."""
    view = _PackedIds(ordered)
    parts: list[bytes] = []
    done = 0
    for key in sorted(set(keys)):
        i = bisect_left(view, key, lo=done // 16)
        if i < len(view) and view[i] == key:
            continue  # there already
        parts.append(ordered[done:16 * i])
        parts.append(key)
        done = 16 * i
    parts.append(ordered[done:])
    return b"".join(parts)


class OrderBook(dict):  # type: ignore[type-arg]
    """``TradingState.orders`` after a restore or a cold fold: a plain dict of the orders in
    memory, plus what the book knows of the finished orders left in the log, in one of two ways:

    * their ids (``finished``: a cold fold, a snapshot of version 1 or 2): one packed, sorted bytes
      object (16 bytes an order; ``is_unloaded`` is a binary search in it), never a Python object
      per order. An order stream not in memory and not among them is no order of this state.
    * only their number (``in_log``: a snapshot of version 3, which does not grow with the
      history): then any order stream not in memory may be one of them (``is_unloaded``), and only
      the log can say. A stream the log turned out not to hold is remembered as ``absent`` (a
      bounded set, so the same miss is not read twice).

    Nothing here reads the log, and lookups are plain dict lookups: a finished order that is not
    in memory is simply absent. Bringing one back is the application's job, before a decision
    runs (``tradestate.loading``): read its stream, ``materialize_order``, ``put`` (or ``absent``
    when the stream has no row up to the state's position). ``ordered``: the ids come sorted (a
    snapshot's since it says so); others are sorted once, when first searched."""

    ABSENT_KEPT = 4_096  # streams remembered as not in the log (cleared past this: read again then)

    def __init__(self, finished: bytes = b"", *, ordered: bool = False, in_log: int | None = None):
        super().__init__()
        if in_log is not None and (finished or in_log < 0):
            raise ValueError("a book knows its finished orders either by their ids or by their (non-negative) "
                             "number, not both")
        self._finished = finished  # packed 16-byte ids
        self._ordered = ordered or len(finished) <= 16
        self._back: set[bytes] = set()  # ids among them brought back (``put``): as many as were asked for
        self._in_log = in_log  # None: the ids above are every finished order the log holds
        self._absent: set[str] = set()  # ``in_log`` books: streams the log was read for and does not hold

    @property
    def open_ended(self) -> bool:
        """True when the book knows how many finished orders the log holds but not which (a
        version 3 snapshot): an order stream not in memory may be one, and only the log can say."""
        return self._in_log is not None

    def _ids(self) -> _PackedIds:
        if not self._ordered:
            blob = self._finished
            self._finished = b"".join(sorted(blob[i:i + 16] for i in range(0, len(blob), 16)))
            self._ordered = True
        return _PackedIds(self._finished)

    def _holds(self, key: bytes) -> bool:
        ids = self._ids()
        i = bisect_left(ids, key)
        return i < len(ids) and ids[i] == key

    def is_unloaded(self, sid: object) -> bool:
        """Whether ``sid`` is a finished order of this book that is still only in the log (an
        open-ended book: may be one; the log answers)."""
        if not isinstance(sid, str) or not sid.startswith(ORDER_PREFIX) or dict.__contains__(self, sid):
            return False
        if self._in_log is not None:
            return self._in_log > 0 and sid not in self._absent and _key(sid) is not None
        if not self._finished:
            return False
        key = _key(sid)
        return key is not None and key not in self._back and self._holds(key)

    @property
    def unloaded(self) -> int:
        """How many finished orders are still only in the log."""
        if self._in_log is not None:
            return max(0, self._in_log - len(self._back))
        return len(self._finished) // 16 - len(self._back)

    def unloaded_streams(self) -> list[str]:
        """The stream ids of the finished orders not in memory (a book that knows their ids)."""
        if self._in_log is not None:
            raise ValueError("this book knows only how many finished orders the log holds, not their streams: "
                             "bring them back from a read of the log (materialize_all)")
        blob, back = self._finished, self._back
        keys = (blob[i:i + 16] for i in range(0, len(blob), 16))
        return [ORDER_PREFIX + str(UUID(bytes=key)) for key in keys if key not in back]

    @property
    def ordered(self) -> bool:
        """Whether the packed ids are sorted already (``packed_unloaded`` keeps their order)."""
        return self._ordered

    def packed_unloaded(self) -> bytes:
        """The ids of the finished orders not in memory, packed as 16-byte uuids (in the book's
        order: sorted when ``ordered``; none for an open-ended book)."""
        blob = self._finished
        if not self._back:
            return blob
        back = self._back
        return b"".join(key for key in (blob[i:i + 16] for i in range(0, len(blob), 16)) if key not in back)

    def packed_finished(self, keys: Iterable[bytes]) -> bytes:
        """The ids of every finished order: this book's (brought back or not) with ``keys`` (those
        of the finished orders in memory), packed, sorted, each once."""
        return merge_ids(self._ids().blob, keys)

    def put(self, sid: str, order: OrderState) -> None:
        """Add an order brought back from the log (it is no longer only an id)."""
        dict.__setitem__(self, sid, order)
        key = _key(sid)
        if key is None or key in self._back:
            return
        if self._in_log is not None:
            self._back.add(key)
            self._absent.discard(sid)
        elif self._finished and self._holds(key):
            self._back.add(key)

    def absent(self, sid: str) -> None:
        """Remember that the log holds no stream ``sid`` up to the state's position (an open-ended
        book; such a stream can only appear later, through the fold, which puts it in memory)."""
        if self._in_log is None:
            return
        if len(self._absent) >= self.ABSENT_KEPT:
            self._absent.clear()
        self._absent.add(sid)

    def complete(self) -> None:
        """Every finished order is in memory now (``materialize_all``): a miss is no order."""
        self._finished, self._ordered, self._in_log = b"", True, None
        self._back.clear()
        self._absent.clear()


def materialize_all(state: TradingState, rows: OrderRows) -> None:
    """Bring every finished order of ``state.orders`` (an ``OrderBook``) back from ``rows``: the
    log up to the state's position, in order (one pass instead of one read per order)."""
    book = state.orders
    if not isinstance(book, OrderBook) or not book.unloaded:
        return
    scratch = TradingState(state.exchange_tz)
    for position, stream, version, type_name, data, at in rows:
        if stream.startswith(ORDER_PREFIX) or type_name == "$void":
            scratch.apply(position, stream, version, type_name, orjson.loads(data), at)
    for sid, order in scratch.orders.items():
        if book.is_unloaded(sid):
            order.account_state = state.account(order.account)
            state.stream_versions[sid] = scratch.stream_versions[sid]
            book.put(sid, order)
    book.complete()


def _key(sid: str) -> bytes | None:
    """The 16 bytes of an order stream's uuid (``order-<uuid>``); None if it is not one."""
    try:
        key = bytes.fromhex(sid[len(ORDER_PREFIX):].replace("-", ""))
    except ValueError:
        return None
    return key if len(key) == 16 else None


def materialize_order(state: TradingState, sid: str, rows: OrderRows) -> OrderState:
    """An order folded from its own stream alone (positions and statistics of the scratch fold are
    thrown away: the snapshot already counts them), attached to the live account."""
    scratch = TradingState(state.exchange_tz)
    last = 0
    for position, stream, version, type_name, data, at in rows:
        if stream != sid:
            continue
        scratch.position = position - 1  # only this stream's rows: positions are not contiguous
        scratch.apply(position, stream, version, type_name, orjson.loads(data), at)
        last = version
    order = scratch.orders.get(sid)
    if order is None:
        raise KeyError(f"order stream {sid} has no intent in the log (checkpoint and log disagree)")
    order.account_state = state.account(order.account)
    if order.is_open:  # it was finished when the snapshot was taken; a log that says otherwise is not ours
        raise KeyError(f"order stream {sid} is open in the log but finished in the checkpoint")
    state.stream_versions[sid] = last
    return order


# ------------------------------------------------------------------------------ take


def _d(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _t(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _order_doc(o: OrderState) -> dict[str, Any]:
    return {
        "stream_id": o.stream_id,
        "intent": o.intent,
        "external": o.external,
        "qty": _d(o.qty),
        "limit_price": _d(o.limit_price),
        "stop_price": _d(o.stop_price),
        "status": o.status,
        "filled_qty": _d(o.filled_qty),
        "fill_notional": _d(o.fill_notional),
        "fees": _d(o.fees),
        "venue_order_id": o.venue_order_id,
        "executions": {k: [_d(q), _d(p), pos] for k, (q, p, pos) in o.executions.items()},
        **({"exec_fees": {k: _d(v) for k, v in o.exec_fees.items()}} if o.exec_fees else {}),
        "cancel_requested": o.cancel_requested,
        "discrepancies": o.discrepancies,
        "discrepancy_keys": [[list(k), pos] for k, pos in o.discrepancy_keys.items()],
        "refusal": o.refusal,
        **({"replaces": o.replaces, "replace_pending": o.replace_pending} if o.replaces else {}),
        **({"adjusted": o.adjusted, "symbol": o.symbol} if o.adjusted else {}),  # restated by a corporate action
        "positions": o.positions,
        "created_at": _t(o.created_at),
        "updated_at": _t(o.updated_at),
    }


def _account_doc(a: AccountState) -> dict[str, Any]:
    last = a.last_reconciliation
    return {
        "limits": {k: _d(v) for k, v in a.limits.items()},
        "symbol_position_limits": {k: _d(v) for k, v in a.symbol_position_limits.items()},
        "breaker_tripped": a.breaker_tripped,
        "breaker_reason": a.breaker_reason,
        "breaker_until": _t(a.breaker_until),
        "kill_switch": a.kill_switch,
        "kill_switch_reason": a.kill_switch_reason,
        "ramp_pct": a.ramp_pct,
        "open_orders": list(a.open_orders),
        "daily": {day: [s.trades, s.fills, _d(s.volume), _d(s.realized_pnl), _d(s.fees), sorted(s.breaches)]
                  for day, s in a.daily.items()},
        "discrepancies": a.discrepancies,
        "cash": {k: _d(v) for k, v in a.cash.items()},
        "venue_cash": {venue: {k: _d(v) for k, v in c.items()} for venue, c in a.venue_cash.items()},
        "blocked": a.blocked,
        "blocked_reason": a.blocked_reason,
        "last_reconciliation": None if last is None else {**last, "at": _t(last["at"])},
        "mode": a.mode,
        "mode_reason": a.mode_reason,
        "breaker_trips": a.breaker_trips,
        "ramp": [_t(a.ramp_since), list(a.ramp_baseline), a.ramp_held],
        "fees_pending": a.fees_pending,
        "fee_ids": _recent_fee_ids(a.fee_ids),
        **({"unconverted": [[*k, _d(v)] for k, v in a.unconverted.items()]} if a.unconverted else {}),
    }


def _recent_fee_ids(fee_ids: dict[str, int]) -> dict[str, int]:
    """The ``FEE_IDS_KEPT`` of ``fee_ids`` (id -> where it was folded) folded last. By position:
    a restored account's ids come back in the document's (sorted) order, not the log's."""
    if len(fee_ids) <= FEE_IDS_KEPT:
        return fee_ids
    return dict(heapq.nlargest(FEE_IDS_KEPT, fee_ids.items(), key=itemgetter(1)))


def _position_doc(p: PositionState) -> list[Any]:
    doc = [p.account, p.venue, p.symbol, _d(p.qty), _d(p.cost), _d(p.realized_pnl), _d(p.fees),
           _d(p.last_price), _t(p.updated_at)]
    if p.journal:  # the last fills, so that a venue's correction of one replays them after a restore
        doc.append([[e, _d(q), _d(px), _d(qb), _d(cb), day] for e, q, px, qb, cb, day in p.journal])
    return doc


def _engine_doc(e: dict[str, Any]) -> dict[str, Any]:
    out = {k: (_t(v) if isinstance(v, datetime) else v) for k, v in e.items() if k != "last_recovery"}
    if e.get("last_recovery") is not None:
        out["last_recovery"] = {**e["last_recovery"], "at": _t(e["last_recovery"]["at"])}
    return out


SEP = "\x1f"  # joins execution ids and order streams: an ``Identifier`` has no control characters


def _exec_index(state: TradingState, open_orders: set[str]) -> dict[str, dict[str, list[str]]]:
    """{venue: {trading day of the order's last fill: [exec ids, their order streams]}} for the
    open orders and the recently filled ones (``EXEC_ID_DAYS``, ``EXEC_ID_ORDERS``), each list
    joined by ``SEP`` (two strings per day decode and restore far faster than one entry per id)."""
    days = state.exec_days
    recent = sorted(set(days.values()))[-EXEC_ID_DAYS:]
    cutoff = recent[0] if recent else ""
    kept = set(open_orders)
    for n, sid in enumerate(reversed(days)):
        if n >= EXEC_ID_ORDERS or days[sid] < cutoff:
            break
        kept.add(sid)
    index: dict[str, dict[str, list[str]]] = {}
    for venue, ids in state.exec_ids.items():
        by_day: dict[str, tuple[list[str], list[str]]] = {}
        for exec_id, sid in ids.items():
            if sid not in kept:
                continue
            day = days.get(sid, "")
            group = by_day.get(day)
            if group is None:
                group = by_day[day] = ([], [])
            group[0].append(exec_id)
            group[1].append(sid)
        if by_day:
            index[venue] = {day: [SEP.join(execs), SEP.join(sids)] for day, (execs, sids) in sorted(by_day.items())}
    return index


def take(state: TradingState) -> tuple[dict[str, Any], bytes]:
    """(document, finished-order ids) of the state as it is now. The ids are empty since
    version 3: the document counts the finished orders (``finished_orders``) and keeps none of
    them, so its size follows the open state, not the history."""
    hot: list[dict[str, Any]] = []
    finished = 0
    for order in dict.values(state.orders):
        if order.status in OPEN_STATUSES:
            hot.append(_order_doc(order))
        else:
            finished += 1
    if isinstance(state.orders, OrderBook):
        finished += state.orders.unloaded
    versions = {sid: v for sid, v in state.stream_versions.items()
                if not sid.startswith(ORDER_PREFIX)}
    versions.update((o["stream_id"], state.stream_versions[o["stream_id"]]) for o in hot)
    doc = {
        "snapshot_version": SNAPSHOT_VERSION,
        "position": state.position,
        "applied": state.applied,
        "exchange_tz": state.exchange_tz,
        "orders": hot,
        "finished_orders": finished,
        "positions": [_position_doc(p) for p in state.positions.values()],
        "accounts": {name: _account_doc(a) for name, a in state.accounts.items()},
        "signals": [{**s, "value": _d(s["value"]), "at": _t(s["at"])} for s in state.signals.values()],
        "engines": {name: _engine_doc(e) for name, e in state.engines.items()},
        "stream_versions": versions,
        "exec_ids": _exec_index(state, {o["stream_id"] for o in hot}),
        "gates": {gid: {**g, "at": _t(g["at"])} for gid, g in state.gates.items()},
        "gate_approvals": {gate: {**a, "at": _t(a["at"])} for gate, a in state.gate_approvals.items()},
    }
    if state.instruments or state.fx_rates or state.corporate_actions or state.option_settlements:
        # absent from logs without them: their checkpoints stay as they were
        doc["instruments"] = [spec.to_doc() for spec in state.instruments.values()]
        doc["fx_rates"] = [[base, quote, _d(rate)] for (base, quote), rate in state.fx_rates.items()]
        doc["corporate_actions"] = [[*key, pos] for key, pos in state.corporate_actions.items()]
        doc["option_settlements"] = [[*key, pos] for key, pos in state.option_settlements.items()]
    if state.variation_margins:  # absent without futures settlements
        doc["variation_margins"] = [[*key, pos] for key, pos in state.variation_margins.items()]
    return doc, b""


def encode(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def checksum(data: bytes, finished: bytes) -> str:
    # blake2b: twice sha256's speed here, and a checkpoint of a long log carries megabytes of ids
    h = hashlib.blake2b(digest_size=32)  # ``finished``: empty since version 3
    h.update(len(data).to_bytes(8, "big"))
    h.update(data)
    h.update(finished)
    return h.hexdigest()


# ------------------------------------------------------------------------------ validate


def _walk_times(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for o in doc["orders"]:
        yield f"order {o['stream_id']} created_at", o["created_at"]
        yield f"order {o['stream_id']} updated_at", o["updated_at"]
    for p in doc["positions"]:
        if p[8]:
            yield f"position {p[0]}/{p[1]}/{p[2]} updated_at", p[8]
    for s in doc["signals"]:
        yield f"signal {s['strategy_id']}/{s['symbol']} at", s["at"]
    for name, e in doc["engines"].items():
        for key in ("started_at", "stopped_at"):
            if e.get(key):
                yield f"engine {name} {key}", e[key]


def _amounts(doc: dict[str, Any]) -> Iterator[tuple[str, str | None, bool]]:
    """(where, value, must be a price (> 0))"""
    for o in doc["orders"]:
        where = f"order {o['stream_id']}"
        yield f"{where} qty", o["qty"], False
        yield f"{where} limit_price", o["limit_price"], True
        yield f"{where} stop_price", o["stop_price"], True
        yield f"{where} filled_qty", o["filled_qty"], False
        for exec_id, (qty, price, _pos) in o["executions"].items():
            yield f"{where} execution {exec_id} qty", qty, False
            yield f"{where} execution {exec_id} price", price, True
    for p in doc["positions"]:
        where = f"position {p[0]}/{p[1]}/{p[2]}"
        yield f"{where} qty", p[3], False
        yield f"{where} cost", p[4], False
        yield f"{where} last_price", p[7], True
    for name, a in doc["accounts"].items():
        for k, v in {**a["limits"], **a["symbol_position_limits"]}.items():
            yield f"account {name} limit {k}", v, False
        for k, v in a["cash"].items():
            yield f"account {name} cash {k}", v, False


def latest_time(doc: dict[str, Any]) -> datetime | None:
    """The latest well-formed, zoned time in a snapshot document (None: none, or not a
    document ``problems`` could walk)."""
    latest = None
    try:
        for _where, text in _walk_times(doc):
            try:
                when = datetime.fromisoformat(text)
            except (TypeError, ValueError):
                continue
            if when.tzinfo is not None and (latest is None or when > latest):
                latest = when
    except (KeyError, TypeError, AttributeError, IndexError):
        return latest
    return latest


def problems(doc: dict[str, Any], *, position: int, head: int, now: datetime,
             max_clock_skew: timedelta = timedelta(minutes=5)) -> list[str]:
    """Everything wrong with a snapshot document (empty when it may be loaded)."""
    found: list[str] = []
    if doc.get("snapshot_version") not in READABLE_VERSIONS:
        return [f"snapshot version {doc.get('snapshot_version')!r} is not one of "
                f"{', '.join(map(str, READABLE_VERSIONS))} (written by another tradestate version)"]
    if doc.get("position") != position:
        found.append(f"the document says position {doc.get('position')}, its row says {position}")
    count = doc.get("finished_orders")
    if doc["snapshot_version"] > IDS_UNTIL and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
        found.append(f"finished_orders is not a count: {count!r}")
    if position > head:
        found.append(f"position {position} is beyond the log head {head}")
    latest = now + max_clock_skew
    for where, text in _walk_times(doc):
        try:
            when = datetime.fromisoformat(text)
        except (TypeError, ValueError):
            found.append(f"{where}: not a time: {text!r}")
            continue
        if when.tzinfo is None:
            found.append(f"{where}: time without a zone: {text}")
        elif when > latest:
            found.append(f"{where} is in the future: {text}")
    for where, text, is_price in _amounts(doc):
        if text is None:
            continue
        try:
            value = Decimal(text)
        except (InvalidOperation, TypeError):
            found.append(f"{where}: not a number: {text!r}")
            continue
        if not value.is_finite() or abs(value) >= ABSURD:
            found.append(f"{where} is absurd: {text}")
        elif is_price and value <= 0:
            found.append(f"{where} is not a positive price: {text}")
        elif where.endswith(("qty", "filled_qty")) and " position " not in f" {where}" and value < 0:
            found.append(f"{where} is negative: {text}")
    for p in doc["positions"]:
        qty, cost = Decimal(p[3]), Decimal(p[4])
        if qty and cost / qty < 0:
            found.append(f"position {p[0]}/{p[1]}/{p[2]} has a negative average cost: {cost / qty}")
    return found[:50]


# ------------------------------------------------------------------------------ restore


def _dn(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _tn(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def restore(doc: dict[str, Any], finished: bytes) -> TradingState:
    """A live ``TradingState`` from a validated snapshot; its orders are an ``OrderBook`` holding
    the open orders, the finished ones left in the log: known by their ids (``finished``) in a
    version 1 or 2 snapshot, by their number alone in a version 3 one (whose ``finished`` must be
    empty). A version 1 snapshot has no execution-id index: the restored one is empty."""
    state = TradingState(doc["exchange_tz"])
    state.position = doc["position"]
    state.applied = doc["applied"]
    state.stream_versions = dict(doc["stream_versions"])
    if doc["snapshot_version"] > IDS_UNTIL:
        if finished:
            raise ValueError(f"a version {doc['snapshot_version']} snapshot keeps no finished-order ids, "
                             f"yet {len(finished)} bytes of them came with it")
        state.orders = OrderBook(in_log=doc["finished_orders"])
    else:
        state.orders = OrderBook(finished, ordered=doc.get("finished_sorted") is True)
    for name, a in doc["accounts"].items():
        acct = state.account(name)
        acct.limits = {k: Decimal(v) for k, v in a["limits"].items()}
        acct.symbol_position_limits = {k: Decimal(v) for k, v in a["symbol_position_limits"].items()}
        acct.breaker_tripped = a["breaker_tripped"]
        acct.breaker_reason = a["breaker_reason"]
        acct.breaker_until = _tn(a["breaker_until"])
        acct.kill_switch = a["kill_switch"]
        acct.kill_switch_reason = a["kill_switch_reason"]
        acct.ramp_pct = a["ramp_pct"]
        acct.discrepancies = a["discrepancies"]
        acct.cash = {k: Decimal(v) for k, v in a["cash"].items()}
        # absent before cash was kept per venue: the next reconciliation records each venue's baseline
        acct.venue_cash = {venue: {k: Decimal(v) for k, v in c.items()} for venue, c in a.get("venue_cash", {}).items()}
        acct.blocked = a["blocked"]
        acct.blocked_reason = a["blocked_reason"]
        last = a["last_reconciliation"]
        acct.last_reconciliation = None if last is None else {**last, "at": _tn(last["at"])}
        # absent from snapshots written before the gates and the ramp: the defaults
        acct.mode = a.get("mode", "trading")
        acct.mode_reason = a.get("mode_reason", "")
        acct.breaker_trips = a.get("breaker_trips", 0)
        since, baseline, held = a.get("ramp", (None, (0, 0), ""))
        acct.ramp_since, acct.ramp_baseline, acct.ramp_held = _tn(since), (baseline[0], baseline[1]), held
        acct.fees_pending = dict(a.get("fees_pending", {}))  # absent before pending fees
        acct.fee_ids = dict(a.get("fee_ids", {}))
        acct.unconverted = {(v, q, c): Decimal(x) for v, q, c, x in a.get("unconverted", ())}  # absent: none
        for day, (trades, fills, volume, realized, fees, breaches) in a["daily"].items():
            acct.daily[day] = DailyStats(trades, fills, Decimal(volume), Decimal(realized), Decimal(fees),
                                         set(breaches))
    for o in doc["orders"]:
        intent = o["intent"]
        order = OrderState(o["stream_id"], intent, o["positions"]["intent"], _tn(o["created_at"]))  # type: ignore[arg-type]
        order.external = o["external"]
        order.qty = Decimal(o["qty"])
        order.limit_price = _dn(o["limit_price"])
        order.stop_price = _dn(o["stop_price"])
        order.status = o["status"]
        order.filled_qty = Decimal(o["filled_qty"])
        order.fill_notional = Decimal(o["fill_notional"])
        order.fees = Decimal(o["fees"])
        order.venue_order_id = o["venue_order_id"]
        order.executions = {k: (Decimal(q), Decimal(p), pos) for k, (q, p, pos) in o["executions"].items()}
        if o.get("exec_fees"):  # absent before fill corrections
            order.exec_fees = {k: Decimal(v) for k, v in o["exec_fees"].items()}
        order.cancel_requested = o["cancel_requested"]
        order.discrepancies = o["discrepancies"]
        order.discrepancy_keys = {tuple(k): pos for k, pos in o["discrepancy_keys"]}
        order.refusal = o["refusal"]
        order.replaces = o.get("replaces")  # absent before amendments, and on orders never amended
        order.replace_pending = o.get("replace_pending")
        if o.get("adjusted"):  # absent before corporate actions restated orders (its symbol may have changed)
            order.adjusted, order.symbol = o["adjusted"], o["symbol"]
            order.position_key = (order.account, order.venue, order.symbol)
        order.positions = dict(o["positions"])
        order.updated_at = _tn(o["updated_at"])  # type: ignore[assignment]
        order.account_state = state.account(order.account)
        dict.__setitem__(state.orders, order.stream_id, order)
    for name, a in doc["accounts"].items():
        acct = state.accounts[name]
        acct.open_orders = {sid: state.orders[sid] for sid in a["open_orders"]}
    for spec in doc.get("instruments", ()):  # absent before instruments existed
        state.instruments[spec["symbol"]] = InstrumentSpec.from_payload(spec, spec["position"])
    for base, quote, rate in doc.get("fx_rates", ()):
        state.fx_rates[(base, quote)] = Decimal(rate)
    for symbol, action, effective_at, pos in doc.get("corporate_actions", ()):
        state.corporate_actions[(symbol, action, effective_at)] = pos
    for account, venue, ref, pos in doc.get("option_settlements", ()):
        state.option_settlements[(account, venue, ref)] = pos
    for account, venue, symbol, day, pos in doc.get("variation_margins", ()):
        state.variation_margins[(account, venue, symbol, day)] = pos
    for account, venue, symbol, qty, cost, realized, fees, last_price, updated_at, *rest in doc["positions"]:
        p = PositionState(account, venue, symbol, state.instruments.get(symbol))
        if rest:  # absent before fill corrections, and for a position without fills
            p.journal = [(e, Decimal(q), Decimal(px), Decimal(qb), Decimal(cb), day)
                         for e, q, px, qb, cb, day in rest[0]]
        p.qty, p.cost, p.realized_pnl, p.fees = Decimal(qty), Decimal(cost), Decimal(realized), Decimal(fees)
        p.last_price = _dn(last_price)
        p.updated_at = _tn(updated_at)
        state.positions[(account, venue, symbol)] = p
    for s in doc["signals"]:
        state.signals[(s["strategy_id"], s["symbol"])] = {**s, "value": _dn(s["value"]), "at": _tn(s["at"])}
    for name, e in doc["engines"].items():
        engine = {k: (_tn(v) if k in ("started_at", "stopped_at") else v) for k, v in e.items()}
        if engine.get("last_recovery") is not None:
            engine["last_recovery"] = {**engine["last_recovery"], "at": _tn(engine["last_recovery"]["at"])}
        state.engines[name] = engine
    state.gates = {gid: {**g, "at": _tn(g["at"])} for gid, g in doc.get("gates", {}).items()}  # absent before gates
    for gate, approval in doc.get("gate_approvals", {}).items():  # absent before gates existed
        state.gate_approvals[gate] = {**approval, "at": _tn(approval["at"])}
    for venue, by_day in doc.get("exec_ids", {}).items():
        ids = state.exec_ids[venue] = {}
        for day, (execs, sids) in by_day.items():
            streams = sids.split(SEP)
            executions = execs.split(SEP)
            if len(streams) != len(executions):
                raise ValueError(f"exec_ids of {venue} on {day}: {len(executions)} ids for {len(streams)} orders")
            ids.update(zip(executions, streams))
            state.exec_days.update(zip(streams, repeat(day)))
    return state


__all__ = [
    "EXEC_ID_DAYS",
    "EXEC_ID_ORDERS",
    "FEE_IDS_KEPT",
    "OrderBook",
    "READABLE_VERSIONS",
    "SNAPSHOT_VERSION",
    "SnapshotInvalid",
    "checksum",
    "encode",
    "materialize_all",
    "materialize_order",
    "problems",
    "restore",
    "take",
]
