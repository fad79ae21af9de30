"""The kill -9 harness (``tradestate chaos``) on real databases, and proof that its checks can fail.

* The command itself (a real process) SIGKILLs its engine and projector children 25 times per
  backend (``TRADESTATE_CHAOS_KILLS`` for more, ``TRADESTATE_CHAOS_SEED`` to replay) and must
  report every check passed, with enough happening between kills to have tested something.
* A log recorded by the same engine code is then damaged with raw SQL the way a broken store
  would damage it (an acknowledged event deleted, an intent duplicated, a torn row, a gap, a
  read-model row off by one) and the checker must name each problem; a torn last line of the side
  channel must not count as an acknowledgement.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import orjson
import psycopg
import pytest
from tradestate.adapters.store import open_store
from tradestate.tools.chaos import (
    FreshFold,
    LogChecker,
    check_projection,
    engine,
    read_side_channel,
    verify_log,
)
from tests.support.xdist import TIMING

pytestmark = TIMING

KILLS = int(os.environ.get("TRADESTATE_CHAOS_KILLS", "25"))
SEED = int(os.environ.get("TRADESTATE_CHAOS_SEED", str(random.randrange(1 << 30))))


def run_command(url: str, tmp_path) -> dict:
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "tradestate.cli", "chaos", "--db", url, "--kills", str(KILLS),
                          "--seed", str(SEED), "--json", "--workdir", str(tmp_path / "chaos")],
                         capture_output=True, text=True, timeout=600)
    assert run.stdout, f"no report (exit {run.returncode}):\n{run.stderr[-3000:]}"
    report = json.loads(run.stdout)
    print(f"\n{report['backend']}: {report['kills']} kills in {time.monotonic() - started:.1f} s, "
          f"head {report['head']}, {report['calls']} acknowledged calls, {report['in_flight']} in flight at a kill "
          f"({report['in_flight_landed']} had committed), seed {SEED}")
    failed = {name: t for name, t in report["checks"].items() if t["failed"]}
    assert run.returncode == (0 if not failed else 1)
    assert not failed, f"seed {SEED} (TRADESTATE_CHAOS_SEED): {failed}\n" + "\n".join(report["problems"])
    assert report["ok"] is True and run.returncode == 0
    assert report["kills"] == KILLS and report["checks"]["killed"]["passed"] == KILLS
    assert report["projector_kills"] == KILLS
    for name in ("acknowledged", "not torn", "no gaps", "projection = fold", "no duplicates", "projection at kill"):
        assert report["checks"][name]["passed"] >= KILLS, name
    # enough happened between kills for the checks to mean something
    assert report["calls"] > 5 * KILLS, report
    assert report["in_flight"] >= KILLS * 3 // 4, "kills hardly ever landed during a call"
    assert report["resent_acked"] >= KILLS * 3 // 4
    assert report["events"] >= report["calls"]
    return report


@pytest.mark.slow
def test_chaos_command_on_sqlite_passes_every_check_after_every_kill(sqlite_url, tmp_path):
    run_command(sqlite_url, tmp_path)


@pytest.mark.slow
@pytest.mark.postgres
def test_chaos_command_on_postgresql_passes_every_check_after_every_kill(pg_url, tmp_path):
    run_command(pg_url, tmp_path)


def test_chaos_command_prints_a_table_for_humans(sqlite_url):
    run = subprocess.run([sys.executable, "-m", "tradestate.cli", "chaos", "--db", sqlite_url, "--kills", "3",
                          "--no-projector", "--fold-every", "2"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "tradestate chaos: 3 kills on sqlite" in run.stdout
    for name in ("acknowledged", "not torn", "no gaps", "projection = fold", "no duplicates"):
        assert name in run.stdout
    assert "compared with a fresh fold after 2 kills" in " ".join(run.stdout.split())  # the 2nd and the last
    assert "PASSED" in run.stdout and "Traceback" not in run.stderr


# ------------------------------------------------------------------- the checks can fail


def recorded_log(url: str, tmp_path, calls: int = 80) -> list[dict]:
    """A log written by the harness's engine (run to a limit, not killed) and its acknowledged calls."""
    acks = tmp_path / "acks.jsonl"
    engine(url, str(acks), tag="t", incarnation=0, seed=5, limit=calls)
    side = read_side_channel(acks)
    assert side.ready and not side.error and not side.pending
    acked = side.acked()
    assert len(acked) >= calls
    return acked


def sqlite_exec(url: str, sql: str, params: tuple = ()) -> None:
    import sqlite3

    conn = sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
    try:
        # damage as a broken store (or someone with raw SQL) would: the log's append-only
        # triggers are dropped in this test database first
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'ts_events'"):
            conn.execute(f'DROP TRIGGER "{name}"')
        assert conn.execute(sql, params).rowcount == 1
    finally:
        conn.close()


def checks_named(problems: list[tuple[str, str]]) -> set[str]:
    return {check for check, _ in problems}


def test_a_clean_log_passes_and_its_side_channel_is_read_exactly(sqlite_url, tmp_path):
    acked = recorded_log(sqlite_url, tmp_path)
    with open_store(sqlite_url) as store:
        assert verify_log(store, acked) == []
    ops = {c["op"] for c in acked}
    assert ops == {"intent", "submit", "ack", "fill"}
    # a kill inside the write of an ``ok`` line: that call is not acknowledged, it is in flight
    path = tmp_path / "torn.jsonl"
    path.write_bytes(b'{"t":"ready","pid":1,"head":0}\n{"t":"try","n":1,"op":"submit","acct":"a","coid":"c"}\n'
                     b'{"t":"ok","n":1,"po')
    side = read_side_channel(path)
    assert side.torn_tail and side.ready and side.oks == {} and [c["n"] for c in side.pending] == [1]


def test_checker_reports_a_deleted_acknowledged_event_and_the_gap_it_leaves(sqlite_url, tmp_path):
    acked = recorded_log(sqlite_url, tmp_path)
    fill = next(c for c in acked if c["op"] == "fill")
    sqlite_exec(sqlite_url, "DELETE FROM ts_events WHERE position = ?", (fill["pos"],))
    with open_store(sqlite_url) as store:
        checker = LogChecker(store, hole_wait=0.2)
        checker.scan()
        checker.check_acked(acked)
        checker.check_duplicates()
        problems = checker.take_problems()
    assert {"acknowledged", "no gaps"} <= checks_named(problems), problems
    assert any(f"exec {fill['exec']}" in p and str(fill["pos"]) in p for c, p in problems if c == "acknowledged")


def test_checker_reports_a_duplicated_intent_and_a_duplicated_fill(sqlite_url, tmp_path):
    acked = recorded_log(sqlite_url, tmp_path)
    intent = next(c for c in acked if c["op"] == "intent" and c["acc"])
    fill = next(c for c in acked if c["op"] == "fill")
    # the same rows again at the next positions and versions: what a store without optimistic
    # concurrency (or a client without idempotency) would produce on a re-send
    for call in (intent, fill):
        sqlite_exec(sqlite_url,
                    "INSERT INTO ts_events (position, stream_id, stream_version, type, data, recorded_at) "
                    "SELECT (SELECT max(position) + 1 FROM ts_events), e.stream_id, "
                    "(SELECT max(stream_version) + 1 FROM ts_events WHERE stream_id = e.stream_id), "
                    "e.type, e.data, e.recorded_at FROM ts_events e WHERE e.position = ?", (call["pos"],))
    with open_store(sqlite_url) as store:
        problems = verify_log(store, acked)
    dupes = [p for c, p in problems if c == "no duplicates"]
    assert any(intent["coid"] in p and "2 intents" in p for p in dupes), problems
    assert any(fill["exec"] in p and "2 fills" in p for p in dupes), problems


def test_checker_reports_a_torn_row_and_a_half_written_transaction(sqlite_url, tmp_path):
    acked = recorded_log(sqlite_url, tmp_path)
    with open_store(sqlite_url) as store:
        head = store.trading.head()
        row = next(r for r in store.trading.iter_rows(0) if r[3] == "OrderFilled")
    torn = bytes(row[4])[: len(row[4]) // 2]  # the payload cut in half
    sqlite_exec(sqlite_url, "INSERT INTO ts_events VALUES (?, ?, ?, ?, ?, ?)",
                (head + 1, row[1], 99, "OrderFilled", torn, row[5].isoformat()))
    intent = next(c for c in acked if c["op"] == "intent")
    # the intent's risk decision (same transaction) gone: only half of the transaction is there
    sqlite_exec(sqlite_url, "DELETE FROM ts_events WHERE position = ?", (intent["pos"] + 1,))
    with open_store(sqlite_url) as store:
        checker = LogChecker(store, hole_wait=0.2)
        checker.scan()
        checker.check_duplicates()
        problems = [p for c, p in checker.take_problems() if c == "not torn"]
    assert any(f"row {head + 1}" in p and "does not decode" in p for p in problems), problems
    assert any("account-" in p and "version 2 follows version 0" in p for p in problems), problems
    assert any(f"intent at {intent['pos']} has 0 risk decisions" in p for p in problems), problems


def test_checker_reports_a_read_model_that_differs_from_a_fresh_fold(sqlite_url, tmp_path):
    recorded_log(sqlite_url, tmp_path)
    with open_store(sqlite_url) as store:
        fresh = FreshFold(sqlite_url, str(tmp_path))
        try:
            assert check_projection(store, fresh) == []
            sqlite_exec(sqlite_url, "UPDATE ts_positions SET qty = '1' || qty WHERE rowid = "
                                    "(SELECT min(rowid) FROM ts_positions)")
            problems = check_projection(store, fresh)
        finally:
            fresh.close()
    assert len(problems) == 1 and "ts_positions" in problems[0], problems


@pytest.mark.postgres
def test_checker_on_postgresql_reports_a_deleted_event_even_after_the_reader_voids_its_hole(pg_url, tmp_path):
    acked = recorded_log(pg_url, tmp_path, calls=40)
    with open_store(pg_url) as store:
        assert verify_log(store, acked) == []
        ack = next(c for c in acked if c["op"] == "ack")
        schema = store.trading.datastore.schema
    base = pg_url.split("?")[0]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # past the append-only triggers
        deleted = conn.execute(f'DELETE FROM "{schema}".ts_events WHERE position = %s', (ack["pos"],)).rowcount
    assert deleted == 1
    with open_store(pg_url) as store:
        problems = verify_log(store, acked)  # the reader waits gap_timeout, then voids the hole
        (void,) = [r for r in store.trading.iter_rows(ack["pos"] - 1, ack["pos"])]
    assert void[3] == "$void"  # the gap is gone: a $void row holds the position...
    checks = dict(problems)  # ...but the event is still missing, and its stream has a version gap
    assert "no gaps" not in checks and f"position {ack['pos']}" in checks["acknowledged"], problems
    assert "version 4 follows version 2" in checks["not torn"], problems
