"""A local fake of Coinbase Advanced Trade's REST API (the part a broker adapter uses), on 127.0.0.1, port 0.

Written from Coinbase's Advanced Trade API reference (docs.cdp.coinbase.com, api-reference/
advanced-trade-api/rest-api: public ``list-public-products``, ``get-server-time``; accounts
``list-accounts``; orders ``create-order``, ``cancel-orders``, ``list-orders``, ``get-order``,
``list-fills``; fees ``get-transaction-summary``; the "API key authentication" guide), not from what
an adapter expects. The real ``ccxt`` client (its ``coinbase`` class, which speaks this API for
trading) talks to it with ``urls['api']['rest']`` pointed here. What it implements:

* Paths below ``/api/v3/brokerage``; JSON bodies; amounts are decimal strings; times RFC 3339 with
  microseconds (``2023-01-16T23:37:23.947030Z``). Sides ``BUY``/``SELL``.
* Public, GET: ``/time``, ``/market/products`` (``product_type`` SPOT by default; FUTURE: none here):
  ``{"products": [{product_id "BTC-USD", base_currency_id, quote_currency_id, base_increment,
  quote_increment, price_increment, base_min_size, quote_min_size, status "online",
  product_type "SPOT", trading_disabled ...}], "num_products": n}``.
* Private: authenticated by a legacy HMAC key (headers ``CB-ACCESS-KEY``, ``CB-ACCESS-TIMESTAMP``
  in unix seconds, ``CB-ACCESS-SIGN`` = hex HMAC-SHA256(secret, timestamp + method + request path
  + body), checked, the timestamp within 30 s) or a CDP key's JWT (``Authorization: Bearer``): the
  JWT's signature is accepted unchecked, its ``sub`` must be the key's name. A wrong key or
  signature is HTTP 401 ``{"error": "unauthorized", ...}``.
* ``GET /accounts`` (``limit`` default 49, max 250; ``cursor``): ``{"accounts": [{uuid, name,
  currency, available_balance {value, currency}, hold {value, currency}, type
  ACCOUNT_TYPE_CRYPTO|ACCOUNT_TYPE_FIAT, active, ready ...}], "has_next", "cursor", "size"}``;
  ``available_balance`` excludes what open orders hold.
* ``GET /transaction_summary``: the fee tier, ``taker_fee_rate``/``maker_fee_rate`` (Advanced 1:
  0.6 % / 0.4 %). Fees are charged in the quote currency: a buy pays size x price + fee, a sell
  receives size x price - fee; each fill's ``commission``.
* ``POST /orders``: ``client_order_id``, ``product_id``, ``side``, ``order_configuration`` one of
  ``market_market_ioc`` (``base_size`` or, buying, ``quote_size``), ``limit_limit_gtc``
  (``base_size``, ``limit_price``, ``post_only``), ``sor_limit_ioc``, ``limit_limit_fok``. The
  answer is HTTP 200 either way: ``{"success": true, "success_response": {order_id, product_id,
  side, client_order_id}, "order_configuration": ...}`` (no status) or ``{"success": false,
  "error_response": {error, message, error_details, preview_failure_reason,
  new_order_failure_reason}, ...}`` with the documented reasons: ``INSUFFICIENT_FUND``,
  ``INVALID_SIZE_PRECISION`` (base_size off ``base_increment``), ``INVALID_PRICE_PRECISION``
  (limit_price off ``price_increment``), ``INVALID_PRODUCT_ID``, ``UNSUPPORTED_ORDER_CONFIGURATION``
  and ``PREVIEW_INVALID_BASE_SIZE_TOO_SMALL`` / ``PREVIEW_INVALID_QUOTE_SIZE_TOO_SMALL`` (below
  ``base_min_size`` / ``quote_min_size``). A limit order holds its cost plus the taker fee (a sell
  its size) while it works; market orders fill at once at the product's price (taker); limit
  orders rest until the test fills them (``fill``), as a counterparty would.
* ``GET /orders/historical/{order_id}``: ``{"order": {...}}``; an id it never issued: HTTP 404
  ``{"error": "NOT_FOUND", "error_details": "order with this orderID was not found", "message":
  ...}``. An order: ``order_id``, ``client_order_id``, ``product_id``, ``side``, ``status`` (OPEN,
  FILLED, CANCELLED, EXPIRED, FAILED), ``time_in_force``, ``created_time``, ``order_type``,
  ``order_configuration``, ``filled_size``, ``filled_value``, ``average_filled_price``,
  ``number_of_fills``, ``total_fees``, ``completion_percentage``, ``last_fill_time``,
  ``outstanding_hold_amount``, ``reject_reason``, ``cancel_message``, ``product_type`` SPOT ...
* ``GET /orders/historical/batch``: filters ``order_ids``, ``product_ids`` (or the older
  ``product_id``), ``order_status`` (repeatable), ``start_date``/``end_date`` (the creation
  time), ``limit`` (at most 1000), ``cursor``; the newest first; ``{"orders", "sequence",
  "has_next", "cursor"}``.
* ``GET /orders/historical/fills``: filters ``order_ids``, ``trade_ids``, ``product_ids`` (or
  ``product_id``), ``start_sequence_timestamp``/``end_sequence_timestamp``, ``limit``, ``cursor``;
  the newest first; ``{"fills": [{entry_id, trade_id, order_id, trade_time, trade_type FILL,
  price, size, commission, product_id, sequence_timestamp, liquidity_indicator MAKER|TAKER,
  size_in_quote false, user_id, side}], "cursor"}`` (an empty cursor: the last page).
* ``POST /orders/batch_cancel`` ``{"order_ids": [...]}`` -> ``{"results": [{success,
  failure_reason, order_id}]}``; per order ``UNKNOWN_CANCEL_ORDER`` (never issued),
  ``ORDER_IS_FULLY_FILLED``, ``DUPLICATE_CANCEL_REQUEST`` (already cancelled) or
  ``UNKNOWN_CANCEL_FAILURE_REASON`` on success.

Not settled by the documents consulted, chosen here: a ``client_order_id`` already used answers
success with the order first placed under it (the order is not created twice); an expired or
cancelled order's remaining hold is released at once.

Test controls: ``fill``, ``expire``, ``cancel_at_venue``, ``set_price``, ``place`` (an order
entered elsewhere), ``stall`` (``RestFake``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from tests.support.fake_rest import RestFake

ROOT = "/api/v3/brokerage"
TAKER, MAKER = Decimal("0.006"), Decimal("0.004")  # Advanced 1 (the lowest tier)
MAX_ORDERS_PAGE = 1000
DEFAULT_ACCOUNTS_PAGE, MAX_ACCOUNTS_PAGE = 49, 250


class CoinbaseError(Exception):
    """An HTTP error answer: ``status`` and the ``{"error", "error_details", "message"}`` body."""

    def __init__(self, status: int, error: str, message: str):
        super().__init__(message)
        self.status, self.error, self.message = status, error, message

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_details": self.message, "message": self.message}


class OrderRefused(Exception):
    """A create-order refusal (answered 200 with ``success: false``)."""

    def __init__(self, reason: str, message: str, preview: str | None = None):
        super().__init__(message)
        self.reason, self.message, self.preview = reason, message, preview


@dataclass
class Product:
    product_id: str  # BTC-USD
    base: str
    quote: str
    base_increment: str = "0.00000001"
    price_increment: str = "0.01"
    base_min_size: str = "0.00000001"
    quote_min_size: str = "1"
    price: Decimal = Decimal("40000")  # the last price: where market orders fill

    def as_json(self) -> dict[str, Any]:
        return {"product_id": self.product_id, "price": format(self.price, "f"), "base_increment": self.base_increment,
                "quote_increment": self.price_increment, "price_increment": self.price_increment,
                "quote_min_size": self.quote_min_size, "quote_max_size": "150000000",
                "base_min_size": self.base_min_size, "base_max_size": "3400", "base_name": self.base,
                "quote_name": self.quote, "status": "online", "cancel_only": False, "limit_only": False,
                "post_only": False, "trading_disabled": False, "is_disabled": False, "auction_mode": False,
                "product_type": "SPOT", "base_currency_id": self.base, "quote_currency_id": self.quote,
                "base_display_symbol": self.base, "quote_display_symbol": self.quote, "view_only": False,
                "display_name": self.product_id, "product_venue": "CBE", "alias": "", "alias_to": []}


PRODUCTS = [Product("BTC-USD", "BTC", "USD"),
            Product("ETH-USD", "ETH", "USD", base_increment="0.00000001", price=Decimal("3000"))]
CONFIGURATIONS = {"market_market_ioc": ("MARKET", "IMMEDIATE_OR_CANCEL"),
                  "limit_limit_gtc": ("LIMIT", "GOOD_UNTIL_CANCELLED"),
                  "sor_limit_ioc": ("LIMIT", "IMMEDIATE_OR_CANCEL"),
                  "limit_limit_fok": ("LIMIT", "FILL_OR_KILL")}


def _rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str) -> float:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise CoinbaseError(400, "INVALID_ARGUMENT", f"invalid time {text!r}") from None


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"


@dataclass
class Order:
    order_id: str
    client_order_id: str
    product: Product
    side: str  # BUY / SELL
    configuration: str  # the order_configuration key
    config: dict[str, Any]
    size: Decimal
    limit_price: Decimal | None
    created: float
    status: str = "OPEN"
    filled_size: Decimal = Decimal(0)
    filled_value: Decimal = Decimal(0)
    total_fees: Decimal = Decimal(0)
    hold: Decimal = Decimal(0)  # what the order still holds (quote on a buy, base on a sell)
    fills: int = 0
    last_fill: float | None = None
    cancel_message: str = ""

    def as_json(self) -> dict[str, Any]:
        order_type, tif = CONFIGURATIONS[self.configuration]
        average = self.filled_value / self.filled_size if self.filled_size else Decimal(0)
        return {
            "order_id": self.order_id, "product_id": self.product.product_id, "user_id": "fake-user-1",
            "order_configuration": {self.configuration: dict(self.config)}, "side": self.side,
            "client_order_id": self.client_order_id, "status": self.status, "time_in_force": tif,
            "created_time": _rfc3339(self.created),
            "completion_percentage": _plain(self.filled_size * 100 / self.size),
            "filled_size": _plain(self.filled_size), "average_filled_price": _plain(average), "fee": "",
            "number_of_fills": str(self.fills), "filled_value": _plain(self.filled_value),
            "pending_cancel": False, "size_in_quote": False, "total_fees": _plain(self.total_fees),
            "size_inclusive_of_fees": False,
            "total_value_after_fees": _plain(self.filled_value + (self.total_fees if self.side == "BUY"
                                                                  else -self.total_fees)),
            "trigger_status": "INVALID_ORDER_TYPE", "order_type": order_type,
            "reject_reason": "REJECT_REASON_UNSPECIFIED", "settled": self.status != "OPEN", "product_type": "SPOT",
            "reject_message": "", "cancel_message": self.cancel_message, "order_placement_source": "RETAIL_ADVANCED",
            "outstanding_hold_amount": _plain(self.hold), "is_liquidation": False,
            "last_fill_time": _rfc3339(self.last_fill) if self.last_fill is not None else None,
        }


class FakeCoinbase(RestFake):
    """The fake exchange: state, the HTTP server (``RestFake``) and the test controls."""

    name = "fake-coinbase"

    def __init__(self, *, api_key: str = "fake-coinbase-key", secret: str = "fake-coinbase-secret",
                 balances: dict[str, str] | None = None, products: list[Product] | None = None) -> None:
        super().__init__()
        self.api_key, self.secret = api_key, secret
        self.products = {p.product_id: p for p in (products or [Product(**vars(q)) for q in PRODUCTS])}
        self.balance: dict[str, Decimal] = {k: Decimal(v) for k, v in (balances or {"USD": "100000"}).items()}
        self.account_ids = {c: self._account_id(c) for c in ("USD", "BTC", "ETH")}
        self.orders: dict[str, Order] = {}  # insertion = creation order
        self.fills: list[dict[str, Any]] = []  # insertion = time order
        self.calls: list[tuple[str, str, dict[str, Any]]] = []  # (method, path, parameters or body)
        self._ids = itertools.count(1)
        self._clock = 0.0

    @staticmethod
    def _account_id(currency: str) -> str:
        """A stable uuid per currency account (Coinbase: one account per currency and portfolio)."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"fake-coinbase/{currency}"))

    # ------------------------------------------------------------------ test controls
    def now(self) -> float:
        """Strictly increasing times (two events never share one microsecond)."""
        self._clock = max(self._clock + 0.000001, time.time())
        return self._clock

    def set_price(self, product_id: str, price: str) -> None:
        self.products[product_id].price = Decimal(price)

    def held(self, currency: str) -> Decimal:
        return sum((o.hold for o in self.orders.values() if o.status == "OPEN"
                    and (o.product.quote if o.side == "BUY" else o.product.base) == currency), Decimal(0))

    def place(self, product_id: str, side: str, size: str, price: str | None = None, *,
              client_order_id: str | None = None) -> str:
        """An order entered elsewhere (the website, another program): as POST /orders would."""
        config = ({"limit_limit_gtc": {"base_size": size, "limit_price": price, "post_only": False}} if price
                  else {"market_market_ioc": {"base_size": size}})
        with self.lock:
            answer = self._create_order({"client_order_id": client_order_id or str(uuid.uuid4()),
                                         "product_id": product_id, "side": side.upper(),
                                         "order_configuration": config})
        if not answer["success"]:
            raise ValueError(answer["error_response"]["error"])
        return answer["success_response"]["order_id"]

    def fill(self, order_id: str, size: str, price: str | None = None, *, maker: bool = True) -> str:
        """A counterparty trades ``size`` of a resting order at ``price`` (default: its limit);
        returns the fill's trade_id."""
        with self.lock:
            order = self.orders[order_id]
            if order.status != "OPEN":
                raise ValueError(f"order {order_id} is {order.status}")
            return self._execute(order, Decimal(size), Decimal(price) if price else order.limit_price, maker=maker)

    def expire(self, order_id: str) -> None:
        """The venue ends a working order (an IOC remainder, a GTD order's end time)."""
        self._close(order_id, "EXPIRED", "")

    def cancel_at_venue(self, order_id: str) -> None:
        """Cancelled outside our adapter (the website)."""
        self._close(order_id, "CANCELLED", "User requested cancel")

    # ------------------------------------------------------------------ matching and funds
    def _execute(self, order: Order, size: Decimal, price: Decimal | None, *, maker: bool) -> str:
        p = order.product
        remaining = order.size - order.filled_size
        if size <= 0 or size > remaining or price is None:
            raise ValueError(f"cannot fill {size} of order {order.order_id}: {remaining} remaining")
        value = size * price
        fee = (value * (MAKER if maker else TAKER)).quantize(Decimal("0.0000000001"))
        if order.side == "BUY":
            self._move(p.quote, -(value + fee))
            self._move(p.base, size)
            order.hold -= min(order.hold, value + fee)
        else:
            self._move(p.base, -size)
            self._move(p.quote, value - fee)
            order.hold -= min(order.hold, size)
        order.filled_size += size
        order.filled_value += value
        order.total_fees += fee
        order.fills += 1
        at = self.now()
        order.last_fill = at
        trade_id = str(uuid.uuid4())
        self.fills.append({
            "entry_id": hashlib.sha256(trade_id.encode()).hexdigest(), "trade_id": trade_id,
            "order_id": order.order_id, "trade_time": _rfc3339(at), "trade_type": "FILL", "price": _plain(price),
            "size": _plain(size), "commission": _plain(fee), "product_id": p.product_id,
            "sequence_timestamp": _rfc3339(at), "liquidity_indicator": "MAKER" if maker else "TAKER",
            "size_in_quote": False, "user_id": "fake-user-1", "side": order.side, "retail_portfolio_id": "",
        })
        if order.filled_size == order.size:
            order.status, order.hold = "FILLED", Decimal(0)
        return trade_id

    def _move(self, currency: str, amount: Decimal) -> None:
        self.balance[currency] = self.balance.get(currency, Decimal(0)) + amount

    def _close(self, order_id: str, status: str, message: str) -> None:
        with self.lock:
            order = self.orders[order_id]
            if order.status != "OPEN":
                raise ValueError(f"order {order_id} is {order.status}")
            order.status, order.cancel_message, order.hold = status, message, Decimal(0)

    # ------------------------------------------------------------------ HTTP
    def answer(self, method: str, path: str, query: str, body: str, headers: dict[str, str]) -> tuple[int, Any]:
        params: dict[str, list[str]] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            params.setdefault(key, []).append(value)
        try:
            payload = json.loads(body) if body else {}
        except ValueError:
            return 400, {"error": "INVALID_ARGUMENT", "error_details": "malformed JSON", "message": "malformed JSON"}
        with self.lock:
            self.calls.append((method, path, payload if method == "POST" else params))
            try:
                return 200, self._route(method, path, body, headers, params, payload)
            except CoinbaseError as e:
                return e.status, e.body()

    def _route(self, method: str, path: str, body: str, headers: dict[str, str], params: dict[str, list[str]],
               payload: dict[str, Any]) -> Any:
        if not path.startswith(ROOT + "/"):
            raise CoinbaseError(404, "NOT_FOUND", "Not Found")
        route = path[len(ROOT):]
        public = {("GET", "/time"): self._time, ("GET", "/market/products"): self._products}
        if (method, route) in public:
            return public[(method, route)](params)
        self._authenticate(method, path, body, headers)
        private = {("GET", "/accounts"): self._accounts, ("GET", "/transaction_summary"): self._transaction_summary,
                   ("GET", "/orders/historical/batch"): self._list_orders,
                   ("GET", "/orders/historical/fills"): self._list_fills}
        if (method, route) in private:
            return private[(method, route)](params)
        if (method, route) == ("POST", "/orders"):
            return self._create_order(payload)
        if (method, route) == ("POST", "/orders/batch_cancel"):
            return self._batch_cancel(payload)
        if method == "GET" and route.startswith("/orders/historical/"):
            return self._get_order(route[len("/orders/historical/"):])
        raise CoinbaseError(404, "NOT_FOUND", "Not Found")

    def _authenticate(self, method: str, path: str, body: str, headers: dict[str, str]) -> None:
        header = {k.lower(): v for k, v in headers.items()}
        bearer = header.get("authorization", "")
        if bearer.startswith("Bearer "):  # a CDP key's JWT: its signature is not checked here
            try:
                claims_part = bearer[len("Bearer "):].split(".")[1]
                claims = json.loads(base64.urlsafe_b64decode(claims_part + "=" * (-len(claims_part) % 4)))
            except (IndexError, ValueError):
                raise CoinbaseError(401, "unauthorized", "invalid JWT") from None
            if claims.get("sub") != self.api_key:
                raise CoinbaseError(401, "unauthorized", "unknown API key")
            return
        if header.get("cb-access-key") != self.api_key:
            raise CoinbaseError(401, "unauthorized", "invalid API key")
        stamp = header.get("cb-access-timestamp", "")
        expected = hmac.new(self.secret.encode(), (stamp + method + path + body).encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, header.get("cb-access-sign", "")):
            raise CoinbaseError(401, "unauthorized", "invalid signature")
        if not stamp.isdigit() or abs(int(stamp) - time.time()) > 30:
            raise CoinbaseError(401, "authentication_error", "request timestamp expired")

    # -- public
    def _time(self, params: dict[str, list[str]]) -> dict[str, Any]:
        now = time.time()
        return {"iso": _rfc3339(now), "epochSeconds": str(int(now)), "epochMillis": str(int(now * 1000))}

    def _products(self, params: dict[str, list[str]]) -> dict[str, Any]:
        kind = (params.get("product_type") or ["SPOT"])[0]
        listed = [p.as_json() for p in self.products.values()] if kind in ("SPOT", "UNKNOWN_PRODUCT_TYPE") else []
        return {"products": listed, "num_products": len(listed)}

    # -- private: account data
    def _transaction_summary(self, params: dict[str, list[str]]) -> dict[str, Any]:
        return {"total_volume": 0, "total_fees": 0, "fee_tier": {
            "pricing_tier": "Advanced 1", "usd_from": "0", "usd_to": "1000", "taker_fee_rate": format(TAKER, "f"),
            "maker_fee_rate": format(MAKER, "f"), "aop_from": "", "aop_to": ""},
            "margin_rate": None, "goods_and_services_tax": None, "advanced_trade_only_volume": 0,
            "advanced_trade_only_fees": 0, "coinbase_pro_volume": 0, "coinbase_pro_fees": 0}

    @staticmethod
    def _limit(params: dict[str, list[str]], default: int, largest: int) -> int:
        try:
            limit = int((params.get("limit") or [str(default)])[0])
        except ValueError:
            raise CoinbaseError(400, "INVALID_ARGUMENT", "limit is not a number") from None
        return min(max(limit, 1), largest)

    @staticmethod
    def _page(items: list[Any], params: dict[str, list[str]], limit: int) -> tuple[list[Any], bool, str]:
        """A page after the opaque ``cursor`` (here: the offset of the next item)."""
        cursor = (params.get("cursor") or [""])[0]
        try:
            start = int(cursor) if cursor else 0
        except ValueError:
            raise CoinbaseError(400, "INVALID_ARGUMENT", "invalid cursor") from None
        page = items[start:start + limit]
        more = start + limit < len(items)
        return page, more, str(start + limit) if more else ""

    def _accounts(self, params: dict[str, list[str]]) -> dict[str, Any]:
        accounts = []
        for currency in sorted(set(self.balance) | set(self.account_ids)):
            held = self.held(currency)
            uid = self.account_ids.setdefault(currency, self._account_id(currency))
            accounts.append({
                "uuid": uid, "name": f"{currency} Wallet", "currency": currency,
                "available_balance": {"value": _plain(self.balance.get(currency, Decimal(0)) - held),
                                      "currency": currency},
                "default": True, "active": True, "created_at": "2024-01-04T06:20:06.456Z",
                "updated_at": "2024-01-04T06:20:07.181Z", "deleted_at": None,
                "type": "ACCOUNT_TYPE_FIAT" if currency == "USD" else "ACCOUNT_TYPE_CRYPTO", "ready": True,
                "hold": {"value": _plain(held), "currency": currency}, "retail_portfolio_id": "fake-portfolio-1"})
        page, more, cursor = self._page(accounts, params, self._limit(params, DEFAULT_ACCOUNTS_PAGE, MAX_ACCOUNTS_PAGE))
        return {"accounts": page, "has_next": more, "cursor": cursor, "size": len(page)}

    def _filtered(self, items: list[Any], params: dict[str, list[str]], product_of: Any) -> list[Any]:
        products = set(params.get("product_ids", []) + params.get("product_id", []))
        if products:
            items = [i for i in items if product_of(i) in products]
        ids = set(params.get("order_ids", []) + params.get("order_id", []))
        if ids:
            items = [i for i in items if (i.order_id if isinstance(i, Order) else i["order_id"]) in ids]
        return items

    def _list_orders(self, params: dict[str, list[str]]) -> dict[str, Any]:
        orders = self._filtered(list(self.orders.values()), params, lambda o: o.product.product_id)
        statuses = set(params.get("order_status", []))
        if statuses:
            orders = [o for o in orders if o.status in statuses]
        if params.get("start_date"):
            start = _parse_time(params["start_date"][0])
            orders = [o for o in orders if o.created >= start]
        if params.get("end_date"):
            end = _parse_time(params["end_date"][0])
            orders = [o for o in orders if o.created <= end]
        orders.reverse()  # the newest first
        page, more, cursor = self._page(orders, params, self._limit(params, MAX_ORDERS_PAGE, MAX_ORDERS_PAGE))
        return {"orders": [o.as_json() for o in page], "sequence": "0", "has_next": more, "cursor": cursor}

    def _list_fills(self, params: dict[str, list[str]]) -> dict[str, Any]:
        fills = self._filtered(list(self.fills), params, lambda f: f["product_id"])
        if params.get("trade_ids"):
            fills = [f for f in fills if f["trade_id"] in set(params["trade_ids"])]
        if params.get("start_sequence_timestamp"):
            start = _parse_time(params["start_sequence_timestamp"][0])
            fills = [f for f in fills if _parse_time(f["sequence_timestamp"]) >= start]
        if params.get("end_sequence_timestamp"):
            end = _parse_time(params["end_sequence_timestamp"][0])
            fills = [f for f in fills if _parse_time(f["sequence_timestamp"]) <= end]
        fills.reverse()  # the newest first
        page, _, cursor = self._page(fills, params, self._limit(params, 100, 3000))
        return {"fills": page, "cursor": cursor}

    def _get_order(self, order_id: str) -> dict[str, Any]:
        order = self.orders.get(order_id)
        if order is None:
            raise CoinbaseError(404, "NOT_FOUND", "order with this orderID was not found")
        return {"order": order.as_json()}

    # -- private: trading
    def _create_order(self, payload: dict[str, Any]) -> dict[str, Any]:
        configuration = payload.get("order_configuration")
        try:
            order = self._new_order(payload)
        except OrderRefused as refused:
            return {"success": False, "failure_reason": "UNKNOWN_FAILURE_REASON", "order_id": "",
                    "error_response": {"error": refused.reason, "message": refused.message, "error_details": "",
                                       "preview_failure_reason": refused.preview or "UNKNOWN_PREVIEW_FAILURE_REASON",
                                       "new_order_failure_reason": refused.reason},
                    "order_configuration": configuration}
        return {"success": True, "success_response": {
            "order_id": order.order_id, "product_id": order.product.product_id, "side": order.side,
            "client_order_id": order.client_order_id}, "order_configuration": configuration}

    def _new_order(self, payload: dict[str, Any]) -> Order:
        cid = str(payload.get("client_order_id") or "")
        if not cid:
            raise CoinbaseError(400, "INVALID_ARGUMENT", "client_order_id is required")
        existing = next((o for o in self.orders.values() if o.client_order_id == cid), None)
        if existing is not None:
            return existing  # the order under this id, not a second one
        product = self.products.get(str(payload.get("product_id") or ""))
        if product is None:
            raise OrderRefused("INVALID_PRODUCT_ID", "invalid product_id")
        side = payload.get("side")
        if side not in ("BUY", "SELL"):
            raise OrderRefused("INVALID_SIDE", "invalid side")
        config_all = payload.get("order_configuration")
        if not isinstance(config_all, dict) or len(config_all) != 1 or next(iter(config_all)) not in CONFIGURATIONS:
            raise OrderRefused("UNSUPPORTED_ORDER_CONFIGURATION", "unsupported order configuration")
        name, config = next(iter(config_all.items()))
        market = name == "market_market_ioc"
        price = None if market else self._amount(config.get("limit_price"), "INVALID_PRICE_PRECISION")
        if price is not None and price % Decimal(product.price_increment):
            raise OrderRefused("INVALID_PRICE_PRECISION", "limit price has too many decimals")
        if market and side == "BUY" and config.get("quote_size"):
            quote = self._amount(config["quote_size"], "INVALID_SIZE_PRECISION")
            size = (quote / product.price).quantize(Decimal(product.base_increment))
        else:
            size = self._amount(config.get("base_size"), "INVALID_SIZE_PRECISION")
        if size % Decimal(product.base_increment):
            raise OrderRefused("INVALID_SIZE_PRECISION", "base size has too many decimals")
        if size < Decimal(product.base_min_size):
            raise OrderRefused("INVALID_LIMIT_PRICE", "base size is too small", "PREVIEW_INVALID_BASE_SIZE_TOO_SMALL")
        at = price if price is not None else product.price
        if size * at < Decimal(product.quote_min_size):
            raise OrderRefused("INVALID_LIMIT_PRICE", "quote size is too small", "PREVIEW_INVALID_QUOTE_SIZE_TOO_SMALL")
        # the funds an order may spend, held while it works: a buy its cost and the taker fee
        currency, need = ((product.quote, size * at * (1 + TAKER)) if side == "BUY" else (product.base, size))
        if self.balance.get(currency, Decimal(0)) - self.held(currency) < need:
            raise OrderRefused("INSUFFICIENT_FUND", "Insufficient balance in source account",
                               "PREVIEW_INSUFFICIENT_FUND")
        order = Order(str(uuid.UUID(int=(0x5EED << 64) + next(self._ids))), cid, product, side, name, config,
                      size, price, self.now(), hold=need)
        self.orders[order.order_id] = order
        if market:
            self._execute(order, size, product.price, maker=False)
        return order

    @staticmethod
    def _amount(text: Any, reason: str) -> Decimal:
        try:
            value = Decimal(str(text))
        except ArithmeticError:
            raise OrderRefused(reason, f"invalid amount {text!r}") from None
        if not value.is_finite() or value <= 0:
            raise OrderRefused(reason, f"invalid amount {text!r}")
        return value

    def _batch_cancel(self, payload: dict[str, Any]) -> dict[str, Any]:
        ids = payload.get("order_ids")
        if not isinstance(ids, list) or not ids or len(ids) > 100:
            raise CoinbaseError(400, "INVALID_ARGUMENT", "order_ids: 1 to 100 ids")
        results = []
        for order_id in ids:
            order = self.orders.get(str(order_id))
            reason = ("UNKNOWN_CANCEL_ORDER" if order is None else "ORDER_IS_FULLY_FILLED" if order.status == "FILLED"
                      else "DUPLICATE_CANCEL_REQUEST" if order.status != "OPEN" else None)
            if reason is None:
                order.status, order.cancel_message, order.hold = "CANCELLED", "User requested cancel", Decimal(0)
            results.append({"success": reason is None, "failure_reason": reason or "UNKNOWN_CANCEL_FAILURE_REASON",
                            "order_id": order_id})
        return {"results": results}


__all__ = ["CoinbaseError", "FakeCoinbase", "Order", "Product"]
