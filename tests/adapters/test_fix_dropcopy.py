"""The FIX drop-copy adapter against the local FIX 4.4 acceptor (real TCP, port 0): fills, partial
fills, corrections, busts, mass status, positions, BitGo's completing fill, idempotent resends."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal as D

import pytest

from tests.support.fake_fix import FakeDropCopyServer
from tradestate.adapters.brokers.base import OrderNotFound, Unknown
from tradestate.adapters.brokers.fix_dropcopy import (
    FixDropCopyAdapter,
    drop_copy_adapter,
    map_ord_status,
    parse_drop_copy_url,
)

pytestmark = pytest.mark.timeout(30)
NOW = datetime(2026, 12, 5, 15, 0, tzinfo=timezone.utc)


@pytest.fixture
def server():
    with FakeDropCopyServer() as srv:
        yield srv


def adapter(srv, store=None, **kw):
    return FixDropCopyAdapter(account="acct-1", venue="SIM", host="127.0.0.1", port=srv.port, sender="DESK",
                              target="VENUE", store=store, timeout=5, **kw)


def only_order(snap):
    assert not isinstance(snap.recent_orders, Unknown), snap.recent_orders
    (order,) = snap.recent_orders
    return order


def test_fills_and_partial_fills(server):
    a = adapter(server)
    oid = server.new_order("o1", "AAPL", "buy", "100", "10")
    server.fill(oid, "40", "10", exec_id="X1")
    snap = a.snapshot(now=NOW)
    order = only_order(snap)
    assert (order.status, order.filled_qty, order.client_order_id) == ("partially_filled", D(40), "o1")
    assert [o.venue_order_id for o in snap.open_orders] == [oid]
    server.fill(oid, "60", "10.5", exec_id="X2")
    snap = a.snapshot(now=NOW)  # the same adapter again: only what is new comes over the wire
    order = only_order(snap)
    assert (order.status, order.filled_qty, order.avg_fill_price) == ("filled", D(100), D("10.3"))
    assert [(f.exec_id, f.qty, f.price) for f in snap.fills] == [("X1", D(40), D(10)), ("X2", D(60), D("10.5"))]
    assert snap.open_orders == []
    assert [(p.symbol, p.qty) for p in snap.positions] == [("AAPL", D(100))]
    assert isinstance(snap.balances, Unknown)
    assert a.book.copies > 0  # CopyMsgIndicator 797=Y
    a.close()


def test_partial_fill_then_cancel_and_other_exec_types(server):
    a = adapter(server)
    o1 = server.new_order("o1", "AAPL", "sell", "100", "10")
    server.fill(o1, "30", "10", exec_id="X1")
    server.cancel(o1)
    o2 = server.new_order("o2", "MSFT", "buy", "5", "300")
    server.reject(o2, "insufficient buying power")
    o3 = server.new_order("o3", "IBM", "buy", "5", "150")
    server.expire(o3)
    o4 = server.new_order("o4", "SPY", "buy", "5", "500")
    server.done_for_day(o4)  # not terminal: a GTC order resumes the next day
    o5 = server.new_order("o5", "TSLA", "buy", "5", "200")
    server.replace(o5, "o5-r1", qty="8")
    server.restate(o5, reason=0, price="190")
    orders = {o.client_order_id: o for o in a.snapshot(now=NOW).recent_orders}
    assert (orders["o1"].status, orders["o1"].filled_qty, orders["o1"].side) == ("cancelled", D(30), "sell")
    assert orders["o2"].status == "rejected" and orders["o2"].raw["reason"] == "insufficient buying power"
    assert orders["o3"].status == "expired"
    assert (orders["o4"].status, orders["o4"].raw_status) == ("open", "DoneForDay")
    assert (orders["o5"].qty, orders["o5"].limit_price, orders["o5"].raw["11"]) == (D(8), D(190), "o5-r1")
    assert a.order_by_client_id("o5-r1").venue_order_id == o5  # the replacement's ClOrdID finds it
    with pytest.raises(OrderNotFound):
        a.order_by_client_id("nope")


def test_trade_correct_replaces_the_execution_it_names(server):
    a = adapter(server)
    oid = server.new_order("o1", "AAPL", "buy", "100", "10")
    server.fill(oid, "100", "10", exec_id="X1")
    a.snapshot(now=NOW)
    server.correct(oid, "X1", "100", "10.02")  # 150=G, ExecRefID 19 = X1
    snap = a.snapshot(now=NOW)
    (fill,) = snap.fills
    assert (fill.exec_id, fill.qty, fill.price) == ("X1", D(100), D("10.02"))  # the original id, corrected
    assert fill.raw["corrected_by"] != "X1"
    order = only_order(snap)
    assert (order.filled_qty, order.avg_fill_price, order.status) == (D(100), D("10.02"), "filled")
    # a quantity correction moves the order and the position
    server.correct(oid, fill.raw["corrected_by"], "80", "10.02")  # a correction of the correction
    snap = a.snapshot(now=NOW)
    (fill,) = snap.fills
    assert (fill.exec_id, fill.qty) == ("X1", D(80))
    assert only_order(snap).filled_qty == D(80)
    assert [(p.symbol, p.qty) for p in snap.positions] == [("AAPL", D(80))]


def test_trade_cancel_busts_the_execution(server):
    a = adapter(server)
    oid = server.new_order("o1", "AAPL", "buy", "100", "10")
    server.fill(oid, "40", "10", exec_id="X1")
    server.fill(oid, "60", "11", exec_id="X2")
    server.bust(oid, "X2")  # 150=H, ExecRefID 19 = X2
    snap = a.snapshot(now=NOW)
    assert [f.exec_id for f in snap.fills] == ["X1"]
    order = only_order(snap)
    assert (order.status, order.filled_qty) == ("partially_filled", D(40))
    assert [(p.symbol, p.qty) for p in snap.positions] == [("AAPL", D(40))]
    assert a.book.busted == {"X2": a.book.busted["X2"]}


def test_bitgo_completing_fill_then_order_status(tmp_path):
    with FakeDropCopyServer(bitgo_fills=True) as srv:
        a = adapter(srv, mass_status=False)
        oid = srv.new_order("o1", "BTC-USD", "buy", "2", "50000")
        srv.fill(oid, "1", "50000", exec_id="X1")
        srv.fill(oid, "1", "50010", exec_id="X2")  # 150=F 39=1 151=0, then 150=I 39=2
        snap = a.snapshot(now=NOW)
        order = only_order(snap)
        assert (order.status, order.raw_status, order.filled_qty) == ("filled", "Filled", D(2))
        assert [f.exec_id for f in snap.fills] == ["X1", "X2"]  # the 150=I adds no execution
    # the completing fill alone already reads as filled: 39=1 with LeavesQty 0 and CumQty = OrderQty
    assert map_ord_status("1", D(2), D(0), D(2)) == "filled"
    assert map_ord_status("1", D(1), D(1), D(2)) == "partially_filled"
    assert map_ord_status("3", D(0), D(0), D(2)) == "open"
    assert map_ord_status("Z", D(0), D(0), D(2)) == "unknown"


def test_mass_status_and_positions_answers(server):
    server.positions["GOOG"] = D(-5)  # a short held from before today: only the PositionReport knows it
    oid = server.new_order("o1", "AAPL", "buy", "10", "10")
    a = adapter(server)
    snap = a.snapshot(now=NOW)
    assert server.wait_received("AF") and server.wait_received("AN")
    req = a.book.requests[a._mass_status_request]
    assert req.done and req.total == 1 and req.received == 1
    assert [o.venue_order_id for o in snap.open_orders] == [oid]
    assert {(p.symbol, p.qty) for p in snap.positions} == {("GOOG", D(-5))}


def test_a_venue_without_mass_status_or_positions(tmp_path):
    with FakeDropCopyServer(supports_mass_status=False, supports_positions=False) as srv:
        oid = srv.new_order("o1", "AAPL", "buy", "10", "10")
        srv.fill(oid, "10", "10", exec_id="X1")
        snap = adapter(srv).snapshot(now=NOW)
        assert isinstance(snap.positions, Unknown) and "not supported" in snap.positions.reason
        assert only_order(snap).status == "filled"  # the ExecutionReports still tell the orders


def test_possresend_under_a_new_sequence_number_is_applied_once(server):
    a = adapter(server)
    oid = server.new_order("o1", "AAPL", "buy", "100", "10")
    seq = max(server.sent)
    server.fill(oid, "40", "10", exec_id="X1")
    fill_seq = max(server.sent)
    a.snapshot(now=NOW)
    server.resend_as_new(fill_seq)  # 97=Y, a new MsgSeqNum, the same ExecID
    server.resend_as_new(seq)
    snap = a.snapshot(now=NOW)
    assert [f.qty for f in snap.fills] == [D(40)]
    assert only_order(snap).filled_qty == D(40)
    assert a.book.duplicates == 2


def test_a_persistent_store_resumes_and_rebuilds_from_the_journal(server, tmp_path):
    store = str(tmp_path / "fix")
    oid = server.new_order("o1", "AAPL", "buy", "100", "10")
    server.fill(oid, "40", "10", exec_id="X1")
    adapter(server, store).snapshot(now=NOW)
    assert server.resend_requests == [(1, 0)]  # the first session asked for the day
    server.fill(oid, "60", "10", exec_id="X2")
    again = adapter(server, store)  # a new process: sequence numbers and journal from disk
    snap = again.snapshot(now=NOW)
    assert [f.exec_id for f in snap.fills] == ["X1", "X2"]
    assert only_order(snap).status == "filled"
    # the numbers were resumed: only what was sent while we were away is asked for
    assert len(server.resend_requests) == 2 and server.resend_requests[1][0] > 1
    assert again.session.stats.duplicates_ignored == 0


def test_an_unreachable_drop_copy_is_unknown_not_empty(server):
    a = adapter(server)
    server.stop()
    snap = a.snapshot(now=NOW)
    for part in (snap.positions, snap.open_orders, snap.recent_orders, snap.fills):
        assert isinstance(part, Unknown)
    assert "VenueConnectionError" in snap.open_orders.reason


def test_drop_copy_url(tmp_path):
    options = parse_drop_copy_url("fix://10.0.0.5:9878?sender=DESK&target=VENUE&store=/var/fix&heartbeat=10"
                                  "&positions=0")
    assert options == {"host": "10.0.0.5", "port": 9878, "sender": "DESK", "target": "VENUE", "store": "/var/fix",
                       "fix_account": None, "heartbeat": 10, "timeout": 10.0, "mass_status": True,
                       "request_positions": False}
    for bad, message in [("http://h:1?sender=a&target=b", "fix://"), ("fix://h:1?sender=a", "target="),
                         ("fix://h:1?sender=a&target=b&store=d&colour=red", "colour"),
                         ("fix://h:1?sender=a&target=b&positions=maybe&store=d", "positions"),
                         ("fix://h:1?sender=a&target=b", "store=DIR")]:
        with pytest.raises(ValueError, match=message):
            parse_drop_copy_url(bad)
    a = drop_copy_adapter(f"fix://127.0.0.1:9?sender=DESK&target=VENUE&store={tmp_path}", account="acct-1",
                          venue="SIM")
    assert (a.account, a.venue, a.broker, a.port) == ("acct-1", "SIM", "fix", 9)


def test_a_run_that_forgets_its_sequence_numbers_is_logged_out_with_the_reason(server):
    adapter(server).snapshot(now=NOW)
    forgetful = adapter(server)  # a new process without a store starts again at MsgSeqNum 1
    snap = forgetful.snapshot(now=NOW)
    assert isinstance(snap.open_orders, Unknown) and "MsgSeqNum too low" in snap.open_orders.reason


def test_a_venue_that_ignores_the_queries_leaves_only_their_parts_unknown():
    with FakeDropCopyServer(silent_queries=True) as srv:
        oid = srv.new_order("o1", "AAPL", "buy", "10", "10")
        srv.fill(oid, "10", "10", exec_id="X1")
        a = FixDropCopyAdapter(account="acct-1", venue="SIM", host="127.0.0.1", port=srv.port, sender="DESK",
                               target="VENUE", timeout=1)
        snap = a.snapshot(now=NOW)
        assert isinstance(snap.positions, Unknown) and "no answer" in snap.positions.reason
        assert only_order(snap).status == "filled" and [f.exec_id for f in snap.fills] == ["X1"]


def test_commissions_by_comm_type(server):
    a = adapter(server, mass_status=False, request_positions=False)
    oid = server.new_order("o1", "AAPL", "buy", "300", "10")
    server.fill(oid, "100", "10", exec_id="ABS", commission=("1.5", "3"))  # absolute
    server.fill(oid, "100", "10", exec_id="UNIT", commission=("0.01", "1"))  # per unit
    server.fill(oid, "100", "10", exec_id="PCT", commission=("0.1", "2"))  # percent of 1000
    fees = {f.exec_id: f.fee for f in a.snapshot(now=NOW).fills}
    assert fees == {"ABS": D("1.5"), "UNIT": D(1), "PCT": D(1)}


def test_a_bust_of_a_corrected_execution(server):
    a = adapter(server)
    oid = server.new_order("o1", "AAPL", "buy", "100", "10")
    server.fill(oid, "100", "10", exec_id="X1")
    corrected = server.correct(oid, "X1", "100", "10.5")
    server.bust(oid, corrected)  # ExecRefID names the correction: the original execution goes
    snap = a.snapshot(now=NOW)
    assert snap.fills == [] and only_order(snap).filled_qty == 0
    assert "X1" in a.book.busted


def test_a_malformed_amount_makes_orders_and_fills_unknown_not_a_dropped_fill(server):
    a = adapter(server)
    oid = server.new_order("o1", "AAPL", "buy", "100", "10")
    server.fill(oid, "40", "10", exec_id="X1")
    server.fill_garbled(oid, exec_id="X2", last_qty="6O", last_px="10")  # a letter O in LastQty
    snap = a.snapshot(now=NOW)
    for part in (snap.recent_orders, snap.open_orders, snap.fills):
        assert isinstance(part, Unknown), part  # never the one good fill as if it were all
        assert "X2" in part.reason and "LastQty (32)" in part.reason and "'6O'" in part.reason
    assert not isinstance(snap.positions, Unknown)  # the PositionReports were read as sent


def test_a_trade_without_its_quantity_is_unknown_too(server):
    a = adapter(server, request_positions=False)
    oid = server.new_order("o1", "AAPL", "buy", "100", "10")
    server.fill_garbled(oid, exec_id="X1", last_qty=None, last_px="10")  # 150=F without LastQty
    snap = a.snapshot(now=NOW)
    assert isinstance(snap.fills, Unknown) and "X1" in snap.fills.reason and "LastQty (32)" in snap.fills.reason


def test_a_malformed_position_quantity_makes_positions_unknown(server):
    server.positions["GOOG"] = D(5)
    server.garble_positions = "5,0"  # LongQty 704 with a decimal comma
    snap = adapter(server).snapshot(now=NOW)
    assert isinstance(snap.positions, Unknown) and "LongQty (704)" in snap.positions.reason
    assert "'5,0'" in snap.positions.reason
