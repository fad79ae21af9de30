"""The console command as a user runs it: real processes, real databases."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest


def tradestate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tradestate.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.slow
def test_demo_on_sqlite_shows_the_same_state_in_a_new_process(tmp_path):
    url = f"sqlite:///{tmp_path}/demo.db"
    run = tradestate("demo", "--db", url)
    assert run.returncode == 0, run.stderr
    assert "same state" in run.stdout
    assert "refused" in run.stdout and "circuit_breaker" in run.stdout
    # act three: the engine is SIGKILLed with a fill lost at the venue; recovery finds and records it
    assert "SIGKILL" in run.stdout and "READY TO TRADE" in run.stdout
    assert "the lost fill was found at the venue and recorded" in run.stdout
    assert "Trace of order demo-acct/o-7" in run.stdout and (tmp_path / "postmortem.html").stat().st_size > 10_000
    # act five: the active engine is SIGKILLed with h-2 in flight; its standby takes over
    assert "SIGKILL → engine" in run.stdout and "gone with h-2 in flight" in run.stdout
    assert "a 2 s lease" in run.stdout and "takeover in " in run.stdout
    assert "re-sent intent h-2: already on record" in run.stdout and "(a duplicate)" in run.stdout
    assert "ack, fill → 2 duplicates, 0 appended" in run.stdout
    assert "LeaseExpired" in run.stdout and "reason expired (after epoch 1)" in run.stdout
    assert "order h-2: OrderIntentRecorded → OrderSubmitted → OrderAcknowledged → OrderFilled" in run.stdout
    assert "neither lost nor sent twice" in run.stdout
    # act six: flaky-engine crashes 4 times; the repeated-crashes gate waits for an operator, an
    # intent is refused, the listener gets the signed alerts, the approval, the ramp steps by itself
    _assert_runbook_act(run.stdout)
    _assert_drill_act(run.stdout)
    assert (tmp_path / "backups" / "full.tsb").exists() and (tmp_path / "backups" / "inc1.tsb").exists()
    assert "every step of the act held" in run.stdout[run.stdout.index("Instruments and venues"):]
    state = json.loads(tradestate("state", "--db", url, "--json").stdout)
    # 70 + the first two recoveries' four GateEvaluated + act six's 22 (4 starts, 4 GateEvaluated, 2
    # TradingResumed, RecoveryCompleted, the refused intent's 2, 2 RampHeld, GateApproved, 2
    # RampHealthy, 4 RampStepped) + the drill act's 3 signals and DrillCompleted + the instruments
    # act's 56 (tests/app/test_demo_instruments.py)
    assert state["position"] == 160
    # the morning's 90 AAPL less the 40 whose fill notification was lost; 50 + 20 MSFT; and the
    # hot act's two market orders, each filled once (h-2's fill found by the standby's recovery);
    # the instruments act's desk: ES closed, SAP 100 split into 200 less 80 sold, 0.25 BTC
    assert {(p["account"], p["symbol"], p["qty"]) for p in state["positions"]} == {
        ("demo-acct", "AAPL", "50"), ("demo-acct", "MSFT", "70"), ("demo-hot", "MSFT", "10"), ("demo-hot", "AAPL", "25"),
        ("demo-desk", "ESZ6", "0"), ("demo-desk", "SAP", "120"), ("demo-desk", "BTC/USD", "0.25")}
    assert state["accounts"]["demo-acct"]["breaker_tripped"] is False  # reset when trading resumed
    assert state["accounts"]["demo-acct"]["ramp_pct"] == state["accounts"]["demo-hot"]["ramp_pct"] == 100
    assert state["open_orders"] == []  # o-9 of act six was refused: never an order


def _assert_runbook_act(out: str) -> None:
    """The demo's act six, as printed (whitespace normalised: long lines wrap at the console's width)."""
    act = " ".join(out[out.index("The runbook, operable"):].split())
    assert act.count("→ SIGKILL") == 4 and act.count("its previous run never stopped") == 3
    assert "NOT READY" in act and "WAITING FOR APPROVAL gate repeated_crashes@" in act
    assert "gate repeated_crashes │ failed" in act and "flaky-engine 4, hot-engine 1" in act
    assert "intent o-9 buy 10 MSFT → refused: gate_pending" in act
    assert "listener received POST /alerts/" in act and "gate_waiting_approval (critical)" in act
    assert "→ verified (HMAC-SHA256 of the body with the demo secret)" in act
    assert "a 1 s healthy interval" in act
    held, approved = act.index("HELD at 50 % — gates_approved"), act.index("tradestate control approve repeated_crashes@")
    healthy, to75, to100 = act.index("healthy again at 50 %"), act.index("stepped 50 → 75 %"), act.index("stepped 75 → 100 %")
    assert held < approved < healthy < to75 < to100  # held for the gate until the approval, then by itself
    assert "--operator ops-alice" in act and "recorded GateApproved at position" in act and "by ops-alice" in act
    assert "every resumed account at 100 %" in act
    assert "The webhook listener received 5 alert(s)" in act
    table = act[act.index("The webhook listener received"):]
    assert table.count("crash_detected") == 3 and table.count("verified sha256=") == 5
    assert table.index("gate_waiting_approval") < table.index("recovery_completed")
    assert "every signature verified with the demo secret: True" in act


def _assert_drill_act(out: str) -> None:
    """The demo's last act: a full backup, an increment of the three signals after it, a drill that
    passes and is on record right after them.

    The full backup's size is read, not fixed: the runbook act before it records one more
    ``RampHeld``/``RampHealthy`` pair whenever a loaded machine makes the projector lag a round."""
    act = " ".join(out[out.index("Backups and a restore drill"):].split())
    full = re.search(r"full backup of (\d+) events", act)
    assert full is not None and int(full.group(1)) >= 100, act[:400]
    assert "an increment of 3 events" in act
    assert "2 link(s) (full + 1 increment(s))" in act and "drill passed: RTO" in act
    position = int(full.group(1)) + 3 + 1  # the drill's own record follows the increment
    assert f"DrillCompleted is on record at position {position} (outcome passed)" in act


@pytest.mark.slow
def test_demo_refuses_a_database_that_already_holds_a_log(tmp_path):
    url = f"sqlite:///{tmp_path}/demo.db"
    import tradestate as ts

    with ts.connect(url) as client:  # any log at all
        client.record_signal("s", "AAPL", "up")
    again = tradestate("demo", "--db", url)
    assert again.returncode == 2
    assert "already holds a log" in again.stderr and again.stdout == "" and "Traceback" not in again.stderr
    reset = tradestate("demo", "--db", url, "--reset")
    assert reset.returncode == 0, reset.stdout[-3000:] + reset.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.postgres
def test_demo_on_postgresql(pg_url):
    run = tradestate("demo", "--db", pg_url)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "same state" in run.stdout
    assert "takeover in " in run.stdout and "neither lost nor sent twice" in run.stdout
    _assert_runbook_act(run.stdout)
    _assert_drill_act(run.stdout)
    assert "every step of the act held" in run.stdout[run.stdout.index("Instruments and venues"):]
    # --reset drops every tradestate table of the schema: read models, leases and the alert cursor
    # left by the first run would otherwise claim positions the new log has not reached
    again = tradestate("demo", "--db", pg_url, "--reset")
    assert again.returncode == 0, again.stdout + again.stderr
    _assert_runbook_act(again.stdout)


@pytest.mark.parametrize(
    "args, message",
    [
        (["state", "--db", "mysql://x/y"], "unsupported database URL"),
        (["state", "--db", "sqlite:///no/such/dir/x.db"], "does not exist"),
        (["state", "--db", "sqlite:///:memory:"], "not durable"),
        (["state", "--at", "yesterday"], "not an ISO-8601"),
        (["state", "--at", "2026-11-20T10:00:00"], "time zone"),
    ],
)
def test_bad_input_gets_a_clear_error_and_no_traceback(tmp_path, args, message):
    run = tradestate(*args)
    assert run.returncode != 0
    assert message in run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr


def test_database_url_comes_from_the_environment(tmp_path):
    import os

    import tradestate as ts

    url = f"sqlite:///{tmp_path}/env.db"
    with ts.connect(url) as client:
        for i in range(3):
            client.record_signal("s", "AAPL", f"up{i}")
    env = {**os.environ, "TRADESTATE_DB": url}
    state = json.loads(tradestate("state", "--json", env=env).stdout)
    assert state["position"] == 3
