"""A local FIX 4.4 drop-copy acceptor on 127.0.0.1 (port 0), for tests.

Written from the FIX 4.4 specification (Volume 2, Session Protocol; the message and tag
dictionary as in quickfix ``spec/FIX44.xml``), not from what our adapter expects:

* Session: the first message must be Logon ``35=A`` with the configured CompIDs (else Logout and
  close); the answer is a Logon echoing HeartBtInt 108. ResetSeqNumFlag 141=Y resets both
  directions to 1. An incoming MsgSeqNum below the expected one without PossDupFlag 43=Y is
  answered with Logout "MsgSeqNum too low" and the connection is closed; one above it makes this
  side send a ResendRequest ``35=2``. TestRequest ``35=1`` is answered with a Heartbeat carrying
  TestReqID 112; Logout ``35=5`` with a Logout, then close. Garbled frames (bad BodyLength 9 or
  CheckSum 10) are ignored.
* Every message this side sends gets the next MsgSeqNum and is stored, also while no client is
  connected (a drop copy keeps producing; the client sees the gap at its next Logon and asks).
  A ResendRequest (BeginSeqNo 7, EndSeqNo 16, 0 = infinity) is answered in order: application
  messages again with PossDupFlag 43=Y and OrigSendingTime 122, runs of admin messages replaced
  by one SequenceReset-GapFill ``35=4`` (123=Y, NewSeqNo 36), as the spec requires.
* Drop copy (read-only): ExecutionReports ``35=8`` with CopyMsgIndicator 797=Y for all activity
  on the account (venue drop-copy docs: Bullish, Polymarket US, Coinbase Derivatives), ExecType
  150: 0 New, 4 Canceled, 5 Replaced, 8 Rejected, C Expired, 3 DoneForDay, D Restated (378),
  F Trade, G Trade Correct and H Trade Cancel (ExecRefID 19 names the execution corrected or
  busted), I Order Status; OrdStatus 39, CumQty 14, LeavesQty 151, AvgPx 6, LastQty 32,
  LastPx 31. A new order-entry message from the drop-copy client is refused with a
  BusinessMessageReject ``35=j`` (380=3, "unsupported message type"): the session is read-only.
* OrderMassStatusRequest ``35=AF`` (MassStatusReqID 584, MassStatusReqType 585; 7 = all orders):
  one ``35=8`` 150=I per order known, each with 584, TotNumReports 911 and LastRptRequested 912=Y
  on the last; with no orders, one report with 911=0 and 912=Y. RequestForPositions ``35=AN``
  (PosReqID 710, PosReqType 724=0 positions): RequestForPositionsAck ``35=AO`` (PosMaintRptID 721,
  TotalNumPosReports 727, PosReqResult 728: 0 valid, 2 no positions; PosReqStatus 729=0), then one
  PositionReport ``35=AP`` per symbol (NoPositions 702 with PosType 703=FIN, LongQty 704,
  ShortQty 705). Venues that support neither (``supports_mass_status`` / ``supports_positions``
  False) answer ``35=j`` with BusinessRejectReason 380=3.

Scripted faults: ``rewind(n)`` (a MsgSeqNum n too low without PossDupFlag), ``drop_next(n)`` (the next n messages are stored but not sent: a gap),
``corrupt_next()`` (the next message goes out with a wrong CheckSum), ``duplicate(seq)`` (a message
again with its own MsgSeqNum and 43=Y), ``resend_as_new(seq)`` (an old application message
again under a new MsgSeqNum with PossResend 97=Y), ``bitgo_fills`` (a completing fill comes as
150=F with 39=1 and LeavesQty 0, the terminal 39=2 on a following 150=I: BitGo's documented
ExecutionReport, developers.bitgo.com/reference/tradefixtradingexecutionreport), ``silent_queries``
(35=AF/35=AN go unanswered, as some venues do instead of rejecting).
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from tradestate.adapters.brokers.fix_session import encode, get, parse_frame, take_frame, utc_timestamp

ADMIN = {"0", "1", "2", "3", "4", "5", "A"}
SIDES = {"buy": "1", "sell": "2"}


@dataclass
class _Order:
    order_id: str
    cl_ord_id: str
    symbol: str
    side: str  # "1" buy, "2" sell
    qty: Decimal
    price: Decimal | None
    ord_type: str = "2"
    status: str = "0"
    cum_qty: Decimal = Decimal(0)
    notional: Decimal = Decimal(0)
    fills: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)  # exec id -> (qty, px)

    @property
    def leaves(self) -> Decimal:
        return Decimal(0) if self.status in ("2", "4", "8", "C", "3") else self.qty - self.cum_qty

    @property
    def avg_px(self) -> Decimal:
        return self.notional / self.cum_qty if self.cum_qty else Decimal(0)


class FakeDropCopyServer:
    """The acceptor (``start()`` / ``stop()`` or a context manager); ``port`` once started. The
    venue's CompID is ``sender`` (our TargetCompID), the client's is ``target``."""

    def __init__(self, *, sender: str = "VENUE", target: str = "DESK", account: str = "ACC1",
                 supports_mass_status: bool = True, supports_positions: bool = True,
                 bitgo_fills: bool = False, positions: dict[str, Decimal] | None = None,
                 silent_queries: bool = False) -> None:
        self.sender, self.target, self.account = sender, target, account
        self.supports_mass_status = supports_mass_status
        self.supports_positions = supports_positions
        self.bitgo_fills = bitgo_fills
        self.silent_queries = silent_queries  # a venue that ignores 35=AF/35=AN (no reject, no answer)
        self.positions: dict[str, Decimal] = dict(positions or {})
        self.orders: dict[str, _Order] = {}
        self.next_out = 1
        self.next_in = 1
        self.sent: dict[int, tuple[str, list[tuple[int, Any]], datetime]] = {}  # seq -> (type, body, time)
        self.received: list[tuple[str, int, bool]] = []  # (MsgType, MsgSeqNum, PossDup) per message
        self.logons = 0
        self.resend_requests: list[tuple[int, int]] = []
        self.heartbeat_ids: list[str] = []  # TestReqID 112 of each Heartbeat answering our TestRequest
        self._drop = 0
        self._corrupt = False
        self.resend_without_orig_time = False  # a faulty acceptor: resent messages lack OrigSendingTime 122
        self.garble_positions: str | None = None  # a faulty acceptor: LongQty 704 sent as this text
        self._lock = threading.RLock()
        self._conn: socket.socket | None = None
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ids = itertools.count(1)
        self.port = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeDropCopyServer:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(4)
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, name="fake-fix-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._close_conn()
        for t in self._threads:
            t.join(timeout=5)
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> FakeDropCopyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, store: str) -> str:
        """The adapter URL for this server (``fix://127.0.0.1:PORT?...``)."""
        return f"fix://127.0.0.1:{self.port}?sender={self.target}&target={self.sender}&store={store}"

    def _close_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        buf = b""
        logged_on = False
        try:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                buf += chunk
                while True:
                    frame, buf, _garbled = take_frame(buf)  # garbled frames are ignored (spec)
                    if frame is None:
                        break
                    with self._lock:
                        if not logged_on:
                            if not self._logon(conn, frame):
                                return
                            logged_on = True
                            continue
                        if not self._incoming(frame):
                            return
        finally:
            with self._lock:
                if self._conn is conn:
                    self._conn = None
            conn.close()

    # -------------------------------------------------------------------- sending
    def _send_raw(self, conn: socket.socket | None, data: bytes) -> None:
        if conn is None:
            return
        try:
            conn.sendall(data)
        except OSError:
            pass

    def _emit(self, msg_type: str, body: list[tuple[int, Any]], *, conn: socket.socket | None = None) -> int:
        """Store under the next MsgSeqNum and send to the connected client (unless a fault says not)."""
        with self._lock:
            seq = self.next_out
            self.next_out += 1
            now = datetime.now(timezone.utc)
            self.sent[seq] = (msg_type, body, now)
            data = encode(msg_type, body, sender=self.sender, target=self.target, seq=seq, sending_time=now)
            if self._drop > 0:
                self._drop -= 1
                return seq
            if self._corrupt:
                self._corrupt = False
                trailer = data[-4:-1]
                data = data[:-4] + b"%03d" % ((int(trailer) + 1) % 256) + data[-1:]
            self._send_raw(conn or self._conn, data)
            return seq

    def _resend(self, conn: socket.socket, begin: int, end: int) -> None:
        last = self.next_out - 1
        end = last if end == 0 or end > last else end
        seq = begin
        while seq <= end:
            msg_type, body, sent_at = self.sent.get(seq, ("0", [], datetime.now(timezone.utc)))
            if msg_type in ADMIN:  # a run of admin messages becomes one GapFill
                run_end = seq
                while run_end + 1 <= end and self.sent.get(run_end + 1, ("0",))[0] in ADMIN:
                    run_end += 1
                now = datetime.now(timezone.utc)
                self._send_raw(conn, encode("4", [(123, "Y"), (36, run_end + 1)], sender=self.sender,
                                            target=self.target, seq=seq, sending_time=now,
                                            header=[(43, "Y"), (122, utc_timestamp(now))]))
                seq = run_end + 1
                continue
            header = [(43, "Y")] + ([] if self.resend_without_orig_time else [(122, utc_timestamp(sent_at))])
            self._send_raw(conn, encode(msg_type, body, sender=self.sender, target=self.target, seq=seq,
                                        sending_time=datetime.now(timezone.utc), header=header))
            seq += 1

    # ------------------------------------------------------------------- receiving
    def _logon(self, conn: socket.socket, frame: bytes) -> bool:
        msg = parse_frame(frame)
        seq = int(get(msg, 34) or 0)
        self.received.append((msg.message_type.decode(), seq, get(msg, 43) == "Y"))
        if msg.message_type != b"A" or get(msg, 49) != self.target or get(msg, 56) != self.sender:
            self._send_raw(conn, encode("5", [(58, "first message must be a Logon with the session's CompIDs")],
                                        sender=self.sender, target=self.target, seq=self.next_out,
                                        sending_time=datetime.now(timezone.utc)))
            return False
        if get(msg, 141) == "Y":
            self.next_in = self.next_out = 1
            self.sent.clear()
        elif seq < self.next_in:
            self._send_raw(conn, encode("5", [(58, f"MsgSeqNum too low, expecting {self.next_in} but received "
                                                   f"{seq}")], sender=self.sender, target=self.target,
                                        seq=self.next_out, sending_time=datetime.now(timezone.utc)))
            return False
        self.logons += 1
        self._conn = conn
        reply = [(98, 0), (108, get(msg, 108) or "30")] + ([(141, "Y")] if get(msg, 141) == "Y" else [])
        self._emit("A", reply, conn=conn)
        if seq > self.next_in:
            self._emit("2", [(7, self.next_in), (16, 0)], conn=conn)
        else:
            self.next_in = seq + 1
        return True

    def _incoming(self, frame: bytes) -> bool:
        msg = parse_frame(frame)
        msg_type = msg.message_type.decode()
        seq = int(get(msg, 34) or 0)
        poss_dup = get(msg, 43) == "Y"
        self.received.append((msg_type, seq, poss_dup))
        if msg_type == "0" and get(msg, 112):
            self.heartbeat_ids.append(get(msg, 112))
        if msg_type == "4" and get(msg, 123) == "Y":
            if seq >= self.next_in:
                self.next_in = int(get(msg, 36) or seq + 1)
            return True
        if seq < self.next_in:
            if poss_dup:
                return True
            self._emit("5", [(58, f"MsgSeqNum too low, expecting {self.next_in} but received {seq}")])
            self._close_conn()
            return False
        self.next_in = seq + 1
        conn = self._conn
        if msg_type == "1":
            self._emit("0", [(112, get(msg, 112) or "")])
        elif msg_type == "2":
            begin, end = int(get(msg, 7) or 1), int(get(msg, 16) or 0)
            self.resend_requests.append((begin, end))
            if conn is not None:
                self._resend(conn, begin, end)
        elif msg_type == "5":
            self._emit("5", [])
            self._close_conn()
            return False
        elif msg_type in ("AF", "AN") and self.silent_queries:
            pass
        elif msg_type == "AF":
            self._mass_status(msg)
        elif msg_type == "AN":
            self._positions(msg)
        elif msg_type not in ADMIN:
            self._emit("j", [(45, seq), (372, msg_type), (380, 3),
                             (58, "drop copy session: unsupported message type")])
        return True

    def _mass_status(self, msg: Any) -> None:
        req_id = get(msg, 584) or ""
        if not self.supports_mass_status:
            self._emit("j", [(45, get(msg, 34)), (372, "AF"), (380, 3), (379, req_id),
                             (58, "OrderMassStatusRequest not supported")])
            return
        orders = list(self.orders.values())
        if not orders:
            self._emit("8", [(37, "NONE"), (17, f"MS-{next(self._ids)}"), (150, "I"), (39, "8"),
                             (584, req_id), (911, 0), (912, "Y"), (55, "[N/A]"), (54, "1"), (14, 0), (151, 0),
                             (6, 0), (58, "no orders")])
            return
        for i, order in enumerate(orders, 1):
            self._emit("8", self._report(order, "I", exec_id=f"MS-{next(self._ids)}",
                                         extra=[(584, req_id), (911, len(orders)),
                                                (912, "Y" if i == len(orders) else "N")]))

    def _positions(self, msg: Any) -> None:
        req_id = get(msg, 710) or ""
        if not self.supports_positions:
            self._emit("j", [(45, get(msg, 34)), (372, "AN"), (380, 3), (379, req_id),
                             (58, "RequestForPositions not supported")])
            return
        held = {s: q for s, q in sorted(self.positions.items()) if q}
        ack_id = f"PA-{next(self._ids)}"
        self._emit("AO", [(721, ack_id), (710, req_id), (727, len(held)), (728, 0 if held else 2), (729, 0),
                          (1, self.account)])
        for symbol, qty in held.items():
            self._emit("AP", [(721, f"PR-{next(self._ids)}"), (710, req_id), (727, len(held)), (728, 0),
                              (715, datetime.now(timezone.utc).strftime("%Y%m%d")), (1, self.account),
                              (55, symbol), (702, 1), (703, "FIN"),
                              (704, self.garble_positions or (qty if qty > 0 else 0)),
                              (705, -qty if qty < 0 else 0)])

    # --------------------------------------------------------------- the script
    def _report(self, o: _Order, exec_type: str, *, exec_id: str | None = None,
                extra: list[tuple[int, Any]] = (), status: str | None = None) -> list[tuple[int, Any]]:
        body: list[tuple[int, Any]] = [
            (1, self.account), (37, o.order_id), (11, o.cl_ord_id), (17, exec_id or f"E-{next(self._ids)}"),
            (150, exec_type), (39, status or o.status), (55, o.symbol), (54, o.side), (38, o.qty), (40, o.ord_type),
            (44, o.price), (59, "0"), (14, o.cum_qty),
            (151, o.leaves),
            (6, o.avg_px), (60, utc_timestamp(datetime.now(timezone.utc))), (797, "Y"),
        ]
        return body + list(extra)

    def drop_next(self, n: int = 1) -> None:
        """The next ``n`` messages are stored (and resent on request) but never sent."""
        with self._lock:
            self._drop = n

    def corrupt_next(self) -> None:
        """The next message goes out with a wrong CheckSum (10)."""
        with self._lock:
            self._corrupt = True

    def duplicate(self, seq: int | None = None) -> None:
        """Send message ``seq`` (default: the last) again under its own MsgSeqNum with PossDupFlag 43=Y."""
        with self._lock:
            seq = self.next_out - 1 if seq is None else seq
            msg_type, body, sent_at = self.sent[seq]
            self._send_raw(self._conn, encode(msg_type, body, sender=self.sender, target=self.target, seq=seq,
                                              sending_time=datetime.now(timezone.utc),
                                              header=[(43, "Y"), (122, utc_timestamp(sent_at))]))

    def resend_as_new(self, seq: int) -> int:
        """An old application message again under a new MsgSeqNum with PossResend 97=Y."""
        with self._lock:
            msg_type, body, _ = self.sent[seq]
            return self._emit(msg_type, [(97, "Y"), *body])

    def test_request(self, test_id: str) -> int:
        """Send a TestRequest (35=1, TestReqID 112): the client must answer with a Heartbeat."""
        return self._emit("1", [(112, test_id)])

    def sequence_reset(self, new_seq: int) -> None:
        """SequenceReset-Reset (35=4 without GapFillFlag): the next MsgSeqNum is NewSeqNo 36."""
        with self._lock:
            self._emit("4", [(36, new_seq)])
            for seq in range(self.next_out, new_seq):  # nothing was sent under these numbers
                self.sent[seq] = ("0", [], datetime.now(timezone.utc))
            self.next_out = new_seq

    def rewind(self, n: int) -> None:
        """A broken acceptor: the next MsgSeqNum is ``n`` lower, without PossDupFlag."""
        with self._lock:
            self.next_out -= n

    def new_order(self, cl_ord_id: str, symbol: str, side: str, qty: Decimal | str, price: Decimal | str | None,
                  *, order_id: str | None = None) -> str:
        """A new order at the venue (150=0, 39=0); returns its OrderID (37)."""
        with self._lock:
            o = _Order(order_id or f"O-{next(self._ids)}", cl_ord_id, symbol, SIDES[side], Decimal(qty),
                       None if price is None else Decimal(price), ord_type="1" if price is None else "2")
            self.orders[o.order_id] = o
            self._emit("8", self._report(o, "0"))
            return o.order_id

    def fill(self, order_id: str, qty: Decimal | str, price: Decimal | str, *, exec_id: str | None = None,
             commission: tuple[Decimal | str, str] | None = None) -> str:
        """An execution (150=F): LastQty 32, LastPx 31, optional Commission 12 with CommType 13
        (``(amount, comm_type)``); returns its ExecID."""
        with self._lock:
            o = self.orders[order_id]
            qty, price = Decimal(qty), Decimal(price)
            exec_id = exec_id or f"X-{next(self._ids)}"
            o.fills[exec_id] = (qty, price)
            o.cum_qty += qty
            o.notional += qty * price
            self._move_position(o, qty)
            done = o.cum_qty >= o.qty
            if done and self.bitgo_fills:
                # BitGo: the completing fill says 39=1 with LeavesQty 0; 39=2 follows on a 150=I
                self._emit("8", self._report(o, "F", exec_id=exec_id, status="1", extra=[(32, qty), (31, price)]))
                o.status = "2"
                self._emit("8", self._report(o, "I"))
                return exec_id
            o.status = "2" if done else "1"
            fee = [(12, commission[0]), (13, commission[1])] if commission else []
            self._emit("8", self._report(o, "F", exec_id=exec_id, extra=[(32, qty), (31, price), *fee]))
            return exec_id

    def fill_garbled(self, order_id: str, *, exec_id: str, last_qty: str | None, last_px: str | None) -> str:
        """A Trade (150=F) whose LastQty 32 / LastPx 31 are sent as given, verbatim (None: the
        field is left out): a venue bug or a garbled gateway, in a message whose checksum is right.
        The venue's own state does not move (it is the report that is wrong)."""
        with self._lock:
            o = self.orders[order_id]
            extra = [(tag, value) for tag, value in ((32, last_qty), (31, last_px)) if value is not None]
            self._emit("8", self._report(o, "F", exec_id=exec_id, extra=extra))
            return exec_id

    def correct(self, order_id: str, exec_ref_id: str, qty: Decimal | str, price: Decimal | str) -> str:
        """Trade Correct (150=G): ExecRefID 19 names the execution; the report carries the corrected
        LastQty/LastPx and the order's CumQty/AvgPx after the correction."""
        with self._lock:
            o = self.orders[order_id]
            old_qty, old_px = o.fills.pop(exec_ref_id)
            qty, price = Decimal(qty), Decimal(price)
            new_id = f"X-{next(self._ids)}"
            o.fills[new_id] = (qty, price)
            o.cum_qty += qty - old_qty
            o.notional += qty * price - old_qty * old_px
            self._move_position(o, qty - old_qty)
            o.status = "2" if o.cum_qty >= o.qty else ("1" if o.cum_qty else "0")
            self._emit("8", self._report(o, "G", exec_id=new_id, extra=[(19, exec_ref_id), (32, qty), (31, price)]))
            return new_id

    def bust(self, order_id: str, exec_ref_id: str) -> str:
        """Trade Cancel (150=H): the execution ExecRefID 19 is void; CumQty drops by its quantity."""
        with self._lock:
            o = self.orders[order_id]
            old_qty, old_px = o.fills.pop(exec_ref_id)
            o.cum_qty -= old_qty
            o.notional -= old_qty * old_px
            self._move_position(o, -old_qty)
            if o.status in ("1", "2"):
                o.status = "1" if o.cum_qty else "0"
            exec_id = f"X-{next(self._ids)}"
            self._emit("8", self._report(o, "H", exec_id=exec_id, extra=[(19, exec_ref_id), (32, old_qty),
                                                                         (31, old_px)]))
            return exec_id

    def cancel(self, order_id: str) -> None:
        """Canceled (150=4, 39=4)."""
        self._terminal(order_id, "4", "4")

    def expire(self, order_id: str) -> None:
        """Expired (150=C, 39=C)."""
        self._terminal(order_id, "C", "C")

    def reject(self, order_id: str, text: str = "rejected") -> None:
        """Rejected (150=8, 39=8, OrdRejReason 103=0 broker option)."""
        self._terminal(order_id, "8", "8", [(103, 0), (58, text)])

    def done_for_day(self, order_id: str) -> None:
        """DoneForDay (150=3, 39=3): no further executions today."""
        self._terminal(order_id, "3", "3")

    def replace(self, order_id: str, new_cl_ord_id: str, qty: Decimal | str | None = None,
                price: Decimal | str | None = None) -> None:
        """Replaced (150=5): the new ClOrdID 11, OrigClOrdID 41 the previous one."""
        with self._lock:
            o = self.orders[order_id]
            orig = o.cl_ord_id
            o.cl_ord_id = new_cl_ord_id
            if qty is not None:
                o.qty = Decimal(qty)
            if price is not None:
                o.price = Decimal(price)
            self._emit("8", self._report(o, "5", extra=[(41, orig)]))

    def restate(self, order_id: str, reason: int = 0, qty: Decimal | str | None = None,
                price: Decimal | str | None = None) -> None:
        """Restated (150=D) with ExecRestatementReason 378 (0 = GT corporate action)."""
        with self._lock:
            o = self.orders[order_id]
            if qty is not None:
                o.qty = Decimal(qty)
            if price is not None:
                o.price = Decimal(price)
            self._emit("8", self._report(o, "D", extra=[(378, reason)]))

    def _terminal(self, order_id: str, exec_type: str, status: str, extra: list[tuple[int, Any]] = ()) -> None:
        with self._lock:
            o = self.orders[order_id]
            o.status = status
            self._emit("8", self._report(o, exec_type, extra=extra))

    def _move_position(self, o: _Order, qty: Decimal) -> None:
        sign = 1 if o.side == "1" else -1
        self.positions[o.symbol] = self.positions.get(o.symbol, Decimal(0)) + sign * qty

    def wait_received(self, msg_type: str, count: int = 1, timeout: float = 5.0) -> bool:
        """Wait (bounded) until ``count`` messages of ``msg_type`` arrived from the client."""
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            with self._lock:
                if sum(1 for t, _, _ in self.received if t == msg_type) >= count:
                    return True
            time.sleep(0.01)
        return False
