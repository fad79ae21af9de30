"""The decisions of domain/orders.py and the pre-trade checks of domain/risk.py, on folded state.

A small harness decides against a ``TradingState`` and folds the decided events back (through
their stored JSON form), exactly as the client does, but without a database.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import uuid4
from zoneinfo import ZoneInfo

import orjson
import pytest

from tradestate.domain import events as ev
from tradestate.domain import orders as rules
from tradestate.domain import risk
from tradestate.domain.errors import IdempotencyConflict, InvalidInput, InvalidTransition, TradestateError, UnknownOrder
from tradestate.domain.ids import account_stream_id, order_stream_id
from tradestate.domain.state import TradingState

NY = ZoneInfo("America/New_York")
T0 = datetime(2024, 3, 5, 15, 0, tzinfo=timezone.utc)  # 10:00 New York
D = Decimal


class Desk:
    """Decide, then fold what was decided, at increasing positions."""

    def __init__(self) -> None:
        self.state = TradingState("America/New_York")
        self.pos = 0
        self.versions: Counter[str] = Counter()
        self.now = T0

    def commit(self, decision: rules.Decision) -> list[int]:
        if isinstance(decision, rules.AlreadyRecorded):
            return [decision.position]
        positions = []
        for stream, event in decision.events:
            self.pos += 1
            self.versions[stream] += 1
            data = orjson.loads(orjson.dumps(event.to_payload()))
            self.state.apply(self.pos, stream, self.versions[stream], event.type_name(), data, self.now)
            positions.append(self.pos)
        return positions

    # builders -----------------------------------------------------------------------------
    def make_intent(self, coid: str, side: str = "buy", qty: Any = "10", *, account: str = "acct",
                    symbol: str = "AAPL", venue: str = "sim", order_type: str = "market",
                    at: datetime | None = None, **extra: Any) -> ev.OrderIntentRecorded:
        return ev.OrderIntentRecorded(event_id=uuid4(), occurred_at=at or self.now, account=account,
                                      client_order_id=coid, venue=venue, symbol=symbol, side=side,
                                      order_type=order_type, qty=qty, **extra)

    def make(self, cls: type[ev.OrderEvent], coid: str, *, account: str = "acct",
             at: datetime | None = None, **fields: Any) -> Any:
        return cls(event_id=uuid4(), occurred_at=at or self.now, account=account, client_order_id=coid, **fields)

    # decide + commit ---------------------------------------------------------------------------
    def intent(self, coid: str, side: str = "buy", qty: Any = "10", **kw: Any) -> rules.Decision:
        decision = rules.decide_intent(self.state, self.make_intent(coid, side, qty, **kw), self.now)
        self.commit(decision)
        return decision

    def fill(self, coid: str, exec_id: str, qty: Any, price: Any, *, account: str = "acct",
             at: datetime | None = None, **fields: Any) -> rules.Decision:
        e = self.make(ev.OrderFilled, coid, account=account, at=at, exec_id=exec_id, qty=qty, price=price, **fields)
        decision = rules.decide_fill(self.state, e, self.now)
        self.commit(decision)
        return decision

    def account_event(self, cls: type[ev.AccountEvent], account: str = "acct", **fields: Any) -> None:
        self.commit(rules.Append([(account_stream_id(account), cls(event_id=uuid4(), account=account, **fields))]))

    def limit(self, name: str, value: Any, *, account: str = "acct", symbol: str | None = None) -> None:
        self.account_event(ev.RiskLimitChanged, account, limit=name, value=value, symbol=symbol)

    def check(self, coid: str = "new", side: str = "buy", qty: Any = "10", **kw: Any) -> risk.RiskDecision:
        return risk.check_intent(self.state, self.make_intent(coid, side, qty, **kw), self.now)

    def order(self, coid: str, account: str = "acct"):
        return self.state.orders[order_stream_id(account, coid)]

    def position(self, symbol: str = "AAPL", account: str = "acct", venue: str = "sim"):
        return self.state.position_of(account, venue, symbol)


@pytest.fixture
def desk() -> Desk:
    return Desk()


def types_of(decision: rules.Decision) -> list[str]:
    assert isinstance(decision, rules.Append), decision
    return [e.type_name() for _, e in decision.events]


# ------------------------------------------------------------------------------------ risk codes


def test_reason_codes_are_stable():
    assert (risk.KILL_SWITCH, risk.CIRCUIT_BREAKER, risk.MAX_ORDER_QTY, risk.MAX_ORDER_NOTIONAL,
            risk.NO_PRICE_FOR_NOTIONAL, risk.MAX_POSITION_QTY, risk.MAX_OPEN_ORDERS,
            risk.MAX_DAILY_TRADES, risk.MAX_DAILY_LOSS) == (
        "kill_switch", "circuit_breaker", "max_order_qty", "max_order_notional", "no_price_for_notional",
        "max_position_qty", "max_open_orders", "max_daily_trades", "max_daily_loss")


def test_a_clean_account_passes(desk: Desk):
    d = desk.check(qty="1000000")
    assert d.passed and d.reasons == [] and d.detail == ""
    assert d.trading_day == "2024-03-05"
    assert d.notional is None


def test_kill_switch_refuses(desk: Desk):
    desk.account_event(ev.KillSwitchEngaged, reason="ops")
    d = desk.check()
    assert d.reasons == ["kill_switch"]
    assert "ops" in d.detail
    desk.account_event(ev.KillSwitchReleased)
    assert desk.check().passed


def test_kill_switch_is_per_account(desk: Desk):
    desk.account_event(ev.KillSwitchEngaged, account="other", reason="ops")
    assert desk.check().passed


def test_circuit_breaker_refuses_until_its_time(desk: Desk):
    desk.account_event(ev.CircuitBreakerTripped, reason="drawdown", until=T0 + timedelta(minutes=30))
    assert desk.check().reasons == ["circuit_breaker"]
    desk.now = T0 + timedelta(minutes=29, seconds=59)
    assert desk.check().reasons == ["circuit_breaker"]
    desk.now = T0 + timedelta(minutes=30)
    assert desk.check().passed


def test_circuit_breaker_without_until_refuses_until_reset(desk: Desk):
    desk.account_event(ev.CircuitBreakerTripped, reason="drawdown")
    desk.now = T0 + timedelta(days=3)
    assert desk.check().reasons == ["circuit_breaker"]
    desk.account_event(ev.CircuitBreakerReset)
    assert desk.check().passed


def test_max_order_qty(desk: Desk):
    desk.limit("max_order_qty", "10")
    assert desk.check(qty="10").passed
    d = desk.check(qty="10.000000000001")
    assert d.reasons == ["max_order_qty"]
    assert desk.check(side="sell", qty="11").reasons == ["max_order_qty"]


def test_max_order_notional(desk: Desk):
    desk.limit("max_order_notional", "1000")
    ok = desk.check(qty="10", order_type="limit", limit_price="100")
    assert ok.passed and ok.notional == D(1000)
    d = desk.check(qty="10", order_type="limit", limit_price="100.01")
    assert d.reasons == ["max_order_notional"]
    assert d.notional == D("1000.10")
    # stop orders are priced at their stop, market orders at their reference price
    assert desk.check(qty="10", order_type="stop", stop_price="101").reasons == ["max_order_notional"]
    assert desk.check(qty="10", reference_price="101").reasons == ["max_order_notional"]
    assert desk.check(qty="10", reference_price="99").passed


def test_no_price_for_notional(desk: Desk):
    desk.limit("max_order_notional", "1000")
    d = desk.check(qty="1")
    assert d.reasons == ["no_price_for_notional"]
    assert d.notional is None


def _position_with_open_orders(desk: Desk) -> None:
    """+5 held, an open buy with 3 remaining, an open sell with 10 remaining."""
    desk.intent("held", "buy", "5")
    desk.fill("held", "f1", "5", "100")
    desk.intent("ob", "buy", "4")
    desk.fill("ob", "f2", "1", "100")  # 3 remaining, 6 held
    desk.intent("os", "sell", "10")
    desk.fill("os", "f3", "1", "100")  # 9 remaining, 5 held
    assert desk.position().qty == 5
    assert desk.order("ob").remaining == 3 and desk.order("os").remaining == 9
    desk.intent("other-symbol", "buy", "1000", symbol="MSFT")  # other symbols do not count
    desk.intent("other-venue", "sell", "1000", venue="ib")  # nor other venues


def test_max_position_qty_worst_case_with_open_orders_on_both_sides(desk: Desk):
    _position_with_open_orders(desk)
    desk.limit("max_position_qty", "10")
    # buy: worst long = 5 held + 3 open buys + qty; worst short = 5 - 9 open sells = -4
    assert desk.check(side="buy", qty="2").passed  # 10
    assert desk.check(side="buy", qty="3").reasons == ["max_position_qty"]  # 11
    # sell: worst short = 5 - 9 - qty; worst long = 5 + 3 = 8
    assert desk.check(side="sell", qty="6").passed  # |-10|
    d = desk.check(side="sell", qty="7")  # |-11|
    assert d.reasons == ["max_position_qty"]
    assert "11" in d.detail


def test_max_position_qty_counts_open_buys_even_when_selling(desk: Desk):
    _position_with_open_orders(desk)
    desk.limit("max_position_qty", "7")
    # selling 1 cannot make the worst long (5 + 3 = 8) better: still above 7
    assert desk.check(side="sell", qty="1").reasons == ["max_position_qty"]


def test_max_position_qty_per_symbol_override(desk: Desk):
    desk.limit("max_position_qty", "100")
    desk.limit("max_position_qty", "5", symbol="AAPL")
    assert desk.check(qty="6").reasons == ["max_position_qty"]
    assert desk.check(qty="6", symbol="MSFT").passed


def test_max_open_orders(desk: Desk):
    desk.intent("a", "buy", "1")
    desk.intent("b", "sell", "1", symbol="MSFT")
    desk.intent("x", "buy", "1", account="other")  # another account's orders do not count
    desk.limit("max_open_orders", "2")
    assert desk.check().reasons == ["max_open_orders"]
    desk.commit(rules.decide_cancelled(desk.state, desk.make(ev.OrderCancelled, "a")))
    assert desk.check().passed


def test_max_daily_trades(desk: Desk):
    desk.now = datetime(2024, 3, 5, 23, 0, tzinfo=NY)  # late evening in New York
    desk.intent("a", "buy", "1")
    desk.intent("b", "buy", "1")
    desk.commit(rules.decide_cancelled(desk.state, desk.make(ev.OrderCancelled, "a")))  # cancelled still counts
    desk.limit("max_daily_trades", "2")
    d = desk.check()
    assert d.reasons == ["max_daily_trades"]
    assert d.trading_day == "2024-03-05"
    desk.now = datetime(2024, 3, 6, 0, 5, tzinfo=NY)  # a new trading day
    assert desk.check().passed


def test_refused_intents_are_not_trades(desk: Desk):
    desk.limit("max_daily_trades", "1")
    desk.limit("max_order_qty", "5")
    assert types_of(desk.intent("big", "buy", "6"))[1] == "IntentRejectedByRisk"
    assert desk.check(qty="1").passed


def test_max_daily_loss(desk: Desk):
    desk.intent("b", "buy", "10")
    desk.fill("b", "f1", "10", "100")
    desk.intent("s", "sell", "10")
    desk.fill("s", "f2", "10", "90", fee="0")  # realised -100
    desk.limit("max_daily_loss", "101")
    assert desk.check().passed
    desk.limit("max_daily_loss", "100")  # loss reached the limit
    assert desk.check().reasons == ["max_daily_loss"]


def test_max_daily_loss_counts_fees(desk: Desk):
    desk.intent("b", "buy", "10")
    desk.fill("b", "f1", "10", "100", fee="3")
    desk.limit("max_daily_loss", "3")
    assert desk.check().reasons == ["max_daily_loss"]


def test_every_applicable_reason_is_reported(desk: Desk):
    desk.account_event(ev.KillSwitchEngaged, reason="a")
    desk.account_event(ev.CircuitBreakerTripped, reason="b")
    desk.limit("max_order_qty", "1")
    desk.limit("max_order_notional", "1")
    d = desk.check(qty="2")
    assert d.reasons == ["kill_switch", "circuit_breaker", "max_order_qty", "no_price_for_notional"]


def test_ramp_scales_the_checks(desk: Desk):
    desk.limit("max_order_qty", "10")
    desk.account_event(ev.TradingResumed, ramp_pct=50)
    assert desk.check(qty="5").passed
    assert desk.check(qty="6").reasons == ["max_order_qty"]
    desk.account_event(ev.TradingResumed, ramp_pct=75)
    assert desk.check(qty="7.5").passed
    assert desk.check(qty="7.6").reasons == ["max_order_qty"]


# ------------------------------------------------------------------------------ decide_intent


def test_passing_intent_appends_intent_and_risk_check(desk: Desk):
    intent = desk.make_intent("o1", "buy", "10", order_type="limit", limit_price="12.5")
    decision = rules.decide_intent(desk.state, intent, desk.now)
    assert types_of(decision) == ["OrderIntentRecorded", "RiskCheckPassed"]
    (s1, e1), (s2, passed) = decision.events
    assert s1 == order_stream_id("acct", "o1") and e1 is intent
    assert s2 == account_stream_id("acct")
    assert passed.notional == D(125) and passed.trading_day == "2024-03-05"
    assert passed.correlation_id == intent.event_id == passed.causation_id
    assert rules.decide_intent(desk.state, intent, desk.now) == decision  # deterministic


def test_refused_intent_is_recorded_with_its_refusal(desk: Desk):
    desk.account_event(ev.KillSwitchEngaged, reason="x")
    decision = desk.intent("o1")
    assert types_of(decision) == ["OrderIntentRecorded", "IntentRejectedByRisk"]
    refusal = decision.events[1][1]
    assert decision.events[1][0] == order_stream_id("acct", "o1")
    assert refusal.reasons == ["kill_switch"]
    assert desk.order("o1").status == "refused"
    assert desk.state.account("acct").daily == {}  # not a trade


def test_same_intent_again_is_already_recorded(desk: Desk):
    positions = desk.commit(rules.decide_intent(desk.state, desk.make_intent("o1", qty="10"), desk.now))
    desk.now = T0 + timedelta(minutes=5)
    again = desk.make_intent("o1", qty="10.0")  # another event id, clock and spelling of ten
    assert rules.decide_intent(desk.state, again, desk.now) == rules.AlreadyRecorded(positions[0])
    assert rules.decide_intent(desk.state, desk.make_intent("o1", qty=10), desk.now) == rules.AlreadyRecorded(positions[0])


def test_same_refused_intent_again_is_already_recorded(desk: Desk):
    desk.account_event(ev.KillSwitchEngaged, reason="x")
    positions = desk.commit(rules.decide_intent(desk.state, desk.make_intent("o1"), desk.now))
    desk.account_event(ev.KillSwitchReleased)  # even if it would pass now
    assert rules.decide_intent(desk.state, desk.make_intent("o1"), desk.now) == rules.AlreadyRecorded(positions[0])


@pytest.mark.parametrize(
    "change",
    [{"qty": "11"}, {"side": "sell"}, {"symbol": "MSFT"}, {"venue": "ib"},
     {"order_type": "limit", "limit_price": "1"}, {"time_in_force": "gtc"}, {"strategy_id": "s"},
     {"reference_price": "100"}],
)
def test_same_client_order_id_with_other_content_conflicts(desk: Desk, change):
    desk.intent("o1")
    with pytest.raises(IdempotencyConflict, match="o1"):
        rules.decide_intent(desk.state, desk.make_intent("o1", **{"qty": "10", **change}), desk.now)


def test_client_order_ids_are_per_account(desk: Desk):
    desk.intent("o1")
    assert types_of(desk.intent("o1", side="sell", account="other"))[0] == "OrderIntentRecorded"


def test_notional_with_many_decimal_places_does_not_break_the_risk_check(desk: Desk):
    # 0.123456789 units (a crypto-sized quantity) at 187.2534: the notional has 13 decimal places.
    # A valid order must be recorded (RiskCheckPassed carries the notional) — not crash.
    intent = desk.make_intent("o1", "buy", "0.123456789", order_type="limit", limit_price="187.2534")
    decision = rules.decide_intent(desk.state, intent, desk.now)
    assert types_of(decision) == ["OrderIntentRecorded", "RiskCheckPassed"]
    assert decision.events[1][1].notional == D("0.123456789") * D("187.2534")


def test_huge_notional_is_either_recorded_or_refused_as_invalid_input(desk: Desk):
    # qty and price are each valid (< 1e15) but their product is not: the domain must answer with
    # a decision or a TradestateError, never with a raw pydantic ValidationError.
    intent = desk.make_intent("o1", "buy", "100000000000000", reference_price="100")
    try:
        decision = rules.decide_intent(desk.state, intent, desk.now)
    except TradestateError as e:
        assert isinstance(e, InvalidInput)
    else:
        assert types_of(decision)[0] == "OrderIntentRecorded"


# -------------------------------------------------------------------------------------- fills


def test_fill_is_deduplicated_by_exec_id(desk: Desk):
    desk.intent("o1", "buy", "10")
    [pos] = desk.commit(rules.decide_fill(desk.state, desk.make(ev.OrderFilled, "o1", exec_id="X1", qty="4", price="100"), desk.now))
    same = desk.make(ev.OrderFilled, "o1", exec_id="X1", qty="4.0", price="100.00", at=T0 + timedelta(seconds=3))
    assert rules.decide_fill(desk.state, same, desk.now) == rules.AlreadyRecorded(pos)
    assert desk.order("o1").filled_qty == 4


@pytest.mark.parametrize("qty, price", [("5", "100"), ("4", "100.01"), ("3", "99")])
def test_same_exec_id_with_other_qty_or_price_conflicts(desk: Desk, qty, price):
    desk.intent("o1", "buy", "10")
    desk.fill("o1", "X1", "4", "100")
    with pytest.raises(IdempotencyConflict, match="X1"):
        rules.decide_fill(desk.state, desk.make(ev.OrderFilled, "o1", exec_id="X1", qty=qty, price=price), desk.now)
    assert desk.order("o1").filled_qty == 4


def test_an_exec_id_booked_on_one_order_is_a_discrepancy_on_another(desk: Desk):
    desk.intent("o1", "buy", "10")
    desk.intent("o2", "buy", "10")
    desk.fill("o1", "X1", "4", "100")
    decision = desk.fill("o2", "X1", "4", "100")  # the venue's execution ids are unique per venue
    assert types_of(decision) == ["DiscrepancyRecorded"]
    d = decision.events[0][1]
    assert (d.kind, d.exec_id, d.qty, d.price) == ("duplicate_exec_id", "X1", D(4), D(100))
    assert order_stream_id("acct", "o1") in d.detail
    assert (desk.order("o2").filled_qty, desk.order("o2").discrepancies) == (0, 1)
    assert desk.position().qty == 4
    assert desk.state.account("acct").daily[desk.state.trading_day(T0)].fills == 1
    again = desk.make(ev.OrderFilled, "o2", exec_id="X1", qty="4", price="100")
    assert isinstance(rules.decide_fill(desk.state, again, desk.now), rules.AlreadyRecorded)  # recorded once


def test_the_same_exec_id_at_another_venue_is_another_execution(desk: Desk):
    desk.intent("o1", "buy", "10")
    desk.intent("o2", "buy", "10", venue="ib")
    desk.fill("o1", "X1", "4", "100")
    assert types_of(desk.fill("o2", "X1", "4", "100")) == ["OrderFilled"]
    assert desk.state.exec_ids == {"sim": {"X1": order_stream_id("acct", "o1")},
                                   "ib": {"X1": order_stream_id("acct", "o2")}}


def test_a_refused_order_keeps_its_refusal_detail(desk: Desk):
    desk.account_event(ev.KillSwitchEngaged, reason="desk closed")
    decision = desk.intent("o1")
    refusal = decision.events[1][1]
    assert "desk closed" in refusal.detail
    assert (desk.order("o1").refusal, desk.order("o1").refusal_detail) == (["kill_switch"], refusal.detail)


def test_overfill_is_a_discrepancy_not_a_position(desk: Desk):
    desk.intent("o1", "buy", "10")
    desk.fill("o1", "X1", "8", "100")
    decision = desk.fill("o1", "X2", "3", "101")
    assert types_of(decision) == ["DiscrepancyRecorded"]
    d = decision.events[0][1]
    assert (d.kind, d.exec_id, d.qty, d.price) == ("overfill", "X2", D(3), D(101))
    o = desk.order("o1")
    assert (o.status, o.filled_qty, o.discrepancies) == ("partially_filled", D(8), 1)
    assert desk.position().qty == 8
    assert desk.state.account("acct").discrepancies == 1
    # the discrepant execution is remembered: repeating it is not a second discrepancy
    again = desk.make(ev.OrderFilled, "o1", exec_id="X2", qty="3", price="101")
    assert isinstance(rules.decide_fill(desk.state, again, desk.now), rules.AlreadyRecorded)
    with pytest.raises(IdempotencyConflict):
        rules.decide_fill(desk.state, desk.make(ev.OrderFilled, "o1", exec_id="X2", qty="2", price="101"), desk.now)


def test_fill_of_exactly_the_remaining_quantity_is_not_an_overfill(desk: Desk):
    desk.intent("o1", "buy", "10")
    desk.fill("o1", "X1", "8", "100")
    assert types_of(desk.fill("o1", "X2", "2", "100")) == ["OrderFilled"]
    assert desk.order("o1").status == "filled"


@pytest.mark.parametrize("terminal", ["cancelled", "rejected", "expired", "refused", "filled"])
def test_fill_on_a_terminal_order_is_a_discrepancy(desk: Desk, terminal):
    if terminal == "refused":
        desk.account_event(ev.KillSwitchEngaged, reason="x")
    desk.intent("o1", "buy", "10")
    if terminal == "filled":
        desk.fill("o1", "X0", "10", "100")
    elif terminal != "refused":
        cls = {"cancelled": ev.OrderCancelled, "rejected": ev.OrderRejected, "expired": ev.OrderExpired}[terminal]
        desk.commit(rules.Append([(order_stream_id("acct", "o1"), desk.make(cls, "o1"))]))
    assert desk.order("o1").status == terminal
    before = desk.position().qty if desk.position() else D(0)
    decision = desk.fill("o1", "X1", "1", "100")
    assert types_of(decision) == ["DiscrepancyRecorded"]
    assert decision.events[0][1].kind == "fill_on_terminal"
    o = desk.order("o1")
    assert o.status == terminal
    assert (desk.position().qty if desk.position() else D(0)) == before
    assert o.filled_qty == (10 if terminal == "filled" else 0)


def test_facts_about_unknown_orders(desk: Desk):
    with pytest.raises(UnknownOrder):
        rules.decide_fill(desk.state, desk.make(ev.OrderFilled, "nope", exec_id="X", qty="1", price="1"), desk.now)
    for cls, extra in [(ev.OrderAcknowledged, {"venue_order_id": "V"}), (ev.OrderCancelled, {}),
                       (ev.OrderRejected, {}), (ev.OrderExpired, {}), (ev.OrderSubmitted, {}),
                       (ev.OrderCancelRequested, {}), (ev.OrderReplaced, {"qty": "1"})]:
        decide = {ev.OrderAcknowledged: rules.decide_ack, ev.OrderCancelled: rules.decide_cancelled,
                  ev.OrderRejected: rules.decide_reject, ev.OrderExpired: rules.decide_expired,
                  ev.OrderSubmitted: rules.decide_submitted, ev.OrderCancelRequested: rules.decide_cancel_request,
                  ev.OrderReplaced: rules.decide_replaced}[cls]
        with pytest.raises(UnknownOrder):
            decide(desk.state, desk.make(cls, "nope", **extra))


# -------------------------------------------------------------------------------- daily loss


def test_a_fill_crossing_max_daily_loss_records_the_breach(desk: Desk):
    desk.intent("b", "buy", "10")
    desk.fill("b", "f1", "10", "100")
    desk.limit("max_daily_loss", "50")
    desk.intent("s", "sell", "10")
    decision = desk.fill("s", "f2", "5", "92", fee="1")  # realised -40, net -41: under the limit
    assert types_of(decision) == ["OrderFilled"]
    decision = desk.fill("s", "f3", "2", "95", fee="1")  # -10 more, net -52
    assert types_of(decision) == ["OrderFilled", "DailyLimitBreached"]
    stream, breach = decision.events[1]
    assert stream == account_stream_id("acct")
    assert (breach.limit, breach.trading_day, breach.value, breach.threshold) == (
        "max_daily_loss", "2024-03-05", D(-52), D(50))
    assert breach.causation_id == decision.events[0][1].event_id
    assert desk.state.account("acct").daily["2024-03-05"].breaches == {"max_daily_loss"}
    # recorded once per day
    assert types_of(desk.fill("s", "f4", "1", "80")) == ["OrderFilled"]
    # and the next intent is refused
    assert desk.check().reasons == ["max_daily_loss"]


def test_daily_loss_breach_uses_the_fill_time_trading_day(desk: Desk):
    desk.intent("b", "buy", "10")
    desk.fill("b", "f1", "10", "100")
    desk.limit("max_daily_loss", "10")
    desk.intent("s", "sell", "10")
    at = datetime(2024, 3, 5, 23, 30, tzinfo=NY)
    desk.now = at + timedelta(hours=1)  # recorded after midnight in New York
    decision = desk.fill("s", "f2", "10", "98", at=at)
    assert types_of(decision) == ["OrderFilled", "DailyLimitBreached"]
    assert decision.events[1][1].trading_day == "2024-03-05"


def test_daily_loss_breach_with_an_unrounded_average_cost(desk: Desk):
    # Average cost 32/3 has no finite decimal form; the breach value must still be recordable and
    # the fill must not be lost (a venue fill the engine cannot record is the worst outcome).
    desk.intent("b1", "buy", "1"); desk.fill("b1", "f1", "1", "10")
    desk.intent("b2", "buy", "2"); desk.fill("b2", "f2", "2", "11")
    desk.limit("max_daily_loss", "1")
    desk.intent("s", "sell", "3")
    decision = desk.fill("s", "f3", "3", "10")  # realised exactly -2
    assert types_of(decision) == ["OrderFilled", "DailyLimitBreached"]
    assert decision.events[1][1].value == D(-2)
    assert desk.position().qty == 0


def test_profitable_fill_records_no_breach(desk: Desk):
    desk.limit("max_daily_loss", "1")
    desk.intent("b", "buy", "10")
    assert types_of(desk.fill("b", "f1", "10", "100")) == ["OrderFilled"]


# ----------------------------------------------------------------------------- other commands


def test_submitted_once(desk: Desk):
    desk.intent("o1")
    [pos] = desk.commit(rules.decide_submitted(desk.state, desk.make(ev.OrderSubmitted, "o1")))
    assert desk.order("o1").status == "submitted"
    assert rules.decide_submitted(desk.state, desk.make(ev.OrderSubmitted, "o1")) == rules.AlreadyRecorded(pos)


def test_submitting_a_refused_order_is_invalid(desk: Desk):
    desk.account_event(ev.KillSwitchEngaged, reason="x")
    desk.intent("o1")
    with pytest.raises(InvalidTransition, match="refused"):
        rules.decide_submitted(desk.state, desk.make(ev.OrderSubmitted, "o1"))


@pytest.mark.parametrize("terminal", ["filled", "cancelled", "refused"])
def test_cancel_request_on_a_terminal_order_is_invalid(desk: Desk, terminal):
    if terminal == "refused":
        desk.account_event(ev.KillSwitchEngaged, reason="x")
    desk.intent("o1", "buy", "10")
    if terminal == "filled":
        desk.fill("o1", "X", "10", "1")
    elif terminal == "cancelled":
        desk.commit(rules.decide_cancelled(desk.state, desk.make(ev.OrderCancelled, "o1")))
    with pytest.raises(InvalidTransition, match=terminal):
        rules.decide_cancel_request(desk.state, desk.make(ev.OrderCancelRequested, "o1"))


def test_cancel_request_once_while_open(desk: Desk):
    desk.intent("o1")
    [pos] = desk.commit(rules.decide_cancel_request(desk.state, desk.make(ev.OrderCancelRequested, "o1")))
    assert desk.order("o1").cancel_requested
    again = rules.decide_cancel_request(desk.state, desk.make(ev.OrderCancelRequested, "o1"))
    assert again == rules.AlreadyRecorded(pos)


def test_cancelled_venue_outcomes(desk: Desk):
    desk.intent("o1", "buy", "10")
    desk.fill("o1", "X", "10", "1")
    d = rules.decide_cancelled(desk.state, desk.make(ev.OrderCancelled, "o1"))
    assert types_of(d) == ["DiscrepancyRecorded"] and d.events[0][1].kind == "cancel_after_fill"
    desk.intent("o2")
    [pos] = desk.commit(rules.decide_cancelled(desk.state, desk.make(ev.OrderCancelled, "o2")))
    assert rules.decide_cancelled(desk.state, desk.make(ev.OrderCancelled, "o2")) == rules.AlreadyRecorded(pos)
    d = rules.decide_expired(desk.state, desk.make(ev.OrderExpired, "o2"))
    assert types_of(d) == ["DiscrepancyRecorded"] and d.events[0][1].kind == "status_conflict"


def test_reject_after_fill_is_a_discrepancy(desk: Desk):
    desk.intent("o1", "buy", "10")
    desk.fill("o1", "X", "2", "1")
    d = rules.decide_reject(desk.state, desk.make(ev.OrderRejected, "o1", reason="late"))
    assert types_of(d) == ["DiscrepancyRecorded"]
    assert (d.events[0][1].kind, d.events[0][1].venue_status) == ("reject_after_fill", "rejected")


def test_replace_while_open(desk: Desk):
    desk.intent("o1", "buy", "10", order_type="limit", limit_price="100")
    desk.fill("o1", "X", "4", "100")
    d = rules.decide_replaced(desk.state, desk.make(ev.OrderReplaced, "o1", qty="6", limit_price="99"))
    assert types_of(d) == ["OrderReplaced"]
    desk.commit(d)
    o = desk.order("o1")
    assert (o.qty, o.limit_price, o.remaining, o.status) == (D(6), D(99), D(2), "partially_filled")


def test_replace_below_the_filled_quantity_is_invalid(desk: Desk):
    desk.intent("o1", "buy", "10", order_type="limit", limit_price="100")
    desk.fill("o1", "X", "4", "100")
    with pytest.raises(InvalidTransition, match="below"):
        rules.decide_replaced(desk.state, desk.make(ev.OrderReplaced, "o1", qty="3.9", limit_price="100"))
    # down to exactly what is filled is not below it
    assert types_of(rules.decide_replaced(desk.state, desk.make(ev.OrderReplaced, "o1", qty="4", limit_price="100"))) == ["OrderReplaced"]


@pytest.mark.parametrize("terminal", ["filled", "cancelled", "rejected", "expired", "refused"])
def test_replace_of_a_closed_order_is_invalid(desk: Desk, terminal):
    if terminal == "refused":
        desk.account_event(ev.KillSwitchEngaged, reason="x")
    desk.intent("o1", "buy", "10")
    if terminal == "filled":
        desk.fill("o1", "X", "10", "1")
    elif terminal != "refused":
        cls = {"cancelled": ev.OrderCancelled, "rejected": ev.OrderRejected, "expired": ev.OrderExpired}[terminal]
        desk.commit(rules.Append([(order_stream_id("acct", "o1"), desk.make(cls, "o1"))]))
    with pytest.raises(InvalidTransition, match="open order"):
        rules.decide_replaced(desk.state, desk.make(ev.OrderReplaced, "o1", qty="20"))


@pytest.mark.parametrize(
    "order_type, intent_prices, replace_prices",
    [("limit", {"limit_price": "1"}, {}), ("market", {}, {"limit_price": "1"}),
     ("stop", {"stop_price": "1"}, {"limit_price": "1"}), ("stop_limit", {"limit_price": "1", "stop_price": "1"},
                                                            {"stop_price": "1"})],
)
def test_replace_must_keep_the_price_fields_of_its_type(desk: Desk, order_type, intent_prices, replace_prices):
    desk.intent("o1", "buy", "10", order_type=order_type, **intent_prices)
    with pytest.raises(InvalidTransition, match="price"):
        rules.decide_replaced(desk.state, desk.make(ev.OrderReplaced, "o1", qty="5", **replace_prices))


def test_late_ack_after_fills_changes_no_status(desk: Desk):
    desk.intent("p", "buy", "10")
    desk.fill("p", "X1", "3", "100")
    desk.intent("f", "buy", "10")
    desk.fill("f", "X2", "10", "100")
    for coid, status in [("p", "partially_filled"), ("f", "filled")]:
        d = rules.decide_ack(desk.state, desk.make(ev.OrderAcknowledged, coid, venue_order_id="V-" + coid))
        assert types_of(d) == ["OrderAcknowledged"]
        desk.commit(d)
        o = desk.order(coid)
        assert o.status == status
        assert o.venue_order_id == "V-" + coid
        assert o.discrepancies == 0


def test_ack_once_and_conflicting_ack(desk: Desk):
    desk.intent("o1")
    [pos] = desk.commit(rules.decide_ack(desk.state, desk.make(ev.OrderAcknowledged, "o1", venue_order_id="V1")))
    assert desk.order("o1").status == "acknowledged"
    assert rules.decide_ack(desk.state, desk.make(ev.OrderAcknowledged, "o1", venue_order_id="V1")) == rules.AlreadyRecorded(pos)
    d = rules.decide_ack(desk.state, desk.make(ev.OrderAcknowledged, "o1", venue_order_id="V2"))
    assert types_of(d) == ["DiscrepancyRecorded"] and d.events[0][1].kind == "venue_order_id_changed"
    desk.commit(d)
    assert desk.order("o1").venue_order_id == "V1"


def test_ack_of_a_refused_order_is_a_discrepancy(desk: Desk):
    desk.account_event(ev.KillSwitchEngaged, reason="x")
    desk.intent("o1")
    d = rules.decide_ack(desk.state, desk.make(ev.OrderAcknowledged, "o1", venue_order_id="V1"))
    assert types_of(d) == ["DiscrepancyRecorded"] and d.events[0][1].kind == "status_conflict"
    desk.commit(d)
    assert desk.order("o1").status == "refused"


def test_a_zero_daily_loss_limit_does_not_depend_on_having_traded_today(desk: Desk):
    # With max_daily_loss = 0 and no P&L at all, the decision must not depend on whether the
    # account has a stats row for today. A zero loss budget allows no trading at all: reaching
    # the limit stops trading, and a loss of 0 has reached 0.
    desk.intent("o1", "buy", "1")  # before the limit: a trade today, so a stats row, P&L 0
    assert desk.state.account("acct").daily["2024-03-05"].net_pnl == 0
    desk.limit("max_daily_loss", "0")
    with_row = desk.check()
    del desk.state.account("acct").daily["2024-03-05"]
    without_row = desk.check()
    assert with_row.reasons == without_row.reasons == ["max_daily_loss"]


@pytest.mark.parametrize(
    "setup, cls, fields",
    [
        ("cancelled", ev.OrderAcknowledged, {"venue_order_id": "V1"}),
        ("rejected", ev.OrderCancelled, {"reason": "venue"}),
        ("filled", ev.OrderRejected, {"reason": "venue"}),
        ("cancelled", ev.OrderExpired, {}),
    ],
)
def test_a_repeated_contradicting_venue_fact_is_recorded_once(desk: Desk, setup, cls, fields):
    # "Repeating a fact that is already recorded returns where it was recorded": a venue that
    # retransmits the same contradicting message must not grow the discrepancy count each time.
    desk.intent("o1", "buy", "10")
    if setup == "filled":
        desk.fill("o1", "X", "10", "1")
    else:
        terminal = {"cancelled": ev.OrderCancelled, "rejected": ev.OrderRejected}[setup]
        desk.commit(rules.Append([(order_stream_id("acct", "o1"), desk.make(terminal, "o1"))]))
    decide = {ev.OrderAcknowledged: rules.decide_ack, ev.OrderCancelled: rules.decide_cancelled,
              ev.OrderRejected: rules.decide_reject, ev.OrderExpired: rules.decide_expired}[cls]
    first = decide(desk.state, desk.make(cls, "o1", **fields))
    assert types_of(first) == ["DiscrepancyRecorded"]
    [pos] = desk.commit(first)
    again = decide(desk.state, desk.make(cls, "o1", **fields))
    assert again == rules.AlreadyRecorded(pos)
    assert desk.order("o1").discrepancies == 1
