"""The unit of work every append goes through: catch up, decide, append, and only then return.

``Writer.record(decide)`` folds the log up to its head, makes sure the orders the command names
are in memory (a finished order of a restored state is brought back from its own stream here,
never inside a decision), calls ``decide(state)``, and appends the decided events in one durable
transaction with optimistic concurrency on each stream they touch. A conflict (another writer
appended to one of those streams) re-runs the decision on fresh state, a bounded number of times;
a hole below the head (an append still in flight) is waited out first. An ambiguous failure (the
connection dropped during commit) is resolved by reading back: if our events landed (same stream
versions, same bytes) their positions are returned; otherwise the decision runs again on the
re-read log, which finds our own events if they landed after all. Nothing is ever written twice.
Events found that way count only once the store confirms them as durable as configured (on the
synchronous standbys): a commit it cannot confirm raises ``CommitOutcomeUnknown``, and until a
later call confirms it, every call first asks the store again (so a retry never answers for a
commit a failover could still lose).

The client (``tradestate.client``), the reconciliation runner and recovery all append through it.
"""

from __future__ import annotations

import gc
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar
from uuid import UUID, uuid4

import orjson
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from .adapters.store import Store, gc_paused, new_event
from .domain import events as ev
from .domain import orders as rules
from .domain.errors import (
    AppendFailed,
    CommitInterrupted,
    CommitOutcomeUnknown,
    ConcurrencyConflict,
    IdempotencyConflict,
    InvalidInput,
    TradestateError,
)
from .domain.ids import account_stream_id
from .domain.state import TradingState
from .loading import deciding, ensure_orders

# Process-wide metrics (the default Prometheus registry): `tradestate serve` includes them when it
# runs in the engine's process, and engines can expose them with prometheus_client themselves.
APPENDS = Counter("tradestate_appends_total", "Append transactions by outcome", ["outcome"])
EVENTS_APPENDED = Counter("tradestate_events_appended_total", "Events made durable by this process")
APPEND_SECONDS = Histogram(
    "tradestate_append_seconds", "Durable append latency (commit included)",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)

T = TypeVar("T")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def build_event(cls: type[ev.Event], **fields: Any) -> Any:
    """``cls(**fields)``, validated at the edge: bad input raises ``InvalidInput`` naming every
    field that is wrong, and nothing is appended."""
    try:
        return cls(**fields)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'input'}: {err['msg']}" for err in e.errors()
        )
        raise InvalidInput(f"{cls.__name__}: {problems}") from None
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"{cls.__name__}: {e}") from None


@dataclass(frozen=True)
class Recorded:
    """Where a fact now stands in the log."""

    position: int  # global position of the recorded event
    event_id: UUID | None = None
    duplicate: bool = False  # True: it was recorded before; nothing new was appended
    discrepancy: str | None = None  # set when a venue fact contradicted us and was recorded as such


@dataclass(frozen=True)
class Decided(Generic[T]):
    """What a decide callback returns when the caller needs more than the events back: the
    decision and a value computed with it (a plan, a flag), returned as ``Written.value``."""

    decision: rules.Decision
    value: T | None = None


@dataclass(frozen=True)
class Written(Generic[T]):
    """The outcome of ``Writer.record``: the decision that was made durable (or found already
    recorded), the positions of its events (of the earlier record for ``AlreadyRecorded``), and
    the value the decision carried."""

    decision: rules.Decision
    positions: list[int]
    value: T | None = None

    @property
    def duplicate(self) -> bool:
        return isinstance(self.decision, rules.AlreadyRecorded)

    def recorded(self) -> Recorded:
        """The first event as a ``Recorded`` (a duplicate: the earlier record's position)."""
        if isinstance(self.decision, rules.AlreadyRecorded):
            return Recorded(self.decision.position, None, duplicate=True)
        first = self.decision.events[0][1]
        kind = first.kind if isinstance(first, ev.DiscrepancyRecorded) else None
        return Recorded(self.positions[0], first.event_id, discrepancy=kind)


@dataclass
class WriterStats:
    appends: int = 0
    conflicts: int = 0
    retries: int = 0
    refusals: int = 0
    checkpoint_failures: int = 0


Decide = Callable[[TradingState], "rules.Decision | Decided[T]"]
_Attempt = list[tuple[str, int, str, dict[str, Any], bytes]]


class Writer:
    """The write loop over one store and one in-memory ``TradingState`` (see the module docstring).

    Thread-safe: one lock serialises catch-up, decision and append. ``state`` is always the fold of
    the log up to ``state.position``; it only ever moves forward.

    ``max_attempts``: decisions per call when other writers keep conflicting (then
    ``ConcurrencyConflict``). ``max_failures``: database failures per call before ``AppendFailed``.
    ``checkpointer``: asked after each append whether a checkpoint is due; a checkpoint that cannot
    be written never fails the append (``stats.checkpoint_failures``, ``last_checkpoint_error``).
    """

    def __init__(
        self,
        store: Store,
        state: TradingState,
        *,
        clock: Callable[[], datetime] = utc_now,
        new_id: Callable[[], UUID] = uuid4,
        max_attempts: int = 8,
        max_failures: int = 3,
        checkpointer: Any = None,
    ):
        self.store = store
        self.state = state
        self.clock = clock
        self.new_id = new_id
        self.max_attempts = max_attempts
        self.max_failures = max_failures
        self.checkpointer = checkpointer
        self.stats = WriterStats()
        self.last_checkpoint_error: str | None = None
        self.lock = threading.RLock()
        self._attempt: _Attempt = []
        self._unconfirmed = False  # a commit of ours is not yet confirmed durable

    # ------------------------------------------------------------------------- reading
    def catch_up(self) -> int:
        """Fold every event appended since the last look; returns the position reached."""
        with self.lock, gc_paused():
            apply = self.state.apply
            loads = orjson.loads
            start = self.state.position
            for position, stream, version, type_name, data, recorded_at in self.store.trading.iter_rows(start):
                apply(position, stream, version, type_name, loads(data), recorded_at)
            if self.state.position - start > 10_000:
                # A big fold leaves a big, long-lived state: keep the collector from rescanning
                # it on every full collection while the engine trades.
                gc.freeze()
            return self.state.position

    def refresh(self) -> None:
        """``catch_up`` before recording: a log that cannot be read raises ``AppendFailed`` (the
        documented error, not the driver's), and nothing was appended."""
        try:
            self.catch_up()
        except TradestateError:
            raise
        except Exception as e:  # noqa: BLE001 - psycopg, psycopg_pool, sqlite3, eventsourcing errors
            APPENDS.labels("failed").inc()
            raise AppendFailed(
                f"the log cannot be read ({type(e).__name__}: {e}); nothing was appended by this call "
                "(retrying the same call is safe)"
            ) from e

    def wait_past_holes(self, budget: float = 3.0) -> None:
        """Catch up; while the fold is held below the head by a hole (an append in flight, or
        positions a crashed server skipped, voided by readers after ``gap_timeout``), wait up to
        ``budget`` seconds for it to clear. Database errors are left to the caller's next read."""
        deadline = time.monotonic() + budget
        try:
            while self.catch_up() < self.store.trading.head() and time.monotonic() < deadline:
                time.sleep(0.05)
        except Exception:  # noqa: BLE001 - the retry's own catch-up reports database errors
            return

    def load_orders(self, streams: Iterable[str]) -> None:
        """Bring the named order streams into ``state.orders`` if they are finished orders not
        in memory yet (an indexed read each); unknown streams are left alone."""
        with self.lock:
            ensure_orders(self.state, streams)

    def now(self) -> datetime:
        """The clock's time in UTC; a naive clock is ``InvalidInput``."""
        now = self.clock()
        if now.tzinfo is None:
            raise InvalidInput("the client's clock returned a naive datetime")
        return now.astimezone(timezone.utc)

    def envelope(self, occurred_at: datetime | None = None, correlation_id: UUID | None = None,
                 causation_id: UUID | None = None) -> dict[str, Any]:
        """The fields every event carries: a new id, when it occurred (default: now), its links."""
        return {
            "event_id": self.new_id(),
            "occurred_at": occurred_at if occurred_at is not None else self.now(),
            "correlation_id": correlation_id,
            "causation_id": causation_id,
        }

    # ------------------------------------------------------------------------- writing
    def record(self, decide: Decide[T], *, orders: Iterable[str] = ()) -> Written[T]:
        """Catch up, load ``orders`` (order streams the decision reads), ``decide(state)``, append.

        ``decide`` is pure: it reads only the state it is given (it may run several times, once per
        attempt, always on the freshest state) and returns a ``rules.Decision`` or a ``Decided``.
        While it runs, ``state.orders`` holds exactly what was loaded: it never reads the log.
        ``AlreadyRecorded`` appends nothing. Raises ``ConcurrencyConflict`` after ``max_attempts``
        conflicts, ``AppendFailed`` after ``max_failures`` failures (nothing was appended by the
        call unless the log shows it: retrying the same call is safe), ``CommitOutcomeUnknown``
        when the events were committed but not confirmed durable (do not act on them; retrying
        the same call is safe), and whatever ``decide`` raises (nothing appended)."""
        wanted = tuple(orders)
        last_error: Exception | None = None
        failures = 0
        attempt = 0
        for attempt in range(self.max_attempts):
            if attempt:
                self.stats.retries += 1
                time.sleep(min(0.05, 0.001 * 2**attempt) * random.random())
            with self.lock:
                if self._unconfirmed:
                    self._confirm()
                self.refresh()
                if wanted:
                    ensure_orders(self.state, wanted)
                with deciding(self.state):
                    result = decide(self.state)
                decision, value = (result.decision, result.value) if isinstance(result, Decided) else (result, None)
                if isinstance(decision, rules.AlreadyRecorded):
                    return Written(decision, [decision.position], value)
                try:
                    positions = self._append(decision)
                    if self.checkpointer is not None:
                        self._checkpoint()
                    return Written(decision, positions, value)
                except ConcurrencyConflict as e:
                    self.stats.conflicts += 1
                    last_error = e
                    self.wait_past_holes()
                except CommitOutcomeUnknown:
                    # Committed here, maybe not on the standbys: reading it back proves nothing.
                    self._unconfirmed = True
                    raise
                except AppendFailed as e:
                    last_error = e
                    failures += 1
                    if isinstance(e, CommitInterrupted):
                        # It may commit yet, or may have committed without reaching the standbys.
                        self._unconfirmed = True
                    landed = self._landed(self._attempt)
                    if landed is not None:
                        self._unconfirmed = True
                        self._confirm()
                        return Written(decision, landed, value)
                    if failures >= self.max_failures:
                        break
        if isinstance(last_error, ConcurrencyConflict):
            raise ConcurrencyConflict(
                f"gave up after {self.max_attempts} attempts: other writers keep appending to the "
                f"same streams ({last_error})"
            )
        raise AppendFailed(
            f"could not record after {attempt + 1} attempts; nothing was appended by this call "
            f"unless the log shows it (retrying the same call is safe): {last_error}"
        ) from last_error

    def record_fact(self, decide: Decide[Any], *, orders: Iterable[str] = ()) -> Recorded:
        """``record`` for a one-fact command: where its first event stands."""
        return self.record(decide, orders=orders).recorded()

    def record_event(self, stream: str, event: ev.Event) -> Recorded:
        """Append one already-built event to ``stream`` (no rule beyond the stream's version)."""
        return self.record_fact(lambda _state: rules.Append([(stream, event)]))

    def account_fact(self, cls: type[ev.AccountEvent], account: str, occurred_at: datetime | None = None,
                     **fields: Any) -> Recorded:
        """Build and append one account event (limits, breaker, kill switch, block, acknowledgement)."""
        e = build_event(cls, **self.envelope(occurred_at), account=account, **fields)
        return self.record_event(account_stream_id(e.account), e)

    def record_once(self, log: Any, stream: str, version: int, event: ev.Event, *,
                    same: Callable[[dict[str, Any]], bool], conflict: str) -> Recorded:
        """Append ``event`` to ``log`` (a store log other than the trading log, e.g. the market
        log) as version ``version`` of ``stream``, once: when that version is already recorded,
        nothing is appended (a failed insert would still use up a position on PostgreSQL) and the
        result is the earlier record if ``same(stored payload)``, else ``IdempotencyConflict``
        (``conflict`` says why). A concurrent writer of the same version is compared the same way."""
        data = orjson.dumps(event.to_payload())
        for _attempt in range(2):
            existing = log.read_stream(stream, version - 1)
            if existing and existing[0].originator_version == version:
                if not same(orjson.loads(existing[0].state)):
                    raise IdempotencyConflict(conflict)
                return Recorded(existing[0].position, None, duplicate=True)
            try:  # not in the append metrics, which count the trading log's transactions
                (appended,) = log.append([new_event(stream, version, event.type_name(), data)])
            except ConcurrencyConflict:
                continue  # recorded by another writer in between: compare with theirs
            return Recorded(appended.position, event.event_id)
        raise ConcurrencyConflict(f"{stream} version {version} kept conflicting")

    def _append(self, decision: rules.Append) -> list[int]:
        """Append decided events (each at its stream's next version) and fold them."""
        versions: dict[str, int] = {}
        attempt: _Attempt = []
        for stream, event in decision.events:
            version = versions.get(stream, self.state.stream_versions.get(stream, 0)) + 1
            versions[stream] = version
            payload = event.to_payload()
            attempt.append((stream, version, event.type_name(), payload, orjson.dumps(payload)))
        self._attempt = attempt
        stored = [new_event(stream, version, type_name, data) for stream, version, type_name, _, data in attempt]
        started = time.perf_counter()
        try:
            appended = self.store.trading.append(stored)
        except ConcurrencyConflict:
            APPENDS.labels("conflict").inc()
            raise
        except AppendFailed:
            APPENDS.labels("failed").inc()
            raise
        APPEND_SECONDS.observe(time.perf_counter() - started)
        APPENDS.labels("ok").inc()
        EVENTS_APPENDED.inc(len(stored))
        self.stats.appends += 1
        if appended[0].position == self.state.position + 1:
            # Nobody wrote in between: fold what we wrote without reading it back.
            for (stream, version, type_name, payload, _), a in zip(attempt, appended, strict=True):
                if a.position == self.state.position + 1:
                    self.state.apply(a.position, stream, version, type_name, payload, a.recorded_at)
        return [a.position for a in appended]

    def _landed(self, attempt: _Attempt) -> list[int] | None:
        """After an ambiguous failure: the positions of our events if the commit did happen
        (same stream version, same bytes), else None. One transaction: all landed or none."""
        try:
            positions = []
            for stream, version, _type, _payload, data in attempt:
                rows = self.store.trading.read_stream(stream, version - 1)
                if not rows or rows[0].originator_version != version or bytes(rows[0].state) != data:
                    return None
                positions.append(rows[0].position)
            self.catch_up()
            return positions
        except Exception:  # noqa: BLE001 - the database is still unreachable: we cannot know yet
            return None

    def _confirm(self) -> None:
        """Ask the store whether our earlier commits are durable as configured; raises
        ``CommitOutcomeUnknown`` (and keeps asking on later calls) until they are."""
        self.store.trading.confirm_durable()
        self._unconfirmed = False

    def _checkpoint(self) -> None:
        # A checkpoint is a cache: failing to write one must never fail the append that is done.
        try:
            self.checkpointer.maybe(self.state)
        except Exception as e:  # noqa: BLE001
            self.stats.checkpoint_failures += 1
            self.last_checkpoint_error = f"{type(e).__name__}: {e}"


__all__ = ["Decided", "Recorded", "Writer", "WriterStats", "Written", "build_event"]
