"""The pure plan on what links venue orders (cancel/replace chains, bracket/OCO legs, amount
orders) and on when a first cash balance may be taken. No I/O: states and snapshots in memory."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from decimal import Decimal as D
from uuid import uuid4

from tests.unit.test_reconcile_domain import (
    ACCOUNT,
    T0,
    apply,
    apply_plan,
    intent,
    kinds,
    order,
    plan,
    snapshot,
    types,
    vfill,
    vorder,
)
from tradestate.domain import events as ev
from tradestate.domain.venue import Unknown, VenueFee
from tradestate.domain.ids import order_stream_id
from tradestate.domain.reconcile import held_leg_ended
from tradestate.domain.state import TradingState


def link(o, **fields):
    raw = {**o.raw, **{k: v for k, v in fields.items() if k in ("replaced_by", "order_class")}}
    return replace(o, raw=raw, **{k: v for k, v in fields.items() if k not in ("replaced_by", "order_class")})


def test_a_replace_chain_is_one_order_of_ours_replaced_with_every_fill():
    state = TradingState()
    e = intent(state, "o1", ack="V1")
    old = link(vorder("V1", "o1", "replaced", filled=3, avg="100"), replaced_by="V2")
    new = link(vorder("V2", "alpaca-made-id", "partially_filled", qty=10, filled=2, avg="101"), replaces="V1")
    snap = snapshot(orders=[old, new], fills=[vfill("A", "o1", "V1", 3, 100), vfill("B", "alpaca-made-id", "V2", 2, 101)],
                    positions=[("AAPL", 5)])
    p = plan(state, snap)
    assert types(p) == ["OrderFilled", "OrderReplaced", "OrderFilled"]
    replaced = next(x for _, x in p.events if isinstance(x, ev.OrderReplaced))
    assert replaced.qty == D(13) and replaced.venue_order_id == "V2" and replaced.correlation_id == e.event_id
    assert kinds(p) == ["missed_fill", "missed_fill", "missed_replace"]
    assert all(stream == order_stream_id(ACCOUNT, "o1") for stream, _ in p.events)
    apply_plan(state, p)
    o = order(state, "o1")
    assert (o.status, o.qty, o.filled_qty, o.venue_order_id) == ("partially_filled", D(13), D(5), "V2")
    assert plan(state, snap).events == []  # planned again on the same facts: nothing


def test_a_replaced_order_whose_replacement_is_not_reported_stays_open_and_says_so():
    state = TradingState()
    intent(state, "o1", ack="V1")
    p = plan(state, snapshot(orders=[link(vorder("V1", "o1", "replaced"), replaced_by="V9")]))
    assert types(p) == [] and kinds(p) == ["replacement_unseen"]
    assert order(state, "o1").is_open


def test_a_stranger_chain_is_imported_order_by_order():
    state = TradingState()
    new = link(vorder("V2", "theirs-2", "open"), replaces="V1")
    p = plan(state, snapshot(orders=[link(vorder("V1", "theirs-1", "replaced"), replaced_by="V2"), new]))
    assert types(p) == ["OrderImported", "OrderCancelled", "OrderImported"]
    assert kinds(p) == ["unknown_order", "unknown_order"]


def test_held_leg_ended_by_its_group():
    parent = vorder("P", "b1", "filled", filled=10)
    tp = link(vorder("TP", "l1", "filled", side="sell", filled=10), parent_venue_order_id="P", order_class="bracket")
    sl = link(vorder("SL", "l2", "pending", side="sell"), parent_venue_order_id="P", order_class="bracket")
    sl = replace(sl, raw_status="held")
    orders = {o.venue_order_id: o for o in (parent, tp, sl)}
    assert "other exit leg TP filled" in held_leg_ended(sl, orders)
    assert held_leg_ended(sl, {**orders, "TP": replace(tp, status="open")}) is None  # the take-profit works
    assert "parent order P is cancelled" in held_leg_ended(sl, {"P": replace(parent, status="cancelled"), "SL": sl})
    oco_child = replace(link(sl, order_class="oco"), parent_venue_order_id="P")
    assert "OCO" in held_leg_ended(oco_child, {"P": parent, "SL": oco_child})
    assert held_leg_ended(replace(sl, raw_status="new", status="open"), orders) is None  # only held legs


def test_legs_of_our_order_are_linked_not_external_and_a_stale_held_leg_is_cancelled():
    state = TradingState()
    e = intent(state, "b1", ack="P", fills=[("E0", D(10), D(100))])
    parent = vorder("P", "b1", "filled", filled=10, avg="100")
    tp = link(vorder("TP", "l1", "filled", side="sell", filled=10, avg="110"), parent_venue_order_id="P",
              order_class="bracket")
    sl = replace(link(vorder("SL", "l2", "pending", side="sell"), parent_venue_order_id="P", order_class="bracket"),
                 raw_status="held")
    p = plan(state, snapshot(orders=[parent, tp, sl], fills=[vfill("E1", "l1", "TP", 10, 110, side="sell")]))
    imports = [x for _, x in p.events if isinstance(x, ev.OrderImported)]
    assert [i.parent_client_order_id for i in imports] == ["b1", "b1"]
    assert {i.correlation_id for i in imports} == {e.event_id}
    assert "unknown_order" not in kinds(p) and p.counts["legs_linked"] == 2
    assert p.counts["leg_cancels_inferred"] == 1
    apply_plan(state, p)
    assert order(state, "l1").status == "filled" and order(state, "l2").status == "cancelled"
    assert not order(state, "l1").external and not order(state, "l2").external


def test_an_amount_order_takes_the_quantity_it_filled():
    state = TradingState()
    intent(state, "n1", ack="N", qty=D("0.25"))
    filled = replace(vorder("N", "n1", "filled", qty="0.267201368", filled="0.267201368", order_type="market"),
                     notional=D(50))
    p = plan(state, snapshot(orders=[filled], fills=[vfill("F", "n1", "N", "0.267201368", "187.125")],
                             positions=[("AAPL", "0.267201368")]))
    assert types(p) == ["OrderReplaced", "OrderFilled"] and "overfill" not in kinds(p)
    apply_plan(state, p)
    assert order(state, "n1").status == "filled" and order(state, "n1").qty == D("0.267201368")
    # an amount order of a stranger, not filled yet: nothing to import until it has a quantity
    unfilled = replace(vorder("S", "theirs", "open", qty=0, order_type="market"), notional=D(10))
    p = plan(TradingState(), snapshot(orders=[unfilled]))
    assert types(p) == [] and p.counts["notional_orders_unfilled"] == 1


def test_no_first_cash_balance_from_a_partial_answer():
    state = TradingState()
    intent(state, "o1", ack="V1")
    snap = snapshot(orders=[vorder("V1", "o1", "filled", filled=10, avg="100")], balances=[("USD", "99000")],
                    positions=[("AAPL", 10)], unknown=("fills",))
    p = plan(state, snap)
    assert "CashBalanceRecorded" not in types(p) and p.counts["cash_baselines_deferred"] == 1
    apply_plan(state, p)
    full = snapshot(orders=[vorder("V1", "o1", "filled", filled=10, avg="100")], balances=[("USD", "99000")],
                    fills=[vfill("E1", "o1", "V1", 10, 100)], positions=[("AAPL", 10)])
    p = plan(state, full)
    assert kinds(p) == ["missed_fill"] and types(p) == ["OrderFilled", "CashBalanceRecorded"]
    apply_plan(state, p)
    assert plan(state, full).events == [] and state.accounts[ACCOUNT].cash["USD"] == D(99000)


def test_order_imported_v1_payload_loads_as_an_external_import():
    payload = ev.OrderImported(
        event_id=uuid4(), occurred_at=datetime(2025, 1, 2, tzinfo=timezone.utc), account=ACCOUNT,
        client_order_id="ext-1", venue="ALPACA", symbol="AAPL", side="buy", order_type="limit", qty=1,
        limit_price=D(1), venue_order_id="V", venue_status="new").to_payload()
    assert payload[ev.SCHEMA_KEY] == 2 and payload["parent_client_order_id"] is None
    del payload["parent_client_order_id"]
    payload[ev.SCHEMA_KEY] = 1  # as version 1 stored it
    decoded = ev.decode("OrderImported", payload)
    assert decoded.parent_client_order_id is None
    state = TradingState()
    apply(state, order_stream_id(ACCOUNT, "ext-1"), decoded)
    state2 = TradingState()
    state2.apply(1, order_stream_id(ACCOUNT, "ext-1"), 1, "OrderImported", payload, T0)
    assert state2.orders[order_stream_id(ACCOUNT, "ext-1")].external is True


def test_crypto_fees_unposted_are_expected_across_a_weekend_and_recorded_once_posted():
    """Crypto trades 24/7: Saturday late and Sunday early fills; the venue posted Saturday's fee
    (in BTC) only. The venue's position is short of the fills by both fees until then."""
    sat, sun = datetime(2026, 3, 7, 23, 50, tzinfo=timezone.utc), datetime(2026, 3, 8, 0, 10, tzinfo=timezone.utc)
    state = TradingState()
    intent(state, "c1", symbol="BTC/USD", qty=D(1), ack="V1")
    fills = [replace(vfill("E1", "c1", "V1", "0.4", 40000, symbol="BTC/USD"), occurred_at=sat),
             replace(vfill("E2", "c1", "V1", "0.6", 40000, symbol="BTC/USD"), occurred_at=sun)]
    orders = [replace(vorder("V1", "c1", "filled", qty=1, filled=1, symbol="BTC/USD", avg=40000), updated_at=sun)]
    saturday = VenueFee("CFEE-sat", D("0.001"), "BTC", "BTC/USD", in_kind=True,
                        occurred_at=datetime(2026, 3, 7, tzinfo=timezone.utc))

    def snap(fees, venue_qty):
        return replace(snapshot(orders=orders, fills=fills, positions=[("BTC/USD", venue_qty)]),
                       fees=fees, unposted_fee_rates={"BTC/USD": D("0.0025")})

    p = plan(state, snap([], "0.9975"))  # both fees taken, none posted: within 25 bps of 1 BTC
    assert types(p) == ["OrderFilled", "OrderFilled"] and p.counts["positions_fees_unposted"] == 1
    apply_plan(state, p)
    p = plan(state, snap([saturday], "0.9975"))  # Saturday's posted; Sunday's (0.6 BTC) still expected
    assert types(p) == ["FeeCharged"] and p.counts["positions_fees_unposted"] == 1
    apply_plan(state, p)
    assert state.position_of(ACCOUNT, "SIM", "BTC/USD").qty == D("0.999")
    assert plan(state, snap([saturday], "0.9975")).events == []  # posted once, idempotent by its id
    # a drift larger than Sunday's possible fee is a real mismatch
    p = plan(state, snap([saturday], "0.99"))
    assert kinds(p) == ["position_mismatch"] and types(p) == ["PositionCorrected"]
    # fees unknown: nothing is expected, nothing recorded, the run says what it could not see
    p = plan(state, replace(snap([saturday], "0.999"), fees=Unknown("CFEE query failed")))
    assert "fees: CFEE query failed" in p.unknown and "FeeCharged" not in types(p)


def test_a_stranger_chain_keeps_every_order_and_fill_the_replaced_one_finished():
    state = TradingState()
    old = link(vorder("V1", "theirs-1", "replaced", filled=2, avg="100"), replaced_by="V2")
    new = link(vorder("V2", "theirs-2", "open"), replaces="V1")
    p = plan(state, snapshot(orders=[old, new], fills=[vfill("S1", "theirs-1", "V1", 2, 100)], positions=[("AAPL", 2)]))
    assert types(p) == ["OrderImported", "OrderFilled", "OrderCancelled", "OrderImported"]
    apply_plan(state, p)
    assert order(state, "theirs-1").status == "cancelled"  # 2 of 10 filled, then replaced: finished
    assert order(state, "theirs-1").filled_qty == 2
    assert order(state, "theirs-2").is_open and state.position_of(ACCOUNT, "SIM", "AAPL").qty == 2
