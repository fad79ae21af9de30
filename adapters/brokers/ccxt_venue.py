"""Crypto spot venues on ``ccxt``'s unified API (Binance, Coinbase, Kraken...): ``--broker ccxt:<id>``.

Everything goes through the real ``ccxt`` client of the exchange (its URLs, request signing,
error mapping and market metadata): ``fetch_balance``, ``fetch_open_orders``, ``fetch_orders``,
``fetch_order``, ``fetch_my_trades``, ``create_order``, ``cancel_order``. What this adapter adds:

* **Decimal, never float.** The exchange object runs with ``number = str`` (ccxt's own switch:
  unified amounts stay the strings the venue sent, or ccxt's string arithmetic), and every amount
  is parsed with ``_dec``, which refuses a float: nothing inexact can reach the log.
* **Symbols** are ccxt's unified spelling (``BTC/USDT``) on our orders, fills and positions alike.
  A spot venue holds balances, not positions: the balance of a symbol's base asset is reported as
  the position in that symbol, every other asset (the quote currencies, a fee token) as cash. So
  each base asset may be traded in one symbol per venue (``BTC/USDT`` and ``BTC/USDC`` at one
  venue would share one BTC balance: refused when the adapter is built).
* **The symbols traded are configured** (``symbols``): Binance answers open orders, orders and
  trades per symbol only, so "every order" means every order in these symbols.
* **Fees per trade in the fee currency** the venue charged, never converted. A fee taken in the
  asset received on a buy (BTC on a BTC/USDT buy at Binance) shrinks the position, not the cash:
  the fill carries fee 0 and the fee is an in-kind ``VenueFee`` (snapshot ``fees``, and a "fee"
  update), booked as ``FeeCharged(in_kind)`` under the exec id, once by either path.
* **Client order ids**: sent as ccxt's unified ``clientOrderId`` (Binance ``newClientOrderId``,
  at most 36 characters there). Binance keeps the id unique only *among open orders* (a filled
  order's id is accepted again), so ``submit`` first looks the id up: an order the venue already
  has, open or finished, is returned and never sent twice. "Duplicate order sent." (-2010) on a
  race reads the order back too. An answer lost to a timeout is looked up once by id; if the
  venue does not show it, ``SubmitOutcomeUnknown`` (never "rejected").
* **Bounded waits**: every request has ``timeout`` seconds (ccxt's ``timeout``); a query that times
  out or fails raises ``VenueQueryFailed`` (never an empty list), an unreachable venue or refused
  keys ``VenueConnectionError``.
* **Kraken** (tested against a fake of its documented REST API): AddOrder answers a txid only, so
  the order is read back; every order asks for its fee in the quote currency (``oflags=fciq``)
  and a fee taken in the base asset (an order placed elsewhere: Kraken's default on a sell) is
  read from the order's flags and booked in kind; our id is its ``cl_ord_id`` (free text of at
  most 18 characters, or a UUID), never its numeric ``userref``; closed orders and trades are read
  50 a page by offset (``ofs``); an order id it does not know is ``EOrder:Invalid order``.
* **Coinbase** (Advanced Trade, /api/v3/brokerage; tested against a fake of its documented REST
  API): ccxt's Advanced Trade markets and accounts (available plus hold) are asked for; our id is
  sent as its ``client_order_id`` (ccxt would send its own); a market order is sized in the base
  asset (``base_size``, buys too); fees are in the quote currency; an order id it never issued
  (404 NOT_FOUND) is ``OrderNotFound``; EXPIRED and FAILED stay expired and rejected (ccxt says
  "canceled"); orders, open orders and fills are read every page by ``cursor``.
* **24/7**: there is no trading day, so ``day``/``opg``/``cls`` orders are refused before sending
  (use ``gtc``, ``ioc`` or ``fok``).
* **No stream**: ``updates()`` polls (trades since the last seen, and the orders it sent) and
  yields each ack, fill, cancel, reject and expiry once.
"""

from __future__ import annotations

import decimal
import json
import math
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

from tradestate.adapters.brokers.base import (
    BrokerAdapter,
    OrderNotCancelable,
    OrderNotFound,
    OrderRequest,
    SubmitOutcomeUnknown,
    Unknown,
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
from tradestate.domain.venue import VenueFee

PAGE = 1000  # Binance's maximum for allOrders/myTrades; ccxt passes it as ``limit``
MAX_PAGES = 1000  # every wait is bounded: a venue that pages forever is a failed query
# The REST roots ``base_url`` replaces, per exchange (ccxt's ``urls['api']`` keys and the path
# below the root: see ccxt/binance.py ``describe()['urls']['api']``).
# Binance.US speaks Binance's spot API (ccxt's ``binanceus`` extends ``binance``).
BINANCE_API = ("binance", "binanceus")
# Kraken's paths are /0/public/<Method> and /0/private/<Method> below its root (ccxt/kraken.py sign()).
API_ROOTS: dict[str, dict[str, str]] = {
    **{name: {"public": "/api/v3", "private": "/api/v3", "v1": "/api/v1"} for name in BINANCE_API},
    "kraken": {"public": "", "private": ""},
    # Coinbase's paths are /api/v3/brokerage/... below its one root (ccxt/coinbase.py sign())
    "coinbase": {"rest": ""},
}
# The longest client order id each venue takes (Binance: ^[.A-Z:/a-z0-9_-]{1,36}$; Kraken's
# cl_ord_id: free text of at most 18 ASCII characters, or a UUID: checked in ``submit``).
MAX_CLIENT_ORDER_ID = {**{name: 36 for name in BINANCE_API}, "kraken": 36}
TIME_IN_FORCE = {"gtc": "GTC", "ioc": "IOC", "fok": "FOK"}
# Venues that take fewer (Kraken's AddOrder timeinforce: GTC, IOC, GTD).
TIME_IN_FORCE_AT = {"kraken": {"gtc": "GTC", "ioc": "IOC"}}
# Parameters every order sent there carries. Kraken: the fee in the quote currency (oflags fciq).
# Its default takes a sell's fee in the base asset, and its trades do not say the fee's currency
# (ccxt labels it the quote's): asking for the quote makes the label true.
ORDER_PARAMS: dict[str, dict[str, str]] = {"kraken": {"oflags": "fciq"}}
# Where our client order id goes in the order request. ccxt's coinbase drops the unified
# ``clientOrderId`` and sends its own ``ccxt-<uuid>`` as ``client_order_id`` unless that is given.
CLIENT_ID_PARAM = {"coinbase": "client_order_id"}
# ccxt options per exchange. Coinbase: the Advanced Trade (v3) endpoints: its products for the
# markets (the ``fetchMarkets`` dict every exchange gets in ``__init__`` would send ccxt to the retail
# v2 ones) and its accounts
# for balances (v3 says what open orders hold; ccxt's default is the retail v2 wallet list).
EXCHANGE_OPTIONS: dict[str, dict[str, Any]] = {
    "coinbase": {"fetchMarkets": "fetchMarketsV3", "fetchBalance": "v3PrivateGetBrokerageAccounts"}}
# ccxt capabilities switched off per exchange. Coinbase: load_markets would first read the currency
# list of the retail data API (/v2/currencies, /v2/exchange-rates): not needed to trade spot.
EXCHANGE_HAS: dict[str, dict[str, bool]] = {"coinbase": {"fetchCurrencies": False}}
# Venues whose order and trade lists page by an opaque cursor (Coinbase: ``cursor`` in the answer,
# empty on the last page; ccxt keeps it on one item's ``info``): page size per list.
CURSOR_PAGES = {"coinbase": 250}
# The venue's own order statuses ccxt folds into another (Coinbase EXPIRED and FAILED: "canceled").
RAW_STATUSES: dict[str, dict[str, VenueOrderStatus]] = {"coinbase": {"EXPIRED": "expired", "FAILED": "rejected"}}
# Venues whose order and trade history pages by offset: page size ("50 results are returned at a
# time, the most recent by default": Kraken ClosedOrders, TradesHistory; parameter ``ofs``).
OFFSET_PAGES = {"kraken": 50}
# Where the venue's order answer keeps *our* client order id (ccxt's unified ``clientOrderId``
# falls back to Kraken's numeric ``userref``, which is not ours).
CLIENT_ID_FIELD = {"kraken": "cl_ord_id"}
KRAKEN_UUID = re.compile(r"^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
                         r"|[0-9a-fA-F]{32})$")
# Venues whose order and trade history pages by id (ccxt method -> the venue's cursor parameter).
ID_CURSORS = {name: {"fetch_orders": "orderId", "fetch_my_trades": "fromId"} for name in BINANCE_API}


def _dec(value: Any, what: str, *, optional: bool = False) -> Decimal | None:
    """An exact amount from the venue: a string or int (ccxt with ``number = str``); a float
    means precision was already lost and is refused."""
    if value is None or value == "":
        if optional:
            return None
        raise VenueQueryFailed(f"ccxt: {what} is missing")
    if isinstance(value, float) or isinstance(value, bool):
        raise VenueQueryFailed(f"ccxt: {what} came as {type(value).__name__} {value!r}, not an exact string")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise VenueQueryFailed(f"ccxt: {what} is not a number: {value!r}") from None
    if not d.is_finite():
        raise VenueQueryFailed(f"ccxt: {what} is not finite: {value!r}")
    return d


def _ts(ms: Any) -> datetime | None:
    if ms is None or isinstance(ms, bool):
        return None
    try:
        return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc)
    except (TypeError, ValueError, OverflowError):
        return None


def _iso(text: Any) -> datetime | None:
    """An RFC 3339 time from the venue (None when absent or unreadable)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _ms(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise ValueError("ccxt: times must be timezone-aware")
    return int(moment.timestamp() * 1000)


def _plain(data: Any) -> Any:
    """The venue's raw answer, JSON-safe for the reconciliation record."""
    return json.loads(json.dumps(data, default=str))


def venue_error_code(error: Exception, body: Any = None) -> tuple[int | None, str]:
    """The venue's own error code and message: from its error ``body`` (Binance: ``{"code": -2010,
    "msg": ...}``) when given, else from the ccxt exception's text (``"<exchange id> <body>"``)."""
    if isinstance(body, dict) and "code" in body:
        try:
            return int(body["code"]), str(body.get("msg", ""))
        except (TypeError, ValueError):
            pass
    if isinstance(body, dict) and isinstance(body.get("error"), list) and body["error"]:
        return None, "; ".join(map(str, body["error"]))  # Kraken: {"error": ["EOrder:Insufficient funds"]}
    if isinstance(body, dict) and isinstance(body.get("error_response"), dict):  # Coinbase: an order refused
        refused = body["error_response"]
        return None, f"{refused.get('error')}: {refused.get('message')}"
    if isinstance(body, dict) and isinstance(body.get("results"), list):  # Coinbase: a cancel refused
        return None, "; ".join(str(r.get("failure_reason")) for r in body["results"]
                               if isinstance(r, dict) and r.get("success") is not True)
    if isinstance(body, dict) and isinstance(body.get("error"), str):  # Coinbase: {"error", "message"}
        return None, f"{body['error']}: {body.get('message', '')}"
    text = str(error)
    start = text.find("{")
    if start >= 0:
        try:
            body = json.loads(text[start:])
            code = body.get("code")
            return (int(code) if code is not None else None), str(body.get("msg", text))
        except (ValueError, TypeError, AttributeError):
            pass
    return None, text


def map_status(unified: str | None, filled: Decimal) -> VenueOrderStatus:
    """ccxt's unified order status in our words (an open order with fills is partially filled)."""
    if unified == "open":
        return "partially_filled" if filled > 0 else "open"
    return {"closed": "filled", "canceled": "cancelled", "rejected": "rejected",
            "expired": "expired"}.get(unified or "", "unknown")  # type: ignore[return-value]


class CcxtAdapter(BrokerAdapter):
    """One account at one crypto spot venue, through ``ccxt.<exchange>``."""

    def __init__(
        self,
        *,
        account: str,
        exchange: str,
        symbols: Sequence[str] | str,
        api_key: str,
        secret: str,
        password: str | None = None,
        venue: str | None = None,
        base_url: str | None = None,
        timeout: float = 10.0,
        rate_limit: bool = True,
    ) -> None:
        import ccxt  # the adapter's one dependency: imported here so the registry can say it is missing

        if not account:
            raise ValueError("ccxt: account (our account id) is required")
        if not exchange or not hasattr(ccxt, exchange) or exchange not in ccxt.exchanges:
            raise ValueError(f"ccxt: unknown exchange {exchange!r} (ccxt knows {len(ccxt.exchanges)}, e.g. "
                             "binance, coinbase, kraken)")
        if not api_key or not secret:
            raise ValueError(f"ccxt:{exchange}: api_key and secret are both required")
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"ccxt: timeout must be a positive number of seconds, not {timeout!r}")
        if isinstance(symbols, str):
            symbols = [s.strip() for s in symbols.replace(" ", ",").split(",") if s.strip()]
        self.symbols = list(dict.fromkeys(symbols))
        if not self.symbols:
            raise ValueError(f"ccxt:{exchange}: give the symbols traded there (e.g. BTC/USDT)")
        bases: dict[str, str] = {}
        for symbol in self.symbols:
            if symbol.count("/") != 1 or ":" in symbol:
                raise ValueError(f"ccxt: {symbol!r} is not a unified spot symbol like BTC/USDT")
            base = symbol.split("/")[0]
            if base in bases:
                raise ValueError(f"ccxt:{exchange}: {bases[base]} and {symbol} share the base asset {base}; "
                                 "one symbol per base asset and venue (the venue holds one balance of it)")
            bases[base] = symbol
        self._symbol_of_base = bases
        self.exchange_id = exchange
        self.broker = f"ccxt:{exchange}"
        self.account = account
        self.venue = venue or exchange.upper()
        self.timeout = float(timeout)
        config: dict[str, Any] = {
            "apiKey": api_key, "secret": secret, "timeout": int(self.timeout * 1000),
            "enableRateLimit": rate_limit,
            "enableLastJsonResponse": True,  # the venue's error body (its own code) behind a ccxt error
            "options": {
                "defaultType": "spot",
                "fetchMarkets": {"types": ["spot"]},  # spot venues: no futures metadata
                "fetchCurrencies": False,  # a private wallet call we do not need
                "fetchMargins": False,
                "warnOnFetchOpenOrdersWithoutSymbol": False,
            },
        }
        config["options"].update(EXCHANGE_OPTIONS.get(exchange, {}))
        if exchange in EXCHANGE_HAS:
            config["has"] = EXCHANGE_HAS[exchange]
        if password:
            config["password"] = password
        self._ccxt = getattr(ccxt, exchange)(config)
        self._ccxt.number = str  # unified amounts as strings: exact (see the module docstring)
        if base_url:
            roots = API_ROOTS.get(exchange)
            if roots is None:
                raise ValueError(f"ccxt:{exchange}: base_url is supported for {', '.join(API_ROOTS)} only")
            api = dict(self._ccxt.urls["api"])
            api.update({key: base_url.rstrip("/") + path for key, path in roots.items()})
            self._ccxt.urls["api"] = api
        self.base_url = base_url
        self._errors = ccxt  # the exception classes
        # what a look-up by the venue's order id raises for an id the venue does not know (Kraken's
        # QueryOrders answers EOrder:Invalid order, which ccxt raises as InvalidOrder)
        self._not_found: tuple[type[Exception], ...] = (ccxt.OrderNotFound,) + (
            (ccxt.InvalidOrder,) if exchange == "kraken" else ())
        self._lock = threading.RLock()  # ccxt's sync client shares one session
        self._client_ids: dict[str, str | None] = {}  # venue order id -> client order id (immutable)
        self._symbol_of_order: dict[str, str] = {}
        self._markets_loaded = False
        self._fees_in_kind: dict[str, VenueFee] = {}  # exec id -> the fee it paid in the asset bought
        # Kraken: venue order id -> its fee is taken in the base asset. Its trades carry no fee
        # currency (ccxt labels every one the quote's); the order's oflags decide: fcib, or neither
        # flag on a sell ("fcib ... default if selling"), takes the base asset
        self._fee_in_base: dict[str, bool] = {}
        # updates(): what was already reported
        self._sent: dict[str, str] = {}  # venue order id -> symbol, orders submit() sent and still open
        self._seen: set[tuple] = set()
        self._trades_since: int | None = None
        self._next_trade_id: dict[str, int] = {}  # id-cursor venues: symbol -> the next trade id to read

    # -- the ccxt call ------------------------------------------------------------------------

    def _call(self, what: str, method: str, *args: Any, passthrough: tuple[type[Exception], ...] = (),
              with_answer: bool = False, **kwargs: Any) -> Any:
        """One ccxt call with its errors in our words (bounded by ccxt's ``timeout``); the ccxt
        errors in ``passthrough`` reach the caller as they are (it tells them apart).
        ``with_answer``: (ccxt's result, the venue's JSON answer as it came)."""
        e = self._errors
        # ccxt sets rounding and traps on the thread's decimal context (decimal_to_precision): kept
        # inside this call, or the engine's own Decimal arithmetic on this thread would round otherwise
        with self._lock, decimal.localcontext():
            try:
                if not self._markets_loaded:
                    self._ccxt.load_markets()
                    self._markets_loaded = True
                    unknown = [s for s in self.symbols if s not in self._ccxt.markets]
                    if unknown:
                        raise VenueQueryFailed(f"{self.broker}: {', '.join(unknown)} not listed at the venue")
                result = getattr(self._ccxt, method)(*args, **kwargs)
                return (result, self._ccxt.last_json_response) if with_answer else result
            except e.AuthenticationError as x:
                raise VenueConnectionError(f"{self.broker}: {what}: the venue refused our API key: {x}") from None
            except e.InvalidNonce as x:
                raise VenueQueryFailed(f"{self.broker}: {what}: the venue refused our request time or nonce (a "
                                       "clock difference beyond its receive window; at Kraken, another client "
                                       f"using this API key with a larger nonce): {x}") from None
            except e.RequestTimeout:
                raise VenueQueryFailed(f"{self.broker}: {what}: no answer within {self.timeout:g} s") from None
            except e.NetworkError as x:  # ExchangeNotAvailable, DDoSProtection, connection errors
                raise VenueConnectionError(f"{self.broker}: {what}: cannot reach the venue: {x}") from None
            except e.BaseError as x:
                body = self._ccxt.last_json_response  # read under the lock: the next call replaces it
                x = self._unknown_order(x, body)
                if isinstance(x, passthrough):
                    x.venue_body = body
                    raise x from None
                # any other refusal: the answer is unknown, never empty
                raise VenueQueryFailed(f"{self.broker}: {what}: {x}") from None

    def _unknown_order(self, error: Exception, body: Any) -> Exception:
        """Coinbase answers an order id it never issued with HTTP 404 ``{"error": "NOT_FOUND",
        "message": "order with this orderID was not found"}``, which ccxt raises as a plain
        ExchangeError (its pattern for it reads "self orderID"): ccxt's OrderNotFound here."""
        if (self.exchange_id == "coinbase" and isinstance(body, dict) and body.get("error") == "NOT_FOUND"
                and "order" in str(body.get("message", "")).lower()):
            return self._errors.OrderNotFound(str(error))
        return error

    # -- parsing --------------------------------------------------------------------------------

    def _client_id_of(self, raw: dict[str, Any]) -> str | None:
        """Our client order id on a ccxt order (Kraken: its ``cl_ord_id``, never the ``userref``)."""
        field_name = CLIENT_ID_FIELD.get(self.exchange_id)
        return ((raw.get("info") or {}).get(field_name) if field_name else raw.get("clientOrderId")) or None

    def _order(self, raw: dict[str, Any], fills: Iterable[VenueFill] = ()) -> VenueOrder:
        vid = str(raw.get("id") or "")
        if not vid:
            raise VenueQueryFailed(f"{self.broker}: an order without id: {str(raw.get('info'))[:200]}")
        filled = _dec(raw.get("filled"), f"order {vid} filled", optional=True) or Decimal(0)
        qty = _dec(raw.get("amount"), f"order {vid} amount")
        info = raw.get("info") or {}
        coid = self._client_id_of(raw)
        symbol = raw.get("symbol") or ""
        self._client_ids.setdefault(vid, coid)
        self._symbol_of_order[vid] = symbol
        if self.exchange_id == "kraken":  # where its trades' fees are taken (they do not say)
            flags = str(info.get("oflags") or "")
            self._fee_in_base[vid] = "fcib" in flags or ("fciq" not in flags and raw.get("side") == "sell")
        tif = str(raw.get("timeInForce") or info.get("timeinforce") or "gtc").lower()
        order_type = str(raw.get("type") or "").lower()
        return VenueOrder(
            venue_order_id=vid, client_order_id=coid, symbol=symbol, side=raw.get("side"),  # type: ignore[arg-type]
            order_type=order_type if order_type in ("market", "limit") else order_type or "limit",
            qty=qty, filled_qty=filled,  # type: ignore[arg-type]
            status=RAW_STATUSES.get(self.exchange_id, {}).get(str(info.get("status")),
                                                          map_status(raw.get("status"), filled)),
            raw_status=str(info.get("status") or raw.get("status") or ""),
            limit_price=_dec(raw.get("price"), f"order {vid} price", optional=True) if order_type == "limit" else None,
            stop_price=_dec(raw.get("triggerPrice"), f"order {vid} trigger price", optional=True),
            avg_fill_price=_dec(raw.get("average"), f"order {vid} average", optional=True) if filled else None,
            time_in_force=tif if tif in ("gtc", "ioc", "fok") else "gtc",
            submitted_at=_ts(raw.get("timestamp")),
            # Coinbase: ccxt leaves the last trade's time out; the order's last_fill_time has it
            updated_at=(_ts(raw.get("lastUpdateTimestamp") or raw.get("lastTradeTimestamp"))
                        or _iso(info.get("last_fill_time")) or _ts(raw.get("timestamp"))),
            fills=tuple(fills),
            raw=_plain(info),
        )

    def _fill(self, raw: dict[str, Any]) -> VenueFill:
        """A trade. A fee taken in the symbol's base asset (BTC on a Binance BTC/USDT buy) is not a
        cash fee: the position shrinks by it. The fill then carries fee 0 and the fee is kept as
        an in-kind ``VenueFee`` (fee id: the exec id), reported in the snapshot's ``fees`` and by
        ``updates()`` as a "fee" update, so the log books it as ``FeeCharged(in_kind)`` once."""
        exec_id = str(raw.get("id") or "")
        vid = str(raw.get("order") or "")
        if not exec_id or not vid:
            raise VenueQueryFailed(f"{self.broker}: a trade without id or order: {str(raw.get('info'))[:200]}")
        fee = raw.get("fee") or {}
        fee_cost = _dec(fee.get("cost"), f"trade {exec_id} fee", optional=True) or Decimal(0)
        fee_currency = str(fee.get("currency") or "USD")
        symbol = raw.get("symbol") or ""
        if self._fee_in_base.get(vid) and "/" in symbol:
            fee_currency = symbol.split("/")[0]
        when = _ts(raw.get("timestamp"))
        if fee_cost and "/" in symbol and fee_currency == symbol.split("/")[0]:
            self._fees_in_kind[exec_id] = VenueFee(fee_id=exec_id, amount=fee_cost, currency=fee_currency,
                                                   symbol=symbol, in_kind=True, occurred_at=when,
                                                   raw=_plain(raw.get("info") or {}))
            fee_cost = Decimal(0)
        return VenueFill(
            exec_id=exec_id, client_order_id=self._client_ids.get(vid), venue_order_id=vid,
            symbol=symbol, side=raw.get("side"),  # type: ignore[arg-type]
            qty=_dec(raw.get("amount"), f"trade {exec_id} amount"),  # type: ignore[arg-type]
            price=_dec(raw.get("price"), f"trade {exec_id} price"),  # type: ignore[arg-type]
            fee=fee_cost, fee_currency=fee_currency, occurred_at=when, raw=_plain(raw.get("info") or {}),
        )

    def fee_in_kind(self, exec_id: str) -> VenueFee | None:
        """The fee an execution paid in the asset it bought (None: none, or paid in cash)."""
        return self._fees_in_kind.get(exec_id)

    def snapshot(self, since: datetime | None = None, *, now: datetime) -> VenueSnapshot:
        """Every report (``BrokerAdapter.snapshot``) and, as ``fees``, the fees the listed
        executions paid in the asset they bought (unknown when the fills are)."""
        snap = super().snapshot(since, now=now)
        if isinstance(snap.fills, Unknown):
            return replace(snap, fees=Unknown(snap.fills.reason))
        return replace(snap, fees=[fee for f in snap.fills if (fee := self.fee_in_kind(f.exec_id)) is not None])

    # -- queries ------------------------------------------------------------------------------

    def _balance_totals(self) -> tuple[dict[str, Decimal], dict[str, Any]]:
        answer = self._call("balances", "fetch_balance")
        totals = answer.get("total") if isinstance(answer, dict) else None
        if not isinstance(totals, dict):
            raise VenueQueryFailed(f"{self.broker}: balances: no totals in the answer")
        out = {}
        for asset, amount in totals.items():
            value = _dec(amount, f"{asset} balance", optional=True)
            if value:
                out[asset] = value
        return out, answer

    def positions(self) -> list[VenuePosition]:
        """The balance of each traded symbol's base asset (free plus locked in open orders)."""
        totals, answer = self._balance_totals()
        return [VenuePosition(symbol=self._symbol_of_base[asset], qty=qty,
                              raw=_plain({"asset": asset, **{k: (answer.get(asset) or {}).get(k)
                                                             for k in ("free", "used", "total")}}))
                for asset, qty in sorted(totals.items()) if asset in self._symbol_of_base]

    def balances(self) -> list[VenueBalance]:
        """Every other asset held (the quote currencies, a fee token) as cash at this venue."""
        totals, answer = self._balance_totals()
        return [VenueBalance(currency=asset, cash=qty,
                             raw=_plain({"asset": asset, **{k: (answer.get(asset) or {}).get(k)
                                                            for k in ("free", "used", "total")}}))
                for asset, qty in sorted(totals.items()) if asset not in self._symbol_of_base]

    def open_orders(self) -> list[VenueOrder]:
        orders = []
        for symbol in self.symbols:
            if self.exchange_id in CURSOR_PAGES:  # Coinbase: 100 a page by default, read every page
                raws = self._paged(f"open orders {symbol}", "fetch_open_orders", symbol, None)
            else:
                raws = self._call(f"open orders {symbol}", "fetch_open_orders", symbol)
            orders.extend(self._order(raw) for raw in raws)
        return orders

    def _paged(self, what: str, method: str, symbol: str, since: datetime | None,
               first_id: int = 0, extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every item (order or trade) since ``since`` (all of them when None), every page.

        Binance answers a ``startTime`` with a 24-hour window only (myTrades, allOrders), so there
        the pages follow the id cursor (``fromId`` / ``orderId``: items with that id or later)
        from the start, and ``since`` is applied here. Elsewhere the pages follow time: the newest
        time of a page starts the next (ids deduplicate the overlap) until a page adds nothing.
        Offset venues (Kraken): ``_offset_paged``."""
        if self.exchange_id in OFFSET_PAGES:
            return self._offset_paged(what, method, symbol, since, OFFSET_PAGES[self.exchange_id], extra or {})
        if self.exchange_id in CURSOR_PAGES:
            return self._cursor_paged(what, method, symbol, since, CURSOR_PAGES[self.exchange_id], extra or {})
        seen: dict[str, dict[str, Any]] = {}
        cursor_key = ID_CURSORS.get(self.exchange_id, {}).get(method)
        start = _ms(since) if since is not None else None
        cursor = first_id  # id-cursor venues: the first id wanted (updates() goes on from the last seen)
        for _ in range(MAX_PAGES):
            if cursor_key:
                page = self._call(what, method, symbol, None, PAGE, {cursor_key: cursor})
            else:
                page = self._call(what, method, symbol, start, PAGE)
            if not isinstance(page, list):
                raise VenueQueryFailed(f"{self.broker}: {what}: expected a list")
            new = [item for item in page if str(item.get("id")) not in seen]
            for item in new:
                seen[str(item.get("id"))] = item
            if len(page) < PAGE or not new:
                break
            if cursor_key:
                cursor = max(int(item["id"]) for item in page) + 1
            else:
                start = max(int(item.get("timestamp") or 0) for item in page)
        else:
            raise VenueQueryFailed(f"{self.broker}: {what}: more than {MAX_PAGES} pages")
        items = list(seen.values())
        if since is not None and cursor_key:
            items = [i for i in items if i.get("status") == "open" or
                     max(int(i.get(k) or 0) for k in ("timestamp", "lastUpdateTimestamp", "lastTradeTimestamp"))
                     >= (start or 0)]
        return items

    def _offset_paged(self, what: str, method: str, symbol: str, since: datetime | None,
                      size: int, extra: dict[str, Any]) -> list[dict[str, Any]]:
        """Kraken's ClosedOrders and TradesHistory: ``size`` items a page, the newest first, ``ofs``
        the offset, ``start`` an exclusive unix time (a second early: the window only widens).
        The pages are counted on the venue's answer, which lists every pair, not on ccxt's list of
        this symbol's items; an item that arrives between two pages shifts the later ones, so one
        may be read twice (ids deduplicate), none is missed. ``since`` goes to the venue as
        ``start``, not to ccxt, which would drop an order opened before ``since`` and closed after."""
        params: dict[str, Any] = {**extra, **({} if since is None else {"start": int(since.timestamp()) - 1})}
        seen: dict[str, dict[str, Any]] = {}
        for number in range(MAX_PAGES):
            page, answer = self._call(what, method, symbol, None, None, {**params, "ofs": number * size},
                                      with_answer=True)
            result = answer.get("result") if isinstance(answer, dict) else None
            listed = next((result[k] for k in ("closed", "trades") if isinstance(result, dict)
                           and isinstance(result.get(k), dict)), None)
            if not isinstance(page, list) or listed is None:
                raise VenueQueryFailed(f"{self.broker}: {what}: the answer has no list of items")
            for item in page:
                seen[str(item.get("id"))] = item
            try:
                total = int(result.get("count") or 0)  # type: ignore[union-attr]
            except (TypeError, ValueError):
                raise VenueQueryFailed(f"{self.broker}: {what}: count is not a number") from None
            if len(listed) < size or (number + 1) * size >= total:
                return list(seen.values())
        raise VenueQueryFailed(f"{self.broker}: {what}: more than {MAX_PAGES} pages")

    def _cursor_paged(self, what: str, method: str, symbol: str, since: datetime | None,
                      size: int, extra: dict[str, Any]) -> list[dict[str, Any]]:
        """Coinbase's lists (orders, fills): ``size`` a page, each page's ``cursor`` asks for the
        next, an empty one ends. Fills since ``since`` are asked of the venue (the fill's time);
        orders are not (it filters by the creation time, which would drop an order placed before
        ``since`` and filled after): every page is read and an order kept when it is open, or was
        placed or last filled since then."""
        start = _ms(since) if since is not None and method == "fetch_my_trades" else None
        params = dict(extra)
        seen: dict[str, dict[str, Any]] = {}
        for _ in range(MAX_PAGES):
            page = self._call(what, method, symbol, start, size, params)
            if not isinstance(page, list):
                raise VenueQueryFailed(f"{self.broker}: {what}: expected a list")
            for item in page:
                seen[str(item.get("id"))] = item
            # ccxt puts the answer's cursor on the first item it got, then sorts the items by time
            cursor = next((c for item in page if (c := (item.get("info") or {}).get("cursor"))), None)
            if not cursor:
                break
            params = {**extra, "cursor": cursor}
        else:
            raise VenueQueryFailed(f"{self.broker}: {what}: more than {MAX_PAGES} pages")
        items = list(seen.values())
        if since is not None and start is None:
            floor = _ms(since) or 0
            items = [i for i in items if i.get("status") == "open" or int(i.get("timestamp") or 0) >= floor
                     or int(_ms(_iso((i.get("info") or {}).get("last_fill_time"))) or 0) >= floor]
        return items

    def recent_orders(self, since: datetime | None = None) -> list[VenueOrder]:
        orders = []
        for symbol in self.symbols:
            for raw in self._history(symbol, since):
                orders.append(self._order(raw))
        return orders

    def _history(self, symbol: str, since: datetime | None,
                 client_order_id: str | None = None) -> list[dict[str, Any]]:
        """Open and finished orders of ``symbol``: ``fetch_orders`` where the venue has it (Binance
        allOrders), else its open orders and ``fetch_closed_orders`` (Kraken). ``client_order_id``:
        only that id's, asked of the venue where it filters by it (Kraken's cl_ord_id)."""
        if self._ccxt.has.get("fetchOrders") is True:
            return self._paged(f"orders {symbol}", "fetch_orders", symbol, since)
        only = {"clientOrderId": client_order_id} if client_order_id and self.exchange_id in CLIENT_ID_FIELD else {}
        return [*self._call(f"open orders {symbol}", "fetch_open_orders", symbol, None, None, only),
                *self._paged(f"closed orders {symbol}", "fetch_closed_orders", symbol, since, extra=only)]

    def fills(self, since: datetime | None = None) -> list[VenueFill]:
        return self._fills_of(since, {})

    def _fills_of(self, since: datetime | None, first_ids: dict[str, int], *, advance: bool = False) -> list[VenueFill]:
        raws = []
        for symbol in self.symbols:
            raws.extend(self._paged(f"trades {symbol}", "fetch_my_trades", symbol, since, first_ids.get(symbol, 0)))
        for raw in raws:  # a trade carries its venue order id only: learn the order's client id once
            vid, symbol = str(raw.get("order") or ""), raw.get("symbol")
            if vid and vid not in self._client_ids and symbol:
                try:
                    self._order(self._call(f"order {vid}", "fetch_order", vid, symbol, passthrough=self._not_found))
                except self._not_found:
                    self._client_ids[vid] = None
        if advance and ID_CURSORS.get(self.exchange_id):  # where updates()' next poll starts (only it moves it)
            for raw in raws:
                symbol = raw.get("symbol") or ""
                self._next_trade_id[symbol] = max(self._next_trade_id.get(symbol, 0), int(raw["id"]) + 1)
        return sorted((self._fill(r) for r in raws), key=lambda f: (f.occurred_at or datetime.min.replace(
            tzinfo=timezone.utc), f.exec_id))

    def _with_fills(self, order: VenueOrder) -> VenueOrder:
        if order.filled_qty <= 0:
            return order
        what = f"trades of order {order.venue_order_id}"
        if self.exchange_id in BINANCE_API:
            trades = self._call(what, "fetch_my_trades", order.symbol, None, PAGE, {"orderId": order.venue_order_id})
        elif self.exchange_id in CURSOR_PAGES:  # Coinbase's fills filter by order (order_ids)
            trades = self._paged(what, "fetch_my_trades", order.symbol, None, extra={"order_ids": order.venue_order_id})
        else:  # no filter by order: every trade since the order was placed, all pages
            trades = self._paged(what, "fetch_my_trades", order.symbol, order.submitted_at)
        fills = tuple(self._fill(t) for t in trades if str(t.get("order")) == order.venue_order_id)
        return VenueOrder(**{**order.__dict__, "fills": fills})

    def order_by_venue_id(self, venue_order_id: str, symbol: str | None = None) -> VenueOrder:
        """One order by the venue's id (its symbol: known from earlier answers, else each traded
        symbol is asked), with its executions."""
        symbols = [symbol or self._symbol_of_order.get(venue_order_id)] if (
            symbol or venue_order_id in self._symbol_of_order) else self.symbols
        for s in symbols:
            try:
                return self._with_fills(self._order(self._call(f"order {venue_order_id}", "fetch_order",
                                                               venue_order_id, s, passthrough=self._not_found)))
            except self._not_found:
                continue
        raise OrderNotFound(f"{self.broker}: no order {venue_order_id!r}")

    def order_by_client_id(self, client_order_id: str, symbol: str | None = None) -> VenueOrder:
        """The venue's (latest) order under our id, with its executions; ``OrderNotFound`` if none.
        Binance looks it up by ``origClientOrderId``; elsewhere the order history is searched
        (ccxt's unified ``fetch_order`` takes the venue's id there). ``symbol``: the order's, when
        known (a submit's): only it is asked, else every traded symbol."""
        symbols = [symbol] if symbol is not None else self.symbols
        if self.exchange_id not in BINANCE_API:
            for symbol in symbols:
                found = [raw for raw in self._history(symbol, None, client_order_id)
                         if self._client_id_of(raw) == client_order_id]
                if found:
                    latest = max(found, key=lambda raw: (int(raw.get("timestamp") or 0), str(raw.get("id"))))
                    return self._with_fills(self._order(latest))
            raise OrderNotFound(f"{self.broker}: no order with client order id {client_order_id!r}")
        for symbol in symbols:
            try:
                raw = self._call(f"order {client_order_id}", "fetch_order", None, symbol,
                                 {"clientOrderId": client_order_id}, passthrough=(self._errors.OrderNotFound,))
            except self._errors.OrderNotFound:
                continue
            return self._with_fills(self._order(raw))
        raise OrderNotFound(f"{self.broker}: no order with client order id {client_order_id!r}")

    # -- live order flow ------------------------------------------------------------------------

    def submit(self, request: OrderRequest) -> VenueOrder:
        """Send a recorded intent under its client order id. The venue's order under that id
        (open or finished) is returned instead of sending it again. A refusal by the venue (e.g.
        Binance -2010, too little balance) comes back as a ``rejected`` order whose ``raw`` has
        ``reject_reason`` and ``code``; nothing was placed."""
        cid = request.client_order_id
        limit = MAX_CLIENT_ORDER_ID.get(self.exchange_id, 64)
        if not cid or len(cid) > limit:
            raise ValueError(f"{self.broker}: client_order_id {cid!r} must have 1 to {limit} characters "
                             "(nothing was sent)")
        if self.exchange_id == "kraken" and len(cid) > 18 and not KRAKEN_UUID.match(cid):
            raise ValueError(f"{self.broker}: client_order_id {cid!r}: Kraken's cl_ord_id is free text of at most "
                             "18 characters or a UUID (nothing was sent)")
        if request.symbol not in self.symbols:
            raise ValueError(f"{self.broker}: {request.symbol!r} is not among the symbols traded here "
                             f"({', '.join(self.symbols)})")
        if request.side not in ("buy", "sell"):
            raise ValueError(f"{self.broker}: side must be buy or sell, not {request.side!r}")
        if request.order_type not in ("market", "limit"):
            raise ValueError(f"{self.broker}: {request.order_type} orders are not supported (market, limit)")
        for name in ("qty", "limit_price"):
            value = getattr(request, name)
            if value is not None and (not isinstance(value, Decimal) or not value.is_finite() or value <= 0):
                raise ValueError(f"{self.broker}: {name} must be a positive finite Decimal, not {value!r}")
        if request.order_type == "limit" and request.limit_price is None:
            raise ValueError(f"{self.broker}: a limit order needs a limit price")
        params: dict[str, Any] = {CLIENT_ID_PARAM.get(self.exchange_id, "clientOrderId"): cid,
                                  **ORDER_PARAMS.get(self.exchange_id, {})}
        if request.order_type == "limit":
            taken = TIME_IN_FORCE_AT.get(self.exchange_id, TIME_IN_FORCE)
            tif = taken.get(request.time_in_force)
            if tif is None:
                raise ValueError(f"{self.broker}: time in force {request.time_in_force!r} is not taken at this 24/7 "
                                 f"venue; use {', '.join(taken)} (nothing was sent)")
            params["timeInForce"] = tif
        elif self.exchange_id == "coinbase":
            # ccxt sizes a Coinbase market buy in the quote currency (quote_size = qty x a price we do
            # not give); our order is in base units: its base_size, which the API takes on both sides
            params.update({"createMarketBuyOrderRequiresPrice": False,
                           "order_configuration": {"market_market_ioc": {"base_size": format(request.qty, "f")}}})
        self._on_grid(request)
        try:
            existing = self.order_by_client_id(cid, request.symbol)
        except OrderNotFound:
            existing = None
        if existing is not None:
            return existing  # sent before (a retry after a crash): never twice
        try:
            raw = self._call(f"submit {cid}", "create_order", request.symbol, request.order_type, request.side,
                             format(request.qty, "f"),
                             None if request.limit_price is None else format(request.limit_price, "f"), params,
                             passthrough=(self._errors.ExchangeError,))
        except VenueQueryFailed as x:  # timeout: the order may or may not be there
            return self._resolve_ambiguous(cid, request.symbol, x)
        except VenueConnectionError as x:
            if "API key" in str(x):
                raise
            return self._resolve_ambiguous(cid, request.symbol, x)
        except self._errors.ExchangeError as x:
            code, message = venue_error_code(x, getattr(x, "venue_body", None))
            if "duplicate order" in message.lower():  # Binance -2010, Kraken EOrder:Duplicate order
                # a race with another sender: the venue's order
                return self.order_by_client_id(cid, request.symbol)
            return VenueOrder(
                venue_order_id="", client_order_id=cid, symbol=request.symbol, side=request.side,
                order_type=request.order_type, qty=request.qty, filled_qty=Decimal(0), status="rejected",
                raw_status="REJECTED", limit_price=request.limit_price,
                time_in_force=request.time_in_force,
                raw={"reject_reason": f"{message} (code {code})" if code is not None else message, "code": code},
            )
        if raw.get("status") is None and raw.get("id"):
            # the answer says the order is placed, not its state (Kraken: a txid and a description)
            try:
                raw = self._call(f"order {raw['id']}", "fetch_order", raw["id"], request.symbol)
            except VenueError:
                pass  # placed all the same: its state comes with the next look-up
        order = self._order(raw)
        if order.client_order_id is None:
            order = VenueOrder(**{**order.__dict__, "client_order_id": cid})
            self._client_ids[order.venue_order_id] = cid
        if order.is_open or order.status == "unknown":  # unknown: placed, its state not read back yet
            self._sent[order.venue_order_id] = order.symbol
        if order.filled_qty > 0:  # filled on arrival (a market order): its executions
            order = self._with_fills(order)
        return order

    def _on_grid(self, request: OrderRequest) -> None:
        """ccxt would silently truncate an amount or price to the market's step (its
        ``amount_to_precision``): the venue would then work another quantity than the log holds.
        Off-grid values are refused instead, before anything is sent."""
        checks = [("qty", request.qty, "amount_to_precision")]
        if request.limit_price is not None:
            checks.append(("limit_price", request.limit_price, "price_to_precision"))
        for name, value, method in checks:
            try:
                rounded = self._call(f"{name} precision", method, request.symbol, format(value, "f"),
                                     passthrough=(self._errors.InvalidOrder,))
            except self._errors.InvalidOrder as x:
                raise ValueError(f"{self.broker}: {name} {value} of {request.symbol} is refused: {x} "
                                 "(nothing was sent)") from None
            if Decimal(str(rounded)) != value:
                step = self._ccxt.markets[request.symbol]["precision"]["amount" if name == "qty" else "price"]
                raise ValueError(f"{self.broker}: {name} {value} of {request.symbol} is not a multiple of the "
                                 f"venue's step {step} (it would be sent as {rounded}); nothing was sent")

    def _resolve_ambiguous(self, cid: str, symbol: str, cause: Exception) -> VenueOrder:
        try:
            return self.order_by_client_id(cid, symbol)
        except OrderNotFound:
            raise SubmitOutcomeUnknown(f"{self.broker}: submit of {cid} got no answer ({cause}) and the venue "
                                       "does not show it yet; look it up by client_order_id later") from None
        except VenueError as e:
            raise SubmitOutcomeUnknown(f"{self.broker}: submit of {cid} got no answer ({cause}); the look-up "
                                       f"failed too ({e})") from None

    def cancel(self, venue_order_id: str) -> None:
        """Ask the venue to cancel; ``OrderNotCancelable`` for a finished order, ``OrderNotFound``
        for one it does not know (Binance answers both with -2011: told apart by a look-up)."""
        symbol = self._symbol_of_order.get(venue_order_id)
        if symbol is None:
            symbol = self.order_by_venue_id(venue_order_id).symbol  # OrderNotFound passes through
        try:
            self._call(f"cancel {venue_order_id}", "cancel_order", venue_order_id, symbol,
                       passthrough=(self._errors.ExchangeError,))
        except self._errors.ExchangeError as x:
            code, message = venue_error_code(x, getattr(x, "venue_body", None))
            try:
                order = self.order_by_venue_id(venue_order_id, symbol)
            except OrderNotFound:
                raise OrderNotFound(f"{self.broker}: no order {venue_order_id!r} to cancel") from None
            raise OrderNotCancelable(f"{self.broker}: order {venue_order_id} is {order.status}, not cancelable: "
                                     f"{message} (code {code})") from None

    def updates(self) -> Iterator[VenueUpdate]:
        """Poll: new trades of the traded symbols (fills), and the state of the orders ``submit``
        sent (ack once, then their terminal update). Each update is yielded once."""
        since = None if self._trades_since is None else datetime.fromtimestamp(self._trades_since / 1000,
                                                                             tz=timezone.utc)
        for f in self._fills_of(since, dict(self._next_trade_id), advance=True):
            key = ("fill", f.exec_id)
            if f.occurred_at is not None:
                self._trades_since = max(self._trades_since or 0, _ms(f.occurred_at) or 0)
            if key in self._seen:
                continue
            self._seen.add(key)
            yield VenueUpdate("fill", f.client_order_id, f.venue_order_id, fill=f, occurred_at=f.occurred_at,
                              raw=f.raw)
            in_kind = self.fee_in_kind(f.exec_id)
            if in_kind is not None:  # then its fee, taken in the asset bought (recorded in kind)
                yield VenueUpdate("fee", f.client_order_id, f.venue_order_id,
                                  fill=replace(f, fee=in_kind.amount, fee_currency=in_kind.currency),
                                  occurred_at=f.occurred_at, raw=f.raw)
        for vid, symbol in list(self._sent.items()):
            order = self.order_by_venue_id(vid, symbol)
            if ("ack", vid) not in self._seen:
                self._seen.add(("ack", vid))
                yield VenueUpdate("ack", order.client_order_id, vid, occurred_at=order.submitted_at, raw=order.raw)
            if not order.is_open:
                del self._sent[vid]
                kind = {"cancelled": "cancelled", "rejected": "rejected", "expired": "expired"}.get(order.status)
                if kind and (kind, vid) not in self._seen:
                    self._seen.add((kind, vid))
                    yield VenueUpdate(kind, order.client_order_id, vid, reason=order.raw_status,  # type: ignore[arg-type]
                                      occurred_at=order.updated_at, raw=order.raw)

    def close(self) -> None:
        session = getattr(self._ccxt, "session", None)
        if session is not None:
            session.close()


__all__ = ["CcxtAdapter", "OrderNotCancelable", "SubmitOutcomeUnknown", "map_status", "venue_error_code"]
