"""Following the log: the ``tradestate project`` command keeps the read models current, live.

``follow(store, stop)`` catches up (a page per transaction, see ``projector.py``), then waits for
new events and catches up again, until ``stop`` is set; ``run_project`` is the command around it
(``--rebuild`` with a progress bar, ``--once`` to catch up and exit, SIGTERM/SIGINT to stop).

Waking up
---------
Nothing here needs a notification to be correct or fast. Between catch-ups the follower polls the
log: a poll is the catch-up itself, a ranged read after the tables' position (an index range scan;
a page when something is there). While the log is busy (``BUSY_PAGES`` pages within ``BUSY_FOR``)
or an append still committing below the head holds the follower back (PostgreSQL, see
``adapters/store/postgres.py``; for ``HOLE_RETRY_FOR``, after which the reader's hole probe
decides) it polls every ``first`` (1 ms); otherwise the interval doubles up to 50 ms while the log
is idle (``poll=(0.001, 0.05)``). A new event is therefore applied a few milliseconds after its
commit under load, the first event after a quiet spell within the longest interval, and an idle
follower costs a fraction of a percent of a core.

Every page is one read-model transaction covering everything contiguous that was visible when it
was read (up to the projector's page size), so under load the follower commits one page per
wake-up, not one per event. On PostgreSQL that transaction does not wait for its WAL flush (see
``_unflushed_transaction``: the tables are derived from the durable log, and tables and tracking
row still commit atomically); ``flush_pages=True`` restores flushed commits.

On PostgreSQL each wait between two polls is a ``LISTEN`` wait on ``channel_name(store)``
(``<schema>_<events table>``, e.g. ``public_ts_events``), so a writer that sends a notification
wakes the follower at once. Writers MAY do so, **after** their commit and outside the append
transaction, e.g. (``notify(store)`` below does exactly this)::

    SELECT pg_notify('public_ts_events', '');   -- autocommit, after the append returned

Never inside the append transaction: a transaction that has called ``NOTIFY`` takes a
database-wide lock at commit, which serialises every committing writer behind one flush, the very
cap this log's append avoids (and a notification after the commit is a second transaction with a
WAL flush of its own: at full rate it would halve a writer's appends). No writer in this package
sends one, and a notification is only ever a hint: it is never needed (the poll finds the event
anyway) and a lost one costs nothing. With polling turned off (``poll=None``, notifications only)
a lost notification costs at most the watchdog interval.

The watchdog (every ``watchdog`` seconds, default 1 s) compares the log's head with the tracking
row in the database (not the follower's memory): if another projector or a rebuild moved the
tables, the follower reloads; if the log is ahead, it catches up.

Errors: a page that fails is not applied (its transaction rolls back, the projector reloads the
state the tables hold); the follower reports the error and retries with a backoff (50 ms .. 5 s),
so a database restart or a network cut only delays the tables. ``ProjectionConflict`` (another
projector applied the page first) is expected when two followers share the tables: the loser
reloads and carries on.
"""

from __future__ import annotations

import re
import select
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..adapters.store import Store
from ..adapters.store.sql import read_cursor
from .projector import ProjectionConflict, Projector

Poll = tuple[float, float] | None  # (first, longest) poll interval in seconds; None: no polling
DEFAULT_POLL: Poll = (0.001, 0.05)
DEFAULT_WATCHDOG = 1.0
OnPage = Callable[[int, int], None]  # (log rows the page covered, position reached)
OnError = Callable[[BaseException], None]


@dataclass
class FollowStats:
    """Counters of one follower run, updated as it goes (read them from any thread; ``rate`` is events
    per second since ``started``)."""

    position: int = 0  # the position the tables hold (as this follower knows it)
    start_position: int = 0
    events: int = 0  # log rows applied by this follower
    pages: int = 0
    conflicts: int = 0  # pages another projector applied first
    errors: int = 0
    notifications: int = 0  # LISTEN wake-ups
    polls: int = 0  # head polls
    watchdog_catchups: int = 0  # times the watchdog found the log ahead of the tables
    reloads: int = 0
    last_page_rows: int = 0  # log rows of the last page applied
    started: float = field(default_factory=time.perf_counter)
    last_error: str = ""

    @property
    def seconds(self) -> float:
        """Seconds since the follower started."""
        return time.perf_counter() - self.started

    @property
    def rate(self) -> float:
        """Events applied per second since the follower started (0 before any time has passed)."""
        seconds = self.seconds
        return self.events / seconds if seconds > 0 else 0.0


def channel_name(store: Store) -> str:
    """The LISTEN/NOTIFY channel of the store's trading log: ``<schema>_<table>``, lower case,
    characters other than ``[a-z0-9_]`` replaced by ``_``, at most 63 bytes (PostgreSQL's
    identifier limit), so it is the same whether a writer quotes it or not."""
    schema = store.trading.schema or "public"
    name = re.sub(r"[^a-z0-9_]", "_", f"{schema}_{store.trading.table}".lower())
    return name[:63]


def notify(store: Store, position: int | None = None) -> None:
    """Wake followers of ``store`` now (PostgreSQL; a no-op on SQLite). Call it after an append
    has returned, never inside the append transaction (see the module docstring)."""
    if not store.dialect.is_postgres:
        return
    with read_cursor(store) as cur:  # autocommit: the notification is its own transaction
        cur.execute("SELECT pg_notify(%s, %s)", (channel_name(store), "" if position is None else str(position)))


class _Listener:
    """A LISTEN connection used only to wait; without one (SQLite, or PostgreSQL unreachable)
    the waits are plain sleeps and the head polls do the work."""

    def __init__(self, store: Store):
        self.store = store
        self.channel = channel_name(store)
        self.conn: Any = None
        self.failed_at = 0.0

    def connect(self) -> bool:
        """LISTEN on the log's channel on a connection of the log's pool; True when listening. False on
        SQLite, and for a while after a failed attempt (the polls carry on without it)."""
        if self.conn is not None:
            return True
        if not self.store.dialect.is_postgres or time.monotonic() - self.failed_at < DEFAULT_WATCHDOG:
            return False
        from psycopg.sql import SQL, Identifier

        log = self.store.trading
        try:
            conn = log.checkout_connection()  # type: ignore[attr-defined]  # PostgresEventLog
            try:
                conn.execute(SQL("LISTEN {}").format(Identifier(self.channel)))
            except BaseException:
                log.checkin_connection(conn)  # type: ignore[attr-defined]
                raise
        except Exception:  # noqa: BLE001 - only a hint: the polls carry on without it
            self.failed_at = time.monotonic()
            return False
        self.conn = conn
        return True

    def wait(self, timeout: float, stop: threading.Event) -> bool:
        """Sleep up to ``timeout`` s; True if a notification arrived meanwhile."""
        if timeout <= 0:
            return False
        if self.conn is None:
            stop.wait(timeout)
            return False
        try:
            # select() on the socket, then libpq's own queue: psycopg's ``notifies(timeout=)``
            # costs about 1 ms of CPU per call, 2% of a core at 20 waits/s; this costs ~0.1%.
            readable, _, _ = select.select([self.conn.pgconn.socket], [], [], timeout)
            if not readable:
                return False
            pgconn = self.conn.pgconn
            pgconn.consume_input()  # raises on a connection the server closed
            got = False
            while pgconn.notifies() is not None:  # coalesce: one catch-up serves them all
                got = True
            return got
        except Exception:  # noqa: BLE001 - a broken LISTEN connection: fall back to polling
            self.close()
            self.failed_at = time.monotonic()
            return False

    def close(self) -> None:
        """Stop listening and give the connection back to the pool (a broken one is closed);
        idempotent."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            if not conn.closed and not conn.broken:
                conn.execute("UNLISTEN *")
            self.store.trading.checkin_connection(conn)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - closing anyway
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass


def drain(projector: Projector, stop: threading.Event | None = None, stats: FollowStats | None = None,
          on_page: OnPage | None = None, *, limit: int | None = None) -> int:
    """Apply pages until the log's contiguous end (or ``stop``: the page in hand is finished
    first); returns the log rows applied. A page another projector applied first is skipped.
    ``limit``: pages of at most that many log rows, and return after the first full one (a
    backlog: the caller decides how to go on)."""
    total = 0
    while stop is None or not stop.is_set():
        try:
            n = projector.run_once(limit)
        except ProjectionConflict:
            # run_once has reloaded the state the tables hold: carry on from there
            if stats is not None:
                stats.conflicts += 1
                stats.position = projector.state.position
            continue
        if not n:
            break
        total += n
        if stats is not None:
            stats.events += n
            stats.pages += 1
            stats.last_page_rows = n
            stats.position = projector.state.position
        if on_page is not None:
            on_page(n, projector.state.position)
        if limit is not None and n >= limit:
            break
    return total


# While the log is busy the follower polls at ``first``: while BUSY_PAGES pages landed within the
# last BUSY_FOR seconds (writers starved of CPU on a loaded machine pause for tens of milliseconds
# together, and a backoff doubling from the first empty poll would then sleep through their next
# burst; a trickle of events keeps the cheap doubling backoff), and while an append committing
# below the head holds it back, for HOLE_RETRY_FOR seconds (after that the reader's hole probe
# decides, see ``adapters/store/postgres.py``, and the follower backs off).
BUSY_FOR = 0.05
BUSY_PAGES = 3
HOLE_RETRY_FOR = 0.02
# Live pages (PostgreSQL) hold at most this many log rows: they are sent pipelined, row by row
# (see ``_unflushed_transaction``). A full one means a backlog (a follower that was down, a stall),
# which goes on in the projector's own pages: ``Projector.page`` rows, each table by COPY, flushed.
LIVE_PAGE_ROWS = 2_000


class _CursorPerStatement:
    """A cursor that is a new psycopg cursor for each statement. In pipeline mode a psycopg cursor
    takes each result of its statements as it arrives, so after ``execute(a); execute(b)`` a
    ``fetchone()`` can read ``a``'s late result instead of waiting for ``b``'s (the projector reads
    the tracking row right after an INSERT on the same cursor); one cursor per statement keeps
    every fetch on its own statement's result."""

    def __init__(self, conn: Any) -> None:
        from psycopg.rows import tuple_row

        self._conn = conn
        self._row_factory = tuple_row
        self._cursor = conn.cursor(row_factory=tuple_row)

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """``Cursor.execute`` on a new cursor (returned, as psycopg returns the cursor)."""
        self._cursor = self._conn.cursor(row_factory=self._row_factory)
        return self._cursor.execute(*args, **kwargs)

    def executemany(self, *args: Any, **kwargs: Any) -> None:
        """``Cursor.executemany`` on a new cursor."""
        self._cursor = self._conn.cursor(row_factory=self._row_factory)
        self._cursor.executemany(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # fetchone, rowcount, connection, ...: the last statement's
        return getattr(self._cursor, name)


@contextmanager
def _unflushed_transaction(store: Store) -> Iterator[Any]:
    """A page's write transaction on PostgreSQL, pipelined and committed without waiting for its
    WAL flush (``SET LOCAL synchronous_commit = off``).

    Pipelined: the statements go out together and the server's answers are awaited twice (at the
    projector's read of the tracking row, and at the commit) instead of once per statement; on a
    machine whose cores are busy each wait is a trip through the scheduler for the server process
    and for the follower, a millisecond or more apiece. (The projector's COPY path cannot run in a
    pipeline: ``follow`` raises ``copy_above`` for its live pages, which hold at most
    ``LIVE_PAGE_ROWS`` log rows.) The block gets a ``_CursorPerStatement``.

    Why an unflushed commit is safe for read models: the tables and the tracking row still commit
    atomically, so a server crash can only lose the last pages (at most ~3 x ``wal_writer_delay``,
    0.6 s by default; in practice the next durable commit of any writer flushes them), leaving
    the tables at an older, consistent position that the follower re-applies from the log (its
    next page then finds the tracking row behind it and reloads, see ``drain``). Nothing the
    tables show can be missing from the log: only committed log rows are read, and those are
    durable. What it saves is the follower's place in the WAL flush queue: under 8 writers a page's
    commit waited there for 2-5 ms, a third of the follower's time."""
    from psycopg.pq import TransactionStatus

    with store.trading.transaction() as cur:  # autocommit cursor on this thread's pinned connection
        conn = cur.connection
        try:
            # Plain BEGIN/COMMIT statements: psycopg's transaction() inside a pipeline costs a sync
            # (a round trip) of its own at the start.
            with conn.pipeline():
                cur.execute("BEGIN")
                cur.execute("SET LOCAL synchronous_commit = off")
                yield _CursorPerStatement(conn)
                cur.execute("COMMIT")
        except BaseException:
            # The block raised, or a statement failed on the server (raised at the pipeline's sync):
            # nothing of the page may stay, nor the connection be left inside the transaction.
            if not conn.closed and conn.info.transaction_status in (TransactionStatus.INTRANS,
                                                                    TransactionStatus.INERROR):
                try:
                    conn.execute("ROLLBACK")
                except Exception:  # noqa: BLE001 - a broken connection rolls back by itself
                    pass
            raise


def _hole_age(store: Store, position: int) -> float | None:
    """Seconds this reader has been held back by a hole above ``position`` (an append committing
    below the head), None when it is not held back."""
    return store.trading.held_back_for(position)


def follow(
    store: Store,
    stop: threading.Event,
    on_page: OnPage | None = None,
    poll: Poll = DEFAULT_POLL,
    *,
    watchdog: float = DEFAULT_WATCHDOG,
    listen: bool = True,
    projector: Projector | None = None,
    on_error: OnError | None = None,
    stats: FollowStats | None = None,
    on_tick: Callable[[], None] | None = None,
    flush_pages: bool = False,
) -> FollowStats:
    """Keep the tables of ``store`` current until ``stop`` is set; returns what it did.

    ``poll``: (first, longest) poll interval: ``first`` while the log is busy (``BUSY_FOR``,
    ``HOLE_RETRY_FOR``), then doubling while nothing new arrives; a poll is a read of the log
    after the tables' position, which is also the catch-up. ``None`` polls only at the watchdog
    (rely on notifications). ``listen``: on PostgreSQL, wait with LISTEN between polls.
    ``projector``: an already loaded projector (default: a new one, loaded here).
    ``flush_pages``: on PostgreSQL, pages of at most ``LIVE_PAGE_ROWS`` log rows are pipelined
    and do not wait for their WAL flush (see ``_unflushed_transaction``) unless this is True;
    a backlog, and SQLite's pages, always commit as the projector's own. ``on_page(rows, position)`` runs after each committed page,
    ``on_error(e)`` after each failure (the follower retries), ``on_tick()`` at each watchdog check
    (every ``watchdog`` seconds, busy or idle: time-based work such as checkpoints while the log
    is quiet). ``stats`` may be passed in to watch it live."""
    if poll is not None and not (0 < poll[0] <= poll[1]):
        raise ValueError(f"poll must be (first, longest) with 0 < first <= longest, not {poll!r}")
    if watchdog <= 0:
        raise ValueError("watchdog must be positive")
    if projector is None:
        projector = Projector(store)
        projector.load()
    unflushed = store.dialect.is_postgres and not flush_pages
    stats = stats or FollowStats()
    stats.position = stats.start_position = projector.state.position
    listener = _Listener(store) if listen and store.dialect.is_postgres else None
    first, longest = poll if poll is not None else (watchdog, watchdog)
    interval = first
    recent_pages: list[float] = []  # when the last BUSY_PAGES pages landed (monotonic)
    next_watchdog = time.monotonic() + watchdog
    pending = True  # a catch-up is due
    reload = False
    backoff = 0.0
    try:
        if listener is not None:
            listener.connect()  # before the first catch-up: nothing committed after it is missed
        while not stop.is_set():
            if pending:
                try:
                    if reload:
                        projector.load()
                        stats.reloads += 1
                        stats.position = projector.state.position
                        reload = False
                    if unflushed:
                        live_page = min(LIVE_PAGE_ROWS, projector.page)
                        with projector.pages_in(lambda: _unflushed_transaction(store), copy_above=1 << 62):
                            applied = drain(projector, stop, stats, on_page, limit=live_page)
                        if stats.last_page_rows >= live_page and not stop.is_set():  # a backlog
                            applied += drain(projector, stop, stats, on_page)
                    else:
                        applied = drain(projector, stop, stats, on_page)
                    backoff = 0.0
                    pending = False
                except Exception as e:  # noqa: BLE001 - report, back off, retry
                    stats.errors += 1
                    stats.last_error = f"{type(e).__name__}: {e}"
                    if on_error is not None:
                        on_error(e)
                    reload = True  # the state in memory may be ahead of the tables
                    backoff = min(max(backoff * 2, 0.05), 5.0)
                    stop.wait(backoff)
                    continue
                if stop.is_set():
                    break
                if poll is not None:
                    now = time.monotonic()
                    if applied:
                        recent_pages = [*recent_pages[1 - BUSY_PAGES:], now]
                    held = _hole_age(store, projector.state.position)
                    busy = len(recent_pages) == BUSY_PAGES and now - recent_pages[0] < BUSY_FOR
                    if busy or (held is not None and held < HOLE_RETRY_FOR):
                        interval = first  # busy: more is on its way, or committing below the head now
                    else:
                        interval = min(interval * 2, longest)  # idle: back off
            now = time.monotonic()
            timeout = max(0.0, min(interval, next_watchdog - now))
            if listener is not None and listener.connect():
                # slices keep a stop request prompt when polling is off
                notified = listener.wait(min(timeout, 0.25), stop)
            else:
                stop.wait(timeout)
                notified = False
            if stop.is_set():
                break
            if notified:
                stats.notifications += 1
                pending = True
                continue
            now = time.monotonic()
            if now >= next_watchdog:
                next_watchdog = now + watchdog
                try:
                    head, tracked = store.trading.head(), projector.tracked_position()
                    if tracked != projector.state.position:
                        reload = pending = True  # the tables moved under us (another projector, a rebuild)
                    if head > projector.state.position:
                        if poll is None:
                            stats.watchdog_catchups += 1
                        pending = True
                    if on_tick is not None:
                        on_tick()
                except Exception as e:  # noqa: BLE001 - the next catch-up reports and backs off
                    stats.errors += 1
                    stats.last_error = f"{type(e).__name__}: {e}"
                    if on_error is not None:
                        on_error(e)
                    pending = True
            if poll is not None and not pending:
                # The poll is the catch-up itself: one ranged read of the log after the tables'
                # position (no separate head query), a page when something is there.
                stats.polls += 1
                pending = True
    finally:
        if listener is not None:
            listener.close()
    stats.position = projector.state.position
    return stats


__all__ = ["FollowStats", "channel_name", "drain", "follow", "notify"]
