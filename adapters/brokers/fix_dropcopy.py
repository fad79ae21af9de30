"""A FIX 4.4 drop-copy adapter: a read-only, independent view of an account's executions.

A drop copy is a read-only FIX session that receives copies of the ExecutionReports (35=8) for all
order activity on an account, whatever channel the order came in on (venue docs: Bullish,
Polymarket US, Coinbase Derivatives; some mark copies with CopyMsgIndicator 797=Y). Sequence
recovery can resend reports, so they are applied idempotently (by ExecID 17).

``DropCopyBook`` (no I/O) folds the reports into orders, executions and positions:

* ExecType 150: F Trade adds an execution (LastQty 32 @ LastPx 31); G Trade Correct replaces the
  execution named by ExecRefID 19 with the corrected LastQty/LastPx (kept under the *original*
  ExecID, so it lines up with the fill our log holds; the new ExecID is in ``raw``); H Trade Cancel
  (bust) removes it. 0 New, 4 Canceled, 5 Replaced (ClOrdID 11 changes, OrigClOrdID 41), 8 Rejected,
  C Expired, 3 DoneForDay, D Restated (378), I Order Status, A PendingNew, 6/E pending: the order's
  OrdStatus 39, CumQty 14, LeavesQty 151 and AvgPx 6 are taken from the latest report, in sequence.
* OrdStatus 1 with LeavesQty 0 and CumQty = OrderQty is read as filled: BitGo sends its completing
  fill as 150=F with 39=1 and LeavesQty 0, and the terminal 39=2 only on the following 150=I
  (developers.bitgo.com/reference/tradefixtradingexecutionreport).
* OrderMassStatusRequest 35=AF (MassStatusReqID 584, MassStatusReqType 585=7 all orders) is
  answered by 35=8 150=I reports with TotNumReports 911 / LastRptRequested 912; RequestForPositions
  35=AN (PosReqID 710, PosReqType 724=0) by RequestForPositionsAck 35=AO (PosReqResult 728,
  TotalNumPosReports 727) and PositionReports 35=AP (NoPositions 702: PosType 703, LongQty 704,
  ShortQty 705). A BusinessMessageReject 35=j (RefMsgType 372) means the venue does not support
  the query; then that part of the snapshot is ``Unknown``.

An amount that is not a number (LastQty 32 ``6O``, LongQty 704 ``5,0``), or a Trade without its
LastQty/LastPx, is never read as "absent": the report is kept in ``DropCopyBook.unreadable`` and
the orders and fills of the snapshot are ``Unknown`` with the report named (a PositionReport's:
the positions). The journal keeps the report, so this holds until the session's day is over.

``FixDropCopyAdapter`` runs one session per refresh (``fix_session.FixSession``): Logon, catch up
(resend of every gap, then a TestRequest/Heartbeat round trip), the optional queries, Logout. It
rebuilds the book from the session's journal, so with a persistent store a reconnect only fetches
what is new. It sends no order-entry message, ever. A drop copy carries no cash: balances are
always ``Unknown``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import uuid4

import simplefix

from .base import (
    BrokerAdapter,
    OrderNotFound,
    Unknown,
    VenueError,
    VenueFill,
    VenueOrder,
    VenueOrderStatus,
    VenuePosition,
    VenueQueryFailed,
    VenueSnapshot,
)
from .fix_session import FixSession, FixSessionError, SequenceStore, get, parse_frame, parse_utc_timestamp

ZERO = Decimal(0)
SIDES = {"1": "buy", "2": "sell", "5": "sell", "6": "sell"}  # 5 sell short, 6 sell short exempt
ORD_TYPES = {"1": "market", "2": "limit", "3": "stop", "4": "stop_limit"}
TIME_IN_FORCE = {"0": "day", "1": "gtc", "2": "opg", "3": "ioc", "4": "fok", "6": "gtd", "7": "cls"}
ORD_STATUS_NAMES = {"0": "New", "1": "PartiallyFilled", "2": "Filled", "3": "DoneForDay", "4": "Canceled",
                    "5": "Replaced", "6": "PendingCancel", "7": "Stopped", "8": "Rejected", "9": "Suspended",
                    "A": "PendingNew", "B": "Calculated", "C": "Expired", "D": "AcceptedForBidding",
                    "E": "PendingReplace"}
NO_CASH = "a FIX drop copy reports no cash balances"


TAG_NAMES = {6: "AvgPx", 12: "Commission", 14: "CumQty", 31: "LastPx", 32: "LastQty", 38: "OrderQty",
             44: "Price", 99: "StopPx", 151: "LeavesQty", 704: "LongQty", 705: "ShortQty", 730: "SettlPrice"}


class Unreadable(ValueError):
    """A report's amount field is present but not a finite decimal number (or a Trade lacks one):
    the report cannot be applied, and what it would have told is unknown."""


def _dec(value: str | None, tag: int) -> Decimal | None:
    """The amount in field ``tag``: None when the field is absent; ``Unreadable`` when it is there
    but not a finite number (FIX allows no empty value either). Never a silent None: a fill whose
    LastQty cannot be read must not vanish from the drop copy's view."""
    if value is None:
        return None
    try:
        d = Decimal(value)
    except InvalidOperation:
        d = None
    if d is None or not d.is_finite() or not value.strip():
        raise Unreadable(f"{TAG_NAMES.get(tag, 'tag')} ({tag}) {value!r} is not a number")
    return d


def _required(msg: simplefix.FixMessage, tag: int, what: str) -> Decimal:
    value = _dec(get(msg, tag), tag)
    if value is None:
        raise Unreadable(f"{TAG_NAMES[tag]} ({tag}) is missing from a {what}")
    return value


def map_ord_status(ord_status: str | None, cum_qty: Decimal, leaves_qty: Decimal | None,
                   order_qty: Decimal) -> VenueOrderStatus:
    """OrdStatus (39) in our terms. DoneForDay, Replaced, PendingCancel/Replace, Stopped and
    Suspended are still working orders (open or partially filled by CumQty); 39=1 with LeavesQty 0
    and the whole quantity done is filled (BitGo's completing fill, see the module docstring)."""
    working: VenueOrderStatus = "partially_filled" if cum_qty > 0 else "open"
    if ord_status in ("0", "3", "5", "6", "7", "9", "E"):
        return working
    if ord_status == "1":
        if leaves_qty == 0 and order_qty > 0 and cum_qty >= order_qty:
            return "filled"
        return "partially_filled"
    if ord_status == "2":
        return "filled"
    if ord_status == "B":  # Calculated: done, settlement pending
        return "filled" if leaves_qty == 0 and cum_qty > 0 else working
    if ord_status in ("A", "D"):
        return "pending"
    return {"4": "cancelled", "8": "rejected", "C": "expired"}.get(ord_status or "", "unknown")  # type: ignore[return-value]


@dataclass
class _BookOrder:
    order_id: str
    client_order_id: str | None
    symbol: str
    side: str
    qty: Decimal
    order_type: str
    ord_status: str
    cum_qty: Decimal
    leaves_qty: Decimal | None
    avg_px: Decimal | None
    limit_price: Decimal | None
    stop_price: Decimal | None
    time_in_force: str
    submitted_at: datetime | None
    updated_at: datetime | None
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Request:
    kind: str  # "mass_status" or "positions"
    total: int | None = None
    received: int = 0
    done: bool = False
    rejected: str | None = None
    positions: dict[str, VenuePosition] = field(default_factory=dict)


class DropCopyBook:
    """Orders, executions and positions as the drop copy reported them (see the module docstring).
    ``apply`` takes messages in sequence order; an ExecID seen before is ignored (idempotent)."""

    def __init__(self) -> None:
        self.orders: dict[str, _BookOrder] = {}
        self.fills: dict[str, VenueFill] = {}  # by the original ExecID (corrections keep it)
        self.root: dict[str, str] = {}  # any ExecID -> the original ExecID it corrects
        self.busted: dict[str, str] = {}  # original ExecID -> the bust's ExecID
        self.corrections: dict[str, list[str]] = {}  # original ExecID -> the correcting ExecIDs
        self.seen: set[str] = set()
        self.duplicates = 0
        self.copies = 0  # reports marked CopyMsgIndicator 797=Y
        self.requests: dict[str, _Request] = {}
        # ExecutionReports that could not be read (an amount that is not a number): while any is
        # here, the orders and executions this book shows are incomplete, so they are unknown
        self.unreadable: list[str] = []

    def apply(self, msg: simplefix.FixMessage) -> None:
        msg_type = msg.message_type
        if msg_type == b"8":
            try:
                self._execution_report(msg)
            except Unreadable as e:
                self.unreadable.append(f"ExecutionReport MsgSeqNum {get(msg, 34)} ExecID {get(msg, 17)} "
                                       f"(150={get(msg, 150)}) of order {get(msg, 37)} {get(msg, 55) or ''}: {e}")
        elif msg_type == b"AO":
            self._position_ack(msg)
        elif msg_type == b"AP":
            self._position_report(msg)
        elif msg_type == b"j":
            ref = get(msg, 379)
            if ref and ref in self.requests:
                req = self.requests[ref]
                req.rejected = get(msg, 58) or f"BusinessMessageReject reason {get(msg, 380)}"
                req.done = True
            else:  # a reject without the request's id: every open request of that type
                kind = {"AF": "mass_status", "AN": "positions"}.get(get(msg, 372) or "")
                for req in self.requests.values():
                    if req.kind == kind and not req.done:
                        req.rejected = get(msg, 58) or f"BusinessMessageReject reason {get(msg, 380)}"
                        req.done = True

    def expect(self, request_id: str, kind: str) -> None:
        self.requests[request_id] = _Request(kind)

    # ---------------------------------------------------------------- ExecutionReport
    def _execution_report(self, msg: simplefix.FixMessage) -> None:
        exec_id = get(msg, 17)
        if exec_id:
            if exec_id in self.seen:
                self.duplicates += 1
                return
            self.seen.add(exec_id)
        if get(msg, 797) == "Y":
            self.copies += 1
        exec_type = get(msg, 150)
        req_id = get(msg, 584)
        order_id = get(msg, 37)
        try:
            if order_id and order_id != "NONE":
                self._order(msg, order_id)
            if exec_id and order_id and order_id != "NONE":
                if exec_type == "F":
                    self._trade(msg, exec_id, order_id)
                elif exec_type == "G":
                    self._correct(msg, exec_id, order_id)
                elif exec_type == "H":
                    self._bust(msg, exec_id)
        finally:  # an unreadable answer to a status query still counts as one of its answers
            self._count_answer(msg, req_id, order_id)

    def _count_answer(self, msg: simplefix.FixMessage, req_id: str | None, order_id: str | None) -> None:
        if req_id and req_id in self.requests:
            req = self.requests[req_id]
            total = get(msg, 911)
            if total is not None and total.isdigit():
                req.total = int(total)
            if order_id and order_id != "NONE":
                req.received += 1
            if get(msg, 912) == "Y" or (req.total is not None and req.received >= req.total):
                req.done = True

    def _order(self, msg: simplefix.FixMessage, order_id: str) -> None:
        at = parse_utc_timestamp(get(msg, 60))
        seen = self.orders.get(order_id)
        qty = _dec(get(msg, 38), 38)
        raw = {f"{tag.decode()}": value.decode("latin-1") for tag, value in msg.pairs
               if tag not in (b"8", b"9", b"10")}
        if seen is None:
            seen = self.orders[order_id] = _BookOrder(
                order_id=order_id, client_order_id=get(msg, 41) or get(msg, 11), symbol=get(msg, 55) or "",
                side=SIDES.get(get(msg, 54) or "", "buy"), qty=qty or ZERO,
                order_type=ORD_TYPES.get(get(msg, 40) or "", "limit"), ord_status=get(msg, 39) or "",
                cum_qty=ZERO, leaves_qty=None, avg_px=None, limit_price=None, stop_price=None,
                time_in_force=TIME_IN_FORCE.get(get(msg, 59) or "0", "day"), submitted_at=at, updated_at=at)
        if qty is not None:
            seen.qty = qty
        seen.ord_status = get(msg, 39) or seen.ord_status
        seen.cum_qty = _dec(get(msg, 14), 14) if get(msg, 14) is not None else seen.cum_qty  # type: ignore[assignment]
        seen.leaves_qty = _dec(get(msg, 151), 151) if get(msg, 151) is not None else seen.leaves_qty
        avg = _dec(get(msg, 6), 6)
        seen.avg_px = avg if avg else seen.avg_px
        seen.limit_price = _dec(get(msg, 44), 44) or seen.limit_price
        seen.stop_price = _dec(get(msg, 99), 99) or seen.stop_price
        if at is not None:
            seen.updated_at = at
        # the order keeps the ClOrdID it was entered with (ours); a replace's new one is in raw.
        # raw is the latest report, plus the last Text (58) as "reason" (a reject's, a cancel's)
        reason = get(msg, 58) if seen.ord_status in ("4", "8", "C") else None
        seen.raw = {**raw, **({"reason": reason or seen.raw.get("reason")} if reason or "reason" in seen.raw else {})}

    def _fill(self, msg: simplefix.FixMessage, exec_id: str, order_id: str, qty: Decimal,
              price: Decimal, **raw: Any) -> VenueFill:
        order = self.orders[order_id]
        commission = _dec(get(msg, 12), 12) or ZERO
        comm_type = get(msg, 13)  # CommType: 1 per unit, 2 percent, 3 absolute (the default here)
        if comm_type == "1":
            commission *= qty
        elif comm_type == "2":
            commission = commission * qty * price / 100
        return VenueFill(
            exec_id=exec_id, client_order_id=order.client_order_id, venue_order_id=order_id,
            symbol=order.symbol, side=order.side, qty=qty, price=price,  # type: ignore[arg-type]
            fee=commission,
            fee_currency=get(msg, 479) or get(msg, 15) or "USD",
            occurred_at=parse_utc_timestamp(get(msg, 60)),
            raw={"exec_id": get(msg, 17), "exec_type": get(msg, 150), **raw},
        )

    def _trade(self, msg: simplefix.FixMessage, exec_id: str, order_id: str) -> None:
        qty, price = _required(msg, 32, "Trade (150=F)"), _required(msg, 31, "Trade (150=F)")
        if not qty:
            raise Unreadable("LastQty (32) 0 on a Trade (150=F)")
        self.root[exec_id] = exec_id
        self.fills[exec_id] = self._fill(msg, exec_id, order_id, qty, price)

    def _correct(self, msg: simplefix.FixMessage, exec_id: str, order_id: str) -> None:
        ref = get(msg, 19) or ""
        root = self.root.get(ref, ref)
        self.root[exec_id] = root
        self.corrections.setdefault(root, []).append(exec_id)
        qty, price = _required(msg, 32, "Trade Correct (150=G)"), _dec(get(msg, 31), 31)
        if not qty:  # corrected to nothing: as good as a bust
            self.fills.pop(root, None)
            return
        if price is None:
            raise Unreadable("LastPx (31) is missing from a Trade Correct (150=G)")
        self.fills[root] = self._fill(msg, root, order_id, qty, price, corrected_by=exec_id)

    def _bust(self, msg: simplefix.FixMessage, exec_id: str) -> None:
        ref = get(msg, 19) or ""
        root = self.root.get(ref, ref)
        self.root[exec_id] = root
        self.busted[root] = exec_id
        self.fills.pop(root, None)

    # ---------------------------------------------------------------- positions
    def _position_ack(self, msg: simplefix.FixMessage) -> None:
        req = self.requests.get(get(msg, 710) or "")
        if req is None:
            return
        result, total = get(msg, 728), get(msg, 727)
        if result not in ("0", "2"):  # 1 invalid/unsupported, 3 not authorized, 4 not supported, 99 other
            req.rejected = f"PosReqResult {result}: {get(msg, 58) or 'request refused'}"
            req.done = True
            return
        req.total = int(total) if total and total.isdigit() else 0
        if result == "2" or req.total == 0:
            req.done = True

    def _position_report(self, msg: simplefix.FixMessage) -> None:
        req = self.requests.get(get(msg, 710) or "")
        if req is None:
            return
        symbol = get(msg, 55) or ""
        entries: dict[str, Decimal] = {}
        n = int(get(msg, 702) or 0)
        for i in range(1, n + 1):
            pos_type = msg.get(703, i)
            try:
                long_qty, short_qty = _dec(_text(msg.get(704, i)), 704), _dec(_text(msg.get(705, i)), 705)
            except Unreadable as e:
                req.rejected = f"PositionReport for {symbol}: {e}"
                req.done = True
                return
            if pos_type is not None:
                entries[pos_type.decode()] = (long_qty or ZERO) - (short_qty or ZERO)
        # FIN (end-of-day quantity) when given; else start of day plus the day's transactions
        if "FIN" in entries:
            qty = entries["FIN"]
        elif "SOD" in entries or "TQ" in entries:
            qty = entries.get("SOD", ZERO) + entries.get("TQ", ZERO)
        else:
            req.rejected = f"PositionReport for {symbol} has no FIN, SOD or TQ quantity: {sorted(entries)}"
            req.done = True
            return
        try:
            settle = _dec(get(msg, 730), 730)
        except Unreadable:
            settle = None  # the settlement price is informative only (raw): the quantity stands
        raw = {tag.decode(): value.decode("latin-1") for tag, value in msg.pairs if tag not in (b"8", b"9", b"10")}
        req.positions[symbol] = VenuePosition(symbol=symbol, qty=qty, avg_cost=None, raw={**raw, "settl_px": settle and str(settle)})
        req.received += 1
        if req.total is not None and req.received >= req.total:
            req.done = True

    # ------------------------------------------------------------------- views
    def check_readable(self) -> None:
        """``VenueQueryFailed`` naming the reports that could not be read, if any: the orders and
        executions are then known only in part, which is unknown, never "these and no more"."""
        if self.unreadable:
            more = f" (and {len(self.unreadable) - 1} more)" if len(self.unreadable) > 1 else ""
            raise VenueQueryFailed(f"fix: the drop copy sent a report that cannot be read: "
                                   f"{self.unreadable[0]}{more}")

    def venue_orders(self) -> list[VenueOrder]:
        """Every order the drop copy reported, with its live executions."""
        fills_by_order: dict[str, list[VenueFill]] = {}
        for f in self.fills.values():
            fills_by_order.setdefault(f.venue_order_id, []).append(f)
        out = []
        for o in self.orders.values():
            status = map_ord_status(o.ord_status, o.cum_qty, o.leaves_qty, o.qty)
            out.append(VenueOrder(
                venue_order_id=o.order_id, client_order_id=o.client_order_id, symbol=o.symbol,
                side=o.side, order_type=o.order_type, qty=o.qty, filled_qty=o.cum_qty,  # type: ignore[arg-type]
                status=status, raw_status=ORD_STATUS_NAMES.get(o.ord_status, o.ord_status),
                limit_price=o.limit_price, stop_price=o.stop_price, avg_fill_price=o.avg_px,
                time_in_force=o.time_in_force, submitted_at=o.submitted_at, updated_at=o.updated_at,
                fills=tuple(sorted(fills_by_order.get(o.order_id, ()), key=lambda f: f.exec_id)), raw=o.raw,
            ))
        return out


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


class FixDropCopyAdapter(BrokerAdapter):
    """One account's drop-copy session (read-only; see the module docstring). ``sender``/``target``
    are our SenderCompID and the venue's; ``store`` the directory of the session's sequence numbers
    and journal (None: kept in memory for this adapter's life, so its first session replays the
    venue's day from MsgSeqNum 1). ``mass_status``/``request_positions``: send 35=AF / 35=AN."""

    broker = "fix"

    def __init__(self, *, account: str, host: str, port: int, sender: str, target: str, store: str | None = None,
                 venue: str = "FIX", fix_account: str | None = None, heartbeat: int = 30, timeout: float = 10.0,
                 mass_status: bool = True, request_positions: bool = True) -> None:
        if not account or not sender or not target:
            raise ValueError("fix: account, sender and target must be non-empty")
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"fix: port must be an integer 1..65535, got {port!r}")
        self.account = account
        self.venue = venue
        self.host, self.port = host, port
        self.sender, self.target = sender, target
        self.fix_account = fix_account
        self.heartbeat = heartbeat
        self.timeout = float(timeout)
        self.mass_status = mass_status
        self.request_positions = request_positions
        self.store = SequenceStore(store, sender, target)
        self.book = DropCopyBook()
        self.session: FixSession | None = None
        self.last_error: str | None = None
        self._refreshed = False
        self._positions_request: str | None = None
        self._mass_status_request: str | None = None

    def refresh(self) -> DropCopyBook:
        """One session: rebuild the book from the journal, Logon, catch up, ask, Logout. Raises
        ``VenueError`` (``VenueConnectionError``, ``FixSessionError``) when any step fails."""
        book = DropCopyBook()
        for frame in self.store.messages():
            book.apply(parse_frame(frame))
        session = FixSession(self.host, self.port, sender=self.sender, target=self.target, store=self.store,
                             on_app=lambda msg, _frame: book.apply(msg), heartbeat=self.heartbeat,
                             timeout=self.timeout)
        self.session = session
        self._positions_request = self._mass_status_request = None
        try:
            session.logon()
            session.sync()
            deadline = time.monotonic() + self.timeout
            if self.mass_status:
                self._mass_status_request = rid = f"MS-{uuid4().hex[:16]}"
                book.expect(rid, "mass_status")
                session.send("AF", [(584, rid), (585, 7)] + ([(1, self.fix_account)] if self.fix_account else []))
            if self.request_positions:
                self._positions_request = pid = f"POS-{uuid4().hex[:16]}"
                book.expect(pid, "positions")
                session.send("AN", [(710, pid), (724, 0), (1, self.fix_account or self.account), (581, 1),
                                    (715, datetime.now(timezone.utc).strftime("%Y%m%d")),
                                    (60, datetime.now(timezone.utc).strftime("%Y%m%d-%H:%M:%S.000"))])
            wanted = [r for r in (self._mass_status_request, self._positions_request) if r]
            if wanted:
                try:
                    session.wait_for(lambda: all(book.requests[r].done for r in wanted),
                                     max(0.001, deadline - time.monotonic()), "answers to the status queries")
                except FixSessionError as e:
                    if not session.logged_on:
                        raise  # the link is gone: nothing of this session can be trusted
                    # a venue that ignores a query: only that part is unknown, the reports stand
                    for r in wanted:
                        if not book.requests[r].done:
                            book.requests[r].rejected, book.requests[r].done = f"no answer: {e}", True
            session.logout()
        finally:
            session.close()
        self.book = book
        self._refreshed = True
        return book

    def _ensure(self) -> DropCopyBook:
        if not self._refreshed:
            self.refresh()
        return self.book

    def snapshot(self, since: datetime | None = None, *, now: datetime) -> VenueSnapshot:
        """One session, then every part from its book; a failed session makes every part Unknown."""
        try:
            self.refresh()
        except VenueError as e:
            self.last_error = f"{type(e).__name__}: {e}"
            gone = Unknown(self.last_error)
            return VenueSnapshot(broker=self.broker, venue=self.venue, account=self.account, taken_at=now,
                                 positions=gone, open_orders=gone, recent_orders=gone, fills=gone,
                                 balances=Unknown(NO_CASH), since=since)
        return super().snapshot(since, now=now)

    # --------------------------------------------------------------- queries
    def positions(self) -> list[VenuePosition]:
        book = self._ensure()
        req = book.requests.get(self._positions_request or "")
        if req is None:
            raise VenueQueryFailed("fix: positions were not requested (RequestForPositions off)")
        if req.rejected:
            raise VenueQueryFailed(f"fix: the venue did not answer RequestForPositions: {req.rejected}")
        return [p for p in req.positions.values() if p.qty]

    def recent_orders(self, since: datetime | None = None) -> list[VenueOrder]:
        book = self._ensure()
        book.check_readable()
        orders = book.venue_orders()
        if since is not None:
            orders = [o for o in orders if o.updated_at is None or o.updated_at >= since]
        return sorted(orders, key=lambda o: o.venue_order_id)

    def open_orders(self) -> list[VenueOrder]:
        return [o for o in self.recent_orders() if o.is_open]

    def fills(self, since: datetime | None = None) -> list[VenueFill]:
        book = self._ensure()
        book.check_readable()
        fills = list(book.fills.values())
        if since is not None:
            fills = [f for f in fills if f.occurred_at is None or f.occurred_at >= since]
        return sorted(fills, key=lambda f: (f.occurred_at or datetime.min.replace(tzinfo=timezone.utc), f.exec_id))

    def balances(self) -> list:
        raise VenueQueryFailed(f"fix: {NO_CASH}")

    def order_by_client_id(self, client_order_id: str) -> VenueOrder:
        for order in self.recent_orders():
            if order.client_order_id == client_order_id or order.raw.get("11") == client_order_id:
                return order
        raise OrderNotFound(f"fix: the drop copy reported no order {client_order_id!r}")

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


def parse_drop_copy_url(url: str) -> dict[str, Any]:
    """``fix://HOST:PORT?sender=OURS&target=THEIRS&store=DIR[&account=FIXACCT][&heartbeat=30]
    [&timeout=10][&mass_status=1][&positions=1]`` as the adapter's options; ``ValueError`` for a
    URL that is not one."""
    parts = urlsplit(url)
    if parts.scheme != "fix" or not parts.hostname or not parts.port:
        raise ValueError(f"a drop copy URL looks like fix://host:port?sender=..&target=.., not {url!r}")
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    known = {"sender", "target", "store", "account", "heartbeat", "timeout", "mass_status", "positions"}
    unknown = sorted(set(query) - known)
    if unknown:
        raise ValueError(f"unknown drop copy URL option(s) {', '.join(unknown)}; use {', '.join(sorted(known))}")
    if not query.get("sender") or not query.get("target"):
        raise ValueError("the drop copy URL needs sender= (our SenderCompID) and target= (the venue's)")
    if not query.get("store"):
        # a venue remembers our last MsgSeqNum: a run that starts again from 1 is logged out
        raise ValueError("the drop copy URL needs store=DIR: FIX sequence numbers must persist between runs")

    def flag(name: str) -> bool:
        value = query.get(name, "1").lower()
        if value not in ("1", "0", "true", "false", "yes", "no", "y", "n"):
            raise ValueError(f"{name} must be 1 or 0, not {value!r}")
        return value in ("1", "true", "yes", "y")

    try:
        heartbeat, timeout = int(query.get("heartbeat", "30")), float(query.get("timeout", "10"))
    except ValueError:
        raise ValueError("heartbeat must be whole seconds and timeout a number of seconds") from None
    return {"host": parts.hostname, "port": parts.port, "sender": query["sender"], "target": query["target"],
            "store": query.get("store") or None, "fix_account": query.get("account") or None,
            "heartbeat": heartbeat, "timeout": timeout, "mass_status": flag("mass_status"),
            "request_positions": flag("positions")}


def drop_copy_adapter(url: str, *, account: str, venue: str) -> FixDropCopyAdapter:
    """The adapter for a ``fix://`` URL (``parse_drop_copy_url``), for our ``account`` at ``venue``."""
    return FixDropCopyAdapter(account=account, venue=venue, **parse_drop_copy_url(url))


__all__ = ["DropCopyBook", "FixDropCopyAdapter", "drop_copy_adapter", "map_ord_status", "parse_drop_copy_url"]
