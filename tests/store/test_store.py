"""The event logs themselves: the shared contract (``store_contract.EventLogContract``) run on a
real SQLite file and a real PostgreSQL, and what only one backend does.

SQLite: durable (WAL + synchronous=FULL), a writer kept from the file lock fails with a typed
error, and the clock is read under the write lock. PostgreSQL: the reader's hole handling (stop
at a hole, void it after ``gap_timeout``, never void a row whose writer is still committing) and
long reads that stream on one query.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time

import psycopg
import pytest

from tests.store.store_contract import EventLogContract, assert_no_holes, ev, positions_of, real, rows_of
from tradestate.adapters.store import VOID_STREAM, VOID_TYPE, new_event, open_store, sqlite_path
from tradestate.adapters.store.sql import write_cursor


# ------------------------------------------------------------------------------------ SQLite


def _append_from_a_process(url: str, worker: int, n: int, barrier: object) -> None:
    with open_store(url) as store:
        barrier.wait()  # type: ignore[attr-defined]
        for i in range(n):
            store.trading.append([new_event(f"w{worker}", i + 1, "T", b"{}")])


class TestSQLiteEventLog(EventLogContract):
    KIND = "sqlite"

    @pytest.fixture
    def url(self, sqlite_url):
        return sqlite_url

    def assert_failed_appends_took(self, voids, last):
        # SQLite takes positions under the write lock: a failed append takes none
        assert voids == []
        assert last == 2

    # ---------------------------------------------------------------------------- durability

    def test_sqlite_is_wal_with_synchronous_full(self, url):
        path = sqlite_path(url)
        with open_store(url) as s:
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

    def test_sqlite_writer_waiting_for_the_lock_fails_with_a_typed_error(self, url):
        """Another process holds the write lock for longer than the pool's writer timeout (5 s) but
        less than the busy timeout (10 s). Two threads of this process append meanwhile: each must
        either succeed or fail with ``AppendFailed`` (the documented "the database failed, nothing
        was appended"), never with an untyped error from the connection pool."""
        from tradestate.domain.errors import AppendFailed

        with open_store(url) as s:
            s.trading.append([ev("a", 1)])
            blocker = sqlite3.connect(sqlite_path(url), isolation_level=None)
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

    # ---------------------------------------------------------------------------- the clock

    def test_recorded_at_never_decreases_along_positions_under_concurrent_writers(self, url):
        """``replay --at T`` reads the prefix of the log recorded by T: that is only a prefix when
        the store's clock is read in position order, i.e. under the write lock."""
        open_store(url).close()
        ctx = multiprocessing.get_context("fork")
        writers, n = 4, 150
        barrier = ctx.Barrier(writers)
        procs = [ctx.Process(target=_append_from_a_process, args=(url, w, n, barrier)) for w in range(writers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
        with open_store(url, create=False) as store:
            rows = list(store.trading.iter_rows())
        assert len(rows) == writers * n
        backwards = [(a[0], b[0]) for a, b in zip(rows, rows[1:]) if b[5] < a[5]]
        assert not backwards, f"recorded_at goes back at positions {backwards[:5]} ({len(backwards)} times)"


# ----------------------------------------------------------------------- PostgreSQL helpers


def _raw(pg_server: str, autocommit: bool = True) -> psycopg.Connection:
    return psycopg.connect(pg_server, autocommit=autocommit)


def _take_position(pg_server: str, schema: str) -> int:
    """Take a position from the sequence without inserting a row: a writer that died mid-append."""
    with _raw(pg_server) as conn:
        return conn.execute(f"SELECT nextval('{schema}.ts_events_position_seq')").fetchone()[0]


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
class TestPostgresEventLog(EventLogContract):
    KIND = "postgresql"

    @pytest.fixture
    def url(self, pg_url):
        return pg_url

    def assert_failed_appends_took(self, voids, last):
        # every position a failed append took is given up explicitly
        assert len(voids) == 4
        assert all(r[1] == VOID_STREAM and r[2] == r[0] for r in voids)

    @pytest.mark.parametrize("table", ["ts_events", "ts_market_events"])
    def test_pg_the_logs_refuse_truncate(self, store, table):
        log = store.trading if table == "ts_events" else store.market
        log.append([ev("a", 1)])
        before = rows_of(log)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=rf"TRUNCATE on .*{table} refused"):
            with write_cursor(store) as cur:
                cur.execute(f"TRUNCATE {store.dialect.name(table)}")
        assert rows_of(log) == before

    # ------------------------------------------------------------ holes in the sequence

    def test_pg_reader_stops_at_a_hole_and_voids_it_after_gap_timeout(self, pg_server, log):
        log.gap_timeout = 0.3
        log.hole_probe_after = None  # the fallback alone: no asking who could still fill the hole
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


    def test_pg_reader_that_voids_a_hole_continues_past_it(self, pg_server, log):
        """After gap_timeout the reader voids the hole *and continues*: the call that voids returns
        the rest of the log, rather than stopping as if the hole were still there."""
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


    def test_pg_hole_in_a_later_page_stops_the_reader_there(self, pg_server, log):
        for i in range(1, 4):
            log.append([ev(f"s{i}", 1)])
        _take_position(pg_server, _schema(log))  # position 4
        log.append([ev("s5", 1)])
        assert positions_of(rows_of(log, 0, None, batch=2)) == [1, 2, 3]
        assert positions_of(rows_of(log, 0, 3, batch=2)) == [1, 2, 3]  # the hole is beyond stop
        assert positions_of(rows_of(log, 4)) == [5]  # a reader already past the hole is not held


    @pytest.mark.parametrize("outcome", ["commit", "rollback"])
    def test_pg_in_flight_writer_is_not_voided(self, pg_server, log, outcome):
        """A hole whose writer has inserted its row but not committed: the reader's void waits on the
        unique index and the real row wins once committed (or the void wins if it rolls back)."""
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


    def test_pg_a_hole_no_transaction_can_fill_is_voided_long_before_gap_timeout(self, pg_server, log):
        """A position whose taker is gone (it holds no lock on the sequence any more) is voided at
        once, not after gap_timeout: the sequence jump after a crash or failover costs ~0.1 s."""
        log.gap_timeout = 30.0
        log.append([ev("a", 1)])
        _take_position(pg_server, _schema(log))  # its transaction ended: nobody can fill position 2
        log.append([ev("b", 1)])
        started = time.monotonic()
        seen = _follow(log, 0, 3, deadline=5.0)
        assert time.monotonic() - started < 1.0
        assert positions_of(seen) == [1, 2, 3] and seen[1][3] == VOID_TYPE

    @pytest.mark.parametrize("outcome", ["commit", "rollback"])
    def test_pg_a_hole_a_live_transaction_holds_is_never_voided_early(self, pg_server, log, outcome):
        """A transaction that took the position and has not inserted yet (it holds the sequence's
        lock) keeps the hole open however often readers look; once it commits its row is there,
        once it rolls back the hole is voided at once."""
        log.gap_timeout = 30.0
        schema = _schema(log)
        log.append([ev("a", 1)])
        writer = _raw(pg_server, autocommit=False)
        try:
            (hole,) = writer.execute(f"SELECT nextval('{schema}.ts_events_position_seq')").fetchone()
            assert hole == 2
            log.append([ev("c", 1)])
            until = time.monotonic() + 0.5
            while time.monotonic() < until:  # many looks, well past hole_probe_after
                assert positions_of(rows_of(log)) == [1]
                time.sleep(0.02)
            writer.execute(f"INSERT INTO {schema}.ts_events (position, stream_id, stream_version, type, data)"
                           f" VALUES ({hole}, 'real', 1, 'R', '{{}}'::bytea)")
            writer.commit() if outcome == "commit" else writer.rollback()
            started = time.monotonic()
            seen = _follow(log, 0, 3, deadline=5.0)
            assert time.monotonic() - started < 1.0
        finally:
            writer.close()
        assert positions_of(seen) == [1, 2, 3]
        assert (seen[1][1], seen[1][3]) == (("real", "R") if outcome == "commit" else (VOID_STREAM, VOID_TYPE))
        assert_no_holes(log)


    # ------------------------------------------------------------ long reads stream (one query)

    def test_pg_a_streamed_read_gives_the_rows_and_pages_of_a_ranged_one(self, log, streams_from):
        _append_many(log, 250)
        streams_from(10**9)
        ranged = [list(p) for p in log.iter_pages(0, batch=40)]
        ranged_tail = rows_of(log, 17, 203)
        streams_from(10)
        streamed = [list(p) for p in log.iter_pages(0, batch=40)]
        assert [len(p) for p in streamed] == [40] * 6 + [10]
        assert streamed == ranged
        assert rows_of(log, 17, 203) == ranged_tail
        assert positions_of(rows_of(log, 240)) == list(range(241, 251))  # short: a ranged read


    def test_pg_the_reader_may_query_the_log_on_its_thread_while_it_streams(self, log, streams_from):
        """The stream has its own connection: a finished order brought back mid-fold (a read on the
        thread's connection) neither deadlocks nor disturbs the stream."""
        _append_many(log, 120)
        streams_from(10)
        seen = []
        for row in log.iter_rows(0, batch=16):
            if row[0] % 25 == 0:
                assert [e.originator_version for e in log.read_stream("s-3")][:3] == [1, 2, 3]
                assert log.head() == 120
            seen.append(row[0])
        assert seen == list(range(1, 121))


    def test_pg_a_stream_left_early_gives_its_connection_back(self, log, streams_from):
        _append_many(log, 100)
        streams_from(10)
        for _ in range(25):  # more than the pool holds: a leaked connection would block here
            pages = log.iter_pages(0, batch=10)
            assert len(next(pages)) == 10
            pages.close()
        assert positions_of(rows_of(log)) == list(range(1, 101))


    def test_pg_a_slow_streamed_read_outlives_the_statement_timeout(self, url, streams_from):
        """The server blocks on a full socket while the reader works; the statement timeout (here
        0.3 s) must not cancel the read of a slow caller."""
        url = url + "&statement_timeout=0.3"
        with open_store(url) as s:
            _append_many(s.trading, 600, payload=b'{"k":"' + b"x" * 20_000 + b'"}', per_append=50)  # 12 MB
            streams_from(10)
            seen = 0
            for page in s.trading.iter_pages(0, batch=100):
                time.sleep(0.15)
                seen += len(page)
            assert seen == 600


    def test_pg_a_stream_stops_before_a_hole_and_the_ranged_reader_takes_over(self, pg_server, log, streams_from):
        _append_many(log, 30)
        _take_position(pg_server, _schema(log))  # 31: a writer that died mid-append
        _append_many(log, 20, first=30)
        streams_from(10)
        assert positions_of(rows_of(log)) == list(range(1, 31))  # stops at the hole, as ranged reads do
        assert positions_of(rows_of(log, 31)) == list(range(32, 52))
