"""Engine leases: one active engine per engine id, fenced by an epoch that only grows.

An engine takes the lease of its engine id (``Leases.acquire``), renews it well within its
duration, and appends with a ``Fence`` (engine id, epoch): the store refuses, atomically with the
append, any append whose epoch is no longer current or whose lease ran out (``NotLeader``). A
standby takes the lease over once it expired or was released; the deposed engine, whenever it
wakes up, can no longer append.

Why a table with row locks, rather than advisory locks or events: the check must be part of each
append's own transaction and see the holder as of the moment the append commits. On PostgreSQL a
fenced append locks the engine's lease row ``FOR SHARE`` inside its INSERT: if a takeover's update
commits first, PostgreSQL re-checks the append's condition against the new row (which names a
newer epoch) and the append inserts nothing. A takeover locks the row ``FOR UPDATE``, so it waits
for the fenced appends already under way and draws its own log position after theirs: the log
reads epoch by epoch, each ``LeaseAcquired`` after every append of the epochs before it. An
advisory lock would be taken after the statement's snapshot, so a takeover committed meanwhile
would go unseen; leases as events would make every renewal a fact in the log. On SQLite the
file's write lock serialises appends and takeovers anyway, and the check is a read inside it.

Renewals rewrite the row (they are not facts). Every change of holder is an event in the log,
appended in the same transaction as the row change: ``LeaseAcquired``, ``LeaseReleased`` and
``LeaseExpired`` (recorded once per epoch by whichever process notices first). The callers build
those events; this module only knows their stream and bytes.

Expiry is measured by the store's clock (PostgreSQL's ``clock_timestamp()``; on SQLite the host's,
which every process on one file shares), never by the engine's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from ...domain.errors import ConcurrencyConflict, LeaseHeld, NotLeader
from .base import new_event
from .sql import Dialect

LEASE_TABLE = "ts_leases"
# Standbys check in here (not in ts_leases: a standby holds nothing; this is only for the operator view).
STANDBY_TABLE = "ts_lease_standbys"


@dataclass(frozen=True)
class Fence:
    """What a fenced append carries: the engine id, the epoch its writer holds, and the holder
    that took it. The holder is checked too: after an asynchronous failover lost a takeover, the
    new primary may hand the same epoch number to another holder; the old one stays refused."""

    engine_id: str
    epoch: int
    holder: str


@dataclass(frozen=True)
class Lease:
    """One engine id's lease as the store holds it, read at ``now`` (the store's clock). Epoch 0:
    never held."""

    engine_id: str
    epoch: int
    holder: str
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime
    released: bool
    expiry_recorded: bool
    now: datetime

    @property
    def live(self) -> bool:
        """Held and renewed within its duration: no one else may take it."""
        return self.epoch > 0 and not self.released and self.expires_at > self.now

    @property
    def state(self) -> str:
        """``active``, ``expired`` (not renewed in time: its holder is dead, hung or cut off),
        ``released`` (handed back cleanly) or ``never`` (never held)."""
        if self.epoch == 0:
            return "never"
        if self.released:
            return "released"
        return "active" if self.expires_at > self.now else "expired"

    @property
    def renewal_age(self) -> float:
        """Seconds since the holder last renewed (or took) the lease, by the store's clock."""
        return max((self.now - self.renewed_at).total_seconds(), 0.0)

    @property
    def expires_in(self) -> float:
        """Seconds until the lease runs out unless renewed (negative: expired that long ago)."""
        return (self.expires_at - self.now).total_seconds()

    def as_dict(self) -> dict[str, Any]:
        return {
            "engine_id": self.engine_id, "epoch": self.epoch, "holder": self.holder, "state": self.state,
            "acquired_at": self.acquired_at.isoformat(), "renewed_at": self.renewed_at.isoformat(),
            "expires_at": self.expires_at.isoformat(), "renewal_age_seconds": round(self.renewal_age, 3),
            "expires_in_seconds": round(self.expires_in, 3), "expiry_recorded": self.expiry_recorded,
        }


@dataclass(frozen=True)
class StandbySeen:
    """A standby of ``engine_id`` as it last checked in (``last_seen``), read at ``now``."""

    engine_id: str
    holder: str
    last_seen: datetime
    now: datetime

    @property
    def age(self) -> float:
        """Seconds since the standby last checked in, by the store's clock."""
        return max((self.now - self.last_seen).total_seconds(), 0.0)


# Builds the event a lease change appends: (type name, JSON bytes), given the lease before the
# change (None: no row yet) and the epoch the change is about.
LeaseEvent = Callable[["Lease | None", int], tuple[str, bytes]]

_COLUMNS = "engine_id, epoch, holder, acquired_at, renewed_at, expires_at, released, expiry_recorded"
_EPOCH_ZERO = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _unix(at: datetime) -> float:
    return at.timestamp()


def _from_unix(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


class Leases:
    """The lease table of one store (``ts_leases`` beside the log), and the lease changes that are
    also events in its trading log. Every write is one transaction bounded like an append
    (``EventLog.bounded_write``)."""

    def __init__(self, log: Any, dialect: Dialect):
        self.log = log
        self.dialect = dialect
        self.table = self.dialect.name(LEASE_TABLE)
        self._pg = self.dialect.is_postgres
        p = self.dialect.param
        self._lock = " FOR UPDATE" if self._pg else ""
        self._select = f"SELECT {_COLUMNS} FROM {self.table} WHERE engine_id = {p}"

    @classmethod
    def of(cls, store: Any) -> Leases:
        """The leases of an open ``Store`` (its trading log is the one fenced)."""
        return cls(store.trading, store.dialect)

    # ------------------------------------------------------------------------ reading
    def exists(self) -> bool:
        """Whether the lease table is there (nothing is created)."""
        with self.log.transaction() as cur:
            return self.dialect.table_exists(cur, LEASE_TABLE)

    def get(self, engine_id: str) -> Lease | None:
        """The lease of ``engine_id`` (None: never asked for)."""
        if not self.exists():
            return None
        with self.log.transaction() as cur:
            now = self._now(cur)
            cur.execute(self._select, (engine_id,))
            row = cur.fetchone()
        return self._lease(row, now) if row else None

    def all(self) -> list[Lease]:
        """Every engine id's lease, by engine id."""
        if not self.exists():
            return []
        with self.log.transaction() as cur:
            now = self._now(cur)
            cur.execute(f"SELECT {_COLUMNS} FROM {self.table} ORDER BY engine_id")
            rows = cur.fetchall()
        return [self._lease(r, now) for r in rows]

    # ------------------------------------------------------------------------ writing
    def ensure(self) -> None:
        """Create the lease table if it is not there (no catalog write when it is)."""
        if self.exists():
            return
        time_type = "timestamptz" if self._pg else "REAL"
        flag = "boolean" if self._pg else "INTEGER"
        with self.log.transaction(write=True) as cur:
            self.dialect.ddl_lock(cur)
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} ("
                " engine_id text PRIMARY KEY, epoch bigint NOT NULL, holder text NOT NULL,"
                f" acquired_at {time_type} NOT NULL, renewed_at {time_type} NOT NULL,"
                f" expires_at {time_type} NOT NULL, released {flag} NOT NULL,"
                f" expiry_recorded {flag} NOT NULL)"
            )

    def acquire(self, engine_id: str, holder: str, seconds: float, *, stream: str, event: LeaseEvent,
                attempts: int = 5) -> Lease:
        """Take the lease of ``engine_id`` for ``holder`` with a new epoch, if no other holder's
        lease is live (else ``LeaseHeld``), and append ``event(previous lease, new epoch)`` to
        ``stream`` in the same transaction. Waits for fenced appends of the previous epoch that
        are under way, so the event's position follows theirs."""
        if seconds <= 0:
            raise ValueError("a lease lasts a positive number of seconds")
        self.ensure()
        p = self.dialect.param
        for _ in range(attempts):
            try:
                with self.log.bounded_write() as cur:
                    # The row exists before it is locked, so two first acquirers queue on it.
                    never = self._time(_EPOCH_ZERO)
                    cur.execute(
                        f"INSERT INTO {self.table} ({_COLUMNS}) VALUES ({p}, 0, '', {p}, {p}, {p}, {self._true}, "
                        f"{self._true}) ON CONFLICT (engine_id) DO NOTHING", (engine_id, never, never, never))
                    cur.execute(self._select + self._lock, (engine_id,))
                    previous = self._lease(cur.fetchone(), self._now(cur))
                    if previous.live and previous.holder != holder:
                        raise LeaseHeld(engine_id, previous.holder, previous.epoch, previous.expires_in)
                    epoch = previous.epoch + 1
                    now = self._now(cur)
                    cur.execute(
                        f"UPDATE {self.table} SET epoch = {p}, holder = {p}, acquired_at = {p}, renewed_at = {p},"
                        f" expires_at = {p}, released = {self._false}, expiry_recorded = {self._false}"
                        f" WHERE engine_id = {p}",
                        (epoch, holder, self._time(now), self._time(now),
                         self._time(now + timedelta(seconds=seconds)), engine_id))
                    self._append(cur, stream, event(None if previous.epoch == 0 else previous, epoch))
                break
            except ConcurrencyConflict:
                continue  # another process appended to the engine's stream meanwhile: read again
        else:
            raise ConcurrencyConflict(f"the stream of engine {engine_id!r} kept changing while taking its lease")
        lease = self.get(engine_id)
        assert lease is not None
        return lease

    def renew(self, fence: Fence, seconds: float) -> Lease:
        """Extend the lease of ``fence`` to ``seconds`` from now (the store's clock); ``NotLeader``
        if its epoch is no longer current, or it expired or was released (an expired lease is not
        renewed: someone may already be recovering in its place; take it again instead)."""
        p = self.dialect.param
        with self.log.bounded_write() as cur:
            now = self._now(cur)
            cur.execute(
                f"UPDATE {self.table} SET renewed_at = {p}, expires_at = {p}"
                f" WHERE engine_id = {p} AND epoch = {p} AND holder = {p} AND released = {self._false}"
                f" AND expires_at > {p}",
                (self._time(now), self._time(now + timedelta(seconds=seconds)), fence.engine_id, fence.epoch,
                 fence.holder, self._time(now)))
            renewed = cur.rowcount == 1
        if not renewed:
            raise NotLeader(fence.engine_id, fence.epoch, self.why_not(fence))
        lease = self.get(fence.engine_id)
        assert lease is not None
        return lease

    def release(self, fence: Fence, *, stream: str, event: LeaseEvent) -> bool:
        """Hand the lease of ``fence`` back (a clean stop) and append ``event(lease, epoch)``; a
        standby may take it at once. False (nothing written) if that epoch is no longer current
        or already released."""
        p = self.dialect.param
        for _ in range(3):
            try:
                with self.log.bounded_write() as cur:
                    cur.execute(self._select + self._lock, (fence.engine_id,))
                    row = cur.fetchone()
                    if row is None:
                        return False
                    now = self._now(cur)
                    lease = self._lease(row, now)
                    if lease.epoch != fence.epoch or lease.holder != fence.holder or lease.released:
                        return False
                    cur.execute(f"UPDATE {self.table} SET released = {self._true}, expires_at = {p}"
                                f" WHERE engine_id = {p}", (self._time(now), fence.engine_id))
                    self._append(cur, stream, event(lease, lease.epoch))
                return True
            except ConcurrencyConflict:
                continue
        return False

    def record_expiry(self, engine_id: str, *, stream: str, event: LeaseEvent) -> Lease | None:
        """If the lease of ``engine_id`` has run out (not renewed, not released) and no one has
        recorded it yet, mark it and append ``event(lease, epoch)``; returns that lease (None:
        nothing to record). Many watchers may call this: one records it."""
        p = self.dialect.param
        for _ in range(3):
            try:
                with self.log.bounded_write() as cur:
                    cur.execute(self._select + self._lock, (engine_id,))
                    row = cur.fetchone()
                    if row is None:
                        return None
                    lease = self._lease(row, self._now(cur))
                    if lease.state != "expired" or lease.expiry_recorded:
                        return None
                    cur.execute(f"UPDATE {self.table} SET expiry_recorded = {self._true} WHERE engine_id = {p}",
                                (engine_id,))
                    self._append(cur, stream, event(lease, lease.epoch))
                return lease
            except ConcurrencyConflict:
                continue
        return None

    def why_not(self, fence: Fence) -> str:
        """Why appends carrying ``fence`` are refused, as the store holds it now."""
        try:
            lease = self.get(fence.engine_id)
        except Exception as e:  # noqa: BLE001 - the refusal stands; only its detail is unknown
            return f"the lease could not be read ({type(e).__name__})"
        if lease is None or lease.epoch == 0:
            return "no lease was ever taken for it"
        if lease.epoch != fence.epoch or lease.holder != fence.holder:
            return f"epoch {lease.epoch} is current, held by {lease.holder!r}"
        if lease.released:
            return "its lease was released"
        if lease.state == "expired":
            return f"its lease expired {-lease.expires_in:.1f} s ago (not renewed in time)"
        return "the lease changed while the append ran"

    # ------------------------------------------------------------------------ standbys
    def standbys(self) -> list[StandbySeen]:
        """Every standby that checked in (``standby_seen``) and has not left, by engine id and holder."""
        with self.log.transaction() as cur:
            if not self.dialect.table_exists(cur, STANDBY_TABLE):
                return []
            now = self._now(cur)
            cur.execute(f"SELECT engine_id, holder, last_seen FROM {self.dialect.name(STANDBY_TABLE)}"
                        " ORDER BY engine_id, holder")
            rows = cur.fetchall()
        return [StandbySeen(e, h, seen if self._pg else _from_unix(seen), now) for e, h, seen in rows]

    def standby_seen(self, engine_id: str, holder: str) -> None:
        """Record that ``holder`` stands by for ``engine_id`` now (the store's clock). Not a fact of
        the log and no part of the lease: the operator view shows it."""
        table = self.dialect.name(STANDBY_TABLE)
        with self.log.transaction() as cur:
            exists = self.dialect.table_exists(cur, STANDBY_TABLE)
        if not exists:
            with self.log.transaction(write=True) as cur:
                self.dialect.ddl_lock(cur)
                cur.execute(f"CREATE TABLE IF NOT EXISTS {table} (engine_id text NOT NULL, holder text NOT NULL,"
                            f" last_seen {'timestamptz' if self._pg else 'REAL'} NOT NULL,"
                            " PRIMARY KEY (engine_id, holder))")
        p = self.dialect.param
        with self.log.bounded_write() as cur:
            now = self._time(self._now(cur))
            cur.execute(f"INSERT INTO {table} (engine_id, holder, last_seen) VALUES ({p}, {p}, {p})"
                        " ON CONFLICT (engine_id, holder) DO UPDATE SET last_seen = excluded.last_seen",
                        (engine_id, holder, now))

    def standby_gone(self, engine_id: str, holder: str) -> None:
        """Forget the standby ``holder`` of ``engine_id`` (it took over or stopped)."""
        p = self.dialect.param
        with self.log.transaction() as cur:
            if not self.dialect.table_exists(cur, STANDBY_TABLE):
                return
        with self.log.bounded_write() as cur:
            cur.execute(f"DELETE FROM {self.dialect.name(STANDBY_TABLE)} WHERE engine_id = {p} AND holder = {p}",
                        (engine_id, holder))

    # ------------------------------------------------------------------------ helpers
    @property
    def _true(self) -> str:
        return "true" if self._pg else "1"

    @property
    def _false(self) -> str:
        return "false" if self._pg else "0"

    def _now(self, cur: Any) -> datetime:
        if self._pg:
            cur.execute("SELECT clock_timestamp()")
            return cur.fetchone()[0]
        return datetime.now(timezone.utc)

    def _time(self, at: datetime) -> Any:
        return at if self._pg else _unix(at)

    def _lease(self, row: Any, now: datetime) -> Lease:
        engine_id, epoch, holder, acquired, renewed, expires, released, recorded = row
        if not self._pg:
            acquired, renewed, expires = _from_unix(acquired), _from_unix(renewed), _from_unix(expires)
        return Lease(engine_id, int(epoch), holder, acquired, renewed, expires, bool(released), bool(recorded), now)

    def _append(self, cur: Any, stream: str, built: tuple[str, bytes]) -> None:
        type_name, data = built
        p = self.dialect.param
        table = getattr(self.log, "versions_relation", None) or self.dialect.name(self.log.table)  # archives too
        cur.execute(f"SELECT coalesce(max(stream_version), 0) FROM {table} WHERE stream_id = {p}", (stream,))
        version = cur.fetchone()[0] + 1
        self.log.insert_in(cur, [new_event(stream, version, type_name, data)])


__all__ = ["Fence", "LEASE_TABLE", "Lease", "LeaseEvent", "Leases", "STANDBY_TABLE", "StandbySeen"]
