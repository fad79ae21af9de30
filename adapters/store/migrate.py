"""Moving a log to another database: SQLite -> PostgreSQL (and back, for a test environment).

``migrate(source, target)`` copies what is durable and not derivable, rebuilds what is derived,
and checks the copy before anything of the target is replaced:

copied, row for row (positions, streams, versions, types, payload bytes and ``recorded_at``'s
instant exactly; ``recorded_at`` changes form only: ISO-8601 text on SQLite, timestamptz on
PostgreSQL, the same canonical bytes for the digest chain):

* ``ts_events``, ``ts_market_events``: the logs;
* ``ts_digest_chain``: the sealed ranges (their digests are over the canonical encoding, the same
  on both databases, so the chain verifies on the target as it did on the source);
* ``ts_checkpoints``: a checkpoint names the position and event id it covers, both identical on
  the target, so its checksum and MAC stay valid (a cache, but a warm start on day one);
* ``ts_leases``: an engine's fencing epoch must never go backwards: a fresh table would hand out
  epoch 1 again after the log's ``LeaseAcquired`` of epoch N. When ``force`` replaces a target
  that had leases of its own, an engine whose epoch there was higher keeps that epoch, released;
* ``ts_alert_cursor``: how far each webhook delivered; without it every alert is sent again.

rebuilt on the target:

* the read models (``ts_positions`` ... and their tracking row): ``Projector.rebuild`` after the
  swap (the swap drops any the target had: they described its old log);
* ``ts_order_refs`` (the trace index, derived): ``order_refs.catch_up`` when the source had it;
* the risk events' index of the log (``checkpoints.RISK_INDEX``) when the source had it;
* the position sequences (PostgreSQL): set to the heads, so the next append is head + 1;
* the append-only triggers and the ``<log>_json`` payload views: created with the schema.

not copied: ``ts_lease_standbys`` (standbys checking in, an operator's live view: they check in
again) and the read models' staging leftovers. Anchor files live outside the database and stay
valid: the chain is the same.

Source: read in one snapshot (SQLite: one read transaction; PostgreSQL: one REPEATABLE READ
transaction, each log cut at its contiguous head), so writers may carry on, but what they append
after the snapshot is not on the target: the result says how far the source moved on
(``source_moved_on``); stop the writers and migrate again with ``force`` to take it.

Target: nothing of it is touched until the copy checks out. The rows go into a staging place (a
temporary file beside the target / a ``<schema>_mg_<id>`` schema), by ``executemany`` on SQLite
and binary ``COPY FROM STDIN`` on PostgreSQL, streamed in chunks (memory does not grow with the
log). There: the whole digest chain is verified, the heads, row counts and last digest compared
with the source's, and the unsealed tail (no digest vouches for it) compared by a hash of its
canonical encoding on both sides. On PostgreSQL the verification mostly runs during the copy:
the chain goes in first, then the trading log in committed segments of whole sealed ranges (by
two COPY streams for a long log), and a trailing thread verifies each segment as it lands
(``digest.verify_ranges``, each linked to the one before); ``verify(after=...)`` then checks every
link of the chain from its start, any range the trailing thread did not reach, the other log and
the unsealed tail. The logs' unique constraints are built after the load (one sorted build is
cheaper than keeping the index up to date row by row), with fresh statistics, before the swap.
Only then is it swapped in by ``backup``'s own code (the target's previous content kept aside,
``<file>.pre-restore-<time>`` / ``<schema>_pre_<time>``, unless ``keep_previous=False``): the checks are restore's own (``backup._check_against_manifest``
against a manifest built from the source's snapshot), and so is the swap: ``backup._swap_sqlite``
(the staged file put in place of the target's in one step; split out of restore for this) and
``backup._swap_postgres`` (given the tables to move: the staging schema's tables moved in, the
position sequences set to the heads). A target that already holds a log is refused unless ``force``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from ...domain.errors import InvalidInput
from . import MARKET_TABLE, TRADING_TABLE, Store, open_store, redact, resolve_url, sqlite_path
from . import backup as bk
from . import checkpoints as cp
from . import digest as digest_mod
from . import order_refs
from .lease import LEASE_TABLE, Leases
from .sql import POSTGRESQL, SQLITE, PgUrl, quote, read_cursor, release, url_kind, write_cursor

ALERT_CURSOR_TABLE = "ts_alert_cursor"  # tradestate.alerts.CURSOR_TABLE (a layer above: imported only for its DDL)
LOG_TABLES = (TRADING_TABLE, MARKET_TABLE)
# Copied (in the order COPY_ORDER; the logs' heads are read first: the others are cut at them).
COPIED = (TRADING_TABLE, MARKET_TABLE, digest_mod.CHAIN_TABLE, cp.TABLE, LEASE_TABLE, ALERT_CURSOR_TABLE)
LOG_COLUMNS = ("position", "stream_id", "stream_version", "type", "data", "recorded_at")
# The order of the copy: the chain before the logs, so that the trading log's ranges can be
# verified on a PostgreSQL staging schema as soon as the copy has committed them (_Trailer).
COPY_ORDER = (digest_mod.CHAIN_TABLE, *(t for t in COPIED if t != digest_mod.CHAIN_TABLE))
CHUNK = 20_000  # rows read and written at a time
PARALLEL_FROM = 50_000  # sealed events from which a log goes into PostgreSQL by two COPY streams
DEFER_UNIQUE = True  # the logs' unique constraints built after the load on PostgreSQL (_PgStaging.defer_unique)
SEGMENT = 10_000  # events (at least; whole sealed ranges) a log's COPY commits at a time on PostgreSQL

# progress(stage, done, total): stage is "copy <table>", "verify" or "rebuild read models"
Progress = Callable[[str, int, int], None]


class MigrateError(bk.BackupError):
    """The migration could not be done; the target is as it was."""


class MigrateRefused(MigrateError):
    """Refused before anything was written: the target holds a log (no ``force``), source and
    target are the same database, or the source holds no log."""


class MigrateDamaged(MigrateError):
    """The copy does not check out on the target (the source's digest chain fails, or the copy
    differs from the source): the target is as it was."""


@dataclass
class MigrateResult:
    """What a successful migration did."""

    ok: bool
    source: str
    target: str
    logs: dict[str, dict[str, int]]  # table -> {"head", "rows"} copied
    tables: dict[str, int]  # every copied table -> rows
    last_digest: str  # the trading log's, on the target (= the source's)
    verify: dict[str, Any]  # the target's digest verification
    unsealed_checked: int  # events after the chain's tail, compared by hash
    previous_saved_to: str | None
    rebuilt: dict[str, Any] = field(default_factory=dict)  # "read_models" position, "order_refs" upto, "risk_index"
    source_moved_on: dict[str, int] = field(default_factory=dict)  # events appended to the source after the snapshot
    seconds: dict[str, float] = field(default_factory=dict)  # prepare, copy, verify, swap, rebuild, total
    # trading-log positions 1..this verified on the target while the copy went on (PostgreSQL),
    # their time in seconds["copy"]; seconds["verify"] is the rest of the verification
    verified_while_copying: int = 0

    @property
    def events(self) -> int:
        """Events copied (both logs)."""
        return sum(v["rows"] for v in self.logs.values())

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON-ready values."""
        return asdict(self) | {"events": self.events}


# ------------------------------------------------------------------------------ sources


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)


_fromiso = datetime.fromisoformat


def _time_from_text(value: Any) -> Any:
    if value.__class__ is str:
        at = _fromiso(value)
        return at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)
    return _time_from_number(value)


def _time_from_number(value: Any) -> Any:
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc)
    return value


def _time_to_text(value: Any) -> Any:
    # always with microseconds: the 32-character form the digest's SQLite fast path expects
    return value.astimezone(timezone.utc).isoformat(timespec="microseconds") if isinstance(value, datetime) else value


def _time_to_number(value: Any) -> Any:
    return _utc(value).timestamp() if isinstance(value, datetime) else value


class _Source:
    """One database read in one snapshot: ``tables``, ``columns(table)`` (name, type) and
    ``chunks(table, columns, where, params, order)``."""

    kind: str
    tables: set[str]

    def columns(self, table: str) -> list[tuple[str, str]]:
        raise NotImplementedError

    def chunks(self, table: str, columns: list[str], where: str, params: tuple[Any, ...],
               order: str) -> Iterator[list[tuple[Any, ...]]]:
        raise NotImplementedError

    p: str  # the parameter marker
    risk_index: bool  # whether the log has checkpoints.RISK_INDEX

    def row(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        raise NotImplementedError

    def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        raise NotImplementedError

    def head(self, table: str) -> tuple[int, int]:
        """(head, rows) of a log in the snapshot."""
        raise NotImplementedError

    def fork(self) -> _Source:
        """Another reader of the same data, for a second thread."""
        raise NotImplementedError

    def name(self, table: str) -> str:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _SqliteSource(_Source):
    kind = SQLITE
    p = "?"

    def __init__(self, url: str):
        path = Path(sqlite_path(url)).expanduser()
        if not path.is_file():
            raise MigrateRefused(f"no tradestate log at {url} (the file does not exist)")
        self.url = url
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=30)
        try:
            self.conn.execute("BEGIN")  # one read transaction: the snapshot starts at its first read
            self.tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as e:
            self.conn.close()
            raise MigrateRefused(f"{url} is not a readable SQLite database ({e})") from e
        self.risk_index = self.conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = ?",
                                            (cp.RISK_INDEX,)).fetchone()[0] > 0

    def columns(self, table: str) -> list[tuple[str, str]]:
        return [(r[1], (r[2] or "").upper()) for r in self.conn.execute(f"PRAGMA table_info({quote(table)})")]

    def fork(self) -> _Source:
        # SQLite cannot share a snapshot between connections; a fork only reads sealed positions,
        # which a later snapshot holds unchanged (append-only; an edit fails the chain's verify)
        return _SqliteSource(self.url)

    def name(self, table: str) -> str:
        return quote(table)

    def row(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self.conn.execute(sql, params).fetchone()

    def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return self.conn.execute(sql, params).fetchall()

    def head(self, table: str) -> tuple[int, int]:
        # one writer at a time: no holes in flight (a missing row is damage, found by the chain)
        head, rows = self.row(f"SELECT coalesce(max(position), 0), count(*) FROM {quote(table)}")
        return int(head), int(rows)

    def chunks(self, table: str, columns: list[str], where: str, params: tuple[Any, ...],
               order: str) -> Iterator[list[tuple[Any, ...]]]:
        cur = self.conn.execute(f"SELECT {', '.join(map(quote, columns))} FROM {quote(table)}{where}{order}", params)
        while rows := cur.fetchmany(CHUNK):
            yield rows
        cur.close()

    def close(self) -> None:
        with suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")
        with suppress(sqlite3.Error):
            self.conn.close()


class _PgSource(_Source):
    kind = POSTGRESQL
    p = "%s"

    def __init__(self, url: str, snapshot: str | None = None):
        import psycopg
        from psycopg.sql import SQL, Literal

        target = PgUrl.parse(url)
        self.url, self.schema = url, target.schema
        self.conn = psycopg.connect(**target.kwargs(application_name="tradestate-migrate"), autocommit=True)
        try:
            self.conn.execute("SET statement_timeout = 0")
            self.conn.execute("SET idle_in_transaction_session_timeout = 0")
            self._tx = self.conn.transaction()
            self._tx.__enter__()
            self.conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            if snapshot is not None:  # a fork: the very snapshot of the source it was forked from
                self.conn.execute(SQL("SET TRANSACTION SNAPSHOT {}").format(Literal(snapshot)))
            self.snapshot = snapshot or self.row("SELECT pg_export_snapshot()")[0]
            self.tables = {t for (t,) in self.conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s", (self.schema,)).fetchall()}
            self.risk_index = bool(self.row("SELECT to_regclass(%s) IS NOT NULL", (self.name(cp.RISK_INDEX),))[0])
        except BaseException:
            self.conn.close()
            raise

    def fork(self) -> _Source:
        return _PgSource(self.url, self.snapshot)

    def columns(self, table: str) -> list[tuple[str, str]]:
        return [(n, t) for n, t in self.conn.execute(
            "SELECT column_name, udt_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
            " ORDER BY ordinal_position", (self.schema, table)).fetchall()]

    def name(self, table: str) -> str:
        return f"{quote(self.schema)}.{quote(table)}"

    def row(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self.conn.execute(sql, params).fetchone()

    def all(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return self.conn.execute(sql, params).fetchall()

    def head(self, table: str) -> tuple[int, int]:
        # the contiguous prefix: an append still in flight below the head is not half copied
        if self.row("SELECT to_regclass(%s)", (self.name(bk.ARCHIVES_TABLE),))[0] is not None:
            archived = self.row(f"SELECT coalesce(max(last_position), 0) FROM {self.name(bk.ARCHIVES_TABLE)}"
                                " WHERE log = %s", (table,))[0]
            if archived:  # positions 1..archived are in Parquet files, not in the table
                raise MigrateRefused(f"{table} has positions 1-{archived} archived to Parquet files: load them "
                                     "back (tradestate archive restore --month ...) before migrating; nothing copied")
        return bk._pg_contiguous_head(self.conn.cursor(), self.name(table))

    def chunks(self, table: str, columns: list[str], where: str, params: tuple[Any, ...],
               order: str) -> Iterator[list[tuple[Any, ...]]]:
        types = dict(self.columns(table))
        with self.conn.cursor() as cur, cur.copy(
                f"COPY (SELECT {', '.join(map(quote, columns))} FROM {self.name(table)}{where}{order}) TO STDOUT"
                " (FORMAT binary)", params) as copy:
            copy.set_types([types[c] for c in columns])
            chunk: list[tuple[Any, ...]] = []
            for row in copy.rows():
                chunk.append(row)
                if len(chunk) >= CHUNK:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

    def close(self) -> None:
        with suppress(Exception):
            self._tx.__exit__(None, None, None)
        self.conn.close()


def _open_source(url: str) -> _Source:
    return _SqliteSource(url) if url_kind(url) == SQLITE else _PgSource(url)


# ------------------------------------------------------------------------------ staging targets


def _converter(source_kind: str, source_type: str, target_kind: str, target_type: str) -> Callable[[Any], Any] | None:
    """How one column's value read from the source is written to the target (None: as it is)."""
    s, t = source_type.lower(), target_type.lower()
    if target_kind == POSTGRESQL:
        if t == "timestamptz" and source_kind == SQLITE:
            return _time_from_number if s in ("real", "integer") else _time_from_text
        if t == "bool" and source_kind == SQLITE:
            return bool
        if t == "numeric" and source_kind == SQLITE:
            return lambda v: None if v is None else Decimal(str(v))
        return None
    if source_kind == POSTGRESQL:
        if s == "timestamptz":
            return _time_to_number if t in ("real", "integer") else _time_to_text
        if s == "bool":
            return lambda v: None if v is None else int(v)
        if s == "numeric":
            return lambda v: None if v is None else str(v)
    return None


def _row_function(funcs: list[Callable[[Any], Any] | None]) -> Callable[[tuple[Any, ...]], Any] | None:
    todo = [(i, f) for i, f in enumerate(funcs) if f is not None]
    if not todo:
        return None
    if len(todo) == 1:
        i, f = todo[0]
        return lambda row: (*row[:i], f(row[i]), *row[i + 1:])

    def convert(row: tuple[Any, ...]) -> list[Any]:
        out = list(row)
        for i, f in todo:
            out[i] = f(out[i])
        return out

    return convert


class _Staging:
    """A staging place on the target's database: a store opened there (``store``), and the
    target's column types (``columns``) and bulk writes (``write``)."""

    kind: str
    url: str  # the staging place's URL
    store: Store

    def columns(self, table: str) -> list[tuple[str, str]]:
        raise NotImplementedError

    def write(self, table: str, columns: list[str], types: list[str], rows: Iterator[Any]) -> int:
        raise NotImplementedError

    def finish_load(self, risk_index: bool) -> None:
        """After the last write: durability, sequences, statistics, and the log's risk index built
        once (``risk_index``); ``store`` is open again."""

    def discard(self) -> None:
        raise NotImplementedError


class _SqliteStaging(_Staging):
    kind = SQLITE

    def __init__(self, target: Path):
        self.work = Path(tempfile.mkdtemp(prefix=f".{target.name}.migrate-", dir=target.parent))
        self.path = self.work / "staged.db"
        self.url = f"sqlite:///{self.path}"
        self.store = open_store(self.url, create=True)
        self.conn: sqlite3.Connection | None = None

    def _raw(self) -> sqlite3.Connection:
        if self.conn is None:
            self.store.close()  # its pool is done: one raw connection loads the file
            self.conn = sqlite3.connect(self.path, isolation_level=None)
            # a new file nobody else sees: no WAL, no fsync per transaction (one at the end)
            self.conn.execute("PRAGMA journal_mode=DELETE")
            self.conn.execute("PRAGMA synchronous=OFF")
            self.conn.execute("PRAGMA cache_size=-262144")
        return self.conn

    def columns(self, table: str) -> list[tuple[str, str]]:
        return [(r[1], (r[2] or "").upper()) for r in self._raw().execute(f"PRAGMA table_info({quote(table)})")]

    def write(self, table: str, columns: list[str], types: list[str], rows: Iterator[Any]) -> int:
        conn = self._raw()
        sql = f"INSERT INTO {quote(table)} ({', '.join(map(quote, columns))}) VALUES ({', '.join('?' * len(columns))})"
        n = 0
        conn.execute("BEGIN")
        try:
            for chunk in rows:
                conn.executemany(sql, chunk)
                n += len(chunk)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return n

    def finish_load(self, risk_index: bool) -> None:
        if self.conn is not None:
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.close()
            self.conn = None
            with open(self.path, "rb+") as f:
                os.fsync(f.fileno())
        self.store = open_store(self.url, create=False)
        if risk_index:
            cp.create_risk_index(self.store)

    def discard(self) -> None:
        with suppress(Exception):
            if self.conn is not None:
                self.conn.close()
        with suppress(Exception):
            self.store.close()
        shutil.rmtree(self.work, ignore_errors=True)


class _PgStaging(_Staging):
    kind = POSTGRESQL

    def __init__(self, url: str):
        import psycopg

        target = self._target = PgUrl.parse(url)
        self.schema = f"{target.schema[:40]}_mg_{uuid.uuid4().hex[:8]}"
        # no statement timeout on the staging store's sessions: building the risk index and verifying
        # a long log are single statements of minutes (the admin session has none either)
        self.url = PgUrl.parse(target.with_schema(self.schema)).with_param("statement_timeout", "0")
        self.admin = psycopg.connect(**target.kwargs(application_name="tradestate-migrate"), autocommit=True)
        self.admin.execute("SET statement_timeout = 0")
        self._background: threading.Thread | None = None
        self._background_error: BaseException | None = None
        self._deferred: list[tuple[str, str, str]] = []  # (table, constraint, definition) to build after the load
        self._started = False  # logs_loaded() ran
        self.store = open_store(self.url, create=True)

    def columns(self, table: str) -> list[tuple[str, str]]:
        return [(n, t) for n, t in self.admin.execute(
            "SELECT column_name, udt_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
            " ORDER BY ordinal_position", (self.schema, table)).fetchall()]

    def connect(self) -> Any:
        """Another session like ``admin`` (for a second COPY stream)."""
        import psycopg

        conn = psycopg.connect(**self._target.kwargs(application_name="tradestate-migrate"), autocommit=True)
        conn.execute("SET statement_timeout = 0")
        return conn

    def write(self, table: str, columns: list[str], types: list[str], rows: Iterator[Any], conn: Any = None) -> int:
        n = 0
        cols = ", ".join(map(quote, columns))
        conn = conn or self.admin
        # (psycopg's QueuedLibpqWriter, sending from a thread, was no faster here: 2 cores, the server on one)
        with conn.transaction(), conn.cursor() as cur:
            # The staging schema is nobody's until the swap, whose commit (synchronous) flushes the
            # WAL up to it, these rows included: no flush per COPY here.
            cur.execute("SET LOCAL synchronous_commit = off")
            with cur.copy(f"COPY {quote(self.schema)}.{quote(table)} ({cols}) FROM STDIN (FORMAT binary)") as copy:
                copy.set_types(types)
                write_row = copy.write_row
                for chunk in rows:
                    for row in chunk:
                        write_row(row)
                    n += len(chunk)
        return n

    def defer_unique(self, tables: tuple[str, ...]) -> None:
        """Drop the unique constraints of ``tables`` (empty yet) for ``finish_load`` to make again
        after the load: one sorted index build costs the server about half of what keeping the
        index up to date row by row does (measured: a 100k-event log's COPY 0.55 s with the
        (stream_id, stream_version) index, 0.27 s without, 0.13 s to build it after). The primary
        key stays: the trailing verification reads by position while the copy goes on."""
        for table in tables:
            name = f"{quote(self.schema)}.{quote(table)}"
            for constraint, definition in self.admin.execute(
                    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = to_regclass(%s)"
                    " AND contype = 'u' ORDER BY conname", (name,)).fetchall():
                if not definition.startswith("UNIQUE ("):
                    continue  # (a form made again below only as plain columns)
                self.admin.execute(f"ALTER TABLE {name} DROP CONSTRAINT {quote(constraint)}")
                self._deferred.append((table, constraint, definition))

    def finish_load(self, risk_index: bool) -> None:
        table = f"{quote(self.schema)}.{quote(cp.TABLE)}"
        if self.admin.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is not None:
            self.admin.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), coalesce(max(id), 1), max(id) IS NOT"
                               f" NULL) FROM {table}", (table,))
        self.logs_loaded()

    def logs_loaded(self) -> None:
        """The logs are all in (once; ``finish_load`` too): the deferred unique indexes and fresh
        statistics (for the plans of the rebuild and of later readers) are made by a thread of
        their own while the small tables are copied and the rest of the verification reads:
        neither blocks a read. ``settled`` waits for them before the swap. (The risk index, if
        wanted, was kept through the load: ``_stage_tables``.)"""
        if self._background is None and not self._started:
            self._started = True
            self._background = threading.Thread(target=self._index_and_analyze, name="migrate-index", daemon=True)
            self._background.start()

    def _index_and_analyze(self) -> None:
        conn = None
        try:
            conn = self.connect()  # its own session: ``admin`` goes on copying the small tables
            for table, constraint, definition in self._deferred:
                # the index first (a SHARE lock: the verify's reads go on), then the constraint on it
                name = f"{quote(self.schema)}.{quote(table)}"
                columns = definition.removeprefix("UNIQUE ")
                conn.execute(f"CREATE UNIQUE INDEX {quote(constraint)} ON {name} {columns}")
                conn.execute(f"ALTER TABLE {name} ADD CONSTRAINT {quote(constraint)} UNIQUE USING INDEX"
                             f" {quote(constraint)}")
            for log in LOG_TABLES:
                conn.execute(f"ANALYZE {quote(self.schema)}.{quote(log)}")
        except BaseException as e:  # noqa: BLE001 - handed to settled()
            self._background_error = e
        finally:
            if conn is not None:
                conn.close()

    def settled(self) -> None:
        """Wait for ``finish_load``'s index and ANALYZE; raise what they raised."""
        if self._background is not None:
            self._background.join()
            self._background = None
        error, self._background_error = self._background_error, None
        if error is not None:
            raise error

    def discard(self) -> None:
        import psycopg

        with suppress(BaseException):
            self.settled()
        with suppress(Exception):
            self.store.close()
        with suppress(psycopg.Error):
            self.admin.execute(f"DROP SCHEMA IF EXISTS {quote(self.schema)} CASCADE")
        self.admin.close()


# ------------------------------------------------------------------------------ the migration


def _same_database(source: str, target: str) -> bool:
    if url_kind(source) != url_kind(target):
        return False
    if url_kind(source) == SQLITE:
        a, b = Path(sqlite_path(source)).expanduser().absolute(), Path(sqlite_path(target)).expanduser().absolute()
        return a == b or (a.exists() and b.exists() and a.samefile(b))
    s, t = PgUrl.parse(source), PgUrl.parse(target)
    return (s.where, s.schema) == (t.where, t.schema)


def _tail_hasher() -> Any:
    return hashlib.blake2b(digest_size=32)


def _canonical(row: tuple[Any, ...]) -> tuple[Any, ...]:
    p, s, v, t, d, r = row
    return p, v, s.encode(), t.encode(), bytes(d), digest_mod.canonical_time(r)


def _hash_rows(h: Any, rows: list[tuple[Any, ...]]) -> None:
    # the digest chain's own encoding of each event (digest._hash_rows), into one running hash
    h.update(digest_mod._hash_rows(rows, h.digest())[0])


def _make_staging(url: str, kind: str) -> _Staging:
    if kind == SQLITE:
        target = Path(sqlite_path(url)).expanduser().absolute()
        if not target.parent.is_dir():
            raise InvalidInput(f"directory {target.parent} does not exist")
        return _SqliteStaging(target)
    return _PgStaging(url)


def _stage_tables(src: _Source, staged: _Staging) -> bool:
    """Create on the staging place the tables beside the logs that the source has (the logs, the
    chain, the triggers and views came with its ``open_store``). Returns whether the log's risk
    index is wanted there: on SQLite it is dropped for the load and built once after it
    (``finish_load``), which is cheaper than keeping it up to date row by row; on PostgreSQL it is
    kept through the load and the logs' unique constraints are built after it instead
    (``_PgStaging.defer_unique``)."""
    if cp.TABLE in src.tables:
        cp.create_table(staged.store)  # (creates the risk index too, on an empty log)
    if LEASE_TABLE in src.tables:
        Leases.of(staged.store).ensure()
    if ALERT_CURSOR_TABLE in src.tables:
        from ...alerts import ensure_cursor_table  # its DDL lives with the alerts (lazily: a layer above)

        ensure_cursor_table(staged.store)
    wanted = src.risk_index or cp.risk_index_exists(staged.store)
    if isinstance(staged, _PgStaging):
        # Kept through the load on PostgreSQL: a partial index of a few rows costs the COPY
        # nothing measurable, while building it afterwards is one more scan of the whole log.
        if wanted:
            cp.create_risk_index(staged.store)
        if DEFER_UNIQUE:
            staged.defer_unique(LOG_TABLES)
        return wanted
    with write_cursor(staged.store) as cur:
        cur.execute(f"DROP INDEX IF EXISTS {staged.store.dialect.name(cp.RISK_INDEX)}")
    return wanted


class _Trailer:
    """A thread that verifies the trading log's sealed ranges on the staging schema while the copy
    goes on: ``segments`` (whole ranges, in position order) are checked by
    ``digest.verify_ranges``, each as soon as ``committed`` says it is written, linked to the one
    before (the first to the genesis digest). It stops at the first segment that does not check
    out: ``verify(after=upto)`` on the whole staging schema then recomputes from there, words the
    finding, and checks every link of the chain and the unsealed tail."""

    WAIT = 1.0  # seconds between looks at ``stopped`` while waiting for a segment

    def __init__(self, store: Store, log: str, segments: list[tuple[int, int]]):
        self.store, self.log, self.segments = store, log, segments
        self.upto = self.checked = 0  # verified 1..upto, events hashed
        self._done: set[tuple[int, int]] = set()
        self._cond = threading.Condition()
        self._stopped = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="migrate-verify", daemon=True)
        self._thread.start()

    def committed(self, segment: tuple[int, int]) -> None:
        with self._cond:
            self._done.add(segment)
            self._cond.notify_all()

    def _run(self) -> None:
        previous = digest_mod.GENESIS
        segments, i = self.segments, 0
        try:
            while i < len(segments):
                with self._cond:
                    while segments[i] not in self._done and not self._stopped:
                        self._cond.wait(self.WAIT)
                    if self._stopped:
                        return
                    # every segment already written after it too, in one call: its pages are then
                    # read ahead while the one before is hashed (catching up after the copy)
                    j = i
                    while j + 1 < len(segments) and segments[j + 1] in self._done:
                        j += 1
                part = digest_mod.verify_ranges(self.store, self.log, segments[i][0], segments[j][1],
                                                previous=previous)
                i = j + 1
                self.checked += part.checked_events
                self.upto, previous = part.verified_upto, part.last_digest
                if not part.ok:
                    return
        except BaseException as e:  # noqa: BLE001 - raised by finish()
            self._error = e
        finally:
            release(self.store)  # this thread's pinned connection

    def finish(self, *, stop: bool = False) -> int:
        """Wait for the thread (``stop``: at once, the copy failed); returns ``upto``."""
        with self._cond:
            self._stopped = self._stopped or stop
            self._cond.notify_all()
        self._thread.join()
        if self._error is not None and not stop:
            raise self._error
        return self.upto


def _segments(src: _Source, log: str, sealed: int, head: int) -> list[tuple[int, int]]:
    """Positions 1..``head`` cut at the source chain's range ends into parts of at least
    ``SEGMENT`` events (the last sealed part may be shorter), then the unsealed tail."""
    out: list[tuple[int, int]] = []
    lo = 1
    if sealed:
        for (end,) in src.all(f"SELECT range_end FROM {src.name(digest_mod.CHAIN_TABLE)} WHERE log = {src.p}"
                              f" AND range_end <= {src.p} ORDER BY range_start", (log, sealed)):
            if int(end) - lo + 1 >= SEGMENT:
                out.append((lo, int(end)))
                lo = int(end) + 1
        if lo <= sealed:
            out.append((lo, sealed))
    if max(lo, sealed + 1) <= head:
        out.append((max(lo, sealed + 1), head))
    return out


def _copy(src: _Source, staged: _Staging, progress: Progress | None
          ) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, Any]], dict[str, int], dict[str, str],
                     _Trailer | None]:
    """Every copied table the source has, from its snapshot into the staging place. Returns the
    logs' heads and rows, the chain's tail per log, rows per table, per log the hash of its
    unsealed tail (the events after the chain's last range) in the chain's canonical encoding,
    and on PostgreSQL the trailing verification of the trading log (``_Trailer``, finished)."""
    logs: dict[str, dict[str, int]] = {}
    chain: dict[str, dict[str, Any]] = {}
    for log in LOG_TABLES:
        head, rows = src.head(log) if log in src.tables else (0, 0)
        logs[log] = {"head": head, "rows": rows}
        chain[log] = {"sealed_upto": 0, "last_digest": ""}
        if digest_mod.CHAIN_TABLE in src.tables:
            tail = src.row(f"SELECT range_end, digest FROM {src.name(digest_mod.CHAIN_TABLE)} WHERE log = {src.p}"
                           f" AND range_end <= {src.p} ORDER BY range_start DESC LIMIT 1", (log, head))
            if tail:
                chain[log] = {"sealed_upto": int(tail[0]), "last_digest": bytes(tail[1]).hex()}
    tables: dict[str, int] = {}
    tails: dict[str, str] = {}
    trailer: _Trailer | None = None
    try:
        for table in COPY_ORDER:
            if table not in src.tables:
                continue
            source_columns = src.columns(table)
            target_types = dict(staged.columns(table))
            names = [n for n, _ in source_columns]
            if set(names) != set(target_types):
                raise MigrateRefused(f"{table} has columns {sorted(names)} on the source but {sorted(target_types)} "
                                     "in this version: migrate with the version that wrote the source")
            funcs = [_converter(src.kind, t, staged.kind, target_types[n]) for n, t in source_columns]
            convert = _row_function(funcs)
            if table in LOG_TABLES and tuple(names) == LOG_COLUMNS and funcs[:5] == [None] * 5 and funcs[5] is not None:
                f = funcs[5]  # the hot path: only recorded_at changes form (a comprehension, no call per row)
                convert = None
                convert_chunk: Callable[[list[Any]], list[Any]] | None = (
                    lambda chunk, f=f: [(p, s, v, t, d, f(r)) for p, s, v, t, d, r in chunk])
            else:
                convert_chunk = None if convert is None else (lambda chunk, c=convert: [c(r) for r in chunk])
            p = src.p
            where, order, params = "", "", ()
            total = 0
            if table in LOG_TABLES:
                where, order, params = f" WHERE position >= 1 AND position <= {p}", " ORDER BY position", (
                    logs[table]["head"],)
                total = logs[table]["rows"]
            elif table == digest_mod.CHAIN_TABLE:
                where = " WHERE " + " OR ".join(f"(log = {p} AND range_end <= {p})" for _ in LOG_TABLES)
                params = tuple(x for log in LOG_TABLES for x in (log, logs[log]["head"]))
                order = " ORDER BY log, range_start"
            elif table == cp.TABLE:
                where, order, params = f" WHERE position <= {p}", " ORDER BY id", (logs[TRADING_TABLE]["head"],)
            else:
                order = f" ORDER BY {quote(names[0])}"
            label = f"copy {table}"
            hasher = _tail_hasher() if table in LOG_TABLES else None
            sealed = chain.get(table, {}).get("sealed_upto", 0)
            types = [target_types[n] for n in names]
            done = [0, 0]  # rows written by this thread, by the second stream

            def chunks(reader: _Source = src, where: str = where, params: tuple[Any, ...] = params, mine: int = 0,
                       table: str = table, order: str = order, hasher: Any = hasher, sealed: int = sealed,
                       total: int = total, label: str = label, convert: Any = convert_chunk,
                       done: list[int] = done) -> Iterator[list[Any]]:
                for chunk in reader.chunks(table, names, where, params, order):
                    if hasher is not None and chunk[-1][0] > sealed:
                        _hash_rows(hasher, [_canonical(r) for r in chunk if r[0] > sealed])
                    done[mine] += len(chunk)
                    yield chunk if convert is None else convert(chunk)
                    if progress is not None and mine == 0:  # progress is reported from this thread only
                        progress(label, done[0] + done[1], total or done[0])

            if isinstance(staged, _PgStaging) and table in LOG_TABLES:
                # In segments of whole sealed ranges, each COPY committed on its own, so that the
                # trading log's ranges are verified on the staging schema (a trailing thread)
                # while the rest is still being copied.
                segments = _segments(src, table, sealed, logs[table]["head"])
                if table == TRADING_TABLE and sealed and digest_mod.CHAIN_TABLE in tables:
                    trailer = _Trailer(staged.store, table, [s for s in segments if s[1] <= sealed])
                on_commit = trailer.committed if trailer is not None and table == TRADING_TABLE else None
                between = f" WHERE position >= {p} AND position <= {p}"

                def write(reader: _Source, parts: list[tuple[int, int]], mine: int, conn: Any = None,
                          table: str = table, types: list[str] = types, chunks: Any = chunks,
                          on_commit: Any = on_commit) -> int:
                    n = 0
                    for part in parts:
                        n += staged.write(table, names, types, chunks(reader, between, part, mine), conn=conn)
                        if on_commit is not None:
                            on_commit(part)
                    return n

                half = min(logs[table]["head"] // 2, sealed)
                first = [s for s in segments if s[1] <= half] if half >= PARALLEL_FROM else []
                rest = segments[len(first):]
                if first:
                    # Two COPY streams: the segments of the first half of the sealed prefix on a
                    # second thread (its own reader of the same snapshot, its own session), the
                    # rest here, in order, hashing the unsealed tail. Each server session inserts
                    # on its own core; the client's work overlaps the waits for the server.
                    tables[table] = _two_streams(src, staged, table,
                                                 lambda reader, conn, first=first, write=write: write(reader, first, 1,
                                                                                                      conn),
                                                 lambda rest=rest, write=write: write(src, rest, 0))
                else:
                    tables[table] = write(src, segments, 0)
            else:
                tables[table] = staged.write(table, names, types, chunks())
            if hasher is not None:
                tails[table] = hasher.hexdigest()
            if isinstance(staged, _PgStaging) and table in LOG_TABLES and all(
                    t in tables for t in LOG_TABLES if t in src.tables):
                staged.logs_loaded()  # (the small tables after the logs and the trailing verification overlap it)
    except BaseException:
        if trailer is not None:
            trailer.finish(stop=True)
        raise
    if trailer is not None:
        trailer.finish()
    return logs, chain, tables, tails, trailer


def _two_streams(src: _Source, staged: _PgStaging, table: str, first: Callable[[_Source, Any], int],
                 rest: Callable[[], int]) -> int:
    """``first(reader, conn)`` (a fork of ``src``, a session of its own) run by a second thread
    while ``rest()`` runs here; returns the rows written by both (the second thread's error raised
    here)."""
    outcome: list[Any] = []

    def run() -> None:
        reader = conn = None
        try:
            reader, conn = src.fork(), staged.connect()
            outcome.append(first(reader, conn))
        except BaseException as e:  # noqa: BLE001 - raised in the calling thread
            outcome.append(e)
        finally:
            if reader is not None:
                reader.close()
            if conn is not None:
                conn.close()

    worker = threading.Thread(target=run, name=f"migrate-copy-{table}", daemon=True)
    worker.start()
    try:
        n = rest()
    finally:
        worker.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return n + int(outcome[0])


def _staged_tail(store: Store, log: str, first: int, last: int) -> str:
    """The hash of ``first..last`` of ``log`` on the staging place, as ``_copy`` hashed the source's."""
    db = digest_mod._Backend(store)
    h = _tail_hasher()
    lo = first
    with db.read() as cur:
        while lo <= last:
            hi = min(last, lo + CHUNK - 1)
            _hash_rows(h, db.rows(cur, log, lo, hi))
            lo = hi + 1
    return h.hexdigest()


def _carry_epochs(target: str, staged: Store) -> int:
    """Engines whose lease epoch on the target being replaced is higher than the source's keep that
    epoch, released (a fenced writer of the old target is refused; a new holder takes epoch + 1).
    Returns how many."""
    try:
        with open_store(target, create=False) as old:
            leases = Leases.of(old).all()
    except InvalidInput:
        return 0
    if not leases:
        return 0
    Leases.of(staged).ensure()
    d = staged.dialect
    p, table = d.param, d.name(LEASE_TABLE)
    now = datetime.now(timezone.utc)
    at = now if d.is_postgres else now.timestamp()
    carried = 0
    with write_cursor(staged) as cur:
        for lease in leases:
            cur.execute(f"SELECT epoch FROM {table} WHERE engine_id = {p}", (lease.engine_id,))
            row = cur.fetchone()
            if row is not None and int(row[0]) >= lease.epoch:
                continue
            cur.execute(f"DELETE FROM {table} WHERE engine_id = {p}", (lease.engine_id,))
            cur.execute(f"INSERT INTO {table} (engine_id, epoch, holder, acquired_at, renewed_at, expires_at, released,"
                        f" expiry_recorded) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})",
                        (lease.engine_id, lease.epoch, lease.holder, at, at, at, True, True))
            carried += 1
    return carried


def _verified_logs(result: digest_mod.VerifyResult) -> dict[str, dict[str, int]]:
    """The staged logs' heads and rows, as ``verify`` found them: a log it passes holds exactly
    the positions 1..sealed_upto once each (every sealed range has all its positions, none below 1,
    the primary key) and ``unsealed_events`` rows after them (it counted them), so its row count
    is their sum (a count(*) of the log, without reading it again)."""
    return {log: {"head": int(v["head"]), "rows": int(v["sealed_upto"]) + int(v["unsealed_events"])}
            for log, v in result.logs.items()}


def migrate(source: str, target: str, *, force: bool = False, keep_previous: bool = True,
            progress: Progress | None = None, extra_drop: bk.DropStatements | None = None,
            read_models: Callable[[Store, Callable[[int, int], None] | None], int] | None = None) -> MigrateResult:
    """Copy the log at ``source`` to ``target`` (see the module doc), verify it there, swap it in and
    rebuild what is derived. ``extra_drop``: statements dropping the target's derived tables in the
    swap (``projections.tables.drop_read_models``, as restore takes them); ``read_models(store,
    progress)``: rebuilds the read models on the target after the swap and returns their position
    (``Projector(store).rebuild``; given by the caller: the projections sit above this layer).

    Raises ``MigrateRefused`` (nothing written) for a target that holds a log without ``force``,
    the same database on both sides, a source without a log or with tables of another version;
    ``MigrateDamaged`` (the target as it was) when the copy does not check out: the source's digest
    chain fails on the target (an edited, deleted or inserted row), or the copy differs from the
    source (heads, rows, last digest, the unsealed tail's hash)."""
    started = time.perf_counter()
    source, target = resolve_url(source), resolve_url(target)
    tkind = url_kind(target)
    if _same_database(source, target):
        raise MigrateRefused(f"{redact(source)} and {redact(target)} are the same database")
    existing = bk._target_events(target, tkind)
    if existing and not force:
        what = (f"a log of {existing} events" if existing > 0
                else "a file that is not a readable database (a damaged log?)")
        raise MigrateRefused(f"{redact(target)} already holds {what}: migrating would replace it; pass --force "
                             "(force=True) to do so (the old content is kept aside)")
    seconds: dict[str, float] = {}
    rebuilt: dict[str, Any] = {}
    src = _open_source(source)
    try:
        if TRADING_TABLE not in src.tables:
            raise MigrateRefused(f"no tradestate log in {redact(source)}")
        staged = _make_staging(target, tkind)
        try:
            risk_index = _stage_tables(src, staged)
            seconds["prepare"] = time.perf_counter() - started
            t0 = time.perf_counter()
            logs, chain, tables, tails, trailer = _copy(src, staged, progress)
            src.close()  # the snapshot is not needed any more
            staged.finish_load(risk_index)
            seconds["copy"] = time.perf_counter() - t0
            if existing > 0:
                rebuilt["epochs_carried"] = _carry_epochs(target, staged.store)
            t0 = time.perf_counter()
            unsealed = 0
            for log in LOG_TABLES:
                first, last = chain[log]["sealed_upto"] + 1, logs[log]["head"]
                if last >= first:
                    unsealed += last - first + 1
                    if _staged_tail(staged.store, log, first, last) != tails.get(log):
                        raise MigrateDamaged(f"{log} positions {first}..{last} (after the digest chain's tail) differ "
                                             f"on the target from the source: nothing was migrated")
            manifest = bk.Manifest(
                format=bk.FORMAT, format_version=bk.FORMAT_VERSION, schema_version=bk.SCHEMA_VERSION,
                source_kind=src.kind, source=redact(source), created_at=datetime.now(timezone.utc).isoformat(),
                logs=logs, chain=chain, members=[])
            label = f"the copy of {redact(source)}"

            def verify_progress(done: int, total: int) -> None:
                if progress is not None:
                    progress("verify", done, total)

            # The whole chain verified on the staging place: every link from the start, and every
            # range recomputed (those up to ``trailed`` already were, by the trailing thread, against
            # these very chain rows: nobody else writes the staging schema); the unsealed tail.
            # Then heads, rows and last digest against the source's.
            trailed = trailer.upto if trailer is not None else 0
            result = digest_mod.verify(staged.store, progress=verify_progress, after=trailed)
            if trailer is not None:
                result.checked_events += trailer.checked
                result.logs[TRADING_TABLE]["checked_events"] += trailer.checked
            bk._check_against_manifest(manifest, result, _verified_logs(result), label)
            verified, last_digest = result.to_dict(), result.last_digest
            seconds["verify"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            if isinstance(staged, _PgStaging):
                # the target's schema, sequences, functions (the copy checked out), made while the
                # staging schema's index builds and ANALYZE finish
                open_store(target, create=True).close()
                staged.settled()
                staged.store.close()
                previous = bk._swap_postgres(staged.admin, PgUrl.parse(target).schema, staged.schema, logs,
                                             force=force, keep_previous=keep_previous, url=target, drops=extra_drop,
                                             tables=COPIED)
            else:
                assert isinstance(staged, _SqliteStaging)
                staged.store.close()
                # the whole file replaces the target's: its read models go with it (extra_drop not needed)
                previous = bk._swap_sqlite(target, Path(sqlite_path(target)).expanduser().absolute(), staged.path,
                                           force=force, keep_previous=keep_previous)
            seconds["swap"] = time.perf_counter() - t0
        except bk.BackupDamaged as e:
            # backup's checks word it for a backup file: say it of the source instead
            message = str(e).replace("the backed-up log", "its log").replace("; nothing was restored", "")
            raise MigrateDamaged(f"{message}: nothing was migrated, the target is as it was") from e
        except bk.RestoreRefused as e:
            raise MigrateRefused(str(e)) from e
        finally:
            staged.discard()
    finally:
        src.close()

    moved: dict[str, int] = {}
    with suppress(Exception), open_store(source, create=False) as now:  # informative: how far writers went on
        for log, current in ((TRADING_TABLE, now.trading.head()), (MARKET_TABLE, now.market.head())):
            if current > logs[log]["head"]:
                moved[log] = current - logs[log]["head"]
    t0 = time.perf_counter()
    if order_refs.STATE_TABLE in src.tables or read_models is not None:
        with open_store(target, create=False) as store:
            if order_refs.STATE_TABLE in src.tables:
                rebuilt["order_refs"] = order_refs.catch_up(store).upto
            if read_models is not None:
                def rebuild_progress(done: int, total: int) -> None:
                    if progress is not None:
                        progress("rebuild read models", done, total)

                rebuilt["read_models"] = read_models(store, rebuild_progress)
    rebuilt["risk_index"] = risk_index
    seconds["rebuild"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - started
    return MigrateResult(True, redact(source), redact(target), logs, tables, last_digest, verified, unsealed, previous,
                         rebuilt, moved, seconds, trailed)


__all__ = ["MigrateDamaged", "MigrateError", "MigrateRefused", "MigrateResult", "migrate"]
