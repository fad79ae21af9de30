"""The embedded log: one SQLite file, WAL, ``synchronous=FULL``.

SQLite has one writer at a time, so the global position is simply the next integer under the
write lock: gap-free and in commit order by construction. ``BEGIN IMMEDIATE`` takes that lock at
the start of the transaction, so concurrent writer processes queue on the busy timeout instead of
failing on a lock upgrade.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing, contextmanager
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

from eventsourcing.persistence import InterfaceError, PersistenceError, StoredEvent
from eventsourcing.sqlite import (
    SQLiteApplicationRecorder,
    SQLiteConnection,
    SQLiteConnectionPool,
    SQLiteDatastore,
    SQLiteRecorder,
)

from ...domain.errors import AppendFailed, ConcurrencyConflict, NotLeader, TradestateError
from .base import Appended, EventLog, RecordedEvent, Row, appended_at
from .lease import LEASE_TABLE, Fence, Leases
from .sql import SQLITE, Dialect

_fromiso = datetime.fromisoformat

# WAL pages after which a commit checkpoints them into the database file (SQLite's default is
# 1,000). A checkpoint runs inside the commit that crosses the mark: it copies every page the WAL
# holds and fsyncs the file. A 100-event append rewrites ~100 random pages of the (stream_id,
# stream_version) index, so at 1,000 pages every ninth append paid a checkpoint (1.34 fsyncs and
# 660 KiB written per append); at 10,000 (a WAL of up to ~40 MB) a page rewritten by many appends is
# copied once per checkpoint (1.05 fsyncs, 520 KiB). Durability is unchanged: every commit is
# still fsynced in the WAL (synchronous=FULL).
WAL_AUTOCHECKPOINT_PAGES = 10_000


class DurableSQLitePool(SQLiteConnectionPool):
    """The library's pool, plus the durability and locking settings a trading log needs."""

    def _create_connection(self) -> SQLiteConnection:
        # Opened here rather than by the library: its cached_statements=True means a statement
        # cache of one, and every append would re-compile its four statements.
        try:
            raw = sqlite3.connect(
                database=self.db_name,
                uri=True,
                check_same_thread=False,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                cached_statements=128,
                timeout=self.lock_timeout or 5,
            )
        except (sqlite3.Error, TypeError) as e:
            raise InterfaceError(e) from e
        _switch_to_wal(raw, self.db_name, self.lock_timeout or 5)
        self.is_journal_mode_wal = True
        raw.execute("PRAGMA synchronous=FULL")  # a commit is on disk before we say so
        raw.execute(f"PRAGMA busy_timeout={int((self.lock_timeout or 5) * 1000)}")
        # 64 MiB of page cache (the default is 2 MiB): the read models' indexes stay in memory
        # while a projector upserts hundreds of thousands of rows.
        raw.execute("PRAGMA cache_size=-65536")
        raw.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        return SQLiteConnection(sqlite_conn=raw, max_age=self.max_age)


def _switch_to_wal(raw: sqlite3.Connection, db_name: str, timeout: float) -> None:
    """Put the file in WAL mode, waiting for other processes as long as a write would.

    The switch needs the file to itself, and SQLite answers one that meets another connection's
    lock (processes opening a new file together) with "database is locked" at once, without its
    busy handler: so wait here, with backoff, up to the lock timeout."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            mode = raw.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as e:
            busy = "locked" in str(e) or "busy" in str(e)
            if not busy or time.monotonic() >= deadline:
                raw.close()
                raise InterfaceError(f"could not put {db_name} in WAL mode: {e}") from e
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
    if str(mode).lower() != "wal":
        raw.close()
        raise InterfaceError(f"could not put {db_name} in WAL mode (SQLite kept journal mode {mode!r})")


class DurableSQLiteDatastore(SQLiteDatastore):
    """The library's datastore on a ``DurableSQLitePool`` (WAL, synchronous=FULL, busy timeout)."""

    def __init__(self, db_name: str, *, lock_timeout: int = 10, pool_size: int = 4):
        super().__init__(db_name, lock_timeout=lock_timeout, pool_size=pool_size, originator_id_type="text")
        self.pool.close()
        # Threads of one process wait for the writer connection as long as processes wait for
        # the file's write lock, so both give up at the same time and with the same error.
        self.pool = DurableSQLitePool(db_name=db_name, lock_timeout=lock_timeout, pool_size=pool_size,
                                      pool_timeout=lock_timeout + 1)


class SQLiteEventLog(SQLiteApplicationRecorder, EventLog):
    """The log in one table of a SQLite file; positions are taken under the file's write lock."""

    def __init__(self, datastore: DurableSQLiteDatastore, table: str = "ts_events"):
        self.table = table
        self.events_table_name = table
        SQLiteRecorder.__init__(self, datastore)
        self._insert = (
            f"INSERT INTO {table} (position, stream_id, stream_version, type, data, recorded_at) "
            "VALUES (?,?,?,?,?,?)"
        )
        self._head = f"SELECT coalesce(max(position), 0) FROM {table}"

    def construct_create_table_statements(self) -> list[str]:
        """The log's ``CREATE TABLE IF NOT EXISTS``: ``position`` an alias of rowid, unique (stream_id,
        stream_version), ``recorded_at`` as ISO-8601 text; and its ``<table>_json`` view."""
        return [
            f"CREATE TABLE IF NOT EXISTS {self.events_table_name} ("
            "position INTEGER PRIMARY KEY, "  # an alias of rowid: never renumbered by VACUUM
            "stream_id TEXT NOT NULL, "
            "stream_version INTEGER NOT NULL, "
            "type TEXT NOT NULL, "
            "data BLOB NOT NULL, "
            "recorded_at TEXT NOT NULL, "
            "UNIQUE (stream_id, stream_version))",
            # Payloads are UTF-8 JSON in a BLOB; as TEXT, SQLite's JSON operators read them
            # (``data->>'client_order_id'``), as on PostgreSQL's ``ts_events_json``.
            f"CREATE VIEW IF NOT EXISTS {self.events_table_name}_json AS SELECT position, stream_id, stream_version,"
            f" type, CAST(data AS TEXT) AS data, recorded_at FROM {self.events_table_name}",
        ]

    def create_table(self) -> None:
        """Create the log's table if it is not there (safe against concurrent first starts)."""
        # BEGIN IMMEDIATE, not the library's deferred BEGIN: a deferred transaction that read the
        # schema before another process created the table cannot take the write lock afterwards
        # (SQLITE_BUSY_SNAPSHOT comes at once, without the busy handler).
        with self.transaction(write=True) as cur:
            for statement in self.create_table_statements:
                cur.execute(statement)

    @contextmanager
    def transaction(self, write: bool = False, *, snapshot: bool = False) -> Iterator[sqlite3.Cursor]:
        """A cursor on a pooled connection. ``write``: inside ``BEGIN IMMEDIATE`` (the file's
        write lock, the one appends take), committed at the end, rolled back on an exception.
        ``snapshot``: inside a deferred ``BEGIN``, so every read sees one snapshot. Otherwise
        autocommit reads."""
        with self.datastore.get_connection(commit=write) as connection:
            raw: sqlite3.Connection = connection._sqlite_conn
            if not write and not snapshot:
                yield raw.cursor()
                return
            raw.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield raw.cursor()
                raw.execute("COMMIT" if write else "ROLLBACK")
            except BaseException:
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
                raise

    def backup_to(self, target: sqlite3.Connection) -> None:
        """Copy the whole database file into ``target`` as one consistent snapshot (a read
        transaction: writers carry on in the WAL meanwhile)."""
        with self.datastore.get_connection(commit=False) as connection:
            connection._sqlite_conn.backup(target)

    @contextmanager
    def bounded_write(self) -> Iterator[sqlite3.Cursor]:
        """``transaction(write=True)`` with the append's errors: the wait for the write lock is
        bounded by the busy timeout; a database error is ``AppendFailed`` (nothing written)."""
        try:
            with self.transaction(write=True) as cur:
                yield cur
        except TradestateError:
            raise
        except (sqlite3.Error, PersistenceError) as e:
            raise AppendFailed(f"SQLite write failed, nothing was written: {e}") from e

    # ---------------------------------------------------------------------------- writing
    def append(self, events: Sequence[StoredEvent], *, fence: Fence | None = None) -> list[Appended]:
        """Append ``events`` in one ``BEGIN IMMEDIATE`` transaction at the next positions, all stamped
        with one store clock read under the write lock (so ``recorded_at`` never decreases along
        positions); returns once committed with ``synchronous=FULL``. Raises ``ConcurrencyConflict``
        if a (stream, version) is taken, ``NotLeader`` if ``fence`` is given and its epoch is no
        longer the current, live one of its engine's lease (checked under the same write lock),
        and ``AppendFailed`` on any other database error; in each case nothing is appended. An
        empty sequence appends nothing and returns ``[]``."""
        if not events:
            return []
        try:
            with self.datastore.get_connection(commit=True) as connection:
                raw: sqlite3.Connection = connection._sqlite_conn
                try:
                    raw.execute("BEGIN IMMEDIATE")
                    if fence is not None and not self._fence_holds(raw, fence):
                        raw.execute("ROLLBACK")
                        raise NotLeader(fence.engine_id, fence.epoch, Leases(self, Dialect(SQLITE)).why_not(fence))
                    appended = self._insert_rows(raw, events)
                    raw.execute("COMMIT")
                except BaseException:
                    if raw.in_transaction:
                        raw.execute("ROLLBACK")
                    raise
        except sqlite3.IntegrityError as e:
            raise self._conflict(events, e) from e
        except (sqlite3.Error, PersistenceError) as e:
            # PersistenceError: the pool's own errors (e.g. no connection within its timeout)
            raise AppendFailed(f"SQLite append failed, nothing was appended: {e}") from e
        return appended

    def insert_in(self, cur: Any, events: Sequence[StoredEvent]) -> list[Appended]:
        """Insert ``events`` at the next positions inside the caller's write transaction (``cur``
        from ``transaction(write=True)`` or ``bounded_write``). ``ConcurrencyConflict`` if a
        (stream, version) is taken (the caller's transaction then rolls back)."""
        try:
            return self._insert_rows(cur, events)
        except sqlite3.IntegrityError as e:
            raise self._conflict(events, e) from e

    def _insert_rows(self, raw: Any, events: Sequence[StoredEvent]) -> list[Appended]:
        # The clock is read under the write lock: recorded_at never decreases along positions
        # (while the host's clock does not step back), so "the log as of time T" is a prefix.
        recorded_at = datetime.now(timezone.utc)
        stamp = recorded_at.isoformat()
        head = raw.execute(self._head).fetchone()[0]
        if len(events) == 1:
            e = events[0]
            raw.execute(self._insert, (head + 1, e.originator_id, e.originator_version, e.topic, e.state, stamp))
            return [Appended(head + 1, recorded_at)]
        # One executemany over a generator: SQLite steps the one prepared statement per row, and no
        # list of rows is built first.
        positions = range(head + 1, head + 1 + len(events))
        raw.executemany(self._insert, ((p, e.originator_id, e.originator_version, e.topic, e.state, stamp)
                                       for p, e in zip(positions, events)))
        return appended_at(positions, recorded_at)

    def _fence_holds(self, raw: Any, fence: Fence) -> bool:
        try:
            row = raw.execute(
                f"SELECT 1 FROM {LEASE_TABLE} WHERE engine_id = ? AND epoch = ? AND holder = ? AND released = 0"
                " AND expires_at > ?",
                (fence.engine_id, fence.epoch, fence.holder, datetime.now(timezone.utc).timestamp())).fetchone()
        except sqlite3.OperationalError:  # no lease table: no lease was ever taken here
            return False
        return row is not None

    @staticmethod
    def _conflict(events: Sequence[StoredEvent], error: Exception) -> ConcurrencyConflict:
        return ConcurrencyConflict(
            "another writer already appended to "
            + ", ".join(sorted({f"{x.originator_id}@{x.originator_version}" for x in events}))
            + f" ({error})"
        )

    # ---------------------------------------------------------------------------- reading
    def iter_rows(self, after: int = 0, stop: int | None = None, batch: int = 10_000) -> Iterator[Row]:
        """Rows with ``after < position <= stop`` in position order, ``recorded_at`` as a datetime.
        SQLite has one writer at a time, so the log has no holes."""
        with closing(self.iter_pages(after, stop, batch)) as pages:  # closed with us, while the pool is open
            for rows in pages:
                for p, s, v, t, d, r in rows:
                    yield p, s, v, t, d, _fromiso(r)

    def iter_pages(self, after: int = 0, stop: int | None = None, batch: int = 10_000) -> Iterator[list[Any]]:
        """Pages as the cursor returns them: ``recorded_at`` stays ISO-8601 text (``as_time``)."""
        sql = f"SELECT position, stream_id, stream_version, type, data, recorded_at FROM {self.table} WHERE position > ?"
        params: list[Any] = [after]
        if stop is not None:
            sql += " AND position <= ?"
            params.append(stop)
        sql += " ORDER BY position"
        with self.datastore.get_connection(commit=False) as connection:
            cursor = connection._sqlite_conn.execute(sql, params)
            while rows := cursor.fetchmany(batch):
                yield rows
            cursor.close()

    def exists(self) -> bool:
        """Whether the log's table is in the file (nothing is created)."""
        with self.datastore.get_connection(commit=False) as connection:
            return connection._sqlite_conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (self.table,)
            ).fetchone() is not None

    def head(self) -> int:
        """The highest position in the log (0 when empty)."""
        with self.datastore.get_connection(commit=False) as connection:
            return connection._sqlite_conn.execute(self._head).fetchone()[0]

    def read_stream(self, stream_id: str, after_version: int = 0) -> list[RecordedEvent]:
        """Events of ``stream_id`` with version above ``after_version``, in version order."""
        with self.datastore.get_connection(commit=False) as connection:
            rows = connection._sqlite_conn.execute(
                f"SELECT position, stream_id, stream_version, type, data, recorded_at FROM {self.table} "
                "WHERE stream_id = ? AND stream_version > ? ORDER BY stream_version",
                (stream_id, after_version),
            ).fetchall()
        return [RecordedEvent.from_row((p, s, v, t, d, _fromiso(r))) for p, s, v, t, d, r in rows]

    def close(self) -> None:
        """Close the pool's connections; the log is unusable afterwards."""
        self.datastore.close()

    # The library's recorder comes first in the MRO: take the log's versions of its interface.
    insert_events = EventLog.insert_events
    max_notification_id = EventLog.max_notification_id
    select_events = EventLog.select_events
    select_notifications = EventLog.select_notifications
    subscribe = EventLog.subscribe

