"""A hot standby is a first-class reader: every read-only command works against it.

A real primary + synchronous hot standby (``tradestate.tools.pg_cluster``) is started for the
module; a log with orders, fills and projected read models is written on the primary and read
on the standby through the ``tradestate`` command itself (``state``, ``verify`` and
``replay state`` are covered in test_pg_durability.py; here ``replay timeline/trace/export/diff/report``,
``serve``, ``engines`` and ``backup``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import datetime

import pytest

from tradestate.adapters.store import PgUrl, open_store
from tradestate.client import connect
from tests.support.pg_cluster import started_cluster
from tradestate.tools import pg_cluster

# one pytest-xdist worker runs this module: its tests share one module-scoped cluster
pytestmark = [pytest.mark.postgres, pytest.mark.xdist_group("standby_reads")]

ACCT = "acct-1"
TRADESTATE = os.path.join(os.path.dirname(sys.executable), "tradestate")


def tradestate(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TRADESTATE, *args], capture_output=True, text=True, timeout=timeout)


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, (done.args, done.stdout[-800:], done.stderr[-800:])
    return done


@dataclass
class Replicated:
    cluster: pg_cluster.PgCluster
    primary_url: str
    standby_url: str
    head: int
    written: datetime  # an instant inside the log


@pytest.fixture(scope="module")
def replicated():
    for cluster in started_cluster():
        schema = "t_" + uuid.uuid4().hex[:10]
        primary_url = cluster.primary.url(schema=schema)
        client = connect(primary_url, venue="sim")
        try:
            for i in range(3):
                client.record_intent(ACCT, f"o-{i}", "AAPL", "buy", "10", reference_price="100")
                client.record_fill(ACCT, f"o-{i}", f"x-{i}", "10", "100")
            crashed = connect(primary_url, engine_id="e1", lease_seconds=0.5, venue="sim")
            crashed.close()  # stops renewing without a clean stop: e1 is dead once its lease runs out
            head = client.store.trading.head()
            rows = list(client.store.trading.iter_rows())
            written = rows[len(rows) // 2][5]  # recorded_at of an event in the middle of the log
        finally:
            client.store.close()
        ok(tradestate("project", "--once", "--db", primary_url))
        cluster.wait_replayed()
        yield Replicated(cluster, primary_url, cluster.standby.url(schema=schema), head, written)


def test_the_standby_is_really_read_only(replicated):
    with replicated.cluster.standby.connect() as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)


def test_replay_timeline_trace_export_diff_and_report_on_the_standby(replicated, tmp_path):
    url = replicated.standby_url
    timeline = json.loads(ok(tradestate("replay", "timeline", "--db", url, "--around",
                                        replicated.written.isoformat(), "--window", "1h", "--json")).stdout)
    text = json.dumps(timeline)
    assert all(f"o-{i}" in text for i in range(3)) and "OrderFilled" in text
    trace = json.loads(ok(tradestate("replay", "trace", "o-1", "--account", ACCT, "--db", url, "--json")).stdout)
    assert "OrderFilled" in json.dumps(trace) and "x-1" in json.dumps(trace)
    out = tmp_path / "events.jsonl"
    ok(tradestate("replay", "export", "--db", url, "--out", str(out)))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == replicated.head
    diff = json.loads(ok(tradestate("replay", "diff", "--db", url, "--from-position", "1",
                                    "--to-position", str(replicated.head), "--json")).stdout)
    assert "AAPL" in json.dumps(diff)
    report = tmp_path / "postmortem.html"
    ok(tradestate("replay", "report", "--db", url, "--around", replicated.written.isoformat(), "--window", "1h",
                  "--out", str(report)))
    assert "o-1" in report.read_text()


def test_serve_on_the_standby_answers_positions_and_readyz(replicated):
    port = pg_cluster.free_port()
    proc = subprocess.Popen([TRADESTATE, "serve", "--db", replicated.standby_url, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()[-2000:] if proc.stdout else ""
            try:
                with urllib.request.urlopen(base + "/livez", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "serve never came up on the standby"
                time.sleep(0.2)
        with urllib.request.urlopen(base + "/readyz", timeout=10) as r:
            ready = json.loads(r.read())
            assert r.status == 200 and ready["status"] == "ready"
            assert ready["log_head"] == replicated.head and ready["projection_position"] == replicated.head
        with urllib.request.urlopen(base + "/positions", timeout=10) as r:
            positions = json.loads(r.read())
        assert [(p["account"], p["symbol"], str(p["qty"])) for p in positions] == [(ACCT, "AAPL", "30")]
        # The engines too; the server cannot record e1's expiry on a read-only standby, and serves on.
        with urllib.request.urlopen(base + "/engines", timeout=10) as r:
            engines = json.loads(r.read())
        assert [(e["engine_id"], e["state"], e["expiry_recorded"]) for e in engines] == [("e1", "dead", False)]
        time.sleep(2.5)  # a watch tick or two, refused by the standby
        with urllib.request.urlopen(base + "/health", timeout=10) as r:
            health = json.loads(r.read())
        assert r.status == 200 and health["status"] == "degraded" and health["dead_engines"] == 1
        assert proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_engines_on_the_standby(replicated):
    time.sleep(0.5)  # e1's lease has run out by now
    listed = json.loads(ok(tradestate("engines", "--db", replicated.standby_url, "--json")).stdout)
    assert [(e["engine_id"], e["state"], e["lease"]) for e in listed["engines"]] == [("e1", "dead", "expired")]
    assert listed["dead"] == ["e1"]


def test_backup_of_the_standby_restores_on_the_primary_and_verifies(replicated, tmp_path):
    backup = tmp_path / "standby.tsbk"
    made = json.loads(ok(tradestate("backup", "--db", replicated.standby_url, "--to", str(backup), "--json")).stdout)
    assert made["ok"] and made["manifest"]["logs"]["ts_events"]["head"] == replicated.head
    fresh = replicated.cluster.primary.url(schema="r_" + uuid.uuid4().hex[:10])
    ok(tradestate("restore", "--from", str(backup), "--db", fresh, "--json"))
    ok(tradestate("verify", "--db", fresh))
    with open_store(fresh, create=False) as restored, open_store(replicated.primary_url, create=False) as original:
        assert restored.trading.head() == replicated.head
        assert [r[:4] for r in restored.trading.iter_rows()] == [r[:4] for r in original.trading.iter_rows()]
    assert PgUrl.parse(fresh).schema != PgUrl.parse(replicated.primary_url).schema
