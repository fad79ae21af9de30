"""``record_fee`` of one of our orders' fills (``client_order_id``) books the fee on that order's
position: its symbol and its venue, whatever the caller left out; a fee naming another symbol or
venue than the order's is refused, nothing appended."""

from __future__ import annotations

from decimal import Decimal

import pytest

import tradestate
from tests.support.projector_worker import Clock
from tradestate.domain.errors import InvalidInput


@pytest.fixture
def client(sqlite_url):
    with tradestate.connect(sqlite_url, clock=Clock()) as c:
        c.record_intent("a", "o1", "AAPL", "buy", 10, order_type="limit", limit_price="60", venue="IB")
        c.record_submitted("a", "o1")
        c.record_fill("a", "o1", "X.01", 10, "50", fee_pending=True)
        yield c


def test_a_fee_of_an_order_is_booked_on_the_orders_position_and_venue(client):
    client.record_fee("a", None, "X.01", "0.3", exec_id="X.01", client_order_id="o1")
    held = client.state.position_of("a", "IB", "AAPL")
    assert held is not None and held.fees == Decimal("0.3")
    assert [k for k in client.state.positions if k[2] == "AAPL"] == [("a", "IB", "AAPL")]  # no phantom position


def test_a_fee_of_an_order_given_the_orders_venue_and_no_symbol_takes_the_orders_symbol(client):
    client.record_fee("a", "IB", "X.01", "0.3", exec_id="X.01", client_order_id="o1")
    assert client.state.position_of("a", "IB", "AAPL").fees == Decimal("0.3")


@pytest.mark.parametrize("venue, symbol", [("ALPACA", None), ("IB", "MSFT")])
def test_a_fee_naming_another_venue_or_symbol_than_its_orders_is_refused(client, venue, symbol):
    head = client.store.trading.head()
    with pytest.raises(InvalidInput, match="o1"):
        client.record_fee("a", venue, "X.01", "0.3", symbol=symbol, exec_id="X.01", client_order_id="o1")
    assert client.store.trading.head() == head


def test_a_fee_of_no_order_still_needs_its_venue(client):
    with pytest.raises(InvalidInput, match="venue"):
        client.record_fee("a", None, "ACT-1", "0.7", symbol="AAPL")
