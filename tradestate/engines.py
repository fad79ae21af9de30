"""Active and standby engines: one writer per engine id, fenced by a lease, and a standby that
takes over when the active engine stops renewing it.

The lease and the fence live in the store (``adapters.store.lease``): an engine takes the lease of
its engine id (a new epoch), renews it from a background thread well within its duration, and
every append its client makes carries the epoch; the store refuses, atomically with the append,
an epoch that is no longer current or a lease that ran out (``NotLeader``). So an engine that was
paused or cut off for longer than its lease can never write again, whatever it believes.

A ``Standby`` follows the log (its own fold, caught up every ``poll`` seconds) and watches the
lease; once it expired (by the store's clock) or was released, the standby records the expiry
(``LeaseExpired``), takes the lease (``LeaseAcquired``, a new epoch) and runs the crash recovery
on its warm state: reconcile with the configured brokers before any new intent, resume at the
reduced ramp level. Orders the dead engine had in flight are resolved by reconciliation; an
intent re-sent with the same client order id is recognised as already recorded.

``watch_leases`` is the live crash detector for processes that are not standbys (the projector
follower, ``tradestate serve``): it records the expiry of every lease that ran out, once.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import orjson
from prometheus_client import Counter, Gauge

from .adapters.store import Store, open_store
from .adapters.store.lease import Fence, Lease, Leases, StandbySeen
from .domain import events as ev
from .domain.errors import AppendFailed, InvalidInput, LeaseHeld, NotLeader, TradestateError
from .domain.ids import engine_stream_id
from .writer import build_event, utc_now

DEFAULT_LEASE_SECONDS = 3.0
STANDBY_CHECK_IN_SECONDS = 1.0  # how often a standby refreshes its row in the operator view
STANDBY_LOST_SECONDS = 10.0  # a standby not seen for longer is shown as ``standby-lost``
LEASE_RENEWALS = Counter("tradestate_lease_renewals_total", "Lease renewals by outcome", ["engine", "outcome"])
LEASE_EPOCH = Gauge("tradestate_lease_epoch", "The lease epoch this process holds (0: none)", ["engine"])
LEASE_EXPIRIES = Counter("tradestate_lease_expiries_recorded_total",
                         "Expired leases this process noticed and recorded (a dead or hung engine)", ["engine"])


def holder_name() -> str:
    """This process as a lease holder: host, pid and a random suffix (a pid is reused)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid4().hex[:6]}"


def _payload(event: ev.Event) -> tuple[str, bytes]:
    return event.type_name(), orjson.dumps(event.to_payload())


class EngineLease:
    """An engine process's hold on the lease of ``engine_id``.

    ``acquire`` takes it (``LeaseHeld`` while another holder renews it) and records
    ``LeaseAcquired``; ``start`` renews it every ``renew_seconds`` (default: a third of the lease)
    from a daemon thread; ``release`` hands it back (``LeaseReleased``). A renewal the store refuses
    (the lease expired or another engine took it) is kept in ``lost`` and renewing stops; the
    engine's next append is refused by the store anyway (``NotLeader``). A renewal that fails
    for a database error is retried at the next tick: if the database stays away past the lease,
    the lease expires and the fence holds."""

    def __init__(self, store: Store, engine_id: str, *, holder: str | None = None,
                 seconds: float = DEFAULT_LEASE_SECONDS, renew_seconds: float | None = None,
                 clock: Callable[[], datetime] = utc_now, new_id: Callable[[], UUID] = uuid4):
        if seconds <= 0:
            raise InvalidInput("lease_seconds must be positive")
        renew = seconds / 3 if renew_seconds is None else renew_seconds
        if not 0 < renew < seconds:
            raise InvalidInput("the lease must be renewed more often than it lasts (0 < renew_seconds < lease_seconds)")
        build_event(ev.EngineStarted, event_id=uuid4(), engine_id=engine_id)  # validates the id
        self.store = store
        self.engine_id = engine_id
        self.holder = holder or holder_name()
        self.seconds = seconds
        self.renew_seconds = renew
        self.clock = clock
        self.new_id = new_id
        self.leases = Leases.of(store)
        self.lease: Lease | None = None
        self.reason: str | None = None  # how the last acquire found the lease (LeaseAcquired.reason)
        self.lost: NotLeader | None = None
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def fence(self) -> Fence | None:
        """What this engine's appends carry (None before ``acquire``)."""
        return None if self.lease is None else Fence(self.engine_id, self.lease.epoch, self.holder)

    @property
    def took_over(self) -> bool:
        """Whether the last acquire took the lease of a holder that let it expire (a crash)."""
        return self.reason == "expired"

    @property
    def stream(self) -> str:
        return engine_stream_id(self.engine_id)

    def acquire(self) -> Lease:
        """Take the lease with a new epoch and record ``LeaseAcquired`` (its ``reason`` says
        whether the previous holder released it or let it expire: a crash). An expiry nobody
        recorded yet is recorded first (``LeaseExpired``); ``took_over`` then says the previous
        holder crashed: run the recovery (``tradestate.recover``) before trading, as a standby does."""
        found = self.leases.get(self.engine_id)
        if found is not None and found.state == "expired" and not found.expiry_recorded:
            record_expiry(self.store, found, detected_by=f"engine {self.holder} taking the lease")

        def acquired(previous: Lease | None, epoch: int) -> tuple[str, bytes]:
            if previous is None:
                reason = "first"
            elif previous.holder == self.holder:
                reason = "reacquired"
            else:
                reason = "released" if previous.released else "expired"
            self.reason = reason
            return _payload(build_event(
                ev.LeaseAcquired, event_id=self.new_id(), occurred_at=self.clock(), engine_id=self.engine_id,
                epoch=epoch, holder=self.holder, reason=reason, lease_seconds=Decimal(str(self.seconds)),
                previous_holder=previous.holder if previous else "", previous_epoch=previous.epoch if previous else 0))

        self.lease = self.leases.acquire(self.engine_id, self.holder, self.seconds, stream=self.stream, event=acquired)
        self.lost = None
        LEASE_EPOCH.labels(self.engine_id).set(self.lease.epoch)
        return self.lease

    def renew(self) -> Lease:
        """Renew once (``NotLeader`` if the store no longer lets this epoch hold it)."""
        fence = self.fence
        if fence is None:
            raise NotLeader(self.engine_id, 0, "the lease was never taken by this process")
        try:
            self.lease = self.leases.renew(fence, self.seconds)
        except NotLeader as e:
            self.lost = e
            LEASE_RENEWALS.labels(self.engine_id, "refused").inc()
            LEASE_EPOCH.labels(self.engine_id).set(0)
            raise
        LEASE_RENEWALS.labels(self.engine_id, "ok").inc()
        return self.lease

    def start(self) -> None:
        """Renew from a daemon thread until ``stop``/``release`` or a refusal."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"tradestate-lease-{self.engine_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.renew_seconds):
            try:
                self.renew()
                self.last_error = None
            except NotLeader:
                return
            except Exception as e:  # noqa: BLE001 - the database is away: try again next tick
                self.last_error = f"{type(e).__name__}: {e}"
                LEASE_RENEWALS.labels(self.engine_id, "failed").inc()
        self.store.trading.release_connection()

    def stop(self) -> None:
        """Stop renewing (the lease then expires: what a crash looks like, for tests and drills)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.renew_seconds + 5)

    def release(self, reason: str = "clean stop") -> bool:
        """Stop renewing and hand the lease back, recording ``LeaseReleased``; False if this epoch
        no longer held it."""
        self.stop()
        fence = self.fence
        if fence is None:
            return False

        def released(lease: Lease | None, epoch: int) -> tuple[str, bytes]:
            return _payload(build_event(ev.LeaseReleased, event_id=self.new_id(), occurred_at=self.clock(),
                                        engine_id=self.engine_id, epoch=epoch, holder=self.holder, reason=reason))

        done = self.leases.release(fence, stream=self.stream, event=released)
        LEASE_EPOCH.labels(self.engine_id).set(0)
        return done


def record_expiry(store: Store, lease: Lease, *, detected_by: str, clock: Callable[[], datetime] = utc_now,
                  new_id: Callable[[], UUID] = uuid4) -> Lease | None:
    """Record ``LeaseExpired`` for ``lease``'s engine if its lease ran out and no one recorded it yet
    (the lease as it is then); None: nothing to record."""

    def expired(current: Lease | None, epoch: int) -> tuple[str, bytes]:
        assert current is not None
        return _payload(build_event(
            ev.LeaseExpired, event_id=new_id(), occurred_at=clock(), engine_id=current.engine_id, epoch=epoch,
            holder=current.holder, renewed_at=current.renewed_at, expired_at=current.expires_at,
            detected_by=detected_by[:200]))

    recorded = Leases.of(store).record_expiry(lease.engine_id, stream=engine_stream_id(lease.engine_id), event=expired)
    if recorded is not None:
        LEASE_EXPIRIES.labels(lease.engine_id).inc()
    return recorded


def watch_leases(store: Store, *, detected_by: str, clock: Callable[[], datetime] = utc_now) -> list[Lease]:
    """The live crash detector: record ``LeaseExpired`` for every engine whose lease ran out
    unrecorded (dead or hung); returns the leases it recorded. Cheap when nothing expired (one
    read of the lease table); safe to call from many processes (each expiry is recorded once)."""
    recorded = []
    for lease in Leases.of(store).all():
        if lease.state == "expired" and not lease.expiry_recorded:
            done = record_expiry(store, lease, detected_by=detected_by, clock=clock)
            if done is not None:
                recorded.append(done)
    return recorded


def detector_name(role: str) -> str:
    """How a watcher names itself in ``LeaseExpired.detected_by``: its role, host and pid."""
    return f"{role} {socket.gethostname()[:40]}:{os.getpid()}"


class LeaseWatcher:
    """``watch_leases`` for a process whose main loop must never wait on it or fail for it
    (``tradestate serve``, the projector follower): ``tick()`` runs it at most every ``every``
    seconds and keeps any error (``last_error``, ``errors``; ``on_error`` is told) for the next
    tick to retry. ``on_recorded(lease)`` is told of each expiry this process recorded."""

    def __init__(self, store: Store, *, detected_by: str, every: float = 2.0,
                 on_recorded: Callable[[Lease], None] | None = None,
                 on_error: Callable[[BaseException], None] | None = None):
        if every <= 0:
            raise InvalidInput("the lease watch interval must be positive")
        self.store = store
        self.detected_by = detected_by
        self.every = every
        self.on_recorded = on_recorded
        self.on_error = on_error
        self.recorded: list[Lease] = []
        self.checks = 0
        self.errors = 0
        self.last_error: str | None = None
        self._next = 0.0

    def tick(self, *, force: bool = False) -> list[Lease]:
        """Look at the leases if ``every`` seconds passed since the last look (or ``force``);
        returns the expiries recorded by this look. Never raises for a database error."""
        now = time.monotonic()
        if not force and now < self._next:
            return []
        self._next = now + self.every
        self.checks += 1
        try:
            found = watch_leases(self.store, detected_by=self.detected_by)
        except Exception as e:  # noqa: BLE001 - the watch is a side duty: retried at the next tick
            self.errors += 1
            self.last_error = f"{type(e).__name__}: {e}"
            if self.on_error is not None:
                self.on_error(e)
            return []
        self.last_error = None
        self.recorded.extend(found)
        if self.on_recorded is not None:
            for lease in found:
                self.on_recorded(lease)
        return found


class EngineView:
    """The operator view of one store, kept cheap for repeated reads (the HTTP API): the engine
    facts of the log are folded once (a checkpoint and its tail) and then only the new events at
    each ``rows()``; the lease table is read at every call. Thread-safe."""

    def __init__(self, store: Store, exchange_tz: str = "America/New_York"):
        self.store = store
        self.exchange_tz = exchange_tz
        self._state: Any = None
        self._lock = threading.Lock()

    def rows(self, *, folded: bool = True) -> list[dict[str, Any]]:
        """``engines(store)``'s rows; ``folded=False``: from the lease table alone (engines that
        never took a lease left out; no fold)."""
        leases = Leases.of(self.store)
        if not folded:
            return engine_rows(leases.all(), None, leases.standbys())
        from .loading import fold_tail, load_state  # noqa: PLC0415

        with self._lock:
            if self._state is None:
                self._state = load_state(self.store, exchange_tz=self.exchange_tz).state
            else:
                fold_tail(self.store, self._state)
            facts = {k: dict(v) for k, v in self._state.engines.items()}
        return engine_rows(leases.all(), facts, leases.standbys())


def engines(store: Store, *, state: Any = None) -> list[dict[str, Any]]:
    """Every engine the log or the lease table knows: its lease (holder, epoch, renewal age,
    expiry) and its state (see ``engine_state``). For ``tradestate engines`` and the HTTP API.
    ``state``: a fold of the log already at hand (default: the log is loaded here)."""
    if state is None:
        from .loading import load_state  # noqa: PLC0415 - only the operator view folds

        state = load_state(store).state
    leases = Leases.of(store)
    return engine_rows(leases.all(), state.engines, leases.standbys())


def engine_rows(leases: Sequence[Lease], folded: dict[str, dict[str, Any]] | None = None,
                standbys: Sequence[StandbySeen] = ()) -> list[dict[str, Any]]:
    """The operator view's rows, by engine id, from the lease table and (optionally) the engine
    facts of a fold (``TradingState.engines``; without them only engines with a lease appear),
    each engine followed by its standbys: state ``standby`` (checked in within
    ``STANDBY_LOST_SECONDS``) or ``standby-lost``, ``renewal_age_seconds`` the age of its last
    check-in, no epoch."""
    by_id = {lease.engine_id: lease for lease in leases}
    folded = folded or {}
    out = []
    for name in sorted(set(by_id) | set(folded)):
        lease = by_id.get(name)
        facts = folded.get(name, {})
        out.append({
            "engine_id": name,
            "state": engine_state(lease, facts),
            "holder": lease.holder if lease else facts.get("holder", ""),
            "epoch": lease.epoch if lease else facts.get("epoch", 0),
            "lease": lease.state if lease else "none",
            "renewed_at": lease.renewed_at if lease and lease.epoch else None,
            "renewal_age_seconds": round(lease.renewal_age, 3) if lease else None,
            "expires_in_seconds": round(lease.expires_in, 3) if lease else None,
            "expiry_recorded": lease.expiry_recorded if lease else None,
            "running": bool(facts.get("running")),
            "last_recovery_position": (facts.get("last_recovery") or {}).get("position"),
        })
        for seen in (s for s in standbys if s.engine_id == name):
            out.append(_standby_row(seen))
    for seen in (s for s in standbys if s.engine_id not in by_id and s.engine_id not in folded):
        out.append(_standby_row(seen))  # a standby of an engine that never started yet
    return out


def _standby_row(seen: StandbySeen) -> dict[str, Any]:
    return {"engine_id": seen.engine_id, "state": "standby" if seen.age <= STANDBY_LOST_SECONDS else "standby-lost",
            "holder": seen.holder, "epoch": None, "lease": "none", "renewed_at": seen.last_seen,
            "renewal_age_seconds": round(seen.age, 3), "expires_in_seconds": None, "expiry_recorded": None,
            "running": False, "last_recovery_position": None}


def engine_state(lease: Lease | None, folded: dict[str, Any]) -> str:
    """``active`` (lease live), ``dead`` (lease expired: not renewed), ``stopped`` (lease released,
    or no lease and a clean stop on record), ``running`` (no lease: started, no stop on record),
    ``unknown``."""
    if lease is not None and lease.epoch > 0:
        return {"active": "active", "expired": "dead", "released": "stopped"}[lease.state]
    if folded.get("running"):
        return "running"
    if "stopped_at" in folded:
        return "stopped"
    return "unknown"



@dataclass
class Takeover:
    """What a standby's takeover did: the client (fenced with the new epoch), the recovery report,
    and how long it took from noticing the expired lease to ready."""

    client: Any
    report: Any
    lease: Lease
    previous: Lease | None
    seconds: float  # from noticing the lease was free to a recovered, ready client
    waited: float  # from the standby's start (or ``wait``) to noticing


class Standby:
    """A warm standby of engine ``engine_id``: follows the log and takes over when the active
    engine's lease expires or is released (see the module docstring).

    ``wait(timeout)`` blocks until it has taken over (or ``timeout`` passes: ``None`` is
    returned) and returns a ``Takeover`` whose client is the new active engine: fenced with the new
    epoch, recovered (reconciled with ``adapters``, ramp as after a crash), its lease renewed in
    the background. Check ``takeover.report.ready`` before trading: a venue that could not be
    queried, or a safety gate waiting for an operator (``gates``: see ``recovery.recover``;
    ``report.awaiting_approval``), leaves the recovery not ready, as after any crash. ``poll``: seconds between looks
    at the lease and the log's tail. ``follower`` is the warm state's client: it answers queries
    but cannot write (its appends are refused: ``NotLeader``)."""

    def __init__(self, url: str | Store | None, engine_id: str, *, adapters: Sequence[Any] = (),
                 lease_seconds: float = DEFAULT_LEASE_SECONDS, renew_seconds: float | None = None,
                 poll: float = 0.1, holder: str | None = None, strict: bool = False, verify: str = "tail",
                 exchange_tz: str = "America/New_York", gates: Any = None, **client_options: Any):
        from .client import TradestateClient  # noqa: PLC0415 - the client imports this module

        self.store = url if isinstance(url, Store) else open_store(url)
        self.engine_id = engine_id
        self.adapters = list(adapters)
        self.poll = poll
        self.strict = strict
        self.verify = verify
        self.exchange_tz = exchange_tz
        self.gates = gates  # the recovery's safety gates (``tradestate.gates.GateConfig``; False: none)
        self.client_options = client_options
        self.lease = EngineLease(self.store, engine_id, holder=holder, seconds=lease_seconds,
                                 renew_seconds=renew_seconds)
        self.leases = self.lease.leases
        # The warm state. It never writes: its fence (epoch 0) is refused by the store.
        self.follower = TradestateClient(self.store, exchange_tz=exchange_tz, clock_skew_threshold=None,
                                         **client_options)
        self.follower.writer.fence = Fence(engine_id, 0, self.lease.holder)
        self.started = time.monotonic()
        self._checked_in = 0.0
        self.last_error: str | None = None  # why the last takeover attempt failed (it is retried)

    @property
    def holder(self) -> str:
        return self.lease.holder

    def free(self) -> Lease | None | bool:
        """The current lease if it can be taken now (expired, released, never held, or held by
        this standby after a takeover that failed half-way), else False."""
        lease = self.leases.get(self.engine_id)
        if lease is None or not lease.live or lease.holder == self.holder:
            return lease
        return False

    def wait(self, timeout: float | None = None) -> Takeover | None:
        """Follow the log and the lease until the lease can be taken, then take over (see class)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        started = time.monotonic()
        while True:
            try:
                self.follower.catch_up()
                self.check_in()
                found = self.free()
            except TradestateError:
                raise
            except Exception:  # noqa: BLE001 - the database is away: keep following
                found = False
            if found is not False:
                try:
                    return self.take_over(found, waited=time.monotonic() - started)
                except LeaseHeld:
                    pass  # another standby was faster, or the engine came back: follow on
                except AppendFailed as e:
                    # The database refused the takeover's writes for now (a writer paused while
                    # holding SQLite's write lock or a PostgreSQL row lock, a lost connection):
                    # follow on and try again, within ``timeout``.
                    self.last_error = f"{type(e).__name__}: {e}"
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(self.poll)

    def check_in(self, *, force: bool = False) -> None:
        """Show this standby in the operator view (``tradestate engines``, ``/engines``): its row
        is refreshed at most every ``STANDBY_CHECK_IN_SECONDS``; a failure only skips this one."""
        now = time.monotonic()
        if not force and now - self._checked_in < STANDBY_CHECK_IN_SECONDS:
            return
        self._checked_in = now
        try:
            self.leases.standby_seen(self.engine_id, self.holder)
        except Exception:  # noqa: BLE001, S110 - the view is not worth a missed takeover
            pass

    def _leave(self) -> None:
        try:
            self.leases.standby_gone(self.engine_id, self.holder)
        except Exception:  # noqa: BLE001, S110 - shown as standby-lost once its row ages
            pass

    def take_over(self, previous: Lease | None, *, waited: float = 0.0) -> Takeover:
        """Record the expiry (if it is one), take the lease, recover on the warm state."""
        from .recovery import recover  # noqa: PLC0415

        noticed = time.monotonic()
        if previous is not None and previous.state == "expired":
            record_expiry(self.store, previous, detected_by=f"standby {self.holder}")
        lease = self.lease.acquire()
        try:
            self.lease.start()
            report, client = recover(
                self.store, engine_id=self.engine_id, strict=self.strict, adapters=self.adapters, verify=self.verify,
                exchange_tz=self.exchange_tz, initial_state=self.follower.state, lease=self.lease,
                clock=self.client_options.get("clock"), gates=self.gates,
                client_options={k: v for k, v in self.client_options.items() if k not in ("clock", "clock_guard")})
        except BaseException:
            self.lease.stop()
            raise
        self._leave()  # it is the active engine now: its lease row shows it
        return Takeover(client, report, lease, previous, time.monotonic() - noticed, waited)

    def close(self) -> None:
        self.lease.stop()
        self._leave()
        self.store.close()


def standby(url: str | Store | None, engine_id: str, **options: Any) -> Standby:
    """A ``Standby`` of ``engine_id`` on the database at ``url`` (see ``Standby`` for ``options``)."""
    return Standby(url, engine_id, **options)


__all__ = ["DEFAULT_LEASE_SECONDS", "EngineLease", "EngineView", "LeaseWatcher", "Standby", "Takeover",
           "detector_name", "engine_rows", "engine_state", "engines", "holder_name", "record_expiry", "standby",
           "watch_leases"]
