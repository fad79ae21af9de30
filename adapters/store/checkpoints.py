"""Checkpoints: validated snapshots of the whole trading state at a log position.

A row of ``ts_checkpoints`` (beside the log, same database) holds a snapshot document
(``domain/snapshot.py``), the packed ids of the finished orders (``finished``: empty since
snapshot version 3, which counts them instead, so a checkpoint does not grow with the history;
a version 1-2 row's ids still load), the position it covers, the
event id at that position (so a checkpoint of another log — a restored or swapped database — is
recognised) and a blake2b checksum over its content, followed, when a checkpoint key is configured
(``TRADESTATE_CHECKPOINT_KEY``, hex or base64, or ``TRADESTATE_CHECKPOINT_KEY_FILE``), by an
HMAC-SHA256 of position, event id, snapshot version and checksum under that key. The key is never
in the database, so whoever can only INSERT cannot write a checkpoint an engine trusts: with a key
configured, a checkpoint without a valid MAC is refused; without one, a checkpoint is used only if
its accounts' risk state (kill switch, breaker, limits, ramp, block) equals the fold of the log's
account risk events up to its position. Loading also validates it (checksum, schema version,
position not beyond the log head, the event id at its position, no time in the future — later
than both the loading host's clock and the log's own time at its position, the latest
``recorded_at`` up to it, by more than ``MAX_CLOCK_SKEW``, so a checkpoint written before the
store's clock stepped back stays valid —, no absurd quantity or negative price); one that fails is reported and the next older one is tried, then
replay from zero. Checkpoints are a cache: deleting them loses nothing, and the log is never
touched by them. Writing one is an insert of the open state and the recent execution ids only
(``snapshot.EXEC_ID_DAYS``, ``EXEC_ID_ORDERS``), in its own short transaction: appends never wait
for a fold. Snapshots of an
older readable version (``snapshot.READABLE_VERSIONS``) load too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from ...domain import snapshot
from ...domain.errors import InvalidInput
from ...domain.integrity import RISK_TYPES, fold_risk, risk_disagreements
from ...domain.state import TradingState
from . import TRADING_TABLE, VOID_TYPE, Store, as_time, gc_paused
from .sql import read_cursor, write_cursor

TABLE = "ts_checkpoints"
KEEP = 5  # checkpoints kept; older ones are deleted when a new one is written
KEY_ENV = "TRADESTATE_CHECKPOINT_KEY"
KEY_FILE_ENV = "TRADESTATE_CHECKPOINT_KEY_FILE"
MAC_TAG = " hmac-sha256:"  # stored after the checksum, in the same column
MAX_CLOCK_SKEW = timedelta(minutes=5)  # how far a checkpoint's times may be ahead of the reference time
# A partial index of the log's risk events (rare rows): validating an unauthenticated checkpoint
# folds them up to its position, which without it is a scan of the log up to there (12 s at ten
# million events on SQLite). Created with the checkpoint table while the log holds at most
# RISK_INDEX_AUTO_ROWS rows (about a second); on a longer existing log by ``tradestate replay
# index`` (about 15 s at ten million), so that no checkpoint write holds the write lock that long.
RISK_INDEX = "ts_events_risk_types"
RISK_INDEX_AUTO_ROWS = 1_000_000
_RISK_TYPE_LIST = ", ".join(f"'{t}'" for t in RISK_TYPES)  # literal: SQLite matches a partial index by text


@dataclass(frozen=True)
class CheckpointInfo:
    """One stored checkpoint, without its document."""

    id: int
    position: int
    created_at: datetime
    snapshot_version: int
    checksum: str
    size: int  # bytes of document + finished ids (none since snapshot version 3)
    open_orders: int = 0
    finished_orders: int = 0

    @property
    def authenticated(self) -> bool:
        """Whether it carries a MAC (checked against the configured key when loaded)."""
        return MAC_TAG in self.checksum


@dataclass
class Rejected:
    """A checkpoint that failed validation, and why."""

    checkpoint: CheckpointInfo
    reasons: list[str]


@dataclass
class Loaded:
    """What ``load`` found: the state (None: replay from zero), which checkpoint, which were refused."""

    state: TradingState | None
    checkpoint: CheckpointInfo | None
    rejected: list[Rejected] = field(default_factory=list)
    seconds: float = 0.0


# ------------------------------------------------------------------------------ authentication


def parse_key(text: str | bytes, where: str) -> bytes:
    """A checkpoint key from its hex or base64 text (at least 16 bytes)."""
    raw = text.decode("ascii", "replace") if isinstance(text, bytes) else text
    raw = raw.strip()
    key: bytes | None = None
    try:
        key = bytes.fromhex(raw)
    except ValueError:
        try:
            key = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            key = None
    if not key or len(key) < 16:
        raise InvalidInput(f"{where}: a checkpoint key is at least 16 bytes, written in hex or base64")
    return key


def checkpoint_key() -> bytes | None:
    """The configured checkpoint key: ``TRADESTATE_CHECKPOINT_KEY``, else the content of the file
    ``TRADESTATE_CHECKPOINT_KEY_FILE``, else None (no key: checkpoints are cross-checked instead)."""
    text = os.environ.get(KEY_ENV)
    if text:
        return parse_key(text, KEY_ENV)
    path = os.environ.get(KEY_FILE_ENV)
    if path:
        try:
            content = open(path, "rb").read()  # noqa: SIM115 - small, read once
        except OSError as e:
            raise InvalidInput(f"{KEY_FILE_ENV}: cannot read {path}: {e}") from e
        return parse_key(content, f"{KEY_FILE_ENV} ({path})")
    return None


def mac(key: bytes, position: int, event_id: str, version: int, checksum: str) -> str:
    """The HMAC-SHA256 (hex) that authenticates a checkpoint: its position, the event id there,
    its snapshot version and the checksum of its content."""
    message = b"tradestate-checkpoint\x1f%d\x1f%s\x1f%d\x1f%s" % (
        position, event_id.encode(), version, checksum.encode())
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sealed_checksum(key: bytes | None, position: int, event_id: str, version: int, checksum: str) -> str:
    """What the ``checksum`` column holds: the content checksum, then the MAC when there is a key."""
    return checksum if key is None else checksum + MAC_TAG + mac(key, position, event_id, version, checksum)


def _split(stored: str) -> tuple[str, str | None]:
    plain, _, tag = stored.partition(MAC_TAG)
    return plain, (tag or None) if MAC_TAG in stored else None


# ------------------------------------------------------------------------------ database


def _table(store: Store) -> str:
    return store.dialect.name(TABLE)


@contextmanager
def _cursor(store: Store, write: bool) -> Iterator[Any]:
    with (write_cursor(store) if write else read_cursor(store)) as cur:
        yield cur


def create_table(store: Store) -> None:
    """Create ``ts_checkpoints`` if it is not there (``write`` does it), and the risk events'
    index of the log (``RISK_INDEX``: positions of the rows of ``RISK_TYPES``, a few per day) while
    the log is at most ``RISK_INDEX_AUTO_ROWS`` long. The index lets a checkpoint written without a
    key be checked against the log's risk events without reading the whole log, so a warm start
    stays constant in the log's length; a longer existing log gets it from ``tradestate replay
    index``."""
    d = store.dialect
    with _cursor(store, write=True) as cur:
        d.ddl_lock(cur)
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {_table(store)} ("
            f" id {d.type('serial')},"
            " position bigint NOT NULL,"
            " event_id text NOT NULL,"
            f" created_at {d.type('time')} NOT NULL,"
            " snapshot_version integer NOT NULL,"
            " checksum text NOT NULL,"
            " open_orders integer NOT NULL,"
            " finished_orders integer NOT NULL,"
            f" document {d.type('blob')} NOT NULL,"
            f" finished {d.type('blob')} NOT NULL)"
        )
    if not risk_index_exists(store) and store.trading.head() <= RISK_INDEX_AUTO_ROWS:
        create_risk_index(store)


def risk_index_exists(store: Store) -> bool:
    """Whether the log's partial index of risk events (``RISK_INDEX``) is there."""
    d = store.dialect
    with _cursor(store, write=False) as cur:
        if d.is_postgres:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (d.name(RISK_INDEX),))
        else:
            cur.execute("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = ?", (RISK_INDEX,))
        row = cur.fetchone()
    return bool(row and row[0])


def create_risk_index(store: Store) -> None:
    """Create the partial index of the log's risk events if it is not there (a scan of the log)."""
    d = store.dialect
    with _cursor(store, write=True) as cur:
        d.ddl_lock(cur)
        cur.execute(f"CREATE INDEX IF NOT EXISTS {RISK_INDEX} ON {d.name(TRADING_TABLE)} (position)"
                    f" WHERE type IN ({_RISK_TYPE_LIST})")


def _event_id_at(store: Store, position: int) -> str | None:
    if position == 0:
        return ""
    rows = store.trading.read(after=position - 1, limit=1, stop=position)
    if not rows or rows[0].position != position:
        return None
    if rows[0].topic == "$void":
        return "$void"
    return str(orjson.loads(rows[0].state).get("event_id", ""))


def _info(row: tuple[Any, ...]) -> CheckpointInfo:
    cid, position, created_at, version, digest, open_orders, finished_orders, size = row
    if isinstance(created_at, str):
        created_at = datetime.fromisoformat(created_at)
    return CheckpointInfo(cid, position, created_at, version, digest, size, open_orders, finished_orders)


_COLUMNS = "id, position, created_at, snapshot_version, checksum, open_orders, finished_orders"


def table_exists(store: Store) -> bool:
    """Whether ``ts_checkpoints`` is there."""
    with _cursor(store, write=False) as cur:
        return store.dialect.table_exists(cur, TABLE)


def list_checkpoints(store: Store) -> list[CheckpointInfo]:
    """Newest first."""
    if not table_exists(store):
        return []
    length = store.dialect.byte_length
    with _cursor(store, write=False) as cur:
        cur.execute(f"SELECT {_COLUMNS}, {length('document')} + {length('finished')} FROM {_table(store)} "
                    "ORDER BY position DESC, id DESC")
        return [_info(r) for r in cur.fetchall()]


# ------------------------------------------------------------------------------ write


def write(store: Store, state: TradingState, *, now: datetime | None = None, keep: int = KEEP) -> CheckpointInfo:
    """Snapshot ``state`` (which must be the fold of this log up to ``state.position``)."""
    now = now or datetime.now(timezone.utc)
    if state.quarantined_streams or state.quarantined_accounts:
        raise ValueError("the state has quarantined streams or accounts (rows the fold could not apply): a "
                         "checkpoint would not keep them refused, so none is written")
    key = checkpoint_key()
    create_table(store)
    doc, finished = snapshot.take(state)
    data = snapshot.encode(doc)
    event_id = _event_id_at(store, state.position)
    if event_id is None:
        raise ValueError(f"the log has no event at position {state.position}: this state is not of this log")
    digest = sealed_checksum(key, state.position, event_id, snapshot.SNAPSHOT_VERSION,
                             snapshot.checksum(data, finished))
    p = store.dialect.param
    created = store.dialect.time_value(now)
    with _cursor(store, write=True) as cur:
        cur.execute(
            f"INSERT INTO {_table(store)} (position, event_id, created_at, snapshot_version, checksum, open_orders,"
            f" finished_orders, document, finished) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, {p}, {p})",
            (state.position, event_id, created, snapshot.SNAPSHOT_VERSION, digest, len(doc["orders"]),
             doc["finished_orders"], data, finished),
        )
        cur.execute(f"SELECT max(id) FROM {_table(store)}")
        cid = cur.fetchone()[0]
        if keep > 0:
            cur.execute(f"DELETE FROM {_table(store)} WHERE id NOT IN (SELECT id FROM {_table(store)} "
                        f"ORDER BY position DESC, id DESC LIMIT {int(keep)})")
    return CheckpointInfo(cid, state.position, now, snapshot.SNAPSHOT_VERSION, digest, len(data) + len(finished),
                          len(doc["orders"]), doc["finished_orders"])


class Checkpointer:
    """Writes a checkpoint every ``every_events`` events or ``every_seconds`` seconds (whichever
    comes first, and only when the log moved), from a state the caller keeps folded."""

    def __init__(self, store: Store, *, every_events: int = 10_000, every_seconds: float = 60.0, keep: int = KEEP,
                 seal: bool = True):
        if every_events < 1 or every_seconds <= 0:
            raise ValueError("checkpoint interval must be positive (events >= 1, seconds > 0)")
        self.store = store
        self.every_events = every_events
        self.every_seconds = every_seconds
        self.keep = keep
        self.seal = seal
        latest = list_checkpoints(store)
        self.last_position = latest[0].position if latest else 0
        self._last_time = time.monotonic()
        self.written: list[CheckpointInfo] = []

    def due(self, state: TradingState) -> bool:
        """Whether ``state`` is far enough (events or seconds) past the last checkpoint (never
        while it has quarantined streams or accounts: ``write`` refuses those)."""
        if state.quarantined_streams or state.quarantined_accounts:
            return False
        moved = state.position - self.last_position
        return moved >= self.every_events or (moved > 0 and time.monotonic() - self._last_time >= self.every_seconds)

    def maybe(self, state: TradingState) -> CheckpointInfo | None:
        """Write a checkpoint of ``state`` if one is due; the new one, or None."""
        return self.write(state) if self.due(state) else None

    def write(self, state: TradingState) -> CheckpointInfo:
        """Write a checkpoint of ``state`` now (and seal the digest chain up to it, if set)."""
        info = write(self.store, state, keep=self.keep)
        if self.seal:
            from .digest import seal

            seal(self.store, upto=state.position)  # the digest chain keeps up with the checkpoints
        self.last_position = state.position
        self._last_time = time.monotonic()
        self.written.append(info)
        return info


# ------------------------------------------------------------------------------ load


def order_loader(store: Store):  # noqa: ANN201 - a snapshot.OrderLoader
    """Brings a finished order back from its own stream (an indexed read; no rows: no such
    order up to that position)."""

    def load(stream_id: str, upto: int) -> list[tuple[int, str, int, str, bytes, datetime]]:
        return [(e.position, e.originator_id, e.originator_version, e.topic, e.state, e.recorded_at)
                for e in store.trading.read_stream(stream_id) if e.position <= upto]

    return load


def load(store: Store, *, at_or_before: int | None = None, now: datetime | None = None,
         head: int | None = None) -> Loaded:
    """The newest checkpoint that passes validation (at or before ``at_or_before``), restored."""
    started = time.perf_counter()
    now = now or datetime.now(timezone.utc)
    head = store.trading.head() if head is None else head
    key = checkpoint_key()
    result = Loaded(None, None)
    if not store.trading.exists() or not table_exists(store):
        return result
    limit = head if at_or_before is None else min(head, at_or_before)
    p = store.dialect.param
    with _cursor(store, write=False) as cur:
        cur.execute(f"SELECT {_COLUMNS}, 0, event_id FROM {_table(store)} WHERE position <= {p} "
                    "ORDER BY position DESC, id DESC", (limit,))
        candidates = cur.fetchall()
        # the ones beyond the head are refused too (a log that lost events, or another log)
        cur.execute(f"SELECT {_COLUMNS}, 0, event_id FROM {_table(store)} WHERE position > {p} "
                    "ORDER BY position DESC", (head,))
        beyond = cur.fetchall()
    for row in beyond:
        result.rejected.append(Rejected(_info(row[:8]), [f"position {row[1]} is beyond the log head {head}"]))
    for row in candidates:
        info = _info(row[:8])
        with _cursor(store, write=False) as cur:
            sql = f"SELECT document, finished FROM {_table(store)} WHERE id = {p}"
            if store.dialect.is_postgres:  # bytea as its bytes: text format doubles them in hex (60 MB at 10M events)
                cur.execute(sql, (info.id,), binary=True)
            else:
                cur.execute(sql, (info.id,))
            got = cur.fetchone()
        if got is None:  # deleted meanwhile by a newer checkpoint's pruning
            continue
        data, finished = bytes(got[0]), bytes(got[1])
        with gc_paused():
            try:
                doc = orjson.loads(data)
            except orjson.JSONDecodeError:
                doc = None
        reference = reference_time(store, info, doc, now)
        reasons = _check(store, info, row[8], data, finished, head, reference, key)
        if not reasons and doc is None:
            reasons = ["the snapshot document is not JSON"]
        if reasons:
            result.rejected.append(Rejected(info, reasons))
            continue
        with gc_paused():
            reasons = snapshot.problems(doc, position=info.position, head=head, now=reference,
                                        max_clock_skew=MAX_CLOCK_SKEW)
            if reasons:
                result.rejected.append(Rejected(info, reasons))
                continue
            try:
                restored = snapshot.restore(doc, finished)
            except (KeyError, TypeError, ValueError, ArithmeticError) as e:
                result.rejected.append(Rejected(info, [f"cannot be restored: {type(e).__name__}: {e}"]))
                continue
        if key is None:
            disagreements = risk_disagreements(restored, fold_risk(_risk_rows(store, info.position),
                                                                   restored.exchange_tz))
            if disagreements:
                result.rejected.append(Rejected(info, [
                    "not authenticated (no checkpoint key configured) and its risk state disagrees with the log: "
                    + "; ".join(disagreements[:3])]))
                continue
        result.state = restored
        result.checkpoint = info
        break
    result.seconds = time.perf_counter() - started
    return result


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def reference_time(store: Store, info: CheckpointInfo, doc: Any, now: datetime) -> datetime:
    """The time a checkpoint's times may not be ahead of (by more than ``MAX_CLOCK_SKEW``): the
    loading host's clock ``now`` or, when the checkpoint's latest time (``created_at``, its
    document's times) is ahead of that, the log's own time at its position if the log had reached
    it (a stamp at or before its position within ``MAX_CLOCK_SKEW`` of it): a checkpoint written
    before the store's clock stepped back is as valid as the rows it was folded from. Only then
    is the log read, scanning back from the checkpoint's position."""
    latest = _aware(info.created_at)
    claimed = snapshot.latest_time(doc) if isinstance(doc, dict) else None
    if claimed is not None and claimed > latest:
        latest = claimed
    if latest - now <= MAX_CLOCK_SKEW:
        return now
    reached = log_stamp_from(store, info.position, latest - MAX_CLOCK_SKEW)
    return reached if reached is not None and reached > now else now


def log_stamp_from(store: Store, position: int, at: datetime) -> datetime | None:
    """The stamp of the last row at or before ``position`` recorded at or after ``at`` (None:
    the log had not reached ``at`` by then)."""
    d = store.dialect
    p = d.param
    with _cursor(store, write=False) as cur:
        cur.execute(f"SELECT recorded_at FROM {d.name(TRADING_TABLE)} WHERE position <= {p} AND recorded_at >= {p}"
                    f" AND type <> '{VOID_TYPE}' ORDER BY position DESC LIMIT 1", (position, d.time_value(at.astimezone(timezone.utc))))
        row = cur.fetchone()
    return None if row is None else _aware(as_time(row[0]))


def authentication(store: Store, info: CheckpointInfo, key: bytes | None = None) -> str:
    """How ``info`` is authenticated, in words: ``MAC verified``, ``MAC invalid for this key``,
    ``no MAC`` (written without a key), or ``MAC not checked (no key configured)``."""
    plain, tag = _split(info.checksum)
    if tag is None:
        return "no MAC"
    if key is None:
        return "MAC not checked (no key configured)"
    p = store.dialect.param
    with _cursor(store, write=False) as cur:
        cur.execute(f"SELECT event_id FROM {_table(store)} WHERE id = {p}", (info.id,))
        row = cur.fetchone()
    if row is not None and hmac.compare_digest(tag, mac(key, info.position, row[0], info.snapshot_version, plain)):
        return "MAC verified"
    return "MAC invalid for this key"


def _risk_rows(store: Store, upto: int) -> list[tuple[Any, ...]]:
    """The log's account-stream risk events up to ``upto``, in position order (through the
    ``RISK_INDEX`` where it exists: its condition is spelled the same)."""
    p = store.dialect.param
    with _cursor(store, write=False) as cur:
        cur.execute(f"SELECT position, stream_id, stream_version, type, data, recorded_at FROM "
                    f"{store.dialect.name(TRADING_TABLE)} WHERE type IN ({_RISK_TYPE_LIST}) AND stream_id LIKE {p}"
                    f" AND position <= {p} ORDER BY position", ("account-%", upto))
        return [(r[0], r[1], r[2], r[3], bytes(r[4]), as_time(r[5])) for r in cur.fetchall()]


def _check(store: Store, info: CheckpointInfo, event_id: str, data: bytes, finished: bytes, head: int,
           now: datetime, key: bytes | None = None) -> list[str]:
    reasons = []
    plain, tag = _split(info.checksum)
    if snapshot.checksum(data, finished) != plain:
        reasons.append("checksum mismatch: the snapshot's content changed after it was written")
    if info.snapshot_version not in snapshot.READABLE_VERSIONS:
        reasons.append(f"snapshot version {info.snapshot_version} is not one of "
                       f"{', '.join(map(str, snapshot.READABLE_VERSIONS))}")
    if info.position > head:
        reasons.append(f"position {info.position} is beyond the log head {head}")
    elif _event_id_at(store, info.position) != event_id:
        reasons.append(f"the event at position {info.position} is not the one the checkpoint was taken after "
                       "(a checkpoint of another log)")
    created = info.created_at if info.created_at.tzinfo else info.created_at.replace(tzinfo=timezone.utc)
    if created - now > MAX_CLOCK_SKEW:
        reasons.append(f"written in the future ({info.created_at.isoformat()}; neither the loading host's clock "
                       "nor the log's time at its position had reached it)")
    if key is not None:
        if tag is None:
            reasons.append("not authenticated: written without the checkpoint key (no MAC), so anyone who can "
                           "write to the database could have written it")
        elif not hmac.compare_digest(tag, mac(key, info.position, event_id, info.snapshot_version, plain)):
            reasons.append("not authenticated: its MAC does not match the configured checkpoint key (forged, or "
                           "written with another key)")
    return reasons
