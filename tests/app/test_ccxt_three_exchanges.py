"""Seed 002's three venues: one account trading BTC at Binance (BTC/USDT), Kraken (BTC/USD) and
Coinbase (BTC/USD), each through the real ccxt client against a fake of that exchange's own REST
API. Positions summed per asset across the three as the seed's script does; cash kept per venue,
so the USD at Kraken and the USD at Coinbase never net or correct each other; a fill missed at
Coinbase found and booked once, with its fee in USD, moving Coinbase's cash only."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from tests.app.test_ccxt_two_exchanges import ACCOUNT, btc, client, logged, url  # noqa: F401 (fixtures)
from tests.support.ccxt_venues import ccxt_adapter, cli_reconcile
from tests.support.fake_binance import FakeBinance
from tests.support.fake_coinbase import FakeCoinbase
from tests.support.fake_kraken import FakeKraken
from tradestate.domain.ids import order_stream_id
from tradestate.multi_venue import reconcile_venues
from tradestate.order_flow import OrderFlow

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def venues():
    with FakeBinance(balances={"USDT": "100000", "BTC": "1"}) as binance, \
            FakeKraken(balances={"ZUSD": "50000", "XXBT": "2"}) as kraken, \
            FakeCoinbase(balances={"USD": "30000", "BTC": "0.5"}) as coinbase:
        adapters = [ccxt_adapter(binance, "binance", "BTC/USDT"), ccxt_adapter(kraken, "kraken", "BTC/USD"),
                    ccxt_adapter(coinbase, "coinbase", "BTC/USD")]
        yield (binance, kraken, coinbase), adapters
        for adapter in adapters:
            adapter.close()


def test_positions_summed_across_three_venues_cash_per_venue(venues, client, url):  # noqa: F811
    _, adapters = venues
    first = reconcile_venues(client, adapters)
    assert not first.errors
    row = btc(first)
    assert (row["ours"], row["venues"], row["ours_after"], row["status"]) == ("0", "3.5", "3.5", "corrected")
    assert {v: b["venue"] for v, b in row["by_venue"].items()} == {"BINANCE": "1", "KRAKEN": "2", "COINBASE": "0.5"}
    # USD at Kraken and USD at Coinbase: two balances, never one
    assert {v: {c: x["venue"] for c, x in cash.items()} for v, cash in first.cash.items()} == {
        "BINANCE": {"USDT": "100000"}, "KRAKEN": {"USD": "50000"}, "COINBASE": {"USD": "30000"}}
    assert sorted((d["venue"], d["currency"], D(d["balance"])) for d in logged(url, "CashBalanceRecorded")) == [
        ("BINANCE", "USDT", D("100000")), ("COINBASE", "USD", D("30000")), ("KRAKEN", "USD", D("50000"))]
    again = reconcile_venues(client, adapters)
    assert btc(again)["status"] == "ok" and [r.corrective_events for r in again.results] == [[], [], []]
    assert len(logged(url, "CashBalanceRecorded")) == 3  # nothing corrected back and forth


def test_a_fill_missed_at_coinbase_is_booked_once_and_moves_only_its_cash(venues, client, url):  # noqa: F811
    (_, _, coinbase), adapters = venues
    reconcile_venues(client, adapters)
    client.record_intent(ACCOUNT, "c-1", "BTC/USD", "sell", "0.25", order_type="limit", limit_price="41000",
                         time_in_force="gtc", venue="COINBASE")
    order = OrderFlow(client, adapters[2]).forward(ACCOUNT, "c-1")
    coinbase.fill(order.venue_order_id, "0.25")  # the venue fills it; we never hear of it
    found = reconcile_venues(client, adapters)
    on_binance, on_kraken, on_coinbase = found.results
    assert on_binance.corrective_events == [] and on_kraken.corrective_events == []
    assert [d["kind"] for d in on_coinbase.discrepancies] == ["missed_fill"]
    assert [e["type"] for e in on_coinbase.corrective_events] == ["OrderFilled"]
    (filled,) = logged(url, "OrderFilled")
    # maker 0.4 % of 10,250 USD, charged in USD (Coinbase's quote currency): cash, not BTC
    assert (D(filled["qty"]), D(filled["price"]), D(filled["fee"]), filled["fee_currency"]) == (
        D("0.25"), D("41000"), D("41"), "USD")
    client.catch_up()
    assert client.state.orders[order_stream_id(ACCOUNT, "c-1")].status == "filled"
    row = btc(found)
    assert (row["ours"], row["venues"], row["ours_after"], row["status"]) == ("3.5", "3.25", "3.25", "corrected")
    assert row["by_venue"]["COINBASE"] == {"ours": "0.5", "ours_after": "0.25", "venue": "0.25"}
    # 30,000 + 10,250 - 41 at Coinbase, booked by the fill: no cash correction
    assert found.cash["COINBASE"]["USD"]["venue"] == found.cash["COINBASE"]["USD"]["log"] == "40209"
    assert found.cash["KRAKEN"]["USD"]["venue"] == found.cash["KRAKEN"]["USD"]["log"] == "50000"
    # each venue's USD recorded once, at the start: the fill's cash agreed with Coinbase's since
    assert sorted((d["venue"], D(d["balance"])) for d in logged(url, "CashBalanceRecorded") if d["currency"] == "USD") \
        == [("COINBASE", D("30000")), ("KRAKEN", D("50000"))]
    later = reconcile_venues(client, adapters)
    assert [r.corrective_events for r in later.results] == [[], [], []] and btc(later)["status"] == "ok"
    assert len(logged(url, "OrderFilled")) == 1


def test_cli_reconciles_binance_and_coinbase_by_their_environment(venues, client, url):  # noqa: F811
    # the registry's path (``--broker ccxt:coinbase``, keys and base URL from the environment) with
    # ccxt's rate limiter on; Kraken's spaces private calls seconds apart (the slow CLI test of
    # test_ccxt_two_exchanges covers it)
    (binance, _, coinbase), _ = venues
    out = cli_reconcile(url, {"binance": (binance, "BTC/USDT"), "coinbase": (coinbase, "BTC/USD")})
    assert [(p["asset"], p["venues"], p["status"]) for p in out["positions"]] == [("BTC", "1.5", "corrected")]
    assert {v: {c: x["venue"] for c, x in cash.items()} for v, cash in out["cash"].items()} == {
        "BINANCE": {"USDT": "100000"}, "COINBASE": {"USD": "30000"}}


def test_orders_ended_at_coinbase_unheard_are_ended_in_the_log(venues, client, url):  # noqa: F811
    # one order cancelled on Coinbase's website after a partial fill, one expired by the venue:
    # reconcile books the fill once and ends each order as the venue says (EXPIRED, not cancelled)
    (_, _, coinbase), adapters = venues
    reconcile_venues(client, adapters)
    flow = OrderFlow(client, adapters[2])
    for cid in ("c-web", "c-exp"):
        client.record_intent(ACCOUNT, cid, "BTC/USD", "buy", "0.1", order_type="limit", limit_price="39000",
                             time_in_force="gtc", venue="COINBASE")
        flow.forward(ACCOUNT, cid)
    by_cid = {o.client_order_id: o.order_id for o in coinbase.orders.values()}
    coinbase.fill(by_cid["c-web"], "0.04")
    coinbase.cancel_at_venue(by_cid["c-web"])
    coinbase.expire(by_cid["c-exp"])
    found = reconcile_venues(client, adapters)
    on_coinbase = found.results[2]
    assert sorted(e["type"] for e in on_coinbase.corrective_events) == ["OrderCancelled", "OrderExpired", "OrderFilled"]
    client.catch_up()
    web = client.state.orders[order_stream_id(ACCOUNT, "c-web")]
    assert (web.status, web.filled_qty) == ("cancelled", D("0.04"))
    assert client.state.orders[order_stream_id(ACCOUNT, "c-exp")].status == "expired"
    row = btc(found)
    assert (row["venues"], row["ours_after"], row["status"]) == ("3.54", "3.54", "corrected")
    assert found.cash["COINBASE"]["USD"]["venue"] == found.cash["COINBASE"]["USD"]["log"]
    later = reconcile_venues(client, adapters)
    assert [r.corrective_events for r in later.results] == [[], [], []]
