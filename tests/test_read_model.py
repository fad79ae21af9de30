"""The client's read-your-writes view of the SQL read models."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from tradestate.adapters.store import open_store
from tradestate.projections.projector import Projector
from tradestate.projections.reader import ProjectionBehind

import tradestate


def test_read_model_waits_for_the_clients_own_writes(db_url):
    client = tradestate.connect(db_url, venue="sim")
    client.set_risk_limit("rm", "max_position_qty", 100)
    client.record_intent("rm", "r-1", "AAPL", "buy", "10", reference_price="50")
    client.record_fill("rm", "r-1", "X-1", "4", "50.5")
    with pytest.raises(ProjectionBehind, match="tradestate project"):
        client.read_model(timeout=0.05)  # nobody projects yet: a clear error, not stale rows

    store = open_store(db_url)
    projector = Projector(store)
    stop = threading.Event()

    def follow() -> None:
        while not stop.is_set():
            if not projector.run_once():
                stop.wait(0.002)

    thread = threading.Thread(target=follow)
    thread.start()
    try:
        fill = client.record_fill("rm", "r-1", "X-2", "6", "51")
        with client.read_model(timeout=10) as model:
            assert model.position() >= fill.position
            [position] = model.positions("rm")
            assert position["qty"] == Decimal("10")
            assert position["avg_cost"] == (Decimal("4") * Decimal("50.5") + Decimal("6") * Decimal("51")) / 10
            assert model.order("rm", "r-1")["status"] == "filled"
            assert model.open_orders("rm") == []
            risk = model.risk_state("rm")
            assert [(u["limit_name"], u["used"]) for u in risk["limits"]] == [("max_position_qty", Decimal("10"))]
            with pytest.raises(tradestate.UnknownOrder):
                model.order("rm", "nope")
    finally:
        stop.set()
        thread.join()
        store.close()
        client.close()
