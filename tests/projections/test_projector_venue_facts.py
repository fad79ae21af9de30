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
