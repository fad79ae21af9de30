"""The ccxt adapter against the fake Kraken spot REST API (tests/support/fake_kraken.py, written
from Kraken's documentation), through the real ``ccxt`` client: AddOrder answers a txid only,
fees in the currency the order's flags choose, cl_ord_id's formats, 50-item pages with ``ofs``,
signed requests, lost answers, and the live order flow."""

from __future__ import annotations

import functools
import time
import uuid
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
from tests.support.fake_kraken import FakeKraken
from tradestate.adapters.brokers.base import (
    OrderNotCancelable,
    OrderNotFound,
    VenueConnectionError,
    VenueQueryFailed,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def fake():
    with FakeKraken(balances={"ZUSD": "100000", "XXBT": "1"}) as f:
        yield f


adapter_for = functools.partial(ccxt_adapter, exchange="kraken", symbols="BTC/USD,ETH/USD")  # (fake, **overrides)
limit = functools.partial(limit_order, symbol="BTC/USD", qty="0.5", price="40000")  # (cid, **overrides)


@pytest.fixture
def adapter(fake):
    a = adapter_for(fake)
    yield a
    a.close()


def sent(fake: FakeKraken, path: str) -> list[dict[str, str]]:
    return [p for m, at, p in fake.calls if (m, at) == ("POST", path)]


def test_place_and_ack_reads_the_order_back(fake, adapter):
    order = adapter.submit(limit("k-1"))
    # AddOrder answers a txid and a description only: the order's state is read back (QueryOrders)
    assert (order.status, order.raw_status, order.client_order_id) == ("open", "open", "k-1")
    assert (order.symbol, order.qty, order.limit_price, order.filled_qty) == ("BTC/USD", D("0.5"), D("40000"), D(0))
    (add,) = sent(fake, "/0/private/AddOrder")
    assert (add["pair"], add["type"], add["ordertype"], add["cl_ord_id"]) == ("XXBTZUSD", "buy", "limit", "k-1")
    assert (add["timeinforce"], add["oflags"]) == ("GTC", "fciq")  # the fee in USD, asked for
    assert fake.orders[order.venue_order_id].cl_ord_id == "k-1"
    # 20,000 USD held by the open order: the balance is the whole of it
    check_one_open_buy(adapter, order)


def test_partial_then_full_fill_with_the_fee_in_usd(fake, adapter):
    # maker 0.16 % of 8,000, taker 0.26 % of 12,000: cash fees in USD, the position is what was bought
    check_a_partial_then_full_fill(fake, adapter, "k-2", "closed", ('12.8', '31.2'))


def test_an_order_placed_elsewhere_pays_a_sells_fee_in_btc_by_default(fake, adapter):
    # Kraken's default without fciq/fcib: the fee in the base asset when selling. Its trades do not
    # name the fee's currency; the order's flags do: the fee shrinks the BTC position (in kind)
    txid = fake.place("XBTUSD", "sell", "0.5", "41000")
    fake.fill(txid, "0.5")
    (fill,) = adapter.fills()
    assert (fill.side, fill.fee, fill.client_order_id) == ("sell", D(0), None)
    in_kind = adapter.fee_in_kind(fill.exec_id)
    assert (in_kind.amount, in_kind.currency, in_kind.in_kind) == (D("0.0008"), "BTC", True)  # 0.16 % of 0.5
    assert [(p.symbol, p.qty) for p in adapter.positions()] == [("BTC/USD", D("0.4992"))]


def test_cancel_and_cancel_errors(fake, adapter):
    order = adapter.submit(limit("k-3"))
    adapter.cancel(order.venue_order_id)
    assert fake.orders[order.venue_order_id].status == "canceled"
    assert adapter.open_orders() == []
    assert [(o.client_order_id, o.status) for o in adapter.recent_orders()] == [("k-3", "cancelled")]
    with pytest.raises(OrderNotCancelable, match="EOrder:Unknown order"):
        adapter.cancel(order.venue_order_id)  # Kraken: EOrder:Unknown order for a finished order too
    with pytest.raises(OrderNotFound):
        adapter.cancel("OAAAAA-BBBBB-CCCCCC")  # QueryOrders: EOrder:Invalid order


def test_a_refused_order_comes_back_rejected_with_krakens_error(fake, adapter):
    order = adapter.submit(limit("k-4", qty="10"))  # 400,000 USD: too little balance
    assert order.status == "rejected" and "EOrder:Insufficient funds" in order.raw["reject_reason"]
    assert fake.orders == {}


def test_client_order_ids_as_kraken_takes_them_and_never_twice(fake, adapter):
    with pytest.raises(ValueError, match="18 characters or a UUID"):
        adapter.submit(limit("x" * 19))
    long_uuid = str(uuid.uuid4())
    assert adapter.submit(limit(long_uuid)).client_order_id == long_uuid
    with pytest.raises(ValueError, match="24/7"):
        adapter.submit(limit("k-fok", tif="fok"))  # AddOrder's timeinforce: GTC, IOC, GTD
    first = adapter.submit(limit("k-5", qty="0.1"))
    again = adapter.submit(limit("k-5", qty="0.1"))
    assert again.venue_order_id == first.venue_order_id and len(fake.orders) == 2
    # the venue itself refuses a cl_ord_id in use by an open order
    with pytest.raises(Exception, match="EOrder:Duplicate order"):
        fake.place("XBTUSD", "buy", "0.1", "40000", cl_ord_id="k-5")
    # a filled order's id: Kraken would take it again (unique among open orders); we never resend
    fake.fill(first.venue_order_id, "0.1")
    third = adapter.submit(limit("k-5", qty="0.1"))
    assert (third.venue_order_id, third.status) == (first.venue_order_id, "filled") and len(fake.orders) == 2


def test_every_page_of_closed_orders_and_trades_is_read(fake, adapter):
    for n in range(60):  # more than one page of 50 each
        fake.place("XBTUSD", "buy", "0.001", cl_ord_id=f"m-{n}")  # market: filled at once
    fake.place("ETHUSD", "buy", "0.01", cl_ord_id="e-1")
    orders = [o for o in adapter.recent_orders() if o.symbol == "BTC/USD"]
    assert len(orders) == 60 and {o.status for o in orders} == {"filled"}
    fills = adapter.fills()
    assert len(fills) == 61 and len({f.exec_id for f in fills}) == 61
    pages = [p.get("ofs") for p in sent(fake, "/0/private/TradesHistory")]
    assert "50" in pages  # the second page was asked for
    assert adapter.order_by_client_id("m-3").filled_qty == D("0.001")


def test_an_order_placed_before_since_and_filled_after_is_listed(fake, adapter):
    txid = fake.place("XBTUSD", "buy", "0.1", "40000", cl_ord_id="late")
    time.sleep(1.1)  # Kraken's start is in whole seconds
    since = datetime.now(timezone.utc)
    time.sleep(0.05)
    fake.fill(txid, "0.1")
    # the venue filters by start (closetime both: opened or closed after it); ccxt's own filter by
    # the opening time would drop this order
    assert [(o.client_order_id, o.status) for o in adapter.recent_orders(since)] == [("late", "filled")]
    assert [f.venue_order_id for f in adapter.fills(since)] == [txid]


def test_a_submit_whose_answer_is_lost_is_looked_up_never_resent(fake):
    check_a_lost_submit_answer(fake, adapter_for(fake, timeout=0.5), "/0/private/AddOrder", limit)


def test_signed_requests(fake):
    with pytest.raises(VenueConnectionError, match="API key"):
        adapter_for(fake, api_key="other").balances()  # EAPI:Invalid key
    wrong = "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA=="
    with pytest.raises(VenueQueryFailed, match="EAPI:Invalid signature"):
        adapter_for(fake, secret=wrong).balances()
    a = adapter_for(fake)
    a.balances()
    fake._nonces[fake.api_key] += 10**9  # another program used the key with a larger nonce
    with pytest.raises(VenueQueryFailed, match="another client using this API key with a larger nonce"):
        a.balances()


def test_order_flow_records_fills_with_usd_fees_and_cancels(fake, adapter, tmp_path):
    check_the_order_flow(fake, adapter, f"sqlite:///{tmp_path / 'log.db'}", "KRAKEN")
