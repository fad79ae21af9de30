"""The failover harness on a real primary/standby pair started by the test (initdb, pg_basebackup,
pg_ctl promote on loopback ports; as root through ``runuser -u postgres``).

* synchronous replication, two failovers: the engine (its own process, a multi-host URL) carries
  on after each one by itself, nothing it saw acknowledged is lost, nothing is booked twice;
* asynchronous replication through the CLI (``--json``): whatever the failover lost, the report
  is consistent (lost = acknowledged - stored, every loss seen by the engine as ``LogRewound``);
* the checker counts an acknowledged call missing from the log as lost (on SQLite, no cluster);
* where Patroni and etcd are installed: a managed failover of three nodes loses nothing either.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tradestate.adapters.store import open_store
from tradestate.cli.main import app
from tradestate.tools.failover import (DEFAULT_BINDIR, FailoverReport, FailoverRound, check_log, engine,
                                      read_engine_log, run_failover)
from tests.support.xdist import TIMING

pytestmark = TIMING


@pytest.fixture(autouse=True)
def _server_binaries() -> None:
    """The harness starts its own clusters: without server binaries these tests skip, except where
    PostgreSQL tests are required (CI), where they fail."""
    if not all((Path(DEFAULT_BINDIR) / tool).exists() for tool in ("initdb", "pg_ctl", "pg_basebackup")):
        message = f"PostgreSQL server binaries not in {DEFAULT_BINDIR}"
        if os.environ.get("TRADESTATE_REQUIRE_PG") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.slow
def test_synchronous_failovers_lose_nothing_and_the_engine_carries_on() -> None:
    report = run_failover(2, seed=7, min_run=0.3, max_run=0.8)

    assert report.engine_error is None
    assert [r.round for r in report.rounds] == [1, 2]
    assert [(r.killed, r.promoted) for r in report.rounds] == [("node1", "node2"), ("node2", "node1")]
    assert all(r.acked_after > 0 for r in report.rounds), report.rounds  # progress after each failover
    assert all(r.unavailable_s is not None and r.stalled_s >= r.unavailable_s - 0.25 for r in report.rounds)
    assert report.acknowledged > 0
    assert report.stored == report.acknowledged
    assert report.lost == 0 and report.lost_calls == []
    assert report.duplicates == 0
    assert report.gaps == 0 and report.misplaced == 0
    assert report.rewinds == 0
    assert report.problems == []
    assert report.ok
    d = report.as_dict()
    assert d["unavailability_p50_s"] is not None and d["unavailability_p95_s"] >= d["unavailability_p50_s"]


@pytest.mark.slow
def test_asynchronous_failover_report_is_consistent() -> None:
    run = CliRunner().invoke(app, ["failover-chaos", "--failover", "2", "--async", "--seed", "11", "--json"])
    d = json.loads(run.stdout)

    assert d["mode"] == "asynchronous"
    assert len(d["rounds"]) == 2 and all(r["acked_after"] > 0 for r in d["rounds"])
    assert d["engine_error"] is None
    assert d["acknowledged"] > 0
    assert d["lost"] == d["acknowledged"] - d["stored"]
    assert len(d["lost_calls"]) == min(d["lost"], 20)
    if d["lost"]:  # what an asynchronous failover lost was the log going backwards under the engine
        assert d["rewinds"] >= 1 and d["rewound_lost"] >= 1
    assert d["duplicates"] == 0 and d["gaps"] == 0
    # losses are what asynchronous mode shows, not a failure of the run
    assert d["ok"] is True and run.exit_code == 0, run.stdout


def test_an_acknowledged_call_missing_from_the_log_counts_as_lost(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/log.db"
    acks = tmp_path / "acks.jsonl"
    engine(url, str(acks), tag="t", seed=1, limit=12)
    acked = read_engine_log(acks).acked
    assert len(acked) == 12
    never_stored = {**acked[-1], "op": "fill", "exec": "X-never", "pos": 10_000}
    store = open_store(url)
    try:
        report = FailoverReport(mode="synchronous", seed=0, rounds_asked=1, rounds=[
            FailoverRound(round=1, killed="node1", promoted="node2", unavailable_s=0.5, since_stop_s=0.5,
                          first_failure_s=0.0, acked_after=3, promote_s=0.2, rebuild_s=0.5)])
        check_log(store, acked + [never_stored], report)
    finally:
        store.close()

    assert (report.acknowledged, report.stored, report.lost) == (13, 12, 1)
    assert report.lost_calls == [f"fill {never_stored['acct']}/{never_stored['coid']} exec X-never "
                                 "(acknowledged at position 10000)"]
    assert report.duplicates == 0 and report.gaps == 0 and report.misplaced == 0
    assert not report.ok  # a synchronous run that lost an acknowledged call fails
    report.mode = "asynchronous"
    assert report.ok  # ... an asynchronous one shows the loss


@pytest.mark.skipif(not (shutil.which("patroni") and shutil.which("etcd")),
                    reason="Patroni and etcd not installed (apt-get install patroni etcd-server)")
@pytest.mark.slow
def test_a_patroni_managed_failover_loses_nothing() -> None:
    report = run_failover(1, seed=3, manager="patroni", min_run=0.3, max_run=0.6)

    assert report.manager == "patroni" and report.engine_error is None
    assert len(report.rounds) == 1 and report.rounds[0].killed != report.rounds[0].promoted
    assert report.rounds[0].acked_after > 0
    assert report.acknowledged > 0 and report.stored == report.acknowledged and report.lost == 0
    assert report.duplicates == 0 and report.gaps == 0 and report.rewinds == 0
    assert report.ok


def test_after_a_failover_readers_void_the_sequence_jump_at_once() -> None:
    """The new primary's sequence resumes up to 32 values past the old primary's last position:
    no transaction on it can fill that hole, so a reader voids it at once, not after gap_timeout."""
    from tests.support.pg_cluster import started_cluster
    from tradestate.adapters.store.base import VOID_TYPE
    from tests.store.store_contract import ev

    for cluster in started_cluster():
        url = cluster.primary.url(schema="jump")
        with open_store(url) as store:
            for i in range(3):
                store.trading.append([ev(f"s{i}", 1)])
        new = cluster.failover(keep_synchronous=False)
        with open_store(new.url(schema="jump")) as store:
            log = store.trading
            log.gap_timeout = 30.0
            (appended,) = log.append([ev("after", 1)])
            assert appended.position > 4, "no sequence jump: the test shows nothing"
            deadline = time.monotonic() + 3.0
            rows: list = []
            while len(rows) < appended.position and time.monotonic() < deadline:
                rows += list(log.iter_rows(len(rows)))
                time.sleep(0.02)
            assert [r[0] for r in rows] == list(range(1, appended.position + 1)), "the jump held the reader"
            assert [r[3] for r in rows[3:-1]] == [VOID_TYPE] * (appended.position - 4)
            assert rows[-1][1] == "after"
