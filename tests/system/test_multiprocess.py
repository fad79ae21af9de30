"""Several OS processes on one database, as several engines (and a follower) would be.

Workers live in ``tests.support.helpers_procs`` (importable under ``spawn``); each opens its own
connection in its own process and waits on a barrier so that they all race at once. The
PostgreSQL runs are the point (its positions come from a sequence and commit out of order); the
same scenarios also run on one SQLite file shared by the processes.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
import threading
import time
import uuid
from collections import Counter

import orjson
import psycopg
import pytest
from tests.support.db import with_schema

import tradestate
from tests.support.helpers_procs import append_worker, intent_worker, open_worker, same_intent_worker
from tradestate.adapters.store import VOID_STREAM, VOID_TYPE, open_store
from tradestate.domain.ids import account_stream_id, order_stream_id

pytestmark = [pytest.mark.slow]

CTX = multiprocessing.get_context("spawn")
PG = pytest.param("postgresql", marks=pytest.mark.postgres)


@pytest.fixture(params=["sqlite", PG])
def mp_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/shared.db"
    return request.getfixturevalue("pg_url")


def run_workers(target, args_per_worker: list[tuple], timeout: float = 60.0) -> list:
    """Start one spawned process per args tuple (a barrier and a queue are appended), collect
    one result from each, and fail with the worker's traceback if any failed."""
    n = len(args_per_worker)
    barrier = CTX.Barrier(n)
    results_q = CTX.Queue()
    procs = [CTX.Process(target=target, args=(*args, barrier, results_q), daemon=True) for args in args_per_worker]
    for p in procs:
        p.start()
    results: dict[int, object] = {}
    errors = []
    deadline = time.monotonic() + timeout
    try:
        while len(results) + len(errors) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"workers timed out: {len(results)} of {n} reported (stacks of hung workers on stderr)")
            try:
                status, worker, payload = results_q.get(timeout=min(remaining, 1.0))
            except queue_module.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise AssertionError(f"worker died without reporting: exit codes {[p.exitcode for p in dead]}")
                continue
            if status == "ok":
                results[worker] = payload
            else:
                errors.append(payload)
                break  # the worker aborted the barrier; the others are told, not waited for
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join(5)
    if errors:
        raise AssertionError("worker failed:\n" + "\n".join(errors))
    return [results[i] for i in sorted(results)]


def all_rows(log) -> list[tuple]:
    rows = list(log.iter_rows())
    assert [r[0] for r in rows] == list(range(1, log.head() + 1)), "the log has a hole"
    for r in rows:
        if r[3] == VOID_TYPE:
            assert r[1] == VOID_STREAM
    return rows


# ------------------------------------------------------------ (0) processes creating one file


@pytest.fixture(params=["sqlite", PG])
def fresh_urls(request, tmp_path):
    """25 databases nobody has opened yet: SQLite files, or PostgreSQL schemas."""
    if request.param == "sqlite":
        yield [f"sqlite:///{tmp_path}/fresh-{i}.db" for i in range(25)]
        return
    server = request.getfixturevalue("pg_server")
    schemas = [f"t_fresh_{uuid.uuid4().hex[:10]}" for _ in range(25)]
    yield [with_schema(server, schema) for schema in schemas]
    with psycopg.connect(server, autocommit=True) as conn:
        for schema in schemas:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_processes_opening_a_new_database_at_once_all_succeed(fresh_urls):
    """Engines started together on a new database race to set it up (SQLite: switch the file to
    WAL; both: create the tables, triggers and indexes). SQLite answers a journal-mode change
    that meets another connection's lock with "database is locked" at once, without its busy
    handler: this failed about one start in fifteen."""
    assert run_workers(open_worker, [(fresh_urls, w) for w in range(4)]) == [len(fresh_urls)] * 4


# ------------------------------------------------------------------------ (a) a shared limit


@pytest.mark.parametrize("limit_name", ["max_open_orders", "max_daily_trades"])
def test_engines_in_processes_never_pass_a_shared_limit(mp_url, limit_name):
    account, limit, workers, per_worker = "acct-shared", 10, 6, 15
    with tradestate.connect(mp_url) as admin:
        admin.set_risk_limit(account, limit_name, limit)

    reports = run_workers(intent_worker, [(mp_url, account, w, per_worker) for w in range(workers)])
    results = [r for rep in reports for r in rep["results"]]
    assert len(results) == workers * per_worker

    accepted = [r for r in results if r["accepted"]]
    refused = [r for r in results if not r["accepted"]]
    assert len(accepted) == limit, f"{len(accepted)} intents passed a limit of {limit}"
    assert all(r["reasons"] == [limit_name] for r in refused), Counter(tuple(r["reasons"]) for r in refused)
    assert not any(r["duplicate"] for r in results)
    assert len({r["coid"] for r in results}) == len(results)
    assert len({r["position"] for r in results}) == len(results), "two intents share a position"

    with open_store(mp_url) as store:
        rows = all_rows(store.trading)
    real = [r for r in rows if r[3] != VOID_TYPE]
    count = Counter(r[3] for r in real)
    assert count["OrderIntentRecorded"] == workers * per_worker
    assert count["RiskCheckPassed"] == limit
    assert count["IntentRejectedByRisk"] == workers * per_worker - limit
    # one intent row per client order id, at the position the worker was told
    intents = [orjson.loads(r[4]) | {"_pos": r[0]} for r in real if r[3] == "OrderIntentRecorded"]
    assert Counter(i["client_order_id"] for i in intents).most_common(1)[0][1] == 1
    assert {i["client_order_id"]: i["_pos"] for i in intents} == {r["coid"]: r["position"] for r in results}
    # what the workers were told is what the log says
    passed = {orjson.loads(r[4])["client_order_id"] for r in real if r[3] == "RiskCheckPassed"}
    assert passed == {r["coid"] for r in accepted}
    refusals = {orjson.loads(r[4])["client_order_id"] for r in real if r[3] == "IntentRejectedByRisk"}
    assert refusals == {r["coid"] for r in refused}
    # the account stream is one gap-free sequence of versions
    acct_versions = [r[2] for r in real if r[1] == account_stream_id(account)]
    assert acct_versions == list(range(1, limit + 2))

    with tradestate.connect(mp_url) as fresh:
        risk = fresh.risk_state(account)
        if limit_name == "max_open_orders":
            assert risk["open_orders"] == limit
        assert risk["trades_today"] == limit
        assert len(fresh.open_orders(account)) == limit
        statuses = Counter(fresh.order(account, r["coid"])["status"] for r in results)
        assert statuses == {"new": limit, "refused": workers * per_worker - limit}


# ---------------------------------------------------------------- (b) a follower under writers


def test_follower_sees_every_event_once_in_order_while_processes_write(mp_url):
    writers, per_writer = 8, 400
    seen: list[tuple] = []
    problems: list[str] = []
    done = threading.Event()

    def follow() -> None:
        try:
            with open_store(mp_url) as store:
                log = store.trading
                last = 0
                idle_after_done = 0
                give_up = time.monotonic() + 120
                while True:
                    if time.monotonic() > give_up:
                        problems.append(f"follower stuck at {last} (head {log.head()})")
                        return
                    got = 0
                    for row in log.iter_rows(last):
                        if row[0] != last + 1:
                            problems.append(f"skipped from {last} to {row[0]}")
                            return
                        seen.append(row)
                        last = row[0]
                        got += 1
                    if done.is_set():
                        # writers finished: read until the head is reached (and a bit more)
                        if last >= log.head():
                            idle_after_done += 1
                            if idle_after_done > 2:
                                return
                    if not got:
                        time.sleep(0.002)
        except BaseException as e:  # noqa: BLE001
            problems.append(repr(e))

    # make the tables before the follower starts
    open_store(mp_url).close()
    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    try:
        reports = run_workers(append_worker, [(mp_url, w, per_writer) for w in range(writers)], timeout=75)
    finally:
        done.set()
        reader.join(timeout=30)
    assert not reader.is_alive(), "the follower did not finish"
    assert not problems, problems

    committed = [c for rep in reports for c in rep["committed"]]
    assert sum(rep["conflicts"] for rep in reports) == writers * (per_writer // 50)

    with open_store(mp_url) as store:
        final = all_rows(store.trading)
        head = store.trading.head()

    positions = [r[0] for r in seen]
    assert positions == list(range(1, head + 1)), "the follower missed or repeated a position"
    key = lambda r: (r[0], r[1], r[2], r[3], bytes(r[4]))  # noqa: E731
    assert [key(r) for r in seen] == [key(r) for r in final]

    seen_events = [(r[1], r[2], bytes(r[4])) for r in seen if r[3] != VOID_TYPE]
    assert len(seen_events) == len(set(seen_events)), "an event was seen twice"
    assert set(seen_events) == {(s, v, bytes(d)) for s, v, d in committed}
    assert len(seen_events) == len(committed)
    assert not any(s.endswith("-x") for s, _, _ in seen_events), "part of a failed append became visible"
    # within a writer, its events appear in the order it appended them
    for w in range(writers):
        mine = [s for s, _, _ in seen_events if s.startswith(f"w{w}-")]
        assert mine == [s for s, _, _ in committed if s.startswith(f"w{w}-")]


# --------------------------------------------------------------- (c) the same intent, twice at once


def test_the_same_intent_from_two_processes_is_recorded_once(mp_url):
    account, rounds = "acct-dup", 15
    reports = run_workers(same_intent_worker, [(mp_url, account, w, rounds) for w in range(2)])
    first, second = reports
    for a, b in zip(first, second, strict=True):
        assert a["coid"] == b["coid"]
        assert a["position"] == b["position"], a["coid"]
        assert a["event_id"] == b["event_id"], a["coid"]
        assert a["accepted"] and b["accepted"]
        assert a["duplicate"] != b["duplicate"], f"{a['coid']}: exactly one call records it, the other finds it"

    with open_store(mp_url) as store:
        real = [r for r in all_rows(store.trading) if r[3] != VOID_TYPE]
    intents = [r for r in real if r[3] == "OrderIntentRecorded"]
    assert len(intents) == rounds
    assert Counter(r[1] for r in intents) == {order_stream_id(account, f"dup-{i}"): 1 for i in range(rounds)}
    assert sum(1 for r in real if r[3] == "RiskCheckPassed") == rounds
    assert {r[0] for r in intents} == {a["position"] for a in first}
    with tradestate.connect(mp_url) as fresh:
        assert fresh.risk_state(account)["trades_today"] == rounds
        assert len(fresh.open_orders(account)) == rounds
