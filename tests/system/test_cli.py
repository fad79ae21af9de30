"""The console command as a user runs it: real processes, real databases."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def tradestate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tradestate.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


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
    state = json.loads(tradestate("state", "--db", url, "--json").stdout)
    assert state["position"] == 78  # 70 + each of the two recoveries' four GateEvaluated
    # the morning's 90 AAPL less the 40 whose fill notification was lost; 50 + 20 MSFT; and the
    # hot act's two market orders, each filled once (h-2's fill found by the standby's recovery)
    assert {(p["account"], p["symbol"], p["qty"]) for p in state["positions"]} == {
        ("demo-acct", "AAPL", "50"), ("demo-acct", "MSFT", "70"), ("demo-hot", "MSFT", "10"), ("demo-hot", "AAPL", "25")}
    assert state["accounts"]["demo-acct"]["breaker_tripped"] is False  # reset when trading resumed


def test_demo_refuses_a_database_that_already_holds_a_log(tmp_path):
    url = f"sqlite:///{tmp_path}/demo.db"
    assert tradestate("demo", "--db", url).returncode == 0
    again = tradestate("demo", "--db", url)
    assert again.returncode == 2
    assert "already holds a log" in again.stderr and again.stdout == "" and "Traceback" not in again.stderr
    assert tradestate("demo", "--db", url, "--reset").returncode == 0


@pytest.mark.postgres
def test_demo_on_postgresql(pg_url):
    run = tradestate("demo", "--db", pg_url)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "same state" in run.stdout
    assert "takeover in " in run.stdout and "neither lost nor sent twice" in run.stdout


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

    url = f"sqlite:///{tmp_path}/env.db"
    assert tradestate("demo", "--db", url).returncode == 0
    env = {**os.environ, "TRADESTATE_DB": url}
    state = json.loads(tradestate("state", "--json", env=env).stdout)
    assert state["position"] == 78  # 70 + each of the two recoveries' four GateEvaluated
