"""Interactive Brokers adapter on ``ib_insync`` (or its maintained fork ``ib_async``).

``IBAdapter(account=..., host=..., port=..., client_id=...)`` connects to TWS or IB Gateway
through ib_insync's own ``IB`` client and its start-up sync, then answers every query of the
``BrokerAdapter`` interface with a fresh request to TWS:

* **Keys.** Our client order id travels in ``orderRef``. ``permId`` is the durable broker key
  (``VenueOrder.venue_order_id = str(permId)``): ``orderId`` is only unique per client id and
  session (TWS restarts and "reset order id sequence" reuse it), so it is never used as a key.
* **Orders.** Open orders of *every* client id (and those placed by hand in TWS) come from
  ``reqAllOpenOrders``; finished ones from ``reqCompletedOrders`` (keyed by ``permId``: completed
  orders carry no orderId). ``recent_orders`` merges both by permId, the finished report winning.
* **Fills** come from ``reqExecutions`` (filtered by account and time) with their commission
  reports as the fee. They are deduplicated by ``execId``; a correction (a later execution of the
  same order whose ``execId`` is the same up to the last '.', e.g. ``...01.02`` for ``...01.01``)
  replaces the fill it corrects: only the latest version is reported, the ids it replaces are in
  ``VenueFill.corrects`` (and ``raw["corrects"]``), so reconciliation records ``FillCorrected``.
  The live feed does the same: a correction of an execution it reported comes as a ``fill``
  update whose fill ``corrects`` it.
* **Commissions** arrive as separate ``commissionReport`` messages joined by execId, late or never
  (IB: only the Master API client ID receives those of other clients' orders,
  https://interactivebrokers.github.io/tws-api/executions_commissions.html). An execution
  without one is reported with ``fee_pending=True`` (fee 0 for now), never as a final fee of 0;
  a report that comes after the live fill was handed over is a ``fee`` update. Pass
  ``master_client_id`` (TWS: Global Configuration > API > Settings > "Master API client ID"):
  the adapter warns when its own client id is not it. Its snapshot says how long a report may take
  (``fee_report_wait``) and how large a commission can be (``max_fee_rate``): reconciliation then
  reports a fee that never came (``fee_report_missing``) and puts a cash shortfall it explains down
  to it instead of correcting the cash blindly.
* **Executions while away** (a GTC order filled while the engine was down or disconnected): a lost
  connection is reconnected by the next query or by the live feed itself (``next_update``/
  ``updates``, every ``reconnect_every`` seconds, in the background); the start-up sync of every
  (re)connect lists the day's executions; those of this client's orders
  not handed over yet go on the feed as live ones (the latest version of each). Earlier days' are
  TWS's no longer: reconciliation infers them from the order's filled quantity.
* **One orderRef, two permIds** (a resend, or a second engine using our ids): the live feed hands
  over updates of the first permId seen for an orderRef only; the others come without a client
  order id (``raw["duplicate_order_ref_of"]``), for reconciliation to report and keep apart.
* **Financial advisors** (https://interactivebrokers.github.io/tws-api/financial_advisor_methods_and_orders.html,
  executions_commissions.html): with ``fa_group`` orders go to an allocation group (``faGroup``,
  no account) from the advisor's account, whose connection gets the allocation order's own
  executions; the positions and cash it compares are the group's accounts' (``requestFA``),
  summed. An adapter for one sub-account (``ib_account``) reports its allocations, which IB lists
  as that account's executions of the group order, as one order per group order
  (``raw["fa_allocation"]``): reconciliation imports it, so each client account's positions and
  cash agree without a blind correction.
* **Balances** from the account values (``reqAccountUpdates``): ``CashBalance`` per currency
  (``BASE`` is a conversion total, skipped), ``TotalCashValue`` for a currency without one.
  **Positions** from ``reqPositions``.
* **Statuses**: PendingSubmit, ApiPending, PreSubmitted -> pending; Submitted, PendingCancel ->
  open (partially_filled once something is filled); Filled -> filled; Cancelled, ApiCancelled ->
  cancelled (expired or rejected when the completed order's text says so); Inactive -> rejected
  (IB: "received but no longer active because it was rejected or cancelled"); anything else ->
  "unknown" with the venue's word in ``raw_status``.

**Decimals.** ib_insync parses the wire's decimal strings with ``float()``. Amounts here are
``Decimal(repr(x))``, which is exact: ``repr`` gives the shortest decimal string that reads back as
the same double, and a wire value that is itself such a string (anything of at most 15 significant
digits, and whatever TWS's Java ``Double.toString`` wrote) is that string, so we get back exactly
the digits TWS sent (``187.45`` stays ``187.45``, never ``187.4500000000000028421709430404007434844970703125``).
Account values arrive as strings and are read directly. ``UNSET_DOUBLE`` (TWS's "no value")
becomes ``None``.

**Failures.** Every query either answers completely or raises ``VenueQueryFailed``: an error from
TWS for the request (or a request-less error while it runs), no answer within ``timeout`` seconds,
or the connection lost. Connecting raises ``VenueConnectionError`` that says what happened and
what to do: nothing listening, no API handshake, client id already in use (IB error 326), a
start-up sync that did not finish (named parts), an account that is not managed by this login.

**Event loop.** The ``IB`` object lives on the adapter's own thread and asyncio loop; the public
methods are synchronous and thread-safe (one request at a time), and never touch the caller's
event loop (so they also work from inside pytest, FastAPI or a Jupyter loop). Update callbacks
run on that thread: they must not call the adapter back (hand the update over instead).

**ib_async.** Everything comes from the module named in ``IB_MODULE`` (the one line to change, or
set ``TRADESTATE_IB_MODULE=ib_async``); only the public ``IB`` API and the dataclasses that both
libraries share are used, plus two things of the wrapper that both have: a read-only look at its
pending requests (to name a timed-out sync step) and a pass-through hook on ``completedOrder``
(ib_insync drops the completed order's ``completedTime``/``completedStatus``; the hook keeps them
by permId). The tests pass on ib_insync 0.9.86 and on ib_async 2.1.0.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import logging
import math
import os
import queue
import re
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
import dataclasses
from dataclasses import fields as dataclass_fields, is_dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from tradestate.adapters.brokers.base import (
    BrokerAdapter,
    OrderNotCancelable,
    SubmitOutcomeUnknown,
    Unknown,
    OrderNotFound,
    OrderRequest,
    ReplaceRejected,
    VenueBalance,
    VenueConnectionError,
    VenueError,
    VenueFill,
    VenueOrder,
    VenueOrderStatus,
    VenuePosition,
    VenueQueryFailed,
    VenueSnapshot,
    VenueUpdate,
)

# The one line that chooses the client library: "ib_insync" or its maintained fork "ib_async".
IB_MODULE = os.environ.get("TRADESTATE_IB_MODULE", "ib_insync")


def _import_ib(name: str) -> Any:
    """Import the IB client library. Importing ib_insync asks the main thread for its event loop
    (eventkit), which ``asyncio.run()`` leaves unset: give the thread a fresh loop first rather
    than fail to import after any earlier ``asyncio.run()`` in the same process."""
    if threading.current_thread() is threading.main_thread():
        try:
            asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:
            asyncio.set_event_loop(asyncio.new_event_loop())
    return importlib.import_module(name)


_ib = _import_ib(IB_MODULE)
IB, Contract, Stock, Order, ExecutionFilter = _ib.IB, _ib.Contract, _ib.Stock, _ib.Order, _ib.ExecutionFilter

log = logging.getLogger(__name__)

UNSET_DOUBLE = sys.float_info.max
UNSET_INTEGER = 2**31 - 1
# Error codes that are warnings or notices, not failures (ib_insync's list, farm status 2100-2199,
# connectivity restored 1101/1102).
_WARNING_CODES = {110, 165, 202, 399, 404, 434, 492, 10167, 1101, 1102}
_REFUSED_CODES = {326: "client id already in use"}

_STATUS: dict[str, VenueOrderStatus] = {
    "PendingSubmit": "pending",
    "ApiPending": "pending",
    "PreSubmitted": "pending",
    "Submitted": "open",
    "PendingCancel": "open",  # still working until TWS confirms the cancel
    "Filled": "filled",
    "Cancelled": "cancelled",
    "ApiCancelled": "cancelled",
    "Inactive": "rejected",
}
_ORDER_TYPES = {"MKT": "market", "LMT": "limit", "STP": "stop", "STP LMT": "stop_limit"}
_TO_IB_TYPE = {v: k for k, v in _ORDER_TYPES.items()}
_TIFS = {"DAY": "day", "GTC": "gtc", "IOC": "ioc", "FOK": "fok", "OPG": "opg", "GTD": "gtd"}
_TO_IB_TIF = {v: k for k, v in _TIFS.items()}
_ZONE_ALIASES = {
    "EST": "America/New_York", "EDT": "America/New_York", "US/Eastern": "America/New_York",
    "CST": "America/Chicago", "CDT": "America/Chicago", "PST": "America/Los_Angeles",
    "PDT": "America/Los_Angeles", "CET": "Europe/Paris", "CEST": "Europe/Paris", "MET": "Europe/Paris",
    "BST": "Europe/London", "GMT": "UTC", "HKT": "Asia/Hong_Kong", "JST": "Asia/Tokyo",
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

T = TypeVar("T")




class _ConnectionLost(VenueQueryFailed, VenueConnectionError):
    """A query could not be answered because the connection to TWS broke."""


# -- value parsing ----------------------------------------------------------------------------


def _dec(value: Any, what: str, *, optional: bool = False) -> Decimal | None:
    """Decimal from what ib_insync handed over (float parsed from the wire, str, int)."""
    if value is None or value == "":
        if optional:
            return None
        raise VenueQueryFailed(f"ib: {what} is missing")
    if isinstance(value, bool):
        raise VenueQueryFailed(f"ib: {what} is not a number: {value!r}")
    if isinstance(value, float):
        if value >= UNSET_DOUBLE or value <= -UNSET_DOUBLE:
            if optional:
                return None
            raise VenueQueryFailed(f"ib: {what} is not set (UNSET_DOUBLE)")
        if not math.isfinite(value):
            raise VenueQueryFailed(f"ib: {what} is not finite: {value!r}")
        text = repr(value)  # exact: see the module docstring
        return Decimal(text[:-2] if text.endswith(".0") else text)
    if isinstance(value, int):
        if value == UNSET_INTEGER:
            if optional:
                return None
            raise VenueQueryFailed(f"ib: {what} is not set (UNSET_INTEGER)")
        return Decimal(value)
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise VenueQueryFailed(f"ib: {what} is not a number: {value!r}") from None
    if not d.is_finite():
        raise VenueQueryFailed(f"ib: {what} is not finite: {value!r}")
    return d


def _req(value: Any, what: str) -> Decimal:
    d = _dec(value, what)
    assert d is not None
    return d


def parse_ib_time(text: str) -> datetime | None:
    """TWS times: ``yyyymmdd hh:mm:ss <zone>``, ``yyyymmdd-hh:mm:ss`` (UTC), epoch seconds.
    Unknown shapes give None (the raw string stays in ``raw``)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        if text.isdigit():
            return datetime.fromtimestamp(int(text), timezone.utc)
        if len(text) >= 17 and text[8] == "-":
            return datetime.strptime(text[:17], "%Y%m%d-%H:%M:%S").replace(tzinfo=timezone.utc)
        parts = text.split()
        if len(parts) >= 3:
            zone_name = " ".join(parts[2:])
            zone = ZoneInfo(_ZONE_ALIASES.get(zone_name, zone_name))
            return datetime.strptime(parts[0] + parts[1], "%Y%m%d%H:%M:%S").replace(tzinfo=zone).astimezone(timezone.utc)
    except (ValueError, KeyError, OSError):
        return None
    return None


def _utc(moment: datetime | None, what: str) -> datetime | None:
    if moment is None:
        return None
    if not isinstance(moment, datetime) or moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"ib: {what} must be a timezone-aware datetime, got {moment!r}")
    return moment.astimezone(timezone.utc)


def _plain(value: Any) -> Any:
    """JSON-safe copy of ib_insync objects for ``raw`` (floats as exact strings, unset as None)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclass_fields(value)}
    if isinstance(value, float):
        return None if abs(value) >= UNSET_DOUBLE else repr(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


_ORDER_RAW = ("orderId", "clientId", "permId", "parentId", "action", "totalQuantity", "orderType", "lmtPrice",
              "auxPrice", "tif", "account", "orderRef", "filledQuantity", "outsideRth")
_CONTRACT_RAW = ("conId", "symbol", "secType", "exchange", "primaryExchange", "currency", "localSymbol")


def _pick(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: _plain(getattr(obj, name, None)) for name in names}


def _symbol(contract: Any) -> str:
    if contract.secType in ("STK", "") or not contract.localSymbol:
        return contract.symbol
    return contract.localSymbol


def _side(action: str, what: str) -> str:
    if action in ("BUY", "BOT"):
        return "buy"
    if action in ("SELL", "SLD", "SSHORT"):
        return "sell"
    raise VenueQueryFailed(f"ib: {what}: unknown side {action!r}")


def map_status(raw_status: str, qty: Decimal | None, filled: Decimal, completed_status: str = "") -> VenueOrderStatus:
    """A TWS order status (with quantities and the completed order's text) as a ``VenueOrderStatus``:
    see the module docstring's table; an unknown word gives ``unknown``."""
    status = _STATUS.get(raw_status)
    if status is None:
        return "unknown"
    text = completed_status.lower()
    if status == "cancelled" and "expir" in text:
        return "expired"
    if status == "cancelled" and "reject" in text:
        return "rejected"
    if status in ("open", "pending") and filled > 0 and (qty is None or filled < qty):
        return "partially_filled"
    return status


def _exec_version(exec_id: str) -> tuple[str, tuple[int, Any]] | None:
    """(base, version) of an IB execution id, or None when it has no version part."""
    base, dot, last = exec_id.rpartition(".")
    if not dot or not base or not last:
        return None
    try:
        return base, (0, int(last, 16))
    except ValueError:
        return base, (1, last)


# -- the adapter ------------------------------------------------------------------------------


class IBAdapter(BrokerAdapter):
    """One IB account through TWS / IB Gateway.

    Arguments (all keyword-only):

    * ``account``: our account id (the one on our events).
    * ``host``, ``port``: TWS / IB Gateway API socket (TWS paper 7497, live 7496; Gateway
      4002/4001).
    * ``client_id``: the API client id; must be unique among the connections to that TWS
      (a duplicate gets IB error 326). 0 also binds orders placed by hand in TWS.
    * ``ib_account``: the IB account code (``DU1234567``); default: the login's only account
      (a login with several accounts must name one).
    * ``venue``: the venue name our events carry (default "IB").
    * ``timeout``: seconds for the connection, each start-up sync step and each query.
    * ``readonly``: the API is in read-only mode (no open/completed orders in the start-up sync;
      queries still ask for them; ``submit``/``cancel`` are refused).
    * ``connect``: connect now (default) or on the first query.
    * ``master_client_id``: TWS's "Master API client ID", when one is set. Only that client
      receives the commission reports of orders placed by other client ids or in TWS; the adapter
      warns (log) when ``client_id`` is not it, and their fills then stay ``fee_pending``.
    * ``fa_group``: a financial advisor's allocation group (or profile): orders go to it (the API
      has no default allocation: ``faGroup`` instead of an account) from ``ib_account``, the
      advisor's account; each sub-account's share is reconciled by an adapter for that account.
      Positions and cash are then the group's: its accounts' (``requestFA``), summed, so our
      account for the advisor books what its group orders hold across the group.
    """

    broker = "ib"

    def __init__(
        self,
        *,
        account: str,
        host: str = "127.0.0.1",
        port: int = 7497,
        client_id: int = 1,
        ib_account: str | None = None,
        venue: str = "IB",
        timeout: float = 10.0,
        readonly: bool = False,
        connect: bool = True,
        master_client_id: int | None = None,
        fa_group: str | None = None,
    ) -> None:
        if fa_group is not None and (not isinstance(fa_group, str) or not fa_group.strip()
                                     or _CONTROL.search(fa_group)):
            raise ValueError(f"ib: fa_group must be a non-empty string or None, got {fa_group!r}")
        self.fa_group = fa_group
        if not isinstance(account, str) or not account.strip() or _CONTROL.search(account):
            raise ValueError(f"ib: account must be a non-empty string, got {account!r}")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ValueError(f"ib: port must be an integer 1..65535, got {port!r}")
        if not isinstance(client_id, int) or isinstance(client_id, bool) or not 0 <= client_id < 2**31 - 1:
            raise ValueError(f"ib: client_id must be a non-negative integer, got {client_id!r}")
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout < 3600:
            raise ValueError(f"ib: timeout must be a positive number of seconds, got {timeout!r}")
        if ib_account is not None and (not isinstance(ib_account, str) or not ib_account.strip()):
            raise ValueError(f"ib: ib_account must be a non-empty string or None, got {ib_account!r}")
        if master_client_id is not None and (not isinstance(master_client_id, int) or isinstance(master_client_id, bool)
                                             or not 0 <= master_client_id < 2**31 - 1):
            raise ValueError(f"ib: master_client_id must be a non-negative integer or None, got {master_client_id!r}")
        self.master_client_id = master_client_id
        self.account = account
        self.venue = venue
        self.host = host
        self.port = port
        self.client_id = client_id
        self.timeout = float(timeout)
        self.readonly = readonly
        self._wanted_ib_account = ib_account
        self.ib_account: str | None = ib_account
        self._lock = threading.RLock()
        self._updates: queue.Queue[VenueUpdate] = queue.Queue()
        self._callbacks: list[Callable[[VenueUpdate], None]] = []
        self._emitted: set[tuple] = set()
        self._completed_state: dict[int, tuple[str, str]] = {}
        self._live_execs: set[str] = set()
        self._live_versions: dict[tuple[int, str], list[str]] = {}  # (permId, execId base) -> ids seen live
        self._fee_pending: set[str] = set()  # live fills handed over without their commission
        self._ref_perm: dict[str, int] = {}  # orderRef -> the first permId seen live for it
        self._closed = False
        self._connect_lock = asyncio.Lock()  # one (re)connect at a time: a query's and the feed's
        self._ever_connected = False
        self._revival: concurrent.futures.Future | None = None
        self._last_revival = float("-inf")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name=f"ib-adapter-{client_id}", daemon=True)
        self._thread.start()
        self._ib: Any = self._call(self._make_ib(), timeout=self.timeout + 5)  # only guards a wedged loop
        if connect:
            try:
                self.connect()
            except BaseException:
                self.close()
                raise

    # -- plumbing ---------------------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    async def _make_ib(self) -> Any:
        ib = IB()
        ib.RaiseRequestErrors = True  # a failed request raises, it never returns a partial list
        ib.orderStatusEvent += self._on_order_status
        ib.execDetailsEvent += self._on_exec_details
        ib.commissionReportEvent += self._on_commission
        # ib_insync turns a completedOrder message into a Trade and drops its OrderState but for the
        # status: keep completedTime and completedStatus (by permId) on the way through
        original = ib.wrapper.completedOrder

        def completed_order(contract: Any, order: Any, order_state: Any) -> None:
            self._completed_state[order.permId] = (
                getattr(order_state, "completedTime", "") or "", getattr(order_state, "completedStatus", "") or "")
            original(contract, order, order_state)

        ib.wrapper.completedOrder = completed_order
        return ib

    def _call(self, coro: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        if self._closed:
            coro.close()
            raise VenueConnectionError(f"ib: the adapter for {self.host}:{self.port} is closed")
        if threading.get_ident() == self._thread.ident:
            coro.close()
            raise RuntimeError("ib: adapter methods cannot be called from an update callback")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        # the coroutines bound their own waits; this outer limit only guards against a wedged loop
        limit = timeout if timeout is not None else self.timeout * 4 + 5
        try:
            return future.result(limit)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise VenueQueryFailed(f"ib: no answer from the adapter's event loop within {limit:g} s") from None

    def _where(self) -> str:
        return f"TWS/IB Gateway at {self.host}:{self.port} (client id {self.client_id})"

    # -- connection ---------------------------------------------------------------------------

    def connect(self) -> None:
        """Connect and run ib_insync's start-up sync; ``VenueConnectionError`` says why not. Warns
        (log) when this client id is not the master client id (commission reports of other clients'
        orders never reach it)."""
        with self._lock:
            self._call(self._connect(), timeout=self.timeout * 6 + 5)
        if not self.receives_all_commissions:
            log.warning(
                "ib: client id %s is not TWS's master API client id (%s): commission reports of orders placed by "
                "other client ids or in TWS do not reach it, so their fills stay fee_pending. Connect with the "
                "master client id (TWS: Global Configuration > API > Settings > Master API client ID) and pass "
                "master_client_id=.", self.client_id,
                "not given" if self.master_client_id is None else self.master_client_id)

    @property
    def receives_all_commissions(self) -> bool:
        """True when this client id is the master client id: it gets every client's commission reports."""
        return self.master_client_id is not None and self.master_client_id == self.client_id

    def is_connected(self) -> bool:
        """True while the adapter is open and ib_insync holds a live connection to TWS."""
        return not self._closed and bool(self._ib.isConnected())

    async def _connect(self) -> None:
        ib = self._ib
        loop = asyncio.get_running_loop()
        refused: asyncio.Future = loop.create_future()
        sync_errors: list[str] = []
        timed_out: list[str] = []
        wanted_account = self._wanted_ib_account or ""

        def on_error(req_id: int, code: int, message: str, contract: Any) -> None:
            if code in _REFUSED_CODES and not refused.done():
                refused.set_result(f"IB error {code}: {message}")
            elif req_id != -1 and not self._is_warning(code):
                sync_errors.append(f"error {code} for request {req_id}: {message}")

        def on_api_error(message: str) -> None:
            if not refused.done() and "clientId" in message and "in use" in message:
                refused.set_result(message)

        handshake_done: list[bool] = []

        def on_api_start() -> None:
            handshake_done.append(True)

        handler = _SyncTimeoutLog(threading.get_ident(), timed_out)
        ib_logger = logging.getLogger(f"{IB_MODULE}.ib")
        ib_logger.addHandler(handler)
        ib.errorEvent += on_error
        ib.client.apiError += on_api_error
        ib.client.apiStart += on_api_start
        task = asyncio.ensure_future(ib.connectAsync(
            self.host, self.port, clientId=self.client_id, timeout=self.timeout,
            readonly=self.readonly, account=wanted_account))
        try:
            done, _ = await asyncio.wait({task, refused}, return_when=asyncio.FIRST_COMPLETED)
            if refused.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                ib.disconnect()
                raise VenueConnectionError(
                    f"ib: {self._where()} refused the connection: client id {self.client_id} is already in use "
                    f"({refused.result()}). Another application or adapter is connected with this client id: "
                    f"pass a different client_id, or close the other connection.")
            try:
                task.result()
            except ConnectionRefusedError:
                raise VenueConnectionError(
                    f"ib: nothing listens at {self.host}:{self.port}: start TWS or IB Gateway, enable the API "
                    f"(Configure > API > Settings > Enable ActiveX and Socket Clients) and check the port.") from None
            except (TimeoutError, asyncio.TimeoutError):
                if not handshake_done:
                    raise VenueConnectionError(
                        f"ib: {self._where()} did not complete the API handshake within {self.timeout:g} s: is this "
                        f"the API port of a logged-in TWS/IB Gateway, is 127.0.0.1 a trusted IP, and is no login "
                        f"dialog waiting? Retry, or raise the timeout.") from None
                parts = timed_out + ["executions"]
                raise VenueConnectionError(self._sync_message(parts)) from None
            except ConnectionError as e:
                raise VenueConnectionError(f"ib: the connection to {self._where()} broke during the start-up "
                                           f"sync ({e}); retry, and check TWS's API log.") from None
            except OSError as e:
                raise VenueConnectionError(f"ib: cannot reach {self.host}:{self.port}: {e}") from None
            except VenueError:
                raise
            except Exception as e:  # RequestError from a sync request
                raise VenueConnectionError(f"ib: the start-up sync with {self._where()} failed: {e}") from None
            pending = self._pending_sync_requests()
            missing = list(dict.fromkeys(timed_out + pending))
            if missing:
                raise VenueConnectionError(self._sync_message(missing))
            if sync_errors:
                raise VenueConnectionError(f"ib: the start-up sync with {self._where()} failed: "
                                           + "; ".join(sync_errors))
            accounts = list(ib.managedAccounts())
            if self._wanted_ib_account is None:
                if len(accounts) != 1:
                    raise VenueConnectionError(
                        f"ib: the login at {self._where()} manages {len(accounts)} accounts ({', '.join(accounts)}): "
                        f"pass ib_account= to choose one.")
                self.ib_account = accounts[0]
            elif self._wanted_ib_account not in accounts:
                raise VenueConnectionError(
                    f"ib: account {self._wanted_ib_account} is not managed by the login at {self._where()} "
                    f"(it manages {', '.join(accounts) or 'none'}).")
            self._hand_over_synced_fills()
            self._ever_connected = True
        except BaseException:
            with contextlib.suppress(Exception):
                ib.disconnect()
            raise
        finally:
            ib_logger.removeHandler(handler)
            ib.errorEvent -= on_error
            ib.client.apiError -= on_api_error
            ib.client.apiStart -= on_api_start

    def _sync_message(self, parts: list[str]) -> str:
        return (f"ib: connected to {self._where()}, but its start-up sync did not finish within {self.timeout:g} s "
                f"(no answer to: {', '.join(parts)}). TWS may still be loading or busy, or the API is read-only "
                f"(then pass readonly=True). Retry later or raise the timeout; nothing was read.")

    def _pending_sync_requests(self) -> list[str]:
        """Names of start-up requests still unanswered (ib_insync leaves their futures behind)."""
        names = {"positions": "positions", "openOrders": "open orders", "completedOrders": "completed orders",
                 "accountValues": "account updates"}
        futures = getattr(self._ib.wrapper, "_futures", {})
        return [names.get(k, f"request {k}") for k, f in list(futures.items()) if not f.done()]

    @staticmethod
    def _is_warning(code: int) -> bool:
        return code in _WARNING_CODES or 2100 <= code < 2200

    async def _ensure_connected(self) -> None:
        if not self._ib.isConnected():
            async with self._connect_lock:
                if not self._ib.isConnected():
                    log.warning("ib: not connected to %s; reconnecting", self._where())
                    await self._connect()

    reconnect_every = 5.0  # seconds between the live feed's attempts to reconnect a lost connection

    def _revive(self) -> None:
        """A lost connection is reconnected by the feed too, not only by the next query (TWS restarts
        every day): one attempt at a time, every ``reconnect_every`` seconds, in the background; its
        start-up sync hands over what was executed meanwhile (``_hand_over_synced_fills``)."""
        if self._closed or not self._ever_connected or self._ib.isConnected():
            return
        if self._revival is not None and not self._revival.done():
            return
        now = self._loop.time()
        if now - self._last_revival < self.reconnect_every:
            return
        self._last_revival = now

        async def attempt() -> None:
            try:
                await self._ensure_connected()
            except Exception as e:  # noqa: BLE001 - a failed attempt is retried, never raised into the loop
                log.warning("ib: the live feed could not reconnect (%s); retrying in %g s", e, self.reconnect_every)

        self._revival = asyncio.run_coroutine_threadsafe(attempt(), self._loop)

    async def _query(self, what: str, make: Callable[[], Any]) -> Any:
        """Run one request: its answer, or ``VenueQueryFailed`` (error, silence, lost connection)."""
        await self._ensure_connected()
        ib = self._ib
        loop = asyncio.get_running_loop()
        failed: asyncio.Future = loop.create_future()

        def on_error(req_id: int, code: int, message: str, contract: Any) -> None:
            # errors without a request id during a request that has none (positions, orders,
            # account updates) are that request's errors: TWS then sends no end marker
            if req_id == -1 and not self._is_warning(code) and not failed.done():
                failed.set_result(f"error {code}: {message}")

        ib.errorEvent += on_error
        task = asyncio.ensure_future(make())
        try:
            done, _ = await asyncio.wait({task, failed}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                try:
                    return task.result()
                except ConnectionError as e:
                    raise _ConnectionLost(f"ib: {what}: the connection to {self._where()} broke ({e})") from None
                except Exception as e:  # RequestError
                    code, message = getattr(e, "code", None), getattr(e, "message", str(e))
                    raise VenueQueryFailed(f"ib: {what} failed at {self._where()}: error {code}: {message}") from None
            task.cancel()
            if failed.done():
                raise VenueQueryFailed(f"ib: {what} failed at {self._where()}: {failed.result()}")
            if not ib.isConnected():
                raise _ConnectionLost(f"ib: {what}: the connection to {self._where()} broke")
            raise VenueQueryFailed(f"ib: {what}: no answer from {self._where()} within {self.timeout:g} s")
        finally:
            ib.errorEvent -= on_error

    # -- queries ------------------------------------------------------------------------------

    def positions(self) -> list[VenuePosition]:
        """Every position of this account (``reqPositions``), zero ones left out. Raises
        ``VenueQueryFailed`` on a TWS error, a timeout or a lost connection."""
        with self._lock:
            return self._call(self._positions())

    async def _positions(self) -> list[VenuePosition]:
        items = await self._query("positions", self._ib.reqPositionsAsync)
        if self.fa_group:
            return self._summed(await self._fa_members(), items)
        out = []
        for p in items:
            if p.account != self.ib_account:
                continue
            qty = _req(p.position, "position quantity")
            if qty == 0:
                continue
            out.append(VenuePosition(
                symbol=_symbol(p.contract), qty=qty, avg_cost=_dec(p.avgCost, "average cost", optional=True),
                raw={"account": p.account, "position": _plain(p.position), "avgCost": _plain(p.avgCost),
                     "contract": _pick(p.contract, _CONTRACT_RAW)}))
        return out

    def balances(self) -> list[VenueBalance]:
        """Cash per currency from the account values (``CashBalance``; ``TotalCashValue`` for a currency
        without one). Raises ``VenueQueryFailed`` on a TWS error, a timeout or a lost connection."""
        with self._lock:
            return self._call(self._balances())

    async def _fa_members(self) -> list[str]:
        """The accounts of ``fa_group`` from the login's FA groups (``requestFA``: TWS's XML,
        ``<ListOfGroups><Group><name>..</name><ListOfAccts><String>DU..``)."""
        import xml.etree.ElementTree as ElementTree

        text = await self._query("FA groups", lambda: self._ib.requestFAAsync(1))  # 1: GROUPS
        try:
            root = ElementTree.fromstring((text or "").strip())
        except ElementTree.ParseError as e:
            raise VenueQueryFailed(f"ib: the FA groups TWS sent are not readable XML ({e})") from None
        for group in root.iter("Group"):
            if (group.findtext("name") or "").strip() == self.fa_group:
                members = [(a.text or "").strip() for a in group.iter("String") if (a.text or "").strip()]
                if members:
                    return members
        raise VenueQueryFailed(f"ib: FA group {self.fa_group!r} is not among the login's groups (or has no account)")

    def _summed(self, members: list[str], items: list[Any]) -> list[VenuePosition]:
        """The positions of the FA group's accounts, summed per contract (average cost weighted)."""
        held: dict[str, tuple[Decimal, Decimal, list[dict[str, Any]]]] = {}
        for p in items:
            if p.account not in members:
                continue
            qty = _req(p.position, "position quantity")
            cost = (_dec(p.avgCost, "average cost", optional=True) or Decimal(0)) * qty
            q0, c0, raws = held.get(_symbol(p.contract), (Decimal(0), Decimal(0), []))
            held[_symbol(p.contract)] = (q0 + qty, c0 + cost, [*raws, {"account": p.account, "position": _plain(
                p.position), "avgCost": _plain(p.avgCost), "contract": _pick(p.contract, _CONTRACT_RAW)}])
        return [VenuePosition(symbol=symbol, qty=qty, avg_cost=cost / qty if cost else None,
                              raw={"fa_group": self.fa_group, "accounts": raws})
                for symbol, (qty, cost, raws) in sorted(held.items()) if qty != 0]

    async def _balances(self) -> list[VenueBalance]:
        if not self.fa_group:
            return await self._account_balances(self.ib_account)
        summed: dict[str, tuple[Decimal, list[dict[str, Any]]]] = {}
        for member in await self._fa_members():
            for b in await self._account_balances(member):
                amount, raws = summed.get(b.currency, (Decimal(0), []))
                summed[b.currency] = (amount + b.cash, [*raws, b.raw])
        return [VenueBalance(currency, amount, raw={"fa_group": self.fa_group, "accounts": raws})
                for currency, (amount, raws) in sorted(summed.items())]

    async def _account_balances(self, account: str | None) -> list[VenueBalance]:
        values: list[Any] = []

        def on_value(value: Any) -> None:
            if value.account == account:
                values.append(value)

        self._ib.accountValueEvent += on_value
        try:
            await self._query("account values", lambda: self._ib.reqAccountUpdatesAsync(account))
        finally:
            self._ib.accountValueEvent -= on_value
        cash: dict[str, tuple[Decimal, dict]] = {}
        fallback: dict[str, tuple[Decimal, dict]] = {}
        for v in values:
            if v.currency in ("", "BASE") or getattr(v, "modelCode", ""):
                continue
            raw = {"account": v.account, "tag": v.tag, "value": v.value, "currency": v.currency}
            if v.tag == "CashBalance":
                cash[v.currency] = (_req(v.value, f"CashBalance {v.currency}"), raw)
            elif v.tag == "TotalCashValue":
                fallback[v.currency] = (_req(v.value, f"TotalCashValue {v.currency}"), raw)
        for currency, item in fallback.items():
            cash.setdefault(currency, item)
        if not cash:
            raise VenueQueryFailed(f"ib: account values of {account} carry no CashBalance or TotalCashValue")
        return [VenueBalance(currency, amount, raw=raw) for currency, (amount, raw) in sorted(cash.items())]

    def open_orders(self) -> list[VenueOrder]:
        """Every open order of this account, from any client id or placed by hand in TWS. Raises
        ``VenueQueryFailed`` on a TWS error, a timeout or a lost connection."""
        with self._lock:
            return self._call(self._open_orders())

    async def _open_trades(self) -> list[Any]:
        trades = await self._query("open orders", self._ib.reqAllOpenOrdersAsync)
        return [t for t in trades if t.order.account in (self.ib_account, "")]

    async def _completed_trades(self) -> list[Any]:
        trades = await self._query("completed orders", lambda: self._ib.reqCompletedOrdersAsync(False))
        return [t for t in trades if t.order.account in (self.ib_account, "")]

    async def _open_orders(self) -> list[VenueOrder]:
        orders = [self._order(t, completed=False) for t in await self._open_trades()]
        return [o for o in orders if o.is_open or o.status == "unknown"]

    def recent_orders(self, since: datetime | None = None) -> list[VenueOrder]:
        """Every open order plus the completed ones updated at or after ``since`` (all when None;
        ``ValueError`` if naive), merged by permId with the completed report winning. Raises
        ``VenueQueryFailed`` on a TWS error, a timeout or a lost connection."""
        since = _utc(since, "since")
        with self._lock:
            return self._call(self._recent_orders(since))

    async def _recent_orders(self, since: datetime | None) -> list[VenueOrder]:
        by_perm: dict[str, VenueOrder] = {}
        for t in await self._open_trades():
            order = self._order(t, completed=False)
            by_perm[order.venue_order_id] = order
        for t in await self._completed_trades():
            order = self._order(t, completed=True)
            if since is not None and order.updated_at is not None and order.updated_at < since:
                by_perm.pop(order.venue_order_id, None)
                continue
            by_perm[order.venue_order_id] = order  # the finished report wins
        return list(by_perm.values())

    def order_by_client_id(self, client_order_id: str) -> VenueOrder:
        """The open or completed order whose ``orderRef`` is ``client_order_id``. Raises ``ValueError``
        for an empty id, ``OrderNotFound`` when TWS shows none. Raises ``VenueQueryFailed`` on a TWS
        error, a timeout or a lost connection."""
        if not isinstance(client_order_id, str) or not client_order_id:
            raise ValueError(f"ib: client_order_id must be a non-empty string, got {client_order_id!r}")
        with self._lock:
            found = self._call(self._find(lambda o: o.client_order_id == client_order_id))
        if found is None:
            raise OrderNotFound(f"ib: no open or completed order with orderRef {client_order_id!r} "
                                f"in account {self.ib_account}")
        return found

    def order_by_venue_id(self, venue_order_id: str) -> VenueOrder:
        """Look one order up by its permId (open or completed)."""
        with self._lock:
            found = self._call(self._find(lambda o: o.venue_order_id == str(venue_order_id)))
        if found is None:
            raise OrderNotFound(f"ib: no open or completed order with permId {venue_order_id!r}")
        return found

    async def _find(self, match: Callable[[VenueOrder], bool]) -> VenueOrder | None:
        open_ = [o for o in (self._order(t, completed=False) for t in await self._open_trades()) if match(o)]
        live = [o for o in open_ if o.is_open]
        if live:
            return live[-1]
        done = [o for o in (self._order(t, completed=True) for t in await self._completed_trades()) if match(o)]
        candidates = done + open_
        if not candidates:
            return None
        epoch = datetime.min.replace(tzinfo=timezone.utc)
        return max(candidates, key=lambda o: (o.updated_at or epoch, int(o.venue_order_id or 0)))

    def fills(self, since: datetime | None = None) -> list[VenueFill]:
        """Executions of this account since ``since`` (tz-aware; ``ValueError`` if naive), with
        commissions as fees, deduplicated by execId with corrections replacing what they correct.
        Raises ``VenueQueryFailed`` on a TWS error, a timeout or a lost connection."""
        since = _utc(since, "since")
        with self._lock:
            return self._call(self._fills(since))

    async def _fills(self, since: datetime | None) -> list[VenueFill]:
        flt = ExecutionFilter(acctCode=self.ib_account or "",
                              time=since.strftime("%Y%m%d-%H:%M:%S") if since is not None else "")
        items = await self._query("executions", lambda: self._ib.reqExecutionsAsync(flt))
        reports = {}
        for f in list(self._ib.fills()) + list(items):
            report = f.commissionReport
            if report.execId:
                reports[report.execId] = report
        unique: dict[str, Any] = {}
        for f in items:
            if f.execution.acctNumber not in (self.ib_account, ""):
                continue
            unique.setdefault(f.execution.execId, f)
        # corrections: same order, same execId up to the last '.', a higher version replaces
        latest: dict[tuple, tuple[tuple[int, Any], str]] = {}
        corrects: dict[str, list[str]] = {}
        for exec_id, f in unique.items():
            parsed = _exec_version(exec_id)
            key = (f.execution.permId, parsed[0]) if parsed else (f.execution.permId, exec_id)
            version = parsed[1] if parsed else (0, 0)
            held = latest.get(key)
            if held is None or version > held[0]:
                latest[key] = (version, exec_id)
        for key, (_, exec_id) in latest.items():
            corrects[exec_id] = sorted((e for e, f in unique.items() if e != exec_id and (
                (f.execution.permId, (_exec_version(e) or (e,))[0]) == key)),
                key=lambda e: (_exec_version(e) or (e, (0, 0)))[1])  # oldest version first
        out = []
        for _, exec_id in latest.values():
            f = unique[exec_id]
            fill = self._fill(f.contract, f.execution, reports.get(exec_id), corrects[exec_id])
            if since is not None and fill.occurred_at is not None and fill.occurred_at < since:
                continue
            out.append(fill)
        out.sort(key=lambda v: (v.occurred_at or datetime.min.replace(tzinfo=timezone.utc), v.exec_id))
        return out

    # TWS sends an execution's commission report right after it, to the placing client and the
    # master client id only: a fee still pending after this long is not coming to this connection
    fee_report_wait = timedelta(minutes=2)
    # IBKR's largest commission per order on stocks: 1% of the trade value (fixed and tiered;
    # https://www.interactivebrokers.com/en/pricing/commissions-stocks.php); a cash shortfall
    # above that is no unreported commission
    max_fee_rate = Decimal("0.01")

    def snapshot(self, since: datetime | None = None, *, now: datetime) -> VenueSnapshot:
        """The common snapshot, with how long a commission report may take and how large one can be
        (reconciliation's ``fee_report_missing`` and the cash put down to unreported fees), and this
        account's share of FA group orders placed from the advisor's account (``fa_allocations``)."""
        snap = super().snapshot(since, now=now)
        snap = dataclasses.replace(snap, fee_report_wait=self.fee_report_wait, max_fee_rate=self.max_fee_rate)
        if isinstance(snap.fills, Unknown) or isinstance(snap.recent_orders, Unknown) or isinstance(
                snap.open_orders, Unknown):
            return snap
        listed = {o.venue_order_id for o in [*snap.open_orders, *snap.recent_orders]}
        if all(f.venue_order_id in listed for f in snap.fills):
            return snap  # no execution of an order placed elsewhere: nothing allocated here
        try:
            with self._lock:
                allocations = self._call(self._fa_allocations(snap.fills, listed))
        except VenueError as e:
            return dataclasses.replace(snap, recent_orders=Unknown(f"{type(e).__name__}: {e}"))
        return dataclasses.replace(snap, recent_orders=[*snap.recent_orders, *allocations])

    async def _fa_allocations(self, fills: list[VenueFill], listed: set[str]) -> list[VenueOrder]:
        """This account's allocations of FA group orders placed from the advisor's account: one
        order each, holding what was allocated here (IB lists a sub-account's allocations as its
        executions of the group order's permId; the order itself is the advisor's). While the group
        order works, its quantity is the whole order's (the most this account can get) and it is
        partially filled; once finished, its quantity is what this account got, and it is filled.
        ``notional`` is set: its quantity is known only as it fills."""
        by_perm: dict[str, list[VenueFill]] = {}
        for f in fills:
            if f.venue_order_id not in listed:
                by_perm.setdefault(f.venue_order_id, []).append(f)
        trades = [(t, False) for t in await self._query("open orders", self._ib.reqAllOpenOrdersAsync)]
        trades += [(t, True) for t in await self._query("completed orders",
                                                         lambda: self._ib.reqCompletedOrdersAsync(False))]
        out: dict[str, VenueOrder] = {}
        for t, completed in trades:  # the completed report, after the open one, wins
            group = t.order.faGroup or t.order.faProfile
            perm = str(t.order.permId or t.orderStatus.permId)
            if not group or perm not in by_perm:
                continue
            order = self._order(t, completed=completed)
            got = by_perm[perm]
            allocated = sum((f.qty for f in got), Decimal(0))
            avg = sum((f.qty * f.price for f in got), Decimal(0)) / allocated
            working = order.is_open
            out[perm] = _replace_order(
                order, client_order_id=None, qty=order.qty if working else allocated, filled_qty=allocated,
                status="partially_filled" if working else "filled", avg_fill_price=avg, notional=allocated * avg,
                raw={**order.raw, "fa_allocation": {"group": group, "account": self.ib_account,
                                                    "order_ref": t.order.orderRef, "advisor_account": t.order.account}})
        return list(out.values())

    # -- mapping ------------------------------------------------------------------------------

    def _order(self, trade: Any, *, completed: bool) -> VenueOrder:
        o, st, c = trade.order, trade.orderStatus, trade.contract
        perm_id = o.permId or st.permId
        what = f"order {perm_id}"
        qty = _req(o.totalQuantity, f"{what} quantity")
        if completed:
            filled = _dec(getattr(o, "filledQuantity", None), f"{what} filled quantity", optional=True)
            if filled is None:
                filled = _dec(st.filled, f"{what} filled", optional=True) or Decimal(0)
        else:
            filled = _dec(st.filled, f"{what} filled", optional=True) or Decimal(0)
        raw_status = st.status or ""
        completed_text, completed_status, completed_time = "", "", None
        if completed:
            # ib_insync drops a completed order's OrderState but for its status; _make_ib keeps
            # completedTime and completedStatus by permId
            completed_text, completed_status = self._completed_state.get(perm_id, ("", ""))
            completed_time = parse_ib_time(completed_text)
        status = map_status(raw_status, qty, filled, completed_status)
        ib_type = o.orderType
        order_type = _ORDER_TYPES.get(ib_type, ib_type.lower().replace(" ", "_") or "unknown")
        limit = _dec(o.lmtPrice, f"{what} limit price", optional=True) if ib_type in ("LMT", "STP LMT") else None
        stop = _dec(o.auxPrice, f"{what} stop price", optional=True) if ib_type in ("STP", "STP LMT") else None
        avg = _dec(st.avgFillPrice, f"{what} average fill price", optional=True) if filled > 0 else None
        if avg == 0:
            avg = None
        raw = {"order": _pick(o, _ORDER_RAW), "contract": _pick(c, _CONTRACT_RAW),
               "orderStatus": _plain(st), "completed": completed}
        if completed:
            raw["completedTime"] = completed_text
            raw["completedStatus"] = completed_status
        return VenueOrder(
            venue_order_id=str(perm_id),
            client_order_id=o.orderRef or None,
            symbol=_symbol(c),
            side=_side(o.action, what),  # type: ignore[arg-type]
            order_type=order_type,
            qty=qty,
            filled_qty=filled,
            status=status,
            raw_status=raw_status,
            limit_price=limit,
            stop_price=stop,
            avg_fill_price=avg,
            time_in_force=_TIFS.get(o.tif, (o.tif or "day").lower()),
            updated_at=completed_time,
            raw=raw,
        )

    def _fill(self, contract: Any, ex: Any, report: Any, corrects: list[str]) -> VenueFill:
        what = f"execution {ex.execId}"
        fee, fee_currency = Decimal(0), "USD"
        if report is not None:
            fee = _dec(report.commission, f"{what} commission", optional=True) or Decimal(0)
            fee_currency = report.currency or contract.currency or "USD"
        elif contract.currency:
            fee_currency = contract.currency
        occurred = ex.time if isinstance(ex.time, datetime) and ex.time.tzinfo is not None else None
        raw = {"execution": _plain(ex), "contract": _pick(contract, _CONTRACT_RAW),
               "commissionReport": _plain(report) if report is not None else None,
               "corrects": corrects}
        return VenueFill(
            exec_id=ex.execId,
            client_order_id=ex.orderRef or None,
            venue_order_id=str(ex.permId),
            symbol=_symbol(contract),
            side=_side(ex.side, what),  # type: ignore[arg-type]
            qty=_req(ex.shares, f"{what} shares"),
            price=_req(ex.price, f"{what} price"),
            fee=fee,
            fee_currency=fee_currency,
            occurred_at=occurred.astimezone(timezone.utc) if occurred else None,
            raw=raw,
            corrects=tuple(corrects),
            fee_pending=report is None,  # the commission report has not come (late, or never: not master)
        )

    # -- live order flow ----------------------------------------------------------------------

    def submit(self, request: OrderRequest) -> VenueOrder:
        """Place a recorded intent with orderRef = its client order id. An order with that
        orderRef already at the venue (open or completed) is returned instead of a second one."""
        contract, order = self._ib_order(request)
        with self._lock:
            return self._call(self._submit(request, contract, order), timeout=self.timeout * 8 + 5)

    def _ib_order(self, request: OrderRequest) -> tuple[Any, Any]:
        if self.readonly:
            raise VenueError("ib: the adapter is read-only (readonly=True): orders cannot be placed")
        cid = request.client_order_id
        if not isinstance(cid, str) or not cid or len(cid) > 128 or _CONTROL.search(cid):
            raise ValueError(f"ib: client_order_id must be 1..128 printable characters, got {cid!r}")
        if request.side not in ("buy", "sell"):
            raise ValueError(f"ib: side must be buy or sell, got {request.side!r}")
        if request.order_type not in _TO_IB_TYPE:
            raise ValueError(f"ib: order_type must be one of {sorted(_TO_IB_TYPE)}, got {request.order_type!r}")
        if request.time_in_force not in _TO_IB_TIF:
            raise ValueError(f"ib: time_in_force must be one of {sorted(_TO_IB_TIF)}, got {request.time_in_force!r}")
        if not request.symbol or not isinstance(request.symbol, str) or _CONTROL.search(request.symbol):
            raise ValueError(f"ib: bad symbol {request.symbol!r}")

        def exact(value: Any, what: str) -> Decimal:
            if not isinstance(value, Decimal) or not value.is_finite() or value <= 0:
                raise ValueError(f"ib: {what} must be a positive finite Decimal, got {value!r}")
            return Decimal(format(value, "f"))  # plain digits on the wire, never 1E+2

        ib_type = _TO_IB_TYPE[request.order_type]
        order = Order(action=request.side.upper(), totalQuantity=exact(request.qty, "qty"), orderType=ib_type,
                      tif=_TO_IB_TIF[request.time_in_force], orderRef=cid, account=self.ib_account or "",
                      transmit=True)
        if self.fa_group:  # an account, a group and a profile exclude each other (IB error 201)
            order.account, order.faGroup = "", self.fa_group
        if ib_type in ("LMT", "STP LMT"):
            order.lmtPrice = exact(request.limit_price, "limit_price")
        elif request.limit_price is not None:
            raise ValueError(f"ib: a {request.order_type} order takes no limit_price")
        if ib_type in ("STP", "STP LMT"):
            order.auxPrice = exact(request.stop_price, "stop_price")
        elif request.stop_price is not None:
            raise ValueError(f"ib: a {request.order_type} order takes no stop_price")
        return Stock(request.symbol, "SMART", "USD"), order

    @contextlib.contextmanager
    def _order_errors(self, order: Any) -> Iterator[list[tuple[int, str]]]:
        """The (code, message) errors TWS reports for ``order``'s id while the block runs (warnings
        left out): a placement or a modification is refused through the error feed, not a reply."""
        errors: list[tuple[int, str]] = []

        def on_error(req_id: int, code: int, message: str, contract: Any) -> None:
            if req_id == order.orderId and not self._is_warning(code):
                errors.append((code, message))

        self._ib.errorEvent += on_error
        try:
            yield errors
        finally:
            self._ib.errorEvent -= on_error

    async def _submit(self, request: OrderRequest, contract: Any, order: Any) -> VenueOrder:
        cid = request.client_order_id
        existing = await self._find(lambda o: o.client_order_id == cid)
        if existing is not None:
            return existing
        ib = self._ib
        with self._order_errors(order) as errors:
            trade = ib.placeOrder(contract, order)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout
            grace = None
            while loop.time() < deadline:
                acked = trade.order.permId and trade.orderStatus.status not in ("PendingSubmit", "")
                if acked and (not errors or trade.orderStatus.status not in ("Cancelled",)):
                    break
                if errors and grace is None:
                    grace = loop.time() + min(0.5, self.timeout)  # let openOrder/orderStatus follow
                if grace is not None and loop.time() >= grace:
                    break
                if not ib.isConnected():
                    break
                await asyncio.sleep(0.005)
        if trade.order.permId:
            venue_order = self._order(trade, completed=False)
            if errors:
                reason = "; ".join(f"error {c}: {m}" for c, m in errors)
                venue_order = _replace_order(venue_order, status="rejected", raw={**venue_order.raw, "errors": reason})
            return venue_order
        if errors:
            reason = "; ".join(f"error {c}: {m}" for c, m in errors)
            return VenueOrder(
                venue_order_id=f"ib-order:{self.client_id}:{order.orderId}", client_order_id=cid,
                symbol=request.symbol, side=request.side, order_type=request.order_type, qty=request.qty,
                filled_qty=Decimal(0), status="rejected", raw_status=trade.orderStatus.status or "Cancelled",
                limit_price=request.limit_price, stop_price=request.stop_price,
                time_in_force=request.time_in_force, raw={"errors": reason})
        # no acknowledgement: look it up once by our id before saying "unknown"
        try:
            found = await self._find(lambda o: o.client_order_id == cid)
        except VenueError:
            found = None
        if found is not None:
            return found
        raise SubmitOutcomeUnknown(
            f"ib: order {cid!r} was sent to {self._where()} but not acknowledged within {self.timeout:g} s and "
            f"a lookup by orderRef did not find it: its outcome is unknown. Keep it pending and look it up "
            f"again (order_by_client_id).")

    def cancel(self, venue_order_id: str) -> None:
        """Cancel an open order by permId (only orders this client id placed can be cancelled)."""
        if self.readonly:
            raise VenueError("ib: the adapter is read-only (readonly=True): orders cannot be cancelled")
        with self._lock:
            self._call(self._cancel(str(venue_order_id)), timeout=self.timeout * 6 + 5)

    async def _cancel(self, venue_order_id: str) -> None:
        trades = await self._open_trades()
        trade = next((t for t in trades if str(t.order.permId or t.orderStatus.permId) == venue_order_id), None)
        if trade is None or trade.isDone():
            done = [t for t in await self._completed_trades() if str(t.order.permId) == venue_order_id]
            if done or trade is not None:
                status = (done[0] if done else trade).orderStatus.status
                raise OrderNotCancelable(f"ib: order {venue_order_id} is finished already ({status})")
            raise OrderNotFound(f"ib: no open order with permId {venue_order_id}")
        if trade.order.clientId != self.client_id:
            who = "by hand in TWS" if trade.order.clientId == 0 and trade.order.orderId <= 0 else \
                f"by API client id {trade.order.clientId}"
            raise OrderNotCancelable(f"ib: order {venue_order_id} was placed {who}; IB lets only that client "
                                     f"cancel it (or cancel it in TWS)")
        ib = self._ib
        errors: list[tuple[int, str]] = []

        def on_error(req_id: int, code: int, message: str, contract: Any) -> None:
            if req_id == trade.order.orderId and not self._is_warning(code):
                errors.append((code, message))

        ib.errorEvent += on_error
        try:
            ib.cancelOrder(trade.order)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout
            while loop.time() < deadline and not errors and not trade.isDone():
                await asyncio.sleep(0.005)
        finally:
            ib.errorEvent -= on_error
        if errors:
            raise OrderNotCancelable(f"ib: cancel of order {venue_order_id} refused: "
                                     + "; ".join(f"error {c}: {m}" for c, m in errors))

    def replace_order(self, venue_order_id: str, *, qty: Decimal, limit_price: Decimal | None = None,
                      stop_price: Decimal | None = None) -> VenueOrder:
        """Amend an open order (by permId) in place: placeOrder again with the same orderId and the
        new totalQuantity (the whole order's) and prices, as TWS modifies an order. Returns the
        order as TWS reports it after the change. Raises ``OrderNotFound``, ``ReplaceRejected``
        (finished, placed by another client id, or refused by TWS with an error)."""
        if self.readonly:
            raise VenueError("ib: the adapter is read-only (readonly=True): orders cannot be amended")
        for value, what in ((qty, "qty"), (limit_price, "limit_price"), (stop_price, "stop_price")):
            if value is not None and (not isinstance(value, Decimal) or not value.is_finite() or value <= 0):
                raise ValueError(f"ib: {what} must be a positive finite Decimal, got {value!r}")
        with self._lock:
            return self._call(self._replace(str(venue_order_id), qty, limit_price, stop_price),
                              timeout=self.timeout * 6 + 5)

    async def _replace(self, venue_order_id: str, qty: Decimal, limit_price: Decimal | None,
                       stop_price: Decimal | None) -> VenueOrder:
        trades = await self._open_trades()
        trade = next((t for t in trades if str(t.order.permId or t.orderStatus.permId) == venue_order_id), None)
        if trade is None or trade.isDone():
            if trade is None and not [t for t in await self._completed_trades() if str(t.order.permId) == venue_order_id]:
                raise OrderNotFound(f"ib: no open order with permId {venue_order_id}")
            raise ReplaceRejected(f"ib: order {venue_order_id} is finished already")
        if trade.order.clientId != self.client_id:
            raise ReplaceRejected(f"ib: order {venue_order_id} was placed by API client id {trade.order.clientId}; "
                                  "IB lets only that client modify it")
        ib = self._ib
        # a copy goes out: ib_insync's own order keeps what TWS last confirmed (its openOrder
        # updates it), so a refused or unanswered amendment never shows as made
        order = dataclasses.replace(trade.order, totalQuantity=Decimal(format(qty, "f")))
        if limit_price is not None:
            order.lmtPrice = Decimal(format(limit_price, "f"))
        if stop_price is not None:
            order.auxPrice = Decimal(format(stop_price, "f"))
        wanted = (order.totalQuantity, order.lmtPrice, order.auxPrice)

        def confirmed() -> bool:
            o = trade.order
            return all(Decimal(str(a)) == Decimal(str(b)) for a, b in zip((o.totalQuantity, o.lmtPrice, o.auxPrice),
                                                                       wanted, strict=True))

        with self._order_errors(order) as errors:
            ib.placeOrder(trade.contract, order)  # the same orderId: a modification
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout
            while loop.time() < deadline and not errors and not confirmed():
                await asyncio.sleep(0.005)
        if errors:
            raise ReplaceRejected(f"ib: amendment of order {venue_order_id} refused: "
                                  + "; ".join(f"error {c}: {m}" for c, m in errors))
        if not confirmed():
            raise VenueQueryFailed(f"ib: amendment of order {venue_order_id} sent but not confirmed within "
                                   f"{self.timeout:g} s: its outcome is unknown (the order's state at TWS tells)")
        return self._order(trade, completed=False)

    # -- updates feed -------------------------------------------------------------------------

    def on_update(self, callback: Callable[[VenueUpdate], None]) -> None:
        """Call ``callback`` (on the adapter's thread) for every update from now on."""
        self._callbacks.append(callback)

    def next_update(self, timeout: float | None = None) -> VenueUpdate | None:
        """The next update (ack, fill, fee, cancelled, rejected), or None after ``timeout`` seconds.
        A lost connection is reconnected in the background (``reconnect_every``)."""
        self._revive()
        try:
            return self._updates.get(timeout=timeout) if timeout != 0 else self._updates.get_nowait()
        except queue.Empty:
            return None

    def updates(self) -> list[VenueUpdate]:
        """Drain every update delivered so far (what ``OrderFlow.pump`` records), without waiting."""
        drained = []
        while (update := self.next_update(0)) is not None:
            drained.append(update)
        return drained

    def _ours(self, trade: Any) -> bool:
        # TWS streams only this client's orders (client id 0 also gets those bound from TWS)
        return trade.order.account in (self.ib_account, "") and trade.order.clientId == self.client_id

    def _emit(self, key: tuple, update: VenueUpdate) -> None:
        if key in self._emitted:
            return
        self._emitted.add(key)
        self._updates.put(update)
        for callback in list(self._callbacks):
            try:
                callback(update)
            except Exception:  # noqa: BLE001 - a callback's failure must not stop the feed
                log.exception("ib: update callback failed")

    def _client_order_id(self, order_ref: str, perm: int, raw: dict[str, Any]) -> str | None:
        """Our client order id for an update of ``perm``: its orderRef, unless another permId came
        first with that orderRef (a resend or a second engine): then None, for reconciliation to
        report both and keep the second apart (``raw["duplicate_order_ref_of"]``)."""
        if not order_ref:
            return None
        first = self._ref_perm.setdefault(order_ref, perm)
        if first == perm:
            return order_ref
        raw["duplicate_order_ref_of"] = str(first)
        log.warning("ib: orderRef %r is carried by permId %s and permId %s (a possible double exposure): the "
                    "updates of %s are not handed over as ours; reconciliation reports both", order_ref, first,
                    perm, perm)
        return None

    def _on_order_status(self, trade: Any) -> None:
        # TWS may send an orderStatus twice (IB API guide, orderstatus.htm): every update is keyed
        # (_emitted), so a repeated status hands over nothing new
        try:
            if not self._ours(trade):
                return
            perm = trade.order.permId or trade.orderStatus.permId
            if not perm:
                return
            status = trade.orderStatus.status
            entry = trade.log[-1] if trade.log else None
            at = entry.time if entry is not None and getattr(entry.time, "tzinfo", None) else None
            raw = {"orderStatus": _plain(trade.orderStatus), "order": _pick(trade.order, _ORDER_RAW)}
            cid = self._client_order_id(trade.order.orderRef or "", perm, raw)
            if status in ("PreSubmitted", "Submitted"):
                self._emit(("ack", perm), VenueUpdate("ack", cid, str(perm), occurred_at=at, raw=raw))
            elif status in ("Cancelled", "ApiCancelled"):
                error_code = getattr(entry, "errorCode", 0) if entry is not None else 0
                if error_code and not self._is_warning(error_code):
                    self._emit(("end", perm), VenueUpdate("rejected", cid, str(perm), reason=entry.message,
                                                          occurred_at=at, raw=raw))
                else:
                    self._emit(("end", perm), VenueUpdate("cancelled", cid, str(perm), occurred_at=at, raw=raw))
            elif status == "Inactive":
                reason = entry.message if entry is not None else ""
                self._emit(("end", perm), VenueUpdate("rejected", cid, str(perm), reason=reason, occurred_at=at,
                                                      raw=raw))
        except Exception:  # noqa: BLE001 - never break ib_insync's dispatch
            log.exception("ib: order status update could not be read")

    def _on_exec_details(self, trade: Any, fill: Any) -> None:
        # the fee comes with the commission report that follows; without one in 2 s, report the
        # fill with its fee pending (a later report becomes a "fee" update)
        exec_id = fill.execution.execId
        if exec_id not in self._live_execs:  # commission reports also follow reqExecutions: only live ones count
            self._live_execs.add(exec_id)
            parsed = _exec_version(exec_id)
            key = (fill.execution.permId, parsed[0] if parsed else exec_id)
            self._live_versions.setdefault(key, []).append(exec_id)
        self._loop.call_later(self.commission_wait, self._emit_fill, trade, fill, None)
        log.debug("ib: execution %s, waiting for its commission report", exec_id)

    commission_wait = 2.0  # seconds a live fill waits for its commission report

    def _on_commission(self, trade: Any, fill: Any, report: Any) -> None:
        exec_id = fill.execution.execId
        if exec_id in self._fee_pending:  # the fill went out without it: hand the fee over now
            self._fee_pending.discard(exec_id)
            try:
                venue_fill = self._fill(fill.contract, fill.execution, report, self._corrected_live(fill))
                raw = dict(venue_fill.raw)
                cid = self._client_order_id(fill.execution.orderRef or "", fill.execution.permId, raw)
                venue_fill = _replace_fill(venue_fill, client_order_id=cid)
                self._emit(("fee", exec_id), VenueUpdate("fee", cid, venue_fill.venue_order_id, fill=venue_fill,
                                                         occurred_at=venue_fill.occurred_at, raw=raw))
            except Exception:  # noqa: BLE001
                log.exception("ib: commission report could not be read")
            return
        self._emit_fill(trade, fill, report)

    def _corrected_live(self, fill: Any) -> list[str]:
        """The execIds this one corrects (same permId, same id up to the last '.', a lower version),
        oldest first: those seen live, and those ib_insync knows from its start-up ``reqExecutions``
        (the day's executions before this session)."""
        exec_id = fill.execution.execId
        parsed = _exec_version(exec_id)
        if parsed is None:
            return []
        perm = fill.execution.permId
        seen = set(self._live_versions.get((perm, parsed[0]), []))
        seen.update(f.execution.execId for f in self._ib.fills()
                    if f.execution.permId == perm and f.execution.execId.rpartition(".")[0] == parsed[0])
        older = [e for e in seen if e != exec_id and (_exec_version(e) or (e, (0, 0)))[1] < parsed[1]]
        return sorted(older, key=lambda e: (_exec_version(e) or (e, (0, 0)))[1])

    def _hand_over_synced_fills(self) -> None:
        """Executions of this client's orders that the start-up sync listed (``reqExecutions``: the
        day's, those made while the engine was down or disconnected among them) go on the feed as
        live ones do: ib_insync reports them as a request's answer, never as ``execDetailsEvent``,
        so a GTC order filled while we were away would wait for reconciliation. Only the latest
        version of each execution (its ``corrects`` name the older ones), none handed over before;
        one the log holds already is recorded once (by exec id)."""
        latest: dict[tuple[int, str], tuple[tuple[int, Any], Any]] = {}
        for fill in self._ib.fills():
            ex = fill.execution
            if ex.clientId != self.client_id or ex.acctNumber not in (self.ib_account, ""):
                continue
            parsed = _exec_version(ex.execId)
            key = (ex.permId, parsed[0] if parsed else ex.execId)
            version = parsed[1] if parsed else (0, 0)
            if key not in latest or version > latest[key][0]:
                latest[key] = (version, fill)
        epoch = datetime.min.replace(tzinfo=timezone.utc)
        for _, fill in sorted(latest.values(), key=lambda v: (
                v[1].execution.time if isinstance(v[1].execution.time, datetime) else epoch, v[1].execution.execId)):
            exec_id = fill.execution.execId
            if ("fill", exec_id) in self._emitted:
                continue
            self._live_execs.add(exec_id)
            report = fill.commissionReport if fill.commissionReport.execId else None
            self._emit_fill(None, fill, report)

    def _emit_fill(self, trade: Any, fill: Any, report: Any) -> None:
        """Hand a fill over (``trade`` None: from the start-up sync, this client's by its execution)."""
        try:
            exec_id = fill.execution.execId
            if (exec_id not in self._live_execs or (trade is not None and not self._ours(trade))
                    or ("fill", exec_id) in self._emitted):
                return
            venue_fill = self._fill(fill.contract, fill.execution, report, self._corrected_live(fill))
            raw = dict(venue_fill.raw)
            cid = self._client_order_id(fill.execution.orderRef or "", fill.execution.permId, raw)
            venue_fill = _replace_fill(venue_fill, client_order_id=cid, raw=raw)
            if venue_fill.fee_pending:
                self._fee_pending.add(exec_id)
            self._emit(("fill", fill.execution.execId), VenueUpdate(
                "fill", cid, venue_fill.venue_order_id, fill=venue_fill,
                occurred_at=venue_fill.occurred_at, raw=raw))
        except Exception:  # noqa: BLE001
            log.exception("ib: execution update could not be read")

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Disconnect from TWS and stop the adapter's event-loop thread; idempotent."""
        if self._closed:
            return

        async def disconnect() -> None:
            with contextlib.suppress(Exception):
                self._ib.disconnect()
            await asyncio.sleep(0)

        if hasattr(self, "_ib"):
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(disconnect(), self._loop).result(5)
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> IBAdapter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _SyncTimeoutLog(logging.Handler):
    """Collects ib_insync's "<name> request timed out" log lines of one connect (one thread)."""

    def __init__(self, thread_id: int, into: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.thread_id = thread_id
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        """Record the request name of an ib_insync 'request timed out' warning logged by the connecting
        thread."""
        if record.thread != self.thread_id:
            return
        message = record.getMessage()
        if message.endswith(" request timed out"):
            self.into.append(message[: -len(" request timed out")])


def _replace_order(order: VenueOrder, **changes: Any) -> VenueOrder:
    from dataclasses import replace

    return replace(order, **changes)


def _replace_fill(fill: VenueFill, **changes: Any) -> VenueFill:
    from dataclasses import replace

    return replace(fill, **changes)


__all__ = ["IBAdapter", "IB_MODULE", "OrderNotCancelable", "SubmitOutcomeUnknown", "map_status", "parse_ib_time"]
