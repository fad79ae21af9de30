"""Fees the venue never reports (IB's commission report reaches only the placing client and the
master client id): the pure planner reports them past the venue's wait and puts a cash shortfall
they explain down to them, never to a blind cash correction. States and snapshots in memory."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import ROUND_DOWN, Decimal as D
from uuid import UUID, uuid4

from hypothesis import given, settings
from hypothesis import strategies as st

from tradestate.adapters.brokers.base import VenueBalance, VenueFill, VenueOrder, VenuePosition, VenueSnapshot
from tradestate.domain import events as ev
from tradestate.domain.ids import account_stream_id, order_stream_id
from tradestate.domain.reconcile import plan_reconciliation
from tradestate.domain.state import TradingState

ACCOUNT, VENUE = "acct-1", "IB"
T0 = datetime(2026, 3, 2, 15, 0, tzinfo=timezone.utc)
WAIT = timedelta(minutes=2)
RATE = D("0.01")  # IBKR's largest stock commission: 1% of the trade value
CASH = D(1_000_000)


def apply(state: TradingState, stream: str, event: ev.Event) -> None:
    version = state.stream_versions.get(stream, 0) + 1
    state.apply(state.position + 1, stream, version, event.type_name(), event.to_payload(), T0)


def book(fills: list[tuple[int, D]]) -> TradingState:
    """Cash on record, then one order per fill (qty, price), each recorded with its fee pending."""
    state = TradingState()
    apply(state, account_stream_id(ACCOUNT), ev.CashBalanceRecorded(event_id=uuid4(), account=ACCOUNT, venue=VENUE,
                                                                    balance=CASH))
    for i, (qty, price) in enumerate(fills):
        coid, stream = f"o-{i}", order_stream_id(ACCOUNT, f"o-{i}")
        e = ev.OrderIntentRecorded(event_id=uuid4(), occurred_at=T0, account=ACCOUNT, client_order_id=coid,
                                   venue=VENUE, symbol="AAPL", side="buy", order_type="limit", qty=qty,
                                   limit_price=price)
        base = dict(account=ACCOUNT, client_order_id=coid, correlation_id=e.event_id)
        apply(state, stream, e)
        apply(state, stream, ev.OrderSubmitted(event_id=uuid4(), **base))
        apply(state, stream, ev.OrderAcknowledged(event_id=uuid4(), venue_order_id=f"P{i}", **base))
        apply(state, stream, ev.OrderFilled(event_id=uuid4(), exec_id=f"E{i}.01", qty=qty, price=price,
                                            fee_pending=True, venue_order_id=f"P{i}", **base))
    return state


def venue(fills: list[tuple[int, D]], cash: D, *, now: datetime) -> VenueSnapshot:
    """The venue: the orders filled, their executions without a commission report, ``cash``."""
    orders = [VenueOrder(f"P{i}", f"o-{i}", "AAPL", "buy", "limit", D(q), D(q), "filled", "Filled", limit_price=p,
                         avg_fill_price=p) for i, (q, p) in enumerate(fills)]
    executions = [VenueFill(f"E{i}.01", f"o-{i}", f"P{i}", "AAPL", "buy", D(q), p, occurred_at=T0, fee_pending=True)
                  for i, (q, p) in enumerate(fills)]
    total = sum((D(q) for q, _ in fills), D(0))
    return VenueSnapshot(broker="ib", venue=VENUE, account=ACCOUNT, taken_at=now,
                         positions=[VenuePosition("AAPL", total)], open_orders=[], recent_orders=orders,
                         fills=executions, balances=[VenueBalance("USD", cash)], fee_report_wait=WAIT,
                         max_fee_rate=RATE)


def plan(state: TradingState, snap: VenueSnapshot):
    return plan_reconciliation(state, snap, reconciliation_id=UUID(int=len(state.stream_versions)), now=snap.taken_at)


def types(p) -> list[str]:
    return [e.type_name() for _, e in p.events]


def kinds(p) -> list[str]:
    return sorted(d.kind for d in p.discrepancies)


fills_st = st.lists(st.tuples(st.integers(1, 500), st.decimals("1", "900", places=2)), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(fills=fills_st, shares=st.lists(st.decimals("0", "1", places=3), min_size=4, max_size=4))
def test_an_unreported_fee_never_becomes_a_blind_cash_correction(fills, shares):
    fees = [(D(q) * p * RATE * s).quantize(D("0.01"), rounding=ROUND_DOWN) for (q, p), s in zip(fills, shares)]
    state = book(fills)
    held = state.accounts[ACCOUNT].cash_at(VENUE)["USD"]
    later = T0 + WAIT
    p = plan(state, venue(fills, held - sum(fees, D(0)), now=later))
    assert "CashBalanceRecorded" not in types(p)
    missing = [d for d in p.discrepancies if d.kind == "fee_report_missing"]
    if sum(fees, D(0)) == 0:  # nothing to explain: every fee is still missing, nothing is booked
        assert types(p) == [] and len(missing) == len(fills)
    elif len(fills) == 1:  # one execution can only be the shortfall's: its fee, on the venue's evidence
        assert types(p) == ["FeeCharged"] and p.events[0][1].amount == fees[0] and missing == []
        for stream, event in p.events:
            apply(state, stream, event)
        assert state.accounts[ACCOUNT].cash_at(VENUE)["USD"] == held - fees[0]
        assert state.accounts[ACCOUNT].fees_pending == {}
        assert plan(state, venue(fills, held - fees[0], now=later)).events == []
    else:  # several cannot be told apart: named, waiting for the venue's reports or the operator
        assert types(p) == [] and p.status == "discrepancies"
        (cash,) = [d for d in p.discrepancies if d.kind == "cash_fees_unreported"]
        assert all(f"E{i}.01" in cash.detail for i in range(len(fills)))
        assert sorted(d.theirs for d in missing) == sorted(f"E{i}.01" for i in range(len(fills)))


def test_fees_whose_reports_may_still_come_are_waited_for():
    fills = [(100, D(50))]
    state = book(fills)
    held = state.accounts[ACCOUNT].cash_at(VENUE)["USD"]
    p = plan(state, venue(fills, held - D("1.25"), now=T0 + WAIT / 2))
    assert p.events == [] and p.discrepancies == [] and p.counts["cash_fees_pending"] == 1


def test_a_shortfall_larger_than_any_commission_is_not_put_down_to_one():
    fills = [(100, D(50))]  # 5,000 traded: at most 50 of commission
    state = book(fills)
    held = state.accounts[ACCOUNT].cash_at(VENUE)["USD"]
    p = plan(state, venue(fills, held - D(500), now=T0 + WAIT))
    assert types(p) == ["CashBalanceRecorded"]  # a cash drift of its own, and the fee still missing
    assert kinds(p) == ["cash_drift", "fee_report_missing"]


def test_venues_that_do_not_bound_the_wait_are_unchanged():
    fills = [(100, D(50))]
    state = book(fills)
    held = state.accounts[ACCOUNT].cash_at(VENUE)["USD"]
    snap = venue(fills, held - D(1), now=T0 + timedelta(days=3))
    p = plan(state, VenueSnapshot(**{**snap.__dict__, "fee_report_wait": None, "max_fee_rate": None}))
    assert types(p) == ["CashBalanceRecorded"] and kinds(p) == ["cash_drift"]


def test_a_missed_fill_long_past_its_wait_gets_its_fee_from_the_cash_in_the_same_plan():
    fills = [(100, D(50))]
    state = book([])  # the log has the cash, not the order's fill
    intent = ev.OrderIntentRecorded(event_id=uuid4(), occurred_at=T0, account=ACCOUNT, client_order_id="o-0",
                                    venue=VENUE, symbol="AAPL", side="buy", order_type="limit", qty=100,
                                    limit_price=D(50))
    apply(state, order_stream_id(ACCOUNT, "o-0"), intent)
    apply(state, order_stream_id(ACCOUNT, "o-0"), ev.OrderSubmitted(
        event_id=uuid4(), account=ACCOUNT, client_order_id="o-0", correlation_id=intent.event_id))
    p = plan(state, venue(fills, CASH - D(5000) - D("1.25"), now=T0 + timedelta(hours=3)))
    assert types(p) == ["OrderAcknowledged", "OrderFilled", "FeeCharged"], p.events
    for stream, event in p.events:
        apply(state, stream, event)
    assert state.accounts[ACCOUNT].cash_at(VENUE)["USD"] == CASH - D(5000) - D("1.25")
    assert state.orders[order_stream_id(ACCOUNT, "o-0")].fees == D("1.25")
