"""The safety gates and the ramp as pure decisions: thresholds at their boundaries (by property),
crash history from engine streams, the fold of gate/mode/ramp events, the refusals they cause,
and checkpoints keeping them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from uuid import uuid4

from hypothesis import given
from hypothesis import strategies as st

from tradestate.domain import gates as g
from tradestate.domain import risk, snapshot
from tradestate.domain.events import OrderIntentRecorded
from tradestate.domain.ramp import Check, account_checks, decide
from tradestate.domain.state import AccountState, TradingState

T0 = datetime(2026, 3, 2, 15, 0, tzinfo=timezone.utc)


# ------------------------------------------------------------------------- repeated crashes


@given(st.lists(st.integers(min_value=0, max_value=900), max_size=12), st.integers(min_value=0, max_value=6))
def test_the_crash_gate_waits_exactly_when_more_than_n_crashes_fall_in_the_window(offsets, n):
    now = T0 + timedelta(seconds=900)
    times = [T0 + timedelta(seconds=s) for s in offsets]
    window = timedelta(minutes=5)
    d = g.repeated_crashes(times, now, max_crashes=n, window=window)
    in_window = sum(1 for t in times if now - window <= t <= now)
    assert d.passed is (in_window <= n)
    assert d.action == ("proceed" if in_window <= n else "approval")
    assert d.values["crashes_in_window"] == in_window and d.values["max_crashes"] == n


def _ev(topic, at, **data):
    return topic, data, at


def test_crash_times_count_unclean_restarts_expired_leases_once_and_the_open_run():
    t = [T0 + timedelta(seconds=i) for i in range(10)]
    events = [
        _ev("EngineStarted", t[0]), _ev("EngineStarted", t[1]),  # crash 1: restarted without a stop
        _ev("EngineStopped", t[2]), _ev("EngineStarted", t[3]),
        _ev("LeaseExpired", t[4], epoch=1), _ev("LeaseAcquired", t[5], reason="expired", previous_epoch=1),  # crash 2
        _ev("LeaseAcquired", t[6], reason="expired", previous_epoch=2),  # crash 3: taken over, no expiry recorded
        _ev("EngineStarted", t[7]), _ev("RecoveryCompleted", t[8]),  # recovered: not open
        _ev("EngineStarted", t[9]),  # still open at the end: the crash being recovered now
    ]
    now = T0 + timedelta(minutes=1)
    assert g.crash_times(events, now) == [t[1], t[4], t[6], now]
    assert g.crash_times(events[:3], now) == [t[1]]


# ---------------------------------------------------------------------------- gross exposure


@given(st.lists(st.tuples(st.integers(-1000, 1000), st.integers(1, 500)), max_size=8), st.integers(0, 300_000))
def test_the_exposure_gate_compares_the_sum_of_absolute_notionals_with_the_threshold(rows, threshold):
    holdings = [g.Holding("a", "v", f"S{i}", Decimal(q), Decimal(p)) for i, (q, p) in enumerate(rows)]
    total = sum((abs(q) * p for q, p in rows), 0)
    d = g.gross_exposure(holdings, Decimal(threshold))
    assert Decimal(d.values["gross_exposure"]) == total
    assert d.passed is (total <= threshold)
    assert d.requires_approval is (total > threshold)


def test_an_unpriced_position_is_named_and_no_threshold_means_the_gate_passes():
    d = g.gross_exposure([g.Holding("a", "v", "X", Decimal(5), None), g.Holding("a", "v", "Y", Decimal(-2), Decimal(10))],
                         None)
    assert d.passed and d.values["gross_exposure"] == "20" and d.values["unpriced"] == ["a/v/X"]
    assert "no threshold" in d.detail


# -------------------------------------------------------------------------------- volatility


def _bar(i, o, h, low, c):
    return g.Bar(T0 + timedelta(minutes=i), Decimal(o), Decimal(h), Decimal(low), Decimal(c))


def test_the_volatility_gate_measures_the_range_of_the_bars_against_the_first_open():
    calm = [_bar(0, 100, 101, 99, 100), _bar(1, 100, 102, 100, 101)]
    wild = [_bar(0, 100, 100, 100, 100), _bar(1, 100, 107, 99, 106)]
    assert g.price_move(calm) == Decimal("0.03") and g.price_move(wild) == Decimal("0.08")
    d = g.volatility({"v/CALM": calm, "v/WILD": wild, "v/NONE": []}, Decimal("0.05"), window=timedelta(minutes=15))
    assert not d.passed and d.requires_approval and d.values["over_threshold"] == ["v/WILD"]
    assert d.values["no_bars"] == ["v/NONE"] and "v/WILD 8.00%" in d.detail
    assert g.volatility({"v/CALM": calm}, Decimal("0.05"), window=timedelta(minutes=15)).passed
    assert g.volatility({"v/WILD": wild}, None, window=timedelta(minutes=15)).passed


# ------------------------------------------------------------------------------ market hours


def test_a_closed_market_means_monitoring_and_a_venue_without_a_calendar_is_not_judged():
    opens = T0 + timedelta(days=2)
    closed = g.market_hours([g.MarketSession("nyse", "XNYS", False, next_open=opens), g.MarketSession("sim", None, True)])
    assert not closed.passed and closed.action == "monitoring" and not closed.requires_approval
    assert "nyse: closed by XNYS" in closed.detail and closed.values["nyse"]["next_open"] == opens.isoformat()
    assert g.market_hours([g.MarketSession("sim", None, True)]).passed
    broken = g.market_hours([g.MarketSession("x", "NOPE", False, error="InvalidCalendarName: NOPE")])
    assert broken.action == "monitoring" and "could not answer" in broken.detail


# ---------------------------------------------------------------------------------- the ramp


def _ramping(pct=50, since=T0) -> AccountState:
    a = AccountState("acct", ramp_pct=pct)
    a.ramp_since = since
    return a


LIVE = {"projector_caught_up": Check(True, "caught up"), "venue_reachable": Check(True, "answered")}


@given(st.sampled_from([50, 75]), st.integers(0, 600), st.integers(1, 600))
def test_the_ramp_steps_up_exactly_once_the_level_was_healthy_for_the_interval(pct, elapsed, interval):
    a = _ramping(pct)
    now = T0 + timedelta(seconds=elapsed)
    d = decide(a, account_checks(a, [], now, LIVE), now, timedelta(seconds=interval))
    if elapsed >= interval:
        assert d.kind == "step" and d.to_pct == {50: 75, 75: 100}[pct]
        assert all(c["ok"] for c in d.checks.values())
    else:
        assert d.kind == "wait" and d.due == T0 + timedelta(seconds=interval)


def test_a_failed_check_holds_once_per_reason_and_passing_again_restarts_the_interval():
    a = _ramping(75)
    now = T0 + timedelta(hours=1)
    live = {**LIVE, "venue_reachable": Check(False, "sim/acct: ConnectionError")}
    held = decide(a, account_checks(a, [], now, live), now, timedelta(seconds=1))
    assert held.kind == "hold" and "venue_reachable: sim/acct: ConnectionError" in held.reason
    assert held.checks["venue_reachable"] == {"ok": False, "detail": "sim/acct: ConnectionError"}
    a.ramp_held = held.reason
    assert decide(a, account_checks(a, [], now, live), now, timedelta(seconds=1)).kind == "wait"
    assert decide(a, account_checks(a, [], now, LIVE), now, timedelta(seconds=1)).kind == "healthy"


def test_new_discrepancies_breaker_trips_pending_gates_and_monitoring_each_fail_a_check():
    now = T0 + timedelta(hours=1)
    cases = {
        "no_new_discrepancy": lambda a: setattr(a, "discrepancies", 1),
        "no_breaker_trip": lambda a: setattr(a, "breaker_trips", 1),
        "trading_mode": lambda a: setattr(a, "mode", "monitoring"),
        "no_kill_switch": lambda a: setattr(a, "kill_switch", True),
    }
    for name, spoil in cases.items():
        a = _ramping()
        spoil(a)
        d = decide(a, account_checks(a, [], now, LIVE), now, timedelta(seconds=1))
        assert d.kind == "hold" and d.reason.startswith(name), (name, d.reason)
    a = _ramping()
    d = decide(a, account_checks(a, [{"gate_id": "volatility@7"}], now, LIVE), now, timedelta(seconds=1))
    assert d.kind == "hold" and "volatility@7" in d.reason


def test_no_ramp_under_way_is_idle():
    assert decide(AccountState("a"), {}, T0, timedelta(seconds=1)).kind == "idle"
    assert decide(_ramping(100), {}, T0, timedelta(seconds=1)).kind == "idle"


# ---------------------------------------------------------------- fold, refusals, checkpoints


def _apply(state, stream, type_name, **data):
    data.setdefault("event_id", str(uuid4()))
    state.apply(state.position + 1, stream, state.stream_versions.get(stream, 0) + 1, type_name, data, T0)


def _intent():
    return OrderIntentRecorded(event_id=uuid4(), account="acct", client_order_id="o1", venue="sim", symbol="AAPL",
                               side="buy", order_type="market", qty=Decimal(1))


def test_a_waiting_gate_and_monitoring_mode_refuse_intents_until_approved_and_trading_again():
    state = TradingState()
    _apply(state, "engine-e1", "GateEvaluated", engine_id="e1", gate_id="repeated_crashes@9", gate="repeated_crashes",
           passed=False, action="approval", requires_approval=True, detail="4 crashes")
    _apply(state, "engine-e1", "GateEvaluated", engine_id="e1", gate_id="gross_exposure@9", gate="gross_exposure",
           passed=True, action="proceed", requires_approval=False)
    _apply(state, "account-acct", "TradingModeChanged", account="acct", mode="monitoring", reason="XNYS closed")
    decision = risk.check_intent(state, _intent(), T0)
    assert {risk.GATE_PENDING, risk.MONITORING_MODE} <= set(decision.reasons)
    assert "repeated_crashes@9" in decision.detail and "XNYS closed" in decision.detail
    assert [x["gate_id"] for x in state.pending_gates("acct")] == ["repeated_crashes@9"]

    restored = snapshot.restore(*_roundtrip(state))
    assert restored.summary() == state.summary()

    _apply(state, "engine-e1", "GateApproved", gate_id="repeated_crashes@9", operator="ops", reason="root cause fixed")
    _apply(state, "account-acct", "TradingModeChanged", account="acct", mode="trading", reason="open")
    assert risk.check_intent(state, _intent(), T0).passed
    assert state.gate_approvals["repeated_crashes@9"]["operator"] == "ops"
    assert snapshot.restore(*_roundtrip(state)).summary() == state.summary()


def test_the_ramp_events_fold_into_the_level_its_start_and_its_baseline_and_survive_a_checkpoint():
    state = TradingState()
    _apply(state, "account-acct", "CircuitBreakerTripped", account="acct", reason="r")
    _apply(state, "account-acct", "TradingResumed", account="acct", ramp_pct=50, occurred_at=T0.isoformat())
    a = state.accounts["acct"]
    assert (a.ramp_pct, a.ramp_since, a.ramp_baseline, a.ramp_held) == (50, T0, (0, 1), "")
    later = T0 + timedelta(minutes=5)
    _apply(state, "account-acct", "RampHeld", account="acct", pct=50, reason="venue down", occurred_at=later.isoformat())
    assert a.ramp_held == "venue down" and a.ramp_since == later
    assert snapshot.restore(*_roundtrip(state)).summary() == state.summary()
    _apply(state, "account-acct", "RampHealthy", account="acct", pct=50)
    _apply(state, "account-acct", "RampStepped", account="acct", from_pct=50, to_pct=75)
    assert a.ramp_pct == 75 and a.ramp_held == ""
    restored = snapshot.restore(*_roundtrip(state))
    assert restored.summary() == state.summary() and restored.accounts["acct"].ramp_since == a.ramp_since


def _roundtrip(state):
    import orjson

    doc, finished = snapshot.take(state)
    return orjson.loads(snapshot.encode(doc)), finished
