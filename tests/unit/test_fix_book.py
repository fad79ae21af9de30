"""The drop-copy book (pure): ExecutionReports from the acceptor's script, without a socket."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from decimal import Decimal as D

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.fake_fix import FakeDropCopyServer
from tradestate.adapters.brokers.fix_dropcopy import DropCopyBook
from tradestate.adapters.brokers.fix_session import encode, parse_frame

T = datetime(2026, 12, 5, 15, 0, tzinfo=timezone.utc)


def messages(server):
    """What the (never started) acceptor would have sent, as parsed messages in sequence."""
    return [parse_frame(encode(t, body, sender="VENUE", target="DESK", seq=seq, sending_time=T))
            for seq, (t, body, _) in sorted(server.sent.items())]


ops = st.lists(st.tuples(st.sampled_from(["fill", "correct", "bust"]), st.integers(1, 5), st.integers(0, 10**6)),
               max_size=12)


@settings(max_examples=80, deadline=None)
@given(ops, st.lists(st.integers(0, 10**6), max_size=6))
def test_the_book_matches_the_venue_and_resent_reports_change_nothing(script, resends):
    srv = FakeDropCopyServer()  # not started: it only records what it sends
    oid = srv.new_order("o1", "AAPL", "buy", "30", "10")
    for op, qty, pick in script:
        order = srv.orders[oid]
        if op == "fill" and order.cum_qty + qty <= order.qty:
            srv.fill(oid, qty, 10 + pick % 7)
        elif op == "correct" and order.fills:
            srv.correct(oid, sorted(order.fills)[pick % len(order.fills)], qty, D("10.5"))
        elif op == "bust" and order.fills:
            srv.bust(oid, sorted(order.fills)[pick % len(order.fills)])
    msgs = messages(srv)
    book = DropCopyBook()
    for m in msgs:
        book.apply(m)
    venue = srv.orders[oid]
    (ours,) = book.venue_orders()
    # the book's executions are the venue's live ones (corrections under their original ids)
    assert Counter((f.qty, f.price) for f in book.fills.values()) == Counter(venue.fills.values())
    assert sum((f.qty for f in book.fills.values()), D(0)) == venue.cum_qty == ours.filled_qty

    # reports resent (PossResend under a new MsgSeqNum) at any later point: the same book
    again = DropCopyBook()
    for i, m in enumerate(msgs):
        again.apply(m)
        for r in resends:
            if r % len(msgs) == i:
                again.apply(msgs[r % (i + 1)])
    assert again.fills == book.fills and again.venue_orders() == book.venue_orders()
