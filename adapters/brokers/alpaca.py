"""Alpaca adapter on alpaca-py: REST reports, idempotent submit, trade-updates stream with backfill.

Everything goes through alpaca-py's own ``TradingClient`` (its session, URL building and auth
headers) and ``TradingStream`` (its websocket protocol and reconnect loop), with four changes:

* **Raw, Decimal-exact data.** alpaca-py's models turn prices into float and reject enum values
  they do not know, so every answer is read as raw JSON (numbers parsed as ``Decimal``; Alpaca
  sends amounts as strings anyway) into our own tolerant parsing: an order status we do not know
  becomes ``status="unknown"`` with ``raw_status`` kept, never an exception.
* **A timeout on every request, and no blind retries.** alpaca-py sends requests with no timeout
  and retries any method on HTTP 429/504, a POST included. Here every request has ``timeout``
  seconds; only GETs are retried (once) on 429/504. Orders go out only with our
  ``client_order_id`` (at most 48 characters, longer ones are refused before anything is sent);
  HTTP 422 "client_order_id must be unique" means "already submitted": the existing order is read
  back by that id. A submit whose answer is lost (timeout, dropped connection) is looked up once by
  id; if the venue does not show it, ``SubmitOutcomeUnknown`` says so (never "rejected").
* **Account activities** (alpaca-py has no method for them): fills come from
  ``GET /v2/account/activities/FILL`` through the client's raw ``get``, every page
  (``page_token``/``page_size``, ascending, ``after``).
* **The trade-updates stream loses events while it reconnects**, so after every (re)connect the
  adapter backfills over REST (orders updated and fills since the last event seen) before it
  consumes the stream again; updates are deduplicated (fills by execution id, and by order and
  cumulative quantity; acks and terminal updates per order).

* **The whole vocabulary** (see ``map_status``): all 18 order statuses, trade-update events parsed
  leniently; bracket/OCO/OTO legs reported with their parent's id (``parent_venue_order_id``,
  known only from nested answers, kept once seen); cancel/replace chains (``replaces``) read whole
  and, on the stream, a replacement reported as ``replaced`` of our client order id with the new
  order; crypto pairs under one symbol (``BTC/USD``); the end-of-day crypto fees (``CFEE``) in the
  snapshot's ``fees``, with the highest fee rate not posted yet (``unposted_fee_rates``);
  notional orders and quantities up to 9 decimals.

Errors: a failed, truncated or malformed answer raises ``VenueQueryFailed`` (never an empty
list); refused credentials (HTTP 401/403 on a query) and unreachable servers raise
``VenueConnectionError`` naming the URL.

Execution ids: the trade-updates stream carries ``execution_id``; a FILL activity's id is
``<New York time>::<uuid>``. We report the part after ``::`` as ``exec_id`` (the full activity id
stays in ``raw``), the same id the stream reports, so one fill has one id from either source.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

import requests
from alpaca.common.exceptions import APIError, RetryException
from alpaca.common.rest import RESTClient
from alpaca.trading.client import TradingClient
from alpaca.trading.stream import TradingStream

from tradestate.adapters.brokers.base import (
    BrokerAdapter,
    OrderNotCancelable,
    SubmitOutcomeUnknown,
    OrderNotFound,
    OrderRequest,
    ReplaceRejected,
    VenueBalance,
    VenueConnectionError,
    Unknown,
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

log = logging.getLogger(__name__)

MAX_CLIENT_ORDER_ID = 48
MAX_DECIMALS = 9  # qty and notional: "up to 9 decimal places" (alpaca-docs fractional-trading.md)
ORDERS_PAGE_LIMIT = 500  # Alpaca's maximum for GET /v2/orders
ACTIVITIES_PAGE_SIZE = 100  # Alpaca's maximum for account activities
# The highest crypto fee rate (tier 1, 25 bps): taken at each execution, posted at the end of the
# day (alpaca-docs content/trading/crypto-trading.md, "Crypto Fees").
CRYPTO_FEE_RATE_MAX = Decimal("0.0025")
# Regulatory fees on equity sales, deducted from the cash at once and posted as ``FEE`` at the end
# of the day (Alpaca's "Regulatory Fees"): bounds above the published rates (FINRA TAF $0.000166
# a share, at most $8.30 a fill; SEC $27.80 per million; CAT a fraction of a cent), each rounded
# up to the cent. Used only to tell such a not-yet-posted fee from a real cash difference.
REG_FEE_PER_SHARE_MAX = Decimal("0.0002")
REG_FEE_NOTIONAL_RATE_MAX = Decimal("0.00003")
REG_FEE_ROUNDING = Decimal("0.03")  # each of the three rounded up to the cent
FEE_ACTIVITY_TYPES = ("CFEE", "FEE")  # crypto fees; regulatory and other fees, in cash
NEW_YORK = ZoneInfo("America/New_York")
MAX_CHAIN_LOOKUPS = 100  # orders of cancel/replace chains read one by one per query
BACKFILL_MARGIN = timedelta(seconds=2)  # reach back before the last event seen (clock skew)

# Trade-update events that change nothing in our lifecycle: alpaca-py's ``TradeEvent`` (restated,
# pending_*) and the ones Alpaca's streaming docs add (done_for_day, calculated, suspended, held,
# stopped, order_cancel_rejected: the order goes on as it was). Any other
# event is logged and skipped too, never an error.
QUIET_TRADE_EVENTS = frozenset({
    "pending_new", "pending_cancel", "pending_replace", "restated", "done_for_day", "calculated",
    "suspended", "held", "stopped", "order_cancel_rejected", "pending_review",
    "accepted_for_bidding",
})

if not hasattr(RESTClient, "_one_request"):  # pragma: no cover - guards an alpaca-py upgrade
    raise ImportError("alpaca-py changed: RESTClient._one_request is gone; AlpacaAdapter needs review")



class VenueBusy(VenueConnectionError):
    """Alpaca rate-limited the submit (HTTP 429): the order was not taken; sending it again later
    under the same client order id is safe."""


class OrderRejectedByVenue(VenueError):
    """Alpaca refused the order outright (HTTP 4xx on submit other than a duplicate id or a rate
    limit): nothing works at the venue (``refused_by_venue``: the order flow records the reject)."""

    refused_by_venue = True

    def __init__(self, message: str, *, status: int | None, code: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code



class _KeyRefused(VenueConnectionError):
    """HTTP 401 (or 403 on a query): the venue refused our API key."""


class _HTTPFailure(VenueQueryFailed):
    """An HTTP error answer; callers that expect some statuses (404, 422) look at ``status``."""

    def __init__(self, message: str, *, status: int | None, code: Any, venue_message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.venue_message = venue_message


# -- the client ---------------------------------------------------------------------------------


class _ExactTradingClient(TradingClient):
    """``TradingClient`` with a timeout on every request, JSON read with Decimal numbers, and
    retries (on 429/504) for GETs only: a POST that may have reached the venue is never resent."""

    def __init__(self, *, timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._timeout = timeout
        self._retry = 1
        self._retry_wait = 1

    def _one_request(self, method: str, url: str, opts: dict, retry: int) -> Any:
        response = self._session.request(method, url, timeout=self._timeout, **opts)
        if response.status_code >= 300:
            if response.status_code in self._retry_codes and retry > 0 and method.upper() == "GET":
                raise RetryException()
            raise APIError(response.text, requests.HTTPError(response=response))
        if response.text == "":
            return None
        return json.loads(response.text, parse_float=Decimal)


class _TradeUpdatesStream(TradingStream):
    """alpaca-py's stream, telling us when it has (re)connected and subscribed."""

    def __init__(self, *, on_connected: Callable[[], Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_connected = on_connected

    async def _start_ws(self) -> None:
        await super()._start_ws()
        # Backfill before consuming; if it fails, the stream closes and reconnects (and retries).
        await self._on_connected()


# -- parsing ------------------------------------------------------------------------------------

_TS = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2})?)(?:\.(\d+))?\s*(Z|z|[+-]\d{2}:?\d{2})?$"
)


def _bad(what: str) -> VenueQueryFailed:
    return VenueQueryFailed(f"alpaca: malformed answer: {what}")


def _dec(value: Any, field: str, *, optional: bool = False) -> Decimal | None:
    """A venue amount as an exact Decimal (Alpaca sends decimal strings)."""
    if value is None or value == "":
        if optional:
            return None
        raise _bad(f"{field} is missing")
    if isinstance(value, bool):
        raise _bad(f"{field} is {value!r}, not a number")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):  # only if some JSON decoder gave us one: its shortest repr
        if not math.isfinite(value):
            raise _bad(f"{field} is {value!r}")
        result = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise _bad(f"{field} is {value!r}, not a number") from None
    else:
        raise _bad(f"{field} is {value!r}, not a number")
    if not result.is_finite():
        raise _bad(f"{field} is {value!r}")
    return result


def _ts(value: Any, field: str) -> datetime | None:
    """An RFC 3339 time (nanoseconds allowed) as an aware UTC datetime; None when absent."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _bad(f"{field} is {value!r}, not a time")
    m = _TS.match(value.strip())
    if not m:
        raise _bad(f"{field} is {value!r}, not an RFC 3339 time")
    day, clock, fraction, zone = m.groups()
    if clock.count(":") == 1:
        clock += ":00"
    text = f"{day}T{clock}"
    if fraction:
        text += "." + (fraction + "000000")[:6]
    if zone in (None, "Z", "z"):
        zone = "+00:00"  # Alpaca's times are UTC
    elif ":" not in zone:
        zone = zone[:3] + ":" + zone[3:]
    try:
        return datetime.fromisoformat(text + zone).astimezone(timezone.utc)
    except ValueError:
        raise _bad(f"{field} is {value!r}, not a valid time") from None


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"alpaca: a naive datetime ({moment!r}) is ambiguous; pass an aware UTC time")
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _str(raw: dict, field: str, *, optional: bool = False) -> str | None:
    value = raw.get(field)
    if value is None or value == "":
        if optional:
            return None
        raise _bad(f"{field} is missing in {raw!r:.200}")
    return str(value)


def _side(raw: dict) -> str:
    side = str(raw.get("side") or "").lower()
    if side not in ("buy", "sell"):
        raise _bad(f"side {raw.get('side')!r} (expected buy or sell)")
    return side


def _norm(amount: Decimal) -> str:
    """A canonical text for a quantity ("10.50" and "10.5" are the same)."""
    text = format(amount.normalize(), "f")
    return text if text != "-0" else "0"


def _plain(data: Any) -> Any:
    """The raw answer with Decimals back as strings (for ``raw``: JSON-able, exact)."""
    if isinstance(data, dict):
        return {k: _plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_plain(v) for v in data]
    if isinstance(data, Decimal):
        return str(data)
    return data


# Alpaca's order statuses: all 18 of alpaca-py's ``OrderStatus`` (alpaca/trading/enums.py), with the
# meanings of Alpaca's "Order Lifecycle" (https://docs.alpaca.markets/docs/orders-at-alpaca).
# Working: the order can still fill. ``done_for_day`` is NOT terminal (a GTC order resumes the next
# trading day); ``pending_cancel``/``pending_replace`` can still fill until the venue confirms.
_WORKING_STATUSES = frozenset({"new", "partially_filled", "done_for_day", "pending_cancel", "pending_replace",
                               "stopped"})
# Accepted, not working yet. ``held``: a bracket/OCO/OTO leg waiting for its parent (Alpaca does not
# list it with the open orders: alpacahq/alpaca-trade-api-python#322); ``suspended``: not eligible
# for trading for now; ``pending_review``: waiting for Alpaca's review.
_PENDING_STATUSES = frozenset({"pending_new", "accepted", "accepted_for_bidding", "held", "suspended",
                               "pending_review"})
_FINAL_STATUSES: dict[str, VenueOrderStatus] = {
    "filled": "filled",
    "canceled": "cancelled",
    "cancelled": "cancelled",
    "expired": "expired",
    "rejected": "rejected",
    # Finished: a new venue order (its ``replaces`` names this one) carries on our order.
    "replaced": "replaced",
}
ALPACA_ORDER_STATUSES = frozenset({*_WORKING_STATUSES, *_PENDING_STATUSES, *_FINAL_STATUSES, "calculated"}
                                  - {"cancelled"})
# Crypto pairs: orders say ``BTC/USD``, positions and fee activities the legacy ``BTCUSD``
# (alpacahq/alpaca-docs content/trading/crypto-trading.md): one symbol, the pair's.
_LEGACY_PAIR = re.compile(r"^([A-Z0-9]{2,12}?)(USDT|USDC|USD|BTC)$")


def map_status(raw_status: str, qty: Decimal | None, filled: Decimal) -> VenueOrderStatus:
    """Our status for an Alpaca order status; one we do not know is ``"unknown"`` (never an error).

    ``calculated`` ("completed for the day, either filled or done for day; settlement pending") is
    filled when the whole quantity is, else still working like ``done_for_day``."""
    status = raw_status.lower()
    if status in _FINAL_STATUSES:
        return _FINAL_STATUSES[status]
    if status == "calculated":
        if qty is not None and qty > 0 and filled >= qty:
            return "filled"
        return "partially_filled" if filled > 0 else "open"
    if status in _WORKING_STATUSES or status in _PENDING_STATUSES:
        if filled > 0:
            return "partially_filled"
        return "pending" if status in _PENDING_STATUSES else "open"
    return "unknown"


def canonical_symbol(symbol: str, asset_class: str | None = None) -> str:
    """One symbol per instrument: a crypto pair as Alpaca's orders write it (``BTC/USD``), also when
    a position or an activity says ``BTCUSD``. Anything else is returned unchanged."""
    if "/" in symbol or (asset_class or "").lower() != "crypto":
        return symbol
    m = _LEGACY_PAIR.match(symbol.upper())
    return f"{m.group(1)}/{m.group(2)}" if m else symbol


def parse_order(raw: dict, *, parent_venue_order_id: str | None = None) -> VenueOrder:
    """One Alpaca order object (raw JSON) as a ``VenueOrder``; ``parent_venue_order_id``: the order
    it is a leg of (Alpaca says so only by nesting it in the parent's ``legs``)."""
    if not isinstance(raw, dict):
        raise _bad(f"an order is {raw!r:.200}")
    filled = _dec(raw.get("filled_qty"), "filled_qty", optional=True) or Decimal(0)
    qty = _dec(raw.get("qty"), "qty", optional=True)
    notional = _dec(raw.get("notional"), "notional", optional=True)
    raw_status = str(raw.get("status") or "")
    plain = _plain(raw)
    return VenueOrder(
        venue_order_id=_str(raw, "id"),
        client_order_id=_str(raw, "client_order_id", optional=True),
        symbol=canonical_symbol(_str(raw, "symbol"), raw.get("asset_class")),
        side=_side(raw),  # type: ignore[arg-type]
        order_type=str(raw.get("type") or raw.get("order_type") or "unknown"),
        # A notional order has no qty until it is done: we report what is filled (``notional`` says
        # which amount was asked for).
        qty=qty if qty is not None else filled,
        filled_qty=filled,
        status=map_status(raw_status, qty, filled),
        raw_status=raw_status,
        limit_price=_dec(raw.get("limit_price"), "limit_price", optional=True),
        stop_price=_dec(raw.get("stop_price"), "stop_price", optional=True),
        avg_fill_price=_dec(raw.get("filled_avg_price"), "filled_avg_price", optional=True),
        time_in_force=str(raw.get("time_in_force") or "day"),
        submitted_at=_ts(raw.get("submitted_at") or raw.get("created_at"), "submitted_at"),
        updated_at=_ts(raw.get("updated_at"), "updated_at"),
        raw=plain,
        replaces=_str(raw, "replaces", optional=True),
        parent_venue_order_id=parent_venue_order_id,
        notional=notional,  # kept also once Alpaca states the quantity: it is still an amount order
    )


def _flatten(raws: Iterable[dict], parent: str | None = None) -> Iterable[tuple[dict, str | None]]:
    """Orders and their nested legs, each with the id of the order it is a leg of."""
    for raw in raws:
        yield raw, parent
        legs = raw.get("legs") if isinstance(raw, dict) else None
        if isinstance(legs, list):
            yield from _flatten(legs, str(raw.get("id")))


def exec_id_of_activity(activity_id: str) -> str:
    """A FILL activity id ``<time>::<uuid>`` -> the execution id (the uuid)."""
    return activity_id.split("::", 1)[1] if "::" in activity_id else activity_id


def parse_fill_activity(raw: dict, client_order_id: str | None = None, symbol: str | None = None) -> VenueFill:
    """One raw FILL account activity as a ``VenueFill`` (``exec_id`` from the activity id; amounts
    Decimal-exact), attributed to ``client_order_id`` when known, under its order's ``symbol`` when
    known (a crypto activity may spell the pair ``BTCUSD``). Raises ``VenueQueryFailed`` for a
    malformed activity."""
    if not isinstance(raw, dict):
        raise _bad(f"an activity is {raw!r:.200}")
    activity_id = _str(raw, "id")
    return VenueFill(
        exec_id=exec_id_of_activity(activity_id),
        client_order_id=client_order_id,
        venue_order_id=_str(raw, "order_id"),
        symbol=symbol or _str(raw, "symbol"),
        side=_side(raw),  # type: ignore[arg-type]
        qty=_dec(raw.get("qty"), "qty"),
        price=_dec(raw.get("price"), "price"),
        occurred_at=_ts(raw.get("transaction_time"), "transaction_time"),
        raw=_plain(raw),
    )


# -- the adapter --------------------------------------------------------------------------------


class AlpacaAdapter(BrokerAdapter):
    """One Alpaca trading account, through alpaca-py.

    ``AlpacaAdapter(*, account, api_key, secret_key, base_url=None, stream_url=None, paper=True,
    venue="ALPACA", timeout=10.0)``

    * ``account``: our account id (what our events carry), not Alpaca's.
    * ``api_key``/``secret_key``: the API key pair (``APCA-API-KEY-ID``/``APCA-API-SECRET-KEY``).
    * ``base_url``: the REST root without ``/v2`` (e.g. ``http://127.0.0.1:8123``); default: Alpaca's
      paper or live endpoint after ``paper``.
    * ``stream_url``: the trade-updates websocket (e.g. ``ws://127.0.0.1:8123/stream``); default:
      Alpaca's paper or live stream after ``paper``.
    * ``timeout``: seconds for each HTTP request (connect and read) and the websocket handshake.

    Beyond the ``BrokerAdapter`` interface: ``submit``/``cancel`` (live order flow),
    ``order_by_venue_id``, ``start_stream(on_update, since=None)``/``stop_stream()``.
    ``order_by_client_id`` returns the order with its executions (``fills``) read from the FILL
    activities, so a look-up after an ambiguous submit has the real execution ids.
    """

    broker = "alpaca"

    def __init__(
        self,
        *,
        account: str,
        api_key: str,
        secret_key: str,
        base_url: str | None = None,
        stream_url: str | None = None,
        paper: bool = True,
        venue: str = "ALPACA",
        timeout: float = 10.0,
    ) -> None:
        if not account:
            raise ValueError("alpaca: account (our account id) is required")
        if not api_key or not secret_key:
            raise ValueError("alpaca: api_key and secret_key are both required")
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"alpaca: timeout must be a positive number of seconds, not {timeout!r}")
        self.account = account
        self.venue = venue
        self.timeout = float(timeout)
        self._api_key = api_key
        self._secret_key = secret_key
        self._paper = paper
        self._stream_url = stream_url
        self._client = _ExactTradingClient(
            timeout=self.timeout,
            api_key=api_key,
            secret_key=secret_key,
            paper=paper,
            url_override=base_url.rstrip("/") if base_url else None,
        )
        self.base_url = str(self._client._base_url)
        self._client_ids: dict[str, str | None] = {}  # venue order id -> client order id (immutable)
        self._symbols: dict[str, str] = {}  # venue order id -> its (canonical) symbol
        self._parents: dict[str, str] = {}  # a leg's venue order id -> its parent's
        self._replaced: dict[str, str] = {}  # a replacement's venue order id -> the order it replaced
        # stream state
        self._stream: _TradeUpdatesStream | None = None
        self._stream_thread: threading.Thread | None = None
        self._on_update: Callable[[VenueUpdate], None] | None = None
        self._emit_lock = threading.RLock()
        self._seen: set[tuple] = set()
        self._last_event_at: datetime | None = None
        self._stream_since: datetime | None = None
        self._stream_stopping = False
        self.stream_connects = 0  # completed (re)connects, each followed by a backfill
        self.last_backfill_error: str | None = None

    # -- HTTP ---------------------------------------------------------------------------------

    def _call(self, method: str, path: str, data: dict | None = None, *, what: str) -> Any:
        url = f"{self.base_url}/v2{path}"
        try:
            if method == "GET":
                return self._client.get(path, data)
            if method == "POST":
                return self._client.post(path, data)
            if method == "DELETE":
                return self._client.delete(path, data)
            if method == "PATCH":
                return self._client.patch(path, data)
            raise ValueError(method)
        except APIError as e:
            status = e.status_code
            text = str(e)
            try:
                body = json.loads(text)
                code, message = body.get("code"), str(body.get("message", text))
            except (ValueError, AttributeError):
                code, message = None, text[:200]
            if status == 401 or (status == 403 and method == "GET"):
                raise _KeyRefused(
                    f"alpaca: {what}: {self.base_url} refused our API key (HTTP {status}: {message})"
                ) from None
            raise _HTTPFailure(
                f"alpaca: {what}: HTTP {status} from {method} {url}: {message}",
                status=status, code=code, venue_message=message,
            ) from None
        except requests.ConnectTimeout:
            raise VenueConnectionError(
                f"alpaca: {what}: cannot connect to {self.base_url} within {self.timeout:g} s"
            ) from None
        except requests.Timeout:
            raise VenueQueryFailed(
                f"alpaca: {what}: no answer from {method} {url} within {self.timeout:g} s"
            ) from None
        except requests.ConnectionError as e:
            raise VenueConnectionError(f"alpaca: {what}: cannot reach {self.base_url}: {e}") from None
        except requests.RequestException as e:
            raise VenueQueryFailed(f"alpaca: {what}: {method} {url} failed: {e}") from None
        except ValueError as e:  # JSON cut short or invalid
            raise VenueQueryFailed(f"alpaca: {what}: truncated or invalid JSON from {url}: {e}") from None

    def _list(self, answer: Any, what: str) -> list:
        if not isinstance(answer, list):
            raise VenueQueryFailed(f"alpaca: {what}: expected a list, got {str(_plain(answer))[:200]}")
        return answer

    # -- queries ------------------------------------------------------------------------------

    def positions(self) -> list[VenuePosition]:
        """Every open position (short ones with a negative quantity). Raises ``VenueQueryFailed`` for a
        failed, truncated or malformed answer, ``VenueConnectionError`` for refused credentials or an
        unreachable server."""
        raws = self._list(self._call("GET", "/positions", what="positions"), "positions")
        result = []
        for raw in raws:
            if not isinstance(raw, dict):
                raise _bad(f"a position is {raw!r:.200}")
            qty = _dec(raw.get("qty"), "qty")
            side = str(raw.get("side") or "").lower()
            if side == "short":
                qty = -abs(qty)
            elif side == "long":
                qty = abs(qty)
            result.append(
                VenuePosition(
                    symbol=canonical_symbol(_str(raw, "symbol"), raw.get("asset_class")),
                    qty=qty,
                    avg_cost=_dec(raw.get("avg_entry_price"), "avg_entry_price", optional=True),
                    raw=_plain(raw),
                )
            )
        return result

    def balances(self) -> list[VenueBalance]:
        """The account's cash in its currency (one balance). Raises ``VenueQueryFailed`` for a failed,
        truncated or malformed answer, ``VenueConnectionError`` for refused credentials or an
        unreachable server."""
        raw = self._call("GET", "/account", what="balances")
        if not isinstance(raw, dict):
            raise VenueQueryFailed(f"alpaca: balances: expected an account object, got {str(raw)[:200]}")
        return [
            VenueBalance(
                currency=str(raw.get("currency") or "USD"),
                cash=_dec(raw.get("cash"), "cash"),
                raw=_plain(raw),
            )
        ]

    def _orders(self, status: str, after: datetime | None, what: str, *, nested: bool = True) -> list[VenueOrder]:
        """Every order of ``status`` submitted after ``after``: pages of 500, oldest first, legs
        after their parent (``nested``: Alpaca lists a bracket's legs inside their parent, else
        each as an order of its own).

        Alpaca pages orders by time only (``after`` is exclusive), so each page starts a microsecond
        before the last page's newest order and overlapping orders are dropped by id."""
        found: dict[str, dict] = {}
        cursor = after
        while True:
            params: dict[str, Any] = {
                "status": status, "limit": ORDERS_PAGE_LIMIT, "direction": "asc",
                "nested": "true" if nested else "false",
            }
            if cursor is not None:
                params["after"] = _iso(cursor)
            page = self._list(self._call("GET", "/orders", params, what=what), what)
            new = 0
            newest: datetime | None = None
            for raw in page:
                if not isinstance(raw, dict):
                    raise _bad(f"an order is {raw!r:.200}")
                oid = _str(raw, "id")
                if oid not in found:
                    found[oid] = raw
                    new += 1
                at = _ts(raw.get("submitted_at") or raw.get("created_at"), "submitted_at")
                if at is None:
                    raise _bad(f"order {oid} has no submitted_at: cannot page")
                newest = at if newest is None or at > newest else newest
            if len(page) < ORDERS_PAGE_LIMIT:
                break
            if new == 0 or newest is None:
                raise VenueQueryFailed(
                    f"alpaca: {what}: more than {ORDERS_PAGE_LIMIT} orders share one submission time; "
                    "cannot page through them"
                )
            cursor = newest - timedelta(microseconds=1)
        return [self._remember(parse_order(raw, parent_venue_order_id=parent))
                for raw, parent in _flatten(found.values())]

    def _remember(self, order: VenueOrder) -> VenueOrder:
        """Keep what later answers do not repeat: client order id, symbol, the parent of a leg (only
        a nested answer tells it); a leg listed on its own gets its parent from here."""
        oid = order.venue_order_id
        self._client_ids[oid] = order.client_order_id
        self._symbols[oid] = order.symbol
        if order.replaces:
            self._replaced[oid] = order.replaces
        if order.parent_venue_order_id is not None:
            self._parents[oid] = order.parent_venue_order_id
        elif oid in self._parents:
            order = replace(order, parent_venue_order_id=self._parents[oid])
        return order

    def _origin_client_id(self, venue_order_id: str) -> str | None:
        """The client order id of the first order of a cancel/replace chain (ours, when we placed
        it): Alpaca gives each replacement a client order id of its own."""
        seen = {venue_order_id}
        while venue_order_id in self._replaced and self._replaced[venue_order_id] not in seen:
            venue_order_id = self._replaced[venue_order_id]
            seen.add(venue_order_id)
        return self._client_ids.get(venue_order_id)

    def open_orders(self) -> list[VenueOrder]:
        """Every open order, all pages, oldest first, bracket/OCO/OTO legs with their parent's id.

        Asked for without nesting: once a bracket's entry is filled, a nested answer lists neither
        it nor its working legs (alpacahq/alpaca-trade-api-js#87). A leg whose parent we have not
        seen is placed by one nested query of all orders since it. A ``held`` leg is not listed
        as open at all (alpacahq/alpaca-trade-api-python#322): ``recent_orders`` (nested) has it.
        Raises ``VenueQueryFailed`` for a failed, truncated or malformed answer,
        ``VenueConnectionError`` for refused credentials or an unreachable server."""
        orders = self._orders("open", None, "open orders", nested=False)
        orphans = [o for o in orders if o.parent_venue_order_id is None
                   and str(o.raw.get("order_class") or "simple") not in ("simple", "")
                   and not o.raw.get("legs") and o.submitted_at is not None]
        if orphans:
            since = min(o.submitted_at for o in orphans) - BACKFILL_MARGIN  # type: ignore[type-var]
            self._orders("all", since, "open orders (bracket legs)")
            orders = [self._remember(o) for o in orders]
        return orders

    def recent_orders(self, since: datetime | None = None) -> list[VenueOrder]:
        """Orders submitted after ``since``, plus older ones still open or filled since then.

        Alpaca filters orders by submission time only; an older order cancelled since ``since``
        without a fill is not found here (``order_by_client_id`` finds it)."""
        if since is not None:
            _iso(since)  # refuses a naive time before any request
        orders = {o.venue_order_id: o for o in self._orders("all", since, "recent orders")}
        if since is None:
            return self._with_replacements(orders)
        for order in self.open_orders():
            if order.venue_order_id not in orders and (order.updated_at is None or order.updated_at >= since):
                orders[order.venue_order_id] = order
        for order_id in dict.fromkeys(a["order_id"] for a in self._activities(since, "recent orders")
                                      if isinstance(a, dict) and a.get("order_id")):
            if str(order_id) not in orders:
                orders[str(order_id)] = self.order_by_venue_id(str(order_id))
        return self._with_replacements(orders)

    def _with_replacements(self, orders: dict[str, VenueOrder]) -> list[VenueOrder]:
        """The orders with every order a listed one replaces or was replaced by (``replaces`` /
        ``replaced_by``), read by id, so reconciliation sees whole cancel/replace chains (at most
        ``MAX_CHAIN_LOOKUPS`` look-ups, else ``VenueQueryFailed``: a partial chain is unknown)."""
        looked_up = 0
        pending = list(orders.values())
        while pending:
            order = pending.pop()
            for other in (order.replaces, order.raw.get("replaced_by")):
                if not other or str(other) in orders:
                    continue
                looked_up += 1
                if looked_up > MAX_CHAIN_LOOKUPS:
                    raise VenueQueryFailed(f"alpaca: recent orders: more than {MAX_CHAIN_LOOKUPS} replaced "
                                           "orders to read back one by one")
                try:
                    found = self.order_by_venue_id(str(other))
                except OrderNotFound:
                    continue
                orders[found.venue_order_id] = found
                pending.append(found)
        return list(orders.values())

    def _activities(self, since: datetime | None, what: str, activity_type: str = "FILL") -> list[dict]:
        """Every ``activity_type`` activity after ``since`` (all pages, oldest first)."""
        result: list[dict] = []
        seen: set[str] = set()
        token: str | None = None
        while True:
            params: dict[str, Any] = {"direction": "asc", "page_size": ACTIVITIES_PAGE_SIZE}
            if since is not None:
                params["after"] = _iso(since)
            if token is not None:
                params["page_token"] = token
            page = self._list(self._call("GET", f"/account/activities/{activity_type}", params, what=what), what)
            for raw in page:
                if not isinstance(raw, dict):
                    raise _bad(f"an activity is {raw!r:.200}")
                activity_id = _str(raw, "id")
                if activity_id in seen:
                    raise VenueQueryFailed(f"alpaca: {what}: activity {activity_id} came twice while paging")
                seen.add(activity_id)
                if str(raw.get("activity_type") or activity_type).upper() == activity_type:
                    result.append(raw)
            if len(page) < ACTIVITIES_PAGE_SIZE:
                return result
            token = _str(page[-1], "id")

    def posted_fees(self, since: datetime | None = None) -> list[VenueFee]:
        """The fees Alpaca posted apart from its fills since the day before ``since`` (all when
        None), oldest first: crypto fees (``CFEE``: one per pair and day, at the end of the day) and
        other fees (``FEE``: the regulatory fees of equity sales, posted at the end of the day;
        any other fee the account paid). A fee in the asset received (``qty`` < 0,
        ``net_amount`` 0: buying BTC/USD, the fee is in BTC) is ``in_kind`` in that asset; one in
        cash (``net_amount`` < 0) is in the account's currency (alpacahq/alpaca-docs
        content/trading/crypto-trading.md, "Crypto Fees"; "Regulatory Fees"). Raises
        ``VenueQueryFailed`` for a failed, truncated or malformed answer."""
        after = since - timedelta(days=1) if since is not None else None  # a day's fee posts at its end
        result = []
        for activity_type in FEE_ACTIVITY_TYPES:
            for raw in self._activities(after, "fees", activity_type):
                fee = self._fee(raw, crypto=activity_type == "CFEE")
                if fee is not None:
                    result.append(fee)
        result.sort(key=lambda f: (f.occurred_at or datetime.min.replace(tzinfo=timezone.utc), f.fee_id))
        return result

    @staticmethod
    def _fee(raw: dict, *, crypto: bool) -> VenueFee | None:
        """One fee activity; None for one not executed or of no amount."""
        if str(raw.get("status") or "executed").lower() != "executed":
            return None
        text = _str(raw, "symbol", optional=True)
        symbol = canonical_symbol(text, "crypto" if crypto else "us_equity") if text else None
        qty = (_dec(raw.get("qty"), "qty", optional=True) or Decimal(0)) if crypto else Decimal(0)
        net = _dec(raw.get("net_amount"), "net_amount", optional=True) or Decimal(0)
        day = _str(raw, "date", optional=True)
        occurred = _ts(day + "T00:00:00Z", "date") if day and len(day) == 10 else _ts(day, "date")
        if qty and symbol and "/" in symbol:
            amount, currency, in_kind = abs(qty), symbol.split("/")[0], True
        else:
            currency = symbol.split("/")[1] if symbol and "/" in symbol else "USD"
            amount, in_kind = abs(net), False
            if net > 0:
                return None  # a credit (a refunded fee) is not a fee paid
        if not amount:
            return None
        return VenueFee(fee_id=_str(raw, "id"), amount=amount, currency=currency, symbol=symbol, in_kind=in_kind,
                        occurred_at=occurred, raw=_plain(raw))

    def snapshot(self, since: datetime | None = None, *, now: datetime) -> VenueSnapshot:
        """Every report (``BrokerAdapter.snapshot``) and the fees posted apart (``fees``), with the
        most the venue may have taken and not posted yet: crypto fees by rate
        (``unposted_fee_rates``), regulatory fees of equity sales in cash (``unposted_cash_fees``)."""
        snap = super().snapshot(since, now=now)
        try:
            fees: list[VenueFee] | Unknown = self.posted_fees(since)
        except VenueError as e:
            fees = Unknown(f"{type(e).__name__}: {e}")
        pairs = {item.symbol for part in (snap.positions, snap.open_orders, snap.recent_orders, snap.fills)
                 if not isinstance(part, Unknown) for item in part if "/" in item.symbol}
        return replace(snap, fees=fees, unposted_fee_rates={pair: CRYPTO_FEE_RATE_MAX for pair in sorted(pairs)},
                       unposted_cash_fees=unposted_regulatory_fees(snap.fills, fees))

    def fills(self, since: datetime | None = None) -> list[VenueFill]:
        """Every fill after ``since`` (all when None) from the FILL activities, all pages, oldest first,
        each attributed to its client order id (one order look-up per order not seen before; None for
        an order the venue no longer knows). Raises ``VenueQueryFailed`` for a failed, truncated or
        malformed answer, ``VenueConnectionError`` for refused credentials or an unreachable server."""
        raws = self._activities(since, "fills")
        for order_id in dict.fromkeys(str(r.get("order_id")) for r in raws if r.get("order_id")):
            if order_id not in self._client_ids:  # one look-up per order we have not seen yet
                try:
                    self.order_by_venue_id(order_id)
                except OrderNotFound:
                    self._client_ids[order_id] = None
        return [parse_fill_activity(r, self._client_ids.get(str(r.get("order_id"))),
                                    self._symbols.get(str(r.get("order_id")))) for r in raws]

    def order_by_venue_id(self, venue_order_id: str) -> VenueOrder:
        """The order with Alpaca's id ``venue_order_id`` (with its legs); ``OrderNotFound`` on HTTP 404.
        Raises ``VenueQueryFailed`` for a failed, truncated or malformed answer,
        ``VenueConnectionError`` for refused credentials or an unreachable server."""
        try:
            raw = self._call("GET", f"/orders/{venue_order_id}", {"nested": "true"}, what="order by id")
        except _HTTPFailure as e:
            if e.status == 404:
                raise OrderNotFound(f"alpaca: no order {venue_order_id!r} at the venue") from None
            raise
        return self._remember(parse_order(raw))

    def order_by_client_id(self, client_order_id: str) -> VenueOrder:
        """The order placed with ``client_order_id``; ``OrderNotFound`` on HTTP 404. Raises
        ``VenueQueryFailed`` for a failed, truncated or malformed answer, ``VenueConnectionError``
        for refused credentials or an unreachable server."""
        try:
            raw = self._call("GET", "/orders:by_client_order_id", {"client_order_id": client_order_id},
                             what="order by client order id")
        except _HTTPFailure as e:
            if e.status == 404:
                raise OrderNotFound(f"alpaca: no order with client_order_id {client_order_id!r} at the venue") from None
            raise
        return self._with_fills(self._remember(parse_order(raw)))

    def _with_fills(self, order: VenueOrder) -> VenueOrder:
        """The order with its executions (Alpaca does not report them with the order: read the FILL
        activities since its submission). A sum that does not match ``filled_qty`` is refused."""
        if order.filled_qty <= 0:
            return order
        since = order.submitted_at - BACKFILL_MARGIN if order.submitted_at else None
        fills = tuple(
            parse_fill_activity(raw, order.client_order_id, order.symbol)
            for raw in self._activities(since, f"fills of order {order.venue_order_id}")
            if str(raw.get("order_id")) == order.venue_order_id
        )
        total = sum((f.qty for f in fills), Decimal(0))
        if total != order.filled_qty:
            raise VenueQueryFailed(
                f"alpaca: order {order.venue_order_id} reports {order.filled_qty} filled but its FILL "
                f"activities add up to {total}: its executions are incomplete"
            )
        return replace(order, fills=fills)

    # -- live order flow ----------------------------------------------------------------------

    def submit(self, request: OrderRequest) -> VenueOrder:
        """Send a recorded intent under its client order id; an id the venue already has returns
        that order (nothing is sent twice)."""
        cid = request.client_order_id
        if not cid or not isinstance(cid, str):
            raise ValueError("alpaca: an order needs our client_order_id")
        if len(cid) > MAX_CLIENT_ORDER_ID:
            raise ValueError(
                f"alpaca: client_order_id {cid!r} has {len(cid)} characters; at most "
                f"{MAX_CLIENT_ORDER_ID} are accepted (nothing was sent)"
            )
        if request.side not in ("buy", "sell"):
            raise ValueError(f"alpaca: side must be buy or sell, not {request.side!r}")
        if (request.qty is None) == (request.notional is None):
            raise ValueError("alpaca: an order needs a qty or a notional amount, not both")
        for name in ("qty", "notional", "limit_price", "stop_price"):
            value = getattr(request, name)
            if value is not None and (not isinstance(value, Decimal) or not value.is_finite() or value <= 0):
                raise ValueError(f"alpaca: {name} must be a positive finite Decimal, not {value!r}")
        for name in ("qty", "notional"):
            value = getattr(request, name)
            if value is not None and -value.normalize().as_tuple().exponent > MAX_DECIMALS:
                raise ValueError(f"alpaca: {name} {value} has more than {MAX_DECIMALS} decimal places "
                                 "(Alpaca takes at most 9; nothing was sent)")
        body: dict[str, Any] = {
            "symbol": request.symbol,
            "side": request.side,
            "type": request.order_type,
            "time_in_force": request.time_in_force,
            "client_order_id": cid,
        }
        if request.qty is not None:
            body["qty"] = format(request.qty.normalize(), "f")  # never exponent notation ("1E+1")
        else:
            body["notional"] = format(request.notional.normalize(), "f")  # type: ignore[union-attr]
        if request.limit_price is not None:
            body["limit_price"] = format(request.limit_price, "f")
        if request.stop_price is not None:
            body["stop_price"] = format(request.stop_price, "f")
        try:
            raw = self._call("POST", "/orders", body, what=f"submit {cid}")
        except _HTTPFailure as e:
            if e.status == 422 and "client_order_id must be unique" in e.venue_message.lower():
                return self.order_by_client_id(cid)  # already submitted: the venue's order
            if e.status == 429:
                raise VenueBusy(f"alpaca: order {cid} not taken, rate limited (HTTP 429): {e.venue_message}; "
                                "send it again later under the same client_order_id") from None
            if e.status is not None and 400 <= e.status < 500:
                raise OrderRejectedByVenue(
                    f"alpaca: order {cid} refused (HTTP {e.status}): {e.venue_message}",
                    status=e.status, code=e.code,
                ) from None
            return self._resolve_ambiguous(cid, e)
        except _KeyRefused:
            raise
        except VenueError as e:  # timeout, dropped connection: the order may or may not be there
            return self._resolve_ambiguous(cid, e)
        return self._remember(parse_order(raw))

    def _resolve_ambiguous(self, cid: str, cause: Exception) -> VenueOrder:
        try:
            return self.order_by_client_id(cid)
        except OrderNotFound:
            raise SubmitOutcomeUnknown(
                f"alpaca: submit of {cid} got no answer ({cause}) and the venue does not show it yet; "
                "the outcome is unknown: look it up by client_order_id later"
            ) from None
        except VenueError as e:
            raise SubmitOutcomeUnknown(
                f"alpaca: submit of {cid} got no answer ({cause}); the look-up failed too ({e})"
            ) from None

    def cancel(self, venue_order_id: str) -> None:
        """Request cancellation of ``venue_order_id``; the outcome arrives on the stream. Raises
        ``OrderNotFound`` (HTTP 404), ``OrderNotCancelable`` (HTTP 422: finished or being replaced),
        or the query errors above."""
        try:
            self._call("DELETE", f"/orders/{venue_order_id}", what=f"cancel {venue_order_id}")
        except _HTTPFailure as e:
            if e.status == 404:
                raise OrderNotFound(f"alpaca: no order {venue_order_id!r} to cancel") from None
            if e.status == 422:
                raise OrderNotCancelable(f"alpaca: order {venue_order_id} is not cancelable: {e.venue_message}") from None
            raise

    def replace_order(self, venue_order_id: str, *, qty: Decimal, limit_price: Decimal | None = None,
                      stop_price: Decimal | None = None) -> VenueOrder:
        """Amend ``venue_order_id`` to ``qty`` (the whole order's quantity, the filled part included)
        at these prices: PATCH /v2/orders/{id}, as alpaca-py's ``replace_order_by_id`` sends it, with
        decimal strings (its ``ReplaceOrderRequest`` takes an int qty and float prices). Alpaca
        answers with a NEW order (``replaces`` = the old one) for the quantity still to fill, so
        the request's qty is ``qty`` less what the venue has filled on the order and on every
        order it replaced (read first: a fill between the read and the PATCH stays the old
        order's). Returns the replacement. Raises
        ``OrderNotFound`` (HTTP 404), ``ReplaceRejected`` (HTTP 422: finished, accepted but not
        yet new, being cancelled or replaced; any other 4xx), the query errors above (the
        outcome is then unknown: the order's state at the venue tells)."""
        current = self.order_by_venue_id(venue_order_id)
        filled, link = current.filled_qty, current
        for _ in range(MAX_CHAIN_LOOKUPS):  # the orders it replaced filled part of ours too
            if not link.replaces:
                break
            link = self.order_by_venue_id(link.replaces)
            filled += link.filled_qty
        else:
            raise VenueQueryFailed(f"alpaca: order {venue_order_id} replaces more than {MAX_CHAIN_LOOKUPS} "
                                   "orders: what its chain filled is unknown")
        left = qty - filled
        if left <= 0:
            raise ReplaceRejected(f"alpaca: order {venue_order_id} and the orders it replaced have {filled} "
                                  f"filled; {qty} leaves nothing to replace")
        body: dict[str, Any] = {"qty": format(left.normalize(), "f")}
        if limit_price is not None:
            body["limit_price"] = format(limit_price, "f")
        if stop_price is not None:
            body["stop_price"] = format(stop_price, "f")
        try:
            raw = self._call("PATCH", f"/orders/{venue_order_id}", body, what=f"replace {venue_order_id}")
        except _HTTPFailure as e:
            if e.status == 404:
                raise OrderNotFound(f"alpaca: no order {venue_order_id!r} to replace") from None
            if e.status is not None and 400 <= e.status < 500:
                raise ReplaceRejected(f"alpaca: order {venue_order_id} not replaced (HTTP {e.status}): "
                                      f"{e.venue_message}") from None
            raise
        return self._remember(parse_order(raw))

    # -- trade-updates stream -------------------------------------------------------------------

    def start_stream(
        self,
        on_update: Callable[[VenueUpdate], None],
        *,
        since: datetime | None = None,
        reconnect_min_delay: float = 1.0,
        reconnect_max_delay: float = 30.0,
    ) -> None:
        """Follow the trade-updates stream on a background thread, calling ``on_update`` for each
        ``VenueUpdate`` (ack, fill, cancelled, rejected, expired, replaced), in order, once.

        After every (re)connect, before reading the stream, the adapter backfills over REST: orders
        and fills since the last event seen (at first: ``since``, default now), so events sent while
        disconnected are not lost. A failed backfill closes the connection and reconnects (so the
        stream never goes on with a hole); reconnects back off exponentially between
        ``reconnect_min_delay`` and ``reconnect_max_delay`` seconds (alpaca-py's loop). Checks the
        keys first (``VenueConnectionError`` if refused)."""
        if self._stream_thread is not None:
            raise RuntimeError("alpaca: the trade-updates stream is already running")
        if since is not None:
            _iso(since)
        self._call("GET", "/account", what="stream start (key check)")
        self._on_update = on_update
        self._stream_stopping = False
        self._stream_since = since or datetime.now(timezone.utc)
        stream = _TradeUpdatesStream(
            on_connected=self._on_stream_connected,
            api_key=self._api_key,
            secret_key=self._secret_key,
            paper=self._paper,
            raw_data=True,
            url_override=self._stream_url,
            websocket_params={
                "ping_interval": 10, "ping_timeout": 30, "max_queue": 1024,
                "open_timeout": self.timeout, "close_timeout": 1,
            },
        )
        stream._reconnect_min_backoff = reconnect_min_delay
        stream._reconnect_max_backoff = max(reconnect_min_delay, reconnect_max_delay)
        stream.subscribe_trade_updates(self._on_stream_message)
        self._stream = stream
        self._stream_thread = threading.Thread(target=stream.run, name="alpaca-trade-updates", daemon=True)
        self._stream_thread.start()

    def stop_stream(self, timeout: float = 10.0) -> None:
        """Stop following the stream (returns once its thread has ended, or raises after ``timeout``)."""
        stream, thread = self._stream, self._stream_thread
        if stream is None or thread is None:
            return
        with self._emit_lock:
            self._stream_stopping = True
        deadline = time.monotonic() + timeout
        while stream._loop is None and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)  # the stream drains its stop queue at start: wait until it runs

        async def stop() -> None:
            await stream.stop_ws()
            await stream.close()  # wake a pending recv now instead of after its 5 s poll

        loop = stream._loop
        if loop is not None and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(stop(), loop).result(max(0.1, deadline - time.monotonic()))
            except Exception as e:  # noqa: BLE001 - the loop may end while we ask it to
                log.debug("alpaca: stopping the stream: %r", e)
        thread.join(max(0.1, deadline - time.monotonic()))
        if thread.is_alive():
            raise VenueConnectionError(f"alpaca: the trade-updates stream did not stop within {timeout:g} s")
        self._stream = None
        self._stream_thread = None

    def close(self) -> None:
        """Stop the trade-updates stream and close the HTTP session; the adapter is unusable
        afterwards."""
        self.stop_stream()
        self._client._session.close()

    async def _on_stream_connected(self) -> None:
        self.stream_connects += 1
        await asyncio.to_thread(self._backfill)

    def _backfill(self) -> None:
        with self._emit_lock:
            since = self._last_event_at or self._stream_since
        since = since - BACKFILL_MARGIN if since is not None else None
        try:
            by_id = {o.venue_order_id: o for o in self.recent_orders(since)}
            fills = self.fills(since)
            # an order placed between the two reads has fills but was not among the orders: read it
            # (its ack goes before its fills; else its live ``new`` would come after them)
            for venue_order_id in dict.fromkeys(f.venue_order_id for f in fills if f.venue_order_id):
                if venue_order_id not in by_id:
                    with contextlib.suppress(OrderNotFound):
                        by_id[venue_order_id] = self.order_by_venue_id(venue_order_id)
        except VenueError as e:
            self.last_backfill_error = str(e)
            log.warning("alpaca: backfill after (re)connect failed, reconnecting to retry: %s", e)
            raise
        orders = list(by_id.values())
        self.last_backfill_error = None
        epoch = datetime.min.replace(tzinfo=timezone.utc)
        staged: list[tuple[datetime, int, VenueUpdate, tuple]] = []
        for order in orders:
            raw_status = order.raw_status.lower()
            cid = self._origin_client_id(order.venue_order_id) if order.replaces else order.client_order_id
            old = by_id.get(order.replaces or "")
            took_over = old is not None and old.raw_status.lower() == "replaced" \
                and str(old.raw.get("replaced_by")) == order.venue_order_id
            if order.replaces and not took_over and raw_status in ("rejected", "pending_new", "accepted"):
                # a replacement the venue rejected before it took over (the old order filled
                # first) refuses our amendment; one not live yet says nothing until its ``new``
                if raw_status == "rejected":
                    staged.append((order.updated_at or epoch, 2, VenueUpdate(
                        kind="replace_rejected", client_order_id=cid, venue_order_id=order.venue_order_id,
                        reason=f"backfill: replacement {order.venue_order_id} rejected", order=order,
                        occurred_at=order.updated_at, raw={"backfill": "order", "order": order.raw},
                    ), (("replace_rejected", order.venue_order_id),)))
                continue
            if order.replaces:  # a replacement carries the order it replaced on: no ack of its own
                staged.append((order.submitted_at or epoch, 0, VenueUpdate(
                    kind="replaced", client_order_id=cid, venue_order_id=order.venue_order_id,
                    occurred_at=order.submitted_at, raw={"backfill": "order", "order": order.raw}, order=order,
                ), (("replaced", order.venue_order_id),)))
            elif order.status != "rejected":
                staged.append((order.submitted_at or epoch, 0, VenueUpdate(
                    kind="ack", client_order_id=cid, venue_order_id=order.venue_order_id,
                    occurred_at=order.submitted_at, raw={"backfill": "order", "order": order.raw},
                ), (("ack", order.venue_order_id),)))
            kind = {"canceled": "cancelled", "cancelled": "cancelled", "expired": "expired",
                    "rejected": "rejected"}.get(raw_status)  # "replaced": its replacement says it
            if kind:
                staged.append((order.updated_at or epoch, 2, VenueUpdate(
                    kind=kind, client_order_id=cid, venue_order_id=order.venue_order_id,
                    reason=f"backfill: order status {order.raw_status}", occurred_at=order.updated_at,
                    raw={"backfill": "order", "order": order.raw},
                ), ((kind, order.venue_order_id),)))
        for fill in fills:
            cum = fill.raw.get("cum_qty")
            keys: tuple = (("fill", fill.exec_id),)
            if cum not in (None, ""):
                keys += (("fillcum", fill.venue_order_id, _norm(Decimal(str(cum)))),)
            cid = self._origin_client_id(fill.venue_order_id) or fill.client_order_id
            if cid is None and fill.venue_order_id in by_id:
                cid = by_id[fill.venue_order_id].client_order_id
            staged.append((fill.occurred_at or epoch, 1, VenueUpdate(
                kind="fill", client_order_id=cid, venue_order_id=fill.venue_order_id, fill=fill,
                occurred_at=fill.occurred_at, raw={"backfill": "activity", "activity": fill.raw},
            ), keys))
        staged.sort(key=lambda s: (s[0], s[1]))
        for _, _, update, keys in staged:
            self._emit(update, keys, update.occurred_at)

    async def _on_stream_message(self, msg: Any) -> None:
        data = msg.get("data") if isinstance(msg, dict) else None
        if not isinstance(data, dict):
            log.warning("alpaca: trade update without data: %r", msg)
            return
        try:
            parsed = self._parse_trade_update(data)
        except VenueError as e:
            log.warning("alpaca: unreadable trade update (%s): %r", e, data)
            return
        if parsed is not None:
            self._emit(*parsed)

    def _parse_trade_update(self, data: dict) -> tuple[VenueUpdate, tuple, datetime | None] | None:
        event = str(data.get("event") or "").lower()
        raw_order = data.get("order")
        if not isinstance(raw_order, dict):
            raise _bad("trade update without an order")
        at = _ts(data.get("timestamp") or data.get("at"), "timestamp")
        order = self._remember(parse_order(raw_order))
        replacement = order.venue_order_id in self._replaced
        cid = self._origin_client_id(order.venue_order_id) if replacement else order.client_order_id
        common = dict(client_order_id=cid, venue_order_id=order.venue_order_id, occurred_at=at, raw=_plain(data))
        if event == "new" and replacement:
            # the order that replaced ours, routed: it carries our order on (its qty, prices, id)
            return VenueUpdate(kind="replaced", order=order, **common), (("replaced", order.venue_order_id),), at
        if event in ("accepted", "pending_new") and replacement:
            return None  # not routed yet: it may still be rejected (the old order filling first)
        if event in ("new", "accepted"):
            return VenueUpdate(kind="ack", **common), (("ack", order.venue_order_id),), at
        if event == "replaced":
            # The replaced order's event carries the old order (old prices: alpaca-trade-api-csharp#149);
            # the replacement's own ``new`` says what carries our order on.
            return None
        if event in ("fill", "partial_fill"):
            exec_id = data.get("execution_id")
            cum = order.filled_qty
            exec_id = str(exec_id) if exec_id else f"{order.venue_order_id}:{_norm(cum)}"
            fill = VenueFill(
                exec_id=exec_id,
                client_order_id=cid,
                venue_order_id=order.venue_order_id,
                symbol=order.symbol,
                side=order.side,
                qty=_dec(data.get("qty"), "qty"),
                price=_dec(data.get("price"), "price"),
                occurred_at=at,
                raw=_plain(data),
            )
            keys = (("fill", exec_id), ("fillcum", order.venue_order_id, _norm(cum)))
            return VenueUpdate(kind="fill", fill=fill, **common), keys, at
        if event == "order_replace_rejected" or (event == "rejected" and replacement):
            # "order_replace_rejected: Sent when the order replace has been rejected" (on the old
            # order), or the replacement itself rejected ("If the existing open order is filled
            # before the replacing (new) order reaches the execution venue, the replacing (new)
            # order is rejected"): our amendment is refused; our order is not (it works on, or
            # its own fills finish it)
            reason = str(data.get("reason") or raw_order.get("reject_reason") or event)
            return (VenueUpdate(kind="replace_rejected", reason=reason, order=order, **common),
                    (("replace_rejected", order.venue_order_id),), at)
        kind = {"canceled": "cancelled", "expired": "expired", "rejected": "rejected"}.get(event)
        if kind is None:
            # The order goes on (or waits): nothing for our lifecycle. Reconciliation reads the
            # order itself (a restated price or quantity, a held leg, a suspended order).
            level = logging.DEBUG if event in QUIET_TRADE_EVENTS else logging.INFO
            log.log(level, "alpaca: trade update %r of order %s not turned into an update", event,
                    order.venue_order_id)
            return None
        reason = str(data.get("reason") or raw_order.get("reject_reason") or "") if kind == "rejected" else ""
        return VenueUpdate(kind=kind, reason=reason, **common), ((kind, order.venue_order_id),), at

    def _emit(self, update: VenueUpdate, keys: tuple, at: datetime | None) -> None:
        with self._emit_lock:
            if self._stream_stopping or self._on_update is None:
                return
            if at is not None and (self._last_event_at is None or at > self._last_event_at):
                self._last_event_at = at
            duplicate = any(k in self._seen for k in keys)
            self._seen.update(keys)
            if duplicate:
                return
            try:
                self._on_update(update)
            except Exception:  # noqa: BLE001 - a consumer's bug must not kill the stream
                log.exception("alpaca: on_update raised for %r", update)


def unposted_regulatory_fees(fills: list[VenueFill] | Unknown, fees: list[VenueFee] | Unknown) -> dict[str, Decimal]:
    """The most Alpaca may have deducted in regulatory fees it has not posted yet: over the
    equity sales of New York days after the last day a ``FEE`` was posted for (fees are posted
    at the end of the day), at the bounds above. Empty when either is unknown (nothing is
    excused then: the cash check waits for the fills anyway)."""
    if isinstance(fills, Unknown) or isinstance(fees, Unknown):
        return {}
    posted_days = [f.occurred_at.date().isoformat() for f in fees
                   if f.occurred_at is not None and str(f.raw.get("activity_type", "")).upper() == "FEE"]
    last_posted = max(posted_days, default="")
    bound = Decimal(0)
    for f in fills:
        if f.side != "sell" or "/" in f.symbol or f.occurred_at is None:
            continue
        if f.occurred_at.astimezone(NEW_YORK).date().isoformat() <= last_posted:
            continue
        bound += f.qty * REG_FEE_PER_SHARE_MAX + f.qty * f.price * REG_FEE_NOTIONAL_RATE_MAX + REG_FEE_ROUNDING
    return {"USD": bound} if bound else {}


__all__ = [
    "AlpacaAdapter",
    "unposted_regulatory_fees",
    "MAX_CLIENT_ORDER_ID",
    "OrderNotCancelable",
    "OrderRejectedByVenue",
    "SubmitOutcomeUnknown",
    "VenueBusy",
    "ALPACA_ORDER_STATUSES",
    "QUIET_TRADE_EVENTS",
    "canonical_symbol",
    "map_status",
    "parse_fill_activity",
    "parse_order",
]
