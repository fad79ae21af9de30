"""The cold fold: a whole log into a state shaped like a restored checkpoint at its head.

``TradingState.apply`` builds every order in full, although most orders of a long log are
finished and are never asked for again. This fold gives the same state while doing only what
the rest of the state depends on: positions, trading-day statistics, cash and account counters
are folded exactly as ``apply`` folds them (``apply`` itself for every event that is not an
order's, ``state.book_fill`` for a fill's effects beyond its order), but an order is tracked
by the few facts its fills need (side, quantity, filled, open or not). At the end an order still
open is built in full from the rows kept for it, and a finished one is left in the log as an id in
the state's ``OrderBook`` (as after a checkpoint restore). Submitted, acknowledged, cancel-request, replace-request (and its refusal), terminal and discrepancy events
are not even decoded: such a payload is decoded only when it does not end with its type's current
schema marker, so that an older payload is upcast and a newer one refused just as ``apply`` would.

Pure: rows in, state out; bringing finished orders back is the application's (``tradestate.loading``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any, Optional, TypedDict

import msgspec
import orjson

from .events import EVENT_TYPES, SCHEMA_KEY, upcast
from .snapshot import ORDER_PREFIX, OrderBook, _key
from .state import ZERO, OrderState, TradingState, book_fill, correct_fill, unreadable

_fromiso = datetime.fromisoformat

# rows: (position, stream_id, version, type, payload bytes, recorded_at as datetime or ISO text)
Pages = Iterable[list[tuple[int, str, int, str, bytes, Any]]]

_CURRENT = {name: cls.schema_version for name, cls in EVENT_TYPES.items()}
# A payload is stored with its schema version as its last key (``Event.to_payload``).
_MARKER = {name: b'"%s":%d}' % (SCHEMA_KEY.encode(), version) for name, version in _CURRENT.items()}

_CREATE = frozenset({"OrderIntentRecorded", "OrderImported"})
_CLOSE = frozenset({"IntentRejectedByRisk", "OrderRejected", "OrderCancelled", "OrderExpired"})
_ORDER_ONLY = frozenset({"OrderSubmitted", "OrderAcknowledged", "OrderCancelRequested", "OrderReplaceRequested",
                         "OrderReplaceRefused"})
_UNREAD = _CLOSE | _ORDER_ONLY | {"DiscrepancyRecorded"}
ORDER_TYPES = _CREATE | _UNREAD | {"OrderFilled", "OrderReplaced", "FillCorrected", "OrderAdjusted"}
# OrderFilled v2 differs from v3 only by ``fee_pending``, which the fold reads with a default of
# False: a v2 payload needs no upcast here (an upcast reads the whole payload).
_FILL_VERSIONS = frozenset({2, EVENT_TYPES["OrderFilled"].schema_version})


# Folded by their handler directly, without ``apply``'s dispatch and time conversion: one risk check
# per order, and every instrument of a registry (10,000 of them cost a tenth of a fold through
# ``apply``). Their handlers read neither the row's time (``at`` stays as the row has it) nor the
# state's position, and no key their partial decoder (``_PARTIAL``) lacks.
_DIRECT = ("RiskCheckPassed", "InstrumentDefined")


def _time(at: Any) -> datetime:
    return at if at.__class__ is datetime else _fromiso(at)


# ---------------------------------------------------------------- decoding only what the fold reads
# The three event types the fold decodes on every order (an intent, its risk check, each fill) are
# decoded into the few keys it reads, not the dozen it does not (~0.3 us less each, a third of
# their decode); so is an instrument's definition. The keys are those ``book_fill``, ``_Order``,
# ``_on_RiskCheckPassed`` and ``InstrumentSpec.from_payload`` read, and ``SCHEMA_KEY``. Typed as the stored form writes them: any other type (a number for a
# quantity, null where text is written) raises and the payload is decoded whole by orjson, so
# the fold then does exactly what it did with orjson's dict; so does a payload that is not ASCII
# (orjson checks its UTF-8 everywhere, the partial decoder only in the keys it reads).
_FillKeys = TypedDict("_FillKeys", {"qty": str, "price": str, "fee": str, "exec_id": str,
                                    "occurred_at": Optional[str], "fee_currency": str, "fee_pending": bool,
                                    SCHEMA_KEY: int},
                      total=False)
_IntentKeys = TypedDict("_IntentKeys", {"account": str, "venue": str, "symbol": str, "side": str, "qty": str,
                                        SCHEMA_KEY: int}, total=False)
_RiskKeys = TypedDict("_RiskKeys", {"account": str, "trading_day": str, SCHEMA_KEY: int}, total=False)
# what ``InstrumentSpec.from_payload`` reads (an instrument's definition is a third of its payload
# envelope: ids, reason, operator)
_InstrumentKeys = TypedDict("_InstrumentKeys", {
    "symbol": str, "asset_class": str, "multiplier": str, "quote_currency": str, "settlement_currency": Optional[str],
    "tick_size": Optional[str], "lot_size": Optional[str], "fractional": bool, "expiry": Optional[str],
    "underlying": Optional[str], "strike": Optional[str], "right": Optional[str], SCHEMA_KEY: int}, total=False)
_PARTIAL: dict[str, Callable[[Any], dict[str, Any]]] = {
    "OrderFilled": msgspec.json.Decoder(_FillKeys).decode,
    "OrderIntentRecorded": msgspec.json.Decoder(_IntentKeys).decode,
    "RiskCheckPassed": msgspec.json.Decoder(_RiskKeys).decode,
    "InstrumentDefined": msgspec.json.Decoder(_InstrumentKeys).decode,
}
_PARTIAL_ERRORS = (msgspec.MsgspecError, TypeError, AttributeError)  # AttributeError: no isascii (a memoryview)


def decode_for_fold(type_name: str, data: Any) -> Any:
    """The payload ``data`` of a ``type_name`` row as the cold fold reads it: for the types in
    ``_PARTIAL``, a dict of the keys the fold reads (the same values as ``orjson.loads``'s dict,
    which is what any other payload gets); not upcast. Equal to ``orjson.loads`` in every key the
    fold reads, for every payload orjson decodes (``tests/unit/test_fold_decode.py``)."""
    partial = _PARTIAL.get(type_name)
    if partial is not None:
        try:
            if data.isascii():
                return partial(data)
        except _PARTIAL_ERRORS:
            pass
    return orjson.loads(data)


class _Order:
    """What the fold needs of an order; ``rows`` are kept while it is open (to build it at the end)."""

    __slots__ = ("open", "qty", "filled", "sign", "key", "account", "rows", "lazy", "sid")

    def __init__(self, sid: str, d: dict[str, Any], account: Any, rows: list[Any] | None, lazy: bytes | None):
        self.sid = sid
        self.open = True
        self.qty = Decimal(d["qty"])
        self.filled = ZERO
        self.sign = 1 if d["side"] == "buy" else -1
        self.key = (d["account"], d["venue"], d["symbol"])
        self.account = account
        self.rows = rows
        self.lazy = lazy  # the 16 bytes of an ``order-<uuid>`` stream (None: not one): a finished
        # order with them is left in the log

    def finish(self) -> None:
        self.open = False
        if self.lazy is not None:
            self.rows = None  # brought back from its own stream if ever asked for


def _payload(type_name: str, data: bytes) -> dict[str, Any]:
    d = decode_for_fold(type_name, data)
    if d.get(SCHEMA_KEY, 1) != _CURRENT[type_name]:
        d = upcast(type_name, orjson.loads(data))  # an upcast reads the whole payload
    return d


def _build(state: TradingState, sid: str, rows: list[Any]) -> OrderState:
    """An order folded from its own rows alone, attached to the state's account."""
    scratch = TradingState(state.exchange_tz)
    for position, stream, version, type_name, data, at in rows:
        scratch.position = position - 1  # one stream's rows: positions are not contiguous
        scratch.apply(position, stream, version, type_name, orjson.loads(data), _time(at))
    order = scratch.orders[sid]
    order.account_state = state.account(order.account)
    return order


def _from_newer_code(type_name: str, data: Any) -> bool:
    try:
        return int(orjson.loads(data).get(SCHEMA_KEY, 1)) > _CURRENT[type_name]
    except (TypeError, ValueError, AttributeError):
        return False


def _refuse(state: TradingState, sid: str, data: Any, pos: int, reason: str) -> None:
    """Quarantine ``sid``: its order (if any) stays as its rows before ``pos`` built it (a finished
    one left in the log stays a finished id, brought back from its stream, up to the refused row,
    when asked for)."""
    try:
        payload = orjson.loads(data)
    except (TypeError, ValueError):
        payload = None
    state.quarantine(sid, payload, pos, reason)


def fold_cold(pages: Pages, exchange_tz: str = "America/New_York") -> tuple[TradingState, int]:
    """(the state after every row of ``pages``, rows folded): ``pages`` is a log from its first
    position, in lists of rows; the state equals ``TradingState.apply`` of each row, except that
    finished orders stay ids in its ``OrderBook`` until the application brings them back. It
    leaves no reference cycle behind but those of the state it returns (the application pauses
    the cyclic collector around it: ``adapters.store.gc_paused``)."""
    state = TradingState(exchange_tz)
    orders: dict[str, _Order] = {}
    fill_effects = book_fill
    fill_versions = _FILL_VERSIONS
    versions = state.stream_versions
    account = state.account
    apply = state.apply
    decode = decode_for_fold
    direct = {name: getattr(state, "_on_" + name) for name in _DIRECT}
    loads = orjson.loads
    quarantined = state.quarantined_streams
    applied = 0
    last = 0
    rows_folded = 0
    for page in pages:
        rows_folded += len(page)
        for row in page:
            pos, sid, version, type_name, data, at = row
            handler = direct.get(type_name)
            if handler is not None:  # ``apply``'s steps without its time conversion (see ``_DIRECT``)
                if pos <= last:
                    raise ValueError(f"event at position {pos} applied after {last}")
                d = decode(type_name, data)
                current = _CURRENT[type_name]
                if d.get(SCHEMA_KEY, 1) != current:
                    d = upcast(type_name, loads(data))
                if quarantined and sid in quarantined:
                    versions[sid] = version
                    last = pos
                    continue
                try:
                    handler(sid, d, pos, at)
                except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError) as e:
                    whole = loads(data)
                    state.quarantine(sid, whole if whole.get(SCHEMA_KEY, 1) == current
                                     else upcast(type_name, whole), pos, unreadable(type_name, sid, e))
                versions[sid] = version
                applied += 1
                last = pos
                continue
            if type_name == "FeeCharged" and sid in orders:  # an order's fee: its rows build the order
                o = orders[sid]
                if o.rows is not None:
                    o.rows.append(row)
            if type_name not in ORDER_TYPES:
                state.position = last
                state.applied += applied
                applied = 0
                apply(pos, sid, version, type_name, loads(data), _time(at))
                last = pos
                continue
            if pos <= last:
                raise ValueError(f"event at position {pos} applied after {last}")
            if quarantined and sid in quarantined:  # a stream already refused stays refused
                versions[sid] = version
                last = pos
                continue
            try:
                if type_name == "OrderFilled":
                    o = orders[sid]
                    d = decode(type_name, data)
                    if d.get(SCHEMA_KEY, 1) not in fill_versions:
                        d = upcast(type_name, loads(data))
                    o.filled += fill_effects(state, o.account, o.key, o.sign, o.sid, d, at)[0]
                    if o.rows is not None:
                        o.rows.append(row)
                    if o.open and o.filled >= o.qty:
                        o.finish()
                elif type_name in _UNREAD:  # only the schema check: the fold needs none of their fields
                    o = orders[sid]
                    if data.__class__ is not bytes or not data.endswith(_MARKER[type_name]):
                        _payload(type_name, data)
                    if o.rows is not None:
                        o.rows.append(row)
                    if type_name in _CLOSE:
                        o.finish()
                    elif type_name == "DiscrepancyRecorded":
                        o.account.discrepancies += 1
                elif type_name in _CREATE:
                    d = _payload(type_name, data)
                    lazy = _key(sid) if sid.startswith(ORDER_PREFIX) else None
                    previous = orders.get(sid)
                    rows = previous.rows if previous is not None and previous.rows is not None else []
                    rows.append(row)
                    o = _Order(sid, d, None, rows, lazy)  # every field read before the account opens
                    o.account = account(d["account"])
                    orders[sid] = o
                elif type_name == "FillCorrected":
                    o = orders[sid]
                    d = _payload(type_name, data)
                    o.filled += correct_fill(state, o.account, o.key, o.sign, o.sid, d, at)[0]
                    if o.rows is not None:
                        o.rows.append(row)
                    if o.open and o.filled >= o.qty:
                        o.finish()
                else:  # OrderReplaced, OrderAdjusted (a corporate action: maybe a new symbol)
                    o = orders[sid]
                    d = _payload(type_name, data)
                    o.qty = Decimal(d["qty"])
                    if "symbol" in d:
                        o.key = (o.key[0], o.key[1], d["symbol"])
                    if o.rows is not None:
                        o.rows.append(row)
                    if o.open and o.filled >= o.qty:
                        o.finish()
            except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError) as e:
                if _from_newer_code(type_name, data):
                    raise  # refused as ``apply`` refuses it: this code cannot read the log
                _refuse(state, sid, data, pos, unreadable(type_name, sid, e))
            versions[sid] = version
            applied += 1
            last = pos
    state.position = last
    state.applied += applied

    finished = []
    built: list[tuple[int, str, OrderState]] = []
    for sid, o in orders.items():
        if o.open or o.lazy is None:
            built.append((o.rows[0][0], sid, _build(state, sid, o.rows)))  # type: ignore[index]
        else:
            finished.append(o.lazy)
    state.orders = book = OrderBook(b"".join(finished))  # type: ignore[arg-type]
    for _, sid, order in sorted(built, key=lambda b: b[0]):
        dict.__setitem__(book, sid, order)
        if order.is_open:
            order.account_state.open_orders[sid] = order  # type: ignore[union-attr]
    return state, rows_folded


__all__ = ["ORDER_TYPES", "decode_for_fold", "fold_cold"]
