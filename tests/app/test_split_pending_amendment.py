"""Through the client: an engine amendment still pending when a split restates its order is
restated with it; the engine's retry as first asked is the same amendment; the venue's
confirmation in post-split terms applies it once; a reopened client (folding the log again)
sees the same."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal as D

import tradestate
from tests.support.projector_worker import Clock

SPLIT_AT = datetime(2026, 6, 1, 13, 30, tzinfo=timezone.utc)


def _working_with_40_filled(c) -> None:
    """o1: buy 100 AAPL @ 150 working at IB as V1, 40 filled (X.01)."""
    c.record_intent("a", "o1", "AAPL", "buy", 100, order_type="limit", limit_price="150", venue="IB")
    c.record_submitted("a", "o1")
    c.record_ack("a", "o1", "V1")
    c.record_fill("a", "o1", "X.01", 40, "150")


def test_a_pending_amendment_split_with_its_order_is_confirmed_in_post_split_terms(sqlite_url):
    with tradestate.connect(sqlite_url, clock=Clock()) as c:
        _working_with_40_filled(c)
        asked = c.request_replace("a", "o1", qty=120, limit_price="149", replace_id="r1")
        assert asked.accepted
        c.record_corporate_action("AAPL", "split", SPLIT_AT, ratio_from=1, ratio_to=2)
        o = c.order("a", "o1")
        assert (o["qty"], o["limit_price"], o["replace_pending"]) == (160, 75, "r1")
        restated = c.state.orders[o["stream_id"]].replaces["r1"]["request"]
        assert (D(restated["qty"]), D(restated["limit_price"])) == (200, D("74.5"))  # 40 + 80 x 2, at 149 / 2
        again = c.request_replace("a", "o1", qty=120, limit_price="149", replace_id="r1")  # a retry as first asked
        assert again.duplicate and again.accepted
        confirmed = c.record_replaced("a", "o1", 240, limit_price="74.5")  # the venue restates the filled 40 too
        assert not confirmed.duplicate
        o = c.order("a", "o1")
        assert (o["qty"], o["remaining_qty"], o["limit_price"], o["replace_pending"],
                o["replaces"]["r1"]["status"]) == (200, 160, D("74.5"), None, "replaced")
    with tradestate.connect(sqlite_url, clock=Clock()) as again:
        assert again.order("a", "o1") == o


def test_the_order_flow_sees_a_split_amendment_in_our_terms_or_in_the_venues_whole_restatement():
    from tradestate.domain.venue import VenueOrder
    from tradestate.order_flow import _shows

    entry = {"request": {"qty": "200", "limit_price": "74.5"}, "restated_qty": "240"}  # 40 filled before a 1:2 split

    def at_venue(qty: int, price: str = "74.5") -> VenueOrder:
        return VenueOrder("V1", "o1", "AAPL", "buy", "limit", D(qty), D(80), "accepted", "accepted",
                          limit_price=D(price))

    assert _shows(at_venue(200), D(80), entry)  # our terms
    assert _shows(at_venue(240), D(80), entry)  # the venue restates the filled part too
    assert not _shows(at_venue(240, "75"), D(80), entry) and not _shows(at_venue(220), D(80), entry)
    assert _shows(at_venue(200), D(80), {"request": entry["request"]})  # no split: our terms only


def test_reconciliation_records_a_split_amendment_the_venue_shows_whole_in_our_terms(sqlite_url):
    from tradestate.domain.reconcile import plan_reconciliation
    from tradestate.domain.venue import VenueFill, VenueOrder, VenuePosition, VenueSnapshot

    with tradestate.connect(sqlite_url, clock=Clock()) as c:
        _working_with_40_filled(c)
        assert c.request_replace("a", "o1", qty=120, limit_price="149", replace_id="r1").accepted
        c.record_corporate_action("AAPL", "split", SPLIT_AT, ratio_from=1, ratio_to=2)
        state = c.state
    now = datetime(2026, 6, 2, 15, tzinfo=timezone.utc)
    fill = VenueFill("X.01", "V1", "o1", "AAPL", "buy", D(80), D(75), D(0), occurred_at=SPLIT_AT)
    whole = VenueOrder("V1", "o1", "AAPL", "buy", "limit", D(240), D(80), "partially_filled", "Submitted",
                       limit_price=D("74.5"), updated_at=now)  # the filled 40 restated as 80 too
    snap = VenueSnapshot(broker="ib", venue="IB", account="a", taken_at=now,
                         positions=[VenuePosition("AAPL", D(80), D(75))], open_orders=[whole],
                         recent_orders=[whole], fills=[fill], balances=[])
    plan = plan_reconciliation(state, snap, reconciliation_id=__import__("uuid").uuid4(), now=now)
    replaced = [e for _s, e in plan.events if e.type_name() == "OrderReplaced"]
    assert [(r.qty, r.limit_price) for r in replaced] == [(200, D("74.5"))]  # our terms, not the venue's 240
