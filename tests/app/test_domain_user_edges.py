"""Edges a new user meets through the client: venue spellings of sides and order types, one
execution id reported on two orders, and a refused intent sent again."""

from __future__ import annotations

import pytest

import tradestate
from tradestate import OrderType, Side

ACCT = "acct-1"


@pytest.fixture
def client(sqlite_url):
    c = tradestate.connect(sqlite_url, venue="sim")
    try:
        yield c
    finally:
        c.close()


@pytest.mark.parametrize("side", ["BUY", "Buy", "buy", Side.BUY])
def test_a_venue_spelling_of_the_side_is_accepted_and_stored_canonical(client, side):
    result = client.record_intent(ACCT, "o1", "AAPL", side, "10", order_type="LIMIT", limit_price="100")
    assert result.accepted
    order = client.order(ACCT, "o1")
    assert (order["side"], order["order_type"]) == ("buy", "limit")
    again = client.record_intent(ACCT, "o1", "AAPL", "buy", "10", order_type=OrderType.LIMIT, limit_price="100")
    assert again.duplicate and again.position == result.position  # the same intent, however it was spelled


def test_sell_spellings_reach_the_position(client):
    for coid, side in (("o1", "SELL"), ("o2", "sell")):
        client.record_intent(ACCT, coid, "AAPL", side, "5", reference_price="100")
        client.record_fill(ACCT, coid, f"x-{coid}", "5", "100")
    assert client.state.position_of(ACCT, "sim", "AAPL").qty == -10


def test_one_execution_id_on_two_orders_is_booked_once(client):
    client.record_intent(ACCT, "o1", "AAPL", "buy", "10", reference_price="100")
    client.record_intent(ACCT, "o2", "AAPL", "buy", "10", reference_price="100")
    client.record_fill(ACCT, "o1", "E1", "10", "100")
    client.record_fill(ACCT, "o2", "E1", "10", "100")
    client.record_fill(ACCT, "o2", "E1", "10", "100")  # reported again: the same discrepancy
    assert client.state.position_of(ACCT, "sim", "AAPL").qty == 10
    o2 = client.order(ACCT, "o2")
    assert (o2["filled_qty"], o2["discrepancies"], o2["status"]) == (0, 1, "new")


def test_a_refused_intent_sent_again_answers_with_the_same_refusal(client):
    client.set_risk_limit(ACCT, "max_order_qty", 5)
    first = client.record_intent(ACCT, "big", "AAPL", "buy", "10", reference_price="100")
    assert not first.accepted and first.refusal.detail
    again = client.record_intent(ACCT, "big", "AAPL", "buy", "10", reference_price="100")
    assert again.duplicate
    assert (again.refusal.reasons, again.refusal.detail) == (first.refusal.reasons, first.refusal.detail)
