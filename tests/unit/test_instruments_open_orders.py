"""Corporate actions and our open orders: a split or a symbol change restates every open order of
the symbol (``OrderAdjusted``, recorded with the action), exactly where the numbers allow it and
saying what it rounded where they do not; the venue's confirmation of the adjusted order is not
a second adjustment; apply, the cold fold and a checkpoint agree."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from uuid import uuid4

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradestate.domain import events as ev
from tradestate.domain import orders as rules
from tradestate.domain import snapshot
from tradestate.domain.fold import fold_cold
from tradestate.domain.ids import instrument_stream_id, order_stream_id

from tests.support.fold import T0, Fold

D = Decimal


def define(f: Fold, symbol: str, **fields) -> None:
    f.add(instrument_stream_id(symbol), ev.InstrumentDefined(event_id=uuid4(), symbol=symbol, asset_class="equity",
                                                             **fields))


def corporate(f: Fold, symbol: str, action: str, *, day: int = 0, **fields) -> rules.Decision:
    """Decide the action (effective ``day`` days after T0) as the client does and fold what it appends."""
    e = ev.CorporateActionRecorded(event_id=uuid4(), occurred_at=T0, symbol=symbol, action=action,
                                   effective_at=T0 + timedelta(days=day), **fields)
    decision = rules.decide_corporate_action(f.state, e)
    if isinstance(decision, rules.Append):
        for stream, event in decision.events:
            f.add(stream, event)
    return decision


def working(f: Fold, coid: str, side: str, qty: str, limit: str, *, filled: str = "0", symbol: str = "AAPL",
            **extra) -> None:
    f.intent(coid, side, qty, symbol=symbol, order_type="limit", limit_price=limit, **extra)
    f.order_event(ev.OrderAcknowledged, coid, venue_order_id=f"V-{coid}")
    if D(filled):
        f.fill(coid, f"x-{coid}", filled, limit)


def xyz_orders(tick: str, *orders: tuple[str, str, str, str]) -> Fold:
    """A fold with XYZ defined (whole units, ``tick``) and open limit ``orders`` (coid, side, qty, price) on it."""
    f = Fold()
    define(f, "XYZ", tick_size=tick)
    for coid, side, qty, price in orders:
        working(f, coid, side, qty, price, symbol="XYZ")
    return f


def picture(state) -> dict:
    s = state.summary()
    return {k: s[k] for k in ("orders", "positions", "accounts")}


def test_a_split_restates_an_open_orders_remaining_quantity_and_prices():
    f = Fold()
    working(f, "o1", "buy", "100", "150", filled="40")
    f.intent("o2", "sell", "30", symbol="AAPL", order_type="stop_limit", limit_price="160.5", stop_price="161")
    before = f.position().as_dict()
    decision = corporate(f, "AAPL", "split", ratio_from="1", ratio_to="2")
    assert [type(e).__name__ for _, e in decision.events] == ["CorporateActionRecorded", "OrderAdjusted",
                                                             "OrderAdjusted"]
    o1, o2 = f.order("o1"), f.order("o2")
    assert (o1.qty, o1.filled_qty, o1.remaining, o1.limit_price, o1.status) == (160, 40, 120, 75, "partially_filled")
    assert (o2.qty, o2.limit_price, o2.stop_price) == (60, D("80.25"), D("80.5"))
    assert o1.remaining * o1.limit_price == 60 * 150  # the working notional is kept
    p = f.position()
    assert (p.qty, p.avg_cost) == (80, 75) and p.unrealized_pnl == before["unrealized_pnl"]
    f.fill("o1", "x-post", "120", "75")  # the rest fills in new shares
    assert (f.order("o1").status, f.position().qty) == ("filled", 200)
    assert corporate(f, "AAPL", "split", ratio_from="1", ratio_to="2") == rules.AlreadyRecorded(
        f.state.corporate_actions[("AAPL", "split", T0.isoformat().replace("+00:00", "Z"))])


def test_a_reverse_split_on_whole_units_drops_the_fraction_and_says_so_and_rounds_prices_never_more_aggressive():
    f = xyz_orders("0.01", ("buy", "buy", "25", "10.01"), ("sell", "sell", "25", "10.01"), ("tiny", "buy", "5", "10"))
    decision = corporate(f, "XYZ", "split", ratio_from="3", ratio_to="1")
    adjusted = {e.client_order_id: e for _, e in decision.events if isinstance(e, ev.OrderAdjusted)}
    buy, sell, tiny = f.order("buy"), f.order("sell"), f.order("tiny")
    assert (buy.qty, buy.limit_price) == (8, D("30.03"))
    assert adjusted["buy"].remaining_dropped == D("0.333333333333")
    assert "dropped (XYZ trades in whole units)" in adjusted["buy"].reason
    assert sell.limit_price == D("30.03")  # 10.01 x 3 is on the grid: exact both ways
    assert (tiny.qty, tiny.status, tiny.limit_price) == (1, "acknowledged", 30)
    f2 = xyz_orders("0.05", ("b", "buy", "2", "10.01"), ("s", "sell", "2", "10.01"), ("gone", "buy", "1", "10"))
    decision = corporate(f2, "XYZ", "split", ratio_from="1", ratio_to="2")
    assert (f2.order("b").limit_price, f2.order("s").limit_price) == (D("5"), D("5.05"))  # 5.005 off the grid
    decision = corporate(f2, "XYZ", "split", ratio_from="4", ratio_to="1", day=1)
    gone = f2.order("gone")
    assert (gone.status, gone.remaining) == ("cancelled", 0)  # 2 shares become half of one: nothing whole left
    said = {e.client_order_id: e.reason for _, e in decision.events if isinstance(e, ev.OrderAdjusted)}
    assert "nothing whole is left to work" in said["gone"]


def test_a_symbol_change_moves_the_open_order_and_its_later_fills():
    f = Fold()
    working(f, "o1", "buy", "10", "300", filled="4", symbol="FB")
    corporate(f, "FB", "symbol_change", new_symbol="META")
    o = f.order("o1")
    assert (o.symbol, o.qty, o.limit_price, o.remaining) == ("META", 10, 300, 6)
    f.fill("o1", "x-2", "6", "300")
    assert (f.position("FB").qty, f.position("META").qty) == (0, 10)


def test_the_venues_confirmation_of_the_adjusted_order_does_not_adjust_again():
    f = Fold()
    working(f, "o1", "buy", "100", "150", filled="40")
    corporate(f, "AAPL", "split", ratio_from="1", ratio_to="2")
    o = f.order("o1")
    where = o.adjusted["position"]

    def replaced(qty: str, limit: str = "75", venue_order_id: str | None = "V-o1"):
        return ev.OrderReplaced(event_id=uuid4(), account="acct", client_order_id="o1", qty=qty, limit_price=limit,
                                venue_order_id=venue_order_id)

    for qty in ("160", "200"):  # our terms, or the venue's full restatement (filled part in new shares too)
        assert rules.decide_replaced(f.state, replaced(qty)) == rules.AlreadyRecorded(where)
    # a cancel/replace chain's new venue order: its id is recorded, at our adjusted quantity
    decision = rules.decide_replaced(f.state, replaced("200", venue_order_id="V-new"))
    assert [(e.qty, e.venue_order_id) for _, e in decision.events] == [(D(160), "V-new")]
    f.add(*decision.events[0])
    assert (o.qty, o.remaining, o.venue_order_id) == (160, 120, "V-new")
    # an amendment after the confirmation is an amendment again
    decision = rules.decide_replaced(f.state, replaced("200", venue_order_id="V-new"))
    assert isinstance(decision, rules.Append) and decision.events[0][1].qty == 200


def test_a_log_with_adjusted_orders_folds_cold_and_from_a_checkpoint_like_apply():
    f = Fold()
    working(f, "o1", "buy", "100", "150", filled="40")
    working(f, "o2", "buy", "10", "300", filled="4", symbol="FB")
    working(f, "o3", "sell", "1", "151")
    corporate(f, "AAPL", "split", ratio_from="1", ratio_to="2")
    corporate(f, "FB", "symbol_change", new_symbol="META")
    doc, finished = snapshot.take(f.state)
    restored = snapshot.restore(orjson.loads(snapshot.encode(doc)), finished)
    cold, _ = fold_cold([f.rows])
    for state in (restored, cold):
        assert picture(state) == picture(f.state)
    f.fill("o2", "x-late", "6", "300")
    for state in (restored, cold):
        state.apply(f.pos, *f.rows[-1][1:4], orjson.loads(f.rows[-1][4]), f.rows[-1][5])
        assert picture(state) == picture(f.state)
    assert f.position("META").qty == 10


def test_the_new_events_load_from_their_stored_form():
    adjusted = ev.OrderAdjusted(event_id=uuid4(), account="a", client_order_id="c", corporate_action="split",
                                effective_at=T0, symbol="X", previous_symbol="X", qty="0", previous_qty="5",
                                ratio_from="4", ratio_to="1", remaining_dropped="1.25")
    margin = ev.VariationMarginSettled(event_id=uuid4(), account="a", venue="ib", symbol="ESZ6",
                                       business_date="2026-12-01", settlement_price="5010.25", qty="-2",
                                       amount="-1025", currency="USD")
    for e in (adjusted, margin):
        stored = orjson.loads(orjson.dumps(e.to_payload()))
        assert stored[ev.SCHEMA_KEY] == e.schema_version and ev.decode(e.type_name(), stored) == e
    with pytest.raises(ValueError, match="business_date"):
        ev.VariationMarginSettled(event_id=uuid4(), account="a", venue="ib", symbol="ES", business_date="1 Dec",
                                  settlement_price="1", qty="1", amount="1")


# ------------------------------------------------------------------------------- hypothesis

SPLITS = [("1", "2"), ("1", "3"), ("2", "3"), ("1", "10"), ("2", "1"), ("3", "1"), ("10", "1"), ("20", "1")]


@settings(max_examples=200, deadline=None)
@given(qty=st.integers(1, 10_000), filled=st.integers(0, 100), cents=st.integers(1, 10**6),
       side=st.sampled_from(["buy", "sell"]), split=st.sampled_from(SPLITS),
       registry=st.sampled_from([None, "whole", "fractional", "lot"]), held=st.integers(-500, 500))
def test_a_split_keeps_market_value_and_the_open_orders_notional(qty, filled, cents, side, split, registry, held):
    f = Fold()
    tick = D("0.01")
    if registry is not None:
        define(f, "AAPL", tick_size=str(tick), fractional=registry == "fractional",
               lot_size="5" if registry == "lot" else None)
        qty = qty * 5 if registry == "lot" else qty
    filled = min(filled, qty - 1) // 5 * 5 if registry == "lot" else min(filled, qty - 1)
    price = D(cents) / 100
    if held:
        f.intent("h", "buy" if held > 0 else "sell", str(abs(held)))
        f.fill("h", "x-h", str(abs(held)), str(price))
    working(f, "o", side, str(qty), str(price), filled=str(filled))
    p = f.position()
    value_before = p.qty * p.last_price if p is not None else 0
    order = f.order("o")
    remaining, notional = order.remaining, order.remaining * order.limit_price
    ratio_from, ratio_to = map(D, split)
    decision = corporate(f, "AAPL", "split", ratio_from=ratio_from, ratio_to=ratio_to)
    adjusted = decision.events[-1][1]
    if p is not None:
        assert abs(p.qty * p.last_price - value_before) < D("1e-20")  # market value kept
    exact_remaining = remaining * ratio_to / ratio_from
    assert abs(exact_remaining - order.remaining - adjusted.remaining_dropped) < D("1e-12")
    assert order.filled_qty == filled  # what filled stays as booked
    exact_price = price * ratio_from / ratio_to
    step = tick if registry is not None else D("1e-12")
    # never more aggressive than the exact price (but one step at least), and off it by less than one step
    if order.limit_price != step:
        assert (order.limit_price <= exact_price) if side == "buy" else (order.limit_price >= exact_price)
    assert abs(order.limit_price - exact_price) < step
    if order.remaining == exact_remaining and order.limit_price == exact_price:
        assert order.remaining * order.limit_price == notional  # exact wherever the numbers allow it
    else:  # the kept notional is the exact one less what was dropped and rounded
        assert abs(order.remaining * order.limit_price - notional) <= (
            (exact_remaining - order.remaining) * exact_price + order.remaining * step + D("1e-20"))
    if order.remaining == 0:
        assert order.status == "cancelled"
    cold, _ = fold_cold([f.rows])  # the cold fold restates the order as apply does (a finished one stays in the log)
    assert {k: cold.summary()[k] for k in ("positions", "accounts")} == {
        k: f.state.summary()[k] for k in ("positions", "accounts")}
    if order.is_open:
        assert cold.orders[order.stream_id].as_dict() == order.as_dict()


def test_a_venues_cancel_replace_of_the_split_order_is_read_in_our_terms_not_adjusted_again():
    """Alpaca-like: the venue ends the pre-split order (40 of 100 filled) and carries it on as a new
    order for the 120 new shares left at 50; reconciliation records the new venue order id at the
    quantity we hold already (40 + 120), so the order still has 120 to work."""
    from dataclasses import replace

    from tests.unit.test_reconcile_domain import (ACCOUNT, apply, apply_plan, intent, order, plan, snapshot, types,
                                                  vfill, vorder)
    from tests.unit.test_reconcile_venue_links import link
    from tradestate.domain.state import TradingState

    state = TradingState()
    intent(state, "o1", qty=100, ack="V1", fills=[("X1", 40, 100)])
    split = ev.CorporateActionRecorded(event_id=uuid4(), symbol="AAPL", action="split", ratio_from=1, ratio_to=2,
                                       effective_at=T0, source="venue")
    decision = rules.decide_corporate_action(state, split)
    for stream, event in decision.events:
        apply(state, stream, event)
    assert (order(state, "o1").qty, order(state, "o1").limit_price) == (160, 50)  # 40 + 60 x 2, at 100 / 2
    old = link(vorder("V1", "o1", "replaced", qty=100, filled=40, avg="100"), replaced_by="V2")
    new = replace(link(vorder("V2", "o1", "open", qty=120), replaces="V1"), limit_price=D(50))
    snap = snapshot(orders=[old, new], fills=[vfill("X1", "o1", "V1", 40, 100)], positions=[("AAPL", 80)])
    p = plan(state, snap)
    assert types(p) == ["OrderReplaced"] and p.events[0][1].qty == 160
    apply_plan(state, p)
    o = order(state, "o1")
    assert (o.qty, o.remaining, o.limit_price, o.venue_order_id) == (160, 120, 50, "V2")
    assert state.position_of(ACCOUNT, "SIM", "AAPL").qty == 80


def test_an_order_the_venue_restated_before_the_split_was_recorded_is_not_adjusted_twice():
    f = Fold()
    working(f, "o1", "buy", "100", "150", filled="40")
    working(f, "o2", "buy", "10", "150")
    # the venue adjusted o1 on the ex-date (40 filled + 60 x 2 at 75); o2 was amended by us (not a split)
    f.order_event(ev.OrderReplaced, "o1", qty="160", limit_price="75", venue_order_id="V-o1")
    f.order_event(ev.OrderReplaced, "o2", qty="20", limit_price="150", venue_order_id="V-o2")
    decision = corporate(f, "AAPL", "split", ratio_from="1", ratio_to="2")
    said = {e.client_order_id: e.reason for _, e in decision.events if isinstance(e, ev.OrderAdjusted)}
    o1, o2 = f.order("o1"), f.order("o2")
    assert (o1.qty, o1.remaining, o1.limit_price) == (160, 120, 75) and "restated the order already" in said["o1"]
    assert (o2.qty, o2.limit_price) == (40, 75)  # our own amendment: the split applies to it


def test_an_order_renamed_twice_knows_its_former_symbols_through_a_checkpoint_and_an_older_one():
    f = Fold()
    working(f, "o1", "buy", "10", "300", filled="4", symbol="FB")
    corporate(f, "FB", "symbol_change", new_symbol="META")
    corporate(f, "AAPL", "split", ratio_from="1", ratio_to="2")  # no order of it: nothing of o1 changes
    corporate(f, "META", "symbol_change", day=1, new_symbol="MTA")
    assert (f.order("o1").symbol, f.order("o1").former_symbols) == ("MTA", ("FB", "META"))
    doc, finished = snapshot.take(f.state)
    stored = orjson.loads(snapshot.encode(doc))
    assert snapshot.restore(stored, finished).orders[order_stream_id("acct", "o1")].former_symbols == ("FB", "META")
    [kept] = [o["adjusted"].pop("former_symbols") for o in stored["orders"] if o.get("adjusted")]
    assert kept == ["FB", "META"]  # without them: a checkpoint taken before they were kept
    older = snapshot.restore(stored, finished).orders[order_stream_id("acct", "o1")]
    assert older.former_symbols == ("FB",)  # the intent's symbol at least


# ------------------------------------------------------------------- a pending amendment

def amend(f: Fold, coid: str, replace_id: str, qty: str, limit: str) -> ev.OrderReplaceRequested:
    e = ev.OrderReplaceRequested(event_id=uuid4(), occurred_at=T0, account="acct", client_order_id=coid,
                                 replace_id=replace_id, qty=qty, limit_price=limit)
    decision = rules.decide_replace_request(f.state, e, T0)
    assert isinstance(decision, rules.Append) and len(decision.events) == 1  # passed its check, pending
    f.add(*decision.events[0])
    return e


def replaced(qty: str, limit: str, venue_order_id: str | None = "V-o1") -> ev.OrderReplaced:
    return ev.OrderReplaced(event_id=uuid4(), account="acct", client_order_id="o1", qty=qty, limit_price=limit,
                            venue_order_id=venue_order_id)


def test_a_split_restates_the_pending_amendment_with_its_order():
    f = Fold()
    working(f, "o1", "buy", "100", "150", filled="40")
    asked = amend(f, "o1", "r1", "120", "149.01")  # 80 left to work at 149.01
    decision = corporate(f, "AAPL", "split", ratio_from="1", ratio_to="2")
    [adjusted] = [e for _, e in decision.events if isinstance(e, ev.OrderAdjusted)]
    assert (adjusted.replace_id, adjusted.replace_qty, adjusted.replace_limit_price,
            adjusted.replace_restated_qty) == ("r1", 200, D("74.505"), 240)  # 40 filled + 80 x 2
    o = f.order("o1")
    assert (o.qty, o.limit_price, o.replace_pending) == (160, 75, "r1")
    request = o.replaces["r1"]["request"]  # what the venue is asked, the read models show, in today's terms
    assert (D(request["qty"]), D(request["limit_price"])) == (200, D("74.505"))
    # the engine's retry of its amendment as it asked it is the same amendment
    assert rules.decide_replace_request(f.state, asked, T0) == rules.AlreadyRecorded(o.replaces["r1"]["position"])
    # the venue's confirmation in post-split terms (ours, or its whole restatement) is the amendment's
    for qty in ("200", "240"):
        decision = rules.decide_replaced(f.state, replaced(qty, "74.505"))
        assert [(e.qty, e.limit_price) for _, e in decision.events] == [(200, D("74.505"))]
    f.add(*decision.events[0])
    assert (o.qty, o.remaining, o.limit_price, o.replace_pending, o.replaces["r1"]["status"]) == (
        200, 160, D("74.505"), None, "replaced")


def test_a_reverse_split_restates_the_pending_amendment_rounded_like_its_order_and_says_so():
    f = xyz_orders("0.01", ("o1", "sell", "10", "20.03"))
    amend(f, "o1", "r1", "13", "20.05")
    decision = corporate(f, "XYZ", "split", ratio_from="4", ratio_to="1")
    [adjusted] = [e for _, e in decision.events if isinstance(e, ev.OrderAdjusted)]
    # 13 -> 3.25 on whole units: 3, 0.25 dropped; a sell's price rounds up (never more aggressive)
    assert (adjusted.qty, adjusted.replace_qty, adjusted.replace_limit_price) == (2, 3, D("80.20"))
    assert "amendment r1" in adjusted.reason and "0.25 dropped" in adjusted.reason.split("amendment r1")[1]


def test_a_symbol_change_leaves_the_pending_amendment_as_asked():
    f = Fold()
    working(f, "o1", "buy", "10", "300", filled="4", symbol="FB")
    amend(f, "o1", "r1", "12", "301")
    decision = corporate(f, "FB", "symbol_change", new_symbol="META")
    [adjusted] = [e for _, e in decision.events if isinstance(e, ev.OrderAdjusted)]
    assert adjusted.replace_id is None  # nothing of its numbers changes: the request stands
    o = f.order("o1")
    assert (o.symbol, o.replace_pending, D(o.replaces["r1"]["request"]["qty"])) == ("META", "r1", 12)


def test_a_restated_amendment_folds_cold_and_from_a_checkpoint_like_apply():
    f = Fold()
    working(f, "o1", "buy", "100", "150", filled="40")
    amend(f, "o1", "r1", "120", "149.01")
    corporate(f, "AAPL", "split", ratio_from="1", ratio_to="2")
    doc, finished = snapshot.take(f.state)
    restored = snapshot.restore(orjson.loads(snapshot.encode(doc)), finished)
    cold, _ = fold_cold([f.rows])
    sid = order_stream_id("acct", "o1")
    for state in (restored, cold):
        assert picture(state) == picture(f.state)
        assert state.orders[sid].replaces == f.state.orders[sid].replaces


def test_an_order_adjusted_stored_before_amendments_were_restated_still_loads():
    v1 = {"event_id": str(uuid4()), "account": "a", "client_order_id": "c", "corporate_action": "split",
          "effective_at": T0.isoformat(), "symbol": "X", "previous_symbol": "X", "qty": "10", "previous_qty": "5",
          "ratio_from": "1", "ratio_to": "2", "restated_qty": "10", "remaining_dropped": "0", "reason": "", "_v": 1}
    e = ev.decode("OrderAdjusted", v1)
    assert (e.qty, e.replace_id, e.replace_qty) == (10, None, None)
    f = Fold()  # and the fold takes it as it was stored
    working(f, "c", "buy", "5", "10", symbol="X")
    f.raw(order_stream_id("acct", "c"), "OrderAdjusted", {**v1, "account": "acct", "limit_price": "5"})
    assert (f.order("c").qty, f.order("c").replace_pending) == (10, None)


def test_a_pending_amendment_a_reverse_split_leaves_nothing_whole_of_says_so():
    f = xyz_orders("0.01", ("o1", "sell", "10", "20.03"))
    amend(f, "o1", "r1", "3", "20.05")
    decision = corporate(f, "XYZ", "split", ratio_from="4", ratio_to="1")
    [adjusted] = [e for _, e in decision.events if isinstance(e, ev.OrderAdjusted)]
    assert (adjusted.qty, adjusted.replace_qty) == (2, 0)  # the order works 2; of the amendment's 3, 0.75
    assert "0.75 dropped" in adjusted.reason and "nothing whole is left of it" in adjusted.reason
    assert f.order("o1").replace_pending == "r1"  # still the venue's to answer (it holds the amendment)
