"""The standby harness (``tradestate standby-chaos``) on real databases, and proof that its checks
can fail.

* The command (a real process running engine processes on one SQLite file, or one PostgreSQL
  schema) runs 10 takeovers per backend with a 1 s lease (CI speed; by hand the default is 3 s):
  every check must pass, takeover p95 under 5 s, acknowledged = stored, no duplicate, no
  double-writer interval.
* The split-brain episode: the active engine SIGSTOPped for longer than the lease, the standby
  (sometimes itself killed at a random moment) replaced, the paused one resumed: it must be refused
  and have appended nothing after the takeover.
* A log recorded by the same engine code, damaged on purpose (an acknowledged event deleted, an
  intent duplicated, an intent of an old epoch after the next epoch's ``LeaseAcquired``, an intent
  no engine tried, a resumed engine that was not refused): each check must name it.

``TRADESTATE_STANDBY_CHAOS_ROUNDS`` for more rounds, ``TRADESTATE_STANDBY_CHAOS_SEED`` to replay.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import uuid

import orjson
import pytest
from tradestate.adapters.store import open_store
from tradestate.domain.ids import order_stream_id
from tradestate.tools.standby_chaos import check_run, node, read_node_channel, run_standby_chaos
from tests.support.xdist import TIMING

pytestmark = TIMING

ROUNDS = int(os.environ.get("TRADESTATE_STANDBY_CHAOS_ROUNDS", "10"))
SEED = int(os.environ.get("TRADESTATE_STANDBY_CHAOS_SEED", str(random.randrange(1 << 30))))
CI_LEASE = 1.0


def run_command(url: str, tmp_path) -> dict:
    run = subprocess.run([sys.executable, "-m", "tradestate.cli", "standby-chaos", "--db", url, "--rounds", str(ROUNDS),
                          "--lease", str(CI_LEASE), "--pause-fraction", "0.3", "--seed", str(SEED), "--json",
                          "--workdir", str(tmp_path / "work")], capture_output=True, text=True, timeout=600)
    assert run.stdout, f"no report (exit {run.returncode}):\n{run.stderr[-3000:]}"
    report = json.loads(run.stdout)
    t = report["takeover"]["all"]
    f = report["figures"]
    print(f"\n{report['backend']}: {len(report['rounds'])} takeovers, p50 {t['p50']} s, p95 {t['p95']} s, "
          f"max {t['max']} s; {f['acknowledged']} acked, {f['stored']} stored, seed {SEED}")
    assert report["ok"] is True and run.returncode == 0, f"seed {SEED}: {report['failed']}\n{report['checks']}"
    assert len(report["rounds"]) == ROUNDS and t["n"] == ROUNDS
    assert t["p95"] < 5.0
    assert f["acknowledged"] == f["stored"] > 10 * ROUNDS
    assert f["duplicates"] == 0 and f["double_writer_intervals"] == []
    assert f["epochs"] >= ROUNDS + 1  # one per takeover (more when a standby died mid-takeover)
    assert f["resent"] >= ROUNDS and f["resent_recognised"] >= ROUNDS  # the last acked intent, every time
    assert all(r["epoch_after"] > r["epoch_before"] for r in report["rounds"])
    return report


@pytest.mark.slow
def test_standby_chaos_command_on_sqlite_takes_over_ten_times_and_passes_every_check(sqlite_url, tmp_path):
    run_command(sqlite_url, tmp_path)


@pytest.mark.slow
@pytest.mark.postgres
def test_standby_chaos_command_on_postgresql_takes_over_ten_times_and_passes_every_check(pg_url, tmp_path):
    run_command(pg_url, tmp_path)


@pytest.mark.slow
def test_split_brain_episodes_a_paused_engine_resumed_after_the_takeover_is_refused(db_url, tmp_path):
    """SIGSTOP the active engine past the lease (the standby takes over, or is itself killed at a
    random moment and a fresh one does), SIGCONT it: refused, nothing appended after the takeover."""
    report = run_standby_chaos(db_url, 4, seed=SEED, pause_fraction=1.0, standby_kill_fraction=0.5,
                               lease_seconds=CI_LEASE, workdir=str(tmp_path / "work"))
    assert report.ok, f"seed {SEED}: {report.checks}"
    f = report.figures
    assert [r.action.startswith("pause") for r in report.rounds] == [True] * 4
    assert f["paused"] == 4 and f["paused_refused"] == 4
    assert f["double_writer_intervals"] == [] and f["duplicates"] == 0 and f["acknowledged"] == f["stored"]


# ------------------------------------------------------------------------------ damaged logs


@pytest.fixture
def two_epochs(sqlite_url, tmp_path):
    """A log written by two engine processes' code in turn: epoch 1 (its lease then left to
    expire, as by a crash), then epoch 2 taken over by a standby that re-sent epoch 1's last intent."""
    tag = f"s{uuid.uuid4().hex[:6]}"
    first, second = tmp_path / "n0.jsonl", tmp_path / "n1.jsonl"
    common = dict(engine_id="e1", tag=tag, lease_seconds=0.5, pace=0)
    node(sqlite_url, str(first), incarnation=0, seed=1, limit=40, **common)
    node(sqlite_url, str(second), incarnation=1, seed=2, limit=40, replaces=str(first), **common)
    return sqlite_url, tag, {"n0": first, "n1": second}


def _channels(paths):
    return {name: read_node_channel(path) for name, path in paths.items()}


def _check(url, tag, paths, paused=()):
    with open_store(url) as store:
        return check_run(store, "e1", _channels(paths), tag=tag, paused=list(paused))


def _sql(url: str, sql: str, params: tuple = ()) -> None:
    """Damage the log as a broken store (or raw SQL) would: its append-only triggers dropped first."""
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'ts_events'"):
            conn.execute(f'DROP TRIGGER "{name}"')
        assert conn.execute(sql, params).rowcount == 1


def _append_raw(url: str, stream: str, type_name: str, payload: dict) -> int:
    """Append a row the way a writer that ignores the fence would: at the next position."""
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        head = conn.execute("SELECT coalesce(max(position), 0) FROM ts_events").fetchone()[0]
        version = conn.execute("SELECT coalesce(max(stream_version), 0) FROM ts_events WHERE stream_id = ?",
                               (stream,)).fetchone()[0]
        recorded = conn.execute("SELECT recorded_at FROM ts_events WHERE position = ?", (head,)).fetchone()[0]
        conn.execute("INSERT INTO ts_events (position, stream_id, stream_version, type, data, recorded_at) "
                     "VALUES (?, ?, ?, ?, ?, ?)", (head + 1, stream, version + 1, type_name, orjson.dumps(payload),
                                                   recorded))
    return head + 1


def _intent_payload(url: str, coid: str) -> dict:
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        data = conn.execute("SELECT data FROM ts_events WHERE type = 'OrderIntentRecorded' LIMIT 1").fetchone()[0]
    payload = orjson.loads(data)
    return {**payload, "client_order_id": coid, "event_id": str(uuid.uuid4())}


def test_a_clean_two_epoch_log_passes_and_the_takeover_recognised_the_re_sent_intent(two_epochs):
    url, tag, paths = two_epochs
    channels = _channels(paths)
    assert channels["n0"].epoch == 1 and channels["n1"].epoch == 2 and channels["n1"].active["how"] == "takeover"
    resent = [c for c in channels["n1"].acked() if c.get("resend")]
    assert resent and all(c["dup"] for c in resent)
    problems, figures = _check(url, tag, paths)
    assert not any(problems.values()), problems
    assert figures["epochs"] == 2 and figures["acknowledged"] == figures["stored"] == 80


def test_checks_name_a_deleted_acknowledged_event(two_epochs):
    url, tag, paths = two_epochs
    victim = read_node_channel(paths["n0"]).acked()[-1]
    _sql(url, "DELETE FROM ts_events WHERE position = ?", (victim["pos"],))
    problems, figures = _check(url, tag, paths)
    assert problems["acknowledged"] and figures["stored"] == figures["acknowledged"] - 1


def test_checks_name_a_duplicated_intent(two_epochs):
    url, tag, paths = two_epochs
    intent = next(c for c in read_node_channel(paths["n1"]).acked() if c["op"] == "intent" and not c["dup"])
    _append_raw(url, order_stream_id(intent["acct"], intent["coid"]), "OrderIntentRecorded",
                _intent_payload(url, intent["coid"]) | {"account": intent["acct"]})
    problems, figures = _check(url, tag, paths)
    assert any("intents at" in p for p in problems["no duplicates"]) and figures["duplicates"] == 1


def test_checks_name_an_old_epoch_appending_after_the_next_epochs_lease_acquired(two_epochs):
    """Epoch 1 appending after LeaseAcquired(2): a double-writer interval, whether the old engine
    saw it acknowledged (side channel ``ok``) or only tried it."""
    url, tag, paths = two_epochs
    for coid, acknowledged in ((f"{tag}-late-acked", True), (f"{tag}-late-tried", False)):
        payload = _intent_payload(url, coid)
        stream = order_stream_id(payload["account"], coid)
        position = _append_raw(url, stream, "OrderIntentRecorded", payload)
        with open(paths["n0"], "ab") as side:  # as the epoch-1 engine would have written it
            n = 10_000 + position
            side.write(orjson.dumps({"t": "try", "n": n, "epoch": 1, "op": "intent", "acct": payload["account"],
                                     "coid": coid}) + b"\n")
            if acknowledged:
                side.write(orjson.dumps({"t": "ok", "n": n, "epoch": 1, "at": 0.0, "pos": position, "dup": False,
                                         "acc": True}) + b"\n")
    problems, figures = _check(url, tag, paths)
    found = problems["one writer per epoch"]
    assert any(f"{tag}-late-acked acknowledged under epoch 1" in p for p in found), found
    assert any(f"{tag}-late-tried at" in p and "tried only by epoch(s) [1]" in p for p in found), found
    (interval,) = figures["double_writer_intervals"]
    assert interval["epoch"] == 1 and interval["calls"] == 3  # the acknowledged one counted as call and as stored
    assert interval["newer_at"] < interval["first"]


def test_checks_name_an_intent_no_engine_tried_and_epochs_out_of_order(two_epochs):
    url, tag, paths = two_epochs
    _append_raw(url, order_stream_id("chaos-a", f"{tag}-foreign"), "OrderIntentRecorded",
                _intent_payload(url, f"{tag}-foreign") | {"account": "chaos-a"})
    with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
        data = conn.execute("SELECT data FROM ts_events WHERE type = 'LeaseAcquired' ORDER BY position LIMIT 1"
                            ).fetchone()[0]
    _append_raw(url, "engine-e1", "LeaseAcquired", orjson.loads(data) | {"event_id": str(uuid.uuid4())})
    problems, _ = _check(url, tag, paths)
    found = problems["one writer per epoch"]
    assert any("foreign" in p and "tried by no engine" in p for p in found), found
    assert any("LeaseAcquired of epoch 1" in p and "follows epoch 2" in p for p in found), found


def test_checks_name_a_resumed_engine_that_was_not_refused_or_appended_after_the_takeover(two_epochs):
    url, tag, paths = two_epochs
    problems, _ = _check(url, tag, paths, paused=["n0"])  # n0 never wrote ``deposed``
    assert any("never refused" in p for p in problems["deposed"])
    with open(paths["n0"], "ab") as side:
        side.write(orjson.dumps({"t": "deposed", "n": 99, "epoch": 1, "reason": "NotLeader: epoch 2 is current",
                                 "at": 0.0}) + b"\n")
    problems, _ = _check(url, tag, paths, paused=["n0"])
    assert not problems["deposed"], problems["deposed"]
    # ... but it had one more call acknowledged, at a position after the takeover
    late = next(c for c in read_node_channel(paths["n1"]).acked() if not c["dup"])
    with open(paths["n0"], "ab") as side:
        side.write(orjson.dumps({"t": "try", "n": 98, "epoch": 1, **{k: late[k] for k in ("op", "acct", "coid")}})
                   + b"\n")
        side.write(orjson.dumps({"t": "ok", "n": 98, "epoch": 1, "at": 0.0, "pos": late["pos"], "dup": False,
                                 "acc": True}) + b"\n")
    problems, _ = _check(url, tag, paths, paused=["n0"])
    assert any("appended 1 calls after the takeover" in p for p in problems["deposed"]), problems["deposed"]
    assert problems["one writer per epoch"]


def test_takeover_percentiles_are_nearest_rank():
    from tradestate.tools.standby_chaos import percentile

    assert percentile([], 0.95) is None
    assert percentile([2.0], 0.5) == percentile([2.0], 0.95) == 2.0
    assert (percentile(list(range(1, 11)), 0.5), percentile(list(range(1, 11)), 0.95)) == (5, 10)
    assert percentile(list(range(1, 201)), 0.95) == 190
