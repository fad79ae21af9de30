"""Continuous reconciliation: ``reconcile_follow`` / ``tradestate reconcile --follow`` and the
live order flow's loop, against the simulated venue on real databases."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from decimal import Decimal as D

import pytest

from tradestate.adapters.brokers.base import VenueConnectionError
from tradestate.adapters.brokers.sim import SimulatedBroker
from tradestate.domain.errors import InvalidInput
from tradestate.domain.ids import order_stream_id
from tradestate.order_flow import OrderFlow
from tradestate.reconcile import StuckThresholds, reconcile, reconcile_follow

from tests.support.reconcile import ACCOUNT, connect, rows, stage_missed_fill


@pytest.fixture
def sim(tmp_path):
    return SimulatedBroker(account=ACCOUNT, state_path=str(tmp_path / "venue.json"))


def _types(url):
    return [t for t, _ in rows(url)]


def test_rounds_record_a_missing_order_once_and_flag_it_stuck(db_url, sim):
    with connect(db_url) as client:
        client.record_intent(ACCOUNT, "ghost", "AAPL", "buy", 1, order_type="limit", limit_price="10", venue="SIM")
        client.record_submitted(ACCOUNT, "ghost")  # the venue never heard of it
        seen = []
        done = reconcile_follow(client, [sim], every=0.05, rounds=3, on_round=seen.append,
                                stuck=StuckThresholds(submitted=None, missing_at_venue=0.0))
    assert [r.number for r in done] == [1, 2, 3] and seen == done
    assert done[0].stuck == []  # the first round records the discrepancy; the flag comes after it
    for r in done[1:]:
        [flag] = r.stuck
        assert flag["kind"] == "stuck_missing_at_venue" and flag["client_order_id"] == "ghost"
        assert r.results[0].status == "discrepancies" and r.results[0].corrective_event_ids == []
    types = _types(db_url)
    assert types.count("DiscrepancyRecorded") == 1  # pending, never repeated
    assert types.count("ReconciliationCompleted") == 3
    completed = [d for t, d in rows(db_url) if t == "ReconciliationCompleted"]
    assert completed[-1]["counts"]["stuck_orders"] == 1
    assert any(d["kind"] == "stuck_missing_at_venue" for d in completed[-1]["discrepancies"])


def test_a_partial_venue_answer_corrects_nothing_then_a_full_one_does(db_url, sim):
    with connect(db_url) as client:
        stage_missed_fill(client, sim)  # the venue filled o1; the log holds it submitted
        sim.update_faults(failing_queries={"positions"})  # orders and fills answer, positions do not
        [partial] = reconcile_follow(client, [sim], every=0.05, rounds=1,
                                     stuck=StuckThresholds(submitted=0.0, missing_at_venue=None))
        result = partial.results[0]
        assert result.status == "unknown" and result.corrective_event_ids == [] and result.withheld >= 1
        assert client.state.orders[order_stream_id(ACCOUNT, "o1")].status == "submitted"
        assert [f["kind"] for f in result.stuck] == ["stuck_submitted"]
        assert "OrderFilled" not in _types(db_url)
        # the one-shot command keeps its documented behaviour: what it could compare is corrected
        one_shot = reconcile(client, sim, dry_run=True)
        assert one_shot.status == "unknown" and one_shot.corrective_event_ids
        sim.update_faults(failing_queries=set())
        [full] = reconcile_follow(client, [sim], every=0.05, rounds=1)
        assert full.results[0].status == "corrected" and full.results[0].stuck == []
        assert client.state.orders[order_stream_id(ACCOUNT, "o1")].status == "filled"
    completed = [d for t, d in rows(db_url) if t == "ReconciliationCompleted"]
    assert completed[0]["status"] == "unknown" and completed[0]["corrective_event_ids"] == []
    assert completed[0]["counts"]["withheld_events"] == result.withheld
    assert _types(db_url).count("OrderFilled") == 1


def test_a_venue_that_fails_outright_records_nothing_and_is_tried_again(sqlite_url, tmp_path):
    class Unreachable(SimulatedBroker):
        calls = 0

        def snapshot(self, since=None, *, now):
            Unreachable.calls += 1
            raise VenueConnectionError("connection refused")

    venue = Unreachable(account=ACCOUNT, state_path=str(tmp_path / "venue.json"))
    with connect(sqlite_url) as client:
        stage_missed_fill(client, venue)
        head = client.position
        done = reconcile_follow(client, [venue], every=0.02, rounds=3)
        assert client.position == head  # nothing recorded
    assert Unreachable.calls == 3 and all(r.results == [] for r in done)
    assert all("connection refused" in next(iter(r.errors.values())) for r in done)


def test_a_disconnected_venue_is_unknown_every_round_and_changes_nothing(sqlite_url, sim):
    with connect(sqlite_url) as client:
        stage_missed_fill(client, sim)
        sim.update_faults(disconnected=True)
        done = reconcile_follow(client, [sim], every=0.02, rounds=2)
        assert [r.results[0].status for r in done] == ["unknown", "unknown"]
        assert client.state.orders[order_stream_id(ACCOUNT, "o1")].status == "submitted"
    assert "OrderFilled" not in _types(sqlite_url) and "CashBalanceRecorded" not in _types(sqlite_url)


def test_the_order_flow_loop_never_holds_up_trading_while_the_venue_is_slow(sqlite_url, sim):
    class Slow(SimulatedBroker):
        def snapshot(self, since=None, *, now):
            time.sleep(0.5)
            return super().snapshot(since, now=now)

    with connect(sqlite_url) as client:
        flow = OrderFlow(client, sim)
        rounds = []
        loop = flow.reconcile_continuously(every=0.05, adapter=Slow(account=ACCOUNT, state_path=sim.state_path),
                                           on_round=rounds.append)
        try:
            times = []
            deadline = time.monotonic() + 1.5
            n = 0
            while time.monotonic() < deadline:
                n += 1
                started = time.perf_counter()
                assert client.record_intent(ACCOUNT, f"o{n}", "AAPL", "buy", 1, venue="SIM").accepted
                times.append(time.perf_counter() - started)
                time.sleep(0.01)
            assert loop.wait_rounds(2, timeout=10)
        finally:
            loop.stop()
        assert loop.error is None and len(rounds) >= 2
        assert max(times) < 0.3, max(times)  # a 0.5 s venue query never sits in an append's way
        assert n > 20


def test_bad_follow_options_are_refused(sqlite_url, sim):
    with connect(sqlite_url) as client:
        with pytest.raises(InvalidInput):
            reconcile_follow(client, [sim], every=0)
        with pytest.raises(InvalidInput):
            StuckThresholds(submitted=-1)


# ------------------------------------------------------------------------------------ CLI


def cli(*args):
    return subprocess.run([sys.executable, "-m", "tradestate.cli", *args], capture_output=True, text=True,
                          timeout=60)


def test_cli_follow_runs_rounds_and_dry_run_appends_nothing(sqlite_url, sim):
    with connect(sqlite_url) as client:
        client.record_intent(ACCOUNT, "ghost", "AAPL", "buy", 1, order_type="limit", limit_price="10", venue="SIM")
        client.record_submitted(ACCOUNT, "ghost")
    base = ["reconcile", "--db", sqlite_url, "--broker", "sim", "--sim-state", sim.state_path, "--account", ACCOUNT]
    before = len(rows(sqlite_url))
    dry = cli(*base, "--follow", "--every", "50ms", "--rounds", "2", "--dry-run", "--json",
              "--stuck-submitted", "0s")
    lines = [json.loads(line) for line in dry.stdout.splitlines() if line.strip()]
    assert [r["round"] for r in lines] == [1, 2], dry.stderr
    assert all(r["results"][0]["dry_run"] for r in lines)
    assert lines[0]["stuck"][0]["kind"] == "stuck_submitted"
    assert dry.returncode == 1  # a stuck order is something to look at
    assert len(rows(sqlite_url)) == before
    real = cli(*base, "--follow", "--every", "0.05", "--rounds", "2", "--stuck-submitted", "off",
               "--missing-at-venue", "0s")
    assert "round 1" in real.stdout and "round 2" in real.stdout, real.stderr
    assert "stuck_missing_at_venue ghost" in real.stdout
    assert _types(sqlite_url).count("ReconciliationCompleted") == 2


@pytest.mark.parametrize("args, message", [
    (["--every", "soon"], "--every is not a duration"),
    (["--every", "0s"], "--every must be more than 0"),
    (["--stuck-submitted", "-5s"], "--stuck-submitted is not a duration"),
    (["--rounds", "0"], "--rounds must be at least 1"),
])
def test_cli_bad_follow_options_exit_2(sqlite_url, sim, args, message):
    connect(sqlite_url).close()
    done = cli("reconcile", "--db", sqlite_url, "--broker", "sim", "--sim-state", sim.state_path, "--account",
               ACCOUNT, "--follow", *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stdout + done.stderr
    assert rows(sqlite_url) == []


def test_a_stop_ends_the_loop_between_rounds(sqlite_url, sim):
    stop = threading.Event()
    with connect(sqlite_url) as client:
        timer = threading.Timer(0.3, stop.set)
        timer.start()
        started = time.monotonic()
        done = reconcile_follow(client, [sim], every=10, stop=stop)
        assert time.monotonic() - started < 3 and len(done) == 1
