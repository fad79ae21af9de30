"""Coalesced commits on a real SQLite file and a real PostgreSQL: concurrent callers share one
transaction, and each still gets its own durable positions, its own version check and its own
error; a failed commit fails every caller of its batch and writes nothing; a fence lost fails
them all; each caller's events stay contiguous and in order."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.db import pg_base_url, schema_of
from tradestate.adapters.store import new_event, open_store
from tradestate.adapters.store.coalesce import CommitCoalescer
from tradestate.adapters.store.lease import Fence, Leases
from tradestate.domain.errors import (
    AppendFailed,
    CommitInterrupted,
    CommitOutcomeUnknown,
    ConcurrencyConflict,
    NotLeader,
)


def _ev(stream: str, version: int, n: int = 0):
    return new_event(stream, version, "Note", b'{"n": %d}' % n)


class GatedLog:
    """The log, with its first append held until ``gate`` opens: callers arriving meanwhile queue
    up and form the next batch, deterministically."""

    def __init__(self, log, fail_with: BaseException | None = None):
        self._log = log
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.sizes: list[int] = []
        self.fail_with = fail_with

    def __getattr__(self, name):
        return getattr(self._log, name)

    def append(self, events, *, fence=None):
        self.sizes.append(len(events))
        if len(self.sizes) == 1:
            self.entered.set()
            assert self.gate.wait(20), "the gate was never opened"
        elif self.fail_with is not None:
            raise self.fail_with
        return self._log.append(events, fence=fence)


def _run(fn, *args):
    """``fn(*args)`` on a thread; returns (thread, outcome dict with 'result' or 'error')."""
    out: dict = {}

    def go():
        try:
            out["result"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            out["error"] = e

    t = threading.Thread(target=go)
    t.start()
    return t, out


def _batch(coalescer, gated, appends: list[list], fence=None):
    """Hold a leader's commit, queue ``appends`` behind it (one caller each), then let go; the
    outcomes, in order."""
    leader = _run(lambda: coalescer.append([_ev(f"lead-{uuid.uuid4()}", 1)], fence=fence))
    assert gated.entered.wait(10)
    callers = []
    for events in appends:
        callers.append(_run(lambda ev=events: coalescer.append(ev, fence=fence)))
        deadline = time.monotonic() + 10
        while len(coalescer._queue) < len(callers) and time.monotonic() < deadline:
            time.sleep(0.001)
    assert len(coalescer._queue) == len(appends)
    gated.gate.set()
    for t, _ in [leader, *callers]:
        t.join(20)
    return leader[1], [out for _, out in callers]


def _contiguous(store) -> list:
    rows = list(store.trading.iter_rows(0))
    assert [r[0] for r in rows] == list(range(1, store.trading.head() + 1)), "a hole in the log"
    return rows


def test_concurrent_callers_are_all_durable_and_visible_when_they_return(store):
    coalescer = CommitCoalescer(store.trading)
    seen: list[tuple[str, int]] = []
    problems: list[str] = []
    lock = threading.Lock()

    def caller(i: int) -> None:
        for k in range(40):
            stream = f"c{i}-{k}"
            (a,) = coalescer.append([_ev(stream, 1, i)])
            found = store.trading.read_stream(stream)  # visible to any reader once returned
            if [e.position for e in found] != [a.position]:
                problems.append(f"{stream}: {found}")
            with lock:
                seen.append((stream, a.position))
        store.trading.release_connection()  # a thread that is done gives its pinned connection back

    # 8 threads: each one reading pins a PostgreSQL connection, and the pool holds 10.
    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    coalescer.close()
    assert not problems
    assert len(seen) == 8 * 40 and len({p for _, p in seen}) == len(seen)
    rows = _contiguous(store)
    assert {(r[1], r[0]) for r in rows} == set(seen)
    assert coalescer.stats.callers == len(seen) and coalescer.stats.largest > 1  # commits were shared
    assert coalescer.stats.batches < len(seen)


def test_one_callers_conflict_fails_only_that_caller(store):
    store.trading.append([_ev("taken", 1)])
    gated = GatedLog(store.trading)
    coalescer = CommitCoalescer(gated)
    _, outs = _batch(coalescer, gated, [[_ev("a", 1)], [_ev("taken", 1)], [_ev("b", 1), _ev("b", 2)], [_ev("c", 1)]])
    assert isinstance(outs[1].get("error"), ConcurrencyConflict)
    assert all("result" in outs[i] for i in (0, 2, 3)), outs
    assert coalescer.stats.rounds == 1 and coalescer.stats.conflicts == 1
    rows = _contiguous(store)  # no hole: the failed round's positions were voided in its transaction
    assert [(r[1], r[2]) for r in rows if r[1] in ("a", "b", "c", "taken")] == [
        ("taken", 1), ("a", 1), ("b", 1), ("b", 2), ("c", 1)]
    assert [e.position for e in store.trading.read_stream("b")] == [a.position for a in outs[2]["result"]]


def test_two_callers_claiming_one_version_in_a_batch_one_wins_without_a_round_trip(store):
    gated = GatedLog(store.trading)
    coalescer = CommitCoalescer(gated)
    _, outs = _batch(coalescer, gated, [[_ev("x", 1, 1)], [_ev("x", 1, 2)], [_ev("x", 2, 3)], [_ev("y", 1)],
                                        [_ev("z", 1)], [_ev("z", 2)]])
    assert "result" in outs[0] and "result" in outs[3]
    assert isinstance(outs[1]["error"], ConcurrencyConflict)
    # x@2 may have been decided on the refused x@1: refused as well (a conflict is always safe)
    assert isinstance(outs[2]["error"], ConcurrencyConflict)
    assert "result" in outs[4] and "result" in outs[5]  # z@2 follows z@1, accepted before it
    assert gated.sizes == [1, 4] and coalescer.stats.rounds == 0
    assert [e.state for e in store.trading.read_stream("x")] == [b'{"n": 1}']
    assert [e.originator_version for e in store.trading.read_stream("z")] == [1, 2]


@pytest.mark.parametrize("error", [CommitOutcomeUnknown("cut"), CommitInterrupted("lost"), AppendFailed("down")])
def test_a_failed_commit_gives_every_caller_of_its_batch_its_own_typed_error(store, error):
    gated = GatedLog(store.trading, fail_with=error)
    coalescer = CommitCoalescer(gated)
    lead, outs = _batch(coalescer, gated, [[_ev(f"f{i}", 1)] for i in range(5)])
    assert "result" in lead
    errors = [out["error"] for out in outs]
    assert all(type(e) is type(error) and str(e) == str(error) for e in errors)
    assert len({id(e) for e in errors}) == len(errors)  # each caller raises its own copy
    assert not any(store.trading.read_stream(f"f{i}") for i in range(5))


@pytest.mark.postgres
def test_a_connection_killed_mid_commit_fails_the_whole_batch_and_writes_nothing(pg_url):
    store = open_store(pg_url)
    schema = schema_of(pg_url)
    try:
        gated = GatedLog(store.trading)
        coalescer = CommitCoalescer(gated)
        # Another session holds version "blocker"@1 uncommitted: the batch's insert waits on it.
        with psycopg.connect(pg_base_url(), autocommit=False) as holder, \
                psycopg.connect(pg_base_url(), autocommit=True) as admin:
            holder.execute(f'INSERT INTO "{schema}".ts_events (position, stream_id, stream_version, type, data)'
                           " VALUES (1000000, 'blocker', 1, 'Note', '\\x7b7d')")
            leader = _run(lambda: coalescer.append([_ev("lead", 1)]))
            assert gated.entered.wait(10)
            callers = [_run(lambda i=i: coalescer.append([_ev(f"k{i}", 1)])) for i in range(4)]
            callers.append(_run(lambda: coalescer.append([_ev("blocker", 1)])))
            while len(coalescer._queue) < 5:
                time.sleep(0.001)
            gated.gate.set()
            leader[0].join(10)
            pid = None
            for _ in range(500):
                # only the backend our holder blocks: other tests' backends share this server
                row = admin.execute("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                                    " AND query LIKE '%%ts_events_append%%'"
                                    " AND %s = ANY(pg_blocking_pids(pid))",
                                    (holder.info.backend_pid,)).fetchone()
                if row:
                    pid = row[0]
                    break
                time.sleep(0.01)
            assert pid is not None, "the batch never waited on the held version"
            assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
            for t, _ in callers:
                t.join(20)
            holder.rollback()
        errors = [out.get("error") for _, out in callers]
        assert all(isinstance(e, CommitInterrupted) for e in errors), errors
        assert len({id(e) for e in errors}) == 5
        assert not any(store.trading.read_stream(f"k{i}") for i in range(4))
        assert not store.trading.read_stream("blocker")
        # The log's own append still works after the lost connection.
        coalescer.append([_ev("after", 1)])
        assert len(store.trading.read_stream("after")) == 1
    finally:
        store.close()


def test_a_lost_fence_fails_every_caller_and_nothing_lands_after_the_takeover(store):
    leases = Leases.of(store)

    def build(kind):
        return lambda previous, epoch: (kind, b'{"epoch": %d}' % epoch)

    first = leases.acquire("e1", "a", 0.6, stream="engine-e1", event=build("LeaseAcquired"))
    fence = Fence("e1", first.epoch, "a")
    coalescer = CommitCoalescer(store.trading)
    stop = threading.Event()
    outcomes: list[tuple[str, object]] = []
    lock = threading.Lock()

    def caller(i: int) -> None:
        k = 0
        while not stop.is_set():
            k += 1
            stream = f"f{i}-{k}"
            try:
                coalescer.append([_ev(stream, 1)], fence=fence)
                outcome: object = "ok"
            except NotLeader as e:
                outcome = e
            with lock:
                outcomes.append((stream, outcome))
            if outcome != "ok":
                break
        store.trading.release_connection()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.8)  # the lease runs out (never renewed) while they append
    second = leases.acquire("e1", "b", 5, stream="engine-e1", event=build("LeaseAcquired"))
    time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(20)
    takeover = store.trading.read_stream("engine-e1")[-1].position
    assert second.epoch == first.epoch + 1
    landed = {s for s, o in outcomes if o == "ok"}
    refused = [o for _, o in outcomes if o != "ok"]
    assert landed and refused and all(isinstance(o, NotLeader) for o in refused)
    for stream, outcome in outcomes:
        rows = store.trading.read_stream(stream)
        if outcome == "ok":
            assert len(rows) == 1 and rows[0].position < takeover
        else:
            assert rows == []
    assert all(r[0] < takeover for r in store.trading.iter_rows(0) if r[1].startswith("f"))


def test_each_callers_events_are_contiguous_and_in_its_order(store):
    coalescer = CommitCoalescer(store.trading)
    results: dict[str, list[int]] = {}

    def caller(i: int) -> None:
        for k in range(10):
            stream = f"m{i}-{k}"
            appended = coalescer.append([_ev(stream, v, v) for v in range(1, 1 + (i % 4) + 1)])
            results[stream] = [a.position for a in appended]
        store.trading.release_connection()

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    rows = {r[0]: r for r in _contiguous(store)}
    for stream, positions in results.items():
        assert positions == list(range(positions[0], positions[0] + len(positions)))
        assert [(rows[p][1], rows[p][2]) for p in positions] == [(stream, v) for v in range(1, len(positions) + 1)]


def test_a_caller_waits_a_bounded_time_and_a_withdrawn_one_appends_nothing(store):
    gated = GatedLog(store.trading)
    coalescer = CommitCoalescer(gated, wait_timeout=0.2)
    leader = _run(lambda: coalescer.append([_ev("lead", 1)]))
    assert gated.entered.wait(10)
    t, out = _run(lambda: coalescer.append([_ev("late", 1)]))
    t.join(5)
    assert isinstance(out["error"], AppendFailed) and not isinstance(out["error"], CommitInterrupted)
    gated.gate.set()
    leader[0].join(10)
    assert "result" in leader[1]
    coalescer.close()
    assert store.trading.read_stream("late") == []


def test_async_callers_share_commits_without_blocking_the_loop(store):
    gated = GatedLog(store.trading)
    coalescer = CommitCoalescer(gated)

    async def main():
        ticks = 0
        leader = asyncio.create_task(coalescer.append_async([_ev("lead", 1)]))
        await asyncio.get_running_loop().run_in_executor(None, gated.entered.wait, 10)
        flows = [asyncio.create_task(coalescer.append_async([_ev(f"a{i}", 1), _ev(f"a{i}", 2)])) for i in range(64)]
        while len(coalescer._queue) < 64:  # the loop runs while the commit is held
            ticks += 1
            await asyncio.sleep(0.001)
        for _ in range(5):
            ticks += 1
            await asyncio.sleep(0.001)
        gated.gate.set()
        return ticks, await leader, await asyncio.gather(*flows)

    ticks, lead, results = asyncio.run(main())
    assert ticks >= 5 and len(lead) == 1
    assert gated.sizes == [1, 128]  # the 64 flows shared one commit
    for i, appended in enumerate(results):
        assert [e.position for e in store.trading.read_stream(f"a{i}")] == [a.position for a in appended]
    coalescer.close()


def test_a_lone_caller_commits_inline_in_its_own_thread(store):
    calls: list[str] = []
    log = store.trading

    class Spy:
        def __getattr__(self, name):
            return getattr(log, name)

        def append(self, events, *, fence=None):
            calls.append(threading.current_thread().name)
            return log.append(events, fence=fence)

    coalescer = CommitCoalescer(Spy())
    for i in range(3):
        coalescer.append([_ev(f"lone{i}", 1)])
    assert calls == [threading.current_thread().name] * 3 and coalescer._thread is None


# ---------------------------------------------------------------- interleavings, against a model

_claims = st.lists(st.lists(st.tuples(st.sampled_from("pqr"), st.integers(1, 3)), min_size=1, max_size=3),
                   min_size=1, max_size=8)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(existing=st.fixed_dictionaries({s: st.integers(0, 2) for s in "pqr"}), callers=_claims)
def test_a_batch_accepts_exactly_the_callers_a_sequential_version_check_would(sqlite_url, existing, callers):
    """Each caller claims (stream, first version) pairs, two versions each; the batch must accept
    a caller iff each of its versions is above the stream's highest (in the log, or claimed by a
    caller accepted before it) and it does not continue a refused caller's versions; the log must then hold exactly the accepted
    callers' events, each caller's together and in its order."""
    store = open_store(sqlite_url)
    try:
        tag = uuid.uuid4().hex[:6]
        for s, n in existing.items():
            if n:
                store.trading.append([_ev(f"{tag}{s}", v) for v in range(1, n + 1)])
        appends = []
        for claims in callers:
            events, seen = [], set()
            for s, v in claims:
                if s in seen:
                    continue
                seen.add(s)
                events += [_ev(f"{tag}{s}", v), _ev(f"{tag}{s}", v + 1)]
            appends.append(events)
        gated = GatedLog(store.trading)
        coalescer = CommitCoalescer(gated)
        _, outs = _batch(coalescer, gated, appends)
        model = {f"{tag}{s}": set(range(1, n + 1)) for s, n in existing.items()}
        after_refused: set[tuple[str, int]] = set()
        expected = []
        for events in appends:
            ok = all(e.originator_version > max(model[e.originator_id], default=0)
                     and (e.originator_id, e.originator_version) not in after_refused for e in events[::2])
            expected.append(ok)
            for e in events:
                if ok:
                    model[e.originator_id].add(e.originator_version)
            if not ok:
                after_refused |= {(e.originator_id, e.originator_version + 1) for e in events[1::2]}
        assert [("result" in o) for o in outs] == expected, outs
        assert all(isinstance(o["error"], ConcurrencyConflict) for o in outs if "error" in o)
        for s, versions in model.items():
            assert [e.originator_version for e in store.trading.read_stream(s)] == sorted(versions)
        rows = {r[0]: r for r in _contiguous(store)}
        for events, out in zip(appends, outs):
            if "result" in out:
                positions = [a.position for a in out["result"]]
                assert positions == list(range(positions[0], positions[0] + len(events)))
                assert [(rows[p][1], rows[p][2]) for p in positions] == [
                    (e.originator_id, e.originator_version) for e in events]
        coalescer.close()
    finally:
        store.close()
