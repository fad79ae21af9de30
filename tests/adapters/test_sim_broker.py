"""The simulated broker: matching, faults, determinism, and its state file across processes."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest

from tradestate.adapters.brokers.base import (
    OrderNotFound,
    OrderRequest,
    Unknown,
    VenueConnectionError,
    VenueQueryFailed,
)
from tradestate.adapters.brokers.sim import SimFaults, SimulatedBroker

T0 = datetime(2026, 3, 2, 15, 0, tzinfo=timezone.utc)


def clock():
    return T0


def broker(tmp_path=None, **kw):
    path = str(tmp_path / "venue.json") if tmp_path is not None else None
    return SimulatedBroker(account="acct-1", state_path=path, clock=clock, **kw)


def buy(coid, qty=10, order_type="market", limit=None, symbol="AAPL", side="buy"):
    return OrderRequest(coid, symbol, side, order_type, D(qty), limit_price=None if limit is None else D(limit))


def kinds(updates):
    return [u.kind for u in updates]


def test_market_order_fills_at_the_mark_and_moves_position_and_cash():
    b = broker()
    b.set_price("AAPL", "100")
    order = b.submit(buy("o1"))
    assert order.status == "filled" and order.avg_fill_price == D(100)
    assert kinds(b.updates()) == ["ack", "fill"]
    assert b.updates() == []  # drained
    (pos,) = b.positions()
    assert pos.qty == 10 and pos.avg_cost == 100
    assert b.balances()[0].cash == D(100000) - D(1000)


def test_limit_order_rests_until_crossed():
    b = broker()
    b.set_price("AAPL", "101")
    b.submit(buy("o1", order_type="limit", limit="100"))
    assert b.open_orders()[0].status == "open"
    b.set_price("AAPL", "100.5")
    assert b.open_orders()[0].status == "open"
    b.set_price("AAPL", "99")
    assert b.open_orders() == []
    assert b.order_by_client_id("o1").avg_fill_price == D(99)


def test_on_bar_matches_resting_orders():
    b = broker()
    b.submit(buy("b1", order_type="limit", limit="100"))
    b.submit(buy("s1", order_type="limit", limit="105", side="sell"))
    updates = b.on_bar("AAPL", "102", "106", "99", "104", T0)
    fills = {u.client_order_id: u.fill.price for u in updates if u.kind == "fill"}
    assert fills == {"b1": D(100), "s1": D(105)}
    assert b.positions() == []


def test_duplicate_client_order_id_returns_the_existing_order():
    b = broker()
    first = b.submit(buy("o1", order_type="limit", limit="1"))
    again = b.submit(buy("o1", order_type="limit", limit="1"))
    assert again.venue_order_id == first.venue_order_id
    assert len(b.recent_orders()) == 1


def test_lost_fill_notification_still_fills_at_the_venue():
    b = broker(faults=SimFaults(lose_next_fills=1))
    b.set_price("AAPL", "100")
    b.submit(buy("o1"))
    assert kinds(b.updates()) == ["ack"]
    assert [f.exec_id for f in b.fills()] == ["SIM-E1"]
    b.submit(buy("o2"))
    assert kinds(b.updates()) == ["ack", "fill"]  # only the next one was lost


def test_fill_loss_probability_is_deterministic_from_the_seed():
    def run(seed):
        b = broker(seed=seed, faults=SimFaults(lose_fill_probability=0.5))
        b.set_price("AAPL", "100")
        for n in range(30):
            b.submit(buy(f"o{n}", qty=1))
        return [u.client_order_id for u in b.updates() if u.kind == "fill"], b.dump()

    assert run(7) == run(7)
    assert run(7)[0] != run(8)[0]
    assert 0 < len(run(7)[0]) < 30


def test_acks_delayed_and_lost():
    b = broker(faults=SimFaults(delay_next_acks=1, lose_next_acks=1))
    b.submit(buy("o1", order_type="limit", limit="1"))  # lost
    b.submit(buy("o2", order_type="limit", limit="1"))  # delayed
    b.submit(buy("o3", order_type="limit", limit="1"))
    assert [u.client_order_id for u in b.updates()] == ["o3"]
    b.release_delayed()
    assert [u.client_order_id for u in b.updates()] == ["o2"]
    assert len(b.open_orders()) == 3


def test_reject_with_reason():
    b = broker(faults=SimFaults(reject_next=1, reject_reason="insufficient buying power"))
    order = b.submit(buy("o1"))
    assert order.status == "rejected"
    (update,) = b.updates()
    assert update.kind == "rejected" and update.reason == "insufficient buying power"
    assert b.submit(buy("o2", order_type="limit", limit="1")).status == "open"


def test_partial_fills_in_k_pieces_then_cancel():
    b = broker(faults=SimFaults(partial_fill_pieces=3))
    b.submit(buy("o1", order_type="limit", limit="100"))
    b.set_price("AAPL", "99")
    b.set_price("AAPL", "98")
    order = b.order_by_client_id("o1")
    assert order.status == "partially_filled" and order.filled_qty == D("6.66666666")
    b.cancel(order.venue_order_id)
    assert b.order_by_client_id("o1").status == "cancelled"
    assert kinds(b.updates()) == ["ack", "fill", "fill", "cancelled"]
    b.update_faults(partial_fill_pieces=3)
    b.submit(buy("o2", order_type="limit", limit="100"))
    for price in ("99", "99", "99"):
        b.set_price("AAPL", price)
    assert b.order_by_client_id("o2").filled_qty == 10  # the last piece takes the rest


def test_order_outside_tradestate_reaches_no_stream():
    b = broker()
    b.set_price("MSFT", "50")
    b.place_external(symbol="MSFT", side="sell", qty=3)
    assert b.updates() == []
    assert b.positions()[0].qty == -3
    assert b.recent_orders()[0].client_order_id is None


def test_dropped_connection_and_failing_queries():
    b = broker(faults=SimFaults(failing_queries={"fills"}))
    with pytest.raises(VenueQueryFailed):
        b.fills()
    snap = b.snapshot(now=T0)
    assert isinstance(snap.fills, Unknown) and snap.positions == []
    b.update_faults(disconnected=True)
    for query in (b.positions, b.open_orders, b.balances, b.updates):
        with pytest.raises(VenueConnectionError):
            query()
    with pytest.raises(VenueConnectionError):
        b.submit(buy("o1"))
    snap = b.snapshot(now=T0)
    assert all(isinstance(getattr(snap, p), Unknown) for p in ("positions", "open_orders", "fills", "balances"))
    with pytest.raises(ValueError, match="unknown queries"):
        SimFaults(failing_queries={"everything"})


def test_lookup_by_client_id():
    b = broker()
    with pytest.raises(OrderNotFound):
        b.order_by_client_id("nope")
    b.submit(buy("o1", order_type="limit", limit="1"))
    assert b.order_by_client_id("o1").client_order_id == "o1"


def test_recent_orders_and_fills_since():
    times = iter([T0, T0 + timedelta(hours=1)])
    b = SimulatedBroker(account="acct-1", clock=lambda: next(times))
    b.stage_order(client_order_id="a", symbol="AAPL", side="buy", qty=D(1), status="filled",
                  fills=[("E1", D(1), D(10))])
    b.stage_order(client_order_id="b", symbol="AAPL", side="buy", qty=D(1), status="filled",
                  fills=[("E2", D(1), D(10))])
    since = T0 + timedelta(minutes=30)
    assert [o.client_order_id for o in b.recent_orders(since)] == ["b"]
    assert [f.exec_id for f in b.fills(since)] == ["E2"]


def test_floats_refused():
    b = broker()
    with pytest.raises(TypeError):
        b.set_price("AAPL", 100.5)


def test_state_file_is_shared_and_written_atomically(tmp_path):
    b = broker(tmp_path, seed=3, faults=SimFaults(lose_next_fills=1))
    b.set_price("AAPL", "100")
    b.submit(buy("o1"))
    other = SimulatedBroker(account="acct-1", state_path=b.state_path)
    assert other.order_by_client_id("o1").status == "filled"
    assert other.faults.lose_next_fills == 0
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_another_process_sees_the_same_venue(tmp_path):
    b = broker(tmp_path)
    b.set_price("AAPL", "100")
    script = (
        "import sys\n"
        "from decimal import Decimal\n"
        "from tradestate.adapters.brokers.sim import SimulatedBroker\n"
        "from tradestate.adapters.brokers.base import OrderRequest\n"
        "b = SimulatedBroker(account='acct-1', state_path=sys.argv[1])\n"
        "for n in range(int(sys.argv[2]), int(sys.argv[2]) + 10):\n"
        "    b.submit(OrderRequest(f'p{n}', 'AAPL', 'buy', 'market', Decimal(1)))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, b.state_path, str(start)]) for start in (0, 10)]
    for p in procs:
        assert p.wait(timeout=60) == 0
    orders = b.recent_orders()
    assert len(orders) == 20 and len({o.venue_order_id for o in orders}) == 20  # the lock kept every write
    assert b.positions()[0].qty == 20
    assert len(b.updates()) == 40


def test_sim_venue_control_stages_orders_positions_cash():
    from tradestate.adapters.brokers.sim import sim_venue

    with sim_venue() as venue:
        vid = venue.add_order(client_order_id="x", symbol="AAPL", side="sell", qty=D(5), status="cancelled",
                              fills=[("E1", D(2), D(100))])
        venue.set_position("TSLA", D(-3), D(200))
        venue.set_cash(D(500))
        venue.fail("balances")
        adapter = venue.adapter()
        order = adapter.order_by_client_id("x")
        assert order.venue_order_id == vid and order.status == "cancelled" and order.filled_qty == 2
        assert {p.symbol: p.qty for p in adapter.positions()} == {"AAPL": D(-2), "TSLA": D(-3)}
        with pytest.raises(VenueQueryFailed):
            adapter.balances()
