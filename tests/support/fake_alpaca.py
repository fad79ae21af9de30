"""A local fake of Alpaca's Trading API: REST and the trade-updates websocket, on 127.0.0.1.

It speaks the wire protocol alpaca-py speaks to Alpaca, shaped after Alpaca's documentation:

* REST under ``/v2`` (auth headers ``APCA-API-KEY-ID``/``APCA-API-SECRET-KEY``, else HTTP 401
  ``{"code": 40110000, "message": "request is not authorized"}``): ``GET /account``,
  ``GET /positions`` (short positions with negative ``qty`` and ``side: "short"``),
  ``GET /orders`` (``status`` open|closed|all, ``limit`` ≤ 500 default 50, ``after``/``until``
  exclusive on the submission time, ``direction`` default desc, ``nested``), ``GET /orders/{id}``,
  ``GET /orders:by_client_order_id``, ``POST /orders`` (422 ``{"code": 40010001, "message":
  "client_order_id must be unique"}`` on a duplicate id), ``DELETE /orders/{id}`` (204; 422 when no
  longer cancelable), ``GET /account/activities/FILL`` (``direction`` default desc, ``page_size``
  ≤ 100 default 100, ``page_token`` = the id of the last activity of the previous page,
  ``after``/``until``), ``GET /account/activities/CFEE`` (crypto fees, one per pair and day, with a
  ``date``), ``PATCH /orders/{id}`` (replace: a new order). Amounts are decimal strings; times
  RFC 3339 UTC; ids UUIDs; a FILL activity id is ``<New York time, ms>::<execution id>``.
* the vocabulary beyond the common case, each from Alpaca's documentation (cited where written):
  any of the 18 order statuses; bracket/OCO/OTO groups (``new_group``: legs ``held``, listed
  inside their parent with ``nested=true`` and on their own without; a held order is not listed
  as open); cancel/replace (``replace_order``: ``replaces``/``replaced_by``); notional orders
  (``notional``, ``qty`` null); quantities up to 9 decimals; crypto pairs (``BTC/USD`` in orders,
  ``BTCUSD`` in positions and fee activities) with the fee taken at each fill from what is
  received and posted at the end of the day (``post_crypto_fees``).
* the websocket at ``/stream``: an ``authenticate`` (or ``auth``) message is answered with
  ``{"stream": "authorization", "data": {"status": "authorized", "action": "authenticate"}}``
  (``unauthorized`` and a close on bad keys), ``listen`` with ``{"stream": "listening", ...}``;
  then ``trade_updates`` events (``new``, ``fill``, ``partial_fill``, ``canceled``, ``expired``,
  ``rejected``, ``replaced``; any other event a test broadcasts) carrying the ``order`` object, ``timestamp`` and, for fills,
  ``execution_id``, ``price``, ``qty``, ``position_qty``; sent as binary frames like Alpaca's.
  Events sent while nobody listens are lost, as at Alpaca.

``FakeAlpaca`` runs uvicorn + starlette on a background thread (``start()``/``stop()``, or as a
context manager) on a random free port. ``alpaca_venue()`` wraps it as the ``VenueControl`` of the
reconciliation scenarios (``tests/support/venues.py``). Fault injection: ``fail(query)`` (HTTP 500 or a
truncated page; also "fees"), ``hang(path)`` (a request that never answers), ``stream_down()`` (drops the
websocket connections and refuses new ones while inside).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.support import venues
from tradestate.adapters.brokers.alpaca import AlpacaAdapter

NEW_YORK = ZoneInfo("America/New_York")
CLOSED = {"filled", "canceled", "expired", "replaced", "rejected"}
# ``status=open`` does not list a held leg: it shows as closed (alpacahq/alpaca-trade-api-python#322).
NOT_LISTED_OPEN = CLOSED | {"held"}
NOT_CANCELABLE = CLOSED | {"pending_cancel", "pending_replace"}
# VenueControl statuses (ours) -> Alpaca's; anything else is passed through as Alpaca's own.
OUR_STATUS = {
    "open": "new", "partially_filled": "partially_filled", "filled": "filled",
    "cancelled": "canceled", "rejected": "rejected", "expired": "expired",
}


def asset_class(symbol: str) -> str:
    """Alpaca's asset class of a symbol here: a pair (``BTC/USD``) is crypto."""
    return "crypto" if "/" in symbol else "us_equity"


def legacy_symbol(symbol: str) -> str:
    """How Alpaca's positions and fee activities spell a crypto pair: ``BTCUSD`` for ``BTC/USD``
    (alpacahq/alpaca-docs content/trading/crypto-trading.md: the CFEE example says ``ETHUSD``)."""
    return symbol.replace("/", "")


def _ts(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_ts(text: str) -> datetime:
    value = text.strip().replace("Z", "+00:00").replace("z", "+00:00")
    if " " in value and "+" not in value:  # a '+' decoded as a space in a query string
        value = value.replace(" ", "+")
    if len(value) == 10:
        value += "T00:00:00+00:00"
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def _dec_or_none(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def _s(amount: Decimal | None) -> str | None:
    return None if amount is None else str(amount)


def _error(status: int, code: int, message: str) -> Response:
    return Response(json.dumps({"code": code, "message": message}), status_code=status,
                    media_type="application/json")


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data), status_code=status, media_type="application/json")


class FakeAlpaca:
    """The venue: orders, FILL activities, positions and cash of one account, behind Alpaca's API."""

    def __init__(self, *, api_key: str = "fake-key", secret_key: str = "fake-secret") -> None:
        self.api_key = api_key
        self.secret_key = secret_key
        self.account_id = str(uuid.uuid4())
        self.lock = threading.RLock()
        self.orders: dict[str, dict] = {}  # id -> Alpaca order object (insertion order)
        self.legs: dict[str, list[str]] = {}  # parent order id -> its legs' ids (bracket, oco, oto)
        self.activities: list[dict] = []
        self.fee_activities: list[dict] = []  # CFEE, posted by post_crypto_fees()
        self.crypto_fee_rate = Decimal("0.0025")
        # FINRA's TAF on equity sales, per share (0: off). "Alpaca's trading system keeps track of
        # the accrued FEE amounts intraday and deducts the pending amounts from account balances.
        # At EOD, we charge each account the fees for that trading day" (Regulatory Fees), posted
        # as ``FEE`` activities by ``post_regulatory_fees``.
        # True: a PATCH leaves the old order ``pending_replace`` and its replacement ``pending_new``
        # until ``complete_replace`` or ``replace_lost_to_a_fill`` (a 200 "does NOT guarantee the
        # existing open order has been replaced"); False: replaced at once
        self.replace_in_two_steps = False
        self.taf_per_share = Decimal(0)
        self.unposted_reg_fees: dict[tuple[str, str], Decimal] = {}  # (symbol, NY day) -> USD
        self.reg_fee_activities: list[dict] = []
        # (pair, UTC day, buy) -> [fee, notional, qty] taken but not posted yet
        self.unposted_fees: dict[tuple[str, str, bool], list[Decimal]] = {}
        self.positions: dict[str, dict] = {}  # symbol -> {"qty": Decimal, "avg": Decimal}
        self.cash = Decimal("100000")
        self.failing: dict[str, str] = {}  # query -> "500" | "truncated"
        self.hanging: set[str] = set()  # paths (after /v2) that never answer
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, query) of every REST call
        self._refuse_next: dict[tuple[str, str], list[int]] = {}  # answered before processing
        self._lose_next: dict[tuple[str, str], list[int]] = {}  # processed, then this status instead
        self._before_next: dict[tuple[str, str], list[Any]] = {}  # venue moves made before answering
        self._clock = datetime.now(timezone.utc) - timedelta(minutes=5)
        self._clients: set[WebSocket] = set()  # authenticated and listening to trade_updates
        self._stream_refused = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Event | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- life cycle ---------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stream_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/stream"

    def start(self) -> FakeAlpaca:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        app = Starlette(routes=[
            Route("/v2/account", self._account, methods=["GET"]),
            Route("/v2/positions", self._positions, methods=["GET"]),
            Route("/v2/orders", self._orders_list, methods=["GET"]),
            Route("/v2/orders", self._orders_post, methods=["POST"]),
            Route("/v2/orders:by_client_order_id", self._order_by_client_id, methods=["GET"]),
            Route("/v2/orders/{order_id}", self._order_get, methods=["GET"]),
            Route("/v2/orders/{order_id}", self._order_delete, methods=["DELETE"]),
            Route("/v2/orders/{order_id}", self._order_patch, methods=["PATCH"]),
            Route("/v2/account/activities/{activity_type}", self._activities, methods=["GET"]),
            WebSocketRoute("/stream", self._stream),
        ], lifespan=self._lifespan)
        ws_impl = "websockets-sansio"
        try:
            import uvicorn.protocols.websockets.websockets_sansio_impl  # noqa: F401
        except ImportError:  # older uvicorn
            ws_impl = "websockets"
        config = uvicorn.Config(app, log_level="warning", ws=ws_impl, lifespan="on",
                                timeout_graceful_shutdown=2, ws_ping_interval=None)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]},
                                        name="fake-alpaca", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake Alpaca server did not start")
            time.sleep(0.01)
        return self

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> Any:
        self._loop = asyncio.get_running_loop()
        self._release = asyncio.Event()
        yield

    def stop(self) -> None:
        if self._server is None:
            return
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)
        with contextlib.suppress(Exception):
            self._call_in_loop(self._close_clients(1001), timeout=3)
        self._server.should_exit = True
        assert self._thread is not None
        self._thread.join(10)
        if self._thread.is_alive():
            raise RuntimeError("fake Alpaca server did not stop")
        self._server = None

    def __enter__(self) -> FakeAlpaca:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _call_in_loop(self, coro: Any, timeout: float = 5) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def adapter(self, **kwargs: Any) -> AlpacaAdapter:
        options: dict[str, Any] = dict(account=venues.ACCOUNT, api_key=self.api_key,
                                       secret_key=self.secret_key, base_url=self.base_url,
                                       stream_url=self.stream_url, timeout=5.0)
        options.update(kwargs)
        return AlpacaAdapter(**options)

    # -- the venue's state (called by tests and by the handlers) -------------------------------

    def now(self) -> datetime:
        """The venue clock: real time, strictly increasing (so orders and fills are ordered)."""
        with self.lock:
            moment = max(datetime.now(timezone.utc), self._clock + timedelta(microseconds=1))
            self._clock = moment
            return moment

    def new_order(self, *, symbol: str, side: str, qty: Decimal | None, order_type: str = "limit",
                  limit_price: Decimal | None = None, stop_price: Decimal | None = None,
                  time_in_force: str = "day", client_order_id: str | None = None,
                  status: str = "new", at: datetime | None = None, notional: Decimal | None = None,
                  order_class: str = "") -> dict:
        with self.lock:
            at = at or self.now()
            order = {
                "id": str(uuid.uuid4()),
                "client_order_id": client_order_id or str(uuid.uuid4()),
                "created_at": _ts(at), "updated_at": _ts(at), "submitted_at": _ts(at),
                "filled_at": None, "expired_at": None, "canceled_at": None, "failed_at": None,
                "replaced_at": None, "replaced_by": None, "replaces": None,
                "asset_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "asset:" + symbol)),
                "symbol": symbol, "asset_class": asset_class(symbol), "notional": _s(notional),
                "qty": _s(qty), "filled_qty": "0", "filled_avg_price": None,
                "order_class": order_class, "order_type": order_type, "type": order_type, "side": side,
                "position_intent": "buy_to_open" if side == "buy" else "sell_to_close",
                "time_in_force": time_in_force, "limit_price": _s(limit_price),
                "stop_price": _s(stop_price), "status": status, "extended_hours": False,
                "legs": None, "trail_percent": None, "trail_price": None, "hwm": None,
                "subtag": None, "source": None, "expires_at": None,
            }
            self.orders[order["id"]] = order
            return order

    def _nested(self, order: dict) -> dict:
        """The order with its legs inside (``nested=true``: "the order response will nest the result
        to include child orders under the parent order with an array field legs", Alpaca's
        orders.md, Bracket Orders)."""
        legs = self.legs.get(order["id"])
        return {**order, "legs": [self._nested(self.orders[leg]) for leg in legs]} if legs else dict(order)

    def new_group(self, order_class: str, *, symbol: str, side: str, qty: Decimal, order_type: str = "limit",
                  limit_price: Decimal | None = None, take_profit: Decimal | None = None,
                  stop_loss: Decimal | None = None, time_in_force: str = "gtc",
                  client_order_id: str | None = None) -> dict:
        """A bracket, OCO or OTO order as Alpaca creates it (orders.md, "Bracket Orders", "OCO
        Orders", "OTO Orders"): bracket/OTO: the entry working, its exit legs ``held`` until it
        fills; OCO: the take-profit is the parent and working, the stop-loss its ``held`` child.
        Each leg gets a client order id of Alpaca's making. Returns the parent."""
        with self.lock:
            at = self.now()
            exit_side = "sell" if side == "buy" else "buy"
            if order_class == "oco":
                parent = self.new_order(symbol=symbol, side=side, qty=qty, order_type="limit",
                                        limit_price=take_profit, time_in_force=time_in_force,
                                        client_order_id=client_order_id, at=at, order_class="oco")
                legs = [self.new_order(symbol=symbol, side=side, qty=qty, order_type="stop", stop_price=stop_loss,
                                       time_in_force=time_in_force, status="held", at=at, order_class="oco")]
            else:
                parent = self.new_order(symbol=symbol, side=side, qty=qty, order_type=order_type,
                                        limit_price=limit_price, time_in_force=time_in_force,
                                        client_order_id=client_order_id, at=at, order_class=order_class)
                legs = []
                if take_profit is not None:
                    legs.append(self.new_order(symbol=symbol, side=exit_side, qty=qty, order_type="limit",
                                               limit_price=take_profit, time_in_force=time_in_force,
                                               status="held", at=at, order_class=order_class))
                if stop_loss is not None:
                    legs.append(self.new_order(symbol=symbol, side=exit_side, qty=qty, order_type="stop",
                                               stop_price=stop_loss, time_in_force=time_in_force,
                                               status="held", at=at, order_class=order_class))
            self.legs[parent["id"]] = [leg["id"] for leg in legs]
            return parent

    def release_legs(self, parent_id: str) -> None:
        """The entry filled: the take-profit leg starts working (``new``), the stop-loss stays
        ``held`` (alpacahq/alpaca-trade-api-js#87: "one is opened at a time, the other orders are held")."""
        with self.lock:
            for leg_id in self.legs.get(parent_id, []):
                leg = self.orders[leg_id]
                # an OTO has one exit leg: nothing to hold it back once the entry filled ("OTO
                # Orders": "the second order is triggered as soon as the first one fills")
                oto = leg["order_class"] == "oto"
                if (leg["type"] == "limit" or oto) and leg["status"] == "held":
                    self._set_status(leg, "new", self.now())

    def replace_order(self, order_id: str, *, qty: Decimal | None = None, limit_price: Decimal | None = None,
                      stop_price: Decimal | None = None, client_order_id: str | None = None,
                      stream: bool = True) -> dict:
        """PATCH /v2/orders/{id} as Alpaca does it ("Replace an Order": each parameter overrides the
        existing order's, the rest stay the same): a NEW order (its own id, ``replaces`` = the old
        one, a new client order id unless one is given) for ``qty`` (the old order's qty when not
        given, also after partial fills: alpacahq/Alpaca-API#165); the old order becomes
        ``replaced`` (``replaced_by``), keeping its fills. Streams ``replaced`` (the old order,
        old prices: alpacahq/alpaca-trade-api-csharp#149) then ``new`` (the replacement)."""
        with self.lock:
            old = self.orders[order_id]
            at = self.now()
            new = self.new_order(
                symbol=old["symbol"], side=old["side"], qty=qty if qty is not None else Decimal(old["qty"]),
                order_type=old["type"],
                limit_price=limit_price if limit_price is not None else _dec_or_none(old["limit_price"]),
                stop_price=stop_price if stop_price is not None else _dec_or_none(old["stop_price"]),
                time_in_force=old["time_in_force"], client_order_id=client_order_id, at=at,
                order_class=old["order_class"])
            new["replaces"] = old["id"]
            old["replaced_by"] = new["id"]
            self._set_status(old, "replaced", at)
            for legs in self.legs.values():  # a replaced leg's replacement stays in its group
                if old["id"] in legs:
                    legs[legs.index(old["id"])] = new["id"]
            events = [{"event": "replaced", "order": dict(old), "timestamp": _ts(at)},
                      {"event": "new", "order": dict(new), "timestamp": _ts(at)}]
        if stream:
            for event in events:
                self.broadcast(event)
        return new

    def _set_status(self, order: dict, status: str, at: datetime) -> None:
        order["status"] = status
        order["updated_at"] = _ts(at)
        field = {"canceled": "canceled_at", "expired": "expired_at", "rejected": "failed_at",
                 "replaced": "replaced_at", "filled": "filled_at"}.get(status)
        if field:
            order[field] = _ts(at)

    def _execute(self, order: dict, qty: Decimal, price: Decimal, exec_id: str | None,
                 at: datetime) -> dict:
        """One execution: order, activity, position and cash move together; returns the event data."""
        exec_id = exec_id or str(uuid.uuid4())
        filled_before = Decimal(order["filled_qty"])
        filled = filled_before + qty
        avg_before = Decimal(order["filled_avg_price"] or 0)
        order["filled_avg_price"] = str((avg_before * filled_before + price * qty) / filled)
        order["filled_qty"] = str(filled)
        if order["qty"] is not None:
            total = Decimal(order["qty"])
        else:  # a notional order is done once its amount is spent (its qty stays null)
            total = filled if Decimal(order["filled_avg_price"]) * filled >= Decimal(order["notional"]) else filled + 1
        done = filled >= total
        self._set_status(order, "filled" if done else "partially_filled", at)
        side = order["side"]
        fee = self._crypto_fee(order, qty, price, at)
        held = qty - fee if side == "buy" else qty  # a buy's fee is taken from the asset received
        self._move_position(order["symbol"], held if side == "buy" else -qty, price)
        self.cash -= (qty if side == "buy" else -qty) * price
        if side == "sell":
            self.cash -= fee  # a sell's fee is taken from the USD received
            self.cash -= self._regulatory_fee(order, qty, at)
        self.activities.append({
            "id": at.astimezone(NEW_YORK).strftime("%Y%m%d%H%M%S") + f"{at.microsecond // 1000:03d}::{exec_id}",
            "activity_type": "FILL", "transaction_time": _ts(at),
            "type": "fill" if done else "partial_fill", "price": str(price), "qty": str(qty),
            "side": side, "symbol": order["symbol"], "leaves_qty": str(max(total - filled, Decimal(0))),
            "order_id": order["id"], "cum_qty": str(filled), "order_status": order["status"],
        })
        position = self.positions.get(order["symbol"])
        return {
            "event": "fill" if done else "partial_fill", "execution_id": exec_id,
            "order": dict(order), "timestamp": _ts(at), "price": str(price), "qty": str(qty),
            "position_qty": str(position["qty"] if position else Decimal(0)),
        }

    def _crypto_fee(self, order: dict, qty: Decimal, price: Decimal, at: datetime) -> Decimal:
        """Alpaca's crypto fee on one execution (alpaca-docs crypto-trading.md, "Crypto Fees"):
        charged on what the account receives (buying BTC/USD: in BTC; selling: in USD), taken
        at once, posted as a ``CFEE`` activity only at the end of the day (``post_crypto_fees``).
        ``crypto_fee_rate``: tier 1, 25 bps. Zero for anything but crypto."""
        if order.get("asset_class") != "crypto" or not self.crypto_fee_rate:
            return Decimal(0)
        buy = order["side"] == "buy"
        fee = (qty * self.crypto_fee_rate if buy else qty * price * self.crypto_fee_rate).quantize(Decimal("1e-9"))
        key = (order["symbol"], at.astimezone(timezone.utc).date().isoformat(), buy)
        pending = self.unposted_fees.setdefault(key, [Decimal(0), Decimal(0), Decimal(0)])
        pending[0] += fee
        pending[1] += qty * price
        pending[2] += qty
        return fee

    def _regulatory_fee(self, order: dict, qty: Decimal, at: datetime) -> Decimal:
        """The TAF of one equity sale, rounded up to the cent ("We round up total fees based on the
        currency's precision"), deducted at once and posted at the end of the day."""
        if order.get("asset_class") != "us_equity" or not self.taf_per_share:
            return Decimal(0)
        fee = (qty * self.taf_per_share).quantize(Decimal("0.01"), rounding="ROUND_UP")
        key = (order["symbol"], at.astimezone(NEW_YORK).date().isoformat())
        self.unposted_reg_fees[key] = self.unposted_reg_fees.get(key, Decimal(0)) + fee
        return fee

    def post_regulatory_fees(self) -> list[dict]:
        """End of day: each accrued regulatory fee becomes one ``FEE`` activity (a non-trade
        activity: ``date``, ``net_amount`` < 0 in USD, ``description``, ``symbol``)."""
        posted = []
        with self.lock:
            for (symbol, day), fee in sorted(self.unposted_reg_fees.items()):
                activity = {
                    "id": day.replace("-", "") + "000000000::" + str(uuid.uuid4()), "activity_type": "FEE",
                    "activity_sub_type": "TAF", "date": day, "net_amount": str(-fee),
                    "description": "FINRA TAF fee", "symbol": symbol, "qty": None, "per_share_amount": None,
                    "status": "executed",
                }
                self.reg_fee_activities.append(activity)
                posted.append(activity)
            self.unposted_reg_fees.clear()
        return posted

    def post_crypto_fees(self, day: str | None = None) -> list[dict]:
        """End of day: every fee taken since the last posting becomes one ``CFEE`` activity per pair
        and day, shaped like the docs' example (``symbol`` ``ETHUSD``, ``qty`` the fee in the asset
        as a negative number, ``net_amount`` 0; a fee in USD is ``net_amount`` < 0 with ``qty`` 0)."""
        posted = []
        with self.lock:
            for (symbol, fee_day, buy), (fee, notional, qty) in sorted(self.unposted_fees.items()):
                if day is not None and fee_day != day:
                    continue  # that day is not over yet
                price = (notional / qty).quantize(Decimal("1e-9")) if qty else Decimal(0)
                activity = {
                    "id": fee_day.replace("-", "") + "000000000::" + str(uuid.uuid4()), "activity_type": "CFEE",
                    "date": fee_day, "net_amount": "0" if buy else str(-fee),
                    "description": "Coin Pair Transaction Fee (Non USD)" if buy else "Coin Pair Transaction Fee (USD)",
                    "symbol": legacy_symbol(symbol), "qty": str(-fee) if buy else "0", "price": str(price),
                    "status": "executed",
                }
                self.fee_activities.append(activity)
                posted.append(activity)
            for key in [k for k in self.unposted_fees if day is None or k[1] == day]:
                del self.unposted_fees[key]
        return posted

    def _move_position(self, symbol: str, delta: Decimal, price: Decimal) -> None:
        position = self.positions.get(symbol)
        qty = position["qty"] if position else Decimal(0)
        avg = position["avg"] if position else price
        new = qty + delta
        if new == 0:
            self.positions.pop(symbol, None)
            return
        if qty == 0 or (qty > 0) != (new > 0):
            avg = price  # opened or flipped
        elif abs(new) > abs(qty):
            avg = (avg * abs(qty) + price * abs(delta)) / abs(new)
        self.positions[symbol] = {"qty": new, "avg": avg}

    # test-side actions that the venue would stream
    def fill(self, order_id: str, qty: Decimal | str, price: Decimal | str, exec_id: str | None = None,
             at: datetime | None = None) -> dict:
        """One execution, streamed. ``at``: its time (default the venue clock): crypto trades at any
        hour of any day ("Trade all day, seven days a week", Alpaca's Crypto Spot Trading)."""
        with self.lock:
            moment = at if at is not None else self.now()
            event = self._execute(self.orders[order_id], Decimal(qty), Decimal(price), exec_id, moment)
        self.broadcast(event)
        return event

    def set_status(self, order_id: str, status: str, *, event: str | None = None) -> dict:
        """Move an order to any of Alpaca's statuses and stream the trade update that says so
        (``event``: default the status itself, e.g. ``done_for_day``, ``pending_cancel``,
        ``calculated``, ``stopped``, ``suspended``). ``order_cancel_rejected`` /
        ``order_replace_rejected`` leave the order as it is (pass ``status=None``-like: the
        order's own status) - "Sent when the order cancel/replace has been rejected"."""
        with self.lock:
            order = self.orders[order_id]
            at = self.now()
            if status != order["status"]:
                self._set_status(order, status, at)
            data = {"event": event or status, "order": dict(order), "timestamp": _ts(at)}
        self.broadcast(data)
        return data

    def _start_replace(self, order_id: str, client_order_id: str | None, changes: dict) -> dict:
        """The first step of a replace (``replace_in_two_steps``): the replacement ``pending_new``
        (streamed as ``accepted``), the old order ``pending_replace`` (streamed)."""
        with self.lock:
            old = self.orders[order_id]
            at = self.now()
            new = self.new_order(
                symbol=old["symbol"], side=old["side"], qty=changes.get("qty", _dec_or_none(old["qty"])),
                order_type=old["type"], limit_price=changes.get("limit_price", _dec_or_none(old["limit_price"])),
                stop_price=changes.get("stop_price", _dec_or_none(old["stop_price"])),
                time_in_force=old["time_in_force"], client_order_id=client_order_id, at=at,
                order_class=old["order_class"], status="pending_new")
            new["replaces"] = old["id"]
            self._set_status(old, "pending_replace", at)
            # "accepted: Sent when an order recieved and accepted by Alpaca" (the replacement, not
            # yet routed); "pending_replace: Sent when the order is awaiting replacement"
            events = [{"event": "accepted", "order": {**new, "status": "accepted"}, "timestamp": _ts(at)},
                      {"event": "pending_replace", "order": dict(old), "timestamp": _ts(at)}]
        for event in events:
            self.broadcast(event)
        return dict(new)

    def _replacement_of(self, order_id: str) -> dict:
        return next(o for o in self.orders.values() if o["replaces"] == order_id and o["status"] == "pending_new")

    def complete_replace(self, order_id: str) -> dict:
        """The second step of a replace that worked: ``replaced`` (old) then ``new`` (replacement)."""
        with self.lock:
            old = self.orders[order_id]
            new = self._replacement_of(order_id)
            at = self.now()
            old["replaced_by"] = new["id"]
            self._set_status(old, "replaced", at)
            self._set_status(new, "new", at)
            events = [{"event": "replaced", "order": dict(old), "timestamp": _ts(at)},
                      {"event": "new", "order": dict(new), "timestamp": _ts(at)}]
        for event in events:
            self.broadcast(event)
        return new

    def replace_lost_to_a_fill(self, order_id: str, price: Decimal | str, *, exec_id: str | None = None) -> dict:
        """The documented race of a replace ("Replace Order by ID": "A success return code from a
        replaced order does NOT guarantee the existing open order has been replaced. If the
        existing open order is filled before the replacing (new) order reaches the execution
        venue, the replacing (new) order is rejected"): the old order (``pending_replace``) fills
        its remainder, its replacement is rejected. Streams the fill then the rejection; no
        ``replaced``. Returns the rejected replacement."""
        with self.lock:
            old = self.orders[order_id]
            new = self._replacement_of(order_id)
            remainder = Decimal(old["qty"]) - Decimal(old["filled_qty"])
            fill = self._execute(old, remainder, Decimal(price), exec_id, self.now())
            self._set_status(new, "rejected", self.now())
            rejected = {"event": "rejected", "order": dict(new), "timestamp": new["updated_at"]}
        self.broadcast(fill)
        self.broadcast(rejected)
        return new
    def finish(self, order_id: str, status: str) -> dict:
        """Cancel, expire or reject an order at the venue (``canceled``, ``expired``, ``rejected``)."""
        with self.lock:
            order = self.orders[order_id]
            at = self.now()
            self._set_status(order, status, at)
            event = {"event": status, "order": dict(order), "timestamp": _ts(at)}
        self.broadcast(event)
        return event

    def broadcast(self, data: dict) -> None:
        """Send one trade update to every listening connection (lost if none listens)."""
        if self._loop is not None:
            self._call_in_loop(self._send_all({"stream": "trade_updates", "data": data}))

    async def _send_all(self, message: dict) -> None:
        frame = json.dumps(message).encode()
        for ws in list(self._clients):
            try:
                await ws.send_bytes(frame)
            except Exception:  # noqa: BLE001 - a connection going away loses the event
                self._clients.discard(ws)

    async def _close_clients(self, code: int) -> None:
        for ws in list(self._clients):
            self._clients.discard(ws)
            with contextlib.suppress(Exception):
                await ws.close(code=code)

    @property
    def listeners(self) -> int:
        return len(self._clients)

    def wait_listeners(self, count: int = 1, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.listeners < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"fake Alpaca: {self.listeners} stream listeners, expected {count}")
            time.sleep(0.01)

    @contextlib.contextmanager
    def stream_down(self) -> Iterator[None]:
        """Drop every websocket connection and refuse new ones until the block ends."""
        self._stream_refused = True
        try:
            self._call_in_loop(self._close_clients(1011))
            yield
        finally:
            self._stream_refused = False

    def fail(self, query: str, mode: str | None = None) -> None:
        """Make one query fail from now on: "positions", "balances" (HTTP 500), "orders" (a
        truncated page), "fills" (HTTP 500 on a next page; a truncated first page). ``mode``
        ("500" or "truncated") overrides."""
        if query not in ("positions", "orders", "fills", "balances", "fees"):
            raise ValueError(f"unknown query {query!r}")
        default = {"positions": "500", "balances": "500", "orders": "truncated", "fills": "pages",
                   "fees": "500"}[query]
        self.failing[query] = mode or default

    def hang(self, path: str) -> None:
        """Requests to ``path`` (after /v2, e.g. "/positions") never answer (until stop)."""
        self.hanging.add(path)

    def refuse_next(self, method: str, path: str, status: int, times: int = 1) -> None:
        """The next ``times`` requests to ``method path`` get ``status`` (e.g. 429) unprocessed."""
        self._refuse_next.setdefault((method, path), []).extend([status] * times)

    def lose_next_answer(self, method: str, path: str, status: int = 504) -> None:
        """The next request to ``method path`` takes effect, but its answer is lost: ``status``
        instead (what a gateway timeout looks like to the client). POST /orders only."""
        self._lose_next.setdefault((method, path), []).append(status)

    def before_next(self, method: str, path: str, move: Any) -> None:
        """The venue moves (``move()`` under the lock, returning the trade updates it streams)
        just before the next request to ``method path`` is answered: what happens between two
        requests of a client."""
        self._before_next.setdefault((method, path), []).append(move)

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p, _ in self.requests if m == method and p == path)

    # -- REST handlers ------------------------------------------------------------------------

    async def _enter(self, request: Request, query: str | None = None) -> Response | None:
        """Auth, request log, hang and failure injection shared by every endpoint."""
        path = request.url.path[len("/v2"):]
        self.requests.append((request.method, path, dict(request.query_params)))
        if (request.headers.get("APCA-API-KEY-ID") != self.api_key
                or request.headers.get("APCA-API-SECRET-KEY") != self.secret_key):
            return _error(401, 40110000, "request is not authorized")
        moves = self._before_next.get((request.method, path))
        if moves:
            with self.lock:
                events = moves.pop(0)()
            for event in events:  # streamed as they happen, before this request is answered
                await self._send_all({"stream": "trade_updates", "data": event})
        refused = self._refuse_next.get((request.method, path))
        if refused:
            status = refused.pop(0)
            return _error(status, status * 100000, "too many requests" if status == 429 else "refused")
        if path in self.hanging:
            assert self._release is not None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._release.wait(), 60)
            return _error(504, 50400000, "gateway timeout")
        if query is not None and self.failing.get(query) == "500":
            return _error(500, 50010000, "internal server error")
        return None

    def _page(self, query: str, data: list, *, has_more: bool, next_page: bool) -> Response:
        mode = self.failing.get(query)
        if mode == "pages":
            if next_page:
                return _error(500, 50010000, "internal server error")
            if not has_more:
                mode = "truncated"
        if mode == "truncated":
            body = json.dumps(data)
            return Response(body[: max(1, len(body) // 2)], media_type="application/json")
        return _json(data)

    async def _account(self, request: Request) -> Response:
        if (early := await self._enter(request, "balances")) is not None:
            return early
        with self.lock:
            cash = str(self.cash)
            equity = self.cash + sum(p["qty"] * p["avg"] for p in self.positions.values())
            return _json({
                "id": self.account_id, "account_number": "PA3FAKE00001", "status": "ACTIVE",
                "crypto_status": "ACTIVE", "currency": "USD", "cash": cash,
                "buying_power": str(2 * self.cash), "regt_buying_power": str(2 * self.cash),
                "daytrading_buying_power": "0", "non_marginable_buying_power": cash,
                "portfolio_value": str(equity), "equity": str(equity), "last_equity": str(equity),
                "long_market_value": "0", "short_market_value": "0", "initial_margin": "0",
                "maintenance_margin": "0", "last_maintenance_margin": "0", "sma": "0",
                "daytrade_count": 0, "multiplier": "2", "pattern_day_trader": False,
                "trading_blocked": False, "transfers_blocked": False, "account_blocked": False,
                "trade_suspended_by_user": False, "shorting_enabled": True,
                "created_at": "2024-01-02T14:30:00.000000Z", "accrued_fees": "0",
                "pending_transfer_in": "0",
            })

    async def _positions(self, request: Request) -> Response:
        if (early := await self._enter(request, "positions")) is not None:
            return early
        with self.lock:
            rows = []
            for symbol, p in sorted(self.positions.items()):
                qty, avg = p["qty"], p["avg"]
                cost = qty * avg
                crypto = asset_class(symbol) == "crypto"
                rows.append({
                    "asset_id": str(uuid.uuid5(uuid.NAMESPACE_URL, "asset:" + symbol)),
                    "symbol": legacy_symbol(symbol) if crypto else symbol,
                    "exchange": "CRYPTO" if crypto else "NASDAQ", "asset_class": asset_class(symbol),
                    "asset_marginable": True, "avg_entry_price": str(avg), "qty": str(qty),
                    "qty_available": str(qty), "side": "long" if qty > 0 else "short",
                    "market_value": str(cost), "cost_basis": str(cost), "unrealized_pl": "0",
                    "unrealized_plpc": "0", "unrealized_intraday_pl": "0",
                    "unrealized_intraday_plpc": "0", "current_price": str(avg),
                    "lastday_price": str(avg), "change_today": "0",
                })
            return _json(rows)

    async def _orders_list(self, request: Request) -> Response:
        if (early := await self._enter(request, "orders")) is not None:
            return early
        q = request.query_params
        status = q.get("status", "open")
        if status not in ("open", "closed", "all"):
            return _error(422, 40010000, f"invalid status {status!r}")
        try:
            limit = min(int(q.get("limit", "50")), 500)
            after = _parse_ts(q["after"]) if q.get("after") else None
            until = _parse_ts(q["until"]) if q.get("until") else None
        except ValueError as e:
            return _error(422, 40010000, f"invalid query: {e}")
        direction = q.get("direction", "desc")
        nested = q.get("nested", "false").lower() == "true"
        with self.lock:
            leg_ids = {leg for legs in self.legs.values() for leg in legs}
            rows = []
            for order in self.orders.values():
                closed = order["status"] in NOT_LISTED_OPEN
                if (status == "open" and closed) or (status == "closed" and not closed):
                    continue
                if nested and order["id"] in leg_ids:
                    continue  # listed inside its parent
                if nested:
                    order = self._nested(order)
                at = _parse_ts(order["submitted_at"])
                if (after is not None and at <= after) or (until is not None and at >= until):
                    continue
                rows.append(dict(order))
        rows.sort(key=lambda o: o["submitted_at"], reverse=(direction != "asc"))
        page = rows[:limit]
        return self._page("orders", page, has_more=len(rows) > limit, next_page=False)

    async def _order_get(self, request: Request) -> Response:
        if (early := await self._enter(request, "orders")) is not None:
            return early
        if "orders" in self.failing:
            return _error(500, 50010000, "internal server error")
        with self.lock:
            order = self.orders.get(request.path_params["order_id"])
            if order is None:
                return _error(404, 40410000, f"order not found for {request.path_params['order_id']}")
            nested = request.query_params.get("nested", "false").lower() == "true"
            return _json(self._nested(order) if nested else order)

    async def _order_by_client_id(self, request: Request) -> Response:
        if (early := await self._enter(request, "orders")) is not None:
            return early
        if "orders" in self.failing:
            return _error(500, 50010000, "internal server error")
        cid = request.query_params.get("client_order_id", "")
        with self.lock:
            for order in self.orders.values():
                if order["client_order_id"] == cid:
                    return _json(order)
        return _error(404, 40410000, f"order not found for {cid}")

    async def _orders_post(self, request: Request) -> Response:
        if (early := await self._enter(request)) is not None:
            return early
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, 40010000, "request body format is invalid")
        symbol, side, kind = body.get("symbol"), body.get("side"), body.get("type")
        tif = body.get("time_in_force")
        if not symbol:
            return _error(422, 40010000, "symbol is required")
        if side not in ("buy", "sell"):
            return _error(422, 40010000, "invalid side")
        if kind not in ("market", "limit", "stop", "stop_limit", "trailing_stop"):
            return _error(422, 40010000, "invalid order type")
        if tif not in ("day", "gtc", "opg", "cls", "ioc", "fok"):
            return _error(422, 40010000, "invalid time_in_force")
        try:
            qty = Decimal(str(body["qty"])) if body.get("qty") is not None else None
            notional = Decimal(str(body["notional"])) if body.get("notional") is not None else None
            limit = Decimal(str(body["limit_price"])) if body.get("limit_price") is not None else None
            stop = Decimal(str(body["stop_price"])) if body.get("stop_price") is not None else None
        except ArithmeticError:
            return _error(422, 40010000, "qty, notional and prices must be numbers")
        # "qty / notional: ... Can take up to 9 decimal points"; one of the two, not both
        # (alpacahq/alpaca-docs content/trading/fractional-trading.md)
        if (qty is None) == (notional is None):
            return _error(422, 40010000, "qty or notional is required (not both)")
        amount = qty if qty is not None else notional
        assert amount is not None
        if amount <= 0:
            return _error(422, 40010000, "qty must be > 0")
        if -amount.as_tuple().exponent > 9:  # type: ignore[operator]
            return _error(422, 40010000, "qty and notional can have at most 9 decimal places")
        # crypto: "Crypto trading: gtc, ioc" (time in force, "Replace Order by ID"); market, limit
        # and stop_limit orders ("Crypto Spot Trading", Supported Orders)
        if asset_class(symbol) == "crypto" and tif not in ("gtc", "ioc"):
            return _error(422, 40010001, f"invalid crypto time_in_force {tif}")
        if asset_class(symbol) == "crypto" and kind not in ("market", "limit", "stop_limit"):
            return _error(422, 40010001, f"invalid crypto order type {kind}")
        if notional is not None and kind != "market":
            return _error(422, 40010000, "notional orders must be market orders")
        if kind in ("limit", "stop_limit") and limit is None:
            return _error(422, 40010000, "limit_price is required for limit orders")
        if kind in ("stop", "stop_limit") and stop is None:
            return _error(422, 40010000, "stop_price is required for stop orders")
        cid = body.get("client_order_id")
        if cid is not None and len(str(cid)) > 128:
            return _error(422, 40010000, "client_order_id must be no more than 128 characters")
        with self.lock:
            if cid is not None and any(o["client_order_id"] == cid for o in self.orders.values()):
                return _error(422, 40010001, "client_order_id must be unique")
            order = self.new_order(symbol=symbol, side=side, qty=qty, order_type=kind,
                                   limit_price=limit, stop_price=stop, time_in_force=tif,
                                   client_order_id=cid, status="accepted", notional=notional)
            accepted = dict(order)
            self._set_status(order, "new", self.now())
            event = {"event": "new", "order": dict(order), "timestamp": order["updated_at"]}
        await self._send_all({"stream": "trade_updates", "data": event})
        lost = self._lose_next.get(("POST", "/orders"))
        if lost:
            status = lost.pop(0)
            return _error(status, status * 100000, "gateway timeout")
        return _json(accepted)

    async def _order_delete(self, request: Request) -> Response:
        if (early := await self._enter(request)) is not None:
            return early
        with self.lock:
            order = self.orders.get(request.path_params["order_id"])
            if order is None:
                return _error(404, 40410000, "order not found")
            if order["status"] in NOT_CANCELABLE:
                return _error(422, 42210000, "order is not cancelable")
            self._set_status(order, "canceled", self.now())
            event = {"event": "canceled", "order": dict(order), "timestamp": order["updated_at"]}
        await self._send_all({"stream": "trade_updates", "data": event})
        return Response(status_code=204)

    async def _order_patch(self, request: Request) -> Response:
        if (early := await self._enter(request)) is not None:
            return early
        try:
            body = json.loads(await request.body())
            changes = {k: Decimal(str(body[k])) for k in ("qty", "limit_price", "stop_price") if body.get(k) is not None}
        except (ValueError, ArithmeticError):
            return _error(400, 40010000, "request body format is invalid")
        with self.lock:
            order = self.orders.get(request.path_params["order_id"])
            if order is None:
                return _error(404, 40410000, "order not found")
            # "Order cannot be replaced when the status is accepted, pending_new, pending_cancel or
            # pending_replace" (Alpaca's "Replace an Order" reference), nor once it is finished
            if order["status"] in CLOSED | {"accepted", "pending_new", "pending_cancel", "pending_replace"}:
                return _error(422, 42210000, "order is not replaceable")
            # "Notional orders cannot be replaced. Any attempt to modify a notional order via this
            # endpoint will be rejected"; qty: "You can only patch full shares for now. Qty of
            # equity fractional orders are not allowed to change" ("Replace Order by ID")
            if order["notional"] is not None:
                return _error(422, 42210000, "notional orders cannot be replaced")
            if "qty" in changes and (changes["qty"] != changes["qty"].to_integral_value()
                                     or Decimal(order["qty"]) != Decimal(order["qty"]).to_integral_value()):
                return _error(422, 42210000, "qty of a fractional order cannot be changed; only full shares")
        if self.replace_in_two_steps:
            new = await asyncio.to_thread(self._start_replace, order["id"], body.get("client_order_id"), changes)
            return _json(new)
        new = await asyncio.to_thread(self.replace_order, order["id"], client_order_id=body.get("client_order_id"),
                                      stream=False, **changes)
        with self.lock:
            old = self.orders[order["id"]]
            events = [{"event": "replaced", "order": dict(old), "timestamp": old["updated_at"]},
                      {"event": "new", "order": dict(new), "timestamp": new["updated_at"]}]
        for event in events:
            await self._send_all({"stream": "trade_updates", "data": event})
        return _json(new)

    async def _activities(self, request: Request) -> Response:
        activity_type = request.path_params["activity_type"]
        query = "fills" if activity_type == "FILL" else "fees"
        if (early := await self._enter(request, query)) is not None:
            return early
        if activity_type not in ("FILL", "CFEE", "FEE"):
            return _json([])  # no other activities happen here
        q = request.query_params
        direction = q.get("direction", "desc")
        try:
            size = int(q.get("page_size", "100"))
            after = _parse_ts(q["after"]) if q.get("after") else None
            until = _parse_ts(q["until"]) if q.get("until") else None
        except ValueError as e:
            return _error(422, 40010000, f"invalid query: {e}")
        if not 1 <= size <= 100:
            return _error(422, 40010000, "page_size must be between 1 and 100")

        def when(a: dict) -> datetime:  # a non-trade activity has a date, not a transaction time
            return _parse_ts(a.get("transaction_time") or a["date"])

        with self.lock:
            source = {"FILL": self.activities, "CFEE": self.fee_activities,
                      "FEE": self.reg_fee_activities}[activity_type]
            rows = [dict(a) for a in source
                    if (after is None or when(a) > after) and (until is None or when(a) < until)]
        rows.sort(key=lambda a: (when(a), a["id"]), reverse=(direction != "asc"))
        token = q.get("page_token")
        if token:
            ids = [a["id"] for a in rows]
            if token not in ids:
                return _error(422, 40010000, "invalid page_token")
            rows = rows[ids.index(token) + 1:]
        page = rows[:size]
        return self._page(query, page, has_more=len(rows) > size, next_page=bool(token))

    # -- the trade-updates websocket ------------------------------------------------------------

    async def _stream(self, ws: WebSocket) -> None:
        if self._stream_refused:
            await ws.close(code=1013)  # before accept: the handshake is refused (HTTP 403)
            return
        await ws.accept()
        try:
            authed = False
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text") or (message.get("bytes") or b"").decode()
                try:
                    msg = json.loads(text)
                except ValueError:
                    await ws.send_bytes(json.dumps({"stream": "error", "data": {"error_message": "invalid syntax"}}).encode())
                    continue
                action = msg.get("action")
                data = msg.get("data") or {}
                if action in ("authenticate", "auth"):
                    key = data.get("key_id") if action == "authenticate" else msg.get("key")
                    secret = data.get("secret_key") if action == "authenticate" else msg.get("secret")
                    authed = key == self.api_key and secret == self.secret_key
                    status = "authorized" if authed else "unauthorized"
                    await ws.send_bytes(json.dumps({"stream": "authorization", "data": {
                        "status": status, "action": "authenticate"}}).encode())
                    if not authed:
                        await ws.close(code=1008)
                        return
                elif action == "listen":
                    if not authed:
                        await ws.send_bytes(json.dumps({"stream": "authorization", "data": {
                            "status": "unauthorized", "action": "listen"}}).encode())
                        continue
                    streams = [s for s in data.get("streams", []) if s == "trade_updates"]
                    if streams:
                        self._clients.add(ws)
                    else:
                        self._clients.discard(ws)
                    await ws.send_bytes(json.dumps({"stream": "listening", "data": {"streams": streams}}).encode())
        except WebSocketDisconnect:
            return
        finally:
            self._clients.discard(ws)


class AlpacaVenue:
    """``VenueControl`` for the reconciliation scenarios, on a running ``FakeAlpaca``."""

    broker = "alpaca"
    venue = "ALPACA"

    def __init__(self, fake: FakeAlpaca) -> None:
        self.fake = fake
        self._adapters: list[AlpacaAdapter] = []

    def add_order(self, *, client_order_id: str | None, symbol: str, side: str, qty: Decimal,
                  order_type: str = "limit", limit_price: Decimal | None = Decimal("100"),
                  status: str = "open", fills: Any = ()) -> str:
        fake = self.fake
        with fake.lock:
            order = fake.new_order(symbol=symbol, side=side, qty=Decimal(qty), order_type=order_type,
                                   limit_price=limit_price if order_type != "market" else None,
                                   client_order_id=client_order_id)
            for exec_id, fill_qty, price in fills:
                fake._execute(order, Decimal(fill_qty), Decimal(price), exec_id, fake.now())
            alpaca_status = OUR_STATUS.get(status, status)
            if alpaca_status in ("new", "partially_filled", "filled"):
                # working or filled: the fills decide (an "open" order with fills is partially filled)
                if alpaca_status != "new" and not fills:
                    raise ValueError(f"status {status!r} needs fills")
            else:  # finished (a partial fill then cancel keeps its fills) or Alpaca's own status
                fake._set_status(order, alpaca_status, fake.now())
            return order["id"]

    def set_position(self, symbol: str, qty: Decimal, avg_cost: Decimal | None = None) -> None:
        with self.fake.lock:
            if Decimal(qty) == 0:
                self.fake.positions.pop(symbol, None)
            else:
                self.fake.positions[symbol] = {"qty": Decimal(qty), "avg": Decimal(avg_cost or 0)}

    def set_cash(self, amount: Decimal, currency: str = "USD") -> None:
        if currency != "USD":
            raise ValueError("fake Alpaca accounts are in USD")
        with self.fake.lock:
            self.fake.cash = Decimal(amount)

    def fail(self, query: str) -> None:
        self.fake.fail(query)

    def adapter(self) -> AlpacaAdapter:
        adapter = self.fake.adapter()
        self._adapters.append(adapter)
        return adapter

    def close(self) -> None:
        for adapter in self._adapters:
            with contextlib.suppress(Exception):
                adapter.close()


@contextlib.contextmanager
def alpaca_venue() -> Iterator[AlpacaVenue]:
    """A fake Alpaca on 127.0.0.1 (random port) as a ``VenueControl``; stopped on exit."""
    with FakeAlpaca() as fake:
        control = AlpacaVenue(fake)
        try:
            yield control
        finally:
            control.close()
