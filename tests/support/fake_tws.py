"""A local fake TWS / IB Gateway that speaks the TWS API socket protocol, for tests.

It listens on 127.0.0.1 (a free port) on a background thread and talks to the real ``ib_insync``
client (never a mock): the ``API\\0`` handshake with a version range, length-prefixed
NUL-separated messages, the server version + connection time reply, ``startApi``, then
``managedAccounts`` and ``nextValidId``, and the answers (with their end markers) to everything
``IB.connect()`` asks for during its start-up sync and to what the adapter asks later.

Server version: **176** (the top of ib_insync 0.9.86's 157..176 range). Every message is encoded
field by field as ``ib_insync/decoder.py`` reads it at that version (no version field where TWS
dropped it: ``openOrder``, ``orderStatus``, ``execDetails``, ``completedOrder``; the error message
carries ``advancedOrderRejectJson`` since 166; ``openOrder`` carries duration, postToAts,
autoCancelParent and the five PEG BEST/MID fields).

Behaviour kept close to TWS's documented behaviour:

* ``orderId`` is per API client id (``nextValidId`` per client, remembered across sessions;
  ``reset_order_ids()`` is TWS's "reset API order ID sequence"), ``permId`` is global and never
  reused; orders placed in TWS by hand have orderId 0, clientId 0 and an empty ``orderRef``.
* ``reqOpenOrders``: this client's open orders; ``reqAllOpenOrders``: every client's (each as
  ``openOrder`` + ``orderStatus``, then ``openOrderEnd``); ``reqCompletedOrders``: finished ones
  (``completedOrder`` ... ``completedOrdersEnd``), which carry permId but no orderId/clientId.
* ``reqExecutions`` honours the filter (client id, account, time, symbol, side) and sends
  ``execDetails`` then ``commissionReport`` per execution, then ``execDetailsEnd``. Execution ids
  look like TWS's ``0000e0d5.6576c1d1.01.01``; a correction is a *new* execution whose id differs
  only after the last '.' (``.02``), both stay in the day's list, as TWS reports them.
* ``reqPositions`` / ``positionEnd``; ``reqAccountUpdates`` (account values: ``CashBalance``,
  ``TotalCashBalance`` per currency and ``BASE``, ``TotalCashValue`` in the base currency; the
  portfolio; ``accountDownloadEnd``); ``reqAccountUpdatesMulti``; ``reqAccountSummary``.
* ``placeOrder`` -> ``openOrder``/``orderStatus`` (PreSubmitted, Submitted); market orders fill at
  the symbol's mark (``execDetails``, ``commissionReport``, ``orderStatus`` Filled); invalid ones
  get error 201 and status Inactive; an order id below the client's sequence gets error 103.
  ``cancelOrder`` -> error 202 + ``orderStatus`` Cancelled, or error 10147 for an unknown id.
* A second connection with a client id already in use gets error 326 and is closed.
* **Commission reports** (IB, "Executions and Commissions",
  https://interactivebrokers.github.io/tws-api/executions_commissions.html): ``execDetails`` and
  ``commissionReport`` are separate messages joined by execId; "to receive commissions reports for
  all clients it is necessary to connect as the Master Client ID". So a commission report goes to
  the client that placed the order and to ``master_client_id`` (None: TWS's default, no master
  set) only, live and in ``reqExecutions`` answers; ``fill(..., report=False)`` holds one back
  (computed late) until ``report_commission(execution)``.
* **Executions of earlier days**: TWS reports the current day's executions (its Trade Log shows
  "daily executions", https://www.clientam.com/en/software/tws/usersguidebook/realtimeactivitymonitoring/the_trade_log.htm);
  ``execution_days=1`` answers ``reqExecutions`` with those since New York midnight only (None, the
  default here: every execution staged, so tests staged minutes before midnight stay stable).
* **Duplicate order statuses** ("orderStatus() may return duplicate messages", IB API guide,
  orderstatus.htm): ``duplicate_status=True`` sends every ``orderStatus`` twice (placement, fills,
  cancels, rejects).
* **Financial-advisor allocations** (same executions page: "Advisors executing allocation orders
  will receive execution details and commissions for the allocation order itself. To receive
  allocation details and commissions for a specific subaccount IBApi.EClient.reqExecutions can be
  used"; https://interactivebrokers.github.io/tws-api/financial_advisor_methods_and_orders.html:
  the API has no default allocation, every order names an account, a group or a profile).
  ``fa_groups`` ({group: {sub-account: ratio}}) are the login's allocation groups (profiles are
  groups, as in TWS 983+'s unified groups); ``placeOrder`` with ``faGroup`` or ``faProfile``
  places an order for one (with an account as well, or an unknown group: error 201). Each of its
  executions is the allocation order's own (``execDetails`` and ``commissionReport`` live, under
  the advisor's account) plus one execution per sub-account with its own execId and commission,
  shares split by the ratios (whole shares; the rest one by one in the group's order, as IB's
  EqualQuantity does), booked there and listed by ``reqExecutions`` only. ``allocate(order,
  {account: qty}, price)`` fills with an explicit split.
* Farm status messages 2104/2106/2158 (warnings) after the log-on, as TWS sends them.

Fault injection: ``fail(query)`` ("positions", "orders", "fills", "balances") makes that request
fail on connections past their start-up sync: an error (code 322, "Error processing request"; with the request's id when it
has one) and no end marker, or, with ``mode="silent"``, no answer at all. ``stall_sync`` (a set of
the same names) makes those requests never answer at all, start-up sync included (a TWS that
never finishes the sync).

Assumptions where TWS documents nothing: a rejected order is reported completed with status
``Inactive``; an expired day order completed as ``Cancelled`` with completedStatus "Expired"; an
FA group order carries the advisor's account (the login's first managed account) in its
``account`` field, as does the allocation order's own execution, which moves no position (the
sub-accounts' allocations do); its commission is the sum of theirs.
Commissions default to 0 (``commission_per_share`` / ``min_commission`` to change; a fill can
carry its own), so the fake's cash moves like the simulated broker's unless asked otherwise.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

SERVER_VERSION = 176
DEFAULT_ACCOUNT = "DU1234567"
UNSET_DOUBLE_WIRE = "1.7976931348623157E308"  # Java's Double.MAX_VALUE, as TWS sends it
NEW_YORK = ZoneInfo("America/New_York")
QUERIES = ("positions", "orders", "fills", "balances")
WARNING_CODES = {2104, 2106, 2158}

_CON_IDS = {"AAPL": 265598, "MSFT": 272093, "SPY": 756733, "IBM": 8314, "TSLA": 76792991}


def con_id_of(symbol: str) -> int:
    return _CON_IDS.get(symbol) or 100_000 + zlib.crc32(symbol.encode()) % 900_000_000


def num(value: Decimal | int | None) -> str:
    """A number as TWS writes it: plain digits, no exponent; None is an empty field."""
    if value is None:
        return ""
    d = Decimal(value)
    text = format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def ib_time(moment: datetime) -> str:
    """``yyyymmdd hh:mm:ss <zone>`` in New York time, as TWS reports execution/completed times."""
    return moment.astimezone(NEW_YORK).strftime("%Y%m%d %H:%M:%S") + " America/New_York"


def parse_filter_time(text: str) -> datetime | None:
    """ExecutionFilter.time: ``yyyymmdd-hh:mm:ss`` (UTC) or ``yyyymmdd hh:mm:ss [zone]``."""
    text = text.strip()
    if not text:
        return None
    if "-" in text[:9]:
        return datetime.strptime(text, "%Y%m%d-%H:%M:%S").replace(tzinfo=timezone.utc)
    parts = text.split(" ")
    moment = datetime.strptime(parts[0] + parts[1], "%Y%m%d%H:%M:%S")
    zone = ZoneInfo(parts[2]) if len(parts) > 2 else NEW_YORK  # no zone: TWS's local time
    return moment.replace(tzinfo=zone)


@dataclass
class FakeOrder:
    perm_id: int
    client_id: int
    order_id: int
    account: str
    symbol: str
    action: str  # BUY, SELL
    qty: Decimal
    order_type: str  # MKT, LMT, STP, STP LMT
    lmt: Decimal | None
    aux: Decimal | None
    tif: str
    order_ref: str
    status: str  # TWS: PreSubmitted, Submitted, Filled, Cancelled, Inactive, ...
    submitted_at: datetime
    filled: Decimal = Decimal(0)
    avg_fill: Decimal | None = None
    last_fill: Decimal | None = None
    completed_time: datetime | None = None
    completed_status: str = ""
    currency: str = "USD"
    fa_group: str = ""  # an FA allocation group (or profile) the order was placed for

    @property
    def is_open(self) -> bool:
        return self.completed_time is None

    @property
    def con_id(self) -> int:
        return con_id_of(self.symbol)


@dataclass
class FakeExecution:
    exec_id: str
    order: FakeOrder
    shares: Decimal
    price: Decimal
    time: datetime
    cum_qty: Decimal
    avg_price: Decimal
    commission: Decimal
    commission_currency: str = "USD"
    exchange: str = "ISLAND"
    reported: bool = True  # its commission report exists (False: computed later, or never)
    account: str | None = None  # an FA allocation's sub-account (None: the order's account)
    block: bool = False  # an FA group order's own execution: its allocations move the sub-accounts


@dataclass
class _Conn:
    sock: socket.socket
    lock: threading.Lock = field(default_factory=threading.Lock)
    client_id: int | None = None
    synced: bool = False  # past ib_insync's start-up sync (its first reqExecutions answered)
    closed: bool = False


class FakeTWS:
    """The fake server. Thread-safe; start with ``start()`` (or use as a context manager)."""

    def __init__(
        self,
        *,
        accounts: tuple[str, ...] = (DEFAULT_ACCOUNT,),
        cash: dict[str, Decimal] | None = None,
        commission_per_share: Decimal = Decimal(0),
        min_commission: Decimal = Decimal(0),
        stall_sync: set[str] | frozenset[str] = frozenset(),
        perm_id_start: int = 1_873_000_000,
        rejects: dict[str, str] | None = None,
        master_client_id: int | None = None,
        execution_days: int | None = None,
        duplicate_status: bool = False,
        fa_groups: dict[str, dict[str, Decimal]] | None = None,
    ) -> None:
        self.accounts = tuple(accounts)
        # FA allocation groups: name -> {sub-account: ratio}
        self.fa_groups = {name: {a: Decimal(r) for a, r in shares.items()} for name, shares in (fa_groups or {}).items()}
        for name, shares in self.fa_groups.items():
            if not shares or any(a not in self.accounts for a in shares) or any(r <= 0 for r in shares.values()):
                raise ValueError(f"FA group {name!r}: positive ratios of managed accounts, got {shares}")
        self.lock = threading.RLock()
        self.orders: list[FakeOrder] = []
        self.executions: list[FakeExecution] = []
        # account -> symbol -> (qty, avg cost)
        self.positions: dict[str, dict[str, tuple[Decimal, Decimal]]] = {a: {} for a in self.accounts}
        default_cash = {"USD": Decimal("100000")} if cash is None else dict(cash)
        self.cash: dict[str, dict[str, Decimal]] = {a: dict(default_cash) for a in self.accounts}
        self.marks: dict[str, Decimal] = {}
        self.commission_per_share = Decimal(commission_per_share)
        self.min_commission = Decimal(min_commission)
        self.stall_sync = set(stall_sync)
        self.rejects = dict(rejects or {})  # symbol -> reason: placeOrder for it is rejected (error 201)
        self.failing: dict[str, str] = {}  # query -> "error" | "silent"
        self.master_client_id = master_client_id  # TWS's "Master API client ID" (None: not set)
        self.execution_days = execution_days  # reqExecutions: days back from today's New York midnight
        self.duplicate_status = duplicate_status
        self.next_order_id: dict[int, int] = {}  # client id -> next valid order id
        self._perm_ids = itertools.count(perm_id_start)
        self._exec_seq = itertools.count(0x6576C1D1)
        self._session = 0x0000E0D5
        self.conns: list[_Conn] = []
        self.received: list[list[str]] = []  # every client message, for tests
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.host = "127.0.0.1"
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeTWS:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(16)
        listener.settimeout(0.2)  # accept() wakes up to notice stop() on any platform
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._thread = threading.Thread(target=self._accept_loop, name=f"fake-tws-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
            with contextlib.suppress(OSError):
                listener.close()
        for conn in list(self.conns):
            self._close(conn)
        if self._thread is not None:
            self._thread.join(2)

    def __enter__(self) -> FakeTWS:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def drop_connections(self) -> None:
        """Close every client connection (TWS restarting, a network cut)."""
        for conn in list(self.conns):
            self._close(conn)

    def reset_order_ids(self) -> None:
        """TWS's "reset API order ID sequence" (or a Gateway restart): order ids start again at 1."""
        with self.lock:
            self.next_order_id.clear()

    # -- staging (what happened at the venue) ---------------------------------------------------

    def add_order(
        self,
        *,
        symbol: str,
        action: str,
        qty: Decimal,
        order_type: str = "LMT",
        lmt: Decimal | None = Decimal("100"),
        aux: Decimal | None = None,
        tif: str = "DAY",
        order_ref: str = "",
        client_id: int = 0,
        order_id: int | None = None,
        account: str | None = None,
        status: str = "Submitted",
        submitted_at: datetime | None = None,
        notify: bool = False,
        fa_group: str = "",
    ) -> FakeOrder:
        """An order as if placed earlier (by API client ``client_id``; 0 with order id 0: by hand
        in TWS). ``order_id`` defaults to the client's next id (0 for manual orders). ``notify``:
        the placing client, if connected, gets its ``openOrder`` and ``orderStatus`` (as TWS
        streams a client's own orders: placed now, e.g. resent by a second thread of it)."""
        with self.lock:
            if order_id is None:
                order_id = 0 if client_id == 0 else self._take_order_id(client_id)
            order = FakeOrder(
                perm_id=next(self._perm_ids), client_id=client_id, order_id=order_id,
                account=account or self.accounts[0], symbol=symbol, action=action, qty=Decimal(qty),
                order_type=order_type, lmt=lmt, aux=aux, tif=tif, order_ref=order_ref, status=status,
                submitted_at=submitted_at or datetime.now(timezone.utc), fa_group=fa_group,
            )
            self.orders.append(order)
        if notify:
            self._to_client(order, self._open_order(order))
            self._status_to_client(order)
        return order

    def fill(
        self,
        order: FakeOrder,
        qty: Decimal,
        price: Decimal,
        *,
        exec_id: str | None = None,
        commission: Decimal | None = None,
        at: datetime | None = None,
        notify: bool = True,
        report: bool = True,
        account: str | None = None,
    ) -> FakeExecution:
        """An execution of ``order``: moves the order, the position and the cash; the placing
        client (if connected) gets ``execDetails``, ``commissionReport`` and ``orderStatus``.
        ``report=False``: the commission is not computed yet (no ``commissionReport`` until
        ``report_commission``). ``account``: the sub-account of an FA allocation. An order for an
        FA group (no ``account``): the allocation order's execution (returned), its allocations
        split by the group's ratios."""
        if order.fa_group and account is None:
            return self.allocate(order, self._split(order.fa_group, Decimal(qty)), price, exec_id=exec_id,
                                 commission=commission, at=at, notify=notify)
        with self.lock:
            qty, price = Decimal(qty), Decimal(price)
            if qty <= 0 or order.filled + qty > order.qty:
                raise ValueError(f"fill of {qty} does not fit order {order.perm_id} ({order.filled}/{order.qty})")
            total = (order.avg_fill or Decimal(0)) * order.filled + price * qty
            order.filled += qty
            order.avg_fill = total / order.filled
            order.last_fill = price
            if commission is None:
                commission = self._commission(qty)
            execution = FakeExecution(
                exec_id=exec_id or self._new_exec_id(), order=order, shares=qty, price=price,
                time=at or datetime.now(timezone.utc), cum_qty=order.filled, avg_price=order.avg_fill,
                commission=Decimal(commission), reported=report, account=account,
            )
            self.executions.append(execution)
            # a commission not computed yet is not charged yet either
            self._book(order, qty, price, Decimal(commission) if report else Decimal(0), account=account)
            if order.filled == order.qty:
                order.status = "Filled"
                order.completed_time = execution.time
                order.completed_status = f"Filled Size: {num(order.qty)}"
        if notify:
            self._to_client(order, self._exec_details(-1, execution))
            if report:
                self._report_to_clients(execution)
            self._status_to_client(order)
        return execution

    def report_commission(self, execution: FakeExecution, commission: Decimal | None = None) -> None:
        """The commission of ``execution`` is computed now (late): its ``commissionReport`` goes to the
        placing client and the master client id, and ``reqExecutions`` lists it from now on."""
        with self.lock:
            charged = execution.commission if execution.reported else Decimal(0)
            if commission is not None:
                execution.commission = Decimal(commission)
            self.cash[execution.account or execution.order.account][execution.commission_currency] -= (
                execution.commission - charged)
            execution.reported = True
        self._report_to_clients(execution)

    def allocate(self, order: FakeOrder, allocations: dict[str, Decimal], price: Decimal, *,
                 exec_id: str | None = None, commission: Decimal | None = None, at: datetime | None = None,
                 notify: bool = True) -> FakeExecution:
        """An execution of an FA group order split ``allocations`` ({sub-account: qty}): the
        allocation order's own execution (returned; under the order's account, moving nothing) and
        one per sub-account, booked there, with the commission split by quantity. The placing
        client gets the allocation order's ``execDetails``, ``commissionReport``, ``orderStatus``."""
        price = Decimal(price)
        with self.lock:
            shares = {a: Decimal(q) for a, q in allocations.items() if Decimal(q) > 0}
            qty = sum(shares.values(), Decimal(0))
            if not shares or order.filled + qty > order.qty or any(a not in self.accounts for a in shares):
                raise ValueError(f"allocation {allocations} does not fit order {order.perm_id} ({order.filled}/{order.qty})")
            total = (order.avg_fill or Decimal(0)) * order.filled + price * qty
            order.filled += qty
            order.avg_fill = total / order.filled
            order.last_fill = price
            when = at or datetime.now(timezone.utc)
            block = FakeExecution(exec_id=exec_id or self._new_exec_id(), order=order, shares=qty, price=price,
                                  time=when, cum_qty=order.filled, avg_price=order.avg_fill, commission=Decimal(0),
                                  block=True)
            self.executions.append(block)
            for account, n in shares.items():
                fee = (self._commission(n) if commission is None else Decimal(commission) * n / qty)
                self.executions.append(FakeExecution(
                    exec_id=self._new_exec_id(), order=order, shares=n, price=price, time=when, cum_qty=order.filled,
                    avg_price=order.avg_fill, commission=fee, account=account))
                self._book(order, n, price, fee, account=account)
                block.commission += fee
            if order.filled == order.qty:
                order.status = "Filled"
                order.completed_time = when
                order.completed_status = f"Filled Size: {num(order.qty)}"
        if notify:
            self._to_client(order, self._exec_details(-1, block))
            self._report_to_clients(block)
            self._status_to_client(order)
        return block

    def allocations(self, block: FakeExecution) -> list[FakeExecution]:
        """The sub-account executions of an FA group order's execution ``block``."""
        with self.lock:
            i = self.executions.index(block)
            out = []
            for e in self.executions[i + 1:]:
                if e.block or e.order is not block.order or e.account is None:
                    break
                out.append(e)
            return out

    def _commission(self, qty: Decimal) -> Decimal:
        if not self.commission_per_share:
            return Decimal(0)
        return max(self.min_commission, self.commission_per_share * qty)

    def _split(self, group: str, qty: Decimal) -> dict[str, Decimal]:
        """``qty`` shared by the group's ratios: whole shares, the rest one by one in its order."""
        ratios = self.fa_groups[group]
        total = sum(ratios.values(), Decimal(0))
        shares = {a: (qty * r / total).to_integral_value(rounding="ROUND_FLOOR") for a, r in ratios.items()}
        rest = qty - sum(shares.values(), Decimal(0))
        for account in itertools.cycle(list(ratios)):
            if rest <= 0:
                break
            step = min(Decimal(1), rest)
            shares[account] += step
            rest -= step
        return shares

    def _report_to_clients(self, execution: FakeExecution) -> None:
        with self.lock:
            targets = [c for c in self.conns if c.client_id is not None and c.client_id in (
                execution.order.client_id, self.master_client_id)]
        for conn in targets:
            self._send(conn, *self._commission_report(execution))

    def _status_to_client(self, order: FakeOrder) -> None:
        for message in self._statuses(order):
            self._to_client(order, message)

    def _statuses(self, order: FakeOrder) -> list[list[Any]]:
        """The ``orderStatus`` message(s) of a change: twice with ``duplicate_status``."""
        return [self._order_status(order)] * (2 if self.duplicate_status else 1)

    def correct(
        self,
        execution: FakeExecution,
        *,
        qty: Decimal | None = None,
        price: Decimal | None = None,
        commission: Decimal | None = None,
        notify: bool = True,
        report: bool = True,
    ) -> FakeExecution:
        """A correction: a new execution whose id differs only after the last '.', replacing
        ``execution`` (the position and cash move by the difference; IB documents the id rule
        only: https://interactivebrokers.github.io/tws-api/classIBApi_1_1Execution.html, "a
        correction is indicated by an ExecId which differs from a previous ExecId in only the
        digits after the final period"). Its commission report may come late (``report=False``)."""
        with self.lock:
            base, _, version = execution.exec_id.rpartition(".")
            new_id = f"{base}.{int(version, 16) + 1:02x}" if base else execution.exec_id + ".02"
            order = execution.order
            new_qty = Decimal(qty) if qty is not None else execution.shares
            new_price = Decimal(price) if price is not None else execution.price
            new_commission = Decimal(commission) if commission is not None else execution.commission
            # undo the corrected execution, apply the new one
            charged = execution.commission if execution.reported else Decimal(0)
            self._book(order, -execution.shares, execution.price, -charged, account=execution.account)
            self._book(order, new_qty, new_price, new_commission if report else Decimal(0), account=execution.account)
            total = (order.avg_fill or Decimal(0)) * order.filled - execution.shares * execution.price + new_qty * new_price
            order.filled += new_qty - execution.shares
            order.avg_fill = total / order.filled if order.filled else None
            corrected = FakeExecution(
                exec_id=new_id, order=order, shares=new_qty, price=new_price, time=execution.time,
                cum_qty=order.filled, avg_price=order.avg_fill or new_price, commission=new_commission,
                reported=report, account=execution.account,
            )
            self.executions.append(corrected)
        if notify:
            self._to_client(order, self._exec_details(-1, corrected))
            if report:
                self._report_to_clients(corrected)
        return corrected

    def finish(self, order: FakeOrder, status: str, completed_status: str = "", *, notify: bool = True) -> None:
        """End an order: "Cancelled", "Inactive" (rejected), "Filled"..."""
        with self.lock:
            order.status = status
            order.completed_time = datetime.now(timezone.utc)
            order.completed_status = completed_status or status
        if notify:
            self._status_to_client(order)

    def set_position(self, symbol: str, qty: Decimal, avg_cost: Decimal | None = None, account: str | None = None) -> None:
        with self.lock:
            book = self.positions[account or self.accounts[0]]
            if Decimal(qty) == 0:
                book.pop(symbol, None)
            else:
                book[symbol] = (Decimal(qty), Decimal(avg_cost) if avg_cost is not None else Decimal(0))

    def set_cash(self, amount: Decimal, currency: str = "USD", account: str | None = None) -> None:
        with self.lock:
            self.cash[account or self.accounts[0]][currency] = Decimal(amount)

    def set_mark(self, symbol: str, price: Decimal) -> None:
        with self.lock:
            self.marks[symbol] = Decimal(price)

    def fail(self, query: str, mode: str = "error") -> None:
        if query not in QUERIES:
            raise ValueError(f"unknown query {query!r}; one of {QUERIES}")
        if mode not in ("error", "silent"):
            raise ValueError("mode is 'error' or 'silent'")
        with self.lock:
            self.failing[query] = mode

    def heal(self, query: str | None = None) -> None:
        with self.lock:
            if query is None:
                self.failing.clear()
            else:
                self.failing.pop(query, None)

    def find(self, *, perm_id: int | None = None, order_ref: str | None = None) -> FakeOrder:
        with self.lock:
            for order in self.orders:
                if (perm_id is None or order.perm_id == perm_id) and (order_ref is None or order.order_ref == order_ref):
                    return order
        raise KeyError(perm_id or order_ref)

    # -- internals: bookkeeping -----------------------------------------------------------------

    def _take_order_id(self, client_id: int) -> int:
        next_id = self.next_order_id.get(client_id, 1)
        self.next_order_id[client_id] = next_id + 1
        return next_id

    def _new_exec_id(self) -> str:
        return f"{self._session:08x}.{next(self._exec_seq):08x}.01.01"

    def _book(self, order: FakeOrder, qty: Decimal, price: Decimal, commission: Decimal,
              account: str | None = None) -> None:
        sign = Decimal(1) if order.action == "BUY" else Decimal(-1)
        account = account or order.account
        book = self.positions.setdefault(account, {})
        old_qty, old_avg = book.get(order.symbol, (Decimal(0), Decimal(0)))
        delta = sign * qty
        new_qty = old_qty + delta
        if new_qty == 0:
            book.pop(order.symbol, None)
        else:
            if old_qty == 0 or (old_qty > 0) != (new_qty > 0):
                avg = price  # opened or flipped
            elif (old_qty > 0) == (delta > 0):
                avg = (old_avg * abs(old_qty) + price * abs(delta)) / abs(new_qty)  # added
            else:
                avg = old_avg  # reduced
            book[order.symbol] = (new_qty, avg)
        cash = self.cash.setdefault(account, {})
        cash[order.currency] = cash.get(order.currency, Decimal(0)) - sign * qty * price - commission

    # -- internals: network ---------------------------------------------------------------------

    def _accept_loop(self) -> None:
        listener = self._listener
        while self._listener is not None and listener is not None:
            try:
                sock, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(sock)
            with self.lock:
                self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), name="fake-tws-conn", daemon=True).start()

    def _close(self, conn: _Conn) -> None:
        with self.lock:
            conn.closed = True
            if conn in self.conns:
                self.conns.remove(conn)
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            conn.sock.close()

    @staticmethod
    def _recv_exact(sock: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("peer closed")
            data += chunk
        return data

    def _read_msg(self, sock: socket.socket) -> list[str]:
        (size,) = struct.unpack(">I", self._recv_exact(sock, 4))
        payload = self._recv_exact(sock, size).decode()
        fields = payload.split("\0")
        if fields and fields[-1] == "":
            fields.pop()
        return fields

    def _send(self, conn: _Conn, *fields: Any) -> None:
        payload = "".join(f"{f}\0" for f in fields).encode()
        with conn.lock:
            if conn.closed:
                return
            try:
                conn.sock.sendall(struct.pack(">I", len(payload)) + payload)
            except OSError:
                conn.closed = True

    def _send_many(self, conn: _Conn, messages: list[list[Any]]) -> None:
        for message in messages:
            self._send(conn, *message)

    def _to_client(self, order: FakeOrder, message: list[Any]) -> None:
        with self.lock:
            targets = [c for c in self.conns if c.client_id is not None and c.client_id == order.client_id]
        for conn in targets:
            self._send(conn, *message)

    def _serve(self, conn: _Conn) -> None:
        try:
            if self._recv_exact(conn.sock, 4) != b"API\0":
                raise ConnectionError("not a TWS API client")
            (size,) = struct.unpack(">I", self._recv_exact(conn.sock, 4))
            versions = self._recv_exact(conn.sock, size).decode()  # "v157..176[ options]"
            low, _, high = versions.split(" ")[0].lstrip("v").partition("..")
            if not int(low) <= SERVER_VERSION <= int(high or low):
                raise ConnectionError(f"client versions {versions} exclude {SERVER_VERSION}")
            now = datetime.now(timezone.utc).astimezone(NEW_YORK)
            self._send(conn, SERVER_VERSION, now.strftime("%Y%m%d %H:%M:%S") + " EST")
            while not conn.closed:
                fields = self._read_msg(conn.sock)
                with self.lock:
                    self.received.append(fields)
                self._handle(conn, fields)
        except (ConnectionError, OSError, ValueError, struct.error):
            pass
        finally:
            self._close(conn)

    def _error(self, req_id: int, code: int, text: str) -> list[Any]:
        return [4, 2, req_id, code, text, ""]

    def _failing(self, conn: _Conn, query: str, req_id: int = -1) -> bool:
        """Answer a failing or stalled request (True) or let it through (False)."""
        with self.lock:
            if query in self.stall_sync:
                return True  # never answers
            mode = self.failing.get(query) if conn.synced else None
        if mode is None:
            return False
        if mode == "error":
            self._send(conn, *self._error(req_id, 322, f"Error processing request.-'{query}' : cause - "
                                                       "the fake TWS fails this query (fail())"))
        return True

    def _handle(self, conn: _Conn, f: list[str]) -> None:
        msg_id = int(f[0])
        if msg_id == 71:  # startApi: 71, version, clientId, optCapab
            client_id = int(f[2])
            with self.lock:
                in_use = any(c is not conn and c.client_id == client_id and not c.closed for c in self.conns)
                if not in_use:
                    conn.client_id = client_id
                    next_id = self.next_order_id.setdefault(client_id, 1)
            if in_use:
                self._send(conn, *self._error(-1, 326, "Unable to connect as the client id is already in use. "
                                                        "Retry with a unique client id."))
                self._close(conn)
                return
            self._send(conn, 15, 1, ",".join(self.accounts))
            self._send(conn, 9, 1, next_id)
            for code, text in ((2104, "Market data farm connection is OK:usfarm"),
                               (2106, "HMDS data farm connection is OK:ushmds"),
                               (2158, "Sec-def data farm connection is OK:secdefnj")):
                self._send(conn, *self._error(-1, code, text))
        elif conn.client_id is None:
            return  # nothing before startApi
        elif msg_id == 61:  # reqPositions
            if not self._failing(conn, "positions"):
                self._send_many(conn, self._positions())
        elif msg_id == 64:  # cancelPositions
            pass
        elif msg_id in (5, 16):  # reqOpenOrders / reqAllOpenOrders
            if not self._failing(conn, "orders"):
                with self.lock:
                    mine = [o for o in self.orders if o.is_open and (
                        msg_id == 16 or o.client_id == conn.client_id or (conn.client_id == 0 and o.order_id == 0))]
                    messages = [m for o in mine for m in (self._open_order(o), self._order_status(o))]
                self._send_many(conn, messages + [[53, 1]])
        elif msg_id == 15:  # reqAutoOpenOrders
            pass
        elif msg_id == 99:  # reqCompletedOrders: 99, apiOnly
            if not self._failing(conn, "orders"):
                api_only = f[1] == "1"
                with self.lock:
                    done = [o for o in self.orders if not o.is_open and (not api_only or o.client_id != 0)]
                    messages = [self._completed_order(o) for o in done]
                self._send_many(conn, messages + [[102]])
        elif msg_id == 6:  # reqAccountUpdates: 6, 2, subscribe, acctCode
            if f[2] == "1" and not self._failing(conn, "balances"):
                account = f[3] if f[3] in self.accounts else self.accounts[0]
                self._send_many(conn, self._account_updates(account))
        elif msg_id == 76:  # reqAccountUpdatesMulti: 76, 1, reqId, account, modelCode, ledgerAndNLV
            req_id = int(f[2])
            if not self._failing(conn, "balances", req_id):
                account = f[3] if f[3] in self.accounts else self.accounts[0]
                values = [[73, 1, req_id, account, "", tag, value, currency]
                          for tag, value, currency in self._account_values(account)]
                self._send_many(conn, values + [[74, 1, req_id]])
        elif msg_id == 62:  # reqAccountSummary: 62, 1, reqId, group, tags
            req_id = int(f[2])
            if not self._failing(conn, "balances", req_id):
                self._send_many(conn, self._account_summary(req_id, f[4]))
        elif msg_id == 63:  # cancelAccountSummary
            pass
        elif msg_id == 7:  # reqExecutions: 7, 3, reqId, clientId, acctCode, time, symbol, secType, exchange, side
            req_id = int(f[2])
            first = not conn.synced
            if not self._failing(conn, "fills", req_id):
                messages = []
                for execution in self._executions(f):
                    messages.append(self._exec_details(req_id, execution))
                    if execution.reported and conn.client_id in (execution.order.client_id, self.master_client_id):
                        messages.append(self._commission_report(execution))
                self._send_many(conn, messages + [[55, 1, req_id]])
                if first:
                    conn.synced = True
        elif msg_id == 3:
            self._place_order(conn, f)
        elif msg_id == 4:  # cancelOrder: 4, 1, orderId, manualCancelOrderTime
            self._cancel_order(conn, int(f[2]))
        elif msg_id == 8:  # reqIds
            with self.lock:
                next_id = self.next_order_id.setdefault(conn.client_id, 1)
            self._send(conn, 9, 1, next_id)
        elif msg_id == 18:  # requestFA: 18, 1, faDataType (1 groups, 2 profiles, 3 aliases) -> receiveFA
            self._send(conn, 16, 1, int(f[2]), self._fa_xml(int(f[2])))
        elif msg_id == 49:  # reqCurrentTime
            self._send(conn, 49, 1, int(datetime.now(timezone.utc).timestamp()))
        # anything else: TWS would answer; this fake stays silent

    # -- internals: requests --------------------------------------------------------------------

    def _positions(self) -> list[list[Any]]:
        with self.lock:
            out: list[list[Any]] = []
            for account, book in self.positions.items():
                for symbol, (qty, avg) in sorted(book.items()):
                    out.append([61, 3, account, con_id_of(symbol), symbol, "STK", "", "0", "", "", "NASDAQ",
                                "USD", symbol, "NMS", num(qty), num(avg)])
        return out + [[62, 1]]

    def _account_values(self, account: str) -> list[tuple[str, str, str]]:
        with self.lock:
            cash = dict(self.cash.get(account, {}))
        values = [("AccountCode", account, ""), ("AccountType", "INDIVIDUAL", ""), ("Currency", "BASE", "BASE")]
        for currency, amount in sorted(cash.items()):
            values += [("Currency", currency, currency), ("CashBalance", num(amount), currency),
                       ("TotalCashBalance", num(amount), currency)]
        base_total = cash.get("USD", Decimal(0))  # base currency USD; other currencies not converted
        values += [("CashBalance", num(base_total), "BASE"), ("TotalCashBalance", num(base_total), "BASE"),
                   ("TotalCashValue", num(base_total), "USD")]
        return values

    def _account_updates(self, account: str) -> list[list[Any]]:
        out: list[list[Any]] = [[6, 2, tag, value, currency, account] for tag, value, currency in self._account_values(account)]
        with self.lock:
            book = dict(self.positions.get(account, {}))
            marks = dict(self.marks)
        for symbol, (qty, avg) in sorted(book.items()):
            mark = marks.get(symbol, avg)
            out.append([7, 8, con_id_of(symbol), symbol, "STK", "", "0", "", "", "NASDAQ", "USD", symbol, "NMS",
                        num(qty), num(mark), num(qty * mark), num(avg), num((mark - avg) * qty), "0", account])
        out.append([8, 1, datetime.now(NEW_YORK).strftime("%H:%M")])
        out.append([54, 1, account])
        return out

    def _fa_xml(self, data_type: int) -> str:
        """The FA configuration as TWS's XML (groups: ``ListOfGroups``; profiles are groups since
        TWS 983's unified groups, so the profile and alias lists are empty)."""
        if data_type != 1:
            return '<?xml version="1.0" encoding="UTF-8"?>\n<ListOf' + ("AllocationProfiles" if data_type == 2 else
                                                                        "AccountAliases") + "/>"
        with self.lock:
            groups = dict(self.fa_groups)
        body = "".join(
            f"<Group><name>{name}</name><ListOfAccts varName=\"list\">"
            + "".join(f"<String>{account}</String>" for account in shares)
            + "</ListOfAccts><defaultMethod>Ratio</defaultMethod></Group>" for name, shares in groups.items())
        return f'<?xml version="1.0" encoding="UTF-8"?>\n<ListOfGroups>{body}</ListOfGroups>'

    def _account_summary(self, req_id: int, tags: str) -> list[list[Any]]:
        wanted = set(tags.split(","))
        out: list[list[Any]] = []
        for account in self.accounts:
            for tag, value, currency in self._account_values(account):
                ledger = currency not in ("", "BASE") and tag in ("CashBalance", "TotalCashBalance")
                if tag in wanted or (ledger and "$LEDGER:ALL" in wanted):
                    out.append([63, 1, req_id, account, tag, value, currency])
        return out + [[64, 1, req_id]]

    def _executions(self, f: list[str]) -> list[FakeExecution]:
        client_id, account, since, symbol, side = int(f[3] or 0), f[4], parse_filter_time(f[5]), f[6], f[9]
        with self.lock:
            out = []
            for e in self.executions:
                if client_id and e.order.client_id != client_id:
                    continue
                if account and (e.account or e.order.account) != account:
                    continue
                if since is not None and e.time < since:
                    continue
                if self.execution_days is not None:  # TWS: the current day's executions (see the docstring)
                    today = datetime.now(NEW_YORK).replace(hour=0, minute=0, second=0, microsecond=0)
                    if e.time < today - timedelta(days=self.execution_days - 1):
                        continue
                if symbol and e.order.symbol != symbol:
                    continue
                if side and side != ("BUY" if e.order.action == "BUY" else "SELL"):
                    continue
                out.append(e)
            return out

    # -- internals: encoders (field for field as ib_insync's decoder reads them at 176) --------

    def _contract_fields(self, order: FakeOrder) -> list[Any]:
        # conId, symbol, secType, lastTradeDate, strike, right, multiplier, exchange, currency,
        # localSymbol, tradingClass
        return [order.con_id, order.symbol, "STK", "", "0", "", "", "SMART", order.currency, order.symbol, "NMS"]

    @staticmethod
    def _price(value: Decimal | None) -> str:
        return UNSET_DOUBLE_WIRE if value is None else num(value)

    def _open_order(self, o: FakeOrder) -> list[Any]:
        fields: list[Any] = [5, o.order_id, *self._contract_fields(o)]
        fields += [o.action, num(o.qty), o.order_type, self._price(o.lmt), self._price(o.aux), o.tif, "", o.account,
                   "", "0", o.order_ref, o.client_id, o.perm_id, "0", "0", "0", "", "",  # ... goodAfterTime, sharesAllocation
                   o.fa_group, "", "", "", "", "", "", "",  # faGroup..modelCode, goodTillDate, rule80A, percentOffset
                   "", "0", "", "-1", "0", "", "", "", "", "",  # settlingFirm..stockRangeUpper
                   "", "0", "0", "0", "", "3", "0", "0", "",  # displaySize..nbboPriceCap
                   "0", "0", "", "0", "", ""]  # parentId, triggerMethod, volatility, volatilityType, dnOrderType, dnAuxPrice
        fields += ["0", "0", "", "", "", "", ""]  # continuousUpdate..comboLegsDescrip
        fields += ["0", "0", "0"]  # combo legs, order combo legs, smart combo routing params
        fields += ["", "", ""]  # scaleInitLevelSize, scaleSubsLevelSize, scalePriceIncrement
        fields += [""]  # hedgeType
        fields += ["0", "", "IB", "0", "0"]  # optOutSmartRouting, clearingAccount, clearingIntent, notHeld, dnc
        fields += [""]  # algoStrategy
        fields += ["0", "0", o.status] + [""] * 9 + ["", "", "", "", ""] + ["0", "0"]  # solicited, whatIf, state..
        fields += ["0"]  # conditions
        fields += ["None", "", "", "", "", "", "", "0", "", "", "", "", "0", "0", "0", "0"]  # adjusted.. usePriceMgmtAlgo
        fields += ["", "", "0"]  # duration (159), postToAts (160), autoCancelParent (162)
        fields += ["", "", "", "", ""]  # 170: minTradeQty, minCompeteSize, competeAgainstBestOffset, midOffsets
        return fields

    def _order_status(self, o: FakeOrder) -> list[Any]:
        return [3, o.order_id, o.status, num(o.filled), num(o.qty - o.filled),
                num(o.avg_fill) if o.avg_fill is not None else "0", o.perm_id, 0,
                num(o.last_fill) if o.last_fill is not None else "0", o.client_id, "", "0"]

    def _completed_order(self, o: FakeOrder) -> list[Any]:
        fields: list[Any] = [101, *self._contract_fields(o)]
        fields += [o.action, num(o.qty), o.order_type, self._price(o.lmt), self._price(o.aux), o.tif, "", o.account,
                   "", "0", o.order_ref, o.perm_id, "0", "0", "0", "",  # ... permId, outsideRth, hidden, discr, gat
                   o.fa_group, "", "", "", "", "", "", "", "",  # faGroup..settlingFirm
                   "0", "", "-1", "", "", "", "", "",  # shortSaleSlot..stockRangeUpper
                   "", "0", "0", "", "3", "0", "", "0", "", ""]  # displaySize..deltaNeutralAuxPrice
        fields += ["0", "0", "", "", ""]  # continuousUpdate..comboLegsDescrip
        fields += ["0", "0", "0"]
        fields += ["", "", ""]
        fields += [""]  # hedgeType
        fields += ["", "IB", "0", "0"]  # clearingAccount, clearingIntent, notHeld, dnc
        fields += [""]  # algoStrategy
        fields += ["0", o.status, "0", "0"]  # solicited, status, randomizeSize, randomizePrice
        fields += ["0"]  # conditions
        completed = ib_time(o.completed_time) if o.completed_time else ""
        fields += ["", "", "", "0", "0", "", num(o.filled), "0", "0", "", "0", "0", "0", completed, o.completed_status]
        fields += ["", "", "", "", ""]  # 170
        return fields

    def _exec_details(self, req_id: int, e: FakeExecution) -> list[Any]:
        o = e.order
        side = "BOT" if o.action == "BUY" else "SLD"
        return [11, req_id, o.order_id, o.con_id, o.symbol, "STK", "", "0", "", "", e.exchange, o.currency, o.symbol,
                "NMS", e.exec_id, ib_time(e.time), e.account or o.account, e.exchange, side, num(e.shares), num(e.price), o.perm_id,
                o.client_id, 0, num(e.cum_qty), num(e.avg_price), o.order_ref, "", "", "", 1]

    def _commission_report(self, e: FakeExecution) -> list[Any]:
        return [59, 1, e.exec_id, num(e.commission), e.commission_currency, UNSET_DOUBLE_WIRE, UNSET_DOUBLE_WIRE, ""]

    # -- internals: the order flow --------------------------------------------------------------

    def _place_order(self, conn: _Conn, f: list[str]) -> None:
        # 3, orderId, contract(12: conId..tradingClass), secIdType, secId, action, totalQuantity,
        # orderType, lmtPrice, auxPrice, tif, ocaGroup, account, openClose, origin, orderRef, ...
        order_id = int(f[1])
        symbol, currency = f[3], f[11] or "USD"
        action, qty_s, order_type, lmt_s, aux_s, tif = f[16], f[17], f[18], f[19], f[20], f[21]
        account, order_ref = f[23], f[26]
        fa_group = f[39] or f[42]  # faGroup, faProfile (profiles are groups since TWS 983's unified groups)
        client_id = conn.client_id
        assert client_id is not None

        def reject(code: int, reason: str) -> None:
            self._send(conn, *self._error(order_id, code, reason))

        with self.lock:
            existing = next((o for o in self.orders if o.client_id == client_id and o.order_id == order_id
                             and o.client_id != 0), None)
            if existing is None and order_id < self.next_order_id.get(client_id, 1):
                reject(103, "Duplicate order id")
                return
            if existing is not None and not existing.is_open:
                reject(103, "Duplicate order id")
                return
            problem = None
            try:
                qty = Decimal(qty_s)
                lmt = Decimal(lmt_s) if lmt_s else None
                aux = Decimal(aux_s) if aux_s else None
            except ArithmeticError:
                problem = "invalid number"
            if problem is None:
                if action not in ("BUY", "SELL", "SSHORT"):
                    problem = f"invalid action {action!r}"
                elif not qty > 0:
                    problem = "order size must be positive"
                elif order_type not in ("MKT", "LMT", "STP", "STP LMT"):
                    problem = f"order type {order_type!r} is not supported"
                elif order_type in ("LMT", "STP LMT") and (lmt is None or lmt <= 0):
                    problem = "a limit order needs a limit price"
                elif order_type in ("STP", "STP LMT") and (aux is None or aux <= 0):
                    problem = "a stop order needs a stop price"
                elif fa_group and account:
                    problem = "Invalid account number"  # account, faGroup and faProfile are exclusive
                elif fa_group and fa_group not in self.fa_groups:
                    problem = f"invalid allocation group {fa_group!r}"
                elif account and account not in self.accounts:
                    problem = f"account {account} is not managed by this login"
                elif symbol in self.rejects:
                    problem = self.rejects[symbol]
            if existing is not None:  # a modification
                if problem is None:
                    existing.qty, existing.lmt, existing.aux = qty, lmt, aux
                order = existing
            else:
                self.next_order_id[client_id] = max(self.next_order_id.get(client_id, 1), order_id + 1)
                order = FakeOrder(
                    perm_id=next(self._perm_ids), client_id=client_id, order_id=order_id,
                    account=account or self.accounts[0], symbol=symbol, action="SELL" if action == "SSHORT" else action,
                    qty=qty if problem is None else Decimal(qty_s or 0) if _is_number(qty_s) else Decimal(0),
                    order_type=order_type, lmt=lmt if problem is None else None, aux=aux if problem is None else None,
                    tif=tif or "DAY", order_ref=order_ref, status="PreSubmitted",
                    submitted_at=datetime.now(timezone.utc), currency=currency, fa_group=fa_group,
                )
                self.orders.append(order)
            if problem is not None:
                if existing is None:
                    order.status = "Inactive"
                    order.completed_time = datetime.now(timezone.utc)
                    order.completed_status = f"Rejected: {problem}"
        if problem is not None:
            reject(201, f"Order rejected - reason:{problem}")
            if existing is None:
                self._send_many(conn, [self._open_order(order), *self._statuses(order)])
            return
        with self.lock:
            if existing is None:
                first = [self._open_order(order), *self._statuses(order)]
                order.status = "Submitted"
            else:
                first = []
            second = [self._open_order(order), *self._statuses(order)]
            mark = self.marks.get(order.symbol, Decimal("100"))
        self._send_many(conn, first + second)
        if order.order_type == "MKT":
            self.fill(order, order.qty - order.filled, mark)
            self._send(conn, *self._open_order(order))

    def _cancel_order(self, conn: _Conn, order_id: int) -> None:
        with self.lock:
            order = next((o for o in self.orders if o.client_id == conn.client_id and o.order_id == order_id
                          and o.is_open), None)
        if order is None:
            self._send(conn, *self._error(order_id, 10147, f"OrderId {order_id} that needs to be cancelled is not found."))
            return
        self._send(conn, *self._error(order_id, 202, "Order Canceled - reason:"))
        self.finish(order, "Cancelled", "Cancelled by Trader", notify=False)
        self._send_many(conn, [*self._statuses(order), self._open_order(order)])


def _is_number(text: str) -> bool:
    try:
        Decimal(text)
    except ArithmeticError:
        return False
    return True


# -- VenueControl for the reconciliation scenarios (tests/support/venues.py) ----------------------

_STATUS = {
    # our status -> (TWS status, completedStatus) ; open ones have no completedStatus
    "open": ("Submitted", None),
    "partially_filled": ("Submitted", None),
    "filled": ("Filled", "Filled"),
    "cancelled": ("Cancelled", "Cancelled by Trader"),
    "rejected": ("Inactive", "Rejected"),
    "expired": ("Cancelled", "Expired"),
}
_ORDER_TYPES = {"market": "MKT", "limit": "LMT", "stop": "STP", "stop_limit": "STP LMT"}


class IBVenueControl:
    """``tests/support/venues.py``'s VenueControl for the fake TWS. Our orders were placed by
    ``client_id`` (the adapter's) with orderRef = client order id; orders "placed outside"
    (no client order id) are manual TWS orders (client id 0, order id 0, empty orderRef)."""

    broker = "ib"
    venue = "IB"

    def __init__(self, server: FakeTWS, account: str, *, client_id: int = 1, timeout: float = 3.0) -> None:
        self.server = server
        self.account = account
        self.client_id = client_id
        self.timeout = timeout
        self._adapters: list[Any] = []
        self._client_ids = itertools.count(client_id)

    def add_order(
        self,
        *,
        client_order_id: str | None,
        symbol: str,
        side: str,
        qty: Decimal,
        order_type: str = "limit",
        limit_price: Decimal | None = Decimal("100"),
        status: str = "open",
        fills: list[tuple[str, Decimal, Decimal]] | tuple = (),
    ) -> str:
        if side not in ("buy", "sell"):
            raise ValueError(f"side is buy or sell, not {side!r}")
        if status not in _STATUS:
            raise ValueError(f"unknown status {status!r}")
        tws_type = _ORDER_TYPES[order_type]
        server = self.server
        placed_at = datetime.now(timezone.utc) - timedelta(minutes=5)
        order = server.add_order(
            symbol=symbol, action=side.upper(), qty=Decimal(qty), order_type=tws_type,
            lmt=limit_price if tws_type in ("LMT", "STP LMT") else None,
            aux=limit_price if tws_type in ("STP",) else None,
            order_ref=client_order_id or "", client_id=self.client_id if client_order_id else 0,
            status="Submitted", submitted_at=placed_at,
        )
        for i, (exec_id, fill_qty, price) in enumerate(fills):
            server.fill(order, Decimal(fill_qty), Decimal(price), exec_id=exec_id,
                        at=placed_at + timedelta(seconds=i + 1), notify=False)
        tws_status, completed_status = _STATUS[status]
        if completed_status is not None and order.is_open:
            server.finish(order, tws_status, completed_status, notify=False)
        elif completed_status is None and not order.is_open:
            raise ValueError(f"status {status!r} but the fills fill the order")
        return str(order.perm_id)

    def set_position(self, symbol: str, qty: Decimal, avg_cost: Decimal | None = None) -> None:
        self.server.set_position(symbol, Decimal(qty), avg_cost)

    def set_cash(self, amount: Decimal, currency: str = "USD") -> None:
        self.server.set_cash(Decimal(amount), currency)

    def fail(self, query: str) -> None:
        self.server.fail(query)

    def adapter(self) -> Any:
        from tradestate.adapters.brokers.ib import IBAdapter

        # one client id per live adapter (TWS refuses a second connection with the same id);
        # the first one is the client id our orders carry
        client_id = next(self._client_ids)
        adapter = IBAdapter(account=self.account, host=self.server.host, port=self.server.port,
                            client_id=client_id, timeout=self.timeout, master_client_id=self.server.master_client_id)
        self._adapters.append(adapter)
        return adapter

    def close(self) -> None:
        for adapter in self._adapters:
            with contextlib.suppress(Exception):
                adapter.close()


@contextlib.contextmanager
def ib_venue(account: str = "acct-1", **server_options: Any) -> Iterator[IBVenueControl]:
    """A fake TWS on a free local port and its VenueControl; everything is closed afterwards. The
    first adapter's client id (1) is TWS's master API client id unless ``master_client_id`` says
    otherwise: as a reconciling connection should be, or the commission reports of orders placed by
    hand in TWS never reach it (their fees stay pending)."""
    server_options.setdefault("master_client_id", 1)
    server = FakeTWS(**server_options).start()
    control = IBVenueControl(server, account)
    try:
        yield control
    finally:
        control.close()
        server.stop()


__all__ = ["FakeExecution", "FakeOrder", "FakeTWS", "IBVenueControl", "ib_venue", "SERVER_VERSION"]
