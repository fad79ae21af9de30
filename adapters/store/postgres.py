"""The production log on PostgreSQL.

Why not the library's default append: it takes ``LOCK TABLE ... EXCLUSIVE`` and sends ``NOTIFY``
in every transaction, which serialises all writers behind one commit flush (about 1-2k appends/s
here, whatever the number of writers). We keep its recorder interface and replace the append:

* A row's global position comes from a sequence at insert time, so concurrent writers never wait
  for each other and PostgreSQL's group commit batches their flushes.
* A sequence alone leaves holes (an aborted append) and can commit out of order. So an append
  that fails gives up its positions explicitly: it writes a ``$void`` row at each, and the log has
  no holes. A reader returns only the contiguous prefix of the log, so an append still in flight
  below the head holds readers back instead of being skipped. A hole left by a writer that died
  mid-append is voided by the next reader that finds no transaction left that could still fill it
  (below), or else waits on it longer than ``gap_timeout``; the void insert waits on the unique
  index for a writer that is still committing, so it can never replace a real event.
* Why a hole can be voided once its possible holders are gone: ``nextval`` takes a
  ``RowExclusiveLock`` on the sequence, held to the end of the transaction, and the sequence
  (cache 1) hands out values in increasing order. A reader that saw a row committed beyond the
  hole knows that whoever took a hole position took it earlier, so it already held that lock then.
  The transactions holding the lock after that read (``pg_locks``) therefore include every one that
  could still commit into the hole; once none of them holds it any more, nothing can. This is what
  makes the sequence's jump after a crash or failover (positions the dead server handed out, or
  WAL-logged ahead and never used, that no transaction on this server holds) cost a reader ~0.1 s
  instead of ``gap_timeout``.
"""

from __future__ import annotations

import bisect
import os
import re
import select
import socket
import struct
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import datetime
from typing import Any

import psycopg
import psycopg_pool
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore, PostgresRecorder
from psycopg import errors as pg_errors
from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from ...domain.errors import (
    AppendFailed,
    CommitInterrupted,
    CommitOutcomeUnknown,
    ConcurrencyConflict,
    NotLeader,
    ReadOnlyStore,
    StoreUnreachable,
    TradestateError,
)
from .base import VOID_STREAM, VOID_TYPE, Appended, EventLog, RecordedEvent, Row, appended_at
from .lease import LEASE_TABLE, Fence, Leases
from .sql import POSTGRESQL, SYNC_LEVELS, Dialect, PgUrl, quote


class TradestatePostgresDatastore(PostgresDatastore):
    """The library's pooled datastore on the connection parameters of a ``postgresql://`` URL
    (``PgUrl``: every libpq parameter in the URL reaches libpq, and what it leaves out libpq takes
    from its environment), with the timeouts a trading service needs set on every connection.
    The pool checks a connection before handing it out, so connections the server has dropped
    are replaced instead of failing their first use."""

    def __init__(self, url: str, *, pool_size: int = 2, max_overflow: int = 8, application_name: str = "tradestate"):
        self.url = url
        self.target = PgUrl.parse(url)
        self.lock_timeout_ms = int(self.target.lock_timeout * 1000)
        self.statement_timeout_ms = int(self.target.statement_timeout * 1000)
        self.application_name = self.target.params.get("application_name", application_name)
        self.append_timeout = self.target.append_timeout
        self._unpooled: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()
        self.synchronous_commit = self.target.synchronous_commit
        params = dict(self.target.params)
        super().__init__(
            dbname=params.pop("dbname", ""),
            host=params.pop("host", ""),
            port=params.pop("port", ""),
            user=params.pop("user", ""),
            password=params.pop("password", ""),
            connect_timeout=self.target.connect_timeout,
            pre_ping=True,
            idle_in_transaction_session_timeout=5,
            pool_size=pool_size,
            max_overflow=max_overflow,
            lock_timeout=self.lock_timeout_ms // 1000,
            schema=self.target.schema,
            originator_id_type="text",
        )
        # The library's pool knows host, port, database, user and password only: the URL's other
        # libpq parameters (sslmode, target_session_attrs, connect_timeout, ...) go in as well. An
        # absent value is left out, so that libpq takes it from PG* variables or .pgpass.
        kwargs = self.pool.kwargs
        assert isinstance(kwargs, dict)
        for key in ("dbname", "host", "port", "user", "password"):
            if not kwargs.get(key):
                kwargs.pop(key, None)
        kwargs.update(params)

    # How long a checkout waits for the pool before connecting directly, when the pool is below its
    # size limit (so it is only slow to replace lost connections: it retries with a backoff of
    # seconds, and a follower would stall that long after a burst of dropped connections).
    pool_wait = 0.1

    def acquire(self) -> psycopg.Connection[Any]:
        """A live autocommit connection, set up like the pool's: one from the pool if it has one
        ready (checked before it is handed out), else a new direct one unless the pool is at its
        size limit (then the pool's wait, up to ``connect_timeout``). Give it back with ``give_back``."""
        pool = self.pool
        if pool.closed:  # opened lazily, once (open(wait=True) on an open pool waits for idle slots)
            pool.open(wait=True, timeout=pool.timeout)
        if pool.get_stats().get("pool_size", 0) >= (pool.max_size or 0):
            return pool.getconn()
        try:
            return pool.getconn(timeout=self.pool_wait)
        except psycopg_pool.PoolTimeout:
            pass
        kwargs = dict(pool.kwargs or {})
        conn = psycopg.Connection.connect(**kwargs)
        try:
            self.after_connect_func()(conn)
        except BaseException:
            conn.close()
            raise
        self._unpooled.add(conn)
        return conn

    def give_back(self, conn: psycopg.Connection[Any]) -> None:
        """Return a connection from ``acquire`` (a broken one is discarded)."""
        if conn in self._unpooled:
            self._unpooled.discard(conn)
            conn.close()
        else:
            self.pool.putconn(conn)

    def check_reachable(self, *, write: bool = False) -> None:
        """Connect once, directly (not through the pool), and raise ``StoreUnreachable`` with
        libpq's own reason if that fails: server down, unknown role or database, bad password.
        ``write``: also ``ReadOnlyStore`` if the server accepts reads only (a hot standby, or
        ``default_transaction_read_only``). Bounded by the URL's ``connect_timeout`` per host."""
        try:
            conn = psycopg.connect(**self.target.kwargs(), autocommit=True)
        except psycopg.Error as e:
            reason = " ".join(str(e).split())
            raise StoreUnreachable(f"cannot reach PostgreSQL at {self.target.where}: {reason}") from e
        with conn:
            if not write:
                return
            try:
                recovery, read_only = conn.execute(
                    "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')").fetchone()
            except psycopg.Error as e:
                reason = " ".join(str(e).split())
                raise StoreUnreachable(f"cannot reach PostgreSQL at {self.target.where}: {reason}") from e
        if recovery or read_only == "on":
            why = "a hot standby (in recovery)" if recovery else "its sessions are read-only"
            raise ReadOnlyStore(
                f"PostgreSQL at {self.target.where} accepts reads only ({why}): the log cannot be created or "
                "appended to there. Connect to the primary (a multi-host URL with "
                "target_session_attrs=read-write finds it), or open the log read-only"
            )

    def after_connect_func(self):  # type: ignore[override]
        """The library's per-connection setup, plus lock and statement timeouts, synchronous
        commit at least ``on`` (or the URL's stronger level; a stronger server setting is kept),
        UTC and the application name."""
        base = super().after_connect_func()
        lock_ms, statement_ms, app = self.lock_timeout_ms, self.statement_timeout_ms, self.application_name
        levels = "ARRAY[" + ", ".join(f"'{level}'" for level in SYNC_LEVELS) + "]"
        rank = SYNC_LEVELS.index(self.synchronous_commit) + 1
        # Raise the session's level to ours only when the server's (or role's) is weaker.
        at_least = (f"SELECT set_config('synchronous_commit', '{self.synchronous_commit}', false)"
                    f" WHERE coalesce(array_position({levels}, current_setting('synchronous_commit')), 0) < {rank}")

        def after_connect(conn: psycopg.Connection[Any]) -> None:
            base(conn)
            conn.execute(f"SET lock_timeout = {lock_ms}")
            conn.execute(f"SET statement_timeout = {statement_ms}")
            conn.execute(at_least)
            # Times arrive as UTC whatever the server's zone: psycopg's fast path for "UTC" (any
            # other name, even Etc/UTC, goes through zoneinfo: ~0.4 us more per row read).
            conn.execute("SET TimeZone = 'UTC'")
            conn.execute(SQL("SET application_name = {}").format(psycopg.sql.Literal(app)))

        return after_connect


# Each log has a view beside it with the payload as jsonb (``ts_events_json``): plain SQL reads
# payloads (``data->>'client_order_id'``) without decoding bytea. Payloads are orjson's UTF-8 JSON.
JSON_VIEW_SUFFIX = "_json"


def json_view_statement(schema: str, table: str) -> str:
    """``CREATE OR REPLACE VIEW <table>_json``: the log's columns with ``data`` as jsonb (idempotent;
    also run by restore's and migrate's swap, which move the log tables under it)."""
    q = quote
    return (f"CREATE OR REPLACE VIEW {q(schema)}.{q(table + JSON_VIEW_SUFFIX)} AS SELECT position, stream_id,"
            " stream_version, type, convert_from(data, 'UTF8')::jsonb AS data, recorded_at"
            f" FROM {q(schema)}.{q(table)}")


# A read of at least this many positions streams: one query whose rows the server sends ahead in
# chunks (libpq 17's chunked rows mode; without it, reads go by position ranges only).
STREAM_FROM = 50_000
STREAM_CHUNK = 2_000
_CHUNKED_STREAMS = psycopg.pq.version() >= 170000


class _Watchdog:
    """Cancels statements that outlive their deadline, from one daemon thread per process.

    ``statement_timeout`` does not cover a commit's wait for synchronous standbys; a cancel
    request does (PostgreSQL then ends the wait with a WARNING), so every append is armed here.
    A statement still running ``grace`` seconds after its cancel (the server itself does not
    answer) has its connection shut down, so the caller gets an error instead of a hang.

    The thread sleeps until the earliest deadline it knows of and does not poll. Arming wakes it
    only for a deadline earlier than its next wake-up: appends that share one timeout never do, as
    each new deadline is later than every earlier one. So an append costs the thread nothing, and
    the thread wakes about once per timeout (a 50 ms poll in each of eight writer processes cost
    more CPU than the appends' own Python work)."""

    grace = 1.0

    def __init__(self) -> None:
        self._reset()
        # A forked child has no thread, and must never cancel its parent's statements.
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        # key -> (deadline, connection, cancelled already)
        self._armed: dict[int, tuple[float, psycopg.Connection[Any], bool]] = {}
        self._fired: set[int] = set()
        self._last = 0
        self._thread: threading.Thread | None = None
        self._wake_at = 0.0  # when the sleeping thread looks again (in the past while it is awake)
        self._span = 1.0  # the latest armed timeout: how long the thread sleeps with nothing armed
        self.wakeups = 0  # times the thread woke (to check that arming does not wake it)

    def arm(self, conn: psycopg.Connection[Any], seconds: float) -> int:
        """Cancel ``conn``'s running statement in ``seconds`` unless ``disarm`` comes first."""
        deadline = time.monotonic() + seconds
        with self._lock:
            self._last += 1
            self._armed[self._last] = (deadline, conn, False)
            self._span = seconds
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tradestate-append-watchdog", daemon=True)
                self._thread.start()
            elif deadline < self._wake_at:
                self._wake_at = deadline
                self._wake.notify()
            return self._last

    def disarm(self, key: int) -> bool:
        """Stop watching; True if the deadline passed and the statement was cancelled."""
        with self._lock:
            self._armed.pop(key, None)  # gone already if its connection was shut down
            if key in self._fired:
                self._fired.discard(key)
                return True
            return False

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    now = time.monotonic()
                    due = [(key, conn, cancelled) for key, (deadline, conn, cancelled) in self._armed.items()
                           if deadline <= now]
                    if not due:
                        self._wake_at = min((deadline for deadline, _, _ in self._armed.values()),
                                            default=now + max(self._span, 0.05))
                        self._wake.wait(self._wake_at - now)
                        self._wake_at = 0.0  # awake: arming need not notify
                        self.wakeups += 1
                        continue
                    for key, conn, cancelled in due:
                        self._fired.add(key)
                        if cancelled:
                            del self._armed[key]
                        else:
                            self._armed[key] = (now + self.grace, conn, True)
                for _key, conn, cancelled in due:
                    try:
                        if not cancelled:
                            conn.cancel_safe(timeout=self.grace)
                        else:
                            with socket.socket(fileno=os.dup(conn.fileno())) as sock:
                                sock.shutdown(socket.SHUT_RDWR)
                    except Exception:  # noqa: BLE001 - the connection is gone: the statement fails anyway
                        pass
        finally:
            with self._lock:  # the next arm starts a new thread
                if self._thread is threading.current_thread():
                    self._thread = None


_WATCHDOG = _Watchdog()

# PostgreSQL's WARNING when a commit's wait for synchronous standbys is cut short (cancelled,
# terminated, or by our append timeout): the transaction committed locally only. The message may
# be translated (lc_messages), so any WARNING during an append counts: it is then confirmed or
# reported unknown, never taken as plain success.
_SYNC_CUT = re.compile(r"synchronous replication|might not have been replicated", re.IGNORECASE)


class _Notices(list):  # type: ignore[type-arg]
    """A notice handler keeping (severity, text) of each notice: psycopg's ``Diagnostic`` is only
    readable while the handler runs."""

    def __call__(self, diag: Any) -> None:
        severity = diag.severity_nonlocalized or diag.severity or ""
        self.append((severity.upper(), f"{diag.message_primary or ''} {diag.message_detail or ''}"))


def _replication_cut(notices: list[tuple[str, str]]) -> str | None:
    """The server's message if ``notices`` hold a WARNING (the synchronous-replication one first)."""
    warnings = [" ".join(text.split()) for severity, text in notices if severity == "WARNING"]
    return next((w for w in warnings if _SYNC_CUT.search(w)), warnings[0] if warnings else None)


def _idle_poller(conn: psycopg.Connection[Any]) -> select.poll:
    """A poll object on ``conn``'s socket for ``_alive``, made once per connection (a
    ``select.select`` per call built three lists and cost twice as much on the append path)."""
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN)
    return poller


def _alive(conn: psycopg.Connection[Any], poller: select.poll) -> bool:
    """Whether an idle connection is still usable (``poller`` from ``_idle_poller(conn)``).
    Checked without a round trip: an idle connection has nothing to read unless the server sent
    something (its termination notice, or the end of the stream); only then is it pinged."""
    try:
        if not poller.poll(0):
            return True
    except (OSError, ValueError):
        return False
    try:
        conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


class _PackedArray(bytes):
    """A one-dimensional array already in PostgreSQL's binary array format, sent as it is (a binary
    parameter of the subclass's array type). psycopg's own dumper walks a list in Python, one
    dumper call per element: half the client CPU of a 100-event append; this packs the same
    bytes with a few C calls per array."""

    __slots__ = ()
    oid = 0


class _TextArray(_PackedArray):
    __slots__ = ()
    oid = 1009  # text[]


class _Int8Array(_PackedArray):
    __slots__ = ()
    oid = 1016  # bigint[]


class _ByteaArray(_PackedArray):
    __slots__ = ()
    oid = 1001  # bytea[]


_ELEMENT_OIDS = {_TextArray: 25, _Int8Array: 20, _ByteaArray: 17}
_ARRAY_HEAD = struct.Struct("!iiIii").pack  # dimensions, has-nulls flag, element type, length, lower bound
_LENGTH = struct.Struct("!i").pack
_INT8_ARRAYS: dict[int, struct.Struct] = {}  # element count -> header and (length 8, value) pairs


def _packed(kind: type[_PackedArray], items: list[bytes]) -> _PackedArray:
    """Elements that are byte strings (each prefixed by its length) as an array of ``kind``."""
    parts: list[bytes] = [b""] * (2 * len(items))
    parts[0::2] = map(_LENGTH, map(len, items))
    parts[1::2] = items
    return kind(_ARRAY_HEAD(1, 0, _ELEMENT_OIDS[kind], len(items), 1) + b"".join(parts))


def _packed_int8(values: list[int]) -> _Int8Array:
    count = len(values)
    layout = _INT8_ARRAYS.get(count)
    if layout is None:
        layout = _INT8_ARRAYS[count] = struct.Struct("!iiIii" + "iq" * count)
    args: list[int] = [8] * (2 * count)
    args[1::2] = values
    return _Int8Array(layout.pack(1, 0, 20, count, 1, *args))


class _PackedArrayDumper(psycopg.adapt.Dumper):
    format = psycopg.pq.Format.BINARY

    def __init__(self, cls: type, context: Any = None):
        super().__init__(cls, context)
        self.oid = cls.oid

    def dump(self, obj: Any) -> bytes:
        return obj


for _kind in _ELEMENT_OIDS:  # the global map: every connection made afterwards has them (these classes only)
    psycopg.adapters.register_dumper(_kind, _PackedArrayDumper)


def _columns(events: Sequence[StoredEvent], conn: psycopg.Connection[Any]) -> tuple[Any, Any, Any, Any]:
    """The events' fields as four arrays (stream ids, versions, types, data) for one multi-row
    statement, sent as binary parameters (text arrays cost a regex escape per element): packed
    here (``_PackedArray``) when the session's text is UTF-8, else lists for psycopg to encode."""
    streams, versions = [e.originator_id for e in events], [e.originator_version for e in events]
    types, datas = [e.topic for e in events], [e.state for e in events]
    if conn.info.encoding != "utf-8" or not all(type(d) is bytes for d in datas):
        return streams, versions, types, datas
    try:
        return (_packed(_TextArray, [s.encode() for s in streams]), _packed_int8(versions),
                _packed(_TextArray, [t.encode() for t in types]), _packed(_ByteaArray, datas))
    except (struct.error, UnicodeEncodeError, AttributeError):  # not str / a 64-bit int: psycopg's own error
        return streams, versions, types, datas


def _before_hole(rows: list[Any], after: int) -> list[Any]:
    """The rows that continue position ``after`` without a gap (all of them if none is missing)."""
    out = []
    for row in rows:
        if row[0] != after + 1:
            break
        out.append(row)
        after = row[0]
    return out


class PostgresEventLog(PostgresApplicationRecorder, EventLog):
    """The log in one table of a PostgreSQL schema; positions come from a sequence, and holes
    are voided (see the module docstring)."""

    gap_timeout = 1.0  # seconds a hole may hold readers back before they void it (a live holder too)
    hole_probe_after = 0.02  # seconds a hole persists before readers ask who could still fill it (None: never)

    def __init__(self, datastore: TradestatePostgresDatastore, table: str = "ts_events"):
        PostgresRecorder.__init__(self, datastore)
        self.check_identifier_length(table + "_position_seq")
        self.table = self.events_table_name = table
        schema = Identifier(datastore.schema)
        t = Identifier(table)
        seq = SQL("{}.{}").format(schema, Identifier(table + "_position_seq"))
        self._qualified = SQL("{}.{}").format(schema, t)
        self._seq_literal = psycopg.sql.Literal(f"{datastore.schema}.{table}_position_seq")
        func = SQL("{}.{}").format(schema, Identifier(table + "_append"))
        self.sql_create_statements = [
            SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema),
            SQL("CREATE SEQUENCE IF NOT EXISTS {}").format(seq),
            SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " position bigint PRIMARY KEY,"
                " stream_id text NOT NULL,"
                " stream_version bigint NOT NULL,"
                " type text NOT NULL,"
                " data bytea NOT NULL,"
                " recorded_at timestamptz NOT NULL DEFAULT now(),"
                " CONSTRAINT {} UNIQUE (stream_id, stream_version))"
            ).format(self._qualified, Identifier(table + "_stream_version_key")),
            SQL(json_view_statement(datastore.schema, table)),  # before the append function: it stays last
            # Several events in one transaction: take their positions in order, insert, and if a
            # stream version is taken, void the positions instead, in the same transaction.
            SQL(
                "CREATE OR REPLACE FUNCTION {func}(streams text[], versions bigint[], types text[], datas bytea[])"
                " RETURNS TABLE (pos bigint, at timestamptz) LANGUAGE plpgsql AS $body$"
                " DECLARE positions bigint[];"
                " BEGIN"
                "  positions := ARRAY(SELECT nextval({seqlit}) FROM generate_series(1, cardinality(streams)));"
                "  BEGIN"
                "   INSERT INTO {tbl} (position, stream_id, stream_version, type, data)"
                "    SELECT positions[o], s, v, ty, d FROM unnest(streams, versions, types, datas)"
                "    WITH ORDINALITY AS u(s, v, ty, d, o);"
                "  EXCEPTION WHEN unique_violation THEN"
                "   INSERT INTO {tbl} (position, stream_id, stream_version, type, data)"
                "    SELECT p, {void_stream}, p, {void_type}, '\\x7b7d'::bytea FROM unnest(positions) AS p;"
                "   RETURN QUERY SELECT -1::bigint, now();"
                "   RETURN;"
                "  END;"
                "  RETURN QUERY SELECT p, now() FROM unnest(positions) AS p;"
                " END $body$"
            ).format(
                func=func,
                seqlit=self._seq_literal,
                tbl=self._qualified,
                void_stream=psycopg.sql.Literal(VOID_STREAM),
                void_type=psycopg.sql.Literal(VOID_TYPE),
            ),
        ]
        if datastore.target.partitions:  # a new log laid out in monthly position ranges (partitions.py)
            from .partitions import create_statements

            self.sql_create_statements[2:3] = [SQL(s) for s in create_statements(datastore.schema, table)]
        self._insert_one = SQL(
            "INSERT INTO {} (position, stream_id, stream_version, type, data)"
            " VALUES (nextval({}), %s, %s, %s, %b) RETURNING position, recorded_at"
        ).format(self._qualified, self._seq_literal)
        # A fenced append: the lease row is locked FOR SHARE in the same statement, so a takeover
        # (FOR UPDATE) either waits for it or, committed first, makes it insert nothing (the
        # condition is re-checked on the new row). clock_timestamp(): expiry as of the check.
        leases = SQL("{}.{}").format(schema, Identifier(LEASE_TABLE))
        fence = SQL(" FROM {} WHERE engine_id = %s AND epoch = %s AND holder = %s AND NOT released"
                    " AND expires_at > clock_timestamp() FOR SHARE").format(leases)
        self._insert_one_fenced = SQL(
            "INSERT INTO {} (position, stream_id, stream_version, type, data)"
            " SELECT nextval({}), %s, %s, %s, %b"
        ).format(self._qualified, self._seq_literal) + fence + SQL(" RETURNING position, recorded_at")
        # A fenced batch in one autocommit statement: the lease row is locked FOR SHARE as above, and
        # the append function runs only for a lease row found (its first argument is a column of
        # that row, so the plan must read the row first; none: no call, no position drawn).
        self._insert_many_fenced = (
            SQL("SELECT r.pos, r.at FROM (SELECT %b::text[] AS streams") + fence
            + SQL(") AS held, LATERAL {}(held.streams, %b, %b, %b) AS r").format(func)
        )
        # insert_in's several events in the caller's transaction (which rolls back on a conflict, so
        # no voiding here). ORDER BY o: nextval, being volatile, is evaluated after the sort, so
        # positions follow the events' order; RETURNING then comes back in that order too.
        self._insert_many_in = SQL(
            "WITH ins AS (INSERT INTO {} (position, stream_id, stream_version, type, data)"
            " SELECT nextval({}), s, v, ty, d FROM unnest(%b::text[], %b::bigint[], %b::text[], %b::bytea[])"
            " WITH ORDINALITY AS u(s, v, ty, d, o) ORDER BY o RETURNING position, recorded_at)"
            " SELECT position, recorded_at FROM ins ORDER BY position"
        ).format(self._qualified, self._seq_literal)
        # binary parameters: text arrays cost a regex escape per element and twice the bytes
        self._insert_many = SQL("SELECT pos, at FROM {}(%b, %b, %b, %b)").format(func)
        self._void = SQL(
            "INSERT INTO {} (position, stream_id, stream_version, type, data)"
            " VALUES (%s, {}, %s, {}, '\\x7b7d'::bytea) ON CONFLICT DO NOTHING"
        ).format(self._qualified, psycopg.sql.Literal(VOID_STREAM), psycopg.sql.Literal(VOID_TYPE))
        # A run of holes (after a crash the sequence resumes up to 32 values ahead) is voided at once.
        self._void_range = SQL(
            "INSERT INTO {} (position, stream_id, stream_version, type, data)"
            " SELECT p, {}, p, {}, '\\x7b7d'::bytea FROM generate_series(%s::bigint, %s::bigint) AS p"
            " ON CONFLICT DO NOTHING"
        ).format(self._qualified, psycopg.sql.Literal(VOID_STREAM), psycopg.sql.Literal(VOID_TYPE))
        self._next_row = SQL("SELECT min(position) FROM {} WHERE position > %s").format(self._qualified)
        self._select = SQL(
            "SELECT position, stream_id, stream_version, type, data, recorded_at FROM {}"
            " WHERE position > %s AND position <= %s ORDER BY position"
        ).format(self._qualified)
        self._head = SQL("SELECT coalesce(max(position), 0) FROM {}").format(self._qualified)
        # The head as a reader needs it: the highest position beyond ``after`` (0: none). The same
        # answer to "is there anything past here", and on a partitioned log the bound prunes the
        # scan to the partitions past ``after`` (the open one) instead of probing every partition.
        self._head_after = SQL("SELECT coalesce(max(position), 0) FROM {} WHERE position > %s").format(
            self._qualified)
        self._currval = SQL("SELECT currval({})").format(self._seq_literal)
        # Rendered once: psycopg would otherwise re-compose these on every call of the hot path.
        for name in ("_insert_one", "_insert_many", "_insert_many_in", "_void", "_void_range", "_next_row", "_select",
                     "_head", "_head_after", "_currval", "_insert_one_fenced", "_insert_many_fenced"):
            setattr(self, name, getattr(self, name).as_string(None))
        # What an existing log must already have for an open to skip DDL (a catalog write waits
        # for synchronous standbys like any commit, and fails on a read-only server).
        body = self.sql_create_statements[-1].as_string(None).split("$body$")[1]
        self._in_place = (
            SQL("SELECT to_regclass({tbl}) IS NOT NULL AND to_regclass({seq}) IS NOT NULL"
                " AND to_regclass({view}) IS NOT NULL"
                " AND (SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure({sig})) = {body}").format(
                tbl=psycopg.sql.Literal(f'"{datastore.schema}"."{table}"'),
                seq=psycopg.sql.Literal(f'"{datastore.schema}"."{table}_position_seq"'),
                view=psycopg.sql.Literal(f'"{datastore.schema}"."{table}{JSON_VIEW_SUFFIX}"'),
                sig=psycopg.sql.Literal(f'"{datastore.schema}"."{table}_append"(text[], bigint[], text[], bytea[])'),
                body=psycopg.sql.Literal(body),
            ).as_string(None)
        )
        self._barrier = "SELECT pg_logical_emit_message(true, 'tradestate', 'durable')"
        self._holes: dict[int, float] = {}  # hole position -> when this reader first waited on it
        self._hole_holders: dict[int, frozenset[str]] = {}  # hole position -> transactions that could fill it
        self._holes_asked: set[int] = set()  # holes this reader asked again whether they are archived
        # A hot standby sees none of its primary's locks (and cannot void anyway): it never asks.
        self._sequence_holders = SQL(
            "SELECT pg_is_in_recovery(), ARRAY(SELECT virtualtransaction FROM pg_locks WHERE locktype = 'relation'"
            " AND relation = {}::regclass AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
        ).format(psycopg.sql.Literal(f'"{datastore.schema}"."{table}_position_seq"')).as_string(None)
        self._local = threading.local()
        self._pinned: list[psycopg.Connection[Any]] = []
        self._pinned_lock = threading.Lock()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """This thread's own connection, kept checked out of the pool: a pool checkout per
        append doubled the client's CPU per event, the limit with many writers on few cores.
        A connection that fails is dropped, and the next call takes a fresh one."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and not (conn.closed or conn.broken) and not _alive(conn, local.poller):
            self._drop(conn)  # terminated while idle: take a fresh one rather than fail the call
            conn = None
        if conn is None or conn.closed or conn.broken:
            conn = self.datastore.acquire()
            try:
                local.poller = _idle_poller(conn)
            except BaseException:
                self.datastore.give_back(conn)
                raise
            local.conn = conn
            with self._pinned_lock:
                self._pinned.append(conn)
        try:
            yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError):
            self._drop(conn)
            raise

    def _drop(self, conn: psycopg.Connection[Any]) -> None:
        """Unpin ``conn`` from this thread and give it back (the pool discards a broken one)."""
        self._local.conn = None
        with self._pinned_lock:
            if conn in self._pinned:
                self._pinned.remove(conn)
        try:
            self.datastore.give_back(conn)
        except Exception:  # noqa: BLE001 - it is gone either way
            pass

    @property
    def schema(self) -> str:  # type: ignore[override]
        """The PostgreSQL schema that holds this log's table."""
        return str(self.datastore.schema)

    @contextmanager
    def transaction(self, write: bool = False, *, snapshot: bool = False) -> Iterator[psycopg.Cursor[Any]]:
        """A tuple-row cursor on this thread's pinned connection (the one its appends use).
        ``write``: one transaction, committed at the end of the block, rolled back on an exception.
        ``snapshot``: a read-only REPEATABLE READ transaction. Otherwise autocommit."""
        with self._connection() as conn:
            if not write and not snapshot:
                yield conn.cursor(row_factory=tuple_row)
                return
            with conn.transaction():
                cur = conn.cursor(row_factory=tuple_row)
                if snapshot and not write:
                    cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                yield cur

    def checkout_connection(self) -> psycopg.Connection[Any]:
        """A live autocommit connection of the caller's own (a LISTEN, say), until it is handed to
        ``checkin_connection``: the pool's, or a direct one while the pool is replacing lost
        connections. Raises the pool's error if none comes in time."""
        return self.datastore.acquire()

    def checkin_connection(self, conn: psycopg.Connection[Any]) -> None:
        """Give back a connection from ``checkout_connection`` (a broken one is discarded)."""
        self.datastore.give_back(conn)

    def release_connection(self) -> None:
        """Give this thread's pinned connection back to the pool (a worker thread that is done)."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._pinned_lock:
                if conn in self._pinned:
                    self._pinned.remove(conn)
            self.datastore.give_back(conn)

    def create_table(self) -> None:
        """Create the schema, sequence, table and append function if they are not there. A log
        already in place (its append function as this version defines it) is left untouched:
        no catalog write, so opening it neither waits for synchronous standbys nor needs DDL rights."""
        with self._connection() as conn:
            if conn.cursor(row_factory=tuple_row).execute(self._in_place).fetchone()[0]:
                return
        # Concurrent first starts must not race on CREATE ... IF NOT EXISTS (it is not atomic).
        with self.datastore.transaction(commit=True) as curs:
            curs.execute("SELECT pg_advisory_xact_lock(hashtext('tradestate-ddl'))")
            for statement in self.sql_create_statements:
                curs.execute(statement, prepare=False)

    # ---------------------------------------------------------------------------- writing
    @contextmanager
    def _bounded(self, notices: _Notices) -> Iterator[psycopg.Connection[Any]]:
        """This thread's connection for one write that commits inside the block: its statements are
        cancelled after ``append_timeout`` (the watchdog), the server's notices go to ``notices``,
        and a commit whose wait for the synchronous standbys was cut is confirmed within what is
        left of the timeout, else ``CommitOutcomeUnknown``. The caller maps database errors."""
        timeout = self.datastore.append_timeout
        started = time.monotonic()
        with self._connection() as conn:
            conn.add_notice_handler(notices)
            key = _WATCHDOG.arm(conn, timeout)
            try:
                yield conn
            finally:
                timed_out = _WATCHDOG.disarm(key)
                conn.remove_notice_handler(notices)
            cut = _replication_cut(notices) if notices else None
            if cut is not None:
                self._confirm_or_raise(cut, timed_out, timeout - (time.monotonic() - started))

    # ---------------------------------------------------------------------------- writing
    def append(self, events: Sequence[StoredEvent], *, fence: Fence | None = None) -> list[Appended]:
        """Append ``events`` in one transaction at positions drawn from the log's sequence (concurrent
        appends do not wait for each other), increasing in the events' order; they are consecutive
        unless a concurrent append drew a position between two of them (one ``nextval`` per event:
        about 1 batch in 100 with two batch and two single-event writers at full rate), so a reader's
        contiguous prefix can end inside another writer's batch. Returns each event's position and
        the store's clock once committed as durably as configured (``synchronous_commit`` at least ``on``: flushed here and on
        the synchronous standbys, if any). Raises ``ConcurrencyConflict`` if a (stream, version) is
        taken: nothing is appended and the positions taken are voided. Raises ``CommitOutcomeUnknown``
        when the commit happened here but its durability on the standbys could not be confirmed within
        the URL's ``append_timeout`` (the wait was cancelled, terminated or timed out). Raises
        ``CommitInterrupted`` when the connection was lost (unknown: re-read the stream), and
        ``AppendFailed`` when nothing was appended. With ``fence``: ``NotLeader`` (nothing appended)
        unless its epoch is the current, live epoch of its engine's lease, checked in the append's
        own transaction (see ``lease``). Never waits much longer than ``append_timeout``. An empty
        sequence returns ``[]``."""
        if not events:
            return []
        notices = _Notices()
        try:
            with self._bounded(notices) as conn:
                return self._insert(conn, events, fence)
        except (ConcurrencyConflict, CommitOutcomeUnknown, NotLeader):
            raise
        except pg_errors.QueryCanceled as e:
            cut = _replication_cut(notices)
            if cut is not None:  # cannot happen after a local commit, but never call it "nothing"
                raise self._unknown(cut) from e
            raise AppendFailed(f"PostgreSQL append cancelled ({' '.join(str(e).split())}); nothing was appended") from e
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            cut = _replication_cut(notices)
            if cut is not None:
                raise self._unknown(cut) from e
            raise CommitInterrupted(
                f"PostgreSQL append failed ({e}); the commit may or may not have happened: "
                "re-read the stream before deciding again"
            ) from e
        except Exception as e:  # the library's pool maps psycopg errors to its own classes
            if type(e).__name__ in ("OperationalError", "InterfaceError"):
                raise CommitInterrupted(
                    f"PostgreSQL append failed ({e}); the commit may or may not have happened: "
                    "re-read the stream before deciding again"
                ) from e
            if isinstance(e, psycopg.Error) or type(e).__module__.startswith("eventsourcing"):
                raise AppendFailed(f"PostgreSQL append failed, nothing was appended: {e}") from e
            raise

    def _insert(self, conn: psycopg.Connection[Any], events: Sequence[StoredEvent],
                fence: Fence | None = None) -> list[Appended]:
        """The append's one autocommit statement (its commit included), fenced or not."""
        cur = conn.cursor(row_factory=tuple_row)
        if len(events) == 1:
            e = events[0]
            try:
                if fence is None:
                    cur.execute(self._insert_one, (e.originator_id, e.originator_version, e.topic, e.state),
                                prepare=True)
                else:
                    cur.execute(self._insert_one_fenced, (e.originator_id, e.originator_version, e.topic, e.state,
                                                          fence.engine_id, fence.epoch, fence.holder), prepare=True)
            except pg_errors.UniqueViolation as error:
                # Our position is this session's last sequence value: give it up now so
                # readers are not held back by the hole.
                self._void_last_drawn(cur)
                raise self._conflict(events, error) from error
            except pg_errors.UndefinedTable as error:
                if fence is None:
                    raise
                raise NotLeader(fence.engine_id, fence.epoch, "no lease was ever taken for it") from error
            row = cur.fetchone()
            if row is None:  # the fence refused it
                self._void_last_drawn(cur)
                raise self._not_leader(fence)  # type: ignore[arg-type]
            return [Appended(row[0], row[1])]
        streams, versions, types, datas = _columns(events, conn)
        # Binary results: positions and the timestamp arrive without text parsing.
        if fence is None:
            rows = cur.execute(self._insert_many, (streams, versions, types, datas), prepare=True,
                               binary=True).fetchall()
        else:
            # One statement, one round trip (it was BEGIN, the lease check, the insert and COMMIT).
            try:
                rows = cur.execute(self._insert_many_fenced, (streams, fence.engine_id, fence.epoch, fence.holder,
                                                              versions, types, datas),
                                   prepare=True, binary=True).fetchall()
            except pg_errors.UndefinedTable as error:
                raise NotLeader(fence.engine_id, fence.epoch, "no lease was ever taken for it") from error
            if not rows:  # the fence refused it before any position was drawn
                raise self._not_leader(fence)
        if rows[0][0] == -1:
            raise self._conflict(events, None)
        # One transaction, one now(): every row carries the same recorded_at.
        return appended_at([row[0] for row in rows], rows[0][1])

    def _void_last_drawn(self, cur: psycopg.Cursor[Any]) -> None:
        """Void this session's last sequence value (the position a refused insert drew, if it
        drew one; an earlier, used position is left alone by ON CONFLICT)."""
        try:
            (lost,) = cur.execute(self._currval).fetchone()
        except pg_errors.ObjectNotInPrerequisiteState:  # nothing drawn in this session yet
            return
        cur.execute(self._void, (lost, lost))

    def _not_leader(self, fence: Fence) -> NotLeader:
        return NotLeader(fence.engine_id, fence.epoch, Leases(self, Dialect(POSTGRESQL, self.schema)).why_not(fence))

    def insert_in(self, cur: psycopg.Cursor[Any], events: Sequence[StoredEvent]) -> list[Appended]:
        """Insert ``events`` at positions drawn from the log's sequence inside the caller's write
        transaction (``cur`` from ``bounded_write``); ``ConcurrencyConflict`` if a (stream,
        version) is taken (the caller's transaction then rolls back; readers void its positions
        after ``gap_timeout``). No events: nothing inserted, ``[]``."""
        if not events:
            return []
        if len(events) == 1:
            e = events[0]
            try:
                cur.execute(self._insert_one, (e.originator_id, e.originator_version, e.topic, e.state))
            except pg_errors.UniqueViolation as error:
                raise self._conflict(events, error) from error
            position, recorded_at = cur.fetchone()
            return [Appended(position, recorded_at)]
        # Several events: one statement, one round trip (it was one per event).
        try:
            rows = cur.execute(self._insert_many_in, _columns(events, cur.connection), binary=True).fetchall()
        except pg_errors.UniqueViolation as error:
            raise self._conflict(events, error) from error
        return appended_at([row[0] for row in rows], rows[0][1])

    @contextmanager
    def bounded_write(self) -> Iterator[psycopg.Cursor[Any]]:
        """One write transaction on this thread's connection, bounded and checked like an append:
        the whole block and its commit are cancelled after ``append_timeout``; a commit whose wait
        for the synchronous standbys was cut is confirmed or ``CommitOutcomeUnknown``; a lost
        connection is ``CommitInterrupted``; other database errors are ``AppendFailed`` (rolled
        back). Typed errors raised in the block pass through (the transaction rolls back)."""
        timeout = self.datastore.append_timeout
        notices = _Notices()
        try:
            with self._bounded(notices) as conn, conn.transaction():
                yield conn.cursor(row_factory=tuple_row)
        except TradestateError:
            raise
        except pg_errors.QueryCanceled as e:
            cut = _replication_cut(notices)
            if cut is not None:
                raise self._unknown(cut) from e
            raise AppendFailed(f"PostgreSQL write cancelled after {timeout:g} s ({' '.join(str(e).split())}); "
                               "nothing was written") from e
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            raise CommitInterrupted(f"PostgreSQL write failed ({e}); it may or may not have committed") from e
        except psycopg.Error as e:
            raise AppendFailed(f"PostgreSQL write failed, nothing was written: {e}") from e

    @staticmethod
    def _unknown(reason: str) -> CommitOutcomeUnknown:
        return CommitOutcomeUnknown(
            f"the commit's outcome is unknown: PostgreSQL committed it locally but could not confirm it reached "
            f"the synchronous standbys ({reason}); a failover now could lose it. Do not act on it (do not send "
            "the order) yet; retrying the same call is safe and answers once the commit is confirmed"
        )

    def _confirm_or_raise(self, reason: str, timed_out: bool, budget: float) -> None:
        """After a cut replication wait: confirm durability within ``budget`` or raise."""
        if timed_out or budget <= 0.05:
            raise self._unknown(f"{reason}; no answer within the append timeout of {self.datastore.append_timeout:g} s"
                                if timed_out else reason)
        try:
            self.confirm_durable(budget)
        except CommitOutcomeUnknown:
            raise self._unknown(reason) from None

    def confirm_durable(self, timeout: float | None = None) -> None:
        """Return once everything this log has committed so far is as durable as configured (on the
        synchronous standbys, if any): a small transaction that writes WAL and so waits for them,
        which covers every earlier commit. Raises ``CommitOutcomeUnknown`` if that cannot be
        confirmed within ``timeout`` (default: the append timeout)."""
        timeout = self.datastore.append_timeout if timeout is None else timeout
        notices = _Notices()
        try:
            with self._connection() as conn:
                conn.add_notice_handler(notices)
                key = _WATCHDOG.arm(conn, timeout)
                try:
                    conn.execute(self._barrier)
                finally:
                    timed_out = _WATCHDOG.disarm(key)
                    conn.remove_notice_handler(notices)
        except psycopg.Error as e:
            reason = _replication_cut(notices) or " ".join(str(e).split())
            raise self._unknown(reason) from e
        cut = _replication_cut(notices)
        if cut is not None:
            raise self._unknown(f"{cut}; no answer within {timeout:g} s" if timed_out else cut)

    @staticmethod
    def _conflict(events: Sequence[StoredEvent], error: Exception | None) -> ConcurrencyConflict:
        streams = ", ".join(sorted({f"{e.originator_id}@{e.originator_version}" for e in events}))
        return ConcurrencyConflict(f"another writer already appended to {streams}" + (f" ({error})" if error else ""))

    # ---------------------------------------------------------------------------- reading
    def iter_rows(self, after: int = 0, stop: int | None = None, batch: int = 10_000) -> Iterator[Row]:
        """Rows with ``after < position <= stop`` in position order, stopping before the first hole
        still in flight (a hole nothing can fill any more, or older than ``gap_timeout``, is voided
        and read past), so a follower never skips an event."""
        with closing(self.iter_pages(after, stop, batch)) as pages:  # closed with us, while the pool is open
            for rows in pages:
                yield from rows

    def iter_pages(self, after: int = 0, stop: int | None = None, batch: int = 10_000) -> Iterator[list[Any]]:
        """``iter_rows`` a page of at most ``batch`` rows at a time, with the same ordering and hole
        guarantees; ``recorded_at`` is a datetime. A long read streams from one query on a connection
        of its own."""
        upper = stop if stop is not None else 2**62
        with self._connection() as conn:
            cur = conn.cursor(row_factory=tuple_row)
            if _CHUNKED_STREAMS and upper - after >= STREAM_FROM:
                head = cur.execute(self._head_after, (after,), prepare=True).fetchone()[0]
                if min(upper, head) - after >= STREAM_FROM:
                    after = yield from self._streamed(after, min(upper, head), batch)
            while after < upper:
                # Pages by position range, not LIMIT: positions have no holes, and a bounded range
                # is an index range scan whatever the table statistics say (a LIMIT query on a
                # freshly loaded, unanalysed table was planned as a full sort).
                # Binary results: bytea and timestamptz arrive without text decoding (~45% faster).
                rows = cur.execute(self._select, (after, min(upper, after + batch)), prepare=True,
                                   binary=True).fetchall()
                if not rows:
                    # Nothing in the range: the end of the log, or a hole at least a page long
                    # (a huge append in flight, or its writer died) with events beyond it.
                    head = cur.execute(self._head_after, (after,), prepare=True).fetchone()[0]
                    if head > after and min(upper, head) > after:
                        (beyond,) = cur.execute(self._next_row, (after,)).fetchone()
                        archived = self._archived(cur, after + 1, upper, batch)
                        if archived is not None:
                            after = yield from archived
                            continue
                        if self._void_hole(conn, after + 1, beyond - 1):
                            continue
                    return
                if rows[-1][0] - after != len(rows):  # a hole somewhere in this page
                    before = _before_hole(rows, after)
                    if before:
                        after = before[-1][0]
                        if self._holes:  # forgotten before the yield: a caller may stop reading there
                            self._forget_holes(after)
                        yield before
                    archived = self._archived(cur, after + 1, upper, batch)
                    if archived is not None:
                        after = yield from archived
                        continue
                    if not self._void_hole(conn, after + 1, rows[len(before)][0] - 1):
                        return  # an append is still in flight there: stop before it
                    continue  # the hole is now a $void row: read on from it
                after = rows[-1][0]
                if self._holes:  # holes that filled in while we waited are history now (forgotten
                    self._forget_holes(after)  # before the yield: a caller may stop reading there)
                yield rows
                if len(rows) < batch:  # returning early never skips: the next read starts here
                    return

    def _streamed(self, after: int, upper: int, batch: int) -> Iterator[list[Any]]:
        """Pages of ``after < position <= upper`` from one streamed query (the server sends rows
        ahead while the caller works: a 1M-row read took 0.7 s instead of 1.4-1.7 s by ranges).
        Stops before the first hole and returns the position reached: the ranged reads after it
        wait for the hole or void it.

        The stream has a connection of its own, so that the caller may query this log on its
        thread's connection meanwhile (bring a finished order back, say), and no statement
        timeout: a slow caller holds the query open for as long as it takes."""
        page: list[Any] = []
        conn = self.datastore.acquire()
        try:
            cur = conn.cursor(row_factory=tuple_row)
            cur.execute("SET statement_timeout = 0")
            rows = cur.stream(self._select, (after, upper), binary=True, size=STREAM_CHUNK)
            try:
                for row in rows:
                    page.append(row)
                    if len(page) >= batch:
                        if page[-1][0] - after != len(page):  # a hole in this page
                            break
                        yield page
                        after = page[-1][0]
                        page = []
            finally:
                rows.close()  # stopped early: psycopg cancels the rest of the query
                cur.execute(f"SET statement_timeout = {self.datastore.statement_timeout_ms}")
        finally:
            self.datastore.give_back(conn)
        complete = _before_hole(page, after)
        if complete:
            yield complete
            after = complete[-1][0]
        if self._holes:
            self._forget_holes(after)
        return after

    def _archived(self, cur: psycopg.Cursor[Any], position: int, upper: int, batch: int) -> Iterator[list[Any]] | None:
        """Where the table has no row at ``position``: the pages of the archived range holding it
        (read from its Parquet file, up to ``upper``), a generator that returns the last position
        it gave; None if no archive holds it (a real hole). Asked only on a hole, never on a live read.
        Nothing is asked beyond the archived positions known (``archived_upto``), which are asked
        again, once per hole, when it outlasts ``hole_probe_after`` (before anyone asks who could
        fill it): another process may have archived (or restored a log with archives) since, and
        the hole is then an archived range, not an append in flight to wait for and void. (Asked
        on first meeting a hole, a tail behind busy writers asked once per 7 rows read.)"""
        seen = self._holes.get(position)
        fresh = (seen is not None and position not in self._holes_asked
                 and time.monotonic() - seen >= (self.hole_probe_after or 0.0))
        if fresh:
            self._holes_asked.add(position)
        if position > self.archived_upto(fresh=fresh):  # the common hole: an append in flight at the head
            return None
        from . import archive

        found = archive.covering(cur, self.schema, self.table, position, self.datastore.target.archive or None)
        if found is None:
            return None
        arch, path = found

        def pages() -> Iterator[list[Any]]:
            last = position - 1
            for page in archive.read_pages(path, position, min(arch.last_position, upper), batch):
                yield page
                last = page[-1][0]
            return last

        return pages()

    @property
    def versions_relation(self) -> str:
        """Where a stream's current version is read (``max(stream_version) ... WHERE stream_id``):
        the versions table of a partitioned log (it holds archived events' versions too), else the
        log's table. Asked of the catalog each time (one query; the callers are a lease change, a
        coalescer's conflict round, the engine list), never kept: another process may swap the
        log under this one (a restore, a migration, ``partitions convert``), and a kept answer
        named a versions table that was gone, or missed the archived versions."""
        from .partitions import is_partitioned, versions_table

        with self._connection() as conn:
            partitioned = is_partitioned(conn.cursor(row_factory=tuple_row), self.schema, self.table)
        if partitioned:
            return f"{quote(self.schema)}.{quote(versions_table(self.table))}"
        return f"{quote(self.schema)}.{quote(self.table)}"

    def held_back_for(self, position: int) -> float | None:
        """Seconds this reader has been waiting on a hole above ``position`` (the oldest such hole
        it has met and not yet passed), None when none holds it back."""
        holes = self._holes
        if not holes:
            return None
        now = time.monotonic()
        ages = [now - seen for hole, seen in list(holes.items()) if hole > position]
        return max(ages) if ages else None

    def _forget_holes(self, reached: int) -> None:
        self._holes = {p: t for p, t in self._holes.items() if p > reached}
        self._hole_holders = {p: h for p, h in self._hole_holders.items() if p > reached}
        self._holes_asked = {p for p in self._holes_asked if p > reached}

    def _void_hole(self, conn: psycopg.Connection[Any], position: int, last: int | None = None) -> bool:
        """True once the hole ``position..last`` is filled (by us, or by its writers' commits).

        Called only after a read that found rows committed beyond the hole. The hole is voided as
        soon as no transaction that held the sequence's lock when this reader first asked
        (``hole_probe_after`` into the wait) holds it any more (see the module docstring: none can
        still commit into the hole), and in any case after ``gap_timeout``. The whole run of missing
        positions is voided together: one position per wait would hold readers back for up to 32
        waits after a server crash (a sequence resumes up to 32 values past its last WAL-logged value)."""
        last = position if last is None else max(position, last)
        now = time.monotonic()
        first_seen = self._holes.setdefault(position, now)
        if now - first_seen < self.gap_timeout and not self._unfillable(conn, position, now - first_seen):
            return False
        # The writers that took these positions are gone (or very slow): void them. A row still
        # committing makes this insert wait on the unique index and is then left alone.
        conn.execute(self._void_range, (position, last))
        self._holes.pop(position, None)
        self._hole_holders.pop(position, None)
        self._holes_asked.discard(position)
        return True

    def _unfillable(self, conn: psycopg.Connection[Any], position: int, waited: float) -> bool:
        """Whether no transaction can still commit into the hole at ``position`` (False: maybe one can)."""
        if self.hole_probe_after is None or waited < self.hole_probe_after:
            return False  # most holes are appends committing out of order: gone in a moment
        in_recovery, holders = conn.cursor(row_factory=tuple_row).execute(self._sequence_holders).fetchone()
        if in_recovery:
            return False
        holding = frozenset(holders)
        suspects = self._hole_holders.get(position)
        if suspects is None:  # the first look: whoever holds the lock now is who could fill the hole
            self._hole_holders[position] = suspects = holding
        return not (suspects & holding)

    def exists(self) -> bool:
        """Whether the log's table is in its schema (nothing is created)."""
        with self._connection() as conn:
            return conn.cursor(row_factory=tuple_row).execute("SELECT to_regclass(%s) IS NOT NULL",
                                (f'"{self.datastore.schema}"."{self.table}"',)).fetchone()[0]

    def head(self) -> int:
        """The highest committed position (0 when empty); positions below it may still be in flight."""
        with self._connection() as conn:
            return conn.cursor(row_factory=tuple_row).execute(self._head).fetchone()[0]

    def server_time(self) -> datetime:
        """The server's clock now (``clock_timestamp()``, not the transaction's start)."""
        with self._connection() as conn:
            return conn.cursor(row_factory=tuple_row).execute("SELECT clock_timestamp()").fetchone()[0]

    def read_stream(self, stream_id: str, after_version: int = 0) -> list[RecordedEvent]:
        """Events of ``stream_id`` with version above ``after_version``, in version order."""
        with self._connection() as conn:
            rows = conn.cursor(row_factory=tuple_row).execute(
                SQL(
                    "SELECT position, stream_id, stream_version, type, data, recorded_at FROM {}"
                    " WHERE stream_id = %s AND stream_version > %s ORDER BY stream_version"
                ).format(self._qualified),
                (stream_id, after_version),
            ).fetchall()
        events = [RecordedEvent.from_row(r) for r in rows]
        # a stream that begins above version 1 has archived events whatever a kept answer says
        # (another process archived, or restored a log with archives): ask again then
        if (not events or events[0].originator_version > after_version + 1) and self.archived_upto(
                fresh=bool(events)):
            # the stream's earlier events may be archived: the versions table knows where they were
            events = [RecordedEvent.from_row(r) for r in self.archived_stream(
                stream_id, after_version=after_version,
                below_version=events[0].originator_version if events else None)] + events
        return events

    def archived_upto(self, *, fresh: bool = False) -> int:
        """The last position of this log held only by an archive file (0: none). Asked again after
        a minute (an archive run by another process shows then), when ``fresh``, or once a read
        met an archive or found the log swapped under it (no versions table any more)."""
        known, at = getattr(self, "_archived_upto", None) or (0, -1e9)
        if fresh or time.monotonic() - at >= 60:
            from . import archive

            with self._connection() as conn:
                found = archive._archived(conn.cursor(row_factory=tuple_row), self.schema, self.table)
            known = max((a.last_position for a in found if not a.attached), default=0)
            self._archived_upto = (known, time.monotonic())
        return known

    def archived_stream(self, stream_id: str, *, after_version: int = 0, below_version: int | None = None,
                        after_position: int = 0) -> list[Any]:
        """The archived rows of ``stream_id`` with ``after_version < version < below_version`` and
        ``position > after_position``, in version order, as the log's table holds rows (the versions
        table says where they are; only those positions are read from the files). [] when the log
        has no versions table (a plain log swapped in under this one: nothing is archived)."""
        from .partitions import versions_table

        with self._connection() as conn:
            cur = conn.cursor(row_factory=tuple_row)
            cur.execute("SELECT to_regclass(%s)", (f"{quote(self.schema)}.{quote(versions_table(self.table))}",))
            if cur.fetchone()[0] is None:
                self._archived_upto = (0, time.monotonic())
                return []
            cur.execute(SQL("SELECT position FROM {}.{} WHERE stream_id = %s AND stream_version > %s"
                            " AND stream_version < %s AND position > %s").format(
                Identifier(self.schema), Identifier(versions_table(self.table))),
                (stream_id, after_version, below_version if below_version is not None else 2**62, after_position))
            wanted = [p for (p,) in cur.fetchall()]
        return sorted(self.archived_rows(wanted), key=lambda r: r[2])

    def archived_rows(self, positions: Iterable[int]) -> list[Any]:
        """The rows at ``positions`` that archive files hold (the others are left out), in position
        order; each file is read over the span of the wanted positions it holds, no further."""
        from . import archive

        wanted = sorted(set(positions))
        out: list[Any] = []
        if not wanted:
            return out
        with self._connection() as conn:
            cur = conn.cursor(row_factory=tuple_row)
            for arch in archive._archived(cur, self.schema, self.table):  # one look at the archives
                lo = bisect.bisect_left(wanted, arch.first_position)
                hi = bisect.bisect_right(wanted, arch.last_position)
                if arch.attached or lo == hi:
                    continue  # restored as a partition (its rows are live), or none of it wanted
                found = archive.covering(cur, self.schema, self.table, wanted[lo], self.datastore.target.archive or None)
                if found is None:
                    continue
                targets = set(wanted[lo:hi])
                for page in archive.read_pages(found[1], wanted[lo], wanted[hi - 1]):
                    out += [r for r in page if r[0] in targets]
        return sorted(out, key=lambda r: r[0])

    def close(self) -> None:
        """Give back the connections threads keep pinned and close the pool; the log is unusable
        afterwards."""
        with self._pinned_lock:
            pinned, self._pinned = self._pinned, []
        for conn in pinned:
            try:
                self.datastore.give_back(conn)
            except Exception:  # noqa: BLE001 - closing anyway
                conn.close()
        self.datastore.close()

    # The library's recorder comes first in the MRO: take the log's versions of its interface.
    insert_events = EventLog.insert_events
    max_notification_id = EventLog.max_notification_id
    select_events = EventLog.select_events
    select_notifications = EventLog.select_notifications
    subscribe = EventLog.subscribe
