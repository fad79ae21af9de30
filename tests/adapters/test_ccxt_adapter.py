"""The ccxt adapter against the fake Binance spot REST API, through the real ``ccxt`` client
(never mocked): orders placed, acknowledged, partly and fully filled with the fee in the asset
received, cancelled, rejected with Binance's error code, duplicate client order ids, bounded
timeouts, signed-request errors, and the live order flow."""

from __future__ import annotations

import functools
import decimal
import time
from datetime import datetime, timezone
from decimal import Decimal as D

import ccxt
import pytest

from tests.support.ccxt_venues import ACCOUNT, ccxt_adapter, check_a_lost_submit_answer, limit_order
from tests.support.fake_binance import FakeBinance
from tradestate.adapters.brokers import ccxt_venue
from tradestate.adapters.brokers.base import (
    OrderNotCancelable,
    OrderNotFound,
    SubmitOutcomeUnknown,
    Unknown,
    VenueConnectionError,
    VenueQueryFailed,
)
from tradestate.adapters.brokers.registry import make_adapter
from tradestate.adapters.store import open_store
from tradestate.client import TradestateClient
from tradestate.domain.errors import InvalidInput
from tradestate.domain.ids import order_stream_id
from tradestate.order_flow import OrderFlow



@pytest.fixture
def fake():
    with FakeBinance(balances={"USDT": "100000", "BTC": "1"}) as f:
        yield f


adapter_for = functools.partial(ccxt_adapter, exchange="binance", symbols="BTC/USDT,ETH/USDT")  # (fake, **overrides)
limit = functools.partial(limit_order, symbol="BTC/USDT", qty="0.5", price="40000")  # (cid, **overrides)


@pytest.fixture
def adapter(fake):
    a = adapter_for(fake)
    yield a
    a.close()


def test_place_and_ack_sends_our_client_order_id_signed(fake, adapter):
    order = adapter.submit(limit("c-1"))
    assert order.status == "open" and order.raw_status == "NEW"
    assert order.client_order_id == "c-1" and order.symbol == "BTC/USDT"
    assert (order.qty, order.limit_price, order.filled_qty) == (D("0.5"), D("40000"), D(0))
    at_venue = fake.orders[int(order.venue_order_id)]
    assert at_venue.client_order_id == "c-1" and at_venue.time_in_force == "GTC"
    # 0.5 x 40000 USDT locked by the venue: the balance reports free + locked
    assert {b.currency: b.cash for b in adapter.balances()} == {"USDT": D("100000")}
    assert [(o.venue_order_id, o.status) for o in adapter.open_orders()] == [(order.venue_order_id, "open")]


def test_partial_then_full_fill_with_the_fee_in_the_asset_received(fake, adapter):
    order = adapter.submit(limit("c-2", qty="0.5", price="40000"))
    vid = int(order.venue_order_id)
    fake.fill(vid, "0.2", "39999.99")
    partial = adapter.order_by_client_id("c-2")
    assert (partial.status, partial.filled_qty, partial.raw_status) == ("partially_filled", D("0.2"), "PARTIALLY_FILLED")
    fake.fill(vid, "0.3", "40000")
    done = adapter.order_by_client_id("c-2")
    assert (done.status, done.filled_qty) == ("filled", D("0.5"))
    fills = adapter.fills()
    # a buy pays its fee in BTC, the asset received: taken from the position (in kind), not cash
    assert [(f.qty, f.price, f.fee, f.fee_currency) for f in fills] == [
        (D("0.2"), D("39999.99"), D(0), "BTC"), (D("0.3"), D("40000"), D(0), "BTC")]
    fees = adapter.snapshot(now=datetime.now(timezone.utc)).fees
    assert [(x.fee_id, x.amount, x.currency, x.symbol, x.in_kind) for x in fees] == [
        (fills[0].exec_id, D("0.0002"), "BTC", "BTC/USDT", True), (fills[1].exec_id, D("0.0003"), "BTC", "BTC/USDT", True)]
    assert {f.client_order_id for f in fills} == {"c-2"} and {f.venue_order_id for f in fills} == {str(vid)}
    assert [f.exec_id for f in done.fills] == [f.exec_id for f in fills]
    # the position is the BTC balance: 1 + 0.5 bought - 0.0005 taken as fee, exactly
    assert [(p.symbol, p.qty) for p in adapter.positions()] == [("BTC/USDT", D("1.4995"))]
    # a sell pays in USDT, the asset it receives
    sell = adapter.submit(limit("c-3", qty="1", price="41000", side="sell"))
    fake.fill(int(sell.venue_order_id), "1")
    last = adapter.fills()[-1]
    assert (last.side, last.fee, last.fee_currency) == ("sell", D("41"), "USDT")
    assert {b.currency: b.cash for b in adapter.balances()} == {"USDT": D("100000") - D("7999.998") - D("12000")
                                                                + D("41000") - D("41")}


def test_amounts_are_exact_decimals_never_floats(fake, adapter):
    # ccxt would truncate 0.12345678 to the lot step (0.00001) and send 0.12345: refused instead
    with pytest.raises(ValueError, match="not a multiple of the venue's step"):
        adapter.submit(limit("c-4", qty="0.12345678", price="43210.99"))
    with pytest.raises(ValueError, match="limit_price 43210.995"):
        adapter.submit(limit("c-4", qty="0.12345", price="43210.995"))
    assert fake.orders == {}
    order = adapter.submit(limit("c-4", qty="0.12345", price="43210.99"))
    fake.fill(int(order.venue_order_id), "0.12345")
    f = adapter.fills()[0]
    assert f.qty == D("0.12345") and f.price == D("43210.99")
    assert adapter.fee_in_kind(f.exec_id).amount == D("0.00012345")  # 8 places, as Binance reports it
    values = [f.qty, f.price, adapter.fee_in_kind(f.exec_id).amount, *(p.qty for p in adapter.positions()),
              *(b.cash for b in adapter.balances())]
    for value in values:
        assert type(value) is D


def test_cancel_and_cancel_errors(fake, adapter):
    order = adapter.submit(limit("c-5"))
    adapter.cancel(order.venue_order_id)
    assert fake.orders[int(order.venue_order_id)].status == "CANCELED"
    assert adapter.open_orders() == []
    assert [(o.client_order_id, o.status) for o in adapter.recent_orders()] == [("c-5", "cancelled")]
    assert {b.currency: b.cash for b in adapter.balances()} == {"USDT": D("100000")}  # the lock is released
    with pytest.raises(OrderNotCancelable, match="-2011"):
        adapter.cancel(order.venue_order_id)  # Binance: -2011 "Unknown order sent." for a finished order
    with pytest.raises(OrderNotFound):
        adapter.cancel("999999")


def test_submit_looks_its_id_up_in_its_own_symbol_only(fake, adapter):
    adapter.positions()  # markets loaded
    fake.calls.clear()
    adapter.submit(limit("c-own"))  # a BTC/USDT order: ETH/USDT's orders have nothing to say about it
    lookups = [p.get("symbol") for m, path, p in fake.calls if (m, path) == ("GET", "/api/v3/order")]
    assert lookups == ["BTCUSDT"]
    fake.stall("POST", "/api/v3/order", 4, after=True)  # an answer lost: looked up, again in BTC/USDT only
    fake.calls.clear()
    order = adapter_for(fake, timeout=0.5).submit(limit("c-own-2"))
    assert order.client_order_id == "c-own-2"
    symbols = {p.get("symbol") for m, path, p in fake.calls if path in ("/api/v3/order", "/api/v3/allOrders")}
    assert symbols == {"BTCUSDT"}


def test_a_refused_order_comes_back_rejected_with_binance_error_code(fake, adapter):
    order = adapter.submit(limit("c-6", qty="10", price="40000"))  # 400,000 USDT: too little balance
    assert order.status == "rejected" and order.raw["code"] == -2010
    assert "insufficient balance" in order.raw["reject_reason"]
    assert fake.orders == {}


def test_duplicate_client_order_id_is_refused_by_the_venue_and_never_sent_twice(fake, adapter):
    first = adapter.submit(limit("c-7"))
    # the venue itself refuses the id among open orders (-2010 "Duplicate order sent.")
    options = {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False, "fetchMargins": False}
    raw = ccxt.binance({"apiKey": fake.api_key, "secret": fake.secret, "options": options})
    raw.urls["api"] = {**raw.urls["api"], "public": fake.url + "/api/v3", "private": fake.url + "/api/v3"}
    # ccxt used directly sets rounding on the thread's decimal context (the adapter keeps it inside)
    with decimal.localcontext(), pytest.raises(ccxt.InvalidOrder, match="-2010.*Duplicate order sent"):
        raw.create_order("BTC/USDT", "limit", "buy", "0.1", "40000", {"clientOrderId": "c-7"})
    # our submit of the same id returns the venue's order
    again = adapter.submit(limit("c-7"))
    assert again.venue_order_id == first.venue_order_id and len(fake.orders) == 1
    # Binance accepts a FILLED order's id again ("unique among open orders"): we never resend it
    fake.fill(int(first.venue_order_id), "0.5")
    third = adapter.submit(limit("c-7"))
    assert (third.venue_order_id, third.status) == (first.venue_order_id, "filled") and len(fake.orders) == 1


def test_a_hanging_query_is_bounded_and_the_snapshot_says_unknown(fake):
    adapter = adapter_for(fake, timeout=0.5)
    adapter.positions()  # markets loaded
    fake.stall("GET", "/api/v3/openOrders", 10)
    started = time.monotonic()
    with pytest.raises(VenueQueryFailed, match="no answer within 0.5 s"):
        adapter.open_orders()
    assert time.monotonic() - started < 2
    fake.stall("GET", "/api/v3/openOrders", 10)
    snap = adapter.snapshot(now=datetime.now(timezone.utc))
    assert isinstance(snap.open_orders, Unknown) and not isinstance(snap.positions, Unknown)


def test_every_adapter_raises_the_shared_exceptions_of_base():
    # one class per outcome, whatever the venue: the order flow catches base's (the old names stay)
    from tradestate.adapters.brokers import alpaca, ib

    for module in (ccxt_venue, alpaca, ib):
        assert module.SubmitOutcomeUnknown is SubmitOutcomeUnknown, module.__name__
        assert module.OrderNotCancelable is OrderNotCancelable, module.__name__
    assert issubclass(SubmitOutcomeUnknown, VenueConnectionError)


def test_a_submit_whose_answer_is_lost_is_looked_up_never_resent(fake):
    check_a_lost_submit_answer(fake, adapter_for(fake, timeout=0.5), "/api/v3/order", limit)


def test_signed_request_errors(fake):
    fake.clock_offset_ms = -60_000  # our clock a minute ahead of Binance's: -1021
    with pytest.raises(VenueQueryFailed, match="-1021"):
        adapter_for(fake).balances()
    fake.clock_offset_ms = 0
    with pytest.raises(VenueConnectionError, match="API key"):
        adapter_for(fake, secret="wrong").balances()  # -1022: the signature does not verify
    with pytest.raises(VenueConnectionError, match="API key"):
        adapter_for(fake, api_key="other").balances()  # -2015


def test_24_7_venue_refuses_day_orders_before_sending(fake, adapter):
    with pytest.raises(ValueError, match="24/7"):
        adapter.submit(limit("c-10", tif="day"))
    with pytest.raises(ValueError, match="36"):
        adapter.submit(limit("x" * 37))
    assert fake.orders == {}


def test_settings_reach_the_ccxt_adapter(fake, monkeypatch):
    from tradestate.adapters.brokers.registry import OPTIONS
    from tradestate.settings import Settings

    monkeypatch.setenv("TRADESTATE_ACCOUNT", ACCOUNT)
    monkeypatch.setenv("TRADESTATE_CCXT_SYMBOLS", "kraken=BTC/USD;binance=BTC/USDT ETH/USDT")
    monkeypatch.setenv("TRADESTATE_CCXT_BASE_URL", fake.url)
    monkeypatch.setenv("TRADESTATE_CCXT_TIMEOUT", "1.5")
    monkeypatch.setenv("TRADESTATE_CCXT_BINANCE_API_KEY", fake.api_key)
    monkeypatch.setenv("TRADESTATE_CCXT_BINANCE_SECRET", fake.secret)
    options = Settings.load().broker_options("ccxt:binance")
    assert set(options) <= set(OPTIONS["ccxt"])
    a = make_adapter("ccxt:binance", options)
    assert (a.symbols, a.timeout, a.venue) == (["BTC/USDT", "ETH/USDT"], 1.5, "BINANCE")
    assert [p.symbol for p in a.positions()] == ["BTC/USDT"]
    a.close()


def test_one_symbol_per_base_asset_and_registry(fake):
    with pytest.raises(ValueError, match="share the base asset BTC"):
        adapter_for(fake, symbols="BTC/USDT,BTC/USDC")
    a = make_adapter("ccxt:binance", {"account": ACCOUNT, "symbols": "BTC/USDT", "api_key": fake.api_key,
                                      "secret": fake.secret, "base_url": fake.url, "timeout": "2"})
    assert (a.broker, a.venue, a.symbols) == ("ccxt:binance", "BINANCE", ["BTC/USDT"])
    assert [p.qty for p in a.positions()] == [D("1")]
    with pytest.raises(InvalidInput, match="unknown exchange"):
        make_adapter("ccxt:nosuchvenue", {"account": ACCOUNT, "symbols": "BTC/USDT", "api_key": "k", "secret": "s"})
    with pytest.raises(InvalidInput, match="symbols"):
        make_adapter("ccxt:binance", {"account": ACCOUNT, "api_key": "k", "secret": "s"})


def test_order_flow_forwards_records_fills_and_cancels(fake, adapter, tmp_path):
    client = TradestateClient(open_store(f"sqlite:///{tmp_path / 'log.db'}"))
    flow = OrderFlow(client, adapter)
    client.record_intent(ACCOUNT, "o-1", "BTC/USDT", "buy", "0.5", order_type="limit", limit_price="40000",
                         time_in_force="gtc", venue="BINANCE")
    order = flow.forward(ACCOUNT, "o-1")
    fake.fill(int(order.venue_order_id), "0.2")
    first = flow.pump()
    assert [r.duplicate for r in first.recorded] == [False, False, True]  # fill, its fee in BTC; the ack forward recorded
    client.catch_up()
    filled = client.state.orders[order_stream_id(ACCOUNT, "o-1")]
    assert (filled.status, filled.filled_qty) == ("partially_filled", D("0.2"))
    assert flow.pump().recorded == []  # each update once
    adapter.cancel(order.venue_order_id)
    flow.pump()
    client.catch_up()
    state = client.state.orders[order_stream_id(ACCOUNT, "o-1")]
    assert state.status == "cancelled" and state.filled_qty == D("0.2")
    # a refused intent is recorded as the venue's reject, with its code
    client.record_intent(ACCOUNT, "o-2", "BTC/USDT", "buy", "10", order_type="limit", limit_price="40000",
                         time_in_force="gtc", venue="BINANCE")
    assert flow.forward(ACCOUNT, "o-2").status == "rejected"
    client.catch_up()
    assert client.state.orders[order_stream_id(ACCOUNT, "o-2")].status == "rejected"
    client.close()


def test_the_generic_path_of_venues_without_binance_lookups(fake):
    """Kraken-like venues: no ``fetch_orders`` (open + closed orders instead) and no look-up by
    client order id (the history is searched). Exercised through ccxt's unified methods here."""
    a = adapter_for(fake)
    first = a.submit(limit("g-1"))
    fake.fill(int(first.venue_order_id), "0.5")
    a.submit(limit("g-2"))
    a.exchange_id = "generic"  # not a Binance-API venue: no origClientOrderId, no id cursors
    a._ccxt.has["fetchOrders"] = False
    assert sorted((o.client_order_id, o.status) for o in a.recent_orders()) == [("g-1", "filled"), ("g-2", "open")]
    found = a.order_by_client_id("g-1")
    assert (found.venue_order_id, found.filled_qty, len(found.fills)) == (first.venue_order_id, D("0.5"), 1)
    with pytest.raises(OrderNotFound):
        a.order_by_client_id("g-3")


def test_the_callers_decimal_context_is_left_as_it_was(fake, adapter):
    # ccxt's decimal_to_precision sets ROUND_HALF_UP and traps Underflow on the thread's context;
    # the fold's averages (divisions) would then round otherwise after any order was sent
    before = decimal.getcontext().copy()
    adapter.submit(limit("ctx-1"))
    adapter.open_orders()
    now = decimal.getcontext()
    assert (now.rounding, now.prec, dict(now.traps)) == (before.rounding, before.prec, dict(before.traps))
    assert D(2) / D(3) == D("0.6666666666666666666666666667")  # half-even, 28 digits
