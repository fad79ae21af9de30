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


def test_a_pending_amendment_split_with_its_order_is_confirmed_in_post_split_terms(sqlite_url):
    with tradestate.connect(sqlite_url, clock=Clock()) as c:
        c.record_intent("a", "o1", "AAPL", "buy", 100, order_type="limit", limit_price="150", venue="IB")
        c.record_submitted("a", "o1")
        c.record_ack("a", "o1", "V1")
        c.record_fill("a", "o1", "X.01", 40, "150")
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
