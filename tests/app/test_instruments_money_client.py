"""Corporate actions on open orders and futures' daily settlements through the real client, on
both databases; a fresh client (a cold fold of the log) sees the same state."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

import tradestate
from tradestate.domain.errors import InvalidInput

EXPIRY = datetime(2030, 3, 15, 13, 30, tzinfo=timezone.utc)


def test_a_split_restates_the_open_order_and_a_fresh_client_sees_it(db_url):
    with tradestate.connect(db_url, venue="sim") as client:
        assert client.record_intent("a1", "o1", "NVDA", "buy", "10", order_type="limit", limit_price="1200").accepted
        client.record_ack("a1", "o1", "V1")
        client.record_fill("a1", "o1", "x1", "4", "1200")
        when = datetime(2024, 6, 10, 13, 30, tzinfo=timezone.utc)
        client.record_corporate_action("NVDA", "split", when, ratio_from=1, ratio_to=10, source="venue")
        order = client.order("a1", "o1")
        assert (order["qty"], order["remaining_qty"], order["limit_price"]) == (64, 60, 120)
        client.record_fill("a1", "o1", "x2", "60", "120")
        assert client.order("a1", "o1")["status"] == "filled"
        (position,) = client.positions("a1")
        assert (position["qty"], position["avg_cost"]) == (100, 120)
    with tradestate.connect(db_url) as fresh:
        done = fresh.order("a1", "o1")
        assert (done["qty"], done["limit_price"], done["status"]) == (64, 120, "filled")
        assert fresh.positions("a1") == [position]


def test_a_futures_settlement_is_recorded_once_and_the_close_pays_what_followed(db_url):
    with tradestate.connect(db_url, venue="sim") as client:
        client.define_instrument("ES", "future", multiplier=50, tick_size="0.25", expiry=EXPIRY)
        assert client.record_intent("a1", "o1", "ES", "buy", "2").accepted
        client.record_fill("a1", "o1", "x1", "2", "5000")
        first = client.record_variation_margin("a1", "sim", "ES", "2024-06-10", "5010", "2", "1000")
        again = client.record_variation_margin("a1", "sim", "ES", "2024-06-10", "5010", "2", "1000")
        assert again.duplicate and again.position == first.position
        head = client.position
        with pytest.raises(InvalidInput, match="holds 2"):
            client.record_variation_margin("a1", "sim", "ES", "2024-06-11", "5010", "3", "0")
        assert client.position == head  # nothing appended
        assert client.record_intent("a1", "o2", "ES", "sell", "2").accepted
        client.record_fill("a1", "o2", "x2", "2", "5020")
        (position,) = client.positions("a1")
        assert (position["qty"], position["realized_pnl"]) == (0, 2000)  # (5020 - 5000) x 2 x 50, once
    with tradestate.connect(db_url) as fresh:
        assert fresh.positions("a1") == [position]


def test_the_read_models_follow_settlements_and_adjusted_orders_as_a_rebuild_does(sqlite_url):
    from tests.support.projector_worker import Clock, assert_equals_rebuild, dump_tables
    from tradestate.adapters.store import open_store
    from tradestate.projections.projector import Projector

    with tradestate.connect(sqlite_url, clock=Clock()) as client:
        client.define_instrument("ES", "future", multiplier=50, expiry=EXPIRY)
        client.record_intent("a", "o1", "ES", "buy", 2, order_type="limit", limit_price="5000", venue="IB")
        client.record_fill("a", "o1", "X.01", 2, "5000")
        client.record_variation_margin("a", "IB", "ES", "2024-06-10", "5010", "2", "1000")
        client.record_intent("a", "o2", "AAPL", "buy", 10, order_type="limit", limit_price="200", venue="IB")
        client.record_fill("a", "o2", "Y.01", 4, "200")
        client.record_corporate_action("AAPL", "split", datetime(2024, 6, 10, tzinfo=timezone.utc), ratio_from=1,
                                       ratio_to=2)
        client.record_variation_margin("a", "IB", "ES", "2024-06-11", "4990", "2", "-2000")
    with open_store(sqlite_url) as store:
        Projector(store, page=2).catch_up()
        assert dump_tables(store)["ts_positions"]
        assert_equals_rebuild(store)
