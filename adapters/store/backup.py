"""Backups of the log (full, or incremental in a chain), encrypted or not, and restores that
verify before they replace anything.

A backup is one file: an uncompressed tar whose members are, in this order,

* ``manifest.json``: format and schema version, source kind, creation time, ``kind`` ("full" or
  "incremental"), ``chain_id`` (the id of the chain's full backup), ``sequence`` (0 for the full,
  1, 2 ... for its increments), ``previous_sha256`` (the sha256 of the previous link's
  ``manifest.json``; "" for a full), each log's ``from``/``head``/``rows``, the digest chain's last
  sealed position and digest per log, a digest of the last few events below each head
  (``tails``, to tell that a later log still continues this one), the last checkpoint id, and the
  name, size and sha256 of every data member;
* ``manifest.sha256``: the sha256 of ``manifest.json``;
* the data, gzip-compressed. A **full** backup: on SQLite one member, a copy of the whole database
  taken through SQLite's online backup API (a consistent snapshot; writers carry on); on
  PostgreSQL one member per table (``ts_events``, ``ts_market_events``, ``ts_digest_chain``,
  ``ts_checkpoints`` if there), each a binary ``COPY ... TO STDOUT`` taken in one REPEATABLE READ
  snapshot, the logs cut at their contiguous head (an append still in flight is not half in the
  backup). An **increment** (``backup(..., previous=PREV)``) holds only what came after PREV: the
  log rows after PREV's heads, the digest-chain ranges sealed after PREV's, the checkpoints with a
  larger id; on PostgreSQL as binary COPY members (``WHERE position > head``), on SQLite as one
  small SQLite file of just those rows (read through a read-only ``ATTACH`` in one snapshot).
  Before it writes an increment, ``backup`` checks that the live log still continues PREV (its
  digest at PREV's sealed position and the digest of PREV's tail events are the same, its heads
  not lower); a log restored, rewound or altered since is refused with :class:`IncrementRefused`
  (take a full backup). Checkpoints pruned after a backup stay in a restore (they are caches).

With a key (``key=``, 32 bytes, see :mod:`.backup_crypto`) the whole file is encrypted with
AES-256-GCM in the STREAM construction; the header names the key's id, never the key.

The file is written to a temporary name beside the destination, fsynced, and renamed over it.

``restore`` takes one file or a chain (the full, then its increments in order) and checks
everything before it touches the target: every link's manifest checksum and version, the links
(same chain id, sequences 1, 2 ... without a gap, each ``previous_sha256`` equal to the sha256 of
the link before, each log's ``from`` right after the previous head), every member's size and
sha256, the data loaded into a staging place (a temporary SQLite file beside the target / a
staging PostgreSQL schema, the increments applied in order), ``PRAGMA integrity_check`` on
SQLite, the last manifest's heads and the total row counts, the tail digests, and a full verify
of the whole digest chain of the staged data (and its last digest against the last manifest's).
A damaged, truncated, missing, reordered or foreign link is refused with :class:`BackupDamaged`
naming the first bad link and the target is left as it was. Only then is the staged data swapped in:

* SQLite: copied into the target through the online backup API in one step (atomic for other
  connections, and the target's WAL and shared memory stay consistent); a target that is not a
  database any more is moved aside (with its ``-wal``/``-shm``) and the staged file renamed in.
* PostgreSQL: in one transaction, the target's tables are moved into a ``<schema>_pre_<time>``
  schema (or dropped, with ``keep_previous=False``) and the staged tables moved in; the position
  sequences are set to the restored heads.

A target that already holds a log is replaced only with ``force=True``; its previous content is
kept (``<file>.pre-restore-<time>`` / ``<schema>_pre_<time>``) unless ``keep_previous=False``.
The read models (``ts_positions`` ...) are dropped: the projector rebuilds them from the log.

``verify_chain`` re-reads a chain without a database (links, checksums, positions, digest-chain
continuity between manifests); ``find_chain`` picks the newest complete chain among files;
``check_backups`` re-verifies every chain found (``tradestate backup check``).
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

from ...domain.errors import InvalidInput
from . import MARKET_TABLE, TRADING_TABLE, Store, open_store, redact, resolve_url, sqlite_path
from . import digest as digest_mod
from . import backup_crypto as crypto
from . import partitions
from .backup_errors import BackupDamaged, BackupError, BackupKeyError, IncrementRefused, RestoreRefused
from .sql import POSTGRESQL, SQLITE, Dialect, PgUrl, quote, url_kind

FORMAT = "tradestate-backup"
FORMAT_VERSION = 2  # 2: chains (kind, chain_id, sequence, previous_sha256, tails, checkpoints)
READABLE_VERSIONS = (1, 2)
SCHEMA_VERSION = 1  # the log tables' layout (position, stream_id, stream_version, type, data, recorded_at)
CHECKPOINTS_TABLE = "ts_checkpoints"
LOG_TABLES = (TRADING_TABLE, MARKET_TABLE)
ARCHIVES_TABLE = "ts_archives"  # a partitioned log's record of its Parquet archives (archive.py)
PG_TABLES = (TRADING_TABLE, MARKET_TABLE, digest_mod.CHAIN_TABLE, CHECKPOINTS_TABLE, ARCHIVES_TABLE)
SQLITE_MEMBER = "tradestate.sqlite.gz"
SQLITE_INCREMENT_MEMBER = "increment.sqlite.gz"
CHUNK = 1 << 20
TAIL_EVENTS = 256  # events below each head whose digest a later increment checks against the live log
FULL, INCREMENTAL = "full", "incremental"
NOT_STORED = ("path", "size", "manifest_sha256", "key_id")  # Manifest fields known only once read/written



load_key = crypto.load_key


@dataclass
class Manifest:
    """What a backup holds, as written in its ``manifest.json``: the source, its place in a chain,
    each log's first position held, head and row count, the digest chain's tail, the tail digests,
    and the checksum of every member file. ``path``, ``size``, ``manifest_sha256`` (of the stored
    ``manifest.json``) and ``key_id`` ("" when not encrypted) are known once written or read."""

    format: str
    format_version: int
    schema_version: int
    source_kind: str
    source: str
    created_at: str
    logs: dict[str, dict[str, int]]  # table -> {"from", "head", "rows"} (rows held in this file)
    chain: dict[str, dict[str, Any]]  # table -> {"sealed_upto", "last_digest", "unsealed" (events after it)}
    members: list[dict[str, Any]]  # {"name", "table", "columns", "rows", "bytes", "sha256", "raw_sha256", ...}
    tradestate_version: str = ""
    kind: str = FULL
    chain_id: str = ""
    sequence: int = 0
    previous_sha256: str = ""
    tails: dict[str, dict[str, Any]] = field(default_factory=dict)  # table -> {"from", "head", "digest"}
    checkpoints: dict[str, int] = field(default_factory=dict)  # {"from_id", "upto_id"}
    path: str = ""  # where the backup was written (not stored in the file)
    size: int = 0  # bytes of the backup file (not stored in the file)
    manifest_sha256: str = ""  # sha256 of the stored manifest.json (not stored in it)
    key_id: str = ""  # the id of the key the file is encrypted with ("" when it is not; not stored)

    @property
    def heads(self) -> dict[str, int]:
        """Each log's head."""
        return {log: int(info.get("head", 0)) for log, info in self.logs.items()}

    @property
    def encrypted(self) -> bool:
        """Whether the file is encrypted."""
        return bool(self.key_id)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON-ready values."""
        return asdict(self)

    def stored(self) -> bytes:
        """The ``manifest.json`` body written into the file (without the fields not stored)."""
        data = {k: v for k, v in self.to_dict().items() if k not in NOT_STORED}
        return json.dumps(data, indent=2, sort_keys=True).encode()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        """The manifest a backup file stored; unknown keys are ignored, the fields not stored keep
        their defaults."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k not in NOT_STORED}
        return cls(**known)


@dataclass
class ChainVerified:
    """A chain of backups that verified: its links (path, kind, sequence, heads, manifest sha256)
    in order, and the heads and digest-chain tail of its last link."""

    ok: bool
    chain_id: str
    paths: list[str]
    links: list[dict[str, Any]]
    heads: dict[str, int]
    chain: dict[str, dict[str, Any]]
    created_at: str  # of the last link: the newest state the chain restores to
    bytes: int
    seconds: float
    encrypted: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON-ready values."""
        return asdict(self)


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


# ------------------------------------------------------------------------------ one snapshot's facts


class _Snap:
    """The facts a backup records, read through one cursor in one snapshot: on PostgreSQL the
    store's schema, on SQLite the main database or an attached one (``prefix`` "src.")."""

    def __init__(self, cur: Any, *, pg: bool, schema: str = "", prefix: str = "", select_range: Any = None):
        self.cur, self.pg, self.schema, self.prefix = cur, pg, schema, prefix
        self._select_range = select_range
        self._heads: dict[str, tuple[int, int]] = {}
        self._above: dict[str, int] = {}

    def t(self, table: str) -> str:
        """The table's name, qualified."""
        return f"{_q(self.schema)}.{_q(table)}" if self.pg else f"{self.prefix}{table}"

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        """The first row of ``sql`` (``?`` placeholders)."""
        if self.pg:
            sql = sql.replace("?", "%s")
        return self.cur.execute(sql, params).fetchone()

    def exists(self, table: str) -> bool:
        """Whether ``table`` is there."""
        if self.pg:
            return self.one("SELECT to_regclass(?)", (self.t(table),))[0] is not None
        master = f"{self.prefix}sqlite_master"
        return self.one(f"SELECT 1 FROM {master} WHERE type = 'table' AND name = ?", (table,)) is not None

    def archived(self, log: str) -> int:
        """Positions 1..n of the log held by Parquet archives (archive.py), not by its table (0: none)."""
        if not self.pg or not self.exists(ARCHIVES_TABLE):
            return 0
        return int(self.one(f"SELECT coalesce(max(last_position), 0) FROM {self.t(ARCHIVES_TABLE)} WHERE log = ?",
                            (log,))[0])

    def head(self, log: str) -> tuple[int, int]:
        """(head, rows) of the log's contiguous prefix (0, 0 when there is no table). After
        ``above(log, position)`` only the rows above that position are counted (an increment's
        cost follows what is new, not the log's length); the answer is kept for the snapshot."""
        if log in self._heads:
            return self._heads[log]
        above = self._above.get(log, 0)
        if not self.exists(log):
            found = (0, 0)
        elif self.pg:
            if above:
                head, rows = (int(x) for x in self.one(
                    f"SELECT coalesce(max(position), ?), count(*) FROM {self.t(log)} WHERE position > ?",
                    (above, above)))
                found = (head, head) if head - above == rows else _pg_contiguous_head(self.cur, self.t(log),
                                                                                        self.archived(log))
            else:
                found = _pg_contiguous_head(self.cur, self.t(log), self.archived(log))
        else:
            head, rows = self.one(f"SELECT coalesce(max(position), ?), count(*) FROM {self.t(log)} WHERE position > ?",
                                  (above, above))
            found = (int(head), int(rows) + above)
        self._heads[log] = found
        return found

    def above(self, log: str, position: int) -> None:
        """The log is known to hold 1..``position`` (a previous backup's head, checked by
        ``continues``): ``head`` counts only the rows above it."""
        self._above[log] = position
        self._heads.pop(log, None)

    def chain_tail(self, log: str, head: int) -> dict[str, Any]:
        """The last sealed range at or below ``head``: {"sealed_upto", "last_digest"}."""
        if self.exists(digest_mod.CHAIN_TABLE):
            row = self.one(f"SELECT range_end, digest FROM {self.t(digest_mod.CHAIN_TABLE)} WHERE log = ? AND"
                           " range_end <= ? ORDER BY range_start DESC LIMIT 1", (log, head))
            if row:
                return {"sealed_upto": int(row[0]), "last_digest": bytes(row[1]).hex()}
        return {"sealed_upto": 0, "last_digest": ""}

    def digest_at(self, log: str, end: int) -> str | None:
        """The digest of the sealed range ending at ``end`` (None when there is none)."""
        if not self.exists(digest_mod.CHAIN_TABLE):
            return None
        row = self.one(f"SELECT digest FROM {self.t(digest_mod.CHAIN_TABLE)} WHERE log = ? AND range_end = ?",
                       (log, end))
        return bytes(row[0]).hex() if row else None

    def tail_digest(self, log: str, first: int, last: int) -> str:
        """The range digest (from genesis) of the events ``first..last`` ("" when there are none)."""
        if last < first or not self.exists(log):
            return ""
        sql = self._select_range(log)
        if self.pg:
            rows = self.cur.execute(sql, (first, last), binary=True).fetchall()
        else:
            rows = self.cur.execute(sql.replace(f"FROM {log} ", f"FROM {self.t(log)} "), (first, last)).fetchall()
        if len(rows) != last - first + 1:
            return f"missing events ({len(rows)} of {last - first + 1})"
        return digest_mod._hash_rows(rows, digest_mod.GENESIS)[0].hex()

    def tail(self, log: str, head: int, sealed_upto: int) -> dict[str, Any]:
        """The tail digest recorded for ``head``: the last ``TAIL_EVENTS`` events (at least every
        unsealed one up to that many) up to the head."""
        first = max(1, head - TAIL_EVENTS + 1)
        return {"from": first, "head": head, "digest": self.tail_digest(log, first, head)}

    def checkpoint_upto(self) -> int:
        """The largest checkpoint id (0 when none)."""
        if not self.exists(CHECKPOINTS_TABLE):
            return 0
        return int(self.one(f"SELECT coalesce(max(id), 0) FROM {self.t(CHECKPOINTS_TABLE)}")[0])

    def summary(self) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """(logs, chain, tails) of this snapshot."""
        logs: dict[str, dict[str, int]] = {}
        chain: dict[str, dict[str, Any]] = {}
        tails: dict[str, dict[str, Any]] = {}
        for log in LOG_TABLES:
            head, rows = self.head(log)
            logs[log] = {"from": 1, "head": head, "rows": rows}
            chain[log] = self.chain_tail(log, head)
            tails[log] = self.tail(log, head, chain[log]["sealed_upto"])
        return logs, chain, tails

    def continues(self, prev: Manifest, previous: Any, display: str) -> dict[str, int]:
        """Check that this log continues the backup ``prev``; returns each log's head now. Raises
        :class:`IncrementRefused` (the log was restored, rewound or altered since)."""

        def refuse(why: str) -> IncrementRefused:
            return IncrementRefused(
                f"{display} does not continue the previous backup {previous} ({why}): the log was restored, rewound "
                "or altered since; take a full backup (without --previous) to start a new chain")

        heads: dict[str, int] = {}
        for log in LOG_TABLES:
            was = prev.logs.get(log, {}).get("head", 0)
            if self.exists(log) and was and self.one(f"SELECT count(*) FROM {self.t(log)} WHERE position = ?",
                                                     (was,))[0] == 1:
                self.above(log, was)  # checked below: the prefix up to it is the one backed up
            head, _rows = self.head(log)
            if head < was:
                raise refuse(f"{log} ends at {head}, the backup at {was}")
            sealed = prev.chain.get(log, {})
            if sealed.get("sealed_upto"):
                now = self.digest_at(log, sealed["sealed_upto"])
                if now != sealed.get("last_digest"):
                    raise refuse(f"{log}'s digest at position {sealed['sealed_upto']} is "
                                 f"{(now or 'missing')[:16]}, the backup's {sealed.get('last_digest', '')[:16]}")
            tail = prev.tails.get(log)
            if tail and tail.get("digest"):
                now = self.tail_digest(log, tail["from"], tail["head"])
                if now != tail["digest"]:
                    raise refuse(f"{log}'s events {tail['from']}..{tail['head']} differ from the backup's")
            heads[log] = head
        return heads


# ------------------------------------------------------------------------------ backup


def backup(store: Store, path: str | os.PathLike[str], *, seal: bool = False,
           previous: str | os.PathLike[str] | None = None, key: bytes | None = None) -> Manifest:
    """Write a backup of ``store`` to ``path`` (atomically: a temporary file, fsync, rename).

    Without ``previous`` a full backup (a new chain); with ``previous`` (the chain's last file,
    full or incremental) an increment of only what was appended since, refused with
    :class:`IncrementRefused` when the log does not continue it. ``key`` (32 bytes): encrypt the
    file (the previous file is read with the same key).

    Only reads the database (so it runs against a hot standby): the manifest records, per log,
    the last sealed position and digest and the unsealed tail after it (``unsealed``); ``restore``
    seals that tail once the backup is in place. ``seal``: seal the chain first (a write)."""
    dest = Path(path).expanduser().absolute()
    if dest.is_dir():
        raise InvalidInput(f"{dest} is a directory: give a file name for the backup")
    if not dest.parent.is_dir():
        raise InvalidInput(f"directory {dest.parent} does not exist")
    if key is not None:
        key = crypto._check_key(key)
    prev: Manifest | None = None
    if previous is not None:
        prev = read_manifest(previous, key=key)
        if prev.format_version < 2 or not prev.chain_id:
            raise IncrementRefused(f"{previous} was written by an older version (no chain id): take a full backup")
        if prev.source_kind != store.kind:
            raise IncrementRefused(f"{previous} is a {prev.source_kind} backup; this log is {store.kind}: take a full "
                                   "backup")
        if Path(previous).expanduser().absolute() == dest:
            raise InvalidInput(f"the increment would overwrite its previous backup {dest}: give another file name")
    if seal:
        digest_mod.seal(store)
    work = Path(tempfile.mkdtemp(prefix=".tradestate-backup-", dir=dest.parent))
    try:
        if store.kind == SQLITE:
            logs, chain, tails, ckpt, members = (_backup_sqlite(store, work) if prev is None
                                                 else _increment_sqlite(store, work, prev, previous))
        else:
            logs, chain, tails, ckpt, members = _backup_postgres(store, work, prev, previous)
        for log, info in chain.items():
            info["unsealed"] = max(0, logs.get(log, {}).get("head", 0) - info.get("sealed_upto", 0))
        manifest = Manifest(
            format=FORMAT, format_version=FORMAT_VERSION, schema_version=SCHEMA_VERSION, source_kind=store.kind,
            source=store.display_url, created_at=datetime.now(timezone.utc).isoformat(), logs=logs, chain=chain,
            members=members, tradestate_version=_version(), tails=tails, checkpoints=ckpt,
            kind=FULL if prev is None else INCREMENTAL,
            chain_id=uuid.uuid4().hex if prev is None else prev.chain_id,
            sequence=0 if prev is None else prev.sequence + 1,
            previous_sha256="" if prev is None else prev.manifest_sha256,
        )
        body = manifest.stored()
        _write_file(dest, body, work, members, key)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    manifest.path, manifest.size = str(dest), dest.stat().st_size
    manifest.manifest_sha256 = hashlib.sha256(body).hexdigest()
    manifest.key_id = crypto.key_id(key) if key is not None else ""
    return manifest


def _write_file(dest: Path, body: bytes, work: Path, members: list[dict[str, Any]], key: bytes | None) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as raw:
            sink: Any = raw if key is None else crypto.EncryptingWriter(raw, key)
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                _add_bytes(tar, "manifest.json", body)
                _add_bytes(tar, "manifest.sha256", hashlib.sha256(body).hexdigest().encode())
                for member in members:
                    info = tar.gettarinfo(str(work / member["name"]), arcname=member["name"])
                    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                    with open(work / member["name"], "rb") as f:
                        tar.addfile(info, f)
            if key is not None:
                sink.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _sqlite_summary(conn: sqlite3.Connection) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, Any]]]:
    logs, chain, _tails = _sqlite_snap(conn).summary()
    return {log: {"head": i["head"], "rows": i["rows"]} for log, i in logs.items()}, chain


def _sqlite_snap(conn: sqlite3.Connection, prefix: str = "") -> _Snap:
    return _Snap(conn.cursor(), pg=False, prefix=prefix, select_range=_sqlite_select_range)


def _sqlite_select_range(table: str) -> str:
    return digest_mod._Backend.select_range(_SqliteOnly, table)  # type: ignore[arg-type]


class _SqliteOnly:
    """Enough of ``digest._Backend`` for its SQLite ``select_range``."""

    pg = False


def _gzip_file(work: Path, source: Path, name: str) -> dict[str, Any]:
    member = _Member(work, name)
    with open(source, "rb") as f:
        while chunk := f.read(CHUNK):
            member.write(chunk)
    return member.close()


def _backup_sqlite(store: Store, work: Path) -> tuple[Any, Any, Any, Any, list[dict[str, Any]]]:
    copy = work / "tradestate.sqlite"
    dst = sqlite3.connect(copy)
    try:
        store.trading.backup_to(dst)  # type: ignore[attr-defined]  # SQLiteEventLog
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        snap = _sqlite_snap(dst)
        logs, chain, tails = snap.summary()
        upto = snap.checkpoint_upto()
    finally:
        dst.close()
    info = _gzip_file(work, copy, SQLITE_MEMBER) | {"table": None, "format": "sqlite-database"}
    copy.unlink()
    return logs, chain, tails, {"from_id": 1, "upto_id": upto}, [info]


def _increment_sqlite(store: Store, work: Path, prev: Manifest, previous: Any) -> tuple[Any, Any, Any, Any, Any]:
    """Only the rows after ``prev``: one small SQLite file, filled from the source attached
    read-only in one read snapshot (the source is never written)."""
    from urllib.parse import quote as urlquote

    source = Path(sqlite_path(store.url)).expanduser().absolute()
    inc = work / "increment.sqlite"
    conn = sqlite3.connect(f"file:{urlquote(str(inc))}", uri=True, isolation_level=None)
    try:
        conn.execute("ATTACH DATABASE ? AS src", (f"file:{urlquote(str(source))}?mode=ro",))
        conn.execute("BEGIN")
        snap = _sqlite_snap(conn, "src.")
        heads = snap.continues(prev, previous, store.display_url)
        logs, chain, tails = snap.summary()
        tables: dict[str, dict[str, Any]] = {}
        for log in LOG_TABLES:
            was = prev.logs.get(log, {}).get("head", 0)
            logs[log] = {"from": was + 1, "head": heads[log], "rows": heads[log] - was}
            if snap.exists(log):
                tables[log] = _sqlite_copy(conn, log, "position > ? AND position <= ?", (was, heads[log]), "position")
        if snap.exists(digest_mod.CHAIN_TABLE):
            where = " OR ".join("(log = ? AND range_start > ? AND range_end <= ?)" for _ in LOG_TABLES)
            params = tuple(x for log in LOG_TABLES for x in (log, prev.chain.get(log, {}).get("sealed_upto", 0),
                                                              heads[log]))
            tables[digest_mod.CHAIN_TABLE] = _sqlite_copy(conn, digest_mod.CHAIN_TABLE, where, params,
                                                          "log, range_start")
        from_id = prev.checkpoints.get("upto_id", 0) + 1
        upto = max(snap.checkpoint_upto(), from_id - 1)
        if snap.exists(CHECKPOINTS_TABLE):
            tables[CHECKPOINTS_TABLE] = _sqlite_copy(conn, CHECKPOINTS_TABLE, "id >= ? AND id <= ?", (from_id, upto),
                                                     "id")
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE src")
        conn.execute("PRAGMA journal_mode=DELETE")
    finally:
        conn.close()
    for log in LOG_TABLES:
        if tables.get(log, {}).get("rows", 0) != logs[log]["rows"]:
            raise BackupError(f"{store.display_url}: {log} has {tables.get(log, {}).get('rows', 0)} rows after "
                              f"{logs[log]['from'] - 1}, expected {logs[log]['rows']} (a hole in the log?)")
    info = _gzip_file(work, inc, SQLITE_INCREMENT_MEMBER) | {"table": None, "format": "sqlite-rows", "tables": tables}
    inc.unlink()
    return logs, chain, tails, {"from_id": from_id, "upto_id": upto}, [info]


def _sqlite_copy(conn: sqlite3.Connection, table: str, where: str, params: tuple[Any, ...], order: str) -> dict[str, Any]:
    conn.execute(f"CREATE TABLE main.{table} AS SELECT * FROM src.{table} WHERE {where} ORDER BY {order}", params)
    columns = [r[1] for r in conn.execute(f"PRAGMA main.table_info({table})")]
    rows = int(conn.execute(f"SELECT count(*) FROM main.{table}").fetchone()[0])
    return {"columns": columns, "rows": rows}


def _backup_postgres(store: Store, work: Path, prev: Manifest | None,
                     previous: Any) -> tuple[Any, Any, Any, Any, list[dict[str, Any]]]:
    import psycopg

    args, schema = _pg_connect_args(store.url)
    members: list[dict[str, Any]] = []
    select_range = digest_mod._Backend(store).select_range
    with psycopg.connect(**args, autocommit=True) as conn:
        conn.execute("SET idle_in_transaction_session_timeout = 0")
        conn.execute("SET statement_timeout = 0")
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur = conn.cursor()
            snap = _Snap(cur, pg=True, schema=schema, select_range=select_range)
            present = {t for t in PG_TABLES if snap.exists(t)}
            if TRADING_TABLE not in present:
                raise InvalidInput(f"no tradestate log in {store.display_url}")
            if prev is not None:
                snap.continues(prev, previous, store.display_url)
            logs, chain, tails = snap.summary()
            was = {log: 0 if prev is None else prev.logs.get(log, {}).get("head", 0) for log in LOG_TABLES}
            sealed = {log: 0 if prev is None else prev.chain.get(log, {}).get("sealed_upto", 0) for log in LOG_TABLES}
            for log in LOG_TABLES:
                archived = snap.archived(log)
                if prev is not None and archived != prev.logs.get(log, {}).get("archived", 0):
                    raise IncrementRefused(
                        f"{store.display_url}: {log} was archived up to position {archived} since {previous} (which "
                        f"knew {prev.logs.get(log, {}).get('archived', 0)}): take a full backup")
                logs[log] = {"from": was[log] + 1, "head": logs[log]["head"],
                             "rows": logs[log]["head"] - max(was[log], archived)} | (
                    {"archived": archived} if archived else {})
            from_id = 1 if prev is None else prev.checkpoints.get("upto_id", 0) + 1
            upto = max(snap.checkpoint_upto(), from_id - 1)
            for table in PG_TABLES:
                if table not in present or table == ARCHIVES_TABLE and prev is not None:
                    continue
                columns = _pg_columns(cur, schema, table)
                cols = ", ".join(_q(c) for c in columns)
                where, order, params = "", "", ()
                if table in LOG_TABLES:
                    where, order, params = " WHERE position > %s AND position <= %s", " ORDER BY position", (
                        max(was[table], 0), logs[table]["head"])
                elif table == digest_mod.CHAIN_TABLE:
                    where = " WHERE " + " OR ".join(f"(log = '{log}' AND range_start > %s AND range_end <= %s)"
                                                    for log in LOG_TABLES)
                    params = tuple(x for log in LOG_TABLES for x in (sealed[log], logs[log]["head"]))
                    order = " ORDER BY log, range_start"
                elif table == CHECKPOINTS_TABLE:
                    where, order, params = " WHERE id >= %s AND id <= %s", " ORDER BY id", (from_id, upto)
                count = int(cur.execute(f"SELECT count(*) FROM {_q(schema)}.{_q(table)}{where}", params).fetchone()[0])
                if table in LOG_TABLES and count != logs[table]["rows"]:
                    raise BackupError(f"{store.display_url}: {table} has {count} rows in {was[table] + 1}.."
                                      f"{logs[table]['head']}, expected {logs[table]['rows']}")
                member = _Member(work, f"{table}.copy.gz")
                with cur.copy(f"COPY (SELECT {cols} FROM {_q(schema)}.{_q(table)}{where}{order}) TO STDOUT"
                              " (FORMAT binary)", params) as copy:
                    for data in copy:
                        member.write(data)
                members.append(member.close() | {"table": table, "columns": columns, "rows": count,
                                                 "format": "postgresql-copy-binary"})
    return logs, chain, tails, {"from_id": from_id, "upto_id": upto}, members


# ------------------------------------------------------------------------------ reading a backup


def read_manifest(path: str | os.PathLike[str], *, key: bytes | None = None) -> Manifest:
    """The manifest of a backup file, checked against its checksum (the data is not read).
    Raises :class:`BackupDamaged`, or :class:`BackupKeyError` for an encrypted file without its key."""
    return _read_link(path, key, None, data=False)[0]


def verify_link(path: str | os.PathLike[str], *, key: bytes | None = None) -> Manifest:
    """One backup file read whole: its manifest, every data member against its size and sha256,
    the end of the file (and of the encryption stream). Nothing is unpacked to disk. Raises
    :class:`BackupDamaged`, or :class:`BackupKeyError` for a wrong or missing key."""
    return _read_link(path, key, None)[0]


@contextmanager
def _open_stream(path: str | os.PathLike[str], key: bytes | None) -> Iterator[tuple[tarfile.TarFile, Any]]:
    """The backup's tar, read as a stream (decrypted on the fly when the file is encrypted)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise InvalidInput(f"no backup file at {p}")
    try:
        with open(p, "rb") as raw:
            reader = None
            source: Any = raw
            if raw.read(len(crypto.MAGIC)) == crypto.MAGIC:
                raw.seek(0)
                reader = crypto.DecryptingReader(raw, key, p)
                source = io.BufferedReader(reader, CHUNK)
            else:
                raw.seek(0)
            with tarfile.open(fileobj=source, mode="r|") as tar:
                yield tar, reader
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise BackupDamaged(f"{p} is damaged or truncated, or not a tradestate backup ({e}); nothing was restored") \
            from e


def _next_member(tar: tarfile.TarFile, name: str, path: Any) -> tarfile.TarInfo:
    info = tar.next()
    if info is None or info.name != name:
        got = "the end of the file" if info is None else repr(info.name)
        raise BackupDamaged(f"{path}: member {name!r} is missing ({got} in its place: a truncated or foreign file); "
                            "nothing was restored")
    return info


def _member_bytes(tar: tarfile.TarFile, name: str, path: Any) -> bytes:
    f = tar.extractfile(_next_member(tar, name, path))
    if f is None:
        raise BackupDamaged(f"{path}: member {name!r} is not a file")
    return f.read()


def _parse_manifest(body: bytes, expected: bytes, path: Any) -> Manifest:
    if hashlib.sha256(body).hexdigest() != expected.decode(errors="replace").strip():
        raise BackupDamaged(f"{path}: the manifest does not match its checksum (the file was damaged)")
    try:
        data = json.loads(body)
    except ValueError as e:
        raise BackupDamaged(f"{path}: the manifest is not JSON ({e})") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BackupDamaged(f"{path} is not a tradestate backup")
    if data.get("format_version") not in READABLE_VERSIONS or data.get("schema_version") != SCHEMA_VERSION:
        raise RestoreRefused(
            f"{path} is backup format {data.get('format_version')} / log schema {data.get('schema_version')}; "
            f"this version reads format {READABLE_VERSIONS[-1]} / schema {SCHEMA_VERSION}")
    try:
        manifest = Manifest.from_dict(data)
    except TypeError as e:
        raise BackupDamaged(f"{path}: the manifest is incomplete ({e})") from e
    manifest.manifest_sha256 = hashlib.sha256(body).hexdigest()
    return manifest


def _read_link(path: str | os.PathLike[str], key: bytes | None, work: Path | None, *,
               data: bool = True) -> tuple[Manifest, dict[str, Path]]:
    """Read one backup file in order: its manifest (checked), then (``data``) every data member,
    checked against the manifest's size and sha256 and decompressed (into ``work`` when given;
    checked again: size and sha256 of the raw bytes, gzip's own CRC), then the end of the file
    (and of the encryption stream)."""
    out: dict[str, Path] = {}
    with _open_stream(path, key) as (tar, reader):
        body = _member_bytes(tar, "manifest.json", path)
        manifest = _parse_manifest(body, _member_bytes(tar, "manifest.sha256", path), path)
        manifest.path = str(Path(path).expanduser())
        manifest.size = Path(path).expanduser().stat().st_size
        manifest.key_id = crypto.key_id(key) if reader is not None and key is not None else ""
        if not data:
            return manifest, out
        for member in manifest.members:
            name = member["name"]
            if "/" in name or name.startswith("."):
                raise BackupDamaged(f"{path}: bad member name {name!r}")
            f = tar.extractfile(_next_member(tar, name, path))
            if f is None:
                raise BackupDamaged(f"{path}: member {name!r} is not a file")
            out_path = work / name.removesuffix(".gz") if work is not None else None
            _unpack(f, member, out_path, path)
            if out_path is not None:
                out[name] = out_path
        extra = tar.next()
        if extra is not None:
            raise BackupDamaged(f"{path}: member {extra.name!r} is not in the manifest")
        if reader is not None:
            reader.drain()
    return manifest, out


def _unpack(f: Any, member: dict[str, Any], out_path: Path | None, path: Any) -> None:
    name = member["name"]
    stored_sha, raw_sha, n, raw_n = hashlib.sha256(), hashlib.sha256(), 0, 0
    inflate = zlib.decompressobj(wbits=31)
    w = open(out_path, "wb") if out_path is not None else None  # noqa: SIM115 - closed below
    try:
        try:
            while chunk := f.read(CHUNK):
                stored_sha.update(chunk)
                n += len(chunk)
                raw = inflate.decompress(chunk)
                raw_sha.update(raw)
                raw_n += len(raw)
                if w is not None:
                    w.write(raw)
            raw = inflate.flush()
            raw_sha.update(raw)
            raw_n += len(raw)
            if w is not None:
                w.write(raw)
        except zlib.error as e:
            if n != member["bytes"] or stored_sha.hexdigest() != member["sha256"]:
                raise BackupDamaged(f"{path}: member {name!r} does not match its checksum: the file is damaged; "
                                    "nothing was restored") from e
            raise BackupDamaged(f"{path}: member {name!r} does not decompress ({e})") from e
    finally:
        if w is not None:
            w.close()
    if n != member["bytes"] or stored_sha.hexdigest() != member["sha256"]:
        raise BackupDamaged(f"{path}: member {name!r} does not match its checksum ({n} bytes, "
                            f"{member['bytes']} expected): the file is damaged; nothing was restored")
    if not inflate.eof or inflate.unused_data:
        raise BackupDamaged(f"{path}: member {name!r} is not one complete gzip stream")
    if raw_n != member["raw_bytes"] or raw_sha.hexdigest() != member["raw_sha256"]:
        raise BackupDamaged(f"{path}: member {name!r} decompresses to other data than was backed up")


def _link_of(links: list[tuple[Path, Manifest, dict[str, Path]]] | None, log: str | None,
             position: int | None) -> Path | None:
    """The file of the chain that holds ``position`` of ``log`` (None for a single file)."""
    if not links or len(links) < 2 or log is None or position is None:
        return None
    for p, m, _files in links:
        info = m.logs.get(log, {})
        if info.get("from", 1) <= position <= info.get("head", 0):
            return p
    return None


def _check_against_manifest(manifest: Manifest, result: digest_mod.VerifyResult, logs: dict[str, dict[str, int]],
                            path: Any, rows: dict[str, int] | None = None,
                            links: list[tuple[Path, Manifest, dict[str, Path]]] | None = None) -> None:
    """The staged logs against the (last) manifest: heads, row counts (``rows``: the chain's total),
    the digest chain's tail. A bad position is blamed on the link of the chain that holds it."""
    if not result.ok:
        raise BackupDamaged(f"{_link_of(links, result.log, result.first_bad_position) or path}: the backed-up log "
                            f"fails verification: first bad position {result.first_bad_position} ({result.problem}: "
                            f"{result.detail}); nothing was restored")
    for log in LOG_TABLES:
        want = manifest.logs.get(log, {"head": 0, "rows": 0})
        want = {"head": want["head"], "rows": want["rows"] if rows is None else rows[log]}
        if logs.get(log) != want:
            raise BackupDamaged(f"{path}: {log} holds {logs.get(log)} but the manifest says {want}")
        chain = manifest.chain.get(log, {})
        got = result.logs.get(log, {})
        if (got.get("sealed_upto", 0), got.get("last_digest", "")) != (chain.get("sealed_upto", 0),
                                                                        chain.get("last_digest", "")):
            raise BackupDamaged(f"{path}: the digest chain of {log} ends at {got.get('sealed_upto')} "
                                f"({got.get('last_digest', '')[:16]}) but the manifest says {chain}")


def _check_tails(snap: _Snap, manifest: Manifest, path: Any) -> None:
    for log, tail in manifest.tails.items():
        if tail.get("digest") and snap.tail_digest(log, tail["from"], tail["head"]) != tail["digest"]:
            raise BackupDamaged(f"{path}: {log}'s events {tail['from']}..{tail['head']} differ from what was backed "
                                "up (tail digest); nothing was restored")


# ------------------------------------------------------------------------------ chains


def _as_paths(path_or_paths: Any) -> list[Path]:
    if isinstance(path_or_paths, (str, os.PathLike)):
        return [Path(path_or_paths)]
    paths = [Path(p) for p in path_or_paths]
    if not paths:
        raise InvalidInput("no backup file given")
    return paths


def _check_links(links: list[tuple[Path, Manifest]]) -> None:
    """The chain's structure: a full first, then its increments, each right after the one before
    (by sequence, manifest sha256, positions, digest chain). Raises :class:`BackupDamaged` naming
    the first bad link."""
    first_path, first = links[0]
    if first.kind != FULL:
        raise BackupDamaged(f"{first_path}: the chain does not start with a full backup (this is increment "
                            f"{first.sequence} of chain {first.chain_id[:12]}); nothing was restored")
    for (before_path, before), (path, m) in zip(links, links[1:]):
        def bad(why: str) -> BackupDamaged:
            return BackupDamaged(f"{path}: bad link in the chain after {before_path}: {why}; nothing was restored")

        if m.kind != INCREMENTAL:
            raise bad(f"a {m.kind} backup where an increment should follow")
        if m.chain_id != first.chain_id:
            raise bad(f"an increment of another chain ({m.chain_id[:12]}, not {first.chain_id[:12]})")
        if m.source_kind != first.source_kind:
            raise bad(f"a {m.source_kind} backup in a {first.source_kind} chain")
        if m.sequence <= before.sequence:
            raise bad(f"increment {m.sequence} after increment {before.sequence}: out of order")
        if m.sequence != before.sequence + 1:
            raise bad(f"increment {m.sequence} after {before.sequence}: increment {before.sequence + 1} is missing")
        if m.previous_sha256 != before.manifest_sha256:
            raise bad(f"it follows a manifest {m.previous_sha256[:16]}, not {before_path}'s "
                      f"{before.manifest_sha256[:16]}")
        for log in LOG_TABLES:
            was, now = before.logs.get(log, {}), m.logs.get(log, {})
            if now.get("from") != was.get("head", 0) + 1 or now.get("head", 0) < was.get("head", 0):
                raise bad(f"{log} positions {now.get('from')}..{now.get('head')} do not continue "
                          f"..{was.get('head', 0)}")
            if m.chain.get(log, {}).get("sealed_upto", 0) < before.chain.get(log, {}).get("sealed_upto", 0):
                raise bad(f"{log}'s digest chain goes back")
        if m.checkpoints.get("from_id", 1) != before.checkpoints.get("upto_id", 0) + 1:
            raise bad("its checkpoints do not follow the previous link's")


def verify_chain(paths: Any, *, key: bytes | None = None) -> ChainVerified:
    """Re-read a chain (the full first, then its increments in order; or one file) without a
    database: every manifest and member checksum, every link (chain id, sequence without a gap,
    previous manifest sha256, contiguous positions, digest chain not going back) and, encrypted,
    every chunk's authentication. Raises :class:`BackupDamaged` naming the first bad link (its
    path and why), or :class:`BackupKeyError`. The digest chain of the data itself is verified by
    ``restore`` (and ``tradestate drill``) once it is loaded."""
    started = time.perf_counter()
    links: list[tuple[Path, Manifest]] = []
    for p in _as_paths(paths):
        manifest, _ = _read_link(p, key, None)
        links.append((p, manifest))
        _check_links(links)
    last = links[-1][1]
    return ChainVerified(
        ok=True, chain_id=last.chain_id, paths=[str(p) for p, _ in links],
        links=[{"path": str(p), "kind": m.kind, "sequence": m.sequence, "created_at": m.created_at, "heads": m.heads,
                "manifest_sha256": m.manifest_sha256, "bytes": m.size} for p, m in links],
        heads=last.heads, chain={log: dict(c) for log, c in last.chain.items()}, created_at=last.created_at,
        bytes=sum(m.size for _, m in links), seconds=time.perf_counter() - started,
        encrypted=any(m.encrypted for _, m in links))


def _looks_like_a_backup(path: Path) -> bool:
    """Whether the file starts like a backup (a tar whose first member is the manifest, or an
    encrypted backup): other files in a directory of backups are left alone."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return False
    return head.startswith(crypto.MAGIC) or head.startswith(b"manifest.json\0")


def _files(directory_or_paths: Any) -> list[Path]:
    """The files given, and the files in the directories given that start like backups."""
    items = _as_paths(directory_or_paths)
    files: list[Path] = []
    for item in items:
        item = item.expanduser()
        if item.is_dir():
            files.extend(sorted(p for p in item.iterdir() if p.is_file() and not p.name.startswith(".")
                                and _looks_like_a_backup(p)))
        elif item.is_file():
            files.append(item)
        else:
            raise InvalidInput(f"no backup file or directory at {item}")
    return files


def _manifests(files: list[Path], key: bytes | None) -> tuple[list[tuple[Path, Manifest]], list[tuple[Path, str]]]:
    good: list[tuple[Path, Manifest]] = []
    bad: list[tuple[Path, str]] = []
    for f in files:
        try:
            good.append((f, read_manifest(f, key=key)))
        except (BackupError, InvalidInput) as e:
            bad.append((f, str(e)))
    return good, bad


def _chains(manifests: list[tuple[Path, Manifest]]) -> dict[str, list[tuple[Path, Manifest]]]:
    """The files of each chain id (an old-format full is a chain of its own), by sequence."""
    chains: dict[str, list[tuple[Path, Manifest]]] = {}
    for p, m in manifests:
        chains.setdefault(m.chain_id or f"sha256:{m.manifest_sha256}", []).append((p, m))
    for links in chains.values():
        links.sort(key=lambda pm: (pm[1].sequence, pm[1].created_at))
    return chains


def find_chain(directory_or_paths: Any, *, key: bytes | None = None) -> list[Path]:
    """The newest complete chain among the files given or in the directories given: a full and
    the increments that follow it link by link (stopping at the first gap), the chain whose last
    link is newest. Files that are not readable backups are skipped. Raises :class:`BackupError`
    when there is no full backup."""
    manifests, _bad = _manifests(_files(directory_or_paths), key)
    best: list[tuple[Path, Manifest]] = []
    for links in _chains(manifests).values():
        fulls = [pm for pm in links if pm[1].kind == FULL]
        if not fulls:
            continue
        chain = [fulls[0]]
        while True:
            nxt = [pm for pm in links if pm[1].kind == INCREMENTAL and pm[1].sequence == chain[-1][1].sequence + 1
                   and pm[1].previous_sha256 == chain[-1][1].manifest_sha256]
            if not nxt:
                break
            chain.append(nxt[0])
        if not best or chain[-1][1].created_at > best[-1][1].created_at:
            best = chain
    if not best:
        raise BackupError(f"no full backup found in {', '.join(str(p) for p in _as_paths(directory_or_paths))}")
    return [p for p, _ in best]


@dataclass
class CheckReport:
    """``check_backups``: each chain found, verified or not (``problem`` names the first bad link),
    and the files that are not readable backups."""

    ok: bool
    chains: list[dict[str, Any]]
    unreadable: list[dict[str, str]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON-ready values."""
        return asdict(self)


def check_backups(directory_or_paths: Any, *, key: bytes | None = None) -> CheckReport:
    """Re-verify every chain among the files given or in the directories given
    (:func:`verify_chain` on each, its links ordered by sequence); a chain with a missing or bad
    link, an increment without its full, or an unreadable file makes ``ok`` False."""
    started = time.perf_counter()
    manifests, bad = _manifests(_files(directory_or_paths), key)
    chains: list[dict[str, Any]] = []
    for chain_id, links in _chains(manifests).items():
        entry: dict[str, Any] = {"chain_id": chain_id, "paths": [str(p) for p, _ in links], "ok": False,
                                 "problem": "", "heads": {}, "created_at": links[-1][1].created_at}
        try:
            verified = verify_chain([p for p, _ in links], key=key)
        except (BackupError, InvalidInput) as e:
            entry["problem"] = str(e)
        else:
            entry.update(ok=True, heads=verified.heads, links=len(links), bytes=verified.bytes,
                         created_at=verified.created_at)
        chains.append(entry)
    unreadable = [{"path": str(p), "problem": why} for p, why in bad]
    ok = bool(chains) and all(c["ok"] for c in chains) and not unreadable
    return CheckReport(ok, chains, unreadable, time.perf_counter() - started)


# ------------------------------------------------------------------------------ restore


DropStatements = Callable[[Dialect], Iterable[str]]


def restore(url: str | None, path_or_paths: Any, *, key: bytes | None = None, force: bool = False,
            keep_previous: bool = True, progress: digest_mod.Progress | None = None,
            extra_drop: DropStatements | None = None) -> RestoreResult:
    """Restore the backup at ``path_or_paths`` (one file, or a chain: the full first, then its
    increments in order) into the database at ``url``, verifying the whole chain first (see
    module doc). ``key``: for encrypted files.

    ``extra_drop(dialect)`` gives statements (``DROP ... IF EXISTS``) for tables derived from the
    log that the restored log would contradict, such as read models: they run in the swap
    transaction, so the derived tables are gone exactly when the new log is in place."""
    started = time.perf_counter()
    url = resolve_url(url)
    kind = url_kind(url)
    drops = extra_drop
    paths = _as_paths(path_or_paths)
    manifests = [(p, read_manifest(p, key=key)) for p in paths]
    _check_links(manifests)
    first_path, first = manifests[0]
    if first.source_kind != kind:
        raise RestoreRefused(f"{first_path} is a {first.source_kind} backup; restoring it into {kind} is not "
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
        links: list[tuple[Path, Manifest, dict[str, Path]]] = []
        for i, (p, m) in enumerate(manifests):
            (work / str(i)).mkdir()
            read, files = _read_link(p, key, work / str(i))
            if read.manifest_sha256 != m.manifest_sha256:
                raise BackupDamaged(f"{p} changed while it was being read; nothing was restored")
            links.append((p, read, files))
        where: Any = first_path if len(links) == 1 else (
            f"the chain {first_path} + {len(links) - 1} increment(s) up to {links[-1][0]}")
        if kind == SQLITE:
            result = _restore_sqlite(url, target, links, where, force=force, keep_previous=keep_previous,
                                     progress=progress, started=started, drops=drops)
        else:
            result = _restore_postgres(url, links, where, force=force, keep_previous=keep_previous,
                                       progress=progress, started=started, drops=drops)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _seal_restored(url, result)


def _chain_rows(links: list[tuple[Path, Manifest, dict[str, Path]]]) -> dict[str, int]:
    """Each log's rows over the whole chain."""
    return {log: sum(m.logs.get(log, {}).get("rows", 0) for _, m, _f in links) for log in LOG_TABLES}


def _apply_sqlite_increment(conn: sqlite3.Connection, inc: Path, m: Manifest, path: Any) -> None:
    """Insert one increment's rows into the staged database (one transaction)."""
    if len(m.members) != 1 or m.members[0].get("format") != "sqlite-rows":
        raise BackupDamaged(f"{path}: not a SQLite increment (members {[x.get('name') for x in m.members]})")
    tables: dict[str, dict[str, Any]] = m.members[0].get("tables", {})
    conn.execute("ATTACH DATABASE ? AS inc", (str(inc),))
    try:
        try:
            if conn.execute("PRAGMA inc.integrity_check").fetchall() != [("ok",)]:
                raise BackupDamaged(f"{path}: the increment's rows fail integrity_check; nothing was restored")
            conn.execute("BEGIN")
            for table, info in tables.items():
                if table not in PG_TABLES:
                    raise BackupDamaged(f"{path}: unknown table {table!r} in the manifest")
                have = [r[1] for r in conn.execute(f"PRAGMA inc.table_info({table})")]
                if have != info["columns"]:
                    raise BackupDamaged(f"{path}: {table} holds columns {have}, the manifest says {info['columns']}")
                main = {r[1] for r in conn.execute(f"PRAGMA main.table_info({table})")}
                if not set(have) <= main:
                    raise RestoreRefused(f"{path}: {table} was backed up with columns {have}; this version has "
                                         f"{sorted(main)}")
                cols = ", ".join(have)
                order = "position" if table in LOG_TABLES else "log, range_start" if table != CHECKPOINTS_TABLE else "id"
                n = conn.execute(f"INSERT INTO main.{table} ({cols}) SELECT {cols} FROM inc.{table} ORDER BY {order}"
                                 ).rowcount
                if n != info["rows"]:
                    raise BackupDamaged(f"{path}: {table} loaded {n} rows, the manifest says {info['rows']}")
            for log in LOG_TABLES:
                if tables.get(log, {}).get("rows", 0) != m.logs.get(log, {}).get("rows", 0):
                    raise BackupDamaged(f"{path}: {log} holds {tables.get(log, {}).get('rows', 0)} rows, the manifest "
                                        f"says {m.logs.get(log, {}).get('rows', 0)}")
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as e:
            raise BackupDamaged(f"{path}: the increment does not apply to the links before it ({e}); nothing was "
                                "restored") from e
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
    finally:
        conn.execute("DETACH DATABASE inc")


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


def _restore_sqlite(url: str, target: Path, links: list[tuple[Path, Manifest, dict[str, Path]]], path: Any, *,
                    force: bool, keep_previous: bool, progress: Any, started: float,
                    drops: DropStatements | None) -> RestoreResult:
    staged_db = links[0][2][SQLITE_MEMBER]
    manifest = links[-1][1]
    # 1. the staged copy: a sound database, the increments applied, the last manifest's heads, a
    # chain that verifies whole
    conn = sqlite3.connect(staged_db, isolation_level=None)
    try:
        try:
            check = conn.execute("PRAGMA integrity_check").fetchall()
        except sqlite3.DatabaseError as e:
            raise BackupDamaged(f"{links[0][0]}: the backed-up database is not readable ({e})") from e
        if check != [("ok",)]:
            raise BackupDamaged(f"{links[0][0]}: the backed-up database fails integrity_check: {check[:3]}")
        needed = {t for _, m, _f in links[1:] for t in m.members[0].get("tables", {})} if len(links) > 1 else set()
        missing = {t for t in needed if not _sqlite_snap(conn).exists(t)}
    finally:
        conn.close()
    if missing:
        with open_store(f"sqlite:///{staged_db}", create=False) as staged:
            if digest_mod.CHAIN_TABLE in missing:
                digest_mod.create_chain_table(staged)
            if CHECKPOINTS_TABLE in missing:
                from . import checkpoints

                checkpoints.create_table(staged)
    conn = sqlite3.connect(staged_db, isolation_level=None)
    try:
        for inc_path, m, files in links[1:]:
            if SQLITE_INCREMENT_MEMBER not in files:
                raise BackupDamaged(f"{inc_path}: not a SQLite increment")
            _apply_sqlite_increment(conn, files[SQLITE_INCREMENT_MEMBER], m, inc_path)
        logs, _chain = _sqlite_summary(conn)
        _check_tails(_sqlite_snap(conn), manifest, path)
        _drop(conn, drops, Dialect(SQLITE))
    finally:
        conn.close()
    staged = open_store(f"sqlite:///{staged_db}", create=False)
    try:
        result = digest_mod.verify(staged, progress=progress)
    finally:
        staged.close()
    _check_against_manifest(manifest, result, logs, path, _chain_rows(links), links)
    previous = _swap_sqlite(url, target, staged_db, force=force, keep_previous=keep_previous)
    return RestoreResult(True, redact(url), SQLITE, logs, result.last_digest, result.to_dict(), previous, drops is not None,
                         time.perf_counter() - started, manifest.to_dict())


def _swap_sqlite(url: str, target: Path, staged_db: Path, *, force: bool, keep_previous: bool) -> str | None:
    """Put the verified database ``staged_db`` in place of ``target`` (restore's and migrate's
    swap): in one step through the backup API into a readable target (its log kept aside first,
    unless ``keep_previous=False``), else by rename (anything unreadable there moved aside).
    Returns where the replaced content was kept (None: nothing kept)."""
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
    return previous


def _count(conn: sqlite3.Connection) -> int:
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TRADING_TABLE,)).fetchone() is None:
        return 0
    return int(conn.execute(f"SELECT count(*) FROM {TRADING_TABLE}").fetchone()[0])


def _restore_postgres(url: str, links: list[tuple[Path, Manifest, dict[str, Path]]], path: Any, *, force: bool,
                      keep_previous: bool, progress: Any, started: float, drops: DropStatements | None) -> RestoreResult:
    import psycopg

    manifest = links[-1][1]
    args, schema = _pg_connect_args(url)
    staging = f"{schema[:40]}_rs_{uuid.uuid4().hex[:8]}"
    # staged as a plain log whatever the URL's layout (`tradestate partitions convert` partitions it again)
    staging_url = _with_schema(PgUrl.parse(url).without("partitions"), staging)
    tables = {m["table"] for _, lm, _f in links for m in lm.members}
    admin = psycopg.connect(**args, autocommit=True)
    try:
        admin.execute("SET statement_timeout = 0")
        try:
            # 1. load the full, then each increment, into a staging schema and verify there
            staged = open_store(staging_url, create=True)
            try:
                digest_mod.create_chain_table(staged)
                if CHECKPOINTS_TABLE in tables:
                    from . import checkpoints

                    checkpoints.create_table(staged)
                if ARCHIVES_TABLE in tables:
                    from . import archive

                    archive.create_table(staged)
                select_range = digest_mod._Backend(staged).select_range
            finally:
                staged.close()
            for link_path, lm, files in links:
                for member in lm.members:
                    _pg_load(admin, staging, member, files, link_path)
            if CHECKPOINTS_TABLE in tables:
                admin.execute(
                    f"SELECT setval(pg_get_serial_sequence(%s, 'id'), coalesce(max(id), 1), max(id) IS NOT NULL)"
                    f" FROM {_q(staging)}.{_q(CHECKPOINTS_TABLE)}", (f"{_q(staging)}.{_q(CHECKPOINTS_TABLE)}",))
            logs = {}
            for log in LOG_TABLES:
                head, rows = admin.execute(f"SELECT coalesce(max(position), 0), count(*) FROM {_q(staging)}.{_q(log)}"
                                           ).fetchone()
                logs[log] = {"head": int(head), "rows": int(rows)}
            _check_tails(_Snap(admin.cursor(), pg=True, schema=staging, select_range=select_range), manifest, path)
            staged = open_store(staging_url, create=False)
            try:
                result = digest_mod.verify(staged, progress=progress)
            finally:
                staged.close()
            _check_against_manifest(manifest, result, logs, path, _chain_rows(links), links)

            # 2. the target's objects (schema, sequences, append functions), then the swap
            open_store(url, create=True).close()
            previous = _swap_postgres(admin, schema, staging, logs, force=force, keep_previous=keep_previous, url=url,
                                      drops=drops)
            if ARCHIVES_TABLE in tables:
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


def _pg_load(admin: Any, staging: str, member: dict[str, Any], files: dict[str, Path], path: Any) -> None:
    """COPY one member into its staging table; its row count must be the manifest's."""
    import psycopg

    table, columns = member.get("table"), member.get("columns")
    if table not in PG_TABLES or member["name"] not in files:
        raise BackupDamaged(f"{path}: unknown table {table!r} in the manifest")
    have = _pg_columns(admin.cursor(), staging, table)
    if have != columns:
        raise RestoreRefused(f"{path}: {table} was backed up with columns {columns}; this version has {have}")
    cols = ", ".join(_q(c) for c in columns)
    before = admin.execute(f"SELECT count(*) FROM {_q(staging)}.{_q(table)}").fetchone()[0]
    try:
        with admin.transaction(), admin.cursor().copy(
                f"COPY {_q(staging)}.{_q(table)} ({cols}) FROM STDIN (FORMAT binary)") as copy, \
                open(files[member["name"]], "rb") as f:
            while chunk := f.read(CHUNK):
                copy.write(chunk)
    except psycopg.Error as e:
        raise BackupDamaged(f"{path}: {table} does not load (or overlaps the links before it): {e}; nothing was "
                            "restored") from e
    n = admin.execute(f"SELECT count(*) FROM {_q(staging)}.{_q(table)}").fetchone()[0] - before
    if n != member["rows"]:
        raise BackupDamaged(f"{path}: {table} loaded {n} rows, the manifest says {member['rows']}")


def _swap_postgres(conn: Any, schema: str, staging: str, logs: dict[str, dict[str, int]], *, force: bool,
                   keep_previous: bool, url: str, drops: DropStatements | None,
                   tables: tuple[str, ...] = PG_TABLES) -> str | None:
    """In one transaction: the target's ``tables`` moved to a kept-aside schema (or dropped), the
    staged ones moved in, the position sequences set to ``logs``' heads (also ``migrate``'s swap)."""
    from .postgres import JSON_VIEW_SUFFIX, json_view_statement

    previous: str | None = None
    with conn.transaction():
        cur = conn.cursor()
        cur.execute("SET LOCAL lock_timeout = '30s'")
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('tradestate-ddl'))")

        def exists(s: str, t: str) -> bool:
            return cur.execute("SELECT to_regclass(%s)", (f"{_q(s)}.{_q(t)}",)).fetchone()[0] is not None

        present = [t for t in tables if exists(schema, t)]
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
        for log in LOG_TABLES:  # the payload views depend on the tables: made again below, on the new ones
            cur.execute(f"DROP VIEW IF EXISTS {_q(schema)}.{_q(log + JSON_VIEW_SUFFIX)}")
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
        for t in tables:
            if exists(staging, t):
                cur.execute(f"ALTER TABLE {_q(staging)}.{_q(t)} SET SCHEMA {_q(schema)}")
        for log in LOG_TABLES:
            head = logs[log]["head"]
            cur.execute("SELECT setval(%s, %s, %s)", (f"{_q(schema)}.{_q(log + '_position_seq')}", max(head, 1),
                                                      head > 0))
            if exists(schema, log):
                cur.execute(json_view_statement(schema, log))
        _drop(cur, drops, Dialect(POSTGRESQL, schema))
        if protected:
            for statement in digest_mod.protect_statements(Dialect(POSTGRESQL, schema)):
                cur.execute(statement)
    return previous


__all__ = [
    "BackupDamaged",
    "BackupError",
    "BackupKeyError",
    "ChainVerified",
    "CheckReport",
    "IncrementRefused",
    "Manifest",
    "RestoreRefused",
    "RestoreResult",
    "backup",
    "check_backups",
    "find_chain",
    "load_key",
    "read_manifest",
    "restore",
    "verify_chain",
]
