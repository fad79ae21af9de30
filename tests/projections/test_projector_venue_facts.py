"""The read models follow the venue's corrections and late fees (``FillCorrected``, ``FeeCharged``)
as a one-page rebuild does: positions, daily statistics, the equity curve and the order rows."""

from __future__ import annotations

from decimal import Decimal

import tradestate
from tests.support.projector_worker import Clock, assert_equals_rebuild, dump_tables
from tradestate.adapters.store import open_store
from tradestate.projections.projector import Projector


def test_corrections_and_late_fees_project_like_a_rebuild(sqlite_url):
    with tradestate.connect(sqlite_url, clock=Clock()) as client:
        client.record_intent("a", "o1", "AAPL", "buy", 100, order_type="limit", limit_price="60", venue="IB")
        client.record_submitted("a", "o1")
        client.record_ack("a", "o1", "P1")
        client.record_fill("a", "o1", "X.01", 40, "50.10", fee_pending=True)
        client.record_fill("a", "o1", "Y.01", 20, "50.20", fee="0.2")
        client.record_fill_correction("a", "o1", "X.02", ["X.01"], 30, "50.05", fee_pending=True)
        client.record_fee("a", "IB", "X.02", "0.3", symbol="AAPL", exec_id="X.02", client_order_id="o1")
        client.record_fee("a", "IB", "X.02", "0.3", symbol="AAPL", exec_id="X.02", client_order_id="o1")  # once
        client.record_intent("a", "o2", "AAPL", "sell", 10, order_type="limit", limit_price="50", venue="IB")
        client.record_submitted("a", "o2")
        client.record_fill("a", "o2", "Z.01", 10, "51")
        client.record_fill_correction("a", "o2", "Z.02", ["Z.01"], 10, "51.5")
        order = client.state.orders[next(s for s, o in client.state.orders.items() if o.client_order_id == "o1")]
        assert (order.filled_qty, order.fees, order.as_dict()["fees_pending"]) == (Decimal(50), Decimal("0.5"), [])
    with open_store(sqlite_url) as store:
        Projector(store, page=3).catch_up()
        tables = dump_tables(store)
        assert tables["ts_positions"] and tables["ts_equity_curve"]
        assert_equals_rebuild(store)


def test_corrections_and_fees_on_instruments_project_like_a_rebuild(sqlite_url):
    """The same on registered instruments (a future x50 in EUR with a recorded rate, an option
    that expires): multiplier and currency columns, the days' P&L in the account's currency, the
    equity curve by the rate, a split and an option settlement beside corrections and fees."""
    from datetime import datetime, timezone

    expiry = datetime(2030, 1, 1, tzinfo=timezone.utc)
    with tradestate.connect(sqlite_url, clock=Clock()) as client:
        client.record_fx_rate("EUR", "USD", "1.1")
        client.define_instrument("FESX", "future", multiplier=10, quote_currency="EUR", expiry=expiry)
        client.define_instrument("XYZ", "equity", multiplier=100)
        client.define_instrument("XYZ1C", "option", multiplier=100, expiry=expiry, underlying="XYZ", strike="50",
                                 right="call")
        client.record_intent("a", "o1", "FESX", "buy", 5, order_type="limit", limit_price="5000", venue="IB")
        client.record_submitted("a", "o1")
        client.record_fill("a", "o1", "X.01", 3, "4990", fee_pending=True)
        client.record_fill("a", "o1", "Y.01", 2, "4995", fee="2")
        client.record_intent("a", "o2", "FESX", "sell", 4, order_type="limit", limit_price="4900", venue="IB")
        client.record_submitted("a", "o2")
        client.record_fill("a", "o2", "Z.01", 4, "5010")
        client.record_fill_correction("a", "o1", "X.02", ["X.01"], 3, "4985", fee_pending=True)
        client.record_fee("a", "IB", "X.02", "1.5", currency="EUR", symbol="FESX", exec_id="X.02",
                          client_order_id="o1")
        client.record_fill_correction("a", "o2", "Z.02", ["Z.01"], 4, "5012")
        client.record_intent("a", "o3", "XYZ", "buy", 2, order_type="limit", limit_price="60", venue="IB")
        client.record_submitted("a", "o3")
        client.record_fill("a", "o3", "W.01", 2, "55")
        client.record_fee("a", "IB", "ACT-1", "0.7", symbol="XYZ")
        client.record_corporate_action("XYZ", "split", expiry.replace(year=2026), ratio_from=1, ratio_to=2)
        client.record_intent("a", "o4", "XYZ1C", "buy", 1, order_type="limit", limit_price="3", venue="IB")
        client.record_submitted("a", "o4")
        client.record_fill("a", "o4", "V.01", 1, "2.5")
        client.record_option_settlement("a", "IB", "XYZ1C", "expiry", 1, venue_ref="EXP-1")
        held = client.state.position_of("a", "IB", "FESX")
        assert (held.qty, held.realized_pnl) == (1, (5012 * 4 - (3 * 4985 + 2 * 4995) * 4 / 5) * 10)
    with open_store(sqlite_url) as store:
        Projector(store, page=3).catch_up()
        tables = dump_tables(store)
        assert tables["ts_positions"] and tables["ts_equity_curve"]
        assert_equals_rebuild(store)


def test_a_bust_of_an_older_days_fill_rewrites_that_days_row(sqlite_url):
    """The busted fill leaves the position's journal with the bust, but its day's statistics
    change (one fill fewer): that day's row is rewritten too, not only the bust's own day."""
    clock = Clock()
    with tradestate.connect(sqlite_url, clock=clock) as client:
        client.record_intent("a", "o1", "AAPL", "buy", 100, order_type="limit", limit_price="60", venue="IB")
        client.record_submitted("a", "o1")
        client.record_fill("a", "o1", "A.01", 40, "50")
        clock.advance(24 * 60)  # the next trading day
        client.record_fill("a", "o1", "B.01", 20, "51")
        with open_store(sqlite_url) as store:
            Projector(store).catch_up()  # the fills' days are in the tables before the bust comes
        clock.advance(24 * 60)
        client.record_fill_correction("a", "o1", "A.02", ["A.01"], 0, "50")  # a bust of the first day's fill
    with open_store(sqlite_url) as store:
        Projector(store).catch_up()
        assert_equals_rebuild(store)
