"""Backups of the log, and restores that verify before they replace anything.

A backup is one file: an uncompressed tar whose members are

* ``manifest.json``: format and schema version, source kind, creation time, each log's head and
  row count, the digest chain's last sealed position and digest per log, and the name, size and
  sha256 of every data member;
* ``manifest.sha256``: the sha256 of ``manifest.json``;
* the data, gzip-compressed: on SQLite one member, a copy of the whole database taken through
  SQLite's online backup API (a consistent snapshot; writers carry on); on PostgreSQL one member
  per table (``ts_events``, ``ts_market_events``, ``ts_digest_chain``, ``ts_checkpoints`` if
  there), each a binary ``COPY ... TO STDOUT`` taken in one REPEATABLE READ snapshot, the logs cut
  at their contiguous head (an append still in flight is not half in the backup).

The file is written to a temporary name beside the destination, fsynced, and renamed over it.

``restore`` checks everything before it touches the target: the manifest's checksum and version,
every member's size and sha256, the data loaded into a staging place (a temporary SQLite file
beside the target / a staging PostgreSQL schema), ``PRAGMA integrity_check`` on SQLite, the
manifest's heads and row counts, and a full verify of the digest chain of the staged data (and
its last digest against the manifest's). A damaged, truncated or foreign file is refused with
:class:`BackupDamaged` and the target is left as it was. Only then is the staged data swapped in:

* SQLite: copied into the target through the online backup API in one step (atomic for other
  connections, and the target's WAL and shared memory stay consistent); a target that is not a
  database any more is moved aside (with its ``-wal``/``-shm``) and the staged file renamed in.
* PostgreSQL: in one transaction, the target's tables are moved into a ``<schema>_pre_<time>``
  schema (or dropped, with ``keep_previous=False``) and the staged tables moved in; the position
  sequences are set to the restored heads.

A target that already holds a log is replaced only with ``force=True``; its previous content is
kept (``<file>.pre-restore-<time>`` / ``<schema>_pre_<time>``) unless ``keep_previous=False``.
The read models (``ts_positions`` ...) are dropped: the projector rebuilds them from the log.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable

from ...domain.errors import InvalidInput, TradestateError
from . import MARKET_TABLE, TRADING_TABLE, Store, open_store, redact, resolve_url, sqlite_path
from . import digest as digest_mod
from . import partitions
from .sql import POSTGRESQL, SQLITE, Dialect, PgUrl, quote, url_kind

FORMAT = "tradestate-backup"
FORMAT_VERSION = 1
SCHEMA_VERSION = 1  # the log tables' layout (position, stream_id, stream_version, type, data, recorded_at)
CHECKPOINTS_TABLE = "ts_checkpoints"
LOG_TABLES = (TRADING_TABLE, MARKET_TABLE)
ARCHIVES_TABLE = "ts_archives"  # a partitioned log's record of its Parquet archives (archive.py)
PG_TABLES = (TRADING_TABLE, MARKET_TABLE, digest_mod.CHAIN_TABLE, CHECKPOINTS_TABLE, ARCHIVES_TABLE)
SQLITE_MEMBER = "tradestate.sqlite.gz"
CHUNK = 1 << 20


class BackupError(TradestateError):
    """A backup could not be written or restored."""


class BackupDamaged(BackupError):
    """The backup file is damaged, truncated, or not a tradestate backup: nothing was restored."""


class RestoreRefused(BackupError):
    """The restore would replace an existing log without ``force``, or cannot be done: nothing changed."""


@dataclass
class Manifest:
    """What a backup holds, as written in its ``manifest.json``: the source, each log's head and
    row count, the digest chain's tail, and the checksum of every member file."""

    format: str
    format_version: int
    schema_version: int
    source_kind: str
    source: str
    created_at: str
    logs: dict[str, dict[str, int]]  # table -> {"head", "rows"}
    chain: dict[str, dict[str, Any]]  # table -> {"sealed_upto", "last_digest", "unsealed" (events after it)}
    members: list[dict[str, Any]]  # {"name", "table", "columns", "rows", "bytes", "sha256", "raw_sha256", ...}
    tradestate_version: str = ""
    path: str = ""  # where the backup was written (not stored in the file)
    size: int = 0  # bytes of the backup file (not stored in the file)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON-ready values."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """The manifest a backup file stored; unknown keys are ignored, ``path`` and ``size`` (not
        stored) keep their defaults."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k not in ("path", "size")}
        return cls(**known)


@dataclass
class RestoreResult:
    """The outcome of a restore that succeeded: what is in place now, the verification of the
    restored chain, and where the replaced content was kept. ``read_models_dropped``: whether
    derived tables were dropped (``extra_drop`` given)."""

    ok: bool
    target: str
    kind: str
    logs: dict[str, dict[str, int]]
    last_digest: str
    verify: dict[str, Any]
    previous_saved_to: str | None  # where the replaced content was kept (None: there was none, or not kept)
    read_models_dropped: bool
    seconds: float
    manifest: dict[str, Any] = field(default_factory=dict)
    sealed_after_restore: int = 0  # events of the backup's unsealed tail sealed once it was in place

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON-ready values."""
        return asdict(self)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("tradestate")
    except Exception:  # noqa: BLE001 - informative only
        return ""


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:4]


def _fsync_dir(path: Path) -> None:
    with suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _HashingWriter(io.RawIOBase):
    """A file that counts and hashes what is written to it (the compressed bytes)."""

    def __init__(self, f: Any):
        self.f, self.sha, self.n = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        """Always True (a file-like sink for ``GzipFile``)."""
        return True

    def write(self, b: Any) -> int:
        """Write ``b`` through to the file, adding it to the running SHA-256 and byte count; returns its
        length."""
        b = bytes(b)
        self.sha.update(b)
        self.n += len(b)
        self.f.write(b)
        return len(b)


class _Member:
    """One gzip member being written: sha256 and size of the stored and of the raw bytes."""

    def __init__(self, directory: Path, name: str):
        self.name, self.path = name, directory / name
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._hashing = _HashingWriter(self._file)
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._hashing, compresslevel=6, mtime=0)
        self.raw_sha, self.raw_n = hashlib.sha256(), 0

    def write(self, b: Any) -> None:
        """Compress ``b`` into the member, hashing the uncompressed bytes."""
        b = bytes(b)
        self.raw_sha.update(b)
        self.raw_n += len(b)
        self._gz.write(b)

    def close(self) -> dict[str, Any]:
        """Finish the gzip stream, fsync and close the file; returns its name and the size and SHA-256
        of the compressed and of the raw bytes."""
        self._gz.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        return {"name": self.name, "bytes": self._hashing.n, "sha256": self._hashing.sha.hexdigest(),
                "raw_bytes": self.raw_n, "raw_sha256": self.raw_sha.hexdigest()}


# ------------------------------------------------------------------------------ PostgreSQL plumbing


def _pg_connect_args(url: str) -> tuple[dict[str, Any], str]:
    target = PgUrl.parse(url)
    return target.kwargs(application_name="tradestate-backup"), target.schema


def _with_schema(url: str, schema: str) -> str:
    return PgUrl.parse(url).with_schema(schema)


_q = quote


def _pg_columns(cur: Any, schema: str, table: str) -> list[str]:
    cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
                " ORDER BY ordinal_position", (schema, table))
    return [r[0] for r in cur.fetchall()]


def _pg_contiguous_head(cur: Any, qualified: str, archived: int = 0) -> tuple[int, int]:
    """(head, rows) of the contiguous prefix 1..head of a log in this snapshot. ``archived``: positions
    1..archived are held by Parquet archives (archive.py), not missing; rows counts the table's."""
    if archived:
        cur.execute(f"SELECT greatest(coalesce(max(position), 0), %s), count(*) FILTER (WHERE position > %s),"
                    f" coalesce(min(position) FILTER (WHERE position > %s), %s), count(*) FROM {qualified}",
                    (archived, archived, archived, archived + 1))
        head, beyond, low, rows = (int(x) for x in cur.fetchone())
        if beyond == head - archived and low == archived + 1 or head == archived:
            return head, rows
        raise InvalidInput(f"{qualified} has a hole after its archived positions 1-{archived}: back it up once its "
                           "appends in flight are done")
    cur.execute(f"SELECT coalesce(max(position), 0), count(*), coalesce(min(position), 1) FROM {qualified}")
    head, rows, low = (int(x) for x in cur.fetchone())
    if rows == head and low >= 1:
        return head, rows
    if cur.execute(f"SELECT 1 FROM {qualified} WHERE position = 1").fetchone() is None:
        return 0, 0
    cur.execute(f"SELECT min(position) FROM {qualified} t WHERE position >= 1 AND NOT EXISTS"
                f" (SELECT 1 FROM {qualified} u WHERE u.position = t.position + 1)")
    last = int(cur.fetchone()[0])  # positions 1..last are all there; last + 1 is not (yet)
    return last, last


# ------------------------------------------------------------------------------ backup


def backup(store: Store, path: str | os.PathLike[str], *, seal: bool = False) -> Manifest:
    """Write a backup of ``store`` to ``path`` (atomically: a temporary file, fsync, rename).

    Only reads the database (so it runs against a hot standby): the manifest records, per log,
    the last sealed position and digest and the unsealed tail after it (``unsealed``); ``restore``
    seals that tail once the backup is in place. ``seal``: seal the chain first (a write)."""
    dest = Path(path).expanduser().absolute()
    if dest.is_dir():
        raise InvalidInput(f"{dest} is a directory: give a file name for the backup")
    if not dest.parent.is_dir():
        raise InvalidInput(f"directory {dest.parent} does not exist")
    if seal:
        digest_mod.seal(store)
    work = Path(tempfile.mkdtemp(prefix=".tradestate-backup-", dir=dest.parent))
    try:
        if store.kind == SQLITE:
            logs, chain, members = _backup_sqlite(store, work)
        else:
            logs, chain, members = _backup_postgres(store, work)
        for log, info in chain.items():
            info["unsealed"] = max(0, logs.get(log, {}).get("head", 0) - info.get("sealed_upto", 0))
        manifest = Manifest(
            format=FORMAT, format_version=FORMAT_VERSION, schema_version=SCHEMA_VERSION, source_kind=store.kind,
            source=store.display_url, created_at=datetime.now(timezone.utc).isoformat(), logs=logs, chain=chain,
            members=members, tradestate_version=_version(),
        )
        body = json.dumps(manifest.to_dict() | {"path": None, "size": None}, indent=2, sort_keys=True).encode()
        tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                _add_bytes(tar, "manifest.json", body)
                _add_bytes(tar, "manifest.sha256", hashlib.sha256(body).hexdigest().encode())
                for member in members:
                    info = tar.gettarinfo(str(work / member["name"]), arcname=member["name"])
                    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                    with open(work / member["name"], "rb") as f:
                        tar.addfile(info, f)
                tar.close()
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        except BaseException:
            with suppress(OSError):
                tmp.unlink()
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    manifest.path, manifest.size = str(dest), dest.stat().st_size
    return manifest


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _sqlite_summary(conn: sqlite3.Connection) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, Any]]]:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    logs: dict[str, dict[str, int]] = {}
    chain: dict[str, dict[str, Any]] = {}
    for log in LOG_TABLES:
        if log in tables:
            head, rows = conn.execute(f"SELECT coalesce(max(position), 0), count(*) FROM {log}").fetchone()
        else:
            head = rows = 0
        logs[log] = {"head": int(head), "rows": int(rows)}
        tail = None
        if digest_mod.CHAIN_TABLE in tables:
            tail = conn.execute(f"SELECT range_end, digest FROM {digest_mod.CHAIN_TABLE} WHERE log = ?"
                                " ORDER BY range_start DESC LIMIT 1", (log,)).fetchone()
        chain[log] = {"sealed_upto": int(tail[0]) if tail else 0, "last_digest": bytes(tail[1]).hex() if tail else ""}
    return logs, chain


def _backup_sqlite(store: Store, work: Path) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    copy = work / "tradestate.sqlite"
    dst = sqlite3.connect(copy)
    try:
        store.trading.backup_to(dst)  # type: ignore[attr-defined]  # SQLiteEventLog
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        logs, chain = _sqlite_summary(dst)
    finally:
        dst.close()
    member = _Member(work, SQLITE_MEMBER)
    with open(copy, "rb") as f:
        while chunk := f.read(CHUNK):
            member.write(chunk)
    info = member.close() | {"table": None, "format": "sqlite-database"}
    copy.unlink()
    return logs, chain, [info]


def _backup_postgres(store: Store, work: Path) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    import psycopg

    args, schema = _pg_connect_args(store.url)
    logs: dict[str, dict[str, int]] = {}
    chain: dict[str, dict[str, Any]] = {}
    members: list[dict[str, Any]] = []
    with psycopg.connect(**args, autocommit=True) as conn:
        conn.execute("SET idle_in_transaction_session_timeout = 0")
        conn.execute("SET statement_timeout = 0")
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur = conn.cursor()
            present = {t for t in PG_TABLES
                       if cur.execute("SELECT to_regclass(%s)", (f"{_q(schema)}.{_q(t)}",)).fetchone()[0]}
            if TRADING_TABLE not in present:
                raise InvalidInput(f"no tradestate log in {store.display_url}")
            for log in LOG_TABLES:
                if log in present:
                    archived = 0
                    if ARCHIVES_TABLE in present:  # the archived prefix is held by its files
                        archived = int(cur.execute(f"SELECT coalesce(max(last_position), 0) FROM {_q(schema)}."
                                                   f"{_q(ARCHIVES_TABLE)} WHERE log = %s", (log,)).fetchone()[0])
                    head, rows = _pg_contiguous_head(cur, f"{_q(schema)}.{_q(log)}", archived)
                else:
                    head = rows = 0
                logs[log] = {"head": head, "rows": rows}
                chain[log] = {"sealed_upto": 0, "last_digest": ""}
                if digest_mod.CHAIN_TABLE in present:
                    tail = cur.execute(
                        f"SELECT range_end, digest FROM {_q(schema)}.{_q(digest_mod.CHAIN_TABLE)} WHERE log = %s"
                        " AND range_end <= %s ORDER BY range_start DESC LIMIT 1", (log, head)).fetchone()
                    if tail:
                        chain[log] = {"sealed_upto": int(tail[0]), "last_digest": bytes(tail[1]).hex()}
            for table in PG_TABLES:
                if table not in present:
                    continue
                columns = _pg_columns(cur, schema, table)
                cols = ", ".join(_q(c) for c in columns)
                where, order, params = "", "", ()
                if table in LOG_TABLES:
                    where, order, params = " WHERE position >= 1 AND position <= %s", " ORDER BY position", (
                        logs[table]["head"],)
                elif table == digest_mod.CHAIN_TABLE:
                    where = " WHERE " + " OR ".join(f"(log = '{log}' AND range_end <= %s)" for log in LOG_TABLES)
                    params = tuple(logs[log]["head"] for log in LOG_TABLES)
                    order = " ORDER BY log, range_start"
                elif "id" in columns:
                    order = " ORDER BY id"
                count = int(cur.execute(f"SELECT count(*) FROM {_q(schema)}.{_q(table)}{where}", params).fetchone()[0])
                member = _Member(work, f"{table}.copy.gz")
                with cur.copy(f"COPY (SELECT {cols} FROM {_q(schema)}.{_q(table)}{where}{order}) TO STDOUT"
                              " (FORMAT binary)", params) as copy:
                    for data in copy:
                        member.write(data)
                members.append(member.close() | {"table": table, "columns": columns, "rows": count,
                                                 "format": "postgresql-copy-binary"})
    return logs, chain, members


# ------------------------------------------------------------------------------ reading a backup


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """The manifest of a backup file, checked against its checksum (the data is not read)."""
    with _open_archive(path) as tar:
        return _manifest(tar, path)


@contextmanager
def _open_archive(path: str | os.PathLike[str]) -> Iterator[tarfile.TarFile]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise InvalidInput(f"no backup file at {p}")
    try:
        with tarfile.open(p, mode="r:") as tar:
            yield tar
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise BackupDamaged(f"{p} is damaged or truncated, or not a tradestate backup ({e}); nothing was restored") \
            from e


def _read_member(tar: tarfile.TarFile, name: str, path: Any) -> bytes:
    try:
        f = tar.extractfile(name)
    except KeyError:
        f = None
    if f is None:
        raise BackupDamaged(f"{path}: member {name!r} is missing (a truncated or foreign file); nothing was restored")
    return f.read()


def _manifest(tar: tarfile.TarFile, path: Any) -> Manifest:
    body = _read_member(tar, "manifest.json", path)
    expected = _read_member(tar, "manifest.sha256", path).decode(errors="replace").strip()
    if hashlib.sha256(body).hexdigest() != expected:
        raise BackupDamaged(f"{path}: the manifest does not match its checksum (the file was damaged)")
    try:
        data = json.loads(body)
    except ValueError as e:
        raise BackupDamaged(f"{path}: the manifest is not JSON ({e})") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BackupDamaged(f"{path} is not a tradestate backup")
    if data.get("format_version") != FORMAT_VERSION or data.get("schema_version") != SCHEMA_VERSION:
        raise RestoreRefused(
            f"{path} is backup format {data.get('format_version')} / log schema {data.get('schema_version')}; "
            f"this version reads format {FORMAT_VERSION} / schema {SCHEMA_VERSION}")
    try:
        return Manifest.from_dict(data)
    except TypeError as e:
        raise BackupDamaged(f"{path}: the manifest is incomplete ({e})") from e


def _extract(tar: tarfile.TarFile, manifest: Manifest, work: Path, path: Any) -> dict[str, Path]:
    """Every data member, checked against the manifest's size and sha256, decompressed into
    ``work`` (and checked again: size and sha256 of the raw bytes, gzip's own CRC)."""
    names = {m.name for m in tar.getmembers()}
    expected = {"manifest.json", "manifest.sha256"} | {m["name"] for m in manifest.members}
    if names != expected:
        raise BackupDamaged(f"{path}: members {sorted(names ^ expected)} differ from the manifest")
    out: dict[str, Path] = {}
    for member in manifest.members:
        name = member["name"]
        if "/" in name or name.startswith("."):
            raise BackupDamaged(f"{path}: bad member name {name!r}")
        f = tar.extractfile(name)
        if f is None:
            raise BackupDamaged(f"{path}: member {name!r} is missing")
        stored_sha, n = hashlib.sha256(), 0
        compressed = work / (name + ".stored")
        with open(compressed, "wb") as w:
            while chunk := f.read(CHUNK):
                stored_sha.update(chunk)
                n += len(chunk)
                w.write(chunk)
        if n != member["bytes"] or stored_sha.hexdigest() != member["sha256"]:
            raise BackupDamaged(f"{path}: member {name!r} does not match its checksum ({n} bytes, "
                                f"{member['bytes']} expected): the file is damaged; nothing was restored")
        raw = work / name.removesuffix(".gz")
        raw_sha, raw_n = hashlib.sha256(), 0
        try:
            with gzip.open(compressed, "rb") as g, open(raw, "wb") as w:
                while chunk := g.read(CHUNK):
                    raw_sha.update(chunk)
                    raw_n += len(chunk)
                    w.write(chunk)
        except (OSError, EOFError, zlib.error) as e:
            raise BackupDamaged(f"{path}: member {name!r} does not decompress ({e})") from e
        compressed.unlink()
        if raw_n != member["raw_bytes"] or raw_sha.hexdigest() != member["raw_sha256"]:
            raise BackupDamaged(f"{path}: member {name!r} decompresses to other data than was backed up")
        out[name] = raw
    return out


def _check_against_manifest(manifest: Manifest, result: digest_mod.VerifyResult, logs: dict[str, dict[str, int]],
                            path: Any) -> None:
    if not result.ok:
        raise BackupDamaged(f"{path}: the backed-up log fails verification: first bad position "
                            f"{result.first_bad_position} ({result.problem}: {result.detail}); nothing was restored")
    for log in LOG_TABLES:
        want = manifest.logs.get(log, {"head": 0, "rows": 0})
        if logs.get(log) != {"head": want["head"], "rows": want["rows"]}:
            raise BackupDamaged(f"{path}: {log} holds {logs.get(log)} but the manifest says {want}")
        chain = manifest.chain.get(log, {})
        got = result.logs.get(log, {})
        if (got.get("sealed_upto", 0), got.get("last_digest", "")) != (chain.get("sealed_upto", 0),
                                                                        chain.get("last_digest", "")):
            raise BackupDamaged(f"{path}: the digest chain of {log} ends at {got.get('sealed_upto')} "
                                f"({got.get('last_digest', '')[:16]}) but the manifest says {chain}")


# ------------------------------------------------------------------------------ restore


DropStatements = Callable[[Dialect], Iterable[str]]


def restore(url: str | None, path: str | os.PathLike[str], *, force: bool = False, keep_previous: bool = True,
            progress: digest_mod.Progress | None = None, extra_drop: DropStatements | None = None) -> RestoreResult:
    """Restore the backup at ``path`` into the database at ``url``, verifying first (see module doc).

    ``extra_drop(dialect)`` gives statements (``DROP ... IF EXISTS``) for tables derived from the
    log that the restored log would contradict, such as read models: they run in the swap
    transaction, so the derived tables are gone exactly when the new log is in place."""
    started = time.perf_counter()
    url = resolve_url(url)
    kind = url_kind(url)
    drops = extra_drop
    with _open_archive(path) as tar:
        manifest = _manifest(tar, path)
        if manifest.source_kind != kind:
            raise RestoreRefused(f"{path} is a {manifest.source_kind} backup; restoring it into {kind} is not "
                                 "supported (restore into a database of the same kind)")
        existing = _target_events(url, kind)
        if existing and not force:
            what = (f"a log of {existing} events" if existing > 0
                    else "a file that is not a readable database (a damaged log?)")
            raise RestoreRefused(f"{redact(url)} already holds {what}: restoring would replace it; pass --force "
                                 "(force=True) to do so (the old content is kept aside)")
        if kind == SQLITE:
            target = Path(sqlite_path(url)).expanduser().absolute()
            if not target.parent.is_dir():
                raise InvalidInput(f"directory {target.parent} does not exist")
            work = Path(tempfile.mkdtemp(prefix=f".{target.name}.restore-", dir=target.parent))
        else:
            work = Path(tempfile.mkdtemp(prefix=".tradestate-restore-"))
        try:
            files = _extract(tar, manifest, work, path)
            if kind == SQLITE:
                result = _restore_sqlite(url, target, files[SQLITE_MEMBER], manifest, path, force=force,
                                         keep_previous=keep_previous, progress=progress, started=started, drops=drops)
            else:
                result = _restore_postgres(url, files, manifest, path, force=force, keep_previous=keep_previous,
                                           progress=progress, started=started, drops=drops)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return _seal_restored(url, result)


def _seal_restored(url: str, result: RestoreResult) -> RestoreResult:
    """Seal the tail the backup held unsealed (a backup never writes to its source; the file's
    checksums vouch for the tail, so the restored database seals it)."""
    chain, logs = result.manifest.get("chain", {}), result.manifest.get("logs", {})
    if all(logs.get(log, {}).get("head", 0) <= chain.get(log, {}).get("sealed_upto", 0) for log in LOG_TABLES):
        return result
    with open_store(url, create=False) as store:
        sealed = digest_mod.seal(store)
    result.sealed_after_restore = sealed.events
    if sealed.last_digest:
        result.last_digest = sealed.last_digest
    return result


def _target_events(url: str, kind: str) -> int:
    """Events in the target's trading log (0 when there is none)."""
    if kind == SQLITE:
        target = Path(sqlite_path(url)).expanduser()
        if not target.exists() or target.stat().st_size == 0:
            return 0
        try:
            conn = sqlite3.connect(f"file:{target}?mode=ro", uri=True, timeout=30)
            try:
                if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                (TRADING_TABLE,)).fetchone() is None:
                    return 0
                return int(conn.execute(f"SELECT count(*) FROM {TRADING_TABLE}").fetchone()[0])
            finally:
                conn.close()
        except sqlite3.DatabaseError:
            return -1  # something is there but it is not readable: a log may be lost in it; needs force
    import psycopg

    args, schema = _pg_connect_args(url)
    try:
        with psycopg.connect(**args, autocommit=True) as conn:
            if conn.execute("SELECT to_regclass(%s)", (f"{_q(schema)}.{_q(TRADING_TABLE)}",)).fetchone()[0] is None:
                return 0
            return int(conn.execute(f"SELECT count(*) FROM {_q(schema)}.{_q(TRADING_TABLE)}").fetchone()[0])
    except psycopg.OperationalError as e:
        raise InvalidInput(f"cannot connect to {redact(url)}: {e}") from e


def _drop(cur: Any, drops: DropStatements | None, dialect: Dialect) -> None:
    for statement in drops(dialect) if drops is not None else ():
        cur.execute(statement)


def _restore_sqlite(url: str, target: Path, staged_db: Path, manifest: Manifest, path: Any, *, force: bool,
                    keep_previous: bool, progress: Any, started: float, drops: DropStatements | None) -> RestoreResult:
    # 1. the staged copy: a sound database, the manifest's heads, a chain that verifies
    conn = sqlite3.connect(staged_db, isolation_level=None)
    try:
        try:
            check = conn.execute("PRAGMA integrity_check").fetchall()
        except sqlite3.DatabaseError as e:
            raise BackupDamaged(f"{path}: the backed-up database is not readable ({e})") from e
        if check != [("ok",)]:
            raise BackupDamaged(f"{path}: the backed-up database fails integrity_check: {check[:3]}")
        logs, _chain = _sqlite_summary(conn)
        _drop(conn, drops, Dialect(SQLITE))
    finally:
        conn.close()
    staged = open_store(f"sqlite:///{staged_db}", create=False)
    try:
        result = digest_mod.verify(staged, progress=progress)
    finally:
        staged.close()
    _check_against_manifest(manifest, result, logs, path)
    # back to one self-contained file (open_store switched it to WAL)
    conn = sqlite3.connect(staged_db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
    finally:
        conn.close()

    # 2. swap it in
    previous: str | None = None
    stamp = _stamp()
    target_conn = None
    if target.exists() and target.stat().st_size > 0:
        try:
            target_conn = sqlite3.connect(target, isolation_level=None, timeout=30)
            target_conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError:
            if target_conn is not None:
                target_conn.close()
            target_conn = None
    if target_conn is not None:
        try:
            existing = _count(target_conn)
            if existing and not force:
                raise RestoreRefused(f"{redact(url)} now holds a log of {existing} events; pass --force to replace it")
            if existing and keep_previous:
                keep = target.with_name(f"{target.name}.pre-restore-{stamp}")
                saved = sqlite3.connect(keep)
                try:
                    target_conn.backup(saved)
                finally:
                    saved.close()
                previous = str(keep)
            source = sqlite3.connect(staged_db)
            try:
                # one step: the target's pages are replaced in one write transaction, which other
                # connections (and the target's WAL) see atomically
                source.backup(target_conn)
            finally:
                source.close()
            if target_conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise BackupError(f"{target} failed quick_check after the restore")
        finally:
            target_conn.close()
    else:
        if target.exists() and target.stat().st_size > 0:
            # not a database any more: keep what is there (with its WAL) aside, then rename in
            keep = target.with_name(f"{target.name}.damaged-{stamp}")
            os.replace(target, keep)
            previous = str(keep)
        for suffix in ("-wal", "-shm", "-journal"):
            side = target.with_name(target.name + suffix)
            if side.exists():
                os.replace(side, target.with_name(f"{target.name}.damaged-{stamp}{suffix}"))
        with open(staged_db, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(staged_db, target)
        _fsync_dir(target.parent)
    return RestoreResult(True, redact(url), SQLITE, logs, result.last_digest, result.to_dict(), previous, drops is not None,
                         time.perf_counter() - started, manifest.to_dict())


def _count(conn: sqlite3.Connection) -> int:
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TRADING_TABLE,)).fetchone() is None:
        return 0
    return int(conn.execute(f"SELECT count(*) FROM {TRADING_TABLE}").fetchone()[0])


def _restore_postgres(url: str, files: dict[str, Path], manifest: Manifest, path: Any, *, force: bool,
                      keep_previous: bool, progress: Any, started: float, drops: DropStatements | None) -> RestoreResult:
    import psycopg

    args, schema = _pg_connect_args(url)
    staging = f"{schema[:40]}_rs_{uuid.uuid4().hex[:8]}"
    # staged as a plain log whatever the URL's layout (`tradestate partitions convert` partitions it again)
    staging_url = _with_schema(PgUrl.parse(url).without("partitions"), staging)
    admin = psycopg.connect(**args, autocommit=True)
    try:
        admin.execute("SET statement_timeout = 0")
        try:
            # 1. load into a staging schema and verify there
            staged = open_store(staging_url, create=True)
            try:
                digest_mod.create_chain_table(staged)
                tables = [m["table"] for m in manifest.members]
                if CHECKPOINTS_TABLE in tables:
                    from . import checkpoints

                    checkpoints.create_table(staged)
                if ARCHIVES_TABLE in tables:
                    from . import archive

                    archive.create_table(staged)
            finally:
                staged.close()
            for member in manifest.members:
                table, columns = member["table"], member["columns"]
                if table not in PG_TABLES:
                    raise BackupDamaged(f"{path}: unknown table {table!r} in the manifest")
                have = _pg_columns(admin.cursor(), staging, table)
                if have != columns:
                    raise RestoreRefused(f"{path}: {table} was backed up with columns {columns}; this version has "
                                         f"{have}")
                cols = ", ".join(_q(c) for c in columns)
                try:
                    with admin.transaction(), admin.cursor().copy(
                            f"COPY {_q(staging)}.{_q(table)} ({cols}) FROM STDIN (FORMAT binary)") as copy, \
                            open(files[member["name"]], "rb") as f:
                        while chunk := f.read(CHUNK):
                            copy.write(chunk)
                except psycopg.Error as e:
                    raise BackupDamaged(f"{path}: {table} does not load ({e})") from e
                n = admin.execute(f"SELECT count(*) FROM {_q(staging)}.{_q(table)}").fetchone()[0]
                if n != member["rows"]:
                    raise BackupDamaged(f"{path}: {table} loaded {n} rows, the manifest says {member['rows']}")
            if CHECKPOINTS_TABLE in [m["table"] for m in manifest.members]:
                admin.execute(
                    f"SELECT setval(pg_get_serial_sequence(%s, 'id'), coalesce(max(id), 1), max(id) IS NOT NULL)"
                    f" FROM {_q(staging)}.{_q(CHECKPOINTS_TABLE)}", (f"{_q(staging)}.{_q(CHECKPOINTS_TABLE)}",))
            logs = {}
            for log in LOG_TABLES:
                head, rows = admin.execute(f"SELECT coalesce(max(position), 0), count(*) FROM {_q(staging)}.{_q(log)}"
                                           ).fetchone()
                logs[log] = {"head": int(head), "rows": int(rows)}
            staged = open_store(staging_url, create=False)
            try:
                result = digest_mod.verify(staged, progress=progress)
            finally:
                staged.close()
            _check_against_manifest(manifest, result, logs, path)

            # 2. the target's objects (schema, sequences, append functions), then the swap
            open_store(url, create=True).close()
            previous = _swap_postgres(admin, schema, staging, logs, force=force, keep_previous=keep_previous, url=url,
                                      drops=drops)
            if ARCHIVES_TABLE in [m["table"] for m in manifest.members]:
                from . import archive

                with open_store(url, create=False) as restored:  # partitioned again, archived versions claimed
                    archive.after_restore(restored)
        finally:
            with suppress(psycopg.Error):
                admin.execute(f"DROP SCHEMA IF EXISTS {_q(staging)} CASCADE")
    finally:
        admin.close()
    return RestoreResult(True, redact(url), POSTGRESQL, logs, result.last_digest, result.to_dict(), previous, drops is not None,
                         time.perf_counter() - started, manifest.to_dict())


def _swap_postgres(conn: Any, schema: str, staging: str, logs: dict[str, dict[str, int]], *, force: bool,
                   keep_previous: bool, url: str, drops: DropStatements | None) -> str | None:
    previous: str | None = None
    with conn.transaction():
        cur = conn.cursor()
        cur.execute("SET LOCAL lock_timeout = '30s'")
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('tradestate-ddl'))")

        def exists(s: str, t: str) -> bool:
            return cur.execute("SELECT to_regclass(%s)", (f"{_q(s)}.{_q(t)}",)).fetchone()[0] is not None

        present = [t for t in PG_TABLES if exists(schema, t)]
        logs_present = [t for t in LOG_TABLES if t in present]
        if logs_present:
            cur.execute("LOCK TABLE " + ", ".join(f"{_q(schema)}.{_q(t)}" for t in logs_present)
                        + " IN ACCESS EXCLUSIVE MODE")
        existing = sum(int(cur.execute(f"SELECT count(*) FROM {_q(schema)}.{_q(t)}").fetchone()[0])
                       for t in logs_present)
        if existing and not force:
            raise RestoreRefused(f"{redact(url)} now holds a log of {existing} events; pass --force to replace it")
        protected = bool(cur.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s",
            (f"{_q(schema)}.{_q(TRADING_TABLE)}", f"{TRADING_TABLE}_append_only")).fetchone()[0])
        if existing and keep_previous:
            previous = f"{schema[:36]}_pre_{_stamp().replace('-', '_').lower()}"
            cur.execute(f"CREATE SCHEMA {_q(previous)}")
            for t in present:
                for c in partitions.companions(cur, schema, t):  # a partitioned log's partitions go too
                    cur.execute(f"ALTER TABLE {_q(schema)}.{_q(c)} SET SCHEMA {_q(previous)}")
                cur.execute(f"ALTER TABLE {_q(schema)}.{_q(t)} SET SCHEMA {_q(previous)}")
        else:
            for t in present:
                for c in partitions.companions(cur, schema, t)[::-1]:  # the versions table, then partitions
                    cur.execute(f"DROP TABLE {_q(schema)}.{_q(c)}")
                cur.execute(f"DROP TABLE {_q(schema)}.{_q(t)}")
        for t in PG_TABLES:
            if exists(staging, t):
                cur.execute(f"ALTER TABLE {_q(staging)}.{_q(t)} SET SCHEMA {_q(schema)}")
        for log in LOG_TABLES:
            head = logs[log]["head"]
            cur.execute("SELECT setval(%s, %s, %s)", (f"{_q(schema)}.{_q(log + '_position_seq')}", max(head, 1),
                                                      head > 0))
        _drop(cur, drops, Dialect(POSTGRESQL, schema))
        if protected:
            for statement in digest_mod.protect_statements(Dialect(POSTGRESQL, schema)):
                cur.execute(statement)
    return previous


__all__ = [
    "BackupDamaged",
    "BackupError",
    "Manifest",
    "RestoreRefused",
    "RestoreResult",
    "backup",
    "read_manifest",
    "restore",
]
