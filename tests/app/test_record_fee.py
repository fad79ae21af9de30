"""``record_fee`` of one of our orders' fills (``client_order_id``) books the fee on that order's
position: its symbol and its venue, whatever the caller left out; a fee naming another symbol or
venue than the order's is refused, nothing appended."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

import tradestate
from tests.support.projector_worker import Clock
from tradestate.domain.errors import InvalidInput
from tradestate.domain.ids import order_stream_id


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



CHANGED_AT = datetime(2026, 6, 1, 13, 30, tzinfo=timezone.utc)


@pytest.fixture
def renamed(client):
    """An open order o2 (10 of 20 filled) whose symbol AAPL then became AAPX: the order works AAPX."""
    client.record_intent("a", "o2", "AAPL", "buy", 20, order_type="limit", limit_price="60", venue="IB")
    client.record_submitted("a", "o2")
    client.record_fill("a", "o2", "X.02", 10, "50", fee_pending=True)
    client.record_corporate_action("AAPL", "symbol_change", CHANGED_AT, new_symbol="AAPX")
    assert client.state.orders[order_stream_id("a", "o2")].symbol == "AAPX"
    return client


def test_a_fee_naming_the_orders_former_symbol_is_booked_on_its_current_position(renamed):
    recorded = renamed.record_fee("a", "IB", "X.02", "0.3", symbol="AAPL", exec_id="X.02", client_order_id="o2")
    assert not recorded.duplicate
    assert renamed.state.position_of("a", "IB", "AAPX").fees == Decimal("0.3")
    assert renamed.state.position_of("a", "IB", "AAPL").fees == 0


def test_every_former_symbol_of_an_order_renamed_twice_is_its_own(renamed):
    renamed.record_corporate_action("AAPX", "symbol_change", CHANGED_AT.replace(month=7), new_symbol="AAPY")
    for n, former in enumerate(["AAPL", "AAPX", "AAPY"]):
        renamed.record_fee("a", None, f"F{n}", "0.1", symbol=former, exec_id="X.02", client_order_id="o2")
    assert renamed.state.position_of("a", "IB", "AAPY").fees == Decimal("0.3")


def test_after_a_symbol_change_another_symbol_is_still_refused(renamed):
    head = renamed.store.trading.head()
    with pytest.raises(InvalidInput, match="o2"):
        renamed.record_fee("a", None, "X.02", "0.3", symbol="MSFT", exec_id="X.02", client_order_id="o2")
    assert renamed.store.trading.head() == head
