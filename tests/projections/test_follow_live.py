"""The live follower under concurrent writers (``projections/follow.py``), on real databases.

Every event exactly once and in order: the pages a follower commits cover contiguous runs of
positions from where it started to the head, whatever the writers interleave (on PostgreSQL,
appends commit out of position order and leave holes below the head for a moment); a hole whose
append is still committing holds the follower back until it lands (never skipped), a hole whose
writer is gone is voided by the sequence-lock probe at once (not after ``gap_timeout``); a page
is one transaction (a failure leaves nothing of it); and the tables end equal to a rebuild.
"""

from __future__ import annotations

import threading
import time

import orjson
import psycopg
import pytest
from tests.support.projector_worker import Clock, assert_equals_rebuild, dump_tables, write_session
from tradestate.adapters.store import new_event, open_store
from tradestate.projections.follow import FollowStats, follow
from tradestate.projections.projector import Projector, wait_for

import tradestate


def _signal(strategy: str, i: int) -> bytes:
    return orjson.dumps({"event_id": f"00000000-0000-4000-8000-{i:012d}", "occurred_at": None,
                         "correlation_id": None, "causation_id": None, "strategy_id": strategy,
                         "symbol": f"S{i % 7}", "signal": "buy" if i % 2 else "sell", "value": str(i),
                         "attributes": {}, "_v": 1})


class _Follower(threading.Thread):
    """``follow()`` on its own store in a thread, recording every committed page."""

    def __init__(self, url: str, projector_class: type[Projector] = Projector, **options):
        super().__init__(name="follower", daemon=True)
        self.store = open_store(url)
        self.projector = projector_class(self.store)
        self.projector.load()
        self.start_position = self.projector.state.position
        self.pages: list[tuple[int, int]] = []  # (rows, position reached)
        self.stop = threading.Event()
        self.stats = FollowStats()
        self.options = options
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            follow(self.store, self.stop, on_page=lambda n, p: self.pages.append((n, p)), projector=self.projector,
                   stats=self.stats, **self.options)
        except BaseException as e:  # noqa: BLE001 - the test asserts on it
            self.error = e

    def finish(self, close: bool = True) -> FollowStats:
        self.stop.set()
        self.join(30)
        assert not self.is_alive(), "the follower did not stop"
        assert self.error is None, self.error
        if close:
            self.store.close()
        return self.stats

    def assert_contiguous_to(self, head: int) -> None:
        """Pages in position order, each starting where the previous ended, with no position
        skipped or applied twice, from the start to ``head``."""
        reached = self.start_position
        for rows, position in self.pages:
            assert rows > 0 and position == reached + rows, (reached, rows, position)
            reached = position
        assert reached == head, (reached, head)
        assert self.stats.events == head - self.start_position


def _append_signals(url: str, name: str, count: int, errors: list[BaseException], start: threading.Event) -> None:
    try:
        with open_store(url, create=False) as store:
            start.wait(10)
            for i in range(count):
                store.trading.append([new_event(f"strategy-{name}", i + 1, "SignalRecorded", _signal(name, i))])
    except BaseException as e:  # noqa: BLE001
        errors.append(e)


def test_follower_applies_every_event_once_in_order_under_concurrent_writers(db_url, store):
    with tradestate.connect(db_url, clock=Clock()) as client:
        write_session(client, 60, seed=3)  # orders, fills, risk rows: not only signals
    follower = _Follower(db_url)
    follower.start()
    errors: list[BaseException] = []
    start = threading.Event()
    writers = [threading.Thread(target=_append_signals, args=(db_url, f"w{k}", 150, errors, start), daemon=True)
               for k in range(8)]
    for w in writers:
        w.start()
    start.set()
    _join_all(writers, 180)
    assert not errors, errors
    head = store.trading.head()
    assert wait_for(store, head, timeout=60), (follower.stats, head)
    stats = follower.finish()
    assert stats.errors == 0 and stats.conflicts == 0, stats
    follower.assert_contiguous_to(head)
    assert len(follower.pages) > 1, "one page: nothing was followed live"
    assert_equals_rebuild(store)


def test_two_followers_under_concurrent_writers_apply_every_event_exactly_once(db_url, store):
    """Racing followers: each page is applied by one of them (the loser's transaction sees the
    tracking row moved and rolls back, on PostgreSQL inside a pipelined transaction)."""
    with tradestate.connect(db_url, clock=Clock()) as client:
        write_session(client, 30, seed=4)
    followers = [_Follower(db_url, on_error=lambda e: None) for _ in range(2)]
    for f in followers:
        f.start()
    errors: list[BaseException] = []
    start = threading.Event()
    writers = [threading.Thread(target=_append_signals, args=(db_url, f"r{k}", 100, errors, start), daemon=True)
               for k in range(8)]
    for w in writers:
        w.start()
    start.set()
    _join_all(writers, 180)  # ~0.5 s alone; ~50 s with two busy threads in this process (a loaded worker)
    assert not errors, errors
    head = store.trading.head()
    assert wait_for(store, head, timeout=60)
    stats = [f.finish() for f in followers]
    assert sum(s.events for s in stats) == head - followers[0].start_position, (stats, head)
    assert all(s.errors == 0 for s in stats), stats
    assert_equals_rebuild(store)


def _join_all(threads: list[threading.Thread], timeout: float) -> None:
    """Wait until every thread ended, all within ``timeout`` seconds (a failure if one has not: a
    head read while writers still append would be a moving target)."""
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not [t for t in threads if t.is_alive()], f"writers still running after {timeout:g} s"


def _qualified(store) -> tuple[str, str]:
    schema = store.trading.datastore.schema
    return f'"{schema}".ts_events', f"{schema}.ts_events_position_seq"


def _open_hole(pg_server: str, store) -> tuple[psycopg.Connection, int]:
    """A writer that has drawn a position and inserted its row, uncommitted: a hole below the head
    for everyone else."""
    table, sequence = _qualified(store)
    conn = psycopg.connect(pg_server)  # not autocommit: the transaction stays open
    (position,) = conn.execute(
        f"INSERT INTO {table} (position, stream_id, stream_version, type, data) "
        f"VALUES (nextval('{sequence}'), 'strategy-late', 1, 'SignalRecorded', %s) RETURNING position",
        (_signal("late", 0),)).fetchone()
    return conn, position


@pytest.mark.postgres
def test_pg_follower_waits_for_an_append_committing_below_the_head_and_applies_it(pg_url, pg_server):
    """A slow append below the head is not skipped (nor voided while it can still commit): the
    follower applies everything before it, waits, and applies it and the rest once it lands."""
    with open_store(pg_url) as store:
        store.trading.append([new_event("strategy-first", 1, "SignalRecorded", _signal("first", 0))])
        follower = _Follower(pg_url)
        follower.store.trading.gap_timeout = 60.0  # only the probe may void, and it must not here
        follower.start()
        slow, hole = _open_hole(pg_server, store)
        after = [store.trading.append([new_event("strategy-after", i + 1, "SignalRecorded", _signal("after", i))])[0]
                 for i in range(5)]
        time.sleep(0.4)  # the follower meets the hole, probes it, and must keep waiting
        assert Projector(store).tracked_position() == hole - 1
        slow.commit()
        slow.close()
        assert wait_for(store, after[-1].position, timeout=10), follower.stats
        stats = follower.finish()
        follower.assert_contiguous_to(after[-1].position)
        # the reader forgets a hole once past it (it kept one entry per hole met, for ever)
        assert follower.store.trading.held_back_for(0) is None  # every hole met was passed and forgotten
        table, _ = _qualified(store)
        with psycopg.connect(pg_server) as conn:
            (stream,) = conn.execute(f"SELECT stream_id FROM {table} WHERE position = %s", (hole,)).fetchone()
        assert stream == "strategy-late"  # the real event, not a $void
        assert stats.errors == 0
        assert_equals_rebuild(store)


@pytest.mark.postgres
def test_pg_follower_voids_a_dead_writers_hole_at_once_not_after_gap_timeout(pg_url, pg_server):
    with open_store(pg_url) as store:
        store.trading.append([new_event("strategy-first", 1, "SignalRecorded", _signal("first", 0))])
        follower = _Follower(pg_url)
        follower.store.trading.gap_timeout = 60.0  # a wait for the timeout would fail this test
        follower.start()
        dead, hole = _open_hole(pg_server, store)
        after = [store.trading.append([new_event("strategy-after", i + 1, "SignalRecorded", _signal("after", i))])[0]
                 for i in range(5)]
        time.sleep(0.2)
        t0 = time.perf_counter()
        dead.close()  # the writer dies mid-append: its position will never be filled
        assert wait_for(store, after[-1].position, timeout=10), follower.stats
        voided_in = time.perf_counter() - t0
        stats = follower.finish()
        follower.assert_contiguous_to(after[-1].position)
        table, _ = _qualified(store)
        with psycopg.connect(pg_server) as conn:
            (stream,) = conn.execute(f"SELECT stream_id FROM {table} WHERE position = %s", (hole,)).fetchone()
        assert stream == "$void"
        assert voided_in < 5.0, voided_in  # the probe's work, far below gap_timeout (60 s here)
        assert stats.errors == 0
        assert_equals_rebuild(store)


class _Recording(Projector):
    """Records ``synchronous_commit`` inside each page transaction, and can fail one page after
    its rows are written (before the tracking row moves)."""

    fail_next = ""  # "python": raise; "server": a statement the server refuses (PostgreSQL)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sync_settings: list[str] = []

    def _track(self, cur, position):
        if self.dialect.is_postgres:
            self.sync_settings.append(cur.execute("SHOW synchronous_commit").fetchone()[0])
        failure, _Recording.fail_next = _Recording.fail_next, ""
        if failure == "python":
            raise RuntimeError("injected failure after the page's rows were written")
        if failure == "server":  # pipelined, its error arrives at the commit's sync
            cur.execute("SELECT 1 / 0")
        super()._track(cur, position)


@pytest.mark.postgres
@pytest.mark.parametrize("flush_pages", [False, True], ids=["unflushed", "flushed"])
def test_pg_page_commits_skip_the_flush_unless_asked_and_the_projector_is_left_as_it_was(pg_url, flush_pages):
    with open_store(pg_url) as store, tradestate.connect(pg_url, clock=Clock()) as client:
        write_session(client, 40, seed=4)
        follower = _Follower(pg_url, projector_class=_Recording, flush_pages=flush_pages)
        follower.start()
        assert wait_for(store, client.position, timeout=10)
        write_session(client, 40, seed=5)
        assert wait_for(store, client.position, timeout=10)
        follower.finish(close=False)
        projector = follower.projector
        assert projector.sync_settings and set(projector.sync_settings) == {"on" if flush_pages else "off"}
        assert "_transaction" not in projector.__dict__  # the override is gone with the follower
        # the same projector on its own commits durably again
        write_session(client, 5, seed=6)
        assert projector.run_once() > 0
        assert projector.sync_settings[-1] == "on"
        follower.store.close()
        assert_equals_rebuild(store)


@pytest.mark.parametrize("failure", ["python", pytest.param("server", marks=pytest.mark.postgres)])
def test_a_failed_page_leaves_nothing_and_the_follower_carries_on(db_url, store, failure):
    """The page's rows were written when it failed: its transaction rolls back whole (the tables and
    the tracking row stay where they were), the follower reloads and applies it again."""
    if failure == "server" and not db_url.startswith("postgresql"):
        pytest.skip("a refused statement is a PostgreSQL case (SQLite divides by zero into NULL)")
    at_failure: list[tuple[int, dict]] = []

    def on_error(e: BaseException) -> None:  # runs after the failed page, before the retry
        with open_store(db_url) as reader:
            at_failure.append((Projector(reader).tracked_position(), dump_tables(reader)))

    with tradestate.connect(db_url, clock=Clock()) as client:
        write_session(client, 40, seed=7)
        follower = _Follower(db_url, projector_class=_Recording, on_error=on_error)
        follower.start()
        assert wait_for(store, client.position, timeout=10)
        before = (Projector(store).tracked_position(), dump_tables(store))
        _Recording.fail_next = failure
        write_session(client, 40, seed=8)
        assert wait_for(store, client.position, timeout=15), follower.stats
        stats = follower.finish()
    assert stats.errors == 1 and stats.reloads == 1, stats
    assert ("injected failure" if failure == "python" else "division by zero") in stats.last_error, stats
    assert at_failure == [before]  # nothing of the failed page: neither its rows nor the tracking row
    assert before[0] < client.position
    assert_equals_rebuild(store)


def test_an_idle_follower_backs_off(db_url, store, session):
    follower = _Follower(db_url, poll=(0.001, 0.05))
    follower.start()
    assert wait_for(store, session, timeout=10)
    time.sleep(1.0)
    stats = follower.finish()
    # doubling from 1 ms to 50 ms: about 25 polls in a second, not the 1,000 of a 1 ms poll
    assert stats.polls < 80, stats


@pytest.mark.postgres
def test_pg_a_backlog_goes_on_in_the_projectors_own_flushed_pages(pg_url, monkeypatch):
    """Live pages are small (pipelined row by row); a full one means a backlog, which the
    projector's own pages (COPY, flushed) take over, then live pages again."""
    from tradestate.projections import follow as follow_module

    monkeypatch.setattr(follow_module, "LIVE_PAGE_ROWS", 10)
    with open_store(pg_url) as store, tradestate.connect(pg_url, clock=Clock()) as client:
        write_session(client, 120, seed=9)
        follower = _Follower(pg_url, projector_class=_Recording)
        follower.start()
        assert wait_for(store, client.position, timeout=10)
        time.sleep(0.3)  # the backlog's drain has seen the end of the log and returned
        client.record_signal("sma", "AFTER", "buy")  # a small page: live again
        assert wait_for(store, client.position, timeout=10)
        follower.finish()
        follower.assert_contiguous_to(client.position)
        rows = [n for n, _ in follower.pages]
        settings = follower.projector.sync_settings
        assert rows[0] == 10 and rows[1] > 10 and rows[-1] == 1, rows
        assert settings[0] == "off" and settings[1] == "on" and settings[-1] == "off", settings
        assert_equals_rebuild(store)
