"""``tradestate engines`` (the operator view: table, --json, --check) and the projector follower
as a live crash detector, in real processes on both databases."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta

import orjson
import pytest
from tradestate.adapters.store import open_store

import tradestate


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tradestate.cli", *args], capture_output=True, text=True,
                          timeout=120)


def expiries(url: str, engine_id: str) -> list[dict]:
    store = open_store(url, create=False)
    try:
        return [orjson.loads(e.state) for e in store.trading.read_stream(f"engine-{engine_id}")
                if e.topic == "LeaseExpired"]
    finally:
        store.close()


def test_engines_lists_active_stopped_and_dead_engines_as_a_table_and_json(db_url):
    tradestate.connect(db_url, venue="sim").close()
    none = cli("engines", "--db", db_url, "--json")
    assert none.returncode == 0, none.stderr
    assert json.loads(none.stdout) == {"ok": True, "exit_code": 0, "engines": [], "dead": []}

    active = tradestate.connect(db_url, engine_id="alpha", lease_seconds=30, venue="sim")
    active.engine_started("alpha")
    clean = tradestate.connect(db_url, engine_id="beta", lease_seconds=30, venue="sim")
    clean.engine_stopped("beta")
    clean.close()
    crashed = tradestate.connect(db_url, engine_id="gamma", lease_seconds=0.3, venue="sim")
    crashed.engine_started("gamma")
    crashed.close()  # stops renewing without a clean stop: a crash
    time.sleep(0.6)
    try:
        text = cli("engines", "--db", db_url)
        assert text.returncode == 0, text.stderr
        lines = {line.split("│")[1].strip(): line for line in text.stdout.splitlines() if line.count("│") > 3}
        assert "active" in lines["alpha"] and active.lease.holder in lines["alpha"]
        assert "stopped" in lines["beta"] and "dead" in lines["gamma"] and "not yet" in lines["gamma"]
        assert "DEAD engine gamma" in text.stdout

        as_json = cli("engines", "--db", db_url, "--json")
        assert as_json.returncode == 0, as_json.stderr
        body = json.loads(as_json.stdout)
        assert body["ok"] is True and body["dead"] == ["gamma"]
        rows = {r["engine_id"]: r for r in body["engines"]}
        assert [rows[k]["state"] for k in ("alpha", "beta", "gamma")] == ["active", "stopped", "dead"]
        assert rows["alpha"]["epoch"] == 1 and rows["alpha"]["holder"] == active.lease.holder
        assert rows["alpha"]["expires_in_seconds"] > 20 and rows["gamma"]["renewal_age_seconds"] >= 0.3
        assert rows["gamma"]["lease"] == "expired" and rows["gamma"]["expiry_recorded"] is False

        checked = cli("engines", "--db", db_url, "--json", "--check")
        assert checked.returncode == 1 and checked.stderr == ""
        assert json.loads(checked.stdout)["ok"] is False and json.loads(checked.stdout)["exit_code"] == 1
        assert expiries(db_url, "gamma") == []  # the command is read-only: it records nothing
    finally:
        active.close()


def test_engines_without_a_log_is_exit_2(tmp_path):
    missing = cli("engines", "--db", f"sqlite:///{tmp_path}/none.db", "--json")
    assert missing.returncode == 2 and missing.stdout == ""
    assert "does not exist" in json.loads(missing.stderr)["error"]


def test_the_projector_follower_records_a_dead_engine_without_any_standby(db_url, tmp_path):
    tradestate.connect(db_url, venue="sim").close()
    out = (tmp_path / "projector.out").open("w")
    projector = subprocess.Popen([sys.executable, "-m", "tradestate.cli", "project", "--db", db_url],
                                 stdout=out, stderr=subprocess.STDOUT, text=True)
    hung = tradestate.connect(db_url, engine_id="e1", lease_seconds=0.5, venue="sim")
    try:
        hung.engine_started("e1")
        # the projector's start-up (seconds on a loaded machine) is not its detection time: the
        # lease stops only once it follows
        deadline = time.monotonic() + 60
        while "following " not in (tmp_path / "projector.out").read_text():
            assert projector.poll() is None, (tmp_path / "projector.out").read_text()
            assert time.monotonic() < deadline, "the projector did not start following"
            time.sleep(0.05)
        hung.lease.stop()  # hung: no renewals from here on
        deadline = time.monotonic() + 30
        while not expiries(db_url, "e1"):
            assert projector.poll() is None, (tmp_path / "projector.out").read_text()
            assert time.monotonic() < deadline, "the projector did not record the expired lease"
            time.sleep(0.1)
        [expired] = expiries(db_url, "e1")
        assert expired["detected_by"].startswith("projector ") and expired["holder"] == hung.lease.holder
        # recorded within a watch interval of the expiry (by the log's own stamps, not by when this
        # process, as loaded as the rest, looked)
        detected_after = datetime.fromisoformat(expired["occurred_at"]) - datetime.fromisoformat(expired["expired_at"])
        assert timedelta(0) <= detected_after < timedelta(seconds=2.0 + 3.0), detected_after  # watch interval + load
        with pytest.raises(tradestate.NotLeader):  # the hung engine wakes up: refused, never a silent write
            hung.record_intent("acct", "o1", "AAPL", "buy", "1", reference_price="10")
    finally:
        hung.close()
        projector.send_signal(signal.SIGTERM)
        projector.wait(30)
        out.close()
    log = (tmp_path / "projector.out").read_text()
    assert "engine e1 is dead" in log, log


def test_a_standby_is_listed_while_it_stands_by_and_leaves_the_list_when_it_takes_over(db_url, monkeypatch):
    import tradestate.engines as engines_module
    from tradestate.engines import Standby, engines

    active = tradestate.connect(db_url, engine_id="e1", lease_seconds=30, venue="sim")
    active.engine_started("e1")
    standby = Standby(db_url, "e1", lease_seconds=30, venue="sim")
    try:
        assert standby.wait(timeout=0.3) is None  # follows, checks in
        listed = cli("engines", "--db", db_url, "--json")
        assert listed.returncode == 0, listed.stderr
        rows = json.loads(listed.stdout)["engines"]
        assert [(r["engine_id"], r["state"], r["holder"], r["epoch"]) for r in rows] == [
            ("e1", "active", active.lease.holder, 1), ("e1", "standby", standby.holder, None)]
        assert 0 <= rows[1]["renewal_age_seconds"] < 30
        text = cli("engines", "--db", db_url)
        assert "standby" in text.stdout and standby.holder in text.stdout

        monkeypatch.setattr(engines_module, "STANDBY_LOST_SECONDS", 0.0)  # its last check-in is now "too old"
        time.sleep(0.05)
        store = open_store(db_url, create=False)
        try:
            assert [r["state"] for r in engines(store)] == ["active", "standby-lost"]
            monkeypatch.undo()
            active.engine_stopped("e1")
            takeover = standby.wait(timeout=10)
            assert takeover is not None and takeover.lease.epoch == 2
            assert [(r["state"], r["holder"]) for r in engines(store)] == [("active", standby.holder)]
        finally:
            store.close()
    finally:
        active.close()
        standby.close()
