"""Safety gates before trading resumes, and the ramp that runs itself, on both databases: a
repeated-crash, exposure or volatility gate leaves recovery not ready and intents refused until an
operator approves; a closed market starts in monitoring mode until the calendar says it opens;
the ramp steps 50 -> 75 -> 100 % after healthy intervals, holds on a breaker trip or a new
discrepancy, and carries on after its process is killed and started again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import orjson
import pytest

import tradestate
from tests.support.timed_cli import CliMarks, timed_cli
from tradestate.adapters.store import open_store
from tradestate.domain import risk
from tradestate.gates import GateConfig, approve
from tradestate.ramp import RampRunner
from tradestate.recovery import recover

MONDAY = datetime(2026, 3, 9, 15, 0, tzinfo=timezone.utc)  # 11:00 in New York: NYSE open
SATURDAY = datetime(2026, 3, 7, 15, 0, tzinfo=timezone.utc)


class ManualClock:
    def __init__(self, start: datetime):
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += timedelta(seconds=seconds)


def _topics(store, stream):
    return [(e.topic, orjson.loads(e.state)) for e in store.trading.read_stream(stream)]


def _engine_that_crashed(db_url, clock, *, starts=1, fill=None, bars=(), open_order=False):
    """An engine e1 with account acct (limits set), ``starts`` starts and never a clean stop;
    ``fill``: (qty, price) bought of AAPL at sim; ``bars``: (minutes before now, open, high, low, close)."""
    with tradestate.connect(db_url, clock=clock, venue="sim") as c:
        c.set_risk_limit("acct", "max_order_qty", 100)
        if fill:
            c.record_intent("acct", "f1", "AAPL", "buy", fill[0], reference_price=fill[1])
            c.record_fill("acct", "f1", "x1", fill[0], fill[1])
        if open_order:
            c.record_intent("acct", "w1", "AAPL", "buy", 2, reference_price=100)
        for minutes, o, h, low, close in bars:
            c.record_bar("sim", "AAPL", "1m", (clock.now - timedelta(minutes=minutes)).replace(second=0), o, h, low, close, 10)
        for _ in range(starts):
            c.engine_started("e1")
            clock.advance(20)


def _recover(url, **options):
    """Recover engine e1 on a store of its own (the recovered client closes it)."""
    return recover(open_store(url), engine_id="e1", client_options={"venue": "sim"}, **options)


def _intent(client, coid):
    return client.record_intent("acct", coid, "MSFT", "buy", 1, reference_price="10")


def test_repeated_crashes_leave_recovery_waiting_for_approval_and_the_approval_resumes(db_url):
    clock = ManualClock(MONDAY)
    _engine_that_crashed(db_url, clock, starts=4)  # 3 restarts without a stop + the open run: 4 > 3
    store = open_store(db_url)
    report, client = _recover(db_url, clock=clock)
    with client:
        gid = f"repeated_crashes@{report.head}"
        assert report.crashed and not report.ready and report.awaiting_approval == [gid]
        gate = report.step("gate repeated_crashes")
        assert gate.status == "failed" and gate.counts["crashes_in_window"] == 4 and gid in gate.detail
        assert [s.status for s in report.steps if s.name.startswith("gate ")][1:] == ["ok", "ok", "ok"]
        evaluated = [d for t, d in _topics(store, "engine-e1") if t == "GateEvaluated"]
        assert [(d["gate"], d["passed"], d["requires_approval"]) for d in evaluated] == [
            ("repeated_crashes", False, True), ("gross_exposure", True, False), ("volatility", True, False),
            ("market_hours", True, False)]
        assert evaluated[0]["values"]["crashes_in_window"] == 4 and evaluated[0]["values"]["max_crashes"] == 3
        recorded = [d for t, d in _topics(store, "engine-e1") if t == "RecoveryCompleted"][-1]
        assert "gate repeated_crashes" in [s["name"] for s in recorded["steps"]] and not recorded["ready"]
        # Limits at 50 %, but no intent until an operator approves.
        assert client.risk_state("acct")["ramp_pct"] == 50
        refused = _intent(client, "o1")
        assert refused.refusal and risk.GATE_PENDING in refused.refusal.reasons
        with pytest.raises(tradestate.InvalidInput, match="no gate 'nope' waits"):
            approve(client, "nope", "alice", reason="typo")
        done = approve(client, gid, "alice", reason="bad deploy rolled back")
        assert not done.duplicate and approve(client, gid, "alice", reason="again").duplicate
        assert client.state.gate_approvals[gid]["operator"] == "alice"
        assert _intent(client, "o2").accepted
    # The next recovery finds nothing waiting (and no new crash).
    again, client = _recover(db_url, clock=clock)
    with client:
        assert again.ready and again.awaiting_approval == []
    store.close()


def test_a_waiting_gate_keeps_a_later_recovery_not_ready_until_approved(sqlite_url):
    clock = ManualClock(MONDAY)
    _engine_that_crashed(sqlite_url, clock, starts=5)
    store = open_store(sqlite_url)
    report, client = _recover(sqlite_url, clock=clock)
    client.close()
    again, client = _recover(sqlite_url, clock=clock)  # no crash left to recover: still waiting
    with client:
        assert not again.ready and again.awaiting_approval == report.awaiting_approval
        assert again.step("gate approvals").status == "failed"
    store.close()


@pytest.mark.parametrize("threshold, waits", [(Decimal(1000), True), (Decimal(10_000), False)])
def test_gross_exposure_above_the_threshold_waits_for_approval(db_url, threshold, waits):
    clock = ManualClock(MONDAY)
    _engine_that_crashed(db_url, clock, fill=(100, 50))  # 5,000 held
    store = open_store(db_url)
    report, client = _recover(db_url, clock=clock, gates=GateConfig(max_gross_exposure=threshold))
    with client:
        step = report.step("gate gross_exposure")
        assert step.counts["gross_exposure"] == "5000" and step.counts["threshold"] == str(threshold)
        assert report.ready is not waits
        assert report.awaiting_approval == ([f"gross_exposure@{report.head}"] if waits else [])
        assert _intent(client, "o1").accepted is not waits
    store.close()


def test_a_symbol_whose_bars_moved_beyond_the_threshold_waits_for_approval(db_url):
    clock = ManualClock(MONDAY)
    # AAPL held; its last minutes ranged 99 -> 112 from an open of 100 (13 %), and an old bar outside the window is ignored
    _engine_that_crashed(db_url, clock, fill=(1, 100), bars=[(60, 100, 300, 100, 100), (3, 100, 101, 99, 100),
                                                            (2, 100, 108, 100, 107), (1, 107, 112, 106, 111)])
    store = open_store(db_url)
    report, client = _recover(db_url, clock=clock, gates=GateConfig(max_move=Decimal("0.05")))
    with client:
        step = report.step("gate volatility")
        assert step.status == "failed" and step.counts["over_threshold"] == ["sim/AAPL"]
        assert step.counts["moves"] == {"sim/AAPL": "0.130000"} and step.counts["bars"] == {"sim/AAPL": 3}
        assert report.awaiting_approval == [f"volatility@{report.head}"]
        assert risk.GATE_PENDING in _intent(client, "o1").refusal.reasons
    calm, client = _recover(db_url, clock=clock, gates=GateConfig(max_move=Decimal("0.2")), ramp=50)
    with client:
        assert calm.step("gate volatility").status == "ok"
    store.close()


def test_a_closed_market_starts_in_monitoring_mode_until_the_calendar_opens_it(db_url):
    clock = ManualClock(SATURDAY)
    _engine_that_crashed(db_url, clock, fill=(1, 100), open_order=True)
    store = open_store(db_url)
    config = GateConfig(calendars={"sim": "XNYS"})
    report, client = _recover(db_url, clock=clock, gates=config)
    with client:
        step = report.step("gate market_hours")
        assert step.status == "warn" and step.counts["sim"]["open"] is False and step.counts["sim"]["calendar"] == "XNYS"
        assert step.counts["sim"]["next_open"] == "2026-03-09T13:30:00+00:00"  # Monday 9:30 New York (EDT)
        assert report.ready and list(report.monitoring) == ["acct"] and report.awaiting_approval == []
        refused = _intent(client, "o1")
        assert refused.refusal.reasons == [risk.MONITORING_MODE]
        # venue facts are still recorded in monitoring mode: a fill of the order left open
        filled = client.record_fill("acct", "w1", "x2", 1, 101)
        assert filled.discrepancy is None and client.state.position_of("acct", "sim", "AAPL").qty == 2
        runner = RampRunner(open_store(db_url), interval=timedelta(minutes=5), clock=clock, gates=config)
        try:
            assert runner.tick().recorded.count("TradingModeChanged") == 0  # still Saturday
            clock.now = MONDAY
            assert "TradingModeChanged" in runner.tick().recorded
        finally:
            runner.close()
        client.catch_up()
        assert client.state.accounts["acct"].mode == "trading"
        assert _intent(client, "o2").accepted
    store.close()


def test_the_ramp_steps_after_healthy_intervals_and_holds_on_a_breaker_trip_or_a_new_discrepancy(db_url):
    clock = ManualClock(MONDAY)
    _engine_that_crashed(db_url, clock)
    store = open_store(db_url)
    report, client = _recover(db_url, clock=clock)
    assert report.ready and client.risk_state("acct")["ramp_pct"] == 50
    runner = RampRunner(open_store(db_url), interval=timedelta(seconds=60), clock=clock)
    try:
        def tick():
            (d,) = runner.tick().decisions
            return d

        clock.advance(30)
        assert tick().kind == "wait"
        clock.advance(31)
        step = tick()
        assert (step.kind, step.from_pct, step.to_pct) == ("step", 50, 75)
        client.trip_breaker("acct", "loss spike")
        held = tick()
        assert held.kind == "hold" and "no_breaker_trip" in held.reason and "loss spike" in held.reason
        clock.advance(120)
        assert tick().kind == "wait"  # held: the same reason is not recorded again
        client.reset_breaker("acct")
        assert tick().kind == "healthy"
        # a new discrepancy: a fill for more than the order's quantity
        client.record_intent("acct", "d1", "MSFT", "buy", 1, reference_price="10")
        assert client.record_fill("acct", "d1", "x9", 5, 10).discrepancy
        held = tick()
        assert held.kind == "hold" and held.reason.startswith("no_new_discrepancy")
        assert tick().kind == "healthy"
        clock.advance(59)
        assert tick().kind == "wait"
        clock.advance(1)
        step = tick()
        assert (step.kind, step.from_pct, step.to_pct) == ("step", 75, 100)
        assert tick().kind == "idle"
    finally:
        runner.close()
    events = [(t, d) for t, d in _topics(store, "account-acct") if t.startswith("Ramp")]
    assert [t for t, _ in events] == ["RampStepped", "RampHeld", "RampHealthy", "RampHeld", "RampHealthy", "RampStepped"]
    first, last = events[0][1], events[-1][1]
    assert (first["from_pct"], first["to_pct"], last["from_pct"], last["to_pct"]) == (50, 75, 75, 100)
    assert set(last["checks"]) >= {"no_new_discrepancy", "no_breaker_trip", "gates_approved", "trading_mode"}
    assert all(c["ok"] for c in last["checks"].values())
    client.catch_up()
    assert client.risk_state("acct")["ramp_pct"] == 100
    client.close()
    store.close()


def _ramp_process(db_url, interval, marks):
    """``tradestate ramp --follow`` in its own process; ``marks``: when its start-up ended (``timed_cli``)."""
    env = {**os.environ, "TRADESTATE_DB": db_url}
    return timed_cli(["ramp", "--follow", "--json", "--interval", str(interval), "--poll", "0.05"], marks,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def _wait_for(store, predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = [d for t, d in _topics(store, "account-acct") if t == "RampStepped"]
        if predicate(steps):
            return steps
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {steps}")


@pytest.mark.slow
def test_the_ramp_runs_in_its_own_process_and_carries_on_after_that_process_is_killed(db_url, tmp_path):
    clock = ManualClock(datetime.now(timezone.utc))
    _engine_that_crashed(db_url, clock)
    store = open_store(db_url)
    report, client = _recover(db_url)  # the wall clock: the runner process uses it too
    client.close()
    assert report.ready
    interval = 4.0
    proc = _ramp_process(db_url, interval, tmp_path / "first.marks")
    try:
        steps = _wait_for(store, lambda s: len(s) >= 1, 60)
        proc.send_signal(signal.SIGKILL)  # no chance to clean up
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [(s["from_pct"], s["to_pct"]) for s in steps] == [(50, 75)]
    stepped_at = datetime.fromisoformat(steps[0]["occurred_at"])
    time.sleep(interval + 0.5)  # the next interval runs out while no runner runs
    marks = tmp_path / "restarted.marks"
    proc = _ramp_process(db_url, interval, marks)
    try:
        steps = _wait_for(store, lambda s: len(s) >= 2, 60)
        time.sleep(0.3)  # no further step at 100 %
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    steps = [d for t, d in _topics(store, "account-acct") if t == "RampStepped"]
    assert [(s["from_pct"], s["to_pct"]) for s in steps] == [(50, 75), (75, 100)]
    # the restarted runner counts the interval from the first step, as recorded in the log: it waited
    # it out (not less) and, the interval having passed while it was down, stepped at once (not a new
    # interval from its own start, which is after its start-up: seconds on a loaded machine)
    second = datetime.fromisoformat(steps[1]["occurred_at"])
    assert second - stepped_at >= timedelta(seconds=interval)
    assert second - CliMarks.read(marks).ready_at < timedelta(seconds=interval)
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert any(x["kind"] == "step" and x["to_pct"] == 100 for x in lines)
    assert all(c["ok"] for c in steps[1]["checks"].values())
    assert steps[1]["checks"]["projector_caught_up"]["detail"] and steps[1]["checks"]["venue_reachable"]["ok"]
    store.close()


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "tradestate.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_the_commands_report_a_waiting_gate_list_it_and_approve_it(sqlite_url):
    clock = ManualClock(datetime.now(timezone.utc))
    _engine_that_crashed(sqlite_url, clock, fill=(100, 50))
    env = {"TRADESTATE_GATE_MAX_GROSS_EXPOSURE": "1000"}
    done = _cli("recover", "--db", sqlite_url, "--engine-id", "e1", "--json", env=env)
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    (gid,) = report["awaiting_approval"]
    assert gid.startswith("gross_exposure@") and not report["ready"]
    line = next(g for g in report["gates"] if g["gate"] == "gross_exposure")
    assert line["values"]["gross_exposure"] == "5000" and line["values"]["threshold"] == "1000"
    listed = _cli("gates", "--db", sqlite_url, "--json")
    assert listed.returncode == 1 and [g["gate_id"] for g in json.loads(listed.stdout)["waiting"]] == [gid]
    assert _cli("gates", "--db", sqlite_url, "--approve", gid).returncode == 2  # who approves is required
    approved = _cli("gates", "--db", sqlite_url, "--approve", gid, "--operator", "alice", "--reason", "hedged", "--json")
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["waiting"] == []
    assert _cli("gates", "--db", sqlite_url).returncode == 0


def test_a_checkpoint_after_ramp_steps_and_gates_agrees_with_the_log_and_is_used(db_url):
    from tradestate.adapters.store import checkpoints
    from tradestate.loading import state_at

    clock = ManualClock(MONDAY)
    _engine_that_crashed(db_url, clock, starts=5)
    report, client = _recover(db_url, clock=clock)
    approve(client, report.awaiting_approval[0], "alice", reason="checked")
    client.close()
    runner = RampRunner(open_store(db_url), interval=timedelta(seconds=1), clock=clock)
    try:
        clock.advance(2)
        runner.tick()
    finally:
        runner.close()
    store = open_store(db_url)
    try:
        state = state_at(store)
        assert state.accounts["acct"].ramp_pct == 75
        checkpoints.write(store, state, now=datetime.now(timezone.utc))
        loaded = checkpoints.load(store, head=store.trading.head())
        assert loaded.rejected == [] and loaded.checkpoint is not None
        assert loaded.state.summary() == state.summary()
    finally:
        store.close()
