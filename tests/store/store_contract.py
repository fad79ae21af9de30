"""The event log's contract, written once and run against every backend.

``EventLogContract`` holds the behaviours both stores share: positions are gap-free and increasing,
appends are atomic, a failed append leaves no hole, reads are bounded and in order, the data
survives a reopen, the ``eventsourcing`` recorder interface keeps the library's meaning, the
tables refuse UPDATE and DELETE, and the SQL seam's cursors commit, roll back and read one
snapshot. A backend's test class subclasses it (as ``eventsourcing``'s own recorder test cases
are subclassed per database) and provides:

* the ``url`` fixture: a fresh, empty database for each test;
* ``KIND``: the ``Store.kind`` that URL opens;
* ``assert_failed_appends_took``: where a failed append's positions go (the one point where the
  backends differ, and each must say which way it goes).

Backend-specific tests (PostgreSQL sequence holes and ``$void`` rows, SQLite pragmas and file
locks) live in the subclass they concern. The class is not collected by itself: its name does not
start with ``Test``.
"""

from __future__ import annotations

import threading

import pytest
from eventsourcing.persistence import IntegrityError, Notification, StoredEvent

from tradestate.adapters.store import VOID_STREAM, VOID_TYPE, new_event, open_store
from tradestate.adapters.store.sql import read_cursor, release, snapshot_cursor, write_cursor
from tradestate.domain.errors import ConcurrencyConflict

TRADING_TABLE = "ts_events"
MARKET_TABLE = "ts_market_events"


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


def _note(n: Notification) -> tuple:
    return (n.id, n.originator_id, n.originator_version, n.topic, bytes(n.state))


class EventLogContract:
    """What every event log backend must do. Subclass it as ``Test<Backend>EventLog``."""

    KIND: str = ""

    # ------------------------------------------------------------------------------ hooks

    @pytest.fixture
    def url(self) -> str:
        """A fresh, empty database of this backend, for one test."""
        raise NotImplementedError(f"{type(self).__name__} must provide the `url` fixture")

    @pytest.fixture
    def store(self, url):
        """The store at ``url``, closed after the test."""
        s = open_store(url)
        try:
            yield s
        finally:
            s.close()

    @pytest.fixture
    def log(self, store):
        return store.trading

    def assert_failed_appends_took(self, voids: list[tuple], last: int) -> None:
        """After one failed single-event append and one failed 3-event append, then one good
        append landing at ``last``: check the ``$void`` rows (``voids``) the failures left."""
        raise NotImplementedError(f"{type(self).__name__} must say where a failed append's positions go")

    # ----------------------------------------------------------------------------- opening

    def test_the_url_opens_this_backend(self, store):
        assert self.KIND and store.kind == self.KIND

    def test_reopening_sees_the_same_rows(self, url):
        with open_store(url) as s:
            s.trading.append([ev("a", 1)])
            s.trading.append([ev("b", 1), ev("a", 2)])
            s.market.append([ev("bar", 60, "BarRecorded")])
            trading, market = rows_of(s.trading), rows_of(s.market)
        with open_store(url) as again:
            assert rows_of(again.trading) == trading
            assert rows_of(again.market) == market
            assert again.trading.head() == 3 and again.market.head() == 1
            # and it continues where the log ended
            assert again.trading.append([ev("c", 1)])[0].position == 4
        with open_store(url, create=False) as third:
            assert positions_of(rows_of(third.trading)) == [1, 2, 3, 4]

    def test_trading_and_market_logs_are_separate(self, store):
        store.trading.append([ev("a", 1)])
        assert store.market.head() == 0
        assert store.market.append([ev("a", 1)])[0].position == 1  # same stream id, other log
        assert store.trading.head() == 1

    # ---------------------------------------------------------------------------- appending

    def test_append_returns_gap_free_increasing_positions_and_aware_recorded_at(self, log):
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
    def test_multi_event_append_is_atomic_on_conflict(self, log, conflict_at):
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

    def test_conflict_inside_one_batch_appends_nothing(self, log):
        log.append([ev("a", 1)])
        with pytest.raises(ConcurrencyConflict):
            log.append([ev("x", 1), ev("x", 1, data=b"{}")])
        assert log.read_stream("x") == []
        assert [r[1] for r in real(rows_of(log))] == ["a"]
        assert_no_holes(log)

    def test_failed_appends_leave_no_holes(self, log):
        log.append([ev("a", 1)])
        with pytest.raises(ConcurrencyConflict):
            log.append([ev("a", 1)])  # single-event path
        with pytest.raises(ConcurrencyConflict):
            log.append([ev("n1", 1), ev("n2", 1), ev("a", 1)])  # multi-event path
        last = log.append([ev("b", 1)])[0].position

        rows = assert_no_holes(log)
        assert last == log.head() == rows[-1][0]
        assert [(r[1], r[2]) for r in real(rows)] == [("a", 1), ("b", 1)]
        self.assert_failed_appends_took([r for r in rows if r[3] == VOID_TYPE], last)
        # readers and the interface see the same, complete log
        assert [n.id for n in log.select_notifications(None, 100)] == list(range(1, last + 1))
        assert [n.id for n in log.read(0, 100)] == list(range(1, last + 1))

    # ------------------------------------------------------------------------------ reading

    def test_read_stream(self, log):
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

    def test_iter_rows_bounds(self, log):
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

    # ------------------------------------------------------- the eventsourcing recorder interface

    def test_eventsourcing_interface_matches_the_library(self, log):
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

    def test_max_notification_id_is_none_for_an_empty_log(self, log):
        # eventsourcing: "Returns the largest notification ID ..., or None if no stored events have
        # been recorded" (and its recorder test suite asserts ``assertIsNone`` on an empty recorder).
        assert log.max_notification_id() is None
        log.insert_events([StoredEvent("o1", 1, "t", b"s")])
        assert log.max_notification_id() == 1

    def test_insert_events_conflict_raises_the_libraries_integrity_error(self, log):
        # eventsourcing's recorders raise ``eventsourcing.persistence.IntegrityError`` when a
        # (originator, version) is taken; library code (and its recorder test suite) catch that.
        e = StoredEvent("o1", 1, "t", b"s")
        log.insert_events([e])
        with pytest.raises(IntegrityError):
            log.insert_events([StoredEvent("o2", 1, "t", b"s"), e])
        assert [n.originator_id for n in log.select_notifications(None, 10) if n.topic != VOID_TYPE] == ["o1"]

    # ------------------------------------------------------------------- append-only tables

    @pytest.mark.parametrize("table", [TRADING_TABLE, MARKET_TABLE])
    @pytest.mark.parametrize("statement", ["UPDATE {} SET type = 'X'", "DELETE FROM {}"], ids=["update", "delete"])
    def test_the_logs_refuse_update_and_delete(self, store, table, statement):
        """A store opened to record is append-only: a changed or removed row is refused with a
        message naming the operation and the table, and the rows stay as they were."""
        log = store.trading if table == TRADING_TABLE else store.market
        log.append([ev("a", 1), ev("b", 1)])
        before = rows_of(log)
        op = statement.split()[0]
        with pytest.raises(Exception, match=rf"(?s){op}.*{table}.*refused.*append-only"):
            with write_cursor(store) as cur:
                cur.execute(statement.format(store.dialect.name(table)))
        assert rows_of(log) == before
        # and the log still appends after the refusal
        assert log.append([ev("c", 1)])[0].position == 3

    # ------------------------------------------------------------------ the SQL seam's cursors

    def test_cursors_commit_roll_back_and_see_one_snapshot(self, store):
        d = store.dialect
        with write_cursor(store) as cur:
            cur.execute(f"CREATE TABLE {d.name('seam_t')} (x {d.type('int')})")
        with pytest.raises(RuntimeError):
            with write_cursor(store) as cur:
                cur.execute(f"INSERT INTO {d.name('seam_t')} VALUES ({d.param})", (1,))
                raise RuntimeError("rolled back")
        with read_cursor(store) as cur:
            assert d.table_exists(cur, "seam_t") and not d.table_exists(cur, "seam_nothing")
            assert cur.execute(f"SELECT count(*) FROM {d.name('seam_t')}").fetchone()[0] == 0
        with snapshot_cursor(store) as cur:
            cur.execute(f"SELECT count(*) FROM {d.name('seam_t')}")
            assert cur.fetchone()[0] == 0

    def test_a_snapshot_cursor_does_not_see_a_commit_made_while_it_reads(self, store, log):
        """Every statement of one ``snapshot_cursor`` sees the database as of its first read, and
        a ``read_cursor`` after it sees the latest commits."""
        log.append([ev("a", 1)])
        table = store.dialect.name(TRADING_TABLE)
        count = f"SELECT count(*) FROM {table}"

        heads: list[int] = []

        def append_elsewhere() -> None:  # another thread: another connection
            try:
                log.append([ev("b", 1)])
                heads.append(log.head())
            finally:
                release(store)

        with snapshot_cursor(store) as cur:
            assert cur.execute(count).fetchone()[0] == 1
            writer = threading.Thread(target=append_elsewhere)
            writer.start()
            writer.join(10)
            assert not writer.is_alive(), "a snapshot reader blocked a writer"
            assert heads == [2], "the append did not commit"
            assert cur.execute(count).fetchone()[0] == 1
            assert cur.execute(f"SELECT max(position) FROM {table}").fetchone()[0] == 1
        with read_cursor(store) as cur:
            assert cur.execute(count).fetchone()[0] == 2
