"""The event logs themselves, on a real SQLite file and a real PostgreSQL (``db_url`` runs both).

What is checked: positions are gap-free and increasing, appends are atomic, a failed append
leaves no hole, reads are bounded and in order, the data survives a reopen, SQLite is durable
(WAL + synchronous=FULL), the ``eventsourcing`` recorder interface keeps the library's meaning,
and the PostgreSQL reader's hole handling (stop at a hole, void it after ``gap_timeout``, never
void a row whose writer is still committing).
"""

from __future__ import annotations

import sqlite3
import threading
import time

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, Notification, StoredEvent

from tradestate.adapters.store import VOID_STREAM, VOID_TYPE, open_store, new_event, sqlite_path
from tradestate.domain.errors import ConcurrencyConflict


def ev(stream: str, version: int, type_name: str = "T", data: bytes | None = None) -> StoredEvent:
    return new_event(stream, version, type_name, data if data is not None else f'{{"s":"{stream}","v":{version}}}'.encode())


def rows_of(log, after: int = 0, stop: int | None = None, **kw) -> list[tuple]:
    return list(log.iter_rows(after, stop, **kw))


def positions_of(rows) -> list[int]:
    return [r[0] for r in rows]


def real(rows) -> list[tuple]:
    return [r for r in rows if r[3] != VOID_TYPE]


def assert_no_holes(log) -> list[tuple]:
    """Every position 1..head is present (as an event or a $void row) and iter_rows returns them all."""
    head = log.head()
    rows = rows_of(log)
    assert positions_of(rows) == list(range(1, head + 1)), "the log has a hole or iter_rows stopped early"
    for r in rows:
        if r[3] == VOID_TYPE:
            assert r[1] == VOID_STREAM
    return rows


@pytest.fixture
def log(store):
    return store.trading


# ---------------------------------------------------------------------------------- appending


def test_append_returns_gap_free_increasing_positions_and_aware_recorded_at(log):
    assert log.head() == 0
    assert rows_of(log) == []
    appended = []
    for i in range(1, 6):
        appended += log.append([ev(f"s{i}", 1)])
    appended += log.append([ev("s1", 2), ev("m", 1), ev("s2", 2)])
    appended += log.append([ev("s3", 2)])

    assert [a.position for a in appended] == list(range(1, 10))
    assert log.head() == 9
    for a in appended:
        assert a.recorded_at.tzinfo is not None and a.recorded_at.utcoffset() is not None, a
    # one transaction, one clock reading
    assert appended[5].recorded_at == appended[6].recorded_at == appended[7].recorded_at

    rows = rows_of(log)
    assert positions_of(rows) == list(range(1, 10))
    # what append returned is what is stored
    for a, r in zip(appended, rows, strict=True):
        assert r[0] == a.position
        assert r[5] == a.recorded_at
        assert r[5].tzinfo is not None and r[5].utcoffset() is not None
    assert [(r[1], r[2]) for r in rows] == [
        ("s1", 1), ("s2", 1), ("s3", 1), ("s4", 1), ("s5", 1), ("s1", 2), ("m", 1), ("s2", 2), ("s3", 2)
    ]
    assert rows[6][3] == "T" and bytes(rows[6][4]) == b'{"s":"m","v":1}'
    assert log.append([]) == []
    assert log.head() == 9


@pytest.mark.parametrize("conflict_at", [0, 1, 2])
def test_multi_event_append_is_atomic_on_conflict(log, conflict_at):
    log.append([ev("a", 1)])
    before = real(rows_of(log))
    batch = [ev("b", 1), ev("c", 1)]
    batch.insert(conflict_at, ev("a", 1, data=b'{"other":true}'))
    with pytest.raises(ConcurrencyConflict):
        log.append(batch)
    assert real(rows_of(log)) == before, "part of a conflicting append was written"
    assert log.read_stream("b") == [] and log.read_stream("c") == []
    assert [e.state for e in log.read_stream("a")] == [b'{"s":"a","v":1}']
    assert_no_holes(log)
    # the same streams, without the conflict, append fine afterwards
    appended = log.append([ev("b", 1), ev("c", 1)])
    assert [a.position for a in appended] == [log.head() - 1, log.head()]
    assert [e.originator_id for e in log.read_stream("b") + log.read_stream("c")] == ["b", "c"]


def test_conflict_inside_one_batch_appends_nothing(log):
    log.append([ev("a", 1)])
    with pytest.raises(ConcurrencyConflict):
        log.append([ev("x", 1), ev("x", 1, data=b"{}")])
    assert log.read_stream("x") == []
    assert [r[1] for r in real(rows_of(log))] == ["a"]
    assert_no_holes(log)


def test_failed_appends_leave_no_holes(store, log):
    log.append([ev("a", 1)])
    with pytest.raises(ConcurrencyConflict):
        log.append([ev("a", 1)])  # single-event path
    with pytest.raises(ConcurrencyConflict):
        log.append([ev("n1", 1), ev("n2", 1), ev("a", 1)])  # multi-event path
    last = log.append([ev("b", 1)])[0].position

    rows = assert_no_holes(log)
    assert last == log.head() == rows[-1][0]
    assert [(r[1], r[2]) for r in real(rows)] == [("a", 1), ("b", 1)]
    voids = [r for r in rows if r[3] == VOID_TYPE]
    if store.kind == "postgresql":
        # every position a failed append took is given up explicitly
        assert len(voids) == 4
        assert all(r[1] == VOID_STREAM and r[2] == r[0] for r in voids)
    else:
        # SQLite takes positions under the write lock: a failed append takes none
        assert voids == []
        assert last == 2
    # readers and the interface see the same, complete log
    assert [n.id for n in log.select_notifications(None, 100)] == list(range(1, last + 1))
    assert [n.id for n in log.read(0, 100)] == list(range(1, last + 1))


def test_read_stream(log):
    log.append([ev("x", 1)])
    log.append([ev("y", 1), ev("x", 2)])
    log.append([ev("x", 3, type_name="U", data=b'{"k":3}')])

    events = log.read_stream("x")
    assert [(e.originator_id, e.originator_version, e.position) for e in events] == [("x", 1, 1), ("x", 2, 3), ("x", 3, 4)]
    assert events[2].topic == "U" and events[2].state == b'{"k":3}'
    assert isinstance(events[0].state, bytes)
    assert all(e.recorded_at.tzinfo is not None for e in events)
    assert [e.originator_version for e in log.read_stream("x", after_version=1)] == [2, 3]
    assert log.read_stream("x", after_version=3) == []
    assert log.read_stream("nope") == []
    assert [e.position for e in log.read_stream("y")] == [2]


def test_iter_rows_bounds(log):
    for i in range(1, 11):
        log.append([ev(f"s{i}", 1)])
    assert positions_of(rows_of(log)) == list(range(1, 11))
    assert positions_of(rows_of(log, 3, 7)) == [4, 5, 6, 7]
    assert positions_of(rows_of(log, 7)) == [8, 9, 10]
    assert positions_of(rows_of(log, 0, 1)) == [1]
    assert positions_of(rows_of(log, 10)) == []
    assert positions_of(rows_of(log, 99)) == []
    assert positions_of(rows_of(log, 5, 5)) == []
    assert positions_of(rows_of(log, 6, 3)) == []
    assert positions_of(rows_of(log, 0, 0)) == []
    assert positions_of(rows_of(log, 8, 1000)) == [9, 10]
    # small pages give the same rows
    assert rows_of(log, 0, None, batch=3) == rows_of(log)
    assert positions_of(rows_of(log, 2, 9, batch=2)) == list(range(3, 10))
    # read() is bounded the same way and by its limit
    assert [e.position for e in log.read(2, limit=3)] == [3, 4, 5]
    assert [e.position for e in log.read(2, limit=100, stop=4)] == [3, 4]
    assert [e.position for e in log.read(10)] == []


def test_reopening_sees_the_same_rows(db_url):
    with open_store(db_url) as s:
        s.trading.append([ev("a", 1)])
        s.trading.append([ev("b", 1), ev("a", 2)])
        s.market.append([ev("bar", 60, "BarRecorded")])
        trading, market = rows_of(s.trading), rows_of(s.market)
    with open_store(db_url) as again:
        assert rows_of(again.trading) == trading
        assert rows_of(again.market) == market
        assert again.trading.head() == 3 and again.market.head() == 1
        # and it continues where the log ended
        assert again.trading.append([ev("c", 1)])[0].position == 4
    with open_store(db_url, create=False) as third:
        assert positions_of(rows_of(third.trading)) == [1, 2, 3, 4]


def test_trading_and_market_logs_are_separate(store):
    store.trading.append([ev("a", 1)])
    assert store.market.head() == 0
    assert store.market.append([ev("a", 1)])[0].position == 1  # same stream id, other log
    assert store.trading.head() == 1


# ------------------------------------------------------------------------ SQLite durability


def test_sqlite_is_wal_with_synchronous_full(sqlite_url):
    path = sqlite_path(sqlite_url)
    with open_store(sqlite_url) as s:
        s.trading.append([ev("a", 1)])
        # through the store's own connections: readers and the writer, several at once
        ds = s.trading.datastore
        with ds.get_connection(commit=True) as w, ds.get_connection(commit=False) as r1, ds.get_connection(
            commit=False
        ) as r2:
            for conn in (w, r1, r2):
                raw = conn._sqlite_conn
                assert raw.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
                assert raw.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        # the writer connection actually used by append is one of the pool's
        s.trading.append([ev("b", 1)])
        with ds.get_connection(commit=True) as w:
            assert w._sqlite_conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        # the market log shares the datastore
        with s.market.datastore.get_connection(commit=True) as w:
            assert w._sqlite_conn.execute("PRAGMA synchronous").fetchone()[0] == 2

        # through a raw sqlite3 connection: WAL is a property of the file
        raw = sqlite3.connect(path)
        try:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
            assert raw.execute("SELECT count(*) FROM ts_events").fetchone()[0] == 2
        finally:
            raw.close()


def test_sqlite_writer_waiting_for_the_lock_fails_with_a_typed_error(sqlite_url):
    """Another process holds the write lock for longer than the pool's writer timeout (5 s) but
    less than the busy timeout (10 s). Two threads of this process append meanwhile: each must
    either succeed or fail with ``AppendFailed`` (the documented "the database failed, nothing
    was appended"), never with an untyped error from the connection pool."""
    from tradestate.domain.errors import AppendFailed

    with open_store(sqlite_url) as s:
        s.trading.append([ev("a", 1)])
        blocker = sqlite3.connect(sqlite_path(sqlite_url), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        outcome: dict[int, BaseException | None] = {}

        def write(i: int) -> None:
            try:
                s.trading.append([ev(f"t{i}", 1)])
                outcome[i] = None
            except BaseException as e:  # noqa: BLE001
                outcome[i] = e

        threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        time.sleep(6.0)
        blocker.execute("COMMIT")
        blocker.close()
        for t in threads:
            t.join(20)
        errors = {i: e for i, e in outcome.items() if e is not None}
        assert len(outcome) == 2
        for e in errors.values():
            assert isinstance(e, AppendFailed), f"untyped error from append: {type(e).__module__}.{type(e).__name__}: {e}"
        written = {r[1] for r in rows_of(s.trading)}
        assert written == {"a"} | {f"t{i}" for i in outcome if outcome[i] is None}
        assert_no_holes(s.trading)


# ------------------------------------------------------------ the eventsourcing recorder interface


def _note(n: Notification) -> tuple:
    return (n.id, n.originator_id, n.originator_version, n.topic, bytes(n.state))


def test_eventsourcing_interface_matches_the_library(log):
    # empty
    assert list(log.select_notifications(start=None, limit=3)) == []
    assert list(log.select_notifications(start=None, limit=3, topics=["topic1"])) == []

    e1 = StoredEvent(originator_id="o1", originator_version=1, topic="topic1", state=b"state1")
    e2 = StoredEvent(originator_id="o1", originator_version=2, topic="topic2", state=b"state2")
    e3 = StoredEvent(originator_id="o2", originator_version=1, topic="topic3", state=b"state3")
    assert list(log.insert_events([e1, e2])) == [1, 2]
    assert list(log.insert_events([e3])) == [3]

    n1, n2, n3 = (1, "o1", 1, "topic1", b"state1"), (2, "o1", 2, "topic2", b"state2"), (3, "o2", 1, "topic3", b"state3")

    def sel(*args, **kwargs):
        return [_note(n) for n in log.select_notifications(*args, **kwargs)]

    assert sel(start=None, limit=10) == [n1, n2, n3]
    assert sel(start=1, limit=10) == [n1, n2, n3]
    assert sel(start=None, stop=2, limit=10) == [n1, n2]
    assert sel(start=1, limit=10, inclusive_of_start=False) == [n2, n3]
    assert sel(start=2, limit=10, inclusive_of_start=False) == [n3]
    assert sel(start=None, limit=10, topics=["topic1", "topic2", "topic3"]) == [n1, n2, n3]
    assert sel(1, 10, topics=["topic1"]) == [n1]
    assert sel(1, 3, topics=["topic2"]) == [n2]
    assert sel(1, 3, topics=["topic3"]) == [n3]
    assert sel(1, 3, topics=["topic1", "topic3"]) == [n1, n3]
    assert sel(1, 1, topics=["topic2", "topic3"]) == [n2]  # limit counts matches, not rows scanned
    assert sel(None, 1) == [n1]
    assert sel(2, 1) == [n2]
    assert sel(1, 1, inclusive_of_start=False) == [n2]
    assert sel(2, 2) == [n2, n3]
    assert sel(3, 1) == [n3]
    assert sel(3, 1, inclusive_of_start=False) == []
    assert sel(start=2, limit=10, stop=2) == [n2]
    assert sel(start=1, limit=10, stop=2) == [n1, n2]
    assert sel(start=1, limit=10, stop=2, inclusive_of_start=False) == [n2]
    assert log.max_notification_id() == 3

    # select_events: gt, lte, desc, limit
    def versions(*args, **kwargs):
        return [(e.originator_id, e.originator_version, e.topic, bytes(e.state)) for e in log.select_events(*args, **kwargs)]

    log.insert_events([StoredEvent("o1", 3, "topic4", b"state4"), StoredEvent("o1", 4, "topic5", b"state5")])
    assert [v[1] for v in versions("o1")] == [1, 2, 3, 4]
    assert versions("o1")[0] == ("o1", 1, "topic1", b"state1")
    assert [v[1] for v in versions("o1", gt=1)] == [2, 3, 4]
    assert [v[1] for v in versions("o1", lte=2)] == [1, 2]
    assert [v[1] for v in versions("o1", gt=1, lte=3)] == [2, 3]
    assert [v[1] for v in versions("o1", desc=True)] == [4, 3, 2, 1]
    assert [v[1] for v in versions("o1", desc=True, limit=2)] == [4, 3]
    assert [v[1] for v in versions("o1", limit=2)] == [1, 2]
    assert [v[1] for v in versions("o1", gt=1, desc=True, limit=1)] == [4]
    assert [v[1] for v in versions("o1", lte=3, desc=True, limit=2)] == [3, 2]
    assert versions("o1", gt=4) == []
    assert versions("missing") == []
    assert log.max_notification_id() == 5


def test_max_notification_id_is_none_for_an_empty_log(log):
    # eventsourcing: "Returns the largest notification ID ..., or None if no stored events have
    # been recorded" (and its recorder test suite asserts ``assertIsNone`` on an empty recorder).
    assert log.max_notification_id() is None
    log.insert_events([StoredEvent("o1", 1, "t", b"s")])
    assert log.max_notification_id() == 1


def test_insert_events_conflict_raises_the_libraries_integrity_error(log):
    # eventsourcing's recorders raise ``eventsourcing.persistence.IntegrityError`` when a
    # (originator, version) is taken; library code (and its recorder test suite) catch that.
    e = StoredEvent("o1", 1, "t", b"s")
    log.insert_events([e])
    with pytest.raises(IntegrityError):
        log.insert_events([StoredEvent("o2", 1, "t", b"s"), e])
    assert [n.originator_id for n in log.select_notifications(None, 10) if n.topic != VOID_TYPE] == ["o1"]


# ----------------------------------------------------------------- PostgreSQL: holes in the log


def _raw(pg_server: str, autocommit: bool = True) -> psycopg.Connection:
    return psycopg.connect(pg_server, autocommit=autocommit)


def _take_position(pg_server: str, schema: str) -> int:
    """Take a position from the sequence without inserting a row: a writer that died mid-append."""
    with _raw(pg_server) as conn:
        return conn.execute(f"SELECT nextval('{schema}.ts_events_position_seq')").fetchone()[0]


@pytest.fixture
def pg_log(pg_url):
    s = open_store(pg_url)
    try:
        yield s.trading
    finally:
        s.close()


def _schema(log) -> str:
    return log.datastore.schema


def _follow(log, after: int, until: int, deadline: float = 10.0) -> list[tuple]:
    """Tail like a follower: call iter_rows(last) again and again until ``until`` is reached."""
    seen: list[tuple] = []
    last = after
    end = time.monotonic() + deadline
    while last < until:
        for row in log.iter_rows(last):
            assert row[0] == last + 1, f"follower skipped from {last} to {row[0]}"
            seen.append(row)
            last = row[0]
        if time.monotonic() > end:
            raise AssertionError(f"follower stuck at {last}, head {until}")
        time.sleep(0.02)
    return seen


@pytest.mark.postgres
def test_pg_reader_stops_at_a_hole_and_voids_it_after_gap_timeout(pg_server, pg_log):
    log = pg_log
    log.gap_timeout = 0.3
    log.append([ev("a", 1)])
    hole = _take_position(pg_server, _schema(log))
    assert hole == 2
    log.append([ev("b", 1)])
    assert log.head() == 3

    # before gap_timeout: every read stops before the hole, and nothing is voided yet
    for _ in range(3):
        assert positions_of(rows_of(log)) == [1]
        assert positions_of(rows_of(log, 0, None, batch=1)) == [1]
        assert [n.id for n in log.select_notifications(None, 10)] == [1]
    assert positions_of(rows_of(log, 1)) == []
    with _raw(pg_server) as conn:
        assert conn.execute(f"SELECT count(*) FROM {_schema(log)}.ts_events WHERE position = 2").fetchone()[0] == 0

    time.sleep(0.4)
    seen = _follow(log, 0, 3)
    assert positions_of(seen) == [1, 2, 3]
    assert seen[1][1] == VOID_STREAM and seen[1][3] == VOID_TYPE
    assert [(r[1], r[2]) for r in real(seen)] == [("a", 1), ("b", 1)]
    assert_no_holes(log)
    # another reader (that never waited) reads straight through the voided position
    with open_store(log.datastore.url) as other:
        assert positions_of(rows_of(other.trading)) == [1, 2, 3]


@pytest.mark.postgres
def test_pg_reader_that_voids_a_hole_continues_past_it(pg_server, pg_log):
    """After gap_timeout the reader voids the hole *and continues*: the call that voids returns
    the rest of the log, rather than stopping as if the hole were still there."""
    log = pg_log
    log.gap_timeout = 0.2
    log.append([ev("a", 1)])
    _take_position(pg_server, _schema(log))
    log.append([ev("b", 1)])
    log.append([ev("c", 1)])
    assert positions_of(rows_of(log)) == [1]  # first sight of the hole
    time.sleep(0.3)
    rows = rows_of(log)
    assert positions_of(rows) == [1, 2, 3, 4], "the reader voided the hole but stopped there"
    assert rows[1][3] == VOID_TYPE


@pytest.mark.postgres
def test_pg_hole_in_a_later_page_stops_the_reader_there(pg_server, pg_log):
    log = pg_log
    for i in range(1, 4):
        log.append([ev(f"s{i}", 1)])
    _take_position(pg_server, _schema(log))  # position 4
    log.append([ev("s5", 1)])
    assert positions_of(rows_of(log, 0, None, batch=2)) == [1, 2, 3]
    assert positions_of(rows_of(log, 0, 3, batch=2)) == [1, 2, 3]  # the hole is beyond stop
    assert positions_of(rows_of(log, 4)) == [5]  # a reader already past the hole is not held


@pytest.mark.postgres
@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_pg_in_flight_writer_is_not_voided(pg_server, pg_log, outcome):
    """A hole whose writer has inserted its row but not committed: the reader's void waits on the
    unique index and the real row wins once committed (or the void wins if it rolls back)."""
    log = pg_log
    log.gap_timeout = 0.2
    schema = _schema(log)
    log.append([ev("a", 1)])

    writer = _raw(pg_server, autocommit=False)
    try:
        (hole,) = writer.execute(
            f"INSERT INTO {schema}.ts_events (position, stream_id, stream_version, type, data)"
            f" VALUES (nextval('{schema}.ts_events_position_seq'), 'real', 1, 'R', '{{}}'::bytea) RETURNING position"
        ).fetchone()
        assert hole == 2
        log.append([ev("c", 1)])
        assert positions_of(rows_of(log)) == [1]  # stopped before the in-flight row
        time.sleep(0.3)  # the hole is now older than gap_timeout

        def finish() -> None:
            time.sleep(0.6)
            writer.commit() if outcome == "commit" else writer.rollback()

        t = threading.Thread(target=finish)
        t.start()
        started = time.monotonic()
        try:
            first = rows_of(log)  # tries to void position 2: must wait for the writer
        finally:
            t.join()
        waited = time.monotonic() - started
        assert waited >= 0.4, f"the void did not wait for the in-flight writer ({waited:.3f}s)"
        assert positions_of(first) in ([1], [1, 2, 3])
        seen = _follow(log, 0, 3)
    finally:
        writer.close()

    assert positions_of(seen) == [1, 2, 3]
    with _raw(pg_server) as conn:
        stored = conn.execute(f"SELECT stream_id, type FROM {schema}.ts_events WHERE position = 2").fetchall()
    if outcome == "commit":
        assert stored == [("real", "R")], "the void replaced a real event"
        assert (seen[1][1], seen[1][3]) == ("real", "R")
    else:
        assert stored == [(VOID_STREAM, VOID_TYPE)]
        assert seen[1][3] == VOID_TYPE
    assert_no_holes(log)


# ------------------------------------------------------- PostgreSQL: long reads stream (one query)


def _append_many(log, n: int, payload: bytes = b'{"k":1}', per_append: int = 100, first: int = 0) -> None:
    """Events ``first`` .. ``first + n - 1`` of seven streams, ``per_append`` to a commit."""
    for start in range(first, first + n, per_append):
        log.append([new_event(f"s-{i % 7}", i // 7 + 1, "T", payload)
                    for i in range(start, min(first + n, start + per_append))])


@pytest.fixture
def streams_from(monkeypatch):
    """Reads of at least ``n`` positions stream (the default makes that 50,000)."""
    from tradestate.adapters.store import postgres

    def set_to(n: int) -> None:
        monkeypatch.setattr(postgres, "STREAM_FROM", n)
        monkeypatch.setattr(postgres, "STREAM_CHUNK", 7)

    return set_to


@pytest.mark.postgres
def test_pg_a_streamed_read_gives_the_rows_and_pages_of_a_ranged_one(pg_log, streams_from):
    _append_many(pg_log, 250)
    streams_from(10**9)
    ranged = [list(p) for p in pg_log.iter_pages(0, batch=40)]
    ranged_tail = rows_of(pg_log, 17, 203)
    streams_from(10)
    streamed = [list(p) for p in pg_log.iter_pages(0, batch=40)]
    assert [len(p) for p in streamed] == [40] * 6 + [10]
    assert streamed == ranged
    assert rows_of(pg_log, 17, 203) == ranged_tail
    assert positions_of(rows_of(pg_log, 240)) == list(range(241, 251))  # short: a ranged read


@pytest.mark.postgres
def test_pg_the_reader_may_query_the_log_on_its_thread_while_it_streams(pg_log, streams_from):
    """The stream has its own connection: a finished order brought back mid-fold (a read on the
    thread's connection) neither deadlocks nor disturbs the stream."""
    _append_many(pg_log, 120)
    streams_from(10)
    seen = []
    for row in pg_log.iter_rows(0, batch=16):
        if row[0] % 25 == 0:
            assert [e.originator_version for e in pg_log.read_stream("s-3")][:3] == [1, 2, 3]
            assert pg_log.head() == 120
        seen.append(row[0])
    assert seen == list(range(1, 121))


@pytest.mark.postgres
def test_pg_a_stream_left_early_gives_its_connection_back(pg_log, streams_from):
    _append_many(pg_log, 100)
    streams_from(10)
    for _ in range(25):  # more than the pool holds: a leaked connection would block here
        pages = pg_log.iter_pages(0, batch=10)
        assert len(next(pages)) == 10
        pages.close()
    assert positions_of(rows_of(pg_log)) == list(range(1, 101))


@pytest.mark.postgres
def test_pg_a_slow_streamed_read_outlives_the_statement_timeout(pg_url, streams_from):
    """The server blocks on a full socket while the reader works; the statement timeout (here
    0.3 s) must not cancel the read of a slow caller."""
    url = pg_url + "&statement_timeout=0.3"
    with open_store(url) as s:
        _append_many(s.trading, 600, payload=b'{"k":"' + b"x" * 20_000 + b'"}', per_append=50)  # 12 MB
        streams_from(10)
        seen = 0
        for page in s.trading.iter_pages(0, batch=100):
            time.sleep(0.15)
            seen += len(page)
        assert seen == 600


@pytest.mark.postgres
def test_pg_a_stream_stops_before_a_hole_and_the_ranged_reader_takes_over(pg_server, pg_log, streams_from):
    _append_many(pg_log, 30)
    _take_position(pg_server, _schema(pg_log))  # 31: a writer that died mid-append
    _append_many(pg_log, 20, first=30)
    streams_from(10)
    assert positions_of(rows_of(pg_log)) == list(range(1, 31))  # stops at the hole, as ranged reads do
    assert positions_of(rows_of(pg_log, 31)) == list(range(32, 52))
