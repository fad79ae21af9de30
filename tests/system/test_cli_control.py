"""``tradestate control ...`` as an operator runs it: real processes, both databases, the events
read back from the log."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

import pytest

import tradestate
from tests.support.gates import waiting_gate
from tests.support.controls import control_events, head


def run(*args: str, operator: str | None = "alice", stdin: int | None = subprocess.DEVNULL
        ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADESTATE_")}
    if operator is not None:
        env["TRADESTATE_OPERATOR"] = operator
    return subprocess.run([sys.executable, "-m", "tradestate.cli", "control", *args], capture_output=True,
                          text=True, timeout=120, env=env, stdin=stdin)


@pytest.fixture
def log(db_url: str) -> str:
    with tradestate.connect(db_url, venue="sim") as client:
        client.set_risk_limit("a1", "max_order_qty", 10)
        waiting_gate(client, "crash-loop-e1", account="a1")
    return db_url


@pytest.mark.slow
def test_every_control_command_records_who_and_why(log):
    commands = [
        (["kill-switch", "engage", "a1"], "KillSwitchEngaged"),
        (["kill-switch", "release", "a1", "--yes"], "KillSwitchReleased"),
        (["breaker", "trip", "a1", "--until", "2199-01-01T00:00:00Z"], "CircuitBreakerTripped"),
        (["breaker", "reset", "a1", "--yes"], "CircuitBreakerReset"),
        (["resume", "a1", "--ramp", "75", "--yes"], "TradingResumed"),
        (["limit", "a1", "max_order_qty", "250", "--yes"], "RiskLimitChanged"),
        (["limit", "a1", "max_position_qty", "none", "--symbol", "AAPL", "--yes"], "RiskLimitChanged"),
        (["ack", "a1", "--yes"], "DiscrepancyAcknowledged"),
        (["approve", "crash-loop-e1", "--account", "a1", "-y", "--operator", "bob"], "GateApproved"),
    ]
    outputs = []
    for i, (args, type_name) in enumerate(commands):
        done = run(*args, "--reason", f"step {i}", "--db", log, "--json")
        assert done.returncode == 0, (args, done.stderr)
        out = json.loads(done.stdout)
        assert out["ok"] is True and out["event_type"] == type_name and out["reason"] == f"step {i}"
        outputs.append(out)
    events = control_events(log)[1:]  # after the fixture's limit
    assert [t for _, t, _ in events] == [t for _, t in commands]
    assert [p for p, _, _ in events] == [o["position"] for o in outputs]
    for i, (_, type_name, d) in enumerate(events):
        who, why = (d["by"], d["decision"]) if type_name == "DiscrepancyAcknowledged" else (d["operator"], d["reason"])
        assert who == ("bob" if type_name == "GateApproved" else "alice") and why == f"step {i}"
    assert events[2][2]["until"].startswith("2199-01-01") and events[6][2]["symbol"] == "AAPL"
    state = json.loads(subprocess.run([sys.executable, "-m", "tradestate.cli", "state", "--db", log, "--json"],
                                      capture_output=True, text=True, timeout=120).stdout)
    account = state["accounts"]["a1"]
    assert account["ramp_pct"] == 75 and account["limits"]["max_order_qty"] == "250"
    assert not account["kill_switch"] and not account["breaker_tripped"]


def test_the_operator_defaults_to_the_os_user_at_the_host(sqlite_url):
    with tradestate.connect(sqlite_url):
        pass
    done = run("kill-switch", "engage", "a1", "--reason", "test", "--db", sqlite_url, "--json", operator=None)
    assert done.returncode == 0, done.stderr
    import getpass
    import socket

    expected = f"{getpass.getuser()}@{socket.gethostname()}"
    assert json.loads(done.stdout)["operator"] == expected
    assert control_events(sqlite_url)[-1][2]["operator"] == expected


def test_no_terminal_and_no_yes_refuses_what_needs_confirmation(log):
    before = head(log)
    done = run("kill-switch", "release", "a1", "--reason", "fixed", "--db", log)
    assert done.returncode == 2 and "pass --yes" in done.stderr and "Traceback" not in done.stderr
    done = run("resume", "a1", "--ramp", "100", "--reason", "fine", "--db", log, "--json")
    assert done.returncode == 2 and json.loads(done.stderr)["exit_code"] == 2
    assert head(log) == before
    # the emergency brake never waits on a prompt
    assert run("breaker", "trip", "a1", "--reason", "loss", "--db", log).returncode == 0
    assert head(log) == before + 1


@pytest.mark.parametrize("args, message", [
    (["kill-switch", "engage", "a1"], "--reason is required"),
    (["kill-switch", "engage", "a1", "--reason", "  "], "--reason is required"),
    (["kill-switch", "engage", "a1", "--reason", "x", "--operator", ""], "--operator"),
    (["kill-switch", "pause", "a1", "--reason", "x"], "engage, release"),
    (["limit", "a1", "max_order_qty", "ten", "--reason", "x", "--yes"], "not a decimal"),
    (["limit", "a1", "max_leverage", "1", "--reason", "x", "--yes"], "limit"),
    (["resume", "a1", "--ramp", "60", "--reason", "x", "--yes"], "50, 75, 100"),
    (["breaker", "trip", "a1", "--until", "tomorrow", "--reason", "x"], "ISO-8601"),
    (["breaker", "reset", "a1", "--until", "2199-01-01T00:00:00Z", "--reason", "x", "--yes"], "goes with trip"),
])
def test_bad_input_exits_2_and_appends_nothing(log, args, message):
    before = head(log)
    done = run(*args, "--db", log, "--json")
    assert done.returncode == 2, done.stdout + done.stderr
    error = json.loads(done.stderr)  # one JSON object: no traceback
    assert message in error["error"] and error["exit_code"] == 2 and done.stdout == ""
    assert head(log) == before


def test_a_missing_log_is_exit_2(tmp_path):
    done = run("kill-switch", "engage", "a1", "--reason", "x", "--db", f"sqlite:///{tmp_path}/none.db")
    assert done.returncode == 2 and "no tradestate log" in done.stderr


@pytest.mark.parametrize("answer, code, appended", [(b"n\n", 1, 0), (b"y\n", 0, 1)])
def test_the_prompt_on_a_terminal(sqlite_url, answer, code, appended):
    with tradestate.connect(sqlite_url) as client:
        client.engage_kill_switch("a1", "engine stop")
    before = head(sqlite_url)
    controller, terminal = pty.openpty()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRADESTATE_")}
        proc = subprocess.Popen([sys.executable, "-m", "tradestate.cli", "control", "kill-switch", "release", "a1",
                                 "--reason", "checked", "--operator", "dave", "--db", sqlite_url],
                                stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        os.close(terminal)
        terminal = -1
        os.write(controller, answer)
        out, err = proc.communicate(timeout=120)
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert proc.returncode == code, out + err
    assert "release the kill switch of a1?" in out
    assert head(sqlite_url) == before + appended
    if appended:
        assert control_events(sqlite_url)[-1][2]["operator"] == "dave"
    else:
        assert "not confirmed" in err
