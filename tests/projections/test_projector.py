"""The projector and its follower on real databases (``db_url``: a SQLite file and PostgreSQL).

The reference everywhere is a one-page rebuild: the whole log (or a prefix of it) folded and
written in a single transaction. Whatever happens in between (pages of any size, restarts,
two projectors racing, a live follower, the CLI), the tables must end equal to it, and the
tracking row must say how far they are.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.projector_worker import (
    ACCOUNTS,
    snapshot,
    Clock,
    Orders,
    Writer,
    assert_equals_rebuild,
    assert_same,
    cpu_seconds,
    dump_tables,
    prefix_snapshot,
    rebuild_snapshot,
    run_command,
    write_session,
)
from tradestate.adapters.store import open_store
from tradestate.projections.follow import FollowStats, channel_name, follow, notify
from tradestate.projections.projector import ProjectionConflict, Projector, wait_for

import tradestate

PG = pytest.param("postgresql", marks=pytest.mark.postgres)


# ------------------------------------------------------------------------ pages and restarts


def test_catch_up_in_pages_equals_a_one_page_rebuild(store, session):
    projector = Projector(store, page=7)
    assert projector.load() == 0
    assert projector.catch_up() == session
    assert projector.applied_pages == -(-session // 7)
    assert projector.tracked_position() == session and projector.lag() == (session, session)
    tables = dump_tables(store)
    assert len(tables["ts_orders"]) > 50 and tables["ts_positions"] and tables["ts_equity_curve"]
    assert tables["ts_risk_usage"] and tables["ts_signals"] and tables["ts_daily_stats"]
    assert_equals_rebuild(store)


def test_a_restart_between_every_page_changes_nothing(store, session):
    sizes = [1, 2, 3, 5, 8, 13, 21, 34]
    i = 0
    while True:
        projector = Projector(store)  # a new process, as after a crash
        position = projector.load()
        assert position == projector.tracked_position()
        if not projector.run_once(limit=sizes[i % len(sizes)]):
            break
        i += 1
    assert position == session
    assert_equals_rebuild(store)


def test_rebuild_with_progress_reports_position_and_head(store, session):
    seen: list[tuple[int, int]] = []
    assert Projector(store, page=50).rebuild(lambda p, h: seen.append((p, h))) == session
    assert seen[-1] == (session, session)
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)


# ------------------------------------------------------------------- two projectors, one table


class _RacingProjector(Projector):
    """Holds its transaction open right after reading the tracking row, until the other
    projector has read it too (or a second has passed): the worst interleaving, every time."""

    barrier: threading.Barrier

    def _tracked(self, cur):
        position = super()._tracked(cur)
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            pass  # the other one is blocked behind our lock: exactly what must happen
        return position


@pytest.mark.parametrize("first_page", [True, False], ids=["first-page", "later-page"])
def test_two_projectors_racing_for_the_same_page_apply_it_once(db_url, store, session, first_page):
    if not first_page:
        _loaded(Projector(store, page=40)).run_once()
    start = Projector(store).tracked_position()
    barrier = threading.Barrier(2, timeout=1.0)
    results: dict[str, object] = {}

    def run(name: str, page: int) -> None:
        with open_store(db_url) as s:
            p = _RacingProjector(s, page=page)
            p.barrier = barrier
            p.load()
            loaded.wait()  # both hold the same state before either starts its page
            try:
                results[name] = p.run_once()
            except ProjectionConflict:
                results[name] = "conflict"
                results[name + "-after"] = p.state.position  # reloaded: where the winner left the tables

    loaded = threading.Barrier(2, timeout=30)
    threads = [threading.Thread(target=run, args=("a", 5)), threading.Thread(target=run, args=("b", 9))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    outcomes = sorted(str(results[k]) for k in ("a", "b"))
    assert "conflict" in outcomes, f"both projectors applied a page from {start}: {results}"
    winner = 5 if results["a"] == 5 else 9
    assert Projector(store).tracked_position() == start + winner
    loser = "b" if winner == 5 else "a"
    assert results[loser + "-after"] == start + winner
    # the loser carries on from there, and the result is exactly the rebuild
    p = Projector(store, page=11)
    p.load()
    p.catch_up()
    assert_equals_rebuild(store)


def test_two_followers_and_a_writer_apply_every_event_exactly_once(db_url, store):
    with tradestate.connect(db_url, clock=Clock()) as client:
        write_session(client, 100, seed=5)
    writer = Writer(db_url, seed=6, pause=0.001)
    stop = threading.Event()
    stats = [FollowStats(), FollowStats()]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            with open_store(db_url) as s:
                follow(s, stop, projector=_loaded(Projector(s, page=3 + 4 * i)), stats=stats[i],
                       poll=(0.001, 0.01), on_error=errors.append)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    followers = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(2)]
    for t in followers:
        t.start()
    writer.start()
    # the writer writes for 2 s, and on until each follower has applied a page: on a loaded machine
    # one of them can lose every page for a while (a race it sat out tests nothing); bounded
    started = time.monotonic()
    while time.monotonic() - started < 2.0 or not (stats[0].events and stats[1].events):
        if time.monotonic() - started > 60:
            break  # the assertion below says so
        time.sleep(0.05)
    writer.stop.set()
    writer.join(60)
    assert not writer.is_alive() and writer.error is None, writer.error
    head = store.trading.head()
    assert wait_for(store, head, timeout=60)
    stop.set()
    for t in followers:
        t.join(30)
    assert not errors, errors
    # every log row was applied by exactly one of them: none twice, none skipped
    assert stats[0].events + stats[1].events == head, (stats, head)
    assert stats[0].events and stats[1].events, "one follower did all the work: no race was tested"
    assert_equals_rebuild(store)


def _loaded(projector: Projector) -> Projector:
    projector.load()
    return projector


class Follower(threading.Thread):
    """``follow()`` in a thread, on its own store (closed when it ends)."""

    def __init__(self, url: str, **options):
        super().__init__(name="follower", daemon=True)
        self.store = open_store(url)
        self.stop = threading.Event()
        self.stats = FollowStats()
        self.options = options
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            follow(self.store, self.stop, stats=self.stats, **self.options)
        except BaseException as e:  # noqa: BLE001 - the test asserts on it
            self.error = e
        finally:
            self.store.close()

    def finish(self) -> FollowStats:
        self.stop.set()
        self.join(15)
        assert not self.is_alive(), "the follower did not stop"
        assert self.error is None, self.error
        return self.stats


# --------------------------------------------------------------------------- live follow


def test_follow_picks_up_client_appends_and_wait_for_reads_your_writes(db_url, store):
    pages: list[tuple[int, int]] = []
    follower = Follower(db_url, on_page=lambda n, p: pages.append((n, p)))
    follower.start()
    lags = []
    with tradestate.connect(db_url, clock=Clock()) as client, open_store(db_url) as reader:
        orders = Orders()
        for i in range(40):
            run_command(client, orders, None, ("intent", i % 2, i % 2, "buy", 5, "100.25"))
            run_command(client, orders, None, ("fill", 0, 40, "100", i))
            position = client.position
            t0 = time.perf_counter()
            assert wait_for(reader, position, timeout=10), f"position {position} not projected within 10 s"
            lags.append(time.perf_counter() - t0)
            # read-your-writes: the order the client just filled is in the table, as the client sees it
            order = client.order(*orders.ids[-1][:2])
            row = next(r for r in dump_tables(reader)["ts_orders"] if r[2] == orders.ids[-1][1])
            assert Decimal(str(row[14])) == order["filled_qty"] and row[12] == order["status"] == "partially_filled"
        stats = follower.finish()
    assert stats.errors == 0 and stats.events == client.position and pages[-1][1] == client.position
    lags.sort()
    print(f"\nread-your-writes lag ({store.kind}): p50 {lags[len(lags) // 2] * 1000:.1f} ms, "
          f"max {lags[-1] * 1000:.1f} ms, {stats.polls} head polls")
    assert lags[len(lags) // 2] < 0.5
    assert_equals_rebuild(store)


def test_follow_stops_promptly_and_finishes_its_page(store, session):
    stop = threading.Event()
    seen: list[int] = []

    def on_page(n: int, position: int) -> None:
        seen.append(position)
        stop.set()  # asked to stop in the middle of a catch-up: the page in hand is committed

    stats = follow(store, stop, on_page=on_page, projector=_loaded(Projector(store, page=10)))
    assert seen == [10] and stats.position == 10 == Projector(store).tracked_position()


@pytest.mark.postgres
def test_pg_notifications_are_a_hint_the_watchdog_covers_a_lost_one(pg_url):
    """With head polling off, a NOTIFY after the commit wakes the follower at once; without one
    (nobody sends it today) the watchdog still catches up within its interval."""
    with open_store(pg_url) as store, tradestate.connect(pg_url) as client:
        assert channel_name(store) == f"{store.trading.datastore.schema}_ts_events"
        follower = Follower(pg_url, poll=None, watchdog=1.5)
        stats = follower.stats
        first = client.record_signal("sma", "FIRST", "buy")
        follower.start()
        assert wait_for(store, first.position, timeout=5)  # started: LISTEN is in place
        woken = []
        for i in range(5):
            r = client.record_signal("sma", f"S{i}", "buy")
            t0 = time.perf_counter()
            notify(store, r.position)
            assert wait_for(store, r.position, timeout=5)
            woken.append(time.perf_counter() - t0)
        assert max(woken) < 0.5, woken
        assert stats.notifications >= 5
        # no notification: found by the watchdog, within its interval (after the follower has gone
        # idle: a drain still under way after the last notification would pick the event up itself)
        time.sleep(0.3)
        r = client.record_signal("sma", "QUIET", "sell")
        t0 = time.perf_counter()
        assert wait_for(store, r.position, timeout=5)
        quiet = time.perf_counter() - t0
        assert quiet < 1.5 + 1.0, quiet  # the watchdog interval, and some slack for a busy machine
        assert stats.watchdog_catchups >= 1
        follower.finish()
        print(f"\nnotified wake-up: max {max(woken) * 1000:.1f} ms; without a notification: {quiet * 1000:.0f} ms")


@pytest.mark.postgres
def test_pg_follower_survives_losing_its_connections(pg_url, pg_server):
    """A database restart or a network cut: the follower reports, backs off, reconnects and
    carries on, and the tables end equal to the rebuild."""
    import psycopg

    with open_store(pg_url) as store, tradestate.connect(pg_url, clock=Clock()) as client:
        write_session(client, 60, seed=2)
        follower = Follower(pg_url, on_error=lambda e: None)
        follower.start()
        assert wait_for(store, client.position, timeout=10)
        time.sleep(0.2)
        pids = [c.info.backend_pid for c in follower.store.trading._pinned]
        with psycopg.connect(pg_server, autocommit=True) as admin:
            # the follower's own connections only: its pinned one and its LISTEN connection
            listener = admin.execute("SELECT pid FROM pg_stat_activity WHERE query = %s",
                                     (f'LISTEN "{channel_name(store)}"',)).fetchall()
            pids += [pid for (pid,) in listener]
            assert len(pids) >= 2, pids
            for pid in pids:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        write_session(client, 60, seed=3)
        assert wait_for(store, store.trading.head(), timeout=15), (follower.stats, store.trading.head())
        stats = follower.finish()
        print(f"\nafter losing its connections: {stats.errors} errors, {stats.reloads} reloads ({stats.last_error})")
        assert_equals_rebuild(store)


@pytest.mark.postgres
def test_pg_projector_writes_big_pages_again_after_a_reconnect(pg_url, pg_server):
    """Pages of more than 20 rows per table go through a session-private staging table; a new
    connection (after the old one died) must get its own, or every page fails from then on."""
    import psycopg

    with open_store(pg_url) as store:
        with tradestate.connect(pg_url, clock=Clock()) as client:
            write_session(client, 150, seed=1)
        projector = _loaded(Projector(store))
        assert projector.run_once() > 100  # stages through the temp tables of this connection
        (conn,) = store.trading._pinned
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        with tradestate.connect(pg_url, clock=Clock()) as client:
            write_session(client, 150, seed=2)
        # The dead idle connection is noticed before use and replaced: a new connection, with
        # new staging tables, applies the page.
        assert projector.run_once() > 100
        assert store.trading._pinned[0] is not conn
        assert projector.run_once() == 0
        assert_equals_rebuild(store)


# ------------------------------------------------------------------------------- property

ACCT = st.integers(0, len(ACCOUNTS) - 1)
SYM = st.integers(0, 1)
IDX = st.integers(0, 11)
COMMAND = st.one_of(
    st.tuples(st.just("intent"), ACCT, SYM, st.sampled_from(["buy", "sell"]), st.integers(1, 30),
              st.sampled_from([None, "99.5", "100.25"])),
    st.tuples(st.just("intent"), ACCT, SYM, st.sampled_from(["buy", "sell"]), st.integers(1, 30), st.none()),
    st.tuples(st.just("trade"), ACCT, SYM, st.sampled_from(["buy", "sell"]), st.integers(2, 30),
              st.lists(st.sampled_from([10, 25, 50, 100]), min_size=1, max_size=4)),
    st.tuples(st.just("trade"), ACCT, SYM, st.sampled_from(["buy", "sell"]), st.integers(2, 30),
              st.lists(st.sampled_from([10, 25, 50, 100]), min_size=1, max_size=4)),
    st.tuples(st.just("submit"), IDX),
    st.tuples(st.just("ack"), IDX),
    st.tuples(st.just("fill"), IDX, st.sampled_from([25, 40, 50, 100, 130]), st.sampled_from(["99", "100.5", "101.25"]),
              st.integers(0, 4)),
    st.tuples(st.just("fill"), IDX, st.sampled_from([25, 50, 100]), st.sampled_from(["98.75", "100"]),
              st.integers(0, 4)),
    st.tuples(st.just("cancel"), IDX),
    st.tuples(st.just("reject"), IDX),
    st.tuples(st.just("replace"), IDX, st.integers(1, 30)),
    st.tuples(st.just("limit"), ACCT, st.sampled_from(["max_order_qty", "max_position_qty", "max_open_orders",
                                                      "max_daily_trades", "max_order_notional"]),
              st.sampled_from([2, 25, 200, 5000, None])),
    st.tuples(st.just("breaker"), ACCT, st.booleans()),
    st.tuples(st.just("kill"), ACCT, st.booleans()),
    st.tuples(st.just("resume"), ACCT, st.sampled_from([50, 75, 100])),
    st.tuples(st.just("breach"), ACCT),
    st.tuples(st.just("signal"), st.integers(0, 1), SYM, st.sampled_from(["buy", "sell", "flat"]),
              st.sampled_from([None, "0.5", "1.25"])),
    st.tuples(st.just("tick"), st.sampled_from([1, 30, 600, 1440])),
    # the venues' vocabulary: instruments, FX, splits, cash, late fees, corrections, amendments
    st.tuples(st.just("instrument"), SYM, st.sampled_from([1, 10, 100]), st.sampled_from(["USD", "EUR"])),
    st.tuples(st.just("fx"), st.sampled_from(["1.1", "1.25"])),
    st.tuples(st.just("split"), SYM, st.integers(0, 2), st.sampled_from([1, 10]), st.sampled_from([2, 3])),
    st.tuples(st.just("cash"), ACCT, st.sampled_from(["USD", "EUR"]), st.sampled_from(["10000", "-50.5"])),
    st.tuples(st.just("pending_fill"), IDX, st.sampled_from([25, 50, 100]), st.sampled_from(["99", "100.5"]),
              st.integers(0, 4)),
    st.tuples(st.just("fee"), IDX, st.integers(0, 4), st.sampled_from(["0.05", "1"]), st.booleans(), st.booleans()),
    st.tuples(st.just("correct"), IDX, st.integers(0, 4), st.integers(1, 2), st.sampled_from([0, 25, 50]),
              st.sampled_from(["99.5", "101"]), st.booleans()),
    st.tuples(st.just("amend"), IDX, st.integers(1, 40)),
    st.tuples(st.just("amend_refused"), IDX),
    st.tuples(st.just("venue_trade"), ACCT, SYM, st.integers(2, 30),
              st.lists(st.sampled_from([25, 50, 100]), min_size=1, max_size=3), st.integers(0, 3), st.integers(0, 2),
              st.sampled_from([None, 7, 40])),
)


@settings(max_examples=int(os.environ.get("TRADESTATE_PROJECTOR_EXAMPLES", "40")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    commands=st.lists(COMMAND, min_size=5, max_size=50),
    pages=st.lists(st.integers(1, 12), min_size=1, max_size=12),
    restarts=st.lists(st.booleans(), min_size=1, max_size=12),
    check_page=st.integers(0, 8),
)
def test_any_split_into_pages_with_restarts_equals_a_one_page_rebuild(commands, pages, restarts, check_page):
    """Any command sequence, recorded into a fresh SQLite log, projected in any split into pages
    with restarts (a new projector and ``load()``) between them, gives the tables a one-page
    rebuild gives: at the end, and at one page boundary in the middle (rebuilt from a copy of the
    log up to there)."""
    with tempfile.TemporaryDirectory(prefix="tradestate-projector-") as tmp:
        url = f"sqlite:///{tmp}/log.db"
        clock = Clock()
        with tradestate.connect(url, clock=clock) as client:
            orders = Orders()
            for cmd in commands:
                run_command(client, orders, clock, cmd)
        with open_store(url) as store:
            head = store.trading.head()
            projector = Projector(store)
            projector.load()
            middle: tuple[int, dict] | None = None
            i = 0
            while projector.run_once(limit=pages[i % len(pages)]):
                position = projector.state.position
                if i == check_page and position < head:
                    middle = position, dump_tables(store)
                if restarts[i % len(restarts)]:
                    projector = Projector(store)
                    assert projector.load() == position
                i += 1
            assert projector.state.position == head == projector.tracked_position()
            if middle is not None:
                assert_same(middle[1], prefix_snapshot(store, middle[0], f"sqlite:///{tmp}/prefix.db"),
                            f"tables at position {middle[0]} of {head}")
            final = dump_tables(store)
            rebuilt_at, rebuilt = rebuild_snapshot(store)
            assert rebuilt_at == head
            assert_same(final, rebuilt)
            # the rebuild from zero (fold first, fresh tables swapped in) writes the same tables
            fast = Projector(store, page=pages[0])
            assert fast.rebuild() == head
            assert_same(dump_tables(store), rebuilt, "tables of the rebuild from zero")
            assert fast.tracked_position() == head


# ------------------------------------------------------------------- the rebuild from zero


def _leftovers(store) -> list[str]:
    """Fresh tables of rebuilds that are still in the database."""
    from tradestate.adapters.store.sql import read_cursor
    from tradestate.projections.rebuild import FreshTables

    with read_cursor(store) as cur:
        return FreshTables(Projector(store))._leftovers(cur)


@pytest.mark.parametrize("page, writer_process", [(1, False), (7, True), (10**6, False), (10**6, True)])
def test_the_rebuild_from_zero_equals_the_paged_rebuild(db_url, store, session, page, writer_process, monkeypatch):
    from tradestate.projections import rebuild as rebuild_module

    monkeypatch.setattr(rebuild_module, "ORDER_CHUNK", 3)  # many chunks: orders written as they finish
    monkeypatch.setattr(rebuild_module, "EQUITY_CHUNK", 2)  # equity minutes flushed (and rewritten) often
    projector = Projector(store, page=page)
    assert projector.rebuild(writer_process=writer_process) == session
    assert projector.tracked_position() == session
    fast = dump_tables(store)
    assert len(fast["ts_orders"]) > 50 and fast["ts_equity_curve"] and fast["ts_risk_usage"]
    assert not _leftovers(store)
    assert_equals_rebuild(store)
    # memory: finished orders are gone, only the open ones (and any brought back) are held
    open_orders = sum(1 for row in fast["ts_orders"] if row[13])
    assert len(projector.state.orders) <= open_orders + projector.state.orders.brought_back
    # the projector carries on through the paged path from where the rebuild left the tables
    with tradestate.connect(db_url, clock=Clock()) as client:
        write_session(client, 40, seed=12)
    assert projector.catch_up() == store.trading.head()
    assert_equals_rebuild(store)
    # and again over the tables a rebuild swapped in (their keys and indexes renamed into place)
    assert Projector(store, page=page).rebuild() == store.trading.head()
    assert_equals_rebuild(store)


def test_a_rebuild_keeping_its_state_carries_on_without_a_reload(db_url, store, session):
    projector = Projector(store)
    assert projector.rebuild(keep_state=True) == session
    reference = Projector(store)
    reference.load()
    assert projector.state.summary() == reference.state.summary()
    with tradestate.connect(db_url, clock=Clock()) as client:
        write_session(client, 40, seed=13)
    assert projector.catch_up() == store.trading.head()
    assert_equals_rebuild(store)


def test_an_order_finished_and_written_comes_back_for_a_later_event(db_url, store):
    """A fill after the order was cancelled: the rebuild has written and forgotten the order and
    must fold it again from its stream for the late fill (the paged path still holds it)."""
    from tradestate.adapters.store import new_event
    from tradestate.domain.ids import order_stream_id

    with tradestate.connect(db_url, clock=Clock()) as client:
        write_session(client, 60, seed=4)
    rows = list(store.trading.iter_rows(0))
    cancelled = [(s, v) for _p, s, v, t, _d, _a in rows if t == "OrderCancelled"]
    filled = {s: d for _p, s, _v, t, d, _a in rows if t == "OrderFilled"}
    assert cancelled and filled, "the session has cancels and fills"
    stream, version = cancelled[0]
    last_version = max(v for _p, s, v, *_ in rows if s == stream)
    import orjson

    late = orjson.loads(next(iter(filled.values())))
    intent = next(orjson.loads(d) for _p, s, _v, t, d, _a in rows if s == stream and t == "OrderIntentRecorded")
    late.update(account=intent["account"], client_order_id=intent["client_order_id"], exec_id="late-1", qty="1")
    assert order_stream_id(intent["account"], intent["client_order_id"]) == stream
    store.trading.append([new_event(stream, last_version + 1, "OrderFilled", orjson.dumps(late))])
    projector = Projector(store, page=5)
    assert projector.rebuild() == store.trading.head()
    assert projector.state.orders.brought_back >= 1
    assert_equals_rebuild(store)


def _prefix_tables(store, session) -> tuple[int, dict]:
    """Tables projected by the paged path up to a prefix of the log (what a rebuild replaces)."""
    projector = Projector(store)
    projector.load()
    projector.run_once(limit=session // 3)
    return snapshot(store)


def test_readers_see_the_old_tables_until_the_swap(db_url, store, session, monkeypatch):
    from tradestate.projections import rebuild as rebuild_module

    monkeypatch.setattr(rebuild_module, "ORDER_CHUNK", 2)
    old = _prefix_tables(store, session)
    seen: list[tuple[int, dict]] = []

    def peek(position: int, head: int) -> None:
        if position < head:
            with open_store(db_url) as reader:  # another connection, as a risk tool's
                seen.append(snapshot(reader))

    assert Projector(store, page=10).rebuild(peek) == session
    assert len(seen) > 5
    assert all(s == old for s in seen), "a reader saw a half-built table during the rebuild"
    assert snapshot(store)[0] == session
    assert_equals_rebuild(store)


class _Boom(Exception):
    pass


@pytest.mark.parametrize("where", ["fold", "write", "writer process", "swap"])
def test_a_failed_rebuild_leaves_the_old_tables_and_position(db_url, store, session, monkeypatch, where):
    from tradestate.projections import projector as projector_module
    from tradestate.projections import rebuild as rebuild_module

    monkeypatch.setattr(rebuild_module, "ORDER_CHUNK", 2)
    old = _prefix_tables(store, session)
    progress = None
    if where == "fold":
        def progress(position: int, head: int) -> None:
            if position > session // 2:
                raise _Boom()
    elif where == "write":
        calls = []
        original = rebuild_module.FreshTables.write

        def write(self, tables):
            calls.append(1)
            if len(calls) == 3:
                raise _Boom()
            return original(self, tables)

        monkeypatch.setattr(rebuild_module.FreshTables, "write", write)
    elif where == "writer process":  # the child dies with two chunks written
        sent = []
        original_submit = rebuild_module._WriterProcess.submit

        def submit(self, tables):
            sent.append(1)
            if len(sent) == 3:
                self.result()
                self._proc.kill()
                self._proc.wait()
            return original_submit(self, tables)

        monkeypatch.setattr(rebuild_module._WriterProcess, "submit", submit)
    else:  # inside the swap's transaction, after the old tables were dropped and the fresh renamed
        def fail(*_args):
            raise _Boom()

        monkeypatch.setattr(projector_module, "_time", fail)
    projector = Projector(store, page=10)
    with pytest.raises(RuntimeError if where == "writer process" else _Boom):
        projector.rebuild(progress, writer_process=where == "writer process")
    assert snapshot(store) == old
    assert not _leftovers(store)
    monkeypatch.undo()
    # the projector carries on from the tables it has (it reloads), and ends as a rebuild
    assert projector.catch_up() == session
    assert_equals_rebuild(store)


def test_a_killed_rebuild_leaves_fresh_tables_the_next_one_drops(store, session):
    from tradestate.projections.rebuild import FreshTables

    FreshTables(Projector(store)).create()  # as a rebuild killed mid-way leaves them
    assert _leftovers(store)
    assert Projector(store).rebuild() == session
    assert not _leftovers(store)
    assert_equals_rebuild(store)


# ------------------------------------------------------------------------------------ CLI


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tradestate.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_once_and_rebuild_leave_the_tables_equal_to_a_rebuild(db_url, store, session):
    run = cli("project", "--db", db_url, "--once")
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"position {session:,} of head {session:,}" in run.stdout and "events/s" in run.stdout
    assert Projector(store).tracked_position() == session
    tables = dump_tables(store)
    with tradestate.connect(db_url, clock=Clock()) as client:
        head = write_session(client, 40, seed=12)
    run = cli("project", "--db", db_url, "--rebuild", "--once")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "rebuilt: position" in run.stdout and "Traceback" not in run.stdout + run.stderr
    assert Projector(store).tracked_position() == head
    assert_equals_rebuild(store)
    assert dump_tables(store) != tables
    # once more with nothing new: still exit 0, nothing applied
    run = cli("project", "--db", db_url, "--once")
    assert run.returncode == 0 and "(+0 events" in run.stdout, run.stdout


def test_cli_project_on_a_missing_directory_is_a_clear_error(tmp_path):
    run = cli("project", "--db", f"sqlite:///{tmp_path}/no/such/dir/x.db", "--once")
    assert run.returncode == 2 and "does not exist" in run.stderr and "Traceback" not in run.stdout + run.stderr


def start_follower(db_url: str, out: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "tradestate.cli", "project", "--db", db_url, *extra],
                            stdout=out.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while "following" not in out.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the follower did not start: {out.read_text()}")
        time.sleep(0.02)
    return proc


def test_cli_follower_follows_idles_cheaply_and_stops_cleanly_on_sigterm(db_url, store, session, tmp_path):
    out = tmp_path / "follower.out"
    proc = start_follower(db_url, out, "--rebuild")
    try:
        assert wait_for(store, session, timeout=30)
        with tradestate.connect(db_url, clock=Clock()) as client:
            lags = []
            for i in range(20):
                r = client.record_signal("sma", f"S{i}", "buy", value=i)
                t0 = time.perf_counter()
                assert wait_for(store, r.position, timeout=10)
                lags.append(time.perf_counter() - t0)
        time.sleep(1.0)  # idle from here on
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(3.0)
        idle = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - t0)
        lags.sort()
        print(f"\nCLI follower ({store.kind}): idle CPU {idle * 100:.2f}% of a core; "
              f"append-to-table lag p50 {lags[10] * 1000:.1f} ms, max {lags[-1] * 1000:.1f} ms")
        assert idle < 0.05, f"an idle follower uses {idle * 100:.1f}% of a core"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.read_text()
    assert "stopped: position" in text and "Traceback" not in text, text
    assert_equals_rebuild(store)


def test_cli_follower_stops_on_sigint_too(sqlite_url, tmp_path):
    with tradestate.connect(sqlite_url) as client:
        write_session(client, 20)
    out = tmp_path / "follower.out"
    proc = start_follower(sqlite_url, out)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0, out.read_text()
    assert "stopped: position" in out.read_text()


def test_the_rebuilds_fold_alone_folds_every_event_and_writes_no_table(db_url, store, session):
    """``fold_as_rebuilt`` (the bench's ceiling of a rebuild) reads the pages a rebuild reads,
    whatever their size, and leaves the read models and their position as they were."""
    from tradestate.projections.rebuild import fold_as_rebuilt

    projector = Projector(store)
    projector.create_tables()
    projector.page = 7  # many pages: page boundaries inside orders' lifecycles
    assert fold_as_rebuilt(projector) == store.trading.head() == session
    assert Projector(store).tracked_position() == 0
    with store.trading.transaction() as cur:
        cur.execute(f"SELECT count(*) FROM {projector.dialect.name('ts_orders')}")
        assert cur.fetchone()[0] == 0  # nothing projected yet, and the fold projected nothing
