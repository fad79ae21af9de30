"""The ccxt adapter against the fake Coinbase Advanced Trade REST API (tests/support/fake_coinbase.py,
written from Coinbase's documentation), through the real ``ccxt`` client: our client_order_id on
the venue's order, fees in the quote currency, an unknown order id (404 NOT_FOUND), refusals in
Coinbase's words, cursor pages, expired orders, signed requests (HMAC and JWT keys), lost answers
and the live order flow."""

from __future__ import annotations

import base64
import functools
import time
from datetime import datetime, timezone
from decimal import Decimal as D

import pytest

from tests.support.ccxt_venues import (
    ccxt_adapter,
    check_a_lost_submit_answer,
    check_a_partial_then_full_fill,
    check_one_open_buy,
    check_the_order_flow,
    limit_order,
)
from tests.support.fake_coinbase import FakeCoinbase
from tradestate.adapters.brokers.base import (
    OrderNotCancelable,
    OrderNotFound,
    OrderRequest,
    VenueConnectionError,
)

pytestmark = pytest.mark.timeout(60)
ORDERS = "/api/v3/brokerage/orders"


@pytest.fixture
def fake():
    with FakeCoinbase(balances={"USD": "100000", "BTC": "1"}) as f:
        yield f


adapter_for = functools.partial(ccxt_adapter, exchange="coinbase", symbols="BTC/USD,ETH/USD")  # (fake, **overrides)
limit = functools.partial(limit_order, symbol="BTC/USD", qty="0.5", price="40000")  # (cid, **overrides)


@pytest.fixture
def adapter(fake):
    a = adapter_for(fake)
    yield a
    a.close()


def sent(fake: FakeCoinbase, path: str) -> list[dict]:
    return [body for m, at, body in fake.calls if (m, at) == ("POST", path)]


def test_place_and_ack_under_our_client_order_id(fake, adapter):
    order = adapter.submit(limit("c-1"))
    assert (order.status, order.raw_status, order.client_order_id) == ("open", "OPEN", "c-1")
    assert (order.symbol, order.qty, order.limit_price, order.filled_qty) == ("BTC/USD", D("0.5"), D("40000"), D(0))
    (create,) = sent(fake, ORDERS)
    # ccxt would send its own "ccxt-<uuid>": the venue must know the order by our id
    assert (create["client_order_id"], create["product_id"], create["side"]) == ("c-1", "BTC-USD", "BUY")
    assert create["order_configuration"] == {"limit_limit_gtc": {"base_size": "0.5", "limit_price": "40000",
                                                                 "post_only": False}}
    assert fake.orders[order.venue_order_id].client_order_id == "c-1"
    # the open order holds 20,000 USD and its taker fee: the balance is available plus held
    check_one_open_buy(adapter, order)


def test_partial_then_full_fill_with_the_fee_in_usd(fake, adapter):
    # maker 0.4 % of 8,000, taker 0.6 % of 12,000: fees in USD, the quote currency
    check_a_partial_then_full_fill(fake, adapter, "c-2", "FILLED", ('32', '72'))


def test_a_market_buy_is_sized_in_the_base_asset(fake, adapter):
    # ccxt sizes a market buy in USD (quote_size) and needs a price for it; ours is 0.1 BTC
    order = adapter.submit(OrderRequest("c-m", "BTC/USD", "buy", "market", D("0.1"), time_in_force="ioc"))
    assert (order.status, order.filled_qty) == ("filled", D("0.1"))
    assert sent(fake, ORDERS)[0]["order_configuration"] == {"market_market_ioc": {"base_size": "0.1"}}
    (fill,) = order.fills
    assert (fill.price, fill.fee, fill.fee_currency) == (D("40000"), D("24"), "USD")  # taker 0.6 % of 4,000


def test_cancel_and_cancel_errors_in_coinbases_words(fake, adapter):
    order = adapter.submit(limit("c-3"))
    adapter.cancel(order.venue_order_id)
    assert fake.orders[order.venue_order_id].status == "CANCELLED"
    assert adapter.open_orders() == []
    assert [(o.client_order_id, o.status) for o in adapter.recent_orders()] == [("c-3", "cancelled")]
    with pytest.raises(OrderNotCancelable, match="DUPLICATE_CANCEL_REQUEST"):
        adapter.cancel(order.venue_order_id)
    filled = adapter.submit(limit("c-4", qty="0.1"))
    fake.fill(filled.venue_order_id, "0.1")
    with pytest.raises(OrderNotCancelable, match="filled.*ORDER_IS_FULLY_FILLED"):
        adapter.cancel(filled.venue_order_id)
    # an id Coinbase never issued: 404 NOT_FOUND (ccxt raises a plain ExchangeError for it)
    with pytest.raises(OrderNotFound):
        adapter.cancel("11111111-2222-3333-4444-555555555555")
    with pytest.raises(OrderNotFound):
        adapter.order_by_venue_id("11111111-2222-3333-4444-555555555555")


def test_an_order_the_venue_expires_is_expired_not_cancelled(fake, adapter):
    order = adapter.submit(limit("c-5"))
    fake.fill(order.venue_order_id, "0.1")
    fake.expire(order.venue_order_id)  # ccxt folds EXPIRED into "canceled"
    ended = adapter.order_by_venue_id(order.venue_order_id)
    assert (ended.status, ended.raw_status, ended.filled_qty) == ("expired", "EXPIRED", D("0.1"))
    # its last change known to the venue: the fill's time (last_fill_time), not its placing
    assert ended.updated_at > ended.submitted_at
    assert abs((ended.updated_at - ended.fills[-1].occurred_at).total_seconds()) < 0.001


def test_a_refused_order_comes_back_rejected_with_coinbases_reason(fake, adapter):
    order = adapter.submit(limit("c-6", qty="10"))  # 400,000 USD: too little balance
    assert order.status == "rejected" and "INSUFFICIENT_FUND" in order.raw["reject_reason"]
    assert fake.orders == {}


def test_a_client_order_id_is_never_sent_twice(fake, adapter):
    first = adapter.submit(limit("c-7", qty="0.1"))
    again = adapter.submit(limit("c-7", qty="0.1"))
    assert again.venue_order_id == first.venue_order_id and len(fake.orders) == 1
    assert len(sent(fake, ORDERS)) == 1  # looked up first, found
    fake.fill(first.venue_order_id, "0.1")
    third = adapter.submit(limit("c-7", qty="0.1"))
    assert (third.venue_order_id, third.status) == (first.venue_order_id, "filled") and len(fake.orders) == 1


def test_every_page_of_orders_fills_and_open_orders_is_read(fake, adapter):
    fake.balance["USD"] = D("10000000")
    for n in range(260):  # more than one page of 250 (orders and fills)
        fake.place("BTC-USD", "buy", "0.001", client_order_id=f"m-{n}")  # market: filled at once
    for n in range(120):  # more than ccxt's one page of 100 open orders
        fake.place("BTC-USD", "buy", "0.001", "30000", client_order_id=f"o-{n}")
    fake.place("ETH-USD", "buy", "0.01", client_order_id="e-1")
    assert len(adapter.open_orders()) == 120
    orders = [o for o in adapter.recent_orders() if o.symbol == "BTC/USD"]
    assert len(orders) == 380 and sum(o.status == "filled" for o in orders) == 260
    fills = adapter.fills()
    assert len(fills) == 261 and len({f.exec_id for f in fills}) == 261
    assert any("cursor" in params for m, path, params in fake.calls if path.endswith("/historical/fills"))
    assert adapter.order_by_client_id("m-3").filled_qty == D("0.001")


def test_fills_since_a_time_and_an_order_placed_before_it(fake, adapter):
    first = fake.place("BTC-USD", "buy", "0.01", "40000", client_order_id="early")
    fake.fill(first, "0.005")
    time.sleep(0.01)  # ccxt sends times in whole milliseconds
    since = datetime.now(timezone.utc)
    time.sleep(0.01)
    fake.fill(first, "0.005")
    assert [f.qty for f in adapter.fills(since)] == [D("0.005")]
    # Coinbase filters orders by their creation time: the order filled since is listed all the same
    assert [(o.client_order_id, o.status) for o in adapter.recent_orders(since)] == [("early", "filled")]


def test_a_submit_whose_answer_is_lost_is_looked_up_never_resent(fake):
    check_a_lost_submit_answer(fake, adapter_for(fake, timeout=0.5), ORDERS, limit)


def test_signed_requests_hmac_and_jwt_keys(fake):
    with pytest.raises(VenueConnectionError, match="API key"):
        adapter_for(fake, api_key="other").balances()
    with pytest.raises(VenueConnectionError, match="API key"):
        adapter_for(fake, secret="wrong-secret").balances()
    # a CDP key (ccxt signs an EdDSA JWT with it; the fake reads its subject, not its signature)
    fake.api_key = "organizations/org-1/apiKeys/key-1"
    seed = base64.b64encode(bytes(range(64))).decode()  # 88 characters: ccxt's Ed25519 key form
    cdp = adapter_for(fake, secret=seed)
    assert {b.currency: b.cash for b in cdp.balances()} == {"USD": D("100000")}
    with pytest.raises(VenueConnectionError, match="API key"):
        adapter_for(fake, api_key="organizations/org-1/apiKeys/other", secret=seed).balances()


def test_order_flow_records_fills_with_usd_fees_and_cancels(fake, adapter, tmp_path):
    check_the_order_flow(fake, adapter, f"sqlite:///{tmp_path / 'log.db'}", "COINBASE")


def test_the_live_feed_reports_each_ack_fill_and_expiry_once(fake, adapter):
    order = adapter.submit(limit("c-8"))
    elsewhere = fake.place("BTC-USD", "sell", "0.1", "41000", client_order_id="web-1")  # not ours
    fake.fill(order.venue_order_id, "0.2")
    fake.fill(elsewhere, "0.1")
    first = [(u.kind, u.client_order_id, u.fill.qty if u.fill else None) for u in adapter.updates()]
    assert sorted(first, key=str) == sorted([("fill", "c-8", D("0.2")), ("fill", "web-1", D("0.1")),
                                             ("ack", "c-8", None)], key=str)
    fake.expire(order.venue_order_id)  # Coinbase EXPIRED: reported as an expiry, not a cancel
    assert [(u.kind, u.client_order_id, u.reason) for u in adapter.updates()] == [("expired", "c-8", "EXPIRED")]
    assert list(adapter.updates()) == []
