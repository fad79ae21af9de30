"""Parquet archives of sealed partitions of a partitioned PostgreSQL log (see partitions.py).

``archive`` exports each closed partition that the digest chain covers entirely and whose month
is before ``--before`` to ``<dir>/<log>_<YYYY-MM>_<first>-<last>.parquet`` (row groups of 10,000
positions, so a reader of a position range reads only its row groups) and a manifest beside it,
``<file>.manifest.json``::

    {"format": "tradestate-archive", "version": 1, "log", "partition", "month",
     "first_position", "last_position", "rows", "first_recorded_at", "last_recorded_at",
     "file", "sha256" (of the Parquet file), "content_digest" (blake2b of the rows in the digest
     chain's canonical encoding), "chain": {"range_start", "range_end", "digest"} (the chain's
     range holding the last position), "previous_manifest_sha256" ("" for the first), "created_at"}

Manifests are chained (each holds the sha256 of the previous one of its log), and each archive is
recorded in ``ts_archives`` (append-only) with its file, checksums and range, so ``verify`` and the
readers know the range is archived, not deleted. The file is read back and checked (its rows must
hash as the table's did) before the partition is detached and **dropped**, in the
transaction that records it: from then on the Parquet file (and its backups) is the only copy.

Readers: ``PostgresEventLog.iter_pages`` serves an archived range from its file where the table
has no rows (asked only when a read meets such a range, never on a live read); stream reads find
archived events through the versions table; the digest chain's reader (``spans``, ``digest_rows``)
and replay's time index (``ArchivedTimes``) read the files too. So ``verify``, replay,
projections and recovery read across archived and live data. ``restore`` loads one archived month
back as a read-only partition (attached, append-only triggers on it) for plain SQL readers.
The archive directory: the URL's ``archive=DIR``, else ``$TRADESTATE_ARCHIVE_DIR``, else the
directory each archive was written to (recorded in ``ts_archives``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ...domain.errors import InvalidInput, TradestateError
from . import partitions as P
from .base import VOID_STREAM
from .sql import quote, read_cursor, write_cursor

ARCHIVE_TABLE = "ts_archives"
ARCHIVE_ENV = "TRADESTATE_ARCHIVE_DIR"
FORMAT = "tradestate-archive"
ROW_GROUP = 10_000


class ArchiveError(TradestateError):
    """An archive cannot be written, found or trusted (the message says which file and why)."""


@dataclass(frozen=True)
class Archived:
    """One archived range of a log, as ``ts_archives`` records it."""

    log: str
    partition: str
    month: str
    first_position: int
    last_position: int
    rows: int
    first_recorded_at: str
    last_recorded_at: str
    directory: str
    file: str
    sha256: str
    manifest_sha256: str
    previous_manifest_sha256: str
    chain_digest: str
    archived_at: str
    attached: bool = False  # restored: a read-only partition holds the range again

    def path(self, directory: str | None = None) -> Path:
        return Path(directory or self.directory) / self.file

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_COLUMNS = ("log", "partition", "month", "first_position", "last_position", "rows", "first_recorded_at",
            "last_recorded_at", "directory", "file", "sha256", "manifest_sha256", "previous_manifest_sha256",
            "chain_digest", "archived_at")


def _schema(store: Any) -> str:
    if store.kind != "postgresql":
        raise InvalidInput("archives are of partitioned PostgreSQL logs: this store is " + store.kind)
    return store.trading.schema


def _table(store: Any) -> str:
    return f"{quote(_schema(store))}.{quote(ARCHIVE_TABLE)}"


def _ensure_table(cur: Any, store: Any) -> None:
    schema = _schema(store)
    cur.execute("SELECT pg_advisory_xact_lock(hashtext('tradestate-ddl'))")
    cur.execute(
        f"CREATE TABLE IF NOT EXISTS {_table(store)} ("
        " log text NOT NULL, partition text NOT NULL, month text NOT NULL,"
        " first_position bigint NOT NULL, last_position bigint NOT NULL, rows bigint NOT NULL,"
        " first_recorded_at timestamptz, last_recorded_at timestamptz, directory text NOT NULL, file text NOT NULL,"
        " sha256 text NOT NULL, manifest_sha256 text NOT NULL, previous_manifest_sha256 text NOT NULL,"
        " chain_digest text NOT NULL, archived_at timestamptz NOT NULL DEFAULT now(),"
        " PRIMARY KEY (log, first_position))")
    for statement in P._refuse_statements(schema):
        cur.execute(statement)
    cur.execute(P._protect_partition(schema, ARCHIVE_TABLE))


def create_table(store: Any) -> None:
    """Create ``ts_archives`` (append-only) if it is not there."""
    with write_cursor(store) as cur:
        _ensure_table(cur, store)


def after_restore(store: Any) -> None:
    """A log restored from a backup of a partitioned log with archives arrives as plain tables
    plus ``ts_archives``: partition each log that has archives again (``partitions.convert``) and
    claim its archived events' (stream, version) from the files, so the concurrency check knows them."""
    schema = _schema(store)
    with write_cursor(store) as cur:
        _ensure_table(cur, store)  # its append-only trigger (the staging schema's went with it)
    for log in ("ts_events", "ts_market_events"):
        items = archived(store, log)
        if not items:
            continue
        P.convert(store, log)
        import pyarrow.parquet as pq

        v = f"{quote(schema)}.{quote(P.versions_table(log))}"
        with write_cursor(store) as cur:
            with cur.copy(f"COPY {v} (stream_id, stream_version, position) FROM STDIN") as cp:
                for a in items:
                    t = pq.read_table(locate(store, a), columns=["stream_id", "stream_version", "position"])
                    for sid, ver, pos in zip(t.column("stream_id").to_pylist(), t.column("stream_version").to_pylist(),
                                             t.column("position").to_pylist(), strict=True):
                        if sid != VOID_STREAM:
                            cp.write_row((sid, ver, pos))


def configured_directory(store: Any) -> str | None:
    """The archive directory the store's URL (``archive=``) or ``$TRADESTATE_ARCHIVE_DIR`` names."""
    target = getattr(store.trading.datastore, "target", None)
    return (getattr(target, "archive", "") or os.environ.get(ARCHIVE_ENV) or None) if target else None


def archived(store: Any, log: str | None = None) -> list[Archived]:
    """The archives recorded in the store (of ``log``, or every log), in position order; ``attached``
    tells which are restored. [] when nothing was ever archived (or on SQLite)."""
    if store.kind != "postgresql":
        return []
    with read_cursor(store) as cur:
        return _archived(cur, store.trading.schema, log)


def _archived(cur: Any, schema: str, log: str | None) -> list[Archived]:
    t = f"{quote(schema)}.{quote(ARCHIVE_TABLE)}"
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (t,))
    if not cur.fetchone()[0]:
        return []
    where = " WHERE log = %s" if log else ""
    cur.execute(f"SELECT {', '.join(_COLUMNS)} FROM {t}{where} ORDER BY log, first_position", (log,) if log else ())
    rows = cur.fetchall()
    attached: dict[str, set[str]] = {}
    out = []
    for r in rows:
        if r[0] not in attached:
            attached[r[0]] = {p.name for p in P.list_partitions(cur, schema, r[0])}
        values = list(r)
        for i in (6, 7, 14):
            values[i] = values[i].isoformat() if values[i] is not None else ""
        out.append(Archived(*values, attached=r[1] in attached[r[0]]))
    return out


# ------------------------------------------------------------------------------ rows <-> Parquet


def _arrow_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("position", pa.int64()), ("stream_id", pa.string()), ("stream_version", pa.int64()),
                      ("type", pa.string()), ("data", pa.binary()), ("recorded_at", pa.timestamp("us", tz="UTC"))])


def _batch(rows: list[tuple[Any, ...]]) -> Any:
    import pyarrow as pa

    cols = list(zip(*rows, strict=True))
    return pa.record_batch([pa.array(c, type=f.type) for c, f in zip(cols, _arrow_schema(), strict=True)],
                           schema=_arrow_schema())


def _rows_of(table: Any) -> list[tuple[Any, ...]]:
    """Log rows (position, stream_id, stream_version, type, data, recorded_at) of an Arrow table."""
    cols = [table.column(name).to_pylist() for name in ("position", "stream_id", "stream_version", "type", "data",
                                                         "recorded_at")]
    return list(zip(*cols, strict=True))


def _digest_rows(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Log rows in the digest chain's shape (texts as bytes, the canonical time)."""
    from .digest import canonical_time

    return [(p, v, s.encode(), t.encode(), bytes(d), canonical_time(r)) for p, s, v, t, d, r in rows]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def read_pages(path: Path, first: int, last: int, page: int = ROW_GROUP) -> Iterator[list[tuple[Any, ...]]]:
    """The log rows of ``first <= position <= last`` in the archive file ``path``, in position order,
    a page at a time (only the row groups that hold them are read)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - a missing or unreadable file: say which
        raise ArchiveError(f"archive {path} cannot be read ({e}): restore the file from the archive backups") from e
    with pf:
        for i in range(pf.num_row_groups):
            stats = pf.metadata.row_group(i).column(0).statistics
            if stats is not None and stats.has_min_max and (stats.max < first or stats.min > last):
                continue
            rows = [r for r in _rows_of(pf.read_row_group(i)) if first <= r[0] <= last]
            for at in range(0, len(rows), page):
                yield rows[at:at + page]


# ------------------------------------------------------------------------------ archiving


def _chain_tail(cur: Any, schema: str, log: str) -> int:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{quote(schema)}.ts_digest_chain",))
    if not cur.fetchone()[0]:
        return 0
    cur.execute(f"SELECT coalesce(max(range_end), 0) FROM {quote(schema)}.ts_digest_chain WHERE log = %s", (log,))
    return int(cur.fetchone()[0])


def _chain_at(cur: Any, schema: str, log: str, position: int) -> dict[str, Any]:
    cur.execute(f"SELECT range_start, range_end, digest FROM {quote(schema)}.ts_digest_chain"
                " WHERE log = %s AND range_start <= %s AND range_end >= %s", (log, position, position))
    start, end, digest = cur.fetchone()
    return {"range_start": int(start), "range_end": int(end), "digest": bytes(digest).hex()}


def archive(store: Any, directory: str | os.PathLike[str], *, before: str | None = None,
            logs: tuple[str, ...] = ("ts_events", "ts_market_events"), lock_timeout: float = 5.0) -> list[Archived]:
    """Archive every closed partition of ``logs`` whose month is before ``before`` (``YYYY-MM``;
    default: this month) and that the digest chain covers entirely, oldest first: Parquet file,
    manifest (chained), read back and checked, recorded in ``ts_archives``, partition detached and
    dropped. A restored month (attached again) is only detached and dropped. Returns the new
    archives. Stops at the first partition that is not sealed (``seal`` first). Empty partitions
    are left alone, and so is the newest closed one while the open one is empty (the log's head
    stays in its table)."""
    schema = _schema(store)
    before = P.month_label(before)
    out_dir = Path(directory).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    done: list[Archived] = []
    with write_cursor(store) as cur:
        _ensure_table(cur, store)
    for log in logs:
        with read_cursor(store) as cur:
            if not P.is_partitioned(cur, schema, log):
                continue
            every = P.list_partitions(cur, schema, log)
            parts = [p for p in every if not p.is_open and p.month < before and p.first <= p.last]
            tail = _chain_tail(cur, schema, log)
            # The log's head must stay in the table (readers take it from there): while the open
            # partition is empty, the newest closed one stays.
            cur.execute(f"SELECT NOT EXISTS (SELECT 1 FROM {quote(schema)}.{quote(every[-1].name)})")
            if cur.fetchone()[0] and parts and every[-2:-1] == parts[-1:]:
                parts = parts[:-1]
            known = {a.partition: a for a in _archived(cur, schema, log)}
        for part in parts:
            if part.name in known:
                _drop_restored(store, log, known[part.name], lock_timeout)
                continue
            if part.last is None or part.last > tail:
                break  # not sealed through its last position: it and the later ones wait
            done.append(_archive_one(store, log, part, out_dir, lock_timeout))
    _forget(store)
    return done


def _forget(store: Any) -> None:
    """This process's logs ask again which positions are archived (``archived_upto``)."""
    for log in (store.trading, store.market):
        log.__dict__.pop("_archived_upto", None)


def _archive_one(store: Any, log: str, part: P.Partition, out_dir: Path, lock_timeout: float) -> Archived:
    import pyarrow.parquet as pq

    from .digest import GENESIS, _hash_rows

    schema = store.trading.schema
    qpart = f"{quote(schema)}.{quote(part.name)}"
    with read_cursor(store) as cur:
        cur.execute(f"SELECT min(position), max(position), count(*), min(recorded_at), max(recorded_at) FROM {qpart}")
        first, last, count, first_at, last_at = cur.fetchone()
        if not count:
            first, last = part.first, part.last
        elif count != last - first + 1:
            raise ArchiveError(f"{part.name} holds {count} rows for positions {first}-{last}: not gap-free, not archived")
        chain = _chain_at(cur, schema, log, int(last)) if count else {}
        previous = _archived(cur, schema, log)
    name = f"{log}_{part.month}_{first}-{last}.parquet"
    path = out_dir / name
    tmp = path.with_suffix(".parquet.tmp")
    content = GENESIS
    with pq.ParquetWriter(tmp, _arrow_schema(), compression="zstd") as writer, read_cursor(store) as cur:
        for lo in range(int(first), int(last) + 1, ROW_GROUP):
            cur.execute(f"SELECT position, stream_id, stream_version, type, data, recorded_at FROM {qpart}"
                        " WHERE position >= %s AND position <= %s ORDER BY position",
                        (lo, min(lo + ROW_GROUP - 1, int(last))), binary=True)
            rows = cur.fetchall()
            if rows:
                writer.write_batch(_batch(rows), row_group_size=ROW_GROUP)
                content, _ = _hash_rows(_digest_rows(rows), content)
    os.replace(tmp, path)
    sha = _sha256(path)
    # read back: the file's rows must hash as the table's did
    back = GENESIS
    n = 0
    for rows in read_pages(path, int(first), int(last)):
        back, _ = _hash_rows(_digest_rows(rows), back)
        n += len(rows)
    if back != content or n != count:
        raise ArchiveError(f"{path}: read back {n} rows that do not match {part.name} ({count} rows); nothing detached")
    prev_sha = previous[-1].manifest_sha256 if previous else ""
    manifest = {
        "format": FORMAT, "version": 1, "log": log, "partition": part.name, "month": part.month,
        "first_position": int(first), "last_position": int(last), "rows": int(count),
        "first_recorded_at": first_at.isoformat() if first_at else "",
        "last_recorded_at": last_at.isoformat() if last_at else "",
        "file": name, "sha256": sha, "content_digest": content.hex(), "chain": chain,
        "previous_manifest_sha256": prev_sha, "created_at": datetime.now(UTC).isoformat(),
    }
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    manifest_path = out_dir / (name + ".manifest.json")
    manifest_path.write_bytes(body)
    manifest_sha = hashlib.sha256(body).hexdigest()
    with write_cursor(store) as cur:
        P._lock(cur, schema, log, lock_timeout)
        cur.execute(
            f"INSERT INTO {_table(store)} ({', '.join(_COLUMNS)}) VALUES ({', '.join(['%s'] * len(_COLUMNS))})",
            (log, part.name, part.month, int(first), int(last), int(count), first_at, last_at, str(out_dir), name, sha,
             manifest_sha, prev_sha, chain.get("digest", ""), datetime.now(UTC)))
        P.detach(cur, schema, log, part.name)
        cur.execute(f"DROP TABLE {qpart}")
    with read_cursor(store) as cur:
        return next(a for a in _archived(cur, schema, log) if a.partition == part.name)


def _drop_restored(store: Any, log: str, known: Archived, lock_timeout: float) -> None:
    """Detach and drop a restored month again (its archive file checked first)."""
    path = locate(store, known)
    if _sha256(path) != known.sha256:
        raise ArchiveError(f"{path}: its sha256 is not the one recorded: the restored {known.month} is kept")
    schema = store.trading.schema
    with write_cursor(store) as cur:
        P._lock(cur, schema, log, lock_timeout)
        P.detach(cur, schema, log, known.partition)
        cur.execute(f"DROP TABLE {quote(schema)}.{quote(known.partition)}")


def locate(store: Any, a: Archived, directory: str | None = None) -> Path:
    """The file of archive ``a``: in ``directory``, the configured archive directory, or where it was written."""
    for d in (directory, configured_directory(store), a.directory):
        if d and (Path(d) / a.file).exists():
            return Path(d) / a.file
    raise ArchiveError(f"archive file {a.file} of {a.log} positions {a.first_position}-{a.last_position} not found "
                       f"(looked in {directory or configured_directory(store) or ''} {a.directory}); set the URL's "
                       f"archive=DIR or ${ARCHIVE_ENV} to where the archives are")


# ------------------------------------------------------------------------------ checking, restoring


@dataclass
class ArchiveCheck:
    """What ``check`` found: ``ok``, and the first problem (``detail``) if not."""

    ok: bool
    archives: int
    detail: str


def check(store: Any, directory: str | None = None) -> ArchiveCheck:
    """Re-verify every recorded archive: the file is there and its sha256 is the recorded one, its
    manifest is the recorded one (sha256) and links to the previous manifest of its log."""
    items = archived(store)
    previous: dict[str, str] = {}
    for a in items:
        try:
            path = locate(store, a, directory)
        except ArchiveError as e:
            return ArchiveCheck(False, len(items), str(e))
        if _sha256(path) != a.sha256:
            return ArchiveCheck(False, len(items), f"{path}: its sha256 is not the recorded one (the file changed)")
        mpath = path.with_name(path.name + ".manifest.json")
        if not mpath.exists() or hashlib.sha256(mpath.read_bytes()).hexdigest() != a.manifest_sha256:
            return ArchiveCheck(False, len(items), f"{mpath}: missing, or not the manifest recorded for it")
        manifest = json.loads(mpath.read_bytes())
        if manifest.get("previous_manifest_sha256") != previous.get(a.log, "") or \
                a.previous_manifest_sha256 != previous.get(a.log, ""):
            return ArchiveCheck(False, len(items), f"{mpath}: does not link to the previous manifest of {a.log}")
        previous[a.log] = a.manifest_sha256
    return ArchiveCheck(True, len(items), f"{len(items)} archives: files, manifests and their chain intact")


def restore(store: Any, month: str, *, directory: str | None = None, log: str = "ts_events",
            lock_timeout: float = 5.0) -> list[Archived]:
    """Load the archives of ``month`` (``YYYY-MM``) of ``log`` back as read-only partitions (the
    file's sha256 checked first; append-only triggers on them). Returns them (already attached:
    nothing done for those)."""
    month = P.month_label(month)
    schema = _schema(store)
    items = [a for a in archived(store, log) if a.month == month]
    if not items:
        raise InvalidInput(f"no archive of {log} for {month} (see `tradestate archive list`)")
    import pyarrow.parquet as pq

    for a in items:
        if a.attached:
            continue
        path = locate(store, a, directory)
        if _sha256(path) != a.sha256:
            raise ArchiveError(f"{path}: its sha256 is not the recorded one: not restored")
        t = f"{quote(schema)}.{quote(a.partition)}"
        with write_cursor(store) as cur:
            cur.execute(f"CREATE TABLE {t} (LIKE {quote(schema)}.{quote(log)} INCLUDING DEFAULTS)")
            with cur.copy(f"COPY {t} (position, stream_id, stream_version, type, data, recorded_at) FROM STDIN") as cp:
                for batch in pq.ParquetFile(path).iter_batches(batch_size=ROW_GROUP):
                    for row in _rows_of(batch):
                        cp.write_row(row)
            cur.execute(f"ALTER TABLE {t} ADD CONSTRAINT {quote(a.partition + '_bounds')}"
                        f" CHECK (position >= {a.first_position} AND position <= {a.last_position})")
            P._lock(cur, schema, log, lock_timeout)
            P.attach(cur, schema, log, P.Partition(a.partition, a.month, a.first_position, a.last_position + 1))
    _forget(store)
    return [a for a in archived(store, log) if a.month == month]


# ------------------------------------------------------------------------------ the readers' seam


def covering(cur: Any, schema: str, table: str, position: int,
             directory: str | None = None) -> tuple[Archived, Path] | None:
    """The archive (not restored) of ``table`` holding ``position`` and its file; None if none does.
    ``ArchiveError`` if the range is archived and its file cannot be found."""
    for a in _archived(cur, schema, table):
        if a.first_position <= position <= a.last_position and not a.attached:
            for d in (directory, os.environ.get(ARCHIVE_ENV), a.directory):
                if d and (Path(d) / a.file).exists():
                    return a, Path(d) / a.file
            raise ArchiveError(f"positions {a.first_position}-{a.last_position} of {table} are archived in {a.file}, "
                               f"which is in neither {directory or '(no archive=DIR)'} nor {a.directory}: set the "
                               f"URL's archive=DIR or ${ARCHIVE_ENV} to where the archives are")
    return None


def spans(store: Any, table: str) -> list[tuple[int, int, Path]]:
    """(first, last, file) of each archived (not restored) range of ``table``: what the digest
    chain's reader takes from files. [] on SQLite or without archives."""
    out = []
    for a in archived(store, table):
        if not a.attached:
            out.append((a.first_position, a.last_position, locate(store, a)))
    return out


class ArchivedTimes:
    """The stamps of a log's archived (not restored) ranges, for replay's time index
    (``replay.log.LogTimes``): ``(position, recorded_at, is_void)`` read from the files' columns
    when first needed and kept (about 17 bytes an event)."""

    def __init__(self, store: Any, table: str):
        self.spans = spans(store, table)
        self._cols: dict[Path, tuple[list[int], list[datetime], list[bool]]] = {}

    def __bool__(self) -> bool:
        return bool(self.spans)

    def _load(self, path: Path) -> tuple[list[int], list[datetime], list[bool]]:
        cols = self._cols.get(path)
        if cols is None:
            import pyarrow.compute as pc
            import pyarrow.parquet as pq

            from .base import VOID_TYPE

            t = pq.read_table(path, columns=["position", "recorded_at", "type"])
            cols = self._cols[path] = (t.column("position").to_pylist(), t.column("recorded_at").to_pylist(),
                                       pc.equal(t.column("type"), VOID_TYPE).to_pylist())
        return cols

    def stamp(self, position: int) -> datetime | None:
        """The ``recorded_at`` of an archived ``position`` (None: not archived)."""
        for first, last, path in self.spans:
            if first <= position <= last:
                positions, stamps, _ = self._load(path)
                return stamps[position - positions[0]]
        return None

    def event_at_or_before(self, position: int) -> tuple[int, datetime] | None:
        """(position, stamp) of the last archived event (not ``$void``) at or before ``position``."""
        for first, last, path in reversed(self.spans):
            if first > position:
                continue
            positions, stamps, voids = self._load(path)
            for i in range(min(position, last) - positions[0], -1, -1):
                if not voids[i]:
                    return positions[i], stamps[i]
        return None

    def segments(self, after: int, head: int) -> list[tuple[int, int, bool]]:
        """``after+1..head`` cut into (first, last, archived) pieces, in order."""
        out: list[tuple[int, int, bool]] = []
        at = after + 1
        for first, last, _ in self.spans:
            if last < at or first > head:
                continue
            if first > at:
                out.append((at, first - 1, False))
            out.append((max(first, at), min(last, head), True))
            at = min(last, head) + 1
        if at <= head:
            out.append((at, head, False))
        return out

    def stamps(self, first: int, last: int) -> Iterator[tuple[int, datetime | None]]:
        """(position, stamp; None for a ``$void`` row) of the archived positions ``first..last``."""
        for lo, hi, path in self.spans:
            if hi < first or lo > last:
                continue
            positions, stamps, voids = self._load(path)
            base = positions[0]
            for i in range(max(first, lo) - base, min(last, hi) - base + 1):
                yield positions[i], None if voids[i] else stamps[i]


def digest_rows(path: Path, first: int, last: int) -> list[tuple[Any, ...]]:
    """The rows of ``first``-``last`` of an archive file in the digest chain's shape."""
    out: list[tuple[Any, ...]] = []
    for rows in read_pages(path, first, last):
        out += _digest_rows(rows)
    return out


__all__ = [
    "ARCHIVE_TABLE",
    "ArchiveCheck",
    "ArchiveError",
    "ArchivedTimes",
    "after_restore",
    "Archived",
    "archive",
    "archived",
    "check",
    "configured_directory",
    "covering",
    "create_table",
    "digest_rows",
    "locate",
    "read_pages",
    "restore",
    "spans",
]
