"""Tamper evidence: a digest chain over the logs, and append-only protection of their tables.

``ts_digest_chain`` (beside the logs, same database, created on demand) holds sealed ranges of
each log (``log`` is the table name: ``ts_events`` or ``ts_market_events``). A range's digest is

    blake2b-256(previous_digest || enc(e1) || enc(e2) || ... || enc(en))

where ``previous_digest`` is the digest of the range before it (32 zero bytes for the first) and
``enc`` is the canonical encoding of one event, the same on SQLite and PostgreSQL::

    >q position  >q stream_version  >I len(stream_id)  >I len(type)  >I len(data)
    stream_id (UTF-8)  type (UTF-8)  data (the payload bytes)  recorded_at

with ``recorded_at`` as UTC ISO-8601 with microseconds, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.
Editing, deleting, inserting or reordering an event changes its range's digest, and every digest
after it through the chain. Beside each digest the row keeps 12 bytes per event (three CRC-32s:
the event's identity ``(stream_id, stream_version)``, its ``type``+``recorded_at``, its payload),
so that ``verify`` can name the first bad position and say what happened to it. The fingerprints
only locate; the blake2b chain is the evidence.

``verify`` streams each range from the cursor a few hundred rows at a time, hashing the rows and
comparing their fingerprints with the chain row's in one pass (fingerprints altered beside intact
events are reported too). Only a range that does not match is read again and walked by the slow
path, which locates the problem and words the report.

``seal`` reads the log without any lock (a read snapshot on SQLite, plain reads on PostgreSQL),
then inserts each range in its own short transaction; two sealers racing for the same range are
resolved by the primary key ``(log, range_start)`` and a check that the range extends the chain's
current tail, so exactly one wins and the loser carries on from the winner's tail. It seals only
the contiguous prefix of the log (an append still in flight below the head holds it back).

``protect_log`` makes the three tables append-only (triggers on both databases; on PostgreSQL
also ``REVOKE UPDATE, DELETE, TRUNCATE`` from a configured service role).
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from operator import itemgetter
from typing import Any

from ...domain.errors import InvalidInput, TradestateError
from . import MARKET_TABLE, TRADING_TABLE, Store
from .sql import Dialect, quote, read_cursor, release, write_cursor

CHAIN_TABLE = "ts_digest_chain"
SCHEME = 1  # the canonical encoding and fingerprint layout above
GENESIS = bytes(32)
FP_WORDS = 3  # CRC-32s per event: identity, type+recorded_at, payload
FP_BYTES = 4 * FP_WORDS
LOGS = (TRADING_TABLE, MARKET_TABLE)
PROTECTED = (TRADING_TABLE, MARKET_TABLE, CHAIN_TABLE)
SERVICE_ROLE_ENV = "TRADESTATE_SERVICE_ROLE"
REFUSAL = "is append-only (tradestate: no row of the log or its digest chain is ever changed or removed)"

_HDR = struct.Struct(">qqIII")
_FP = struct.Struct(">III")
_crc = zlib.crc32
_blake2b = hashlib.blake2b
_g5 = itemgetter(5)
_FAST = True  # verify's fast path (False: every range through _check_range; for tests)
PAGE = 10_000  # positions per SELECT when verify reads a range
CHUNK = 500  # rows fetched, fingerprinted and hashed at a time: ~0.5 MB in flight, which stays in the
# CPU's cache (whole 10,000-row pages cost ~0.4 us more per event)

Progress = Callable[[int, int], None]  # (events checked so far, events to check)


class ChainError(TradestateError):
    """The digest chain cannot be written (e.g. the log changed under a sealer)."""


@dataclass(frozen=True)
class SealResult:
    """What one ``seal`` call sealed."""

    ranges: int  # ranges sealed by this call (all logs)
    events: int  # events sealed by this call (all logs)
    sealed_upto: int  # the trading log's last sealed position after the call
    head: int  # the trading log's head when the call started
    last_digest: str  # hex digest of the trading log's last sealed range ("" if none)
    seconds: float
    lost_races: int = 0  # ranges another sealer won first (we carried on from its tail)
    logs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON-ready values."""
        return asdict(self)


@dataclass
class VerifyResult:
    """What ``verify`` found: ``ok``, or the first bad position and the kind of change."""

    ok: bool
    first_bad_position: int | None  # in ``log``
    problem: str | None  # edited | deleted | inserted | reordered | chain_broken
    sealed_upto: int  # the trading log's last sealed position
    head: int  # the trading log's head
    checked_events: int  # events whose digests were recomputed (all logs)
    unsealed_events: int  # events after the last sealed position (all logs)
    detail: str
    log: str = TRADING_TABLE  # the log the problem was found in
    last_digest: str = ""  # hex digest of the trading log's last sealed range
    seconds: float = 0.0
    logs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON-ready values."""
        return asdict(self)


# ------------------------------------------------------------------------------ encoding


def canonical_time(value: Any) -> bytes:
    """``recorded_at`` as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC, microseconds)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            value = datetime.fromisoformat(raw.decode())
        except (UnicodeDecodeError, ValueError):
            return raw  # not a time at all: hashed as stored, so any change still shows
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value.encode()
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()


def _hash_rows(rows: list[tuple[Any, ...]], previous: bytes) -> tuple[bytes, list[int]]:
    """The range digest over ``rows`` (position, version, stream, type, data, recorded_at as
    bytes) and their fingerprints, three CRC-32s per event."""
    h = hashlib.blake2b(previous, digest_size=32)
    parts: list[bytes] = []
    fps: list[int] = []
    add, fp, pack, crc = parts.extend, fps.extend, _HDR.pack, _crc
    for p, v, s, t, d, r in rows:
        if len(r) != 27:
            r = canonical_time(r)
        add((pack(p, v, len(s), len(t), len(d)), s, t, d, r))
        fp((crc(s, v & 0xFFFFFFFF), crc(r, crc(t)), crc(d)))
        if len(parts) >= 20_000:
            h.update(b"".join(parts))
            parts.clear()
    h.update(b"".join(parts))
    return h.digest(), fps


def _hash_chunk(update: Callable[[bytes], Any], rows: list[tuple[Any, ...]], stored: bytes) -> bool:
    """The fast path of ``verify`` for a chunk of a range: False unless ``stored`` (the chunk's
    slice of the sealed fingerprints) holds exactly the fingerprints of ``rows``; if it does, feed
    ``update`` exactly the bytes ``_hash_rows`` feeds blake2b for them.

    The same values as ``_hash_rows`` with less Python per row: ``crc(s, v)`` equals
    ``crc(s, v & 0xFFFFFFFF)`` (zlib masks its start value to 32 bits), a ``recorded_at`` that is
    not yet canonical goes through ``canonical_time`` as there, and the rows are joined once.
    A row ``_hash_rows`` could not take either raises here, and the caller then checks the range
    by the slow path (which raises, or reports, exactly as before)."""
    if len(stored) != FP_BYTES * len(rows):
        return False
    if set(map(len, map(_g5, rows))) != {27}:
        for i, row in enumerate(rows):
            if len(row[5]) != 27:
                rows[i] = (*row[:5], canonical_time(row[5]))
    crc, join = _crc, b"".join
    if join([_FP.pack(crc(s, v), crc(r, crc(t)), crc(d)) for _p, v, s, t, d, r in rows]) != stored:
        return False
    pack = _HDR.pack
    update(join([join((pack(p, v, len(s), len(t), len(d)), s, t, d, r)) for p, v, s, t, d, r in rows]))
    return True


def _pack_fps(fps: list[int]) -> bytes:
    return struct.pack(f">{len(fps)}I", *fps)


def _unpack_fps(blob: bytes) -> tuple[int, ...]:
    return struct.unpack(f">{len(blob) // 4}I", blob)


def _identity(stream: bytes, version: int) -> int:
    return _crc(stream, version & 0xFFFFFFFF)


# ------------------------------------------------------------------------------ database


class _Backend:
    """The SQL of one database kind; rows come back as (p, v, stream, type, data, recorded_at)
    with every text as bytes, so hashing never decodes or encodes a string."""

    def __init__(self, store: Store):
        self.store = store
        self.dialect = store.dialect
        self.pg = self.dialect.is_postgres
        self.schema = self.dialect.schema
        self.p = self.dialect.param
        self.name = self.dialect.name
        self._archives: dict[str, list[tuple[int, int, Any]]] = {}  # archived ranges per log, asked once

    # -- connections
    @contextmanager
    def read(self) -> Iterator[Any]:
        """A read cursor on the store's database."""
        with read_cursor(self.store) as cur:
            yield cur

    @contextmanager
    def write(self) -> Iterator[Any]:
        """A cursor in one write transaction, committed at the end of the block."""
        with write_cursor(self.store) as cur:
            yield cur

    # -- statements
    def select_range(self, table: str) -> str:
        """The SELECT of ``first <= position <= last`` from ``table`` in position order, texts as
        bytes."""
        if self.pg:
            return (
                "SELECT position, stream_version, convert_to(stream_id, 'UTF8'), convert_to(type, 'UTF8'), data,"
                " convert_to(to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), 'UTF8')"
                f" FROM {self.name(table)} WHERE position >= %s AND position <= %s ORDER BY position"
            )
        # The log writes Python's isoformat() of a UTC time: the common shape is rewritten here in
        # C; anything else comes back as stored and is made canonical in Python.
        return (
            "SELECT position, stream_version, CAST(stream_id AS BLOB), CAST(type AS BLOB), CAST(data AS BLOB),"
            " CASE WHEN length(recorded_at) = 32 AND substr(recorded_at, 27) = '+00:00'"
            " THEN CAST(substr(recorded_at, 1, 26) || 'Z' AS BLOB) ELSE CAST(recorded_at AS BLOB) END"
            f" FROM {table} WHERE position >= ? AND position <= ? ORDER BY position"
        )

    def select_range_text_as_bytes(self, table: str) -> str:
        """PostgreSQL, for a cursor that loads ``text`` as its bytes (``_page_cursors``, when the
        connection is UTF-8 end to end): the values of ``select_range`` without the server
        re-encoding each text into UTF-8 (``convert_to``), about 0.3 us less of its CPU per event."""
        return (
            "SELECT position, stream_version, stream_id, type, data,"
            " to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
            f" FROM {self.name(table)} WHERE position >= %s AND position <= %s ORDER BY position"
        )

    def rows(self, cur: Any, table: str, first: int, last: int) -> list[tuple[Any, ...]]:
        """The rows of ``first <= position <= last`` of ``table``, in position order (archived
        ones from their files)."""
        if self.pg:
            rows = cur.execute(self.select_range(table), (first, last), binary=True).fetchall()
            archived = self.archived_rows(table, first, last)
            return sorted(rows + archived, key=itemgetter(0)) if archived else rows
        return cur.execute(self.select_range(table), (first, last)).fetchall()

    def archived_rows(self, table: str, first: int, last: int) -> list[tuple[Any, ...]]:
        """The rows of ``first``-``last`` that are archived (not in the table), from the Parquet
        files (adapters/store/archive.py); [] without archives."""
        spans = self._archives.get(table)
        if spans is None:
            from . import archive

            spans = self._archives[table] = archive.spans(self.store, table) if self.pg else []
        if not spans:
            return []
        from .archive import digest_rows

        out: list[tuple[Any, ...]] = []
        for lo, hi, path in spans:
            if lo <= last and hi >= first:
                out += digest_rows(path, max(lo, first), min(hi, last))
        return out

    def create_chain_table(self) -> None:
        """Create the digest chain table if it is not there (under the DDL lock)."""
        t = self.dialect.type
        ddl = (
            f"CREATE TABLE IF NOT EXISTS {self.name(CHAIN_TABLE)} ("
            f" log {t('text')} NOT NULL, range_start {t('int')} NOT NULL, range_end {t('int')} NOT NULL,"
            f" event_count integer NOT NULL, scheme {t('smallint')} NOT NULL,"
            f" previous_digest {t('blob')} NOT NULL, digest {t('blob')} NOT NULL, fingerprints {t('blob')} NOT NULL,"
            f" sealed_at {t('time')} NOT NULL{' DEFAULT now()' if self.pg else ''},"
            " PRIMARY KEY (log, range_start), UNIQUE (log, range_end))"
        )
        with self.write() as cur:
            self.dialect.ddl_lock(cur)
            cur.execute(ddl)

    def table_exists(self, table: str) -> bool:
        """Whether ``table`` exists (nothing is created)."""
        with self.read() as cur:
            return self.dialect.table_exists(cur, table)


def _read_span(db: _Backend, log: str, first: int, last: int, page: int = PAGE) -> list[tuple[Any, ...]]:
    """Every row of positions ``first``-``last``, read in pages on this thread's connection."""
    out: list[tuple[Any, ...]] = []
    with db.read() as cur:
        for lo in range(first, last + 1, page):
            out += db.rows(cur, log, lo, min(lo + page - 1, last))
    return out


def _prefetched(db: _Backend, log: str, spans: list[tuple[int, int]], page: int = PAGE) -> Iterator[list[tuple[Any, ...]]]:
    """The rows of each span. On PostgreSQL the next span is read by a worker thread while this
    one is hashed (the server, row decoding and blake2b over a page's bytes overlap; hashlib and
    psycopg release the GIL): about 1.4x on two cores. (The slow path of ``verify``: see ``_FAST``.)"""
    if not spans:
        return

    def fetch(first: int, last: int) -> list[tuple[Any, ...]]:
        return _read_span(db, log, first, last, page)

    if len(spans) == 1 or not db.pg:
        # SQLite reads in-process and fast: a reader thread only adds contention there.
        for span in spans:
            yield fetch(*span)
        return
    yield from _read_ahead(db, fetch, spans)


def _read_ahead(db: _Backend, read: Callable[..., Any], bounds: list[tuple[int, int]],
                done: Callable[[Any], Any] | None = None) -> Iterator[Any]:
    """``read(*b)`` for each ``b`` of ``bounds`` in order, the next one running on a worker thread
    (its own PostgreSQL connection, given back at the end) while the caller works on this one;
    ``done`` is called on each result once the caller has finished with it."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="digest-read") as pool:
        try:
            pending = pool.submit(read, *bounds[0])
            for i in range(len(bounds)):
                result = pending.result()
                if i + 1 < len(bounds):
                    pending = pool.submit(read, *bounds[i + 1])
                try:
                    yield result
                finally:
                    if done is not None:
                        done(result)
        finally:
            if db.pg:
                pool.submit(release, db.store).result()


def _page_cursors(db: _Backend, log: str, spans: list[tuple[int, int]], page: int) -> Iterator[Any]:
    """For each page (``page`` positions) of each span in turn, a cursor whose SELECT has run: the
    caller turns its rows into Python objects ``CHUNK`` at a time (never a whole range at once).

    On PostgreSQL the whole page is already in the client (libpq's result), and a worker thread
    runs the next page's query on its own connection meanwhile, so the server's work and the
    transfer overlap the hashing here; on SQLite the statement steps as the caller fetches."""
    bounds = [(lo, min(lo + page - 1, last)) for first, last in spans for lo in range(first, last + 1, page)]
    if not bounds:
        return
    sql = db.select_range(log)
    if not db.pg:
        with db.read() as cur:
            try:
                for lo, hi in bounds:
                    yield cur.execute(sql, (lo, hi))
            finally:
                cur.close()
        return

    from psycopg.types.string import ByteaBinaryLoader

    as_bytes = db.select_range_text_as_bytes(log)

    def run(lo: int, hi: int) -> Any:
        archived = db.archived_rows(log, lo, hi)
        if archived:  # an archived range: its rows from the file, with any live ones
            with db.read() as cur:
                live = cur.execute(sql, (lo, hi), binary=True).fetchall()
            return _Rows(sorted(live + archived, key=itemgetter(0)))
        with db.read() as cur, cur.connection.transaction():
            # A page is a run of consecutive positions, stored in position order: read along the
            # primary key. Without statistics (a table just loaded: a restore's or a migration's
            # staging schema) the planner takes a bitmap scan and then sorts the page, on disk
            # past work_mem (measured: 24 ms a 10,000-event page, against 11 ms by the index).
            cur.execute("SET LOCAL enable_bitmapscan = off")
            info = cur.connection.info
            if info.encoding == "utf-8" and info.parameter_status("server_encoding") == "UTF8":
                # A text column in binary is then its UTF-8 bytes, exactly what convert_to returns.
                cur.adapters.register_loader("text", ByteaBinaryLoader)
                cur.execute(as_bytes, (lo, hi), binary=True)
            else:
                cur.execute(sql, (lo, hi), binary=True)
            return cur

    if len(bounds) == 1:
        cur = run(*bounds[0])
        try:
            yield cur
        finally:
            cur.close()
        return
    yield from _read_ahead(db, run, bounds, done=lambda cur: cur.close())


class _Rows:
    """Rows already read, behind the part of a cursor that verify uses."""

    def __init__(self, rows: list[tuple[Any, ...]]):
        self._rows, self._at = rows, 0

    def fetchmany(self, size: int) -> list[tuple[Any, ...]]:
        out = self._rows[self._at:self._at + size]
        self._at += len(out)
        return out

    def close(self) -> None:
        self._rows = []


def create_chain_table(store: Store) -> None:
    """Create ``ts_digest_chain`` if it is not there (``seal`` and ``protect_log`` do it)."""
    _Backend(store).create_chain_table()


def _tail(db: _Backend, cur: Any, log: str) -> tuple[int, bytes]:
    cur.execute(
        f"SELECT range_end, digest FROM {db.name(CHAIN_TABLE)} WHERE log = {db.p} ORDER BY range_start DESC LIMIT 1",
        (log,),
    )
    row = cur.fetchone()
    return (int(row[0]), bytes(row[1])) if row else (0, GENESIS)


def _head(db: _Backend, cur: Any, log: str) -> int:
    cur.execute(f"SELECT coalesce(max(position), 0) FROM {db.name(log)}")
    return int(cur.fetchone()[0])


def _insert_range(db: _Backend, log: str, start: int, end: int, previous: bytes, digest: bytes, fps: bytes) -> bool:
    """Insert one sealed range if it extends the chain's tail; False if another sealer won."""
    now = datetime.now(timezone.utc)
    with db.write() as cur:
        if db.pg:
            cur.execute(
                f"INSERT INTO {db.name(CHAIN_TABLE)} (log, range_start, range_end, event_count, scheme,"
                " previous_digest, digest, fingerprints, sealed_at)"
                " SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s"
                f" WHERE CASE WHEN %s = 1 THEN NOT EXISTS (SELECT 1 FROM {db.name(CHAIN_TABLE)} WHERE log = %s)"
                f" ELSE EXISTS (SELECT 1 FROM {db.name(CHAIN_TABLE)} WHERE log = %s AND range_end = %s AND digest = %s) END"
                " ON CONFLICT DO NOTHING",
                (log, start, end, end - start + 1, SCHEME, previous, digest, fps, now,
                 start, log, log, start - 1, previous),
            )
            return cur.rowcount == 1
        # SQLite: BEGIN IMMEDIATE holds the write lock, so the tail read here is the truth.
        if _tail(db, cur, log) != (start - 1, previous):
            return False
        cur.execute(
            f"INSERT INTO {CHAIN_TABLE} (log, range_start, range_end, event_count, scheme, previous_digest,"
            " digest, fingerprints, sealed_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (log, start, end, end - start + 1, SCHEME, previous, digest, fps, now.isoformat()),
        )
        return True


# ------------------------------------------------------------------------------ seal


def seal(store: Store, *, upto: int | None = None, max_range: int = 10_000,
         logs: tuple[str, ...] = LOGS) -> SealResult:
    """Seal every event after the last sealed position, up to the contiguous head (or ``upto``),
    in ranges of at most ``max_range`` events. Safe to run from several processes at once."""
    if max_range < 1:
        raise InvalidInput("max_range must be at least 1")
    if upto is not None and upto < 0:
        raise InvalidInput("upto must not be negative")
    started = time.perf_counter()
    db = _Backend(store)
    if not db.table_exists(CHAIN_TABLE):
        db.create_chain_table()
    per_log: dict[str, dict[str, Any]] = {}
    total_ranges = total_events = lost = 0
    trading_head = 0
    for log in logs:
        with db.read() as cur:
            end, previous = _tail(db, cur, log)
            head = _head(db, cur, log)
        if log == TRADING_TABLE:
            trading_head = head
        limit = head if upto is None else min(head, upto)
        ranges = events = 0
        while end < limit:
            last = min(end + max_range, limit)
            with db.read() as cur:
                rows = db.rows(cur, log, end + 1, last)
            # the contiguous prefix only: a position still being written holds the seal back
            n = 0
            for n, row in enumerate(rows):  # noqa: B007
                if row[0] != end + 1 + n:
                    break
            else:
                n = len(rows)
            if n == 0:
                break
            rows = rows[:n]
            digest, fps = _hash_rows(rows, previous)
            if _insert_range(db, log, end + 1, end + n, previous, digest, _pack_fps(fps)):
                ranges += 1
                events += n
                end, previous = end + n, digest
            else:
                lost += 1
                with db.read() as cur:
                    end, previous = _tail(db, cur, log)
                continue
            if end < last:  # stopped at a hole
                break
        per_log[log] = {"ranges": ranges, "events": events, "sealed_upto": end, "head": head,
                        "last_digest": previous.hex() if end else ""}
        total_ranges += ranges
        total_events += events
    trading = per_log.get(TRADING_TABLE, {})
    return SealResult(
        ranges=total_ranges,
        events=total_events,
        sealed_upto=trading.get("sealed_upto", 0),
        head=trading_head,
        last_digest=trading.get("last_digest", ""),
        seconds=time.perf_counter() - started,
        lost_races=lost,
        logs=per_log,
    )


# ------------------------------------------------------------------------------ verify


@dataclass
class _Finding:
    position: int
    problem: str
    detail: str


def _locate(rows: list[tuple[Any, ...]], start: int, end: int, stored: tuple[int, ...],
            actual_fps: list[int]) -> _Finding | None:
    """The first position of a range whose event does not match its fingerprint, and why."""
    count = end - start + 1
    actual: dict[int, tuple[int, int, int]] = {}
    for i, row in enumerate(rows):
        actual[row[0]] = (actual_fps[3 * i], actual_fps[3 * i + 1], actual_fps[3 * i + 2])

    def want(p: int) -> tuple[int, int, int]:
        i = 3 * (p - start)
        return stored[i], stored[i + 1], stored[i + 2]

    by_identity: dict[int, int] = {}
    by_payload: dict[int, int] = {}
    for q in range(start, end + 1):
        w = want(q)
        by_identity.setdefault(w[0], q)
        by_payload.setdefault(w[2], q)

    outside = sorted(p for p in actual if p < start or p > end)
    for p in range(start, end + 1):
        w = want(p)
        a = actual.get(p)
        if a == w:
            continue
        if a is None:
            return _Finding(p, "deleted", f"the event at position {p} is missing from a sealed range "
                            f"({start}-{end}, {count} events sealed, {len(rows)} present)")
        # two events swapped (whole rows, or their payloads)
        for q in (by_identity.get(a[0]), by_payload.get(a[2])):
            if q is not None and q != p:
                b = actual.get(q)
                wq = want(q)
                if b is not None and ((a[0] == wq[0] and b[0] == w[0]) or (a[2] == wq[2] and b[2] == w[2])):
                    return _Finding(p, "reordered", f"the events at positions {p} and {q} were swapped")
        if p < end and actual.get(p + 1, (None,))[0] == w[0] and a[0] != w[0]:
            return _Finding(p, "inserted", f"an event was inserted at position {p}; the sealed events "
                            "from there on were moved up")
        if p < end and a[0] == want(p + 1)[0] and a[0] != w[0]:
            return _Finding(p, "deleted", f"the event sealed at position {p} was deleted and the later "
                            "events moved down")
        if w[0] == _identity(b"$void", p) and a[0] != w[0]:
            return _Finding(p, "inserted", f"an event was inserted at position {p}, over a voided position")
        what = []
        if a[0] != w[0]:
            what.append("stream or version")
        if a[1] != w[1]:
            what.append("type or recorded_at")
        if a[2] != w[2]:
            what.append("payload")
        return _Finding(p, "edited", f"the event at position {p} was changed ({', '.join(what)})")
    if outside:
        return _Finding(outside[0], "inserted", f"an unexpected event at position {outside[0]}")
    return None


def _check_range(rows: list[tuple[Any, ...]], start: int, end: int, prev_digest: bytes, digest: bytes,
                 fps_blob: bytes) -> _Finding | None:
    """Recompute one sealed range; None if it matches its chain row."""
    count = end - start + 1
    actual_digest, actual_fps = _hash_rows(rows, prev_digest)
    if actual_digest == digest and len(rows) == count and _pack_fps(actual_fps) == fps_blob:
        return None
    stored = _unpack_fps(fps_blob)
    if actual_digest == digest:
        diff = next((i for i in range(count) if tuple(actual_fps[3 * i:3 * i + 3]) != stored[3 * i:3 * i + 3]), 0)
        return _Finding(start + diff, "chain_broken",
                        f"the fingerprints of range {start}-{end} were altered (its events match its digest)")
    matching = sum(
        1 for i, row in enumerate(rows)
        if start <= row[0] <= end
        and tuple(actual_fps[3 * i:3 * i + 3]) == stored[3 * (row[0] - start):3 * (row[0] - start) + 3]
    )
    if count >= 3 and matching == 0 and len(rows) == count:
        return _Finding(start, "chain_broken", f"no event of range {start}-{end} matches its chain row: "
                        "the chain row itself was altered or forged")
    located = _locate(rows, start, end, stored, actual_fps)
    if located is None:
        return _Finding(start, "chain_broken", f"the digest of range {start}-{end} was altered "
                        "(its events match their fingerprints)")
    return located


def _fast_range(pages: Iterator[Any], page: int, start: int, end: int, prev_digest: bytes, digest: bytes,
                fps_blob: bytes) -> tuple[bool, int]:
    """Check one sealed range by the fast path, consuming its pages from ``pages``: (True, rows
    hashed) when its events hash to its digest and match its fingerprints one for one (exactly
    what ``_check_range`` accepts), else (False, _) and the caller runs ``_check_range``."""
    h = _blake2b(prev_digest, digest_size=32)
    update = h.update
    n, ok = 0, True
    for _ in range(start, end + 1, page):
        cur = next(pages)
        while ok and (rows := cur.fetchmany(CHUNK)):
            k = len(rows)
            try:
                ok = _hash_chunk(update, rows, fps_blob[FP_BYTES * n:FP_BYTES * (n + k)])
            except Exception:  # noqa: BLE001 - a row _hash_rows cannot take either: the slow path says so
                ok = False
            n += k
    return ok and n == end - start + 1 and h.digest() == digest, n


def _fingerprints(db: _Backend, log: str, after: int, upto: int | None = None) -> dict[int, bytes]:
    """The fingerprints of the sealed ranges of ``log`` that end after ``after`` (and by ``upto``),
    by range start."""
    with db.read() as cur:
        cur.execute(f"SELECT range_start, fingerprints FROM {db.name(CHAIN_TABLE)} WHERE log = {db.p}"
                    f" AND range_end > {db.p}" + ("" if upto is None else f" AND range_end <= {db.p}"),
                    (log, after) if upto is None else (log, after, upto))
        return {int(start): bytes(blob) for start, blob in cur.fetchall()}


# a chain row: start, end, event count, scheme, previous digest, digest, length of its fingerprints
_Link = tuple[int, int, int, int, bytes, bytes, int]


def _chain_rows(db: _Backend, cur: Any, log: str, first: int | None = None, last: int | None = None) -> list[_Link]:
    """The chain rows of ``log`` (without their fingerprints), in order: all of them, or those
    starting at ``first`` or later and ending by ``last``. (All: a forged row starting before 1
    is then the first, and breaks the walk.)"""
    bounds = ([] if first is None else [f" AND range_start >= {db.p}"]) + (
        [] if last is None else [f" AND range_end <= {db.p}"])
    params = (log, *(b for b in (first, last) if b is not None))
    cur.execute(
        f"SELECT range_start, range_end, event_count, scheme, previous_digest, digest,"
        f" {db.dialect.byte_length('fingerprints')}"
        f" FROM {db.name(CHAIN_TABLE)} WHERE log = {db.p}{''.join(bounds)} ORDER BY range_start", params)
    return [(int(a), int(b), int(c), int(d), bytes(e), bytes(f), int(g)) for a, b, c, d, e, f, g in cur.fetchall()]


def _walk_links(chain: list[_Link], expected: int, previous: bytes) -> tuple[int, int, bytes, _Finding | None]:
    """Check that the chain rows link, from a range starting at ``expected`` whose previous
    digest is ``previous``: (rows that do, the last position they seal, its digest, the finding at
    the first that does not or None)."""
    good = 0
    for start, end, count, scheme, prev_digest, digest, fps_length in chain:
        if start != expected:
            return good, expected - 1, previous, _Finding(
                expected, "chain_broken", f"the chain jumps from position {expected - 1} to a range starting at "
                f"{start} (a sealed range was removed or altered)")
        if prev_digest != previous:
            return good, expected - 1, previous, _Finding(
                start, "chain_broken", f"the range {start}-{end} does not link to the digest of the range before it")
        if scheme != SCHEME or end < start or count != end - start + 1 or fps_length != FP_BYTES * count \
                or len(digest) != 32:
            return good, expected - 1, previous, _Finding(
                start, "chain_broken", f"the chain row of range {start}-{end} is malformed")
        good += 1
        previous, expected = digest, end + 1
    return good, expected - 1, previous, None


def _recompute(db: _Backend, log: str, ranges: list[_Link], fingerprints: dict[int, bytes],
               step: Callable[[int], None] | None = None) -> tuple[_Finding | None, int, int]:
    """Recompute ``ranges`` (linked chain rows of ``log``, in order) against the rows stored:
    (the finding at the first that does not match or None, events hashed, the end of the last
    range that matched). ``step(events)`` after each range."""
    checked, good_upto, finding = 0, (ranges[0][0] - 1 if ranges else 0), None
    spans = [(r[0], r[1]) for r in ranges]
    if _FAST:
        # Hash each range (and compare its fingerprints) straight from the cursor; only a range
        # that does not match is read again and checked by _check_range, which locates the
        # problem and words the report.
        page = PAGE
        cursors = _page_cursors(db, log, spans, page)
        try:
            for start, end, _count, _scheme, prev_digest, digest, _length in ranges:
                fps_blob = fingerprints.get(start, b"")
                ok, n = _fast_range(cursors, page, start, end, prev_digest, digest, fps_blob)
                if not ok:
                    rows = _read_span(db, log, start, end)
                    finding = _check_range(rows, start, end, prev_digest, digest, fps_blob)
                    n = len(rows)
                checked += n
                if step:
                    step(end - start + 1)
                if finding:
                    break
                good_upto = end
        finally:
            cursors.close()
        return finding, checked, good_upto
    pages = _prefetched(db, log, spans)
    try:
        for (start, end, _count, _scheme, prev_digest, digest, _length), rows in zip(ranges, pages):
            fps_blob = fingerprints.get(start, b"")
            finding = _check_range(rows, start, end, prev_digest, digest, fps_blob)
            checked += len(rows)
            if step:
                step(end - start + 1)
            if finding:
                break
            good_upto = end
    finally:
        pages.close()
    return finding, checked, good_upto


@dataclass
class RangesResult:
    """What ``verify_ranges`` found: ``ok``, how far the ranges it was given check out
    (``verified_upto``: the end of the last good one; ``first - 1`` if none), and else the first
    bad position and the kind of change (as ``VerifyResult`` words them)."""

    ok: bool
    verified_upto: int
    last_digest: bytes  # the digest of the range ending at ``verified_upto`` (``previous`` if none)
    checked_events: int
    first_bad_position: int | None = None
    problem: str | None = None
    detail: str = ""


def verify_ranges(store: Store, log: str, first: int, last: int, *, previous: bytes | None = None) -> RangesResult:
    """Recompute, as ``verify`` does, the sealed ranges of ``log`` from the one starting at
    ``first`` up to the last that ends by ``last``, and check that they link: each starts where
    the one before ends and names its digest as previous (the first one: ``previous``, when given,
    e.g. the digest of the range before ``first`` checked earlier). Stops at the first range that
    does not check out.

    For checking a log in parts (a part already written while the rest is still being copied);
    ``verify(after=...)`` then checks every link from the chain's start, the ranges after the
    parts, and the unsealed tail."""
    db = _Backend(store)
    with db.read() as cur:
        chain = _chain_rows(db, cur, log, first, last)
    if not chain:
        if first <= last:
            return RangesResult(False, first - 1, previous or b"", 0, first, "chain_broken",
                                f"{log}: no sealed range starts at {first}")
        return RangesResult(True, first - 1, previous or b"", 0)
    good, _sealed, _digest, link_finding = _walk_links(chain, first, chain[0][4] if previous is None else previous)
    ranges = chain[:good]
    finding, checked, upto = _recompute(db, log, ranges, _fingerprints(db, log, first - 1, last)) if ranges \
        else (None, 0, first - 1)
    finding = finding or link_finding
    done = {r[1]: r[5] for r in ranges}
    last_digest = done.get(upto, chain[0][4] if previous is None else previous)
    if finding:
        return RangesResult(False, upto, last_digest, checked, finding.position, finding.problem,
                            f"{log}: {finding.detail}")
    return RangesResult(True, upto, last_digest, checked)


def verify(store: Store, *, progress: Progress | None = None, after: int = 0,
           logs: tuple[str, ...] = LOGS) -> VerifyResult:
    """Walk the digest chain of each log from its start and recompute every sealed range.

    Names the first bad position (in the first log that has one) and what happened there:
    ``edited``, ``deleted``, ``inserted``, ``reordered`` or ``chain_broken`` (the chain table
    itself was changed). ``after``: recompute only the trading-log ranges that end after this
    position (every link of the chain is still checked), e.g. the tail after a checkpoint.
    ``progress(done, total)`` is called after each range."""
    started = time.perf_counter()
    db = _Backend(store)
    for log in logs:
        if not db.table_exists(log):
            raise InvalidInput(f"no table {log} in {store.display_url}: not a tradestate database")
    has_chain = db.table_exists(CHAIN_TABLE)
    heads: dict[str, int] = {}
    # The links only: a range's fingerprints (FP_BYTES an event: 115 MB for 10M events) are read
    # when that range is recomputed (_fingerprints), so checking the tail after a checkpoint
    # holds the tail's, not the history's.
    chains: dict[str, list[tuple[int, int, int, int, bytes, bytes, int]]] = {}
    with db.read() as cur:
        for log in logs:
            heads[log] = _head(db, cur, log)
            chains[log] = []
            if has_chain:
                chains[log] = _chain_rows(db, cur, log)
    todo: dict[str, list[int]] = {}
    skip_upto: dict[str, int] = {}
    links: dict[str, tuple[int, bytes, _Finding | None]] = {}
    for log in logs:
        good, sealed, previous, link_finding = _walk_links(chains[log], 1, GENESIS)
        skip_upto[log] = after if log == TRADING_TABLE else 0
        todo[log] = [i for i in range(good) if chains[log][i][1] > skip_upto[log]]
        links[log] = (sealed, previous, link_finding)
    total = sum(chains[log][i][1] - chains[log][i][0] + 1 for log in logs for i in todo[log])
    done = checked = unsealed = 0
    if progress:
        progress(0, total)
    per_log: dict[str, dict[str, Any]] = {}
    finding: _Finding | None = None
    bad_log = TRADING_TABLE
    for log in logs:
        sealed, previous, link_finding = links[log]
        log_checked = tail = 0
        with db.read() as cur:
            cur.execute(f"SELECT min(position) FROM {db.name(log)}")
            lowest = cur.fetchone()[0]
        if lowest is not None and int(lowest) < 1:
            finding = _Finding(int(lowest), "inserted", f"an event at position {lowest}: positions start at 1")
        if finding is None:
            def step(n: int) -> None:
                nonlocal done
                done += n
                if progress:
                    progress(done, total)

            ranges = [chains[log][i] for i in todo[log]]
            fingerprints = _fingerprints(db, log, skip_upto[log]) if ranges else {}
            finding, log_checked, _upto = _recompute(db, log, ranges, fingerprints, step)
        if finding is None and link_finding is not None:
            finding = link_finding
        if finding is None and sealed > heads[log]:
            finding = _Finding(heads[log] + 1, "deleted",
                               f"the log ends at {heads[log]} but is sealed up to {sealed}: the events from "
                               f"{heads[log] + 1} on were deleted")
        if finding is None:
            with db.read() as cur:
                cur.execute(f"SELECT count(*) FROM {db.name(log)} WHERE position > {db.p}", (sealed,))
                tail = int(cur.fetchone()[0])
            if tail != heads[log] - sealed and db.dialect.is_sqlite:
                # SQLite positions are gap-free by construction: a hole is a deleted event.
                with db.read() as cur:
                    cur.execute(f"SELECT 1 FROM {log} WHERE position = ?", (sealed + 1,))
                    if cur.fetchone() is None:
                        first_gap = sealed + 1
                    else:
                        cur.execute(
                            f"SELECT min(position) + 1 FROM {log} t WHERE position > ? AND position < ?"
                            f" AND NOT EXISTS (SELECT 1 FROM {log} u WHERE u.position = t.position + 1)",
                            (sealed, heads[log]))
                        first_gap = int(cur.fetchone()[0])
                finding = _Finding(first_gap, "deleted",
                                   f"position {first_gap} is missing from the unsealed tail of the log")
        unsealed += tail
        checked += log_checked
        per_log[log] = {"sealed_upto": sealed, "head": heads[log], "checked_events": log_checked,
                        "unsealed_events": tail, "ranges": len(chains[log]),
                        "last_digest": previous.hex() if sealed else ""}
        if finding:
            bad_log = log
            break
    trading = per_log.get(TRADING_TABLE, {"sealed_upto": 0, "head": heads.get(TRADING_TABLE, 0), "last_digest": ""})
    seconds = time.perf_counter() - started
    if finding:
        return VerifyResult(False, finding.position, finding.problem, trading["sealed_upto"], trading["head"],
                            checked, unsealed, f"{bad_log}: {finding.detail}", bad_log, trading["last_digest"],
                            seconds, per_log)
    detail = ("nothing sealed yet (run seal)" if not any(v["sealed_upto"] for v in per_log.values())
              else "every sealed range matches its digest and links to the one before")
    return VerifyResult(True, None, None, trading["sealed_upto"], trading["head"], checked, unsealed, detail,
                        TRADING_TABLE, trading["last_digest"], seconds, per_log)


# ------------------------------------------------------------------------------ meaning


@dataclass
class MeaningResult:
    """What ``verify_meaning`` found: ``ok``, or the first row that breaks a rule of the log's
    meaning (``domain.integrity.MeaningCheck``) and what is wrong with it."""

    ok: bool
    first_bad_position: int | None
    problem: str | None  # version_gap | orphan | dangling_reference | unreadable
    stream: str | None
    detail: str
    checked_events: int
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON-ready values."""
        return asdict(self)


def verify_meaning(store: Store, *, stop: int | None = None) -> MeaningResult:
    """Read the trading log from its start (up to ``stop``) and check what its rows mean: every
    order stream starts with an intent or an import, each stream's versions are contiguous, and
    every order event names the order its stream was created for. A digest cannot see a row that
    was inserted whole before sealing; this can."""
    from ...domain.integrity import MeaningCheck

    started = time.perf_counter()
    check = MeaningCheck()
    for page in store.trading.iter_pages(0, stop):
        if check.feed(page) is not None:
            break
    f = check.finding
    seconds = time.perf_counter() - started
    if f is None:
        return MeaningResult(True, None, None, None, "every order stream starts with an intent or an import, "
                             "stream versions are contiguous and references resolve", check.rows, seconds)
    return MeaningResult(False, f.position, f.problem, f.stream, f.detail, check.rows, seconds)


# ------------------------------------------------------------------------------ protect


def protect_log(store: Store, *, service_role: str | None = None) -> None:
    """Make ``ts_events``, ``ts_market_events`` and ``ts_digest_chain`` append-only.

    Triggers refuse every UPDATE, DELETE (and TRUNCATE on PostgreSQL) with a clear error; on
    PostgreSQL, if ``service_role`` (or ``$TRADESTATE_SERVICE_ROLE``) names a role, it also loses
    the UPDATE, DELETE and TRUNCATE privileges on those tables. Idempotent. The log itself never
    updates a row (a dead writer's hole is voided with an INSERT), so nothing legitimate is refused.
    A superuser or the tables' owner can still ``ALTER TABLE ... DISABLE TRIGGER`` (PostgreSQL) or
    drop the triggers (SQLite): that is what the digest chain is for."""
    db = _Backend(store)
    if not db.table_exists(CHAIN_TABLE):
        db.create_chain_table()
    role = service_role if service_role is not None else os.environ.get(SERVICE_ROLE_ENV) or None
    if role is None and _protected_tables(db) == set(PROTECTED):
        return  # already in place: no DDL (and no lock on the log) on every open
    with db.write() as cur:
        for statement in protect_statements(db.dialect, role):
            cur.execute(statement)


def protect_statements(dialect: Dialect, role: str | None = None) -> list[str]:
    """The DDL ``protect_log`` runs in ``dialect``'s database (also used by restore, inside its
    swap transaction); ``role`` (PostgreSQL) also loses UPDATE, DELETE and TRUNCATE."""
    out: list[str] = []
    if dialect.is_postgres:
        schema = dialect.schema
        q = quote

        func = f"{q(schema)}.ts_refuse_change"
        out.append("SELECT pg_advisory_xact_lock(hashtext('tradestate-ddl'))")
        out.append(
            f"CREATE OR REPLACE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql AS $body$"
            " BEGIN"
            f"  RAISE EXCEPTION '% on %.% refused: the table {REFUSAL}', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME"
            "   USING ERRCODE = 'insufficient_privilege',"
            "   HINT = 'fix a mistake by appending a corrective event; see tradestate verify';"
            " END $body$"
        )
        for table in PROTECTED:
            trigger = q(f"{table}_append_only")
            out.append(f"DROP TRIGGER IF EXISTS {trigger} ON {q(schema)}.{q(table)}")
            out.append(
                f"CREATE TRIGGER {trigger} BEFORE UPDATE OR DELETE OR TRUNCATE ON {q(schema)}.{q(table)}"
                f" FOR EACH STATEMENT EXECUTE FUNCTION {func}()"
            )
            if role:
                out.append(f"REVOKE UPDATE, DELETE, TRUNCATE ON {q(schema)}.{q(table)} FROM {q(role)}")
    else:
        for table in PROTECTED:
            for op in ("UPDATE", "DELETE"):
                out.append(
                    f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table}"
                    f" BEGIN SELECT RAISE(ABORT, '{op} on {table} refused: the table {REFUSAL}'); END"
                )
    return out


def _protected_tables(db: _Backend) -> set[str]:
    """The tables whose append-only triggers are all there (and enabled)."""
    out = set()
    with db.read() as cur:
        for table in PROTECTED:
            if db.pg:
                cur.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s"
                            " AND tgenabled <> 'D'", (db.name(table), f"{table}_append_only"))
                ok = int(cur.fetchone()[0]) == 1
            else:
                cur.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? AND name IN"
                            " (?, ?)", (table, f"{table}_no_update", f"{table}_no_delete"))
                ok = int(cur.fetchone()[0]) == 2
            if ok:
                out.add(table)
    return out


def is_protected(store: Store) -> bool:
    """Whether ``protect_log`` is in force on the log tables and the chain."""
    return _protected_tables(_Backend(store)) == set(PROTECTED)


__all__ = [
    "CHAIN_TABLE",
    "ChainError",
    "RangesResult",
    "SealResult",
    "VerifyResult",
    "canonical_time",
    "create_chain_table",
    "is_protected",
    "protect_log",
    "protect_statements",
    "seal",
    "verify",
    "verify_ranges",
]
