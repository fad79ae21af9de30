"""Three-way reconciliation end to end: the log (SQLite), the simulated broker's API and a FIX 4.4
drop copy served by the local acceptor over TCP; the runner and ``tradestate reconcile --drop-copy``."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal as D

import pytest

from tests.support.fake_fix import FakeDropCopyServer
from tests.support.reconcile import ACCOUNT, connect, stage_missed_fill
from tradestate.adapters.brokers.fix_dropcopy import drop_copy_adapter
from tradestate.adapters.brokers.sim import SimulatedBroker
from tradestate.domain.errors import InvalidInput
from tradestate.three_way import reconcile_three_way

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sim(tmp_path):
    return SimulatedBroker(account=ACCOUNT, state_path=str(tmp_path / "venue.json"))


@pytest.fixture
def fix_server():
    with FakeDropCopyServer() as srv:
        yield srv


def stage_fill_in_three_views(sqlite_url, sim, fix_server, tmp_path):
    """Order o1 filled at the venue: the API and the drop copy have the fill, the log does not.
    Returns the drop copy's adapter."""
    oid = fix_server.new_order("o1", "AAPL", "buy", "10", "100")
    fix_server.fill(oid, "10", "100", exec_id="E1")
    with connect(sqlite_url) as client:
        stage_missed_fill(client, sim)
    return drop_copy_adapter(fix_server.url(str(tmp_path / "fix")), account=ACCOUNT, venue="SIM")


def test_log_behind_is_corrected_and_an_api_that_differs_is_an_alert(sqlite_url, sim, fix_server, tmp_path):
    oid = fix_server.new_order("o1", "AAPL", "buy", "10", "100")
    fix_server.fill(oid, "10", "100", exec_id="E1")
    drop = drop_copy_adapter(fix_server.url(str(tmp_path / "fix")), account=ACCOUNT, venue="SIM")
    with connect(sqlite_url) as client:
        stage_missed_fill(client, sim)  # the API and the drop copy have the fill, the log does not
        first = reconcile_three_way(client, sim, drop)
        verdicts = {(r.kind, r.key): (r.verdict, r.differs) for r in first.report.rows}
        assert verdicts == {("order", "o1"): ("log_differs", "log"), ("position", "AAPL"): ("log_differs", "log")}
        assert not first.withheld and first.result.status == "corrected" and not first.result.dry_run
        assert client.state.orders[next(iter(client.state.orders))].filled_qty == D(10)

        sim.stage_position("AAPL", D(13), D(100))  # the API now says 13; the log and drop copy say 10
        head = client.store.trading.head()
        second = reconcile_three_way(client, sim, drop)
        (alert,) = second.report.alerts
        assert (alert.kind, alert.key, alert.verdict, alert.differs) == ("position", "AAPL", "api_differs", "api")
        assert alert.values == {"log": "10", "api": "13", "drop_copy": "10"}
        assert second.withheld and second.result.dry_run
        assert second.result.corrective_event_ids  # a two-way run would have "corrected" the position
        assert client.store.trading.head() == head  # nothing appended: no blind correction
        assert second.as_dict()["three_way"]["withheld"] is True


def cli(*args):
    return subprocess.run([sys.executable, "-m", "tradestate.cli", *args], capture_output=True, text=True, timeout=60)


def test_cli_reconcile_with_a_drop_copy(sqlite_url, sim, fix_server, tmp_path):
    oid = fix_server.new_order("o1", "AAPL", "buy", "10", "100")
    fix_server.fill(oid, "10", "100", exec_id="E1")
    with connect(sqlite_url) as client:
        stage_missed_fill(client, sim)
    base = ["reconcile", "--db", sqlite_url, "--broker", "sim", "--sim-state", sim.state_path, "--account", ACCOUNT,
            "--drop-copy", fix_server.url(str(tmp_path / "fix"))]
    done = cli(*base, "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["status"] == "corrected" and out["three_way"]["withheld"] is False
    assert {r["key"]: r["differs"] for r in out["three_way"]["rows"]} == {"o1": "log", "AAPL": "log"}

    sim.stage_position("AAPL", D(13), D(100))
    alert = cli(*base)
    assert alert.returncode == 1, alert.stderr
    assert "api_differs" in alert.stdout and "nothing was corrected" in alert.stdout
    bad = cli(*base[:-1], "fix://127.0.0.1:1?sender=DESK")
    assert bad.returncode == 2 and "target=" in bad.stderr + bad.stdout
    ack = cli(*base, "--ack")
    assert ack.returncode == 2 and "--ack" in ack.stderr + ack.stdout


def test_every_follow_round_compares_three_views(sqlite_url, sim, fix_server, tmp_path):
    from tradestate.reconcile import reconcile_follow

    drop = stage_fill_in_three_views(sqlite_url, sim, fix_server, tmp_path)
    with connect(sqlite_url) as client:
        (first,) = reconcile_follow(client, [sim], every=0.01, rounds=1, drop_copies=[drop])
        (where,) = first.three_way
        assert first.three_way[where]["withheld"] is False and first.withheld_by_alerts == []
        assert {r["key"]: r["differs"] for r in first.three_way[where]["rows"]} == {"o1": "log", "AAPL": "log"}
        assert first.results[0].status == "corrected"  # the log was behind: corrected as a two-way run would
        sim.stage_position("AAPL", D(13), D(100))  # only the API says 13
        head = client.store.trading.head()
        rounds = reconcile_follow(client, [sim], every=0.01, rounds=2, drop_copies=[drop])
        assert [r.withheld_by_alerts for r in rounds] == [[where], [where]]  # every round, not the first only
        assert all(r.results[0].dry_run for r in rounds) and "three_way" in rounds[-1].as_dict()
        assert client.store.trading.head() == head  # no blind correction, round after round
    other = drop_copy_adapter(fix_server.url(str(tmp_path / "fix2")), account="acct-2", venue="SIM")
    with connect(sqlite_url) as client, pytest.raises(InvalidInput, match="matches no broker account"):
        reconcile_follow(client, [sim], every=0.01, rounds=1, drop_copies=[other])


def test_cli_follow_with_a_drop_copy(sqlite_url, sim, fix_server, tmp_path):
    stage_fill_in_three_views(sqlite_url, sim, fix_server, tmp_path)
    sim.stage_position("AAPL", D(13), D(100))
    base = ["reconcile", "--db", sqlite_url, "--broker", "sim", "--sim-state", sim.state_path, "--account", ACCOUNT,
            "--drop-copy", fix_server.url(str(tmp_path / "fix")), "--follow", "--every", "10ms", "--rounds", "2"]
    done = cli(*base, "--json")
    assert done.returncode == 1, done.stderr  # the last round withheld its corrections: look at it
    rounds = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rounds) == 2 and all(r["three_way"] for r in rounds)
    for r in rounds:
        (three,) = r["three_way"].values()
        assert three["withheld"] and three["alerts"] == 1
    text = cli(*base)
    assert text.returncode == 1 and text.stdout.count("nothing was corrected") == 2  # both rounds
    assert "position AAPL: log 0, api 13, drop copy 10: all_differ (alert)" in text.stdout
    assert "(dry run: not appended)" in text.stdout


def test_recover_reconciles_three_ways(sqlite_url, sim, fix_server, tmp_path):
    from tradestate.adapters.store import open_store
    from tradestate.recovery import recover

    drop = stage_fill_in_three_views(sqlite_url, sim, fix_server, tmp_path)
    sim.stage_position("AAPL", D(13), D(100))  # the API alone says 13
    report, client = recover(open_store(sqlite_url), adapters=[sim], drop_copies=[drop], verify="none")
    with client:
        (entry,) = report.reconciliations
        assert entry["three_way"]["withheld"] is True and entry["dry_run"] is True
        step = next(s for s in report.steps if s.name == "reconcile")
        assert step.status == "failed" and "the API and the drop copy disagree" in step.detail
        assert not report.ready
        assert client.state.orders[next(iter(client.state.orders))].filled_qty == 0  # nothing corrected
    sim.stage_position("AAPL", D(10), D(100))  # the API agrees with the drop copy again: the log is behind
    report, client = recover(open_store(sqlite_url), adapters=[sim], drop_copies=[drop], verify="none")
    with client:
        (entry,) = report.reconciliations
        assert entry["three_way"]["withheld"] is False and entry["status"] == "corrected"
        assert next(s for s in report.steps if s.name == "reconcile").status != "failed"
        assert client.state.orders[next(iter(client.state.orders))].filled_qty == D(10)


def test_cli_recover_with_a_drop_copy(sqlite_url, sim, fix_server, tmp_path):
    stage_fill_in_three_views(sqlite_url, sim, fix_server, tmp_path)
    sim.stage_position("AAPL", D(13), D(100))
    base = ["recover", "--db", sqlite_url, "--broker", "sim", "--sim-state", sim.state_path, "--account", ACCOUNT,
            "--no-verify", "--drop-copy", fix_server.url(str(tmp_path / "fix"))]
    done = cli(*base, "--json")
    assert done.returncode == 1, done.stderr
    (entry,) = json.loads(done.stdout)["reconciliations"]
    assert entry["three_way"]["withheld"] is True
    bad = cli(*base[:-1], "fix://127.0.0.1:1?sender=DESK")
    assert bad.returncode == 2 and "target=" in bad.stderr + bad.stdout
