"""``tradestate recover``: crash detection, checkpoint + tail, the recorded report, ramped
resumption, strict blocking, and the command's exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tests.support.projector_worker import Clock, write_session

import tradestate
from tradestate.adapters.store import checkpoints as cp
from tradestate.loading import fold_tail
from tradestate.adapters.store import open_store
from tradestate.domain import events as ev
from tradestate.domain.state import TradingState
from tradestate.recovery import detect, recover


def fresh(store) -> TradingState:
    state = TradingState()
    fold_tail(store, state)
    return state


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tradestate.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def crashed(db_url):
    """An engine that started, traded, wrote a checkpoint and never recorded its stop."""
    with tradestate.connect(db_url, clock=Clock(), checkpoint_every=100) as client:
        client.engine_started("engine-1")
        write_session(client, 250, seed=3)
        assert client.checkpointer.written
    return db_url


@pytest.mark.parametrize("lifecycle, crashed", [
    ([], False),
    (["start", "stop"], False),
    (["start"], True),
    (["start", "start", "stop"], True),  # the first run never stopped
    (["start", "stop", "start", "stop"], False),
    (["start", "recovered"], False),
    (["start", "recovered", "start", "stop"], False),
])
def test_a_start_without_a_clean_stop_is_a_crash(sqlite_url, lifecycle, crashed):
    with tradestate.connect(sqlite_url) as client:
        for step in lifecycle:
            if step == "start":
                client.engine_started("e")
            elif step == "stop":
                client.engine_stopped("e")
            else:
                client.record_recovery("e", ready=True, steps=[])
        assert detect(client.store, "e")[0] is crashed
        if lifecycle[:2] == ["start", "start"]:
            assert client.previous_run_crashed("e")


def test_recovery_loads_the_checkpoint_replays_the_tail_and_records_its_report(crashed):
    with open_store(crashed) as store:
        head = store.trading.head()
        report, client = recover(store, engine_id="engine-1")
        assert report.crashed and report.ready
        assert [s.name for s in report.steps] == ["detect", "verify", "checkpoint", "replay", "reconcile", "health",
                                                  "gate repeated_crashes", "gate gross_exposure", "gate volatility",
                                                  "gate market_hours", "record"]
        assert report.checkpoint_position and report.checkpoint_position <= head
        assert report.replayed == head - report.checkpoint_position
        assert report.step("reconcile").detail == "no broker configured"
        expected = fresh(store)
        # the recovered state (before the report and resumption were appended) equals a fresh fold
        events = store.trading.read(after=head, limit=100)
        assert [e.topic for e in events][-1] == "RecoveryCompleted"
        resumed = [e for e in events if e.topic == "TradingResumed"]
        assert resumed and all(json.loads(e.state)["ramp_pct"] == 50 for e in resumed)
        assert client.state.summary() == expected.summary()
        recorded = ev.decode("RecoveryCompleted", json.loads(events[-1].state))
        assert recorded.ready and recorded.crashed and recorded.head == head
        assert [s["name"] for s in recorded.steps][:6] == [s.name for s in report.steps][:6]
        # the crash is now recovered: the next recovery says so
        assert detect(store, "engine-1")[0] is False


def test_a_damaged_checkpoint_is_reported_and_recovery_still_reaches_the_same_state(crashed):
    with open_store(crashed) as store:
        newest = cp.list_checkpoints(store)[0]
        with cp._cursor(store, write=True) as cur:
            p = "?" if store.kind == "sqlite" else "%s"
            cur.execute(f"UPDATE {cp._table(store)} SET checksum = {p} WHERE id = {p}", ("0" * 64, newest.id))
        report, client = recover(store, engine_id="engine-1", record=False)
        step = report.step("checkpoint")
        assert step.status == "warn" and "checksum mismatch" in step.detail and f"checkpoint {newest.id}" in step.detail
        assert report.checkpoint_position < newest.position
        assert client.state.summary() == fresh(store).summary()
        client.close()


def test_a_clean_stop_resumes_nothing_and_a_given_ramp_is_recorded(sqlite_url):
    with tradestate.connect(sqlite_url) as client:
        client.engine_started("e")
        client.set_risk_limit("a1", "max_order_qty", 100)
        client.engine_stopped("e")
    with open_store(sqlite_url) as store:
        report, client = recover(store, engine_id="e")
        assert not report.crashed and report.ready
        assert client.state.accounts["a1"].ramp_pct == 100
        report, client = recover(store, engine_id="e", ramp=75)
        assert client.state.accounts["a1"].ramp_pct == 75
        with pytest.raises(ValueError):
            recover(store, ramp=60)


def test_a_blocked_account_is_not_ready_until_acknowledged(sqlite_url):
    with tradestate.connect(sqlite_url) as client:
        client.engine_started("e")
        client.writer.account_fact(ev.TradingBlocked, "a1", reason="reconciliation found 2 discrepancies")
    run = cli("recover", "--db", sqlite_url, "--engine-id", "e", "--json")
    assert run.returncode == 1, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert not report["ready"] and report["blocked_accounts"] == ["a1"]
    health = next(s for s in report["steps"] if s["name"] == "health")
    assert health["status"] == "failed" and "trading blocked" in health["detail"]
    with tradestate.connect(sqlite_url) as client:
        refused = client.record_intent(account="a1", client_order_id="o1", venue="SIM", symbol="AAPL", side="buy",
                                       order_type="market", qty=1, reference_price="10")
        assert refused.refusal and "trading_blocked" in refused.refusal.reasons
        client.writer.account_fact(ev.DiscrepancyAcknowledged, "a1", by="ops", decision="venue is right; corrected")
    run = cli("recover", "--db", sqlite_url, "--engine-id", "e")
    assert run.returncode == 0 and "READY TO TRADE" in run.stdout, run.stdout + run.stderr


def test_the_command_prints_the_report_and_rejects_bad_input(crashed, tmp_path):
    run = cli("recover", "--db", crashed, "--engine-id", "engine-1", "--dry-run")
    assert run.returncode == 0, run.stdout + run.stderr
    for step in ("detect", "verify", "checkpoint", "replay", "reconcile", "health", "record"):
        assert step in run.stdout
    assert "READY TO TRADE" in run.stdout and "crash" in run.stdout
    bad = cli("recover", "--db", crashed, "--ramp", "60")
    assert bad.returncode == 2 and "--ramp" in bad.stderr and "Traceback" not in bad.stdout + bad.stderr
    missing = cli("recover", "--db", f"sqlite:///{tmp_path}/none.db")
    assert missing.returncode == 2 and "Traceback" not in missing.stdout + missing.stderr


def test_checkpoint_command_writes_and_lists(crashed):
    run = cli("checkpoint", "--db", crashed, "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    written = json.loads(run.stdout)
    listed = json.loads(cli("checkpoint", "--db", crashed, "--list", "--json").stdout)
    assert listed["checkpoints"][0]["id"] == written["id"] and listed["checkpoints"][0]["status"] == "newest valid"


def test_the_projector_writes_checkpoints_that_recovery_uses(sqlite_url):
    with tradestate.connect(sqlite_url, clock=Clock(), use_checkpoints=False) as client:
        client.engine_started("e")
        write_session(client, 200, seed=8)
    run = cli("project", "--db", sqlite_url, "--once", "--checkpoint-every", "50")
    assert run.returncode == 0 and "checkpoint 1 written" in run.stdout, run.stdout + run.stderr
    with open_store(sqlite_url) as store:
        report, client = recover(store, engine_id="e", record=False)
        assert report.checkpoint_position == store.trading.head() and report.replayed == 0
        assert client.state.summary() == fresh(store).summary()


def test_a_following_projector_checkpoints_a_quiet_log_after_checkpoint_seconds(db_url):
    """Ten events, then silence: far fewer than --checkpoint-every, so only the time rule can
    write the checkpoint, and only the watchdog's tick can run it while no page arrives."""
    import signal
    import time

    with tradestate.connect(db_url, clock=Clock(), use_checkpoints=False) as client:
        client.engine_started("e")
        write_session(client, 10, seed=2)
    follower = subprocess.Popen([sys.executable, "-m", "tradestate.cli", "project", "--db", db_url,
                                 "--checkpoint-every", "100000", "--checkpoint-seconds", "0.5"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with open_store(db_url) as store:
            head = store.trading.head()
            deadline = time.monotonic() + 30
            while not (cp.table_exists(store) and cp.list_checkpoints(store)) and time.monotonic() < deadline:
                time.sleep(0.1)
            written = cp.list_checkpoints(store) if cp.table_exists(store) else []
            assert written and written[0].position == head, follower.poll()
    finally:
        follower.send_signal(signal.SIGTERM)
        out, _ = follower.communicate(timeout=30)
    assert follower.returncode == 0, out


@pytest.mark.parametrize("value", ["0", "-1", "nan"])
def test_project_refuses_a_checkpoint_interval_that_is_not_positive(sqlite_url, value):
    run = cli("project", "--db", sqlite_url, "--once", "--checkpoint-seconds", value)
    assert run.returncode == 2 and "--checkpoint-seconds must be > 0" in run.stdout + run.stderr


@pytest.mark.parametrize("tamper", [False, True], ids=["intact", "tampered"])
def test_a_long_verify_runs_in_a_worker_process_and_still_catches_tampering(sqlite_url, monkeypatch, tamper):
    import sqlite3

    from tradestate import recovery
    from tradestate.adapters.store import digest

    with tradestate.connect(sqlite_url, clock=Clock(), use_checkpoints=False) as client:
        client.engine_started("e")
        write_session(client, 150, seed=4)
        digest.seal(client.store)
    if tamper:
        path = sqlite_url[len("sqlite:///"):]
        raw = sqlite3.connect(path)
        raw.execute("DROP TRIGGER ts_events_no_update")  # as an intruder with file access would
        raw.execute("UPDATE ts_events SET data = replace(data, '\"qty\"', '\"qty\" ') WHERE position = 40")
        raw.commit()
        raw.close()
    monkeypatch.setattr(recovery, "PARALLEL_VERIFY_EVENTS", 10)
    with open_store(sqlite_url) as store:
        report, client = recover(store, engine_id="e", record=False)
        step = report.step("verify")
        assert "worker process" in step.detail or tamper, step.detail
        if tamper:
            assert step.status == "failed" and "first bad position 40" in step.detail and not report.ready
        else:
            assert step.status == "ok" and report.ready


@pytest.mark.slow
def test_a_dry_run_with_a_broker_appends_nothing_and_says_what_it_would(tmp_path):
    """The demo's log and venue: a dry run plans the reconciliation (nothing appended); naming
    the wrong venue shows up as phantom corrections, with a note to check --venue."""
    url = f"sqlite:///{tmp_path}/d.db"
    assert cli("demo", "--db", url).returncode == 0
    with open_store(url) as store:
        head = store.trading.head()
    common = ["recover", "--db", url, "--engine-id", "demo-engine", "--broker", "sim", "--sim-state",
              str(tmp_path / "sim-venue.json"), "--account", "demo-acct", "--dry-run", "--json"]
    right = json.loads(cli(*common, "--venue", "sim").stdout)
    assert right["ready"] and right["discrepancies"] == 0 and right["reconciliations"][0]["dry_run"]
    wrong = json.loads(cli(*common, "--venue", "SIM").stdout)
    step = next(s for s in wrong["steps"] if s["name"] == "reconcile")
    # two phantom position corrections, and a first cash balance at "SIM" (cash is kept per venue)
    assert wrong["corrective_events"] == 3 and "check --venue" in step["detail"] and "dry run" in step["detail"]
    with open_store(url) as store:
        assert store.trading.head() == head  # nothing appended by either run


def test_recover_from_a_script_without_a_main_guard_verifies_in_a_worker(sqlite_url, tmp_path):
    """The verify worker is a plain subprocess: a caller's unguarded script is not re-imported."""
    with tradestate.connect(sqlite_url) as client:
        client.record_signal("s", "AAPL", "long", value="1")
    script = tmp_path / "recover_it.py"
    script.write_text(
        "from tradestate import recovery\n"
        "from tradestate.adapters.store import open_store\n"
        "recovery.PARALLEL_VERIFY_EVENTS = 0\n"
        f"with open_store({sqlite_url!r}) as store:\n"
        "    report, client = recovery.recover(store, engine_id='e', record=False)\n"
        "    print(report.ready, report.step('verify').detail)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("True") and "worker process" in done.stdout, done.stdout


def test_recover_without_an_engine_id_finds_a_crash_under_any_engine(db_url):
    """An engine that crashed under its own id is not a clean stop because the command was run
    without --engine-id: every engine in the log is checked, the crashed one's run is closed
    with the report, and trading resumes at the reduced ramp."""
    with tradestate.connect(db_url, clock=Clock()) as client:
        client.engine_started("alpha")
        client.engine_stopped("alpha")
        client.engine_started("beta")  # never stops: crashed
        client.set_risk_limit("acct", "max_order_qty", "10")
    run = cli("recover", "--db", db_url, "--json")
    report = json.loads(run.stdout)
    assert report["crashed"] and report["engine_id"] == "beta", run.stdout + run.stderr
    assert "'alpha' stopped cleanly" in report["steps"][0]["detail"]
    with open_store(db_url) as store:
        assert detect(store, "beta")[0] is False  # closed by the recorded report
        assert [e.topic for e in store.trading.read_stream("engine-alpha")] == ["EngineStarted", "EngineStopped"]
    with tradestate.connect(db_url, clock=Clock()) as client:
        assert client.risk_state("acct")["ramp_pct"] == 50
    again = json.loads(cli("recover", "--db", db_url, "--json").stdout)
    assert not again["crashed"]


def test_a_cold_recovery_reaches_the_state_of_applying_every_event(db_url, monkeypatch):
    """``recover`` with no checkpoint (the digest chain verified in a worker process beside the
    cold fold and its partial decode) reaches exactly the state of ``apply`` of every row, on a
    log of trading sessions (cancels, rejects, refusals, partial fills, replaces, kill switch,
    breaker) and hand-built rows (position corrections, cash balances, imported orders,
    discrepancies, older fills, voids, payloads with numbers for amounts and repeated keys)."""
    import random

    from eventsourcing.persistence import StoredEvent
    from tests.store.test_cold_fold import _hand_made, _random_log

    from tradestate import recovery
    from tradestate.adapters.store import digest

    with tradestate.connect(db_url, clock=Clock(), use_checkpoints=False) as client:
        client.engine_started("e")
        write_session(client, 200, seed=11)
        client.engage_kill_switch("acct-a", "desk limit")
        write_session(client, 60, seed=12)
        client.release_kill_switch("acct-a")
        rng = random.Random(5)
        for p, stream, version, type_name, data, _at in _hand_made(rng, _random_log(rng, 200).rows):
            client.store.trading.append([StoredEvent(originator_id=stream, originator_version=version,
                                                     topic=type_name, state=data)])
        write_session(client, 40, seed=13)
        digest.seal(client.store)
    monkeypatch.setattr(recovery, "PARALLEL_VERIFY_EVENTS", 10)
    with open_store(db_url) as store:
        expected = fresh(store)
        assert {"KillSwitchEngaged", "PositionCorrected", "CashBalanceRecorded", "OrderCancelled", "OrderRejected",
                "IntentRejectedByRisk", "OrderImported"} <= {r[3] for r in store.trading.iter_rows()}
        assert any(o.status == "partially_filled" or (o.status == "cancelled" and o.filled_qty)
                   for o in expected.orders.values())
        report, client = recover(store, engine_id="e", record=False)
        assert report.ready and report.checkpoint_position is None and report.replayed == store.trading.head()
        assert "worker process" in report.step("verify").detail
        assert client.state.summary() == expected.summary()
        assert client.state.exec_ids == expected.exec_ids


def test_the_verify_worker_gets_its_priority_back_once_the_replay_is_done(sqlite_url, monkeypatch):
    """Niced while the replay runs beside it; raised again after (when this process may: root or
    CAP_SYS_NICE), so that on a busy box the verify does not trail the replay by seconds."""
    from tradestate import recovery

    with tradestate.connect(sqlite_url, clock=Clock(), use_checkpoints=False) as client:
        write_session(client, 40, seed=2)
    raised = []
    real = os.setpriority
    monkeypatch.setattr(os, "setpriority", lambda which, who, prio: raised.append((who, prio)) or real(which, who, prio))
    worker = recovery._VerifyWorker(sqlite_url, 0)
    try:
        assert worker.nice == recovery.VERIFY_WORKER_NICE > 0
        worker.replay_done()
        # this process's own priority ([] only when the worker had already ended)
        assert raised in ([(worker.proc.pid, os.getpriority(os.PRIO_PROCESS, 0))], [])
        assert worker.result()["ok"]
    finally:
        worker.shutdown()
