"""A local fake of Kraken's Spot REST API (the part a broker adapter uses), on 127.0.0.1, port 0.

Written from Kraken's REST documentation (docs.kraken.com: api-reference market-data
``get-tradable-asset-pairs``/``get-asset-info``/``get-server-time``, account-data
``get-extended-balance``/``get-open-orders``/``get-closed-orders``/``query-orders-info``/
``get-trades-history``, trading ``add-order``/``cancel-order``; guides ``errors``,
``authentication``, ``spot-clordid``), not from what an adapter expects. The real ``ccxt`` client
talks to it (its ``urls['api']['public'/'private']`` pointed here). What it implements:

* Every answer is HTTP 200 with the envelope ``{"error": [...], "result": {...}}``; a request
  failed when ``error`` is not empty ("Kraken API errors follow a consistent format": a string
  ``E<Category>:<Description>``, e.g. ``EOrder:Insufficient funds``). Amounts are decimal strings.
* Public, GET: ``/0/public/Time``, ``/0/public/Assets`` (asset ids ``XXBT``, ``ZUSD``, ``XETH`` with
  ``altname``/``decimals``), ``/0/public/AssetPairs`` (``XXBTZUSD``: altname ``XBTUSD``, wsname
  ``XBT/USD``, ``pair_decimals``, ``lot_decimals``, ``cost_decimals``, ``ordermin``, ``costmin``,
  ``tick_size``, ``status`` online, taker ``fees`` / ``fees_maker`` schedules in percent).
* Private, POST with a form-encoded body (authentication guide): headers ``API-Key`` and
  ``API-Sign`` = base64(HMAC-SHA512(base64-decoded secret, URI path + SHA256(nonce + POST data))),
  checked; ``nonce`` must grow for the key, else ``EAPI:Invalid nonce``; a wrong key
  ``EAPI:Invalid key``, a wrong signature ``EAPI:Invalid signature``.
* ``BalanceEx``: per asset ``{balance, hold_trade}`` (the balance includes what open orders hold).
* ``AddOrder``: ``pair``, ``type`` buy/sell, ``ordertype`` market/limit, ``volume``, ``price``,
  ``cl_ord_id``, ``timeinforce`` (GTC default, IOC, GTD), ``oflags`` (``fciq``/``fcib``: the fee
  in the quote/base currency; the documented defaults, fciq when buying and fcib when selling,
  apply without them; ``post``). ``cl_ord_id``: a long UUID (36 characters with hyphens), a short
  UUID (32 hex) or free text of at most 18 ASCII characters, unique among the client's *open*
  orders (spot-clordid guide). The answer is ``{"descr": {"order": "buy 0.50000000 XBTUSD @
  limit 40000.0"}, "txid": ["O..."]}`` only: no status, no client id. Volume below ``ordermin``:
  ``EOrder:Order minimum not met``; cost below ``costmin``: ``EOrder:Cost minimum not met``; a
  price off ``tick_size``: ``EOrder:Tick size check failed``; more volume decimals than
  ``lot_decimals``: ``EGeneral:Invalid arguments:volume``; too little balance: ``EOrder:Insufficient
  funds``. A limit order holds its cost (a sell its volume) until it fills or ends; MARKET orders
  fill at once at the pair's price (taker), LIMIT orders rest until the test fills them.
* ``OpenOrders`` (``{"open": {txid: order}}``; ``cl_ord_id``/``userref`` filters, ``trades``),
  ``ClosedOrders`` (``{"closed": {...}, "count": n}``: "50 results are returned at a time, the most
  recent by default"; ``start``/``end`` exclusive/inclusive unix times, ``ofs`` the offset,
  ``cl_ord_id`` filter), ``QueryOrders`` (``txid``: up to 50 comma-separated ids, ``trades``; an id
  it never issued: ``EOrder:Invalid order``). An order: ``status`` pending/open/closed/canceled/
  expired, ``opentm``/``closetm`` (unix seconds with fractions), ``descr`` (pair altname, type,
  ordertype, price, order text), ``vol``, ``vol_exec``, ``cost``, ``fee``, ``price`` (the average),
  ``oflags``, ``cl_ord_id`` or ``userref``, ``reason`` when cancelled or expired, ``trades`` on request.
* ``TradesHistory``: ``{"trades": {trade txid: {ordertxid, postxid, pair, time, type, ordertype,
  price, cost, fee, vol, margin, misc, trade_id, maker}}, "count": n}``, newest first, 50 at a
  time, ``start``/``end``/``ofs`` as for closed orders. Kraken's trade carries no fee currency:
  it is the order's (``oflags``).
* ``CancelOrder``: ``txid`` (or ``cl_ord_id``) -> ``{"count": 1}``; an order not open (unknown,
  filled, cancelled): ``EOrder:Unknown order``.

Not in the documents consulted: the error string for a ``cl_ord_id`` already used by an open
order; the fake answers ``EOrder:Duplicate order`` (an ``EOrder`` refusal like the others).

Test controls: ``fill``, ``expire``, ``cancel_at_venue``, ``set_price``, ``stall``, ``place``
(an order entered elsewhere: the website, another program), ``nonce_of``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import re
import string
import time
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Any
from urllib.parse import parse_qsl

from tests.support.fake_rest import RestFake

OPEN = ("pending", "open")
PAGE = 50  # "50 results are returned at a time"
TAKER, MAKER = Decimal("0.0026"), Decimal("0.0016")  # the first tier of the fee schedule (0.26 % / 0.16 %)
LONG_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
SHORT_UUID = re.compile(r"^[0-9a-fA-F]{32}$")


class KrakenError(Exception):
    def __init__(self, error: str):
        super().__init__(error)
        self.error = error


@dataclass
class Asset:
    id: str  # XXBT
    altname: str  # XBT
    decimals: int


@dataclass
class Pair:
    id: str  # XXBTZUSD
    altname: str  # XBTUSD
    wsname: str  # XBT/USD
    base: str  # XXBT
    quote: str  # ZUSD
    pair_decimals: int = 1
    lot_decimals: int = 8
    cost_decimals: int = 5
    ordermin: str = "0.0001"
    costmin: str = "0.5"
    price: Decimal = Decimal("40000")  # the last price: where market orders fill

    @property
    def tick(self) -> Decimal:
        return Decimal(1).scaleb(-self.pair_decimals)


ASSETS = [Asset("XXBT", "XBT", 10), Asset("XETH", "ETH", 10), Asset("ZUSD", "ZUSD", 4)]
PAIRS = [Pair("XXBTZUSD", "XBTUSD", "XBT/USD", "XXBT", "ZUSD"),
         Pair("XETHZUSD", "ETHUSD", "ETH/USD", "XETH", "ZUSD", pair_decimals=2, price=Decimal("3000"))]


def _fixed(value: Decimal, places: int) -> str:
    return format(value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_DOWN), "f")


def _txid(prefix: str, n: int) -> str:
    """A Kraken-looking id (``OQCLML-BW3P3-BUCMWZ``): 6-5-6 characters, unique per counter."""
    letters = string.ascii_uppercase + "234567"
    digits = []
    for _ in range(16):
        n, r = divmod(n, len(letters))
        digits.append(letters[r])
    text = prefix + "".join(digits)
    return f"{text[:6]}-{text[6:11]}-{text[11:17]}"


@dataclass
class Order:
    txid: str
    pair: Pair
    side: str
    ordertype: str
    volume: Decimal
    price: Decimal | None  # None: market
    cl_ord_id: str | None
    userref: int | None
    oflags: str
    timeinforce: str
    opentm: float
    status: str = "open"
    vol_exec: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)
    fee: Decimal = Decimal(0)
    closetm: float | None = None
    reason: str | None = None
    held: Decimal = Decimal(0)  # what the order still holds (quote on a buy, base on a sell)
    trades: list[str] = field(default_factory=list)

    @property
    def fee_in_base(self) -> bool:
        if "fcib" in self.oflags:
            return True
        if "fciq" in self.oflags:
            return False
        return self.side == "sell"  # the documented defaults: fciq if buying, fcib if selling

    def as_json(self, with_trades: bool) -> dict[str, Any]:
        p = self.pair
        price_text = _fixed(self.price, p.pair_decimals) if self.price is not None else "0"
        order_text = (f"{self.side} {_fixed(self.volume, p.lot_decimals)} {p.altname} @ "
                      + (f"limit {price_text}" if self.ordertype == "limit" else "market"))
        out: dict[str, Any] = {
            "refid": None, "userref": self.userref, "status": self.status, "opentm": self.opentm, "starttm": 0,
            "expiretm": 0,
            "descr": {"pair": p.altname, "type": self.side, "ordertype": self.ordertype, "price": price_text,
                      "price2": "0", "leverage": "none", "order": order_text, "close": ""},
            "vol": _fixed(self.volume, p.lot_decimals), "vol_exec": _fixed(self.vol_exec, p.lot_decimals),
            "cost": _fixed(self.cost, p.cost_decimals), "fee": _fixed(self.fee, p.cost_decimals),
            "price": _fixed(self.cost / self.vol_exec if self.vol_exec else Decimal(0), p.pair_decimals),
            "stopprice": "0.00000", "limitprice": "0.00000", "misc": "", "oflags": self.oflags,
            "timeinforce": self.timeinforce,
        }
        if self.cl_ord_id is not None:
            out["cl_ord_id"] = self.cl_ord_id
        if self.closetm is not None:
            out["closetm"] = self.closetm
        if self.reason is not None:
            out["reason"] = self.reason
        if with_trades and self.trades:
            out["trades"] = list(self.trades)
        return out


class FakeKraken(RestFake):
    """The fake exchange: state, the HTTP server (``RestFake``) and the test controls."""

    name = "fake-kraken"

    def __init__(self, *, api_key: str = "fake-kraken-key", secret: str | None = None,
                 balances: dict[str, str] | None = None, pairs: list[Pair] | None = None) -> None:
        super().__init__()
        self.api_key = api_key
        self.secret = secret or base64.b64encode(b"fake-kraken-secret-0123456789abcdef").decode()
        self.assets = {a.id: a for a in ASSETS}
        self.pairs = {p.id: p for p in (pairs or [Pair(**vars(q)) for q in PAIRS])}
        self.balance: dict[str, Decimal] = {k: Decimal(v) for k, v in (balances or {"ZUSD": "100000"}).items()}
        self.orders: dict[str, Order] = {}
        self.trades: dict[str, dict[str, Any]] = {}  # trade txid -> TradesHistory entry (insertion = time order)
        self.calls: list[tuple[str, str, dict[str, str]]] = []  # (method, path, parameters)
        self._nonces: dict[str, int] = {}
        self._ids = itertools.count(7_000_000)
        self._trade_ids = itertools.count(80_000_001)
        self._clock = 0.0  # strictly increasing times (two events never share one)

    # ------------------------------------------------------------------ test controls
    def now(self) -> float:
        self._clock = max(self._clock + 0.001, round(time.time(), 4))
        return self._clock

    def pair_of(self, altname_or_id: str) -> Pair:
        for p in self.pairs.values():
            if altname_or_id in (p.id, p.altname, p.wsname):
                return p
        raise KrakenError("EQuery:Unknown asset pair")

    def set_price(self, pair: str, price: str) -> None:
        self.pair_of(pair).price = Decimal(price)

    def held(self, asset: str) -> Decimal:
        total = Decimal(0)
        for o in self.orders.values():
            if o.status in OPEN:
                total += o.held if (o.pair.quote if o.side == "buy" else o.pair.base) == asset else 0
        return total

    def nonce_of(self, api_key: str) -> int | None:
        return self._nonces.get(api_key)

    def place(self, pair: str, side: str, volume: str, price: str | None = None, *,
              cl_ord_id: str | None = None, oflags: str = "") -> str:
        """An order entered elsewhere (the website, another program): as AddOrder would."""
        with self.lock:
            params = {"pair": pair, "type": side, "ordertype": "limit" if price else "market", "volume": volume,
                      **({"price": price} if price else {}), **({"cl_ord_id": cl_ord_id} if cl_ord_id else {}),
                      **({"oflags": oflags} if oflags else {})}
            return self._add_order(params)["txid"][0]

    def fill(self, txid: str, volume: str, price: str | None = None, *, maker: bool = True) -> str:
        """A counterparty trades ``volume`` of a resting order at ``price`` (default: its limit);
        returns the trade's txid."""
        with self.lock:
            order = self.orders[txid]
            if order.status not in OPEN:
                raise ValueError(f"order {txid} is {order.status}")
            return self._execute(order, Decimal(volume), Decimal(price) if price else order.price, maker=maker)

    def expire(self, txid: str) -> None:
        """The venue ends a working order (e.g. an IOC remainder)."""
        self._close(txid, "expired", "Order expired")

    def cancel_at_venue(self, txid: str) -> None:
        """Cancelled outside our adapter (the website)."""
        self._close(txid, "canceled", "User requested")

    # ------------------------------------------------------------------ matching and funds
    def _execute(self, order: Order, volume: Decimal, price: Decimal | None, *, maker: bool) -> str:
        p = order.pair
        remaining = order.volume - order.vol_exec
        if volume <= 0 or volume > remaining or price is None:
            raise ValueError(f"cannot fill {volume} of order {order.txid}: {remaining} remaining")
        cost = volume * price
        rate = MAKER if maker else TAKER
        if order.fee_in_base:
            fee = (volume * rate).quantize(Decimal(1).scaleb(-p.lot_decimals))
            fee_asset = p.base
        else:
            fee = (cost * rate).quantize(Decimal(1).scaleb(-p.cost_decimals))
            fee_asset = p.quote
        if order.side == "buy":
            self._move(p.quote, -cost)
            self._move(p.base, volume)
            order.held -= min(order.held, volume * (order.price or price))
        else:
            self._move(p.base, -volume)
            self._move(p.quote, cost)
            order.held -= min(order.held, volume)
        self._move(fee_asset, -fee)
        order.vol_exec += volume
        order.cost += cost
        order.fee += fee  # in the currency the order's flags chose
        at = self.now()
        txid = _txid("T", next(self._ids))
        order.trades.append(txid)
        self.trades[txid] = {
            "ordertxid": order.txid, "postxid": _txid("P", next(self._ids)), "pair": p.id, "time": at,
            "type": order.side, "ordertype": order.ordertype, "price": _fixed(price, p.pair_decimals),
            "cost": _fixed(cost, p.cost_decimals),
            "fee": _fixed(fee, p.lot_decimals if fee_asset == p.base else p.cost_decimals),
            "vol": _fixed(volume, p.lot_decimals), "margin": "0.00000", "leverage": "0", "misc": "",
            "trade_id": next(self._trade_ids), "maker": maker,
        }
        if order.vol_exec == order.volume:
            order.status, order.closetm = "closed", at
            order.held = Decimal(0)
        return txid

    def _move(self, asset: str, amount: Decimal) -> None:
        self.balance[asset] = self.balance.get(asset, Decimal(0)) + amount

    def _close(self, txid: str, status: str, reason: str) -> None:
        with self.lock:
            order = self.orders[txid]
            if order.status not in OPEN:
                raise ValueError(f"order {txid} is {order.status}")
            order.status, order.reason, order.closetm, order.held = status, reason, self.now(), Decimal(0)

    # ------------------------------------------------------------------ HTTP
    def answer(self, method: str, path: str, query: str, body: str, headers: dict[str, str]) -> tuple[int, Any]:
        params = dict(parse_qsl(query, keep_blank_values=True))
        params.update(dict(parse_qsl(body, keep_blank_values=True)))
        with self.lock:
            self.calls.append((method, path, params))
            try:
                result = self._route(method, path, body, headers, params)
            except KrakenError as e:
                return 200, {"error": [e.error], "result": {}}
        return 200, {"error": [], "result": result}

    def _route(self, method: str, path: str, body: str, headers: dict[str, str], params: dict[str, str]) -> Any:
        public = {"/0/public/Time": self._time, "/0/public/Assets": self._assets,
                  "/0/public/AssetPairs": self._asset_pairs}
        private = {"/0/private/BalanceEx": self._balance_ex, "/0/private/OpenOrders": self._open_orders,
                   "/0/private/ClosedOrders": self._closed_orders, "/0/private/QueryOrders": self._query_orders,
                   "/0/private/TradesHistory": self._trades_history, "/0/private/AddOrder": self._add_order,
                   "/0/private/CancelOrder": self._cancel_order}
        if path in public and method == "GET":
            return public[path](params)
        if path in private and method == "POST":
            self._authenticate(path, body, headers, params)
            return private[path](params)
        raise KrakenError("EGeneral:Unknown method")

    def _authenticate(self, path: str, body: str, headers: dict[str, str], params: dict[str, str]) -> None:
        header = {k.lower(): v for k, v in headers.items()}
        if header.get("api-key") != self.api_key:
            raise KrakenError("EAPI:Invalid key")
        nonce = params.get("nonce", "")
        message = path.encode() + hashlib.sha256((nonce + body).encode()).digest()
        expected = base64.b64encode(hmac.new(base64.b64decode(self.secret), message, hashlib.sha512).digest()).decode()
        if not hmac.compare_digest(expected, header.get("api-sign", "")):
            raise KrakenError("EAPI:Invalid signature")
        if not nonce.isdigit() or int(nonce) <= self._nonces.get(self.api_key, 0):
            raise KrakenError("EAPI:Invalid nonce")
        self._nonces[self.api_key] = int(nonce)

    # -- public
    def _time(self, params: dict[str, str]) -> dict[str, Any]:
        now = int(time.time())
        return {"unixtime": now, "rfc1123": time.strftime("%a, %d %b %y %H:%M:%S +0000", time.gmtime(now))}

    def _assets(self, params: dict[str, str]) -> dict[str, Any]:
        return {a.id: {"aclass": "currency", "altname": a.altname, "decimals": a.decimals,
                       "display_decimals": min(a.decimals, 5), "status": "enabled"} for a in self.assets.values()}

    def _asset_pairs(self, params: dict[str, str]) -> dict[str, Any]:
        fees = [[0, 0.26], [50000, 0.24], [100000, 0.22]]
        fees_maker = [[0, 0.16], [50000, 0.14], [100000, 0.12]]
        return {p.id: {"altname": p.altname, "wsname": p.wsname, "aclass_base": "currency", "base": p.base,
                       "aclass_quote": "currency", "quote": p.quote, "lot": "unit", "cost_decimals": p.cost_decimals,
                       "pair_decimals": p.pair_decimals, "lot_decimals": p.lot_decimals, "lot_multiplier": 1,
                       "leverage_buy": [], "leverage_sell": [], "fees": fees, "fees_maker": fees_maker,
                       "fee_volume_currency": "ZUSD", "margin_call": 80, "margin_stop": 40, "ordermin": p.ordermin,
                       "costmin": p.costmin, "tick_size": format(p.tick, "f"), "status": "online"}
                for p in self.pairs.values()}

    # -- account data
    def _balance_ex(self, params: dict[str, str]) -> dict[str, Any]:
        return {asset: {"balance": _fixed(amount, self.assets[asset].decimals if asset in self.assets else 8),
                        "hold_trade": _fixed(self.held(asset), self.assets[asset].decimals if asset in self.assets
                                             else 8)}
                for asset, amount in sorted(self.balance.items())}

    @staticmethod
    def _flag(params: dict[str, str], name: str) -> bool:
        return params.get(name, "").lower() in ("true", "1")

    def _matching(self, params: dict[str, str], orders: list[Order]) -> list[Order]:
        if params.get("cl_ord_id"):
            orders = [o for o in orders if o.cl_ord_id == params["cl_ord_id"]]
        if params.get("userref"):
            orders = [o for o in orders if str(o.userref) == params["userref"]]
        return orders

    def _open_orders(self, params: dict[str, str]) -> dict[str, Any]:
        orders = self._matching(params, [o for o in self.orders.values() if o.status in OPEN])
        return {"open": {o.txid: o.as_json(self._flag(params, "trades")) for o in orders}}

    @staticmethod
    def _window(params: dict[str, str]) -> tuple[float, float]:
        """``start`` (exclusive) and ``end`` (inclusive) as unix times (a txid is not supported here)."""
        try:
            start = float(params["start"]) if params.get("start") else float("-inf")
            end = float(params["end"]) if params.get("end") else float("inf")
        except ValueError:
            raise KrakenError("EGeneral:Invalid arguments") from None
        return start, end

    @staticmethod
    def _offset(params: dict[str, str]) -> int:
        try:
            ofs = int(params.get("ofs") or 0)
        except ValueError:
            raise KrakenError("EGeneral:Invalid arguments") from None
        if ofs < 0:
            raise KrakenError("EGeneral:Invalid arguments")
        return ofs

    def _closed_orders(self, params: dict[str, str]) -> dict[str, Any]:
        start, end = self._window(params)
        closed = [o for o in self.orders.values() if o.status not in OPEN]
        closed = [o for o in self._matching(params, closed)
                  if (start < o.opentm <= end) or (start < (o.closetm or 0) <= end)]  # closetime "both"
        closed.sort(key=lambda o: o.closetm or 0, reverse=True)  # the most recent first
        ofs = self._offset(params)
        page = closed[ofs:ofs + PAGE]
        return {"closed": {o.txid: o.as_json(self._flag(params, "trades")) for o in page}, "count": len(closed)}

    def _query_orders(self, params: dict[str, str]) -> dict[str, Any]:
        ids = [t for t in params.get("txid", "").split(",") if t]
        if not ids or len(ids) > 50:
            raise KrakenError("EGeneral:Invalid arguments")
        unknown = [t for t in ids if t not in self.orders]
        if unknown:
            raise KrakenError("EOrder:Invalid order")
        return {t: self.orders[t].as_json(self._flag(params, "trades")) for t in ids}

    def _trades_history(self, params: dict[str, str]) -> dict[str, Any]:
        start, end = self._window(params)
        trades = [(txid, t) for txid, t in self.trades.items() if start < t["time"] <= end]
        trades.reverse()  # the most recent first
        ofs = self._offset(params)
        return {"trades": dict(trades[ofs:ofs + PAGE]), "count": len(trades)}

    # -- trading
    def _add_order(self, params: dict[str, str]) -> dict[str, Any]:
        for name in ("pair", "type", "ordertype", "volume"):
            if not params.get(name):
                raise KrakenError(f"EGeneral:Invalid arguments:{name}")
        p = self.pair_of(params["pair"])
        side, ordertype = params["type"], params["ordertype"]
        if side not in ("buy", "sell"):
            raise KrakenError("EGeneral:Invalid arguments:type")
        if ordertype not in ("market", "limit"):
            raise KrakenError("EGeneral:Invalid arguments:ordertype")
        try:
            volume = Decimal(params["volume"])
        except ArithmeticError:
            raise KrakenError("EGeneral:Invalid arguments:volume") from None
        places = -volume.as_tuple().exponent if volume.is_finite() else 0  # type: ignore[operator]
        if not volume.is_finite() or volume <= 0 or places > p.lot_decimals:
            raise KrakenError("EGeneral:Invalid arguments:volume")
        if volume < Decimal(p.ordermin):
            raise KrakenError("EOrder:Order minimum not met")
        price: Decimal | None = None
        if ordertype == "limit":
            try:
                price = Decimal(params.get("price") or "")
            except ArithmeticError:
                raise KrakenError("EOrder:Invalid price") from None
            if not price.is_finite() or price <= 0:
                raise KrakenError("EOrder:Invalid price")
            if price % p.tick:
                raise KrakenError("EOrder:Tick size check failed")
        tif = (params.get("timeinforce") or "GTC").upper()
        if tif not in ("GTC", "IOC", "GTD"):
            raise KrakenError("EGeneral:Invalid arguments:timeinforce")
        oflags = params.get("oflags", "")
        if "fcib" in oflags and "fciq" in oflags:
            raise KrakenError("EGeneral:Invalid arguments:oflags")
        cl_ord_id = params.get("cl_ord_id") or None
        if cl_ord_id is not None:
            if params.get("userref"):
                raise KrakenError("EGeneral:Invalid arguments:cl_ord_id")  # mutually exclusive with userref
            if not (LONG_UUID.match(cl_ord_id) or SHORT_UUID.match(cl_ord_id)
                    or (len(cl_ord_id) <= 18 and cl_ord_id.isascii() and cl_ord_id.isprintable())):
                raise KrakenError("EGeneral:Invalid arguments:cl_ord_id")
            if any(o.cl_ord_id == cl_ord_id and o.status in OPEN for o in self.orders.values()):
                raise KrakenError("EOrder:Duplicate order")
        at = price if price is not None else p.price
        cost = volume * at
        if cost < Decimal(p.costmin):
            raise KrakenError("EOrder:Cost minimum not met")
        # the funds an order may spend, held while it works
        asset, need = (p.quote, cost) if side == "buy" else (p.base, volume)
        if self.balance.get(asset, Decimal(0)) - self.held(asset) < need:
            raise KrakenError("EOrder:Insufficient funds")
        txid = _txid("O", next(self._ids))
        order = Order(txid, p, side, ordertype, volume, price, cl_ord_id,
                      int(params["userref"]) if params.get("userref") else None, oflags, tif, self.now(), held=need)
        self.orders[txid] = order
        if ordertype == "market":
            self._execute(order, volume, p.price, maker=False)
        descr = order.as_json(False)["descr"]["order"]
        return {"descr": {"order": descr}, "txid": [txid]}

    def _cancel_order(self, params: dict[str, str]) -> dict[str, Any]:
        ref = params.get("txid") or params.get("cl_ord_id")
        order = self.orders.get(ref or "")
        if order is None and params.get("cl_ord_id"):
            order = next((o for o in self.orders.values() if o.cl_ord_id == params["cl_ord_id"] and o.status in OPEN),
                         None)
        if order is None or order.status not in OPEN:
            raise KrakenError("EOrder:Unknown order")
        order.status, order.reason, order.closetm, order.held = "canceled", "User requested", self.now(), Decimal(0)
        return {"count": 1}


__all__ = ["Asset", "FakeKraken", "KrakenError", "Order", "Pair"]
