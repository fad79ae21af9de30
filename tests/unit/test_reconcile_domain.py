"""The pure reconciliation planner: states and venue snapshots built in memory, no I/O."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradestate.adapters.brokers.base import (
    Unknown,
    VenueBalance,
    VenueFill,
    VenueOrder,
    VenuePosition,
    VenueSnapshot,
)
from tradestate.domain import events as ev
from tradestate.domain.ids import account_stream_id, order_stream_id
from tradestate.domain.reconcile import (
    external_client_order_id,
    fact_id,
    inferred_exec_id,
    orders_to_look_up,
    plan_reconciliation,
)
from tradestate.domain.state import TradingState

from tests.support.reconcile import kinds, types

ACCOUNT = "acct-1"
VENUE = "SIM"
T0 = datetime(2026, 3, 2, 15, 0, tzinfo=timezone.utc)
RID = UUID("00000000-0000-4000-8000-000000000001")


# ------------------------------------------------------------------------------ builders


def apply(state: TradingState, stream: str, event: ev.Event) -> None:
    version = state.stream_versions.get(stream, 0) + 1
    state.apply(state.position + 1, stream, version, event.type_name(), event.to_payload(), T0)


def apply_plan(state: TradingState, plan) -> None:
    for stream, event in plan.events:
        apply(state, stream, event)


def intent(state: TradingState, coid: str, symbol="AAPL", side="buy", qty=10, *, submitted=True,
           ack: str | None = None, fills=(), venue=VENUE) -> ev.OrderIntentRecorded:
    stream = order_stream_id(ACCOUNT, coid)
    e = ev.OrderIntentRecorded(event_id=uuid4(), occurred_at=T0, account=ACCOUNT, client_order_id=coid,
                               venue=venue, symbol=symbol, side=side, order_type="limit", qty=qty,
                               limit_price=D(100))
    apply(state, stream, e)
    base = dict(account=ACCOUNT, client_order_id=coid, correlation_id=e.event_id)
    if submitted:
        apply(state, stream, ev.OrderSubmitted(event_id=uuid4(), **base))
    if ack:
        apply(state, stream, ev.OrderAcknowledged(event_id=uuid4(), venue_order_id=ack, **base))
    for exec_id, q, p in fills:
        apply(state, stream, ev.OrderFilled(event_id=uuid4(), exec_id=exec_id, qty=q, price=p, **base))
    return e


def cash(state: TradingState, amount) -> None:
    apply(state, account_stream_id(ACCOUNT), ev.CashBalanceRecorded(event_id=uuid4(), account=ACCOUNT,
                                                                     venue=VENUE, balance=amount))


def loss_limit(state: TradingState, value) -> None:
    apply(state, account_stream_id(ACCOUNT), ev.RiskLimitChanged(event_id=uuid4(), account=ACCOUNT,
                                                                  limit="max_daily_loss", value=value))


def breaches(state: TradingState) -> dict[str, set[str]]:
    return {day: stats.breaches for day, stats in state.accounts[ACCOUNT].daily.items() if stats.breaches}


def vfill(exec_id, coid, vid, qty, price, side="buy", symbol="AAPL"):
    return VenueFill(exec_id=exec_id, client_order_id=coid, venue_order_id=vid, symbol=symbol, side=side,
                     qty=D(qty), price=D(price), occurred_at=T0)


def vorder(vid, coid, status, qty=10, filled=0, side="buy", symbol="AAPL", avg=None, fills=(), order_type="limit"):
    return VenueOrder(venue_order_id=vid, client_order_id=coid, symbol=symbol, side=side, order_type=order_type,
                      qty=D(qty), filled_qty=D(filled), status=status, raw_status=status, limit_price=D(100),
                      avg_fill_price=None if avg is None else D(avg), submitted_at=T0, updated_at=T0,
                      fills=tuple(fills))


def snapshot(*, orders=(), fills=(), positions=(), balances=(), open_orders=None, unknown=()) -> VenueSnapshot:
    orders = list(orders)
    parts = {
        "positions": [VenuePosition(s, D(q)) for s, q in positions],
        "open_orders": [o for o in orders if o.is_open] if open_orders is None else open_orders,
        "recent_orders": orders,
        "fills": list(fills),
        "balances": [VenueBalance(c, D(a)) for c, a in balances],
    }
    for name in unknown:
        parts[name] = Unknown(f"{name} failed")
    return VenueSnapshot(broker="sim", venue=VENUE, account=ACCOUNT, taken_at=T0, **parts)


def plan(state, snap, lookups=None, rid=RID):
    return plan_reconciliation(state, snap, reconciliation_id=rid, now=T0 + timedelta(minutes=5), lookups=lookups)


def order(state, coid):
    return state.orders[order_stream_id(ACCOUNT, coid)]


# ------------------------------------------------------------------------------ scenarios


def test_missed_fill_carries_reconciliation_and_intent_ids():
    state = TradingState()
    e = intent(state, "o1", ack="V1")
    snap = snapshot(orders=[vorder("V1", "o1", "filled", filled=10)], fills=[vfill("X1", "o1", "V1", 10, "99.5")],
                    positions=[("AAPL", 10)])
    p = plan(state, snap)
    assert types(p) == ["OrderFilled"]
    (_, fill), = p.events
    assert fill.causation_id == RID and fill.correlation_id == e.event_id
    assert fill.event_id == fact_id("OrderFilled", ACCOUNT, "o1", "X1")
    assert p.status == "corrected" and kinds(p) == ["missed_fill"]
    apply_plan(state, p)
    assert order(state, "o1").status == "filled"
    assert plan(state, snap).events == []


def test_missed_fills_that_reach_the_daily_loss_limit_record_the_breach_once():
    state = TradingState()
    loss_limit(state, 50)
    intent(state, "o1", ack="V1", fills=[("X0", 10, D(100))])  # long 10 @ 100
    intent(state, "o2", side="sell", ack="V2")
    # the venue sold the 10 in three fills at a loss: -20 and a 2.5 fee, -25, -25: the day's net
    # P&L goes -22.5, -47.5, -72.5, so the third fill reaches the limit of 50
    fills = [vfill("S1", "o2", "V2", 4, "95", side="sell"), vfill("S2", "o2", "V2", 5, "95", side="sell"),
             vfill("S3", "o2", "V2", 1, "75", side="sell")]
    fills[0] = VenueFill(**{**fills[0].__dict__, "fee": D("2.5")})
    snap = snapshot(orders=[vorder("V1", "o1", "filled", filled=10, fills=()),
                            vorder("V2", "o2", "filled", filled=10, side="sell")],
                    fills=[vfill("X0", "o1", "V1", 10, "100")] + fills, positions=[])
    p = plan(state, snap)
    assert types(p) == ["OrderFilled"] * 3 + ["DailyLimitBreached"]
    breach, crossing = p.events[-1][1], p.events[2][1]
    assert breach.value == D("-72.5") and breach.threshold == 50 and breach.limit == "max_daily_loss"
    assert breach.causation_id == crossing.event_id and breach.trading_day == state.trading_day(T0)
    assert p.counts["daily_limits_breached"] == 1
    apply_plan(state, p)
    assert breaches(state) == {state.trading_day(T0): {"max_daily_loss"}}
    assert plan(state, snap, rid=UUID(int=2)).events == []


def test_missed_fills_within_the_daily_loss_limit_record_no_breach():
    state = TradingState()
    loss_limit(state, 100)
    intent(state, "o1", ack="V1", fills=[("X0", 10, D(100))])
    intent(state, "o2", side="sell", ack="V2")
    snap = snapshot(orders=[vorder("V2", "o2", "filled", filled=10, side="sell")],
                    fills=[vfill("S1", "o2", "V2", 10, "91", side="sell")], positions=[])
    p = plan(state, snap)
    assert types(p) == ["OrderFilled"]
    apply_plan(state, p)
    assert breaches(state) == {}


def test_plans_are_deterministic():
    def build():
        state = TradingState()
        intent(state, "o1", ack="V1")
        return state
    snap = snapshot(orders=[vorder("V1", "o1", "cancelled", filled=4), vorder("V2", None, "open", qty=1)],
                    fills=[vfill("X1", "o1", "V1", 4, 100)], positions=[("AAPL", 4)])
    assert plan(build(), snap).event_ids == plan(build(), snap).event_ids


def test_fill_already_recorded_is_not_counted_twice_even_listed_twice():
    state = TradingState()
    intent(state, "o1", ack="V1", fills=[("X1", 3, 100)])
    x2 = vfill("X2", "o1", "V1", 7, 100)
    snap = snapshot(orders=[vorder("V1", "o1", "filled", filled=10, fills=[x2])],
                    fills=[vfill("X1", "o1", "V1", 3, 100), x2], positions=[("AAPL", 10)])
    p = plan(state, snap)
    assert types(p) == ["OrderFilled"]
    apply_plan(state, p)
    assert order(state, "o1").filled_qty == 10


def test_fill_conflict_is_reported_not_applied():
    state = TradingState()
    intent(state, "o1", ack="V1", fills=[("X1", 3, 100)])
    snap = snapshot(orders=[vorder("V1", "o1", "partially_filled", filled=3)],
                    fills=[vfill("X1", "o1", "V1", 4, 100)], positions=[("AAPL", 3)])
    p = plan(state, snap)
    assert p.events == [] and kinds(p) == ["fill_conflict"] and p.status == "discrepancies"


def test_overfill_and_fill_on_terminal_become_discrepancy_records():
    state = TradingState()
    intent(state, "o1", qty=5, ack="V1")
    intent(state, "o2", ack="V2")
    apply(state, order_stream_id(ACCOUNT, "o2"), ev.OrderCancelled(event_id=uuid4(), account=ACCOUNT,
                                                                   client_order_id="o2"))
    snap = snapshot(orders=[vorder("V1", "o1", "open", qty=5, filled=0), vorder("V2", "o2", "cancelled")],
                    fills=[vfill("X1", "o1", "V1", 6, 100), vfill("X2", "o2", "V2", 1, 100)])
    p = plan(state, snap)
    recorded = sorted(e.kind for _, e in p.events if isinstance(e, ev.DiscrepancyRecorded))
    assert recorded == ["fill_on_terminal", "overfill"]
    apply_plan(state, p)
    assert order(state, "o1").filled_qty == 0 and order(state, "o2").filled_qty == 0
    again = plan(state, snap)
    assert [t for t in types(again) if t == "DiscrepancyRecorded"] == []


def test_a_venue_fill_whose_exec_id_is_booked_on_another_order_is_a_discrepancy_once():
    state = TradingState()
    intent(state, "o1", ack="V1", fills=[("X1", 4, 100)])  # booked live on o1
    intent(state, "o2", ack="V2")
    # the venue now lists execution X1 under o2 (an execution id is unique per venue)
    snap = snapshot(orders=[vorder("V1", "o1", "partially_filled", filled=4), vorder("V2", "o2", "open")],
                    fills=[vfill("X1", "o2", "V2", 4, 100)], positions=[("AAPL", 4)])
    p = plan(state, snap)
    assert types(p) == ["DiscrepancyRecorded"]
    (e,) = [e for _, e in p.events]
    assert (e.kind, e.client_order_id, e.exec_id) == ("duplicate_exec_id", "o2", "X1")
    assert "duplicate_exec_id" in kinds(p)
    apply_plan(state, p)
    assert order(state, "o2").filled_qty == 0 and state.position_of(ACCOUNT, VENUE, "AAPL").qty == 4
    assert [t for t in types(plan(state, snap)) if t == "DiscrepancyRecorded"] == []


def test_inferred_fill_when_the_window_cut_the_executions():
    state = TradingState()
    intent(state, "o1", ack="V1", fills=[("X1", 4, 100)])
    snap = snapshot(orders=[vorder("V1", "o1", "filled", filled=10, avg="101.2")], positions=[("AAPL", 10)])
    p = plan(state, snap)
    (_, fill), = p.events
    assert fill.exec_id == inferred_exec_id(ACCOUNT, "o1", D(10))
    assert fill.qty == 6 and fill.price == D(102)  # 10 @ 101.2 minus 4 @ 100
    apply_plan(state, p)
    assert order(state, "o1").status == "filled"
    assert plan(state, snap).events == []


def test_fill_gap_with_failed_fills_query_is_unknown_and_keeps_the_order_open():
    state = TradingState()
    intent(state, "o1", ack="V1")
    snap = snapshot(orders=[vorder("V1", "o1", "cancelled", filled=4, avg=100)], positions=[("AAPL", 4)],
                    unknown=["fills"])
    p = plan(state, snap)
    assert p.status == "unknown" and p.events == []
    assert order(state, "o1").is_open


@pytest.mark.parametrize("status, event_type", [("cancelled", "OrderCancelled"), ("rejected", "OrderRejected"),
                                                ("expired", "OrderExpired")])
def test_status_drift(status, event_type):
    state = TradingState()
    intent(state, "o1", ack="V1")
    p = plan(state, snapshot(orders=[vorder("V1", "o1", status)]))
    assert types(p) == [event_type] and kinds(p) == ["status_drift"]
    apply_plan(state, p)
    assert order(state, "o1").status == status


def test_venue_open_but_we_hold_it_cancelled_is_a_status_conflict_recorded_once():
    state = TradingState()
    intent(state, "o1", ack="V1")
    apply(state, order_stream_id(ACCOUNT, "o1"), ev.OrderCancelled(event_id=uuid4(), account=ACCOUNT,
                                                                   client_order_id="o1"))
    snap = snapshot(orders=[vorder("V1", "o1", "open")])
    p = plan(state, snap)
    assert types(p) == ["DiscrepancyRecorded"] and p.status == "discrepancies"
    apply_plan(state, p)
    again = plan(state, snap)
    assert again.events == [] and again.counts["known_discrepancies"] == 1


def test_unknown_venue_status_changes_nothing():
    state = TradingState()
    intent(state, "o1", ack="V1")
    p = plan(state, snapshot(orders=[vorder("V1", "o1", "unknown")]))
    assert p.events == [] and p.status == "unknown"


def test_external_order_imported_with_fills_and_terminal_event():
    state = TradingState()
    vo = vorder("V9", None, "cancelled", qty=5, filled=2, side="sell", symbol="MSFT")
    snap = snapshot(orders=[vo], fills=[vfill("X9", None, "V9", 2, 50, side="sell", symbol="MSFT")],
                    positions=[("MSFT", -2)])
    p = plan(state, snap)
    assert types(p) == ["OrderImported", "OrderFilled", "OrderCancelled"]
    imported = p.events[0][1]
    assert imported.client_order_id == external_client_order_id("V9")
    assert all(e.correlation_id == imported.event_id for _, e in p.events)
    apply_plan(state, p)
    o = order(state, external_client_order_id("V9"))
    assert o.external and o.status == "cancelled" and o.filled_qty == 2
    assert state.position_of(ACCOUNT, VENUE, "MSFT").qty == -2
    assert plan(state, snap).events == []


def test_unimportable_venue_order_is_reported_and_the_rest_goes_on():
    state = TradingState()
    intent(state, "o1", ack="V1")
    odd = vorder("V2", "x" * 80, "open", order_type="trailing_stop")
    p = plan(state, snapshot(orders=[odd, vorder("V1", "o1", "cancelled")]))
    assert "invalid_venue_data" in kinds(p)
    assert types(p) == ["OrderCancelled"]


def test_ambiguous_submit_needs_a_lookup_and_is_never_assumed_rejected():
    state = TradingState()
    intent(state, "o1")  # submitted, no ack
    intent(state, "o2", submitted=False)  # intent only
    snap = snapshot()
    assert orders_to_look_up(state, snap) == ["o1", "o2"]
    unknown = plan(state, snap)  # no lookup answers: unknown, nothing derived
    assert unknown.status == "unknown" and unknown.events == []
    p = plan(state, snap, lookups={"o1": None, "o2": None})
    assert types(p) == ["DiscrepancyRecorded"] and p.events[0][1].kind == "missing_at_venue"
    assert p.counts["unsent_orders"] == 1
    apply_plan(state, p)
    assert order(state, "o1").status == "submitted"
    found = vorder("V1", "o1", "filled", filled=10, fills=[vfill("X1", "o1", "V1", 10, 100)])
    resolved = plan(state, snapshot(positions=[("AAPL", 10)]), lookups={"o1": found, "o2": None})
    assert types(resolved) == ["OrderAcknowledged", "OrderFilled"]


@pytest.mark.parametrize("ours, theirs, kind", [(10, 7, "position_mismatch"), (0, -5, "position_mismatch"),
                                                (-5, -8, "position_mismatch"), (10, -4, "side_flip"),
                                                (6, 0, "position_mismatch")])
def test_position_corrections(ours, theirs, kind):
    state = TradingState()
    if ours:
        intent(state, "o1", side="buy" if ours > 0 else "sell", qty=abs(ours), ack="V1",
               fills=[("X1", abs(ours), 100)])
    orders = [vorder("V1", "o1", "filled", qty=abs(ours), filled=abs(ours),
                     side="buy" if ours > 0 else "sell")] if ours else []
    fills = [vfill("X1", "o1", "V1", abs(ours), 100, side="buy" if ours > 0 else "sell")] if ours else []
    snap = snapshot(orders=orders, fills=fills, positions=[("AAPL", theirs)] if theirs else [])
    p = plan(state, snap)
    assert types(p) == ["PositionCorrected"] and kinds(p) == [kind]
    apply_plan(state, p)
    assert state.position_of(ACCOUNT, VENUE, "AAPL").qty == theirs
    assert plan(state, snap).events == []


def test_position_after_planned_fills_needs_no_correction():
    state = TradingState()
    intent(state, "o1", ack="V1")
    snap = snapshot(orders=[vorder("V1", "o1", "filled", filled=10)], fills=[vfill("X1", "o1", "V1", 10, 100)],
                    positions=[("AAPL", 10)])
    assert types(plan(state, snap)) == ["OrderFilled"]


def test_cash_baseline_then_drift_after_planned_fills():
    state = TradingState()
    first = plan(state, snapshot(balances=[("USD", "1000")]))
    assert types(first) == ["CashBalanceRecorded"] and first.discrepancies == [] and first.status == "corrected"
    apply_plan(state, first)
    intent(state, "o1", qty=2, ack="V1")
    snap = snapshot(orders=[vorder("V1", "o1", "filled", qty=2, filled=2)], fills=[vfill("X1", "o1", "V1", 2, 100)],
                    positions=[("AAPL", 2)], balances=[("USD", "795")])
    p = plan(state, snap)
    assert types(p) == ["OrderFilled", "CashBalanceRecorded"]
    recorded = p.events[1][1]
    assert recorded.expected == D(800) and recorded.balance == D(795)
    apply_plan(state, p)
    assert state.accounts[ACCOUNT].cash["USD"] == D(795)
    assert plan(state, snap).events == []


@pytest.mark.parametrize("part", ["positions", "open_orders", "recent_orders", "fills"])
def test_unknown_part_derives_nothing_and_never_flattens(part):
    """We hold 10; the venue's position list is empty. Only a complete answer may flatten us:
    with positions, orders or fills unknown the difference might be a fill we cannot see."""
    state = TradingState()
    cash(state, 1000)
    intent(state, "o1", ack="V1", fills=[("X1", 10, 100)])
    snap = snapshot(orders=[vorder("V1", "o1", "filled", filled=10)], fills=[vfill("X1", "o1", "V1", 10, 100)],
                    positions=[], balances=[("USD", "5")], unknown=[part])
    p = plan(state, snap)
    assert p.status == "unknown"
    assert "PositionCorrected" not in types(p)
    if part != "positions":  # the cash check needs balances, orders and fills, not positions
        assert "CashBalanceRecorded" not in types(p)
    apply_plan(state, p)
    assert state.position_of(ACCOUNT, VENUE, "AAPL").qty == 10


def test_unknown_balances_correct_no_cash_but_positions_still_reconcile():
    state = TradingState()
    cash(state, 1000)
    intent(state, "o1", ack="V1", fills=[("X1", 10, 100)])
    snap = snapshot(orders=[vorder("V1", "o1", "filled", filled=10)], fills=[vfill("X1", "o1", "V1", 10, 100)],
                    positions=[("AAPL", 8)], unknown=["balances"])
    p = plan(state, snap)
    assert p.status == "unknown" and types(p) == ["PositionCorrected"]


# ------------------------------------------------------------------------- properties

SYMBOLS = ["AAPL", "MSFT"]


@st.composite
def worlds(draw):
    """A venue's orders and fills, what our log knows of them, and which queries fail."""
    orders = []
    for n in range(draw(st.integers(0, 5))):
        qty = draw(st.integers(1, 20))
        pieces = draw(st.lists(st.integers(1, 5), max_size=4))
        fills, total = [], 0
        for i, piece in enumerate(pieces):
            if total + piece > qty:
                break
            total += piece
            fills.append((f"X{n}-{i}", piece, draw(st.integers(90, 110))))
        if total == qty:
            status = "filled"
        else:
            status = draw(st.sampled_from(["open", "cancelled", "expired"] + (["rejected"] if total == 0 else [])))
        orders.append({
            "coid": f"o{n}", "vid": f"V{n}", "symbol": draw(st.sampled_from(SYMBOLS)),
            "side": draw(st.sampled_from(["buy", "sell"])), "qty": qty, "fills": fills, "status": status,
            "ours": draw(st.booleans()), "known_fills": draw(st.integers(0, len(fills))), "acked": draw(st.booleans()),
        })
    extra = {s: draw(st.integers(-3, 3)) for s in SYMBOLS}  # position drift no fill explains
    ghosts = draw(st.integers(0, 2))  # orders we submitted that the venue never saw
    unknown = draw(st.lists(st.sampled_from(["positions", "open_orders", "recent_orders", "fills", "balances"]),
                            unique=True, max_size=2))
    return orders, extra, ghosts, unknown, draw(st.integers(0, 500)), draw(st.none() | st.integers(0, 60))


def build_world(world):
    orders, extra, ghosts, unknown, cash_drift, daily_loss_limit = world
    state = TradingState()
    cash(state, 100_000)
    if daily_loss_limit is not None:
        loss_limit(state, daily_loss_limit)
    venue_orders, venue_fills = [], []
    position = {s: D(0) for s in SYMBOLS}
    venue_cash = D(100_000)
    for o in orders:
        sign = 1 if o["side"] == "buy" else -1
        fills = [vfill(x, o["coid"], o["vid"], q, p, side=o["side"], symbol=o["symbol"]) for x, q, p in o["fills"]]
        venue_fills += fills
        for f in fills:
            position[o["symbol"]] += sign * f.qty
            venue_cash -= sign * f.qty * f.price
        filled = sum((f.qty for f in fills), D(0))
        venue_orders.append(vorder(o["vid"], o["coid"], o["status"], qty=o["qty"], filled=filled, side=o["side"],
                                   symbol=o["symbol"]))
        if o["ours"]:
            intent(state, o["coid"], o["symbol"], o["side"], o["qty"], ack=o["vid"] if o["acked"] else None,
                   fills=o["fills"][: o["known_fills"]])
    for g in range(ghosts):
        intent(state, f"ghost{g}")
    positions = [(s, q + extra[s]) for s, q in position.items() if q + extra[s]]
    snap = snapshot(orders=venue_orders, fills=venue_fills, positions=positions,
                    balances=[("USD", venue_cash + cash_drift)], unknown=unknown)
    lookups = {f"ghost{g}": None for g in range(ghosts)}
    return state, snap, lookups


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_property_reconciling_twice_adds_nothing(world):
    state, snap, lookups = build_world(world)
    first = plan(state, snap, lookups)
    apply_plan(state, first)
    second = plan(state, snap, lookups, rid=UUID(int=2))
    assert second.events == [], [e.type_name() for _, e in second.events]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_property_positions_and_fills_match_the_venue_when_every_query_answered(world):
    orders, extra, ghosts, _unknown, cash_drift, daily_loss_limit = world
    state, snap, lookups = build_world((orders, extra, ghosts, [], cash_drift, daily_loss_limit))
    apply_plan(state, plan(state, snap, lookups))
    for p in snap.positions:
        assert state.position_of(ACCOUNT, VENUE, p.symbol).qty == p.qty
    venue_symbols = {p.symbol for p in snap.positions}
    for (account, venue, symbol), held in state.positions.items():
        if symbol not in venue_symbols:
            assert held.qty == 0
    assert state.accounts[ACCOUNT].cash["USD"] == snap.balances[0].cash
    for vo in snap.recent_orders:  # fills never double counted, none lost
        ours = state.orders.get(order_stream_id(ACCOUNT, vo.client_order_id))
        assert ours is not None
        counted = sum((q for x, (q, _p, _pos) in ours.executions.items() if not x.startswith("!")), D(0))
        assert counted == ours.filled_qty == vo.filled_qty


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_property_a_daily_loss_reached_through_reconciled_fills_is_on_record(world):
    state, snap, lookups = build_world(world)
    limit = world[-1]
    p = plan(state, snap, lookups)
    apply_plan(state, p)
    fill_days = {state.trading_day(e.occurred_at) for _, e in p.events if isinstance(e, ev.OrderFilled)}
    for day, stats in state.accounts[ACCOUNT].daily.items():
        reached = limit is not None and -stats.net_pnl >= limit
        if day in fill_days and reached:
            assert "max_daily_loss" in stats.breaches, (day, stats.net_pnl, limit)
        if "max_daily_loss" in stats.breaches:  # only a fill that reached the limit records it
            assert day in fill_days and limit is not None
    assert sum(1 for _, e in p.events if isinstance(e, ev.DailyLimitBreached)) <= len(fill_days)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_property_no_flattening_or_correction_from_an_unknown_part(world):
    state, snap, lookups = build_world(world)
    before = {k: p.qty for k, p in state.positions.items()}
    planned_fills: dict[str, D] = {}
    p = plan(state, snap, lookups)
    if not world[3]:
        return
    assert p.status == "unknown"
    if not set(world[3]) - {"balances"}:
        return  # positions, orders and fills all answered: corrections from them are legitimate
    assert "PositionCorrected" not in [e.type_name() for _, e in p.events]
    for _, e in p.events:
        if isinstance(e, ev.OrderFilled):
            o = state.orders.get(order_stream_id(ACCOUNT, e.client_order_id))
            symbol = o.symbol if o else next(x.symbol for _, x in p.events
                                             if isinstance(x, ev.OrderImported) and x.client_order_id == e.client_order_id)
            side = o.side if o else next(x.side.value for _, x in p.events
                                         if isinstance(x, ev.OrderImported) and x.client_order_id == e.client_order_id)
            planned_fills[symbol] = planned_fills.get(symbol, D(0)) + (e.qty if side == "buy" else -e.qty)
    apply_plan(state, p)
    for symbol in SYMBOLS:  # positions moved by recorded fills only
        key = (ACCOUNT, VENUE, symbol)
        held = state.positions.get(key)
        assert (held.qty if held else D(0)) == before.get(key, D(0)) + planned_fills.get(symbol, D(0))


# ------------------------------------------------------------- venue corrections, fees, duplicate refs


def test_a_venue_correction_plans_fill_corrected_not_a_second_fill():
    state = TradingState()
    cash(state, "10000")
    intent(state, "o1", qty=100, ack="V1", fills=[("X.01", 40, 100)])
    corrected = replace(vfill("X.02", "o1", "V1", 30, "99.5"), corrects=("X.01",))
    snap = snapshot(orders=[vorder("V1", "o1", "partially_filled", qty=100, filled=30)], fills=[corrected],
                    positions=[("AAPL", 30)], balances=[("USD", D(10000) - D(40) * 100 + D(40) * 100 - D(30) * D("99.5"))])
    p = plan(state, snap)
    assert [type(e).__name__ for _, e in p.events] == ["FillCorrected"]
    (_, e), = p.events
    assert (e.corrected_exec_id, e.exec_id, e.qty, e.price, e.previous_qty, e.previous_price) == (
        "X.01", "X.02", D(30), D("99.5"), D(40), D(100))
    assert {d.kind for d in p.discrepancies} == {"fill_corrected"}  # no position or cash correction
    apply_plan(state, p)
    o = state.orders[order_stream_id(ACCOUNT, "o1")]
    assert (o.filled_qty, set(o.executions)) == (D(30), {"X.02"})
    assert plan(state, snap).events == []


def test_a_price_correction_on_a_filled_order_is_no_fill_on_terminal():
    state = TradingState()
    intent(state, "o1", qty=10, ack="V1", fills=[("X.01", 10, 100)])
    corrected = replace(vfill("X.02", "o1", "V1", 10, "99"), corrects=("X.01",))
    p = plan(state, snapshot(orders=[vorder("V1", "o1", "filled", qty=10, filled=10)], fills=[corrected],
                             positions=[("AAPL", 10)]))
    assert [type(e).__name__ for _, e in p.events] == ["FillCorrected"]
    assert "fill_on_terminal" not in {d.kind for d in p.discrepancies}
    apply_plan(state, p)
    assert state.orders[order_stream_id(ACCOUNT, "o1")].avg_fill_price == D(99)


def test_a_correction_past_the_order_quantity_is_a_discrepancy():
    state = TradingState()
    intent(state, "o1", qty=50, ack="V1", fills=[("X.01", 40, 100)])
    corrected = replace(vfill("X.02", "o1", "V1", 60, 100), corrects=("X.01",))
    p = plan(state, snapshot(orders=[vorder("V1", "o1", "partially_filled", qty=50, filled=40)], fills=[corrected],
                             positions=[("AAPL", 40)]))
    assert [(type(e).__name__, getattr(e, "kind", None)) for _, e in p.events] == [("DiscrepancyRecorded", "overfill")]


def test_a_pending_fee_is_charged_once_the_venue_reports_it():
    state = TradingState()
    cash(state, "10000")
    intent(state, "o1", qty=10, ack="V1")
    pending = replace(vfill("X.01", "o1", "V1", 10, 100), fee_pending=True)
    venue_order = vorder("V1", "o1", "filled", qty=10, filled=10)
    p = plan(state, snapshot(orders=[venue_order], fills=[pending], positions=[("AAPL", 10)], balances=[("USD", 9000)]))
    (_, filled), = p.events
    assert filled.fee_pending and filled.fee == 0
    apply_plan(state, p)
    assert state.accounts[ACCOUNT].fees_pending == {"X.01": order_stream_id(ACCOUNT, "o1")}
    reported = replace(pending, fee_pending=False, fee=D("1.5"))
    snap = snapshot(orders=[venue_order], fills=[reported], positions=[("AAPL", 10)], balances=[("USD", "8998.5")])
    p = plan(state, snap)
    assert [(s, type(e).__name__) for s, e in p.events] == [(order_stream_id(ACCOUNT, "o1"), "FeeCharged")]
    assert not p.discrepancies  # no cash drift: the fee explains it
    apply_plan(state, p)
    assert state.orders[order_stream_id(ACCOUNT, "o1")].fees == D("1.5")
    assert state.accounts[ACCOUNT].cash["USD"] == D("8998.5")
    assert plan(state, snap).events == []


def test_two_venue_orders_for_one_client_order_id_are_reported_and_the_second_kept_apart():
    state = TradingState()
    intent(state, "o1", qty=10, ack="V1")
    snap = snapshot(orders=[vorder("V1", "o1", "open", qty=10),
                            vorder("V2", "o1", "filled", qty=10, filled=10, avg=99)],
                    fills=[vfill("E2", "o1", "V2", 10, 99)], positions=[("AAPL", 10)])
    p = plan(state, snap)
    (dup,) = [d for d in p.discrepancies if d.kind == "duplicate_order_ref"]
    assert "V1" in dup.detail and "V2" in dup.detail and dup.resolution == "pending"
    external = order_stream_id(ACCOUNT, external_client_order_id("V2"))
    assert [(s == external, type(e).__name__) for s, e in p.events][:2] == [(True, "OrderImported"), (True, "OrderFilled")]
    assert all(s != order_stream_id(ACCOUNT, "o1") for s, _ in p.events)
    apply_plan(state, p)
    assert state.orders[order_stream_id(ACCOUNT, "o1")].status == "acknowledged"
    assert state.position_of(ACCOUNT, VENUE, "AAPL").qty == D(10)
    again = plan(state, snap)
    assert again.events == [] and [d.kind for d in again.discrepancies] == ["duplicate_order_ref"]
