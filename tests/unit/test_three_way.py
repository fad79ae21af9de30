"""Three-way reconciliation (domain/three_way.py): pure, states and snapshots built in memory."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal as D
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradestate.adapters.brokers.base import Unknown, VenueFill, VenueOrder, VenuePosition, VenueSnapshot
from tradestate.domain import events as ev
from tradestate.domain.ids import order_stream_id
from tradestate.domain.state import TradingState
from tradestate.domain.three_way import VIEWS, compare_three_ways, order_streams, verdict_of

ACCOUNT = "acct-1"
VENUE = "SIM"
T0 = datetime(2026, 3, 2, 15, 0, tzinfo=timezone.utc)


def apply(state, stream, event):
    version = state.stream_versions.get(stream, 0) + 1
    state.apply(state.position + 1, stream, version, event.type_name(), event.to_payload(), T0)


def order(state, coid, qty=10, fills=(), cancelled=False, symbol="AAPL", submitted=True):
    stream = order_stream_id(ACCOUNT, coid)
    e = ev.OrderIntentRecorded(event_id=uuid4(), occurred_at=T0, account=ACCOUNT, client_order_id=coid, venue=VENUE,
                               symbol=symbol, side="buy", order_type="limit", qty=qty, limit_price=D(100))
    apply(state, stream, e)
    base = dict(account=ACCOUNT, client_order_id=coid, correlation_id=e.event_id)
    if submitted:
        apply(state, stream, ev.OrderSubmitted(event_id=uuid4(), **base))
        apply(state, stream, ev.OrderAcknowledged(event_id=uuid4(), venue_order_id="V-" + coid, **base))
    for exec_id, q, p in fills:
        apply(state, stream, ev.OrderFilled(event_id=uuid4(), exec_id=exec_id, qty=q, price=p, **base))
    if cancelled:
        apply(state, stream, ev.OrderCancelled(event_id=uuid4(), reason="test", **base))


def vorder(coid, status, filled, qty=10, avg=None, symbol="AAPL", fills=()):
    return VenueOrder(venue_order_id="V-" + coid, client_order_id=coid, symbol=symbol, side="buy",
                      order_type="limit", qty=D(qty), filled_qty=D(filled), status=status, raw_status=status,
                      limit_price=D(100), avg_fill_price=None if avg is None else D(avg),
                      fills=tuple(VenueFill(e, coid, "V-" + coid, symbol, "buy", D(q), D(p)) for e, q, p in fills))


def snap(orders=(), positions=(), broker="alpaca"):
    orders = list(orders)
    return VenueSnapshot(broker=broker, venue=VENUE, account=ACCOUNT, taken_at=T0,
                         positions=positions if isinstance(positions, Unknown) else [
                             VenuePosition(s, D(q)) for s, q in positions],
                         open_orders=orders if isinstance(orders, Unknown) else [o for o in orders if o.is_open],
                         recent_orders=orders, fills=[], balances=[])


def rows(report, kind="order"):
    return {r.key: r for r in report.rows if r.kind == kind}


def test_all_three_agree():
    state = TradingState()
    order(state, "o1", fills=[("E1", 10, 100)])
    report = compare_three_ways(state, snap([vorder("o1", "filled", 10, avg=100)], [("AAPL", 10)]),
                                snap([vorder("o1", "filled", 10, avg=100)], [("AAPL", 10)], broker="fix"))
    assert {r.verdict for r in report.rows} == {"agree"} and not report.alerts
    assert report.counts == {"agree": 2}


def test_our_log_behind_is_corrected():
    state = TradingState()
    order(state, "o1", fills=[("E1", 4, 100)])
    report = compare_three_ways(state, snap([vorder("o1", "filled", 10, avg=100)], [("AAPL", 10)]),
                                snap([vorder("o1", "filled", 10, avg=100)], [("AAPL", 10)], broker="fix"))
    o1, pos = rows(report)["o1"], rows(report, "position")["AAPL"]
    assert (o1.verdict, o1.differs, o1.action) == ("log_differs", "log", "correct_log")
    assert o1.values == {"log": "open 4 @ 100", "api": "filled 10 @ 100", "drop_copy": "filled 10 @ 100"}
    assert (pos.verdict, pos.values["log"]) == ("log_differs", "4")
    assert not report.alerts


def test_the_api_disagreeing_with_log_and_drop_copy_is_an_alert():
    state = TradingState()
    order(state, "o1", fills=[("E1", 10, 100)])
    report = compare_three_ways(state, snap([vorder("o1", "partially_filled", 5, avg=100)], [("AAPL", 5)]),
                                snap([vorder("o1", "filled", 10, avg=100)], [("AAPL", 10)], broker="fix"))
    assert {(r.kind, r.verdict, r.differs, r.action) for r in report.rows} == {
        ("order", "api_differs", "api", "alert"), ("position", "api_differs", "api", "alert")}
    assert len(report.alerts) == 2


def test_the_drop_copy_behind_is_named():
    state = TradingState()
    order(state, "o1", fills=[("E1", 10, 100)])
    report = compare_three_ways(state, snap([vorder("o1", "filled", 10, avg=100)]),
                                snap([vorder("o1", "open", 0)], broker="fix"))
    o1 = rows(report)["o1"]
    assert (o1.verdict, o1.differs, o1.action) == ("drop_copy_differs", "drop_copy", "alert")


def test_a_price_correction_is_seen_when_all_three_know_the_price():
    state = TradingState()
    order(state, "o1", fills=[("E1", 10, D("100.01"))])  # live fill, later corrected by the venue
    report = compare_three_ways(state, snap([vorder("o1", "filled", 10, avg="100.02")]),
                                snap([vorder("o1", "filled", 10, avg="100.02")], broker="fix"))
    o1 = rows(report)["o1"]
    assert (o1.verdict, o1.values["log"], o1.values["api"]) == ("log_differs", "filled 10 @ 100.01", "filled 10 @ 100.02")
    # a view without a price: compared on status and quantity only
    report = compare_three_ways(state, snap([vorder("o1", "filled", 10)]),
                                snap([vorder("o1", "filled", 10, avg="100.02")], broker="fix"))
    assert rows(report)["o1"].verdict == "agree"


def test_the_api_price_is_taken_from_its_fills_when_it_gives_no_average():
    state = TradingState()
    order(state, "o1", fills=[("E1", 4, 100), ("E2", 6, 101)])
    api = snap([vorder("o1", "filled", 10, fills=[("E1", 4, 100), ("E2", 6, 101)])])
    report = compare_three_ways(state, api, snap([vorder("o1", "filled", 10, avg="100.6")], broker="fix"))
    assert rows(report)["o1"].values["api"] == "filled 10 @ 100.6"
    assert rows(report)["o1"].verdict == "agree"


def test_absence():
    state = TradingState()
    order(state, "done", fills=[("E1", 10, 100)])
    order(state, "working")
    order(state, "never-sent", submitted=False)
    api = snap([vorder("done", "filled", 10), vorder("working", "open", 0), vorder("theirs", "filled", 3)])
    drop = snap([vorder("theirs", "filled", 3)], broker="fix")  # finished orders outside its day: silent
    by_key = rows(compare_three_ways(state, api, drop))
    assert by_key["done"].verdict == "agree"  # finished, listed by two: the third's silence is no opinion
    working = by_key["working"]  # a working order must be listed by every complete view
    assert (working.verdict, working.differs, working.values["drop_copy"]) == ("drop_copy_differs", "drop_copy",
                                                                                "absent")
    theirs = by_key["theirs"]  # both venues have an order our log lacks
    assert (theirs.verdict, theirs.differs, theirs.action) == ("log_differs", "log", "correct_log")
    assert "never-sent" not in by_key


def test_two_views_without_a_tiebreak():
    state = TradingState()
    order(state, "o1", fills=[("E1", 10, 100)], qty=10)
    order(state, "o2", fills=[("E2", 10, 100)], qty=10)
    api = snap([vorder("o1", "filled", 8)])  # the drop copy does not list o1 (outside its day)
    drop = snap([vorder("o2", "filled", 7)], broker="fix")  # the API does not list o2
    by_key = rows(compare_three_ways(state, api, drop))
    assert (by_key["o1"].verdict, by_key["o1"].action) == ("no_tiebreak", "correct_log")  # two-way: the API
    assert (by_key["o2"].verdict, by_key["o2"].action) == ("no_tiebreak", "alert")  # nothing corrected blindly


def test_a_view_that_could_not_be_read_is_unknown():
    state = TradingState()
    order(state, "o1", fills=[("E1", 10, 100)])
    api = snap([vorder("o1", "filled", 10)], [("AAPL", 10)])
    drop = VenueSnapshot(broker="fix", venue=VENUE, account=ACCOUNT, taken_at=T0, positions=Unknown("no AP"),
                         open_orders=Unknown("down"), recent_orders=Unknown("down"), fills=Unknown("down"),
                         balances=Unknown("no cash"))
    report = compare_three_ways(state, api, drop)
    assert {(r.kind, r.verdict, r.action) for r in report.rows} == {("order", "unknown", "unknown"),
                                                                    ("position", "unknown", "unknown")}
    assert rows(report)["o1"].values["drop_copy"] is None and not report.alerts
    assert order_streams(ACCOUNT, [api, drop]) == [order_stream_id(ACCOUNT, "o1")]


def test_snapshots_of_different_accounts_are_refused():
    other = VenueSnapshot(broker="fix", venue=VENUE, account="acct-2", taken_at=T0, positions=[], open_orders=[],
                          recent_orders=[], fills=[], balances=[])
    with pytest.raises(ValueError, match="acct-2"):
        compare_three_ways(TradingState(), snap(), other)


def test_report_as_dict_lists_only_disagreements():
    state = TradingState()
    order(state, "o1", fills=[("E1", 10, 100)])
    order(state, "o2", fills=[("E2", 2, 100)])
    report = compare_three_ways(state, snap([vorder("o1", "filled", 10), vorder("o2", "filled", 10)], [("AAPL", 12)]),
                                snap([vorder("o1", "filled", 10), vorder("o2", "filled", 10)], [("AAPL", 12)],
                                     broker="fix"))
    d = report.as_dict()
    assert [r["key"] for r in d["rows"]] == ["o2"] and d["rows"][0]["differs"] == "log"
    assert d["counts"] == {"agree": 2, "log_differs": 1} and d["alerts"] == 0


values = st.sampled_from(["a", "b", "c"])


@given(values, values, values)
def test_verdict_names_the_odd_one_out(log, api, drop):
    triple = {"log": log, "api": api, "drop_copy": drop}
    verdict, differs = verdict_of(triple)
    if len(set(triple.values())) == 1:
        assert verdict == "agree" and differs is None
    elif len(set(triple.values())) == 3:
        assert verdict == "all_differ" and differs is None
    else:
        others = [v for v in VIEWS if v != differs]
        assert triple[others[0]] == triple[others[1]] != triple[differs]
        assert verdict == f"{differs}_differs"


qty = st.integers(min_value=0, max_value=10)
status = st.sampled_from(["open", "partially_filled", "filled", "cancelled"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(qty, qty, status), min_size=1, max_size=4), st.lists(qty, max_size=3))
def test_when_api_and_drop_copy_agree_only_the_log_can_be_named(orders, positions):
    """Identical venue views never blame the API or the drop copy, and nothing is an alert."""
    state = TradingState()
    venue = []
    for i, (ours, theirs, st_) in enumerate(orders):
        coid = f"o{i}"
        order(state, coid, fills=[(f"E{i}", ours, 100)] if ours else [])
        filled = theirs if st_ != "open" else 0
        venue.append(vorder(coid, "filled" if st_ == "filled" else st_, filled, avg=100 if filled else None))
    held = [(f"S{i}", q) for i, q in enumerate(positions)]
    report = compare_three_ways(state, snap(venue, held), snap(venue, held, broker="fix"))
    assert all(r.verdict in ("agree", "log_differs") for r in report.rows), report.as_dict()
    assert not report.alerts
