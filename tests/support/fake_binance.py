"""A local fake of Binance's spot REST API (the part a broker adapter uses), on 127.0.0.1, port 0.

Written from Binance's spot API documentation, https://developers.binance.com/docs/binance-spot-api-docs
(``rest-api/general-endpoints``, ``rest-api/trading-endpoints``, ``rest-api/account-endpoints``,
``errors``, ``enums``, ``filters``), not from what an adapter expects. The real ``ccxt`` client talks
to it (its ``urls['api']['public'/'private']`` pointed here). What it implements:

* ``GET /api/v3/exchangeInfo`` (general endpoints): ``symbols[]`` with ``baseAsset``/``quoteAsset``,
  ``status`` TRADING, ``orderTypes``, ``permissions`` and the PRICE_FILTER/LOT_SIZE filters.
* ``GET /api/v3/time``, ``GET /api/v3/ping``.
* Signed (USER_DATA/TRADE) endpoints, "SIGNED Endpoint security": header ``X-MBX-APIKEY``,
  ``timestamp`` (ms) and optional ``recvWindow`` (default 5000, at most 60000), ``signature`` =
  HMAC-SHA256(secret, totalParams) where totalParams is the query string concatenated with the
  request body. Timing rule, as documented: accepted only if ``timestamp < serverTime + 1000``
  and ``serverTime - timestamp <= recvWindow``, else -1021.
* ``GET /api/v3/account``: ``balances[]`` of ``{asset, free, locked}`` (strings).
* ``POST /api/v3/order`` (newOrderRespType ACK/RESULT/FULL; FULL lists ``fills[]`` with
  ``price, qty, commission, commissionAsset, tradeId``). ``newClientOrderId``: "A unique id among
  open orders ... Orders with the same newClientOrderID can be accepted only when the previous one
  is filled, otherwise the order will be rejected" (-2010 "Duplicate order sent."). Funds are
  locked when the order is placed; too little free balance is -2010 "Account has insufficient
  balance for requested action.". MARKET orders fill at once at the symbol's price; LIMIT orders
  rest until the test fills them (``fill``), as a counterparty would.
* ``GET /api/v3/order`` (``orderId`` or ``origClientOrderId``; unknown: -2013 "Order does not
  exist."), ``DELETE /api/v3/order`` (unknown or finished order: -2011 "Unknown order sent."),
  ``GET /api/v3/openOrders`` (symbol optional), ``GET /api/v3/allOrders`` (symbol mandatory;
  ``orderId``: that order and later; ``startTime``/``endTime`` at most 24 hours apart; else the
  most recent; ``limit`` default 500, max 1000).
* ``GET /api/v3/myTrades``: symbol mandatory, ``orderId``, ``startTime``/``endTime`` (at most 24
  hours apart), ``fromId`` (not with a time), ``limit`` (default 500, max 1000); trades are
  ``{symbol, id, orderId, orderListId, price, qty, quoteQty, commission, commissionAsset, time,
  isBuyer, isMaker, isBestMatch}``. Commission is taken from the asset received (the docs'
  default when BNB is not used to pay fees): base asset on a buy, quote asset on a sell.

Errors are HTTP 400 with ``{"code": <negative int>, "msg": ...}`` (401 for API-key errors),
codes and messages from the documented error list. Amounts are decimal strings throughout.

Test controls (what the matching engine or a counterparty would do): ``fill``, ``expire``,
``set_price``, ``stall`` (hold a response, optionally after the request took effect),
``clock_offset_ms``.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from tests.support.fake_rest import RestFake

OPEN = ("NEW", "PARTIALLY_FILLED")
COMMISSION_RATE = Decimal("0.001")  # 10 bps, the documented default spot taker/maker rate


def _s(value: Decimal) -> str:
    """Binance's amount strings: plain decimal notation with 8 places."""
    return format(value.quantize(Decimal("0.00000001")), "f")


class BinanceError(Exception):
    def __init__(self, code: int, msg: str, http: int = 400):
        super().__init__(msg)
        self.code, self.msg, self.http = code, msg, http


@dataclass
class Market:
    symbol: str  # BTCUSDT
    base: str
    quote: str
    tick: str = "0.01"
    step: str = "0.00001"
    price: Decimal = Decimal("50000")  # the last price: where MARKET orders fill


@dataclass
class Order:
    symbol: str
    order_id: int
    client_order_id: str
    side: str
    type: str
    time_in_force: str
    qty: Decimal
    price: Decimal  # 0 for MARKET
    status: str = "NEW"
    executed: Decimal = Decimal(0)
    quote_filled: Decimal = Decimal(0)
    time: int = 0
    update_time: int = 0
    locked: Decimal = Decimal(0)  # funds still locked for the order's remainder
    fills: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        # GET /api/v3/order response fields (trading-endpoints "Query order")
        return {
            "symbol": self.symbol, "orderId": self.order_id, "orderListId": -1,
            "clientOrderId": self.client_order_id, "price": _s(self.price), "origQty": _s(self.qty),
            "executedQty": _s(self.executed), "cummulativeQuoteQty": _s(self.quote_filled),
            "status": self.status, "timeInForce": self.time_in_force, "type": self.type, "side": self.side,
            "stopPrice": "0.00000000", "icebergQty": "0.00000000", "time": self.time,
            "updateTime": self.update_time, "isWorking": True, "workingTime": self.time,
            "origQuoteOrderQty": "0.00000000", "selfTradePreventionMode": "EXPIRE_MAKER",
        }


class FakeBinance(RestFake):
    """The fake exchange: state, the HTTP server (``RestFake``), and the test controls."""

    name = "fake-binance"

    def __init__(self, *, api_key: str = "fake-key", secret: str = "fake-secret",
                 markets: list[Market] | None = None, balances: dict[str, str] | None = None):
        super().__init__()
        self.api_key, self.secret = api_key, secret
        self.markets = {m.symbol: m for m in (markets or [Market("BTCUSDT", "BTC", "USDT"),
                                                          Market("ETHUSDT", "ETH", "USDT", price=Decimal("3000"))])}
        self.free: dict[str, Decimal] = {k: Decimal(v) for k, v in (balances or {"USDT": "100000"}).items()}
        self.locked: dict[str, Decimal] = {}
        self.orders: dict[int, Order] = {}
        self.trades: list[dict[str, Any]] = []
        self.calls: list[tuple[str, str, dict[str, str]]] = []  # (method, path, parameters) likewise
        self.clock_offset_ms = 0
        self._next_order = 1000
        self._next_trade = 5000

    # ------------------------------------------------------------------ test controls
    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.clock_offset_ms

    def set_price(self, symbol: str, price: str) -> None:
        self.markets[symbol].price = Decimal(price)

    def fill(self, order_id: int, qty: str, price: str | None = None, *, maker: bool = True,
             commission: str | None = None, commission_asset: str | None = None) -> dict[str, Any]:
        """A counterparty trades ``qty`` of a resting order at ``price`` (default: its limit)."""
        with self.lock:
            order = self.orders[order_id]
            if order.status not in OPEN:
                raise ValueError(f"order {order_id} is {order.status}")
            return self._execute(order, Decimal(qty), Decimal(price) if price else order.price, maker=maker,
                                 commission=None if commission is None else Decimal(commission),
                                 commission_asset=commission_asset)

    def expire(self, order_id: int) -> None:
        """The venue expires a working order (e.g. an IOC remainder, or self-trade prevention)."""
        with self.lock:
            order = self.orders[order_id]
            self._release(order)
            order.status, order.update_time = "EXPIRED", self.now_ms()

    def balance(self, asset: str) -> Decimal:
        return self.free.get(asset, Decimal(0)) + self.locked.get(asset, Decimal(0))

    # ------------------------------------------------------------------ matching and funds
    def _execute(self, order: Order, qty: Decimal, price: Decimal, *, maker: bool,
                 commission: Decimal | None = None, commission_asset: str | None = None) -> dict[str, Any]:
        market = self.markets[order.symbol]
        remaining = order.qty - order.executed
        if qty <= 0 or qty > remaining:
            raise ValueError(f"cannot fill {qty} of order {order.order_id}: {remaining} remaining")
        quote = qty * price
        if order.side == "BUY":
            asset = commission_asset or market.base
            fee = commission if commission is not None else (qty if asset == market.base else quote) * COMMISSION_RATE
            release = qty * order.price if order.type == "LIMIT" else quote
            self._move(market.quote, locked=-release, free=release - quote)
            self._move(market.base, free=qty)
        else:
            asset = commission_asset or market.quote
            fee = commission if commission is not None else (quote if asset == market.quote else qty) * COMMISSION_RATE
            self._move(market.base, locked=-qty)
            self._move(market.quote, free=quote)
        self._move(asset, free=-fee)
        order.locked -= release if order.side == "BUY" else qty
        order.executed += qty
        order.quote_filled += quote
        order.status = "FILLED" if order.executed == order.qty else "PARTIALLY_FILLED"
        order.update_time = now = self.now_ms()
        self._next_trade += 1
        trade = {"symbol": order.symbol, "id": self._next_trade, "orderId": order.order_id, "orderListId": -1,
                 "price": _s(price), "qty": _s(qty), "quoteQty": _s(quote), "commission": _s(fee),
                 "commissionAsset": asset, "time": now, "isBuyer": order.side == "BUY", "isMaker": maker,
                 "isBestMatch": True}
        self.trades.append(trade)
        order.fills.append({"price": _s(price), "qty": _s(qty), "commission": _s(fee), "commissionAsset": asset,
                            "tradeId": self._next_trade})
        return trade

    def _move(self, asset: str, *, free: Decimal = Decimal(0), locked: Decimal = Decimal(0)) -> None:
        self.free[asset] = self.free.get(asset, Decimal(0)) + free
        if locked:
            self.locked[asset] = self.locked.get(asset, Decimal(0)) + locked

    def _release(self, order: Order) -> None:
        market = self.markets[order.symbol]
        asset = market.quote if order.side == "BUY" else market.base
        self._move(asset, free=order.locked, locked=-order.locked)
        order.locked = Decimal(0)

    # ------------------------------------------------------------------ HTTP
    def answer(self, method: str, path: str, query: str, body: str, headers: dict[str, str]) -> tuple[int, Any]:
        try:
            return 200, self._route(method, path, query, body, headers)
        except BinanceError as e:
            return e.http, {"code": e.code, "msg": e.msg}

    def _route(self, method: str, path: str, query: str, body: str, headers: dict[str, str]) -> Any:
        public = {("GET", "/api/v3/ping"): lambda p: {},
                  ("GET", "/api/v3/time"): lambda p: {"serverTime": self.now_ms()},
                  ("GET", "/api/v3/exchangeInfo"): self._exchange_info}
        signed = {("GET", "/api/v3/account"): self._account,
                  ("GET", "/api/v3/openOrders"): self._open_orders,
                  ("GET", "/api/v3/allOrders"): self._all_orders,
                  ("GET", "/api/v3/order"): self._get_order,
                  ("POST", "/api/v3/order"): self._new_order,
                  ("DELETE", "/api/v3/order"): self._cancel_order,
                  ("GET", "/api/v3/myTrades"): self._my_trades}
        params = dict(parse_qsl(query, keep_blank_values=True))
        params.update(dict(parse_qsl(body, keep_blank_values=True)))
        with self.lock:
            self.calls.append((method, path, params))
        if (method, path) in public:
            return public[(method, path)](params)
        if (method, path) not in signed:
            raise BinanceError(-1100 if path.startswith("/api/") else -1000, f"Unknown endpoint {method} {path}", 404)
        self._check_signed(query, body, headers, params)
        with self.lock:
            return signed[(method, path)](params)

    def _check_signed(self, query: str, body: str, headers: dict[str, str], params: dict[str, str]) -> None:
        key = next((v for k, v in headers.items() if k.lower() == "x-mbx-apikey"), None)
        if not key:
            raise BinanceError(-2014, "API-key format invalid.", 401)
        if key != self.api_key:
            raise BinanceError(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        signature = params.get("signature")
        if not signature:
            raise BinanceError(-1102, "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.")

        def unsigned(text: str) -> str:
            return "&".join(p for p in text.split("&") if p and not p.startswith("signature="))

        total = unsigned(query) + unsigned(body)  # totalParams: query string concatenated with the body
        expected = hmac.new(self.secret.encode(), total.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise BinanceError(-1022, "Signature for this request is not valid.")
        try:
            timestamp = int(params["timestamp"])
            recv_window = int(params.get("recvWindow", "5000"))
        except (KeyError, ValueError):
            raise BinanceError(-1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, or malformed.")
        if recv_window > 60000:
            raise BinanceError(-1131, "recvWindow must be less than 60000")
        server_time = self.now_ms()
        if not (timestamp < server_time + 1000 and server_time - timestamp <= recv_window):
            raise BinanceError(-1021, "Timestamp for this request is outside of the recvWindow.")

    # -- endpoints
    def _exchange_info(self, params: dict[str, str]) -> dict[str, Any]:
        symbols = []
        for m in self.markets.values():
            symbols.append({
                "symbol": m.symbol, "status": "TRADING", "baseAsset": m.base, "baseAssetPrecision": 8,
                "quoteAsset": m.quote, "quotePrecision": 8, "quoteAssetPrecision": 8,
                "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
                "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
                "icebergAllowed": True, "ocoAllowed": True, "otoAllowed": True,
                "quoteOrderQtyMarketAllowed": True, "allowTrailingStop": True, "cancelReplaceAllowed": True,
                "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": m.tick, "maxPrice": "1000000.00000000",
                     "tickSize": m.tick},
                    {"filterType": "LOT_SIZE", "minQty": m.step, "maxQty": "9000.00000000", "stepSize": m.step},
                    {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
                     "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
                ],
                "permissions": [], "permissionSets": [["SPOT"]],
                "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
                "allowedSelfTradePreventionModes": ["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
            })
        return {"timezone": "UTC", "serverTime": self.now_ms(), "rateLimits": [], "exchangeFilters": [],
                "symbols": symbols}

    def _account(self, params: dict[str, str]) -> dict[str, Any]:
        assets = sorted(set(self.free) | set(self.locked))
        return {
            "makerCommission": 10, "takerCommission": 10, "buyerCommission": 0, "sellerCommission": 0,
            "commissionRates": {"maker": "0.00100000", "taker": "0.00100000", "buyer": "0.00000000",
                                "seller": "0.00000000"},
            "canTrade": True, "canWithdraw": True, "canDeposit": True, "brokered": False,
            "requireSelfTradePrevention": False, "preventSor": False, "updateTime": self.now_ms(),
            "accountType": "SPOT", "permissions": ["SPOT"], "uid": 354937868,
            "balances": [{"asset": a, "free": _s(self.free.get(a, Decimal(0))),
                          "locked": _s(self.locked.get(a, Decimal(0)))} for a in assets],
        }

    def _market(self, params: dict[str, str], *, required: bool = True) -> Market | None:
        symbol = params.get("symbol")
        if not symbol:
            if required:
                raise BinanceError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
            return None
        if symbol not in self.markets:
            raise BinanceError(-1121, "Invalid symbol.")
        return self.markets[symbol]

    def _find(self, params: dict[str, str]) -> Order | None:
        market = self._market(params)
        if "orderId" in params:
            order = self.orders.get(int(params["orderId"]))
        elif params.get("origClientOrderId"):
            matches = [o for o in self.orders.values() if o.client_order_id == params["origClientOrderId"]
                       and o.symbol == market.symbol]  # type: ignore[union-attr]
            # the most recent order under that id (an id may be reused once the earlier one filled)
            order = max(matches, key=lambda o: o.order_id) if matches else None
        else:
            raise BinanceError(-1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!")
        if order is not None and order.symbol != market.symbol:  # type: ignore[union-attr]
            return None
        return order

    def _get_order(self, params: dict[str, str]) -> dict[str, Any]:
        order = self._find(params)
        if order is None:
            raise BinanceError(-2013, "Order does not exist.")
        return order.as_json()

    def _open_orders(self, params: dict[str, str]) -> list[dict[str, Any]]:
        market = self._market(params, required=False)
        return [o.as_json() for o in sorted(self.orders.values(), key=lambda o: o.order_id)
                if o.status in OPEN and (market is None or o.symbol == market.symbol)]

    def _limit(self, params: dict[str, str]) -> int:
        limit = int(params.get("limit") or 500)
        if not 1 <= limit <= 1000:
            raise BinanceError(-1100, "Illegal characters found in parameter 'limit'; legal range is '1-1000'.")
        return limit

    def _all_orders(self, params: dict[str, str]) -> list[dict[str, Any]]:
        market = self._market(params)
        limit = self._limit(params)
        orders = sorted((o for o in self.orders.values() if o.symbol == market.symbol), key=lambda o: o.order_id)
        if "orderId" in params:
            orders = [o for o in orders if o.order_id >= int(params["orderId"])][:limit]
        elif "startTime" in params or "endTime" in params:
            # "The time between startTime and endTime can't be longer than 24 hours."
            day = 24 * 3600 * 1000
            start = int(params.get("startTime") or 0)
            end = int(params.get("endTime") or start + day)
            if "startTime" not in params:
                start = end - day
            if end - start > day:
                raise BinanceError(-1127, "More than 24 hours between startTime and endTime.")
            orders = [o for o in orders if start <= o.time <= end][:limit]
        else:
            orders = orders[-limit:]  # the most recent orders
        return [o.as_json() for o in orders]

    def _my_trades(self, params: dict[str, str]) -> list[dict[str, Any]]:
        market = self._market(params)
        limit = self._limit(params)
        trades = [t for t in self.trades if t["symbol"] == market.symbol]
        if "orderId" in params:
            trades = [t for t in trades if t["orderId"] == int(params["orderId"])]
        has_time = "startTime" in params or "endTime" in params
        if "fromId" in params and has_time:
            raise BinanceError(-1128, "Combination of optional parameters invalid.")
        if "fromId" in params:
            return [t for t in trades if t["id"] >= int(params["fromId"])][:limit]
        if has_time:
            start = int(params.get("startTime") or 0)
            end = int(params.get("endTime") or start + 24 * 3600 * 1000)
            if "startTime" not in params:
                start = end - 24 * 3600 * 1000
            if end - start > 24 * 3600 * 1000:
                raise BinanceError(-1127, "More than 24 hours between startTime and endTime.")
            return [t for t in trades if start <= t["time"] <= end][:limit]
        return trades[-limit:]  # "Otherwise most recent trades are returned"

    def _new_order(self, params: dict[str, str]) -> dict[str, Any]:
        market = self._market(params)
        for name in ("side", "type"):
            if not params.get(name):
                raise BinanceError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
        side, type_ = params["side"], params["type"]
        if side not in ("BUY", "SELL"):
            raise BinanceError(-1117, "Invalid side.")
        if type_ not in ("LIMIT", "MARKET"):
            raise BinanceError(-1116, "Invalid orderType.")
        try:
            qty = Decimal(params["quantity"])
        except (KeyError, ArithmeticError):
            raise BinanceError(-1102, "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed.")
        price = Decimal(0)
        if type_ == "LIMIT":
            if not params.get("price"):
                raise BinanceError(-1102, "Mandatory parameter 'price' was not sent, was empty/null, or malformed.")
            if not params.get("timeInForce"):
                raise BinanceError(-1102, "Mandatory parameter 'timeInForce' was not sent, was empty/null, or malformed.")
            price = Decimal(params["price"])
            if price % Decimal(market.tick):
                raise BinanceError(-1013, "Filter failure: PRICE_FILTER")
        if qty <= 0 or qty % Decimal(market.step):
            raise BinanceError(-1013, "Filter failure: LOT_SIZE")
        coid = params.get("newClientOrderId") or f"web_{self._next_order + 1}"
        if any(o.client_order_id == coid and o.status in OPEN for o in self.orders.values()):
            raise BinanceError(-2010, "Duplicate order sent.")
        # lock the funds the order may spend (market orders: at the current price)
        if side == "BUY":
            asset, need = market.quote, qty * (price if type_ == "LIMIT" else market.price)
        else:
            asset, need = market.base, qty
        if self.free.get(asset, Decimal(0)) < need:
            raise BinanceError(-2010, "Account has insufficient balance for requested action.")
        self._move(asset, free=-need, locked=need)
        self._next_order += 1
        now = self.now_ms()
        order = Order(market.symbol, self._next_order, coid, side, type_,
                      params.get("timeInForce", "GTC") if type_ == "LIMIT" else "GTC", qty, price,
                      time=now, update_time=now, locked=need)
        self.orders[order.order_id] = order
        if type_ == "MARKET":
            self._execute(order, qty, market.price, maker=False)
        answer = {"symbol": order.symbol, "orderId": order.order_id, "orderListId": -1,
                  "clientOrderId": coid, "transactTime": now}
        kind = params.get("newOrderRespType") or ("FULL" if type_ == "MARKET" else "ACK")
        if kind in ("RESULT", "FULL"):
            full = order.as_json()
            answer.update({k: full[k] for k in ("price", "origQty", "executedQty", "cummulativeQuoteQty", "status",
                                                 "timeInForce", "type", "side", "workingTime",
                                                 "selfTradePreventionMode")})
            answer["origQuoteOrderQty"] = "0.00000000"
        if kind == "FULL":
            answer["fills"] = list(order.fills)
        return answer

    def _cancel_order(self, params: dict[str, str]) -> dict[str, Any]:
        order = self._find(params)
        if order is None or order.status not in OPEN:
            raise BinanceError(-2011, "Unknown order sent.")
        self._release(order)
        order.status, order.update_time = "CANCELED", self.now_ms()
        answer = order.as_json()
        return {"symbol": order.symbol, "origClientOrderId": order.client_order_id, "orderId": order.order_id,
                "orderListId": -1, "clientOrderId": params.get("newClientOrderId") or f"cancel_{order.order_id}",
                "transactTime": order.update_time,
                **{k: answer[k] for k in ("price", "origQty", "executedQty", "cummulativeQuoteQty", "status",
                                          "timeInForce", "type", "side", "selfTradePreventionMode")}}


__all__ = ["BinanceError", "FakeBinance", "Market", "Order"]
