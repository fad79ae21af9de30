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
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Generic, TypeVar
from uuid import UUID, uuid4

import orjson
from prometheus_client import Counter, Gauge, Histogram
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
    LogRewound,
    NotLeader,
    TradestateError,
)
from .domain.ids import account_stream_id
from .domain.integrity import refuse_decided, refuse_quarantined
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
CLOCK_SKEW = Gauge("tradestate_clock_skew_seconds",
                   "The engine clock minus the store's clock at the last measurement (clock guard)")

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


@dataclass(frozen=True)
class ClockReading:
    """One measurement of the engine's clock against the store's: ``skew`` is engine minus store
    (at the midpoint of the round trip), known to within ``uncertainty`` (half the round trip)."""

    engine_time: datetime
    store_time: datetime
    skew: timedelta
    uncertainty: timedelta
    held: timedelta = timedelta(0)  # how far ahead of the clock decisions were held (``Writer.now``)

    @property
    def excess(self) -> timedelta:
        """The clock's skew beyond what the measurement cannot tell apart from zero (signed like
        ``skew``)."""
        return _beyond(self.skew, self.uncertainty)

    @property
    def decision_excess(self) -> timedelta:
        """The same for the time decisions use: the clock's skew plus ``held``."""
        return _beyond(self.skew + self.held, self.uncertainty)


def _beyond(skew: timedelta, uncertainty: timedelta) -> timedelta:
    beyond = max(abs(skew) - uncertainty, timedelta(0))
    return beyond if skew >= timedelta(0) else -beyond


def _event_id(data: Any) -> str | None:
    """The ``event_id`` of a stored payload (None: a ``$void`` row or a payload without one)."""
    try:
        value = orjson.loads(data).get("event_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) else None


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

    A log that went backwards (its head below the last position folded, or another event at that
    position: a restore, an asynchronous failover) is found by the catch-up before each decision,
    which reads from that position itself; from then on every call raises ``LogRewound`` (kept in
    ``rewound``) and nothing is appended. ``acknowledged`` keeps the last events this writer
    appended (position, stream, version, type, event id), to name those the log lost.

    ``fence`` (``adapters.store.lease.Fence``, set by ``tradestate.engines``): every append
    carries it and the store refuses it unless its epoch still holds the engine's lease; the
    first refusal (``NotLeader``) is kept in ``deposed`` and every later call raises it: a
    deposed engine decides nothing more.

    ``clock_guard``: time for decisions never runs backwards (``now``): it is the latest of the
    clock, the log's last recorded time and the last time this writer handed out; and the clock
    is measured against the store's (``check_clock``: at start and every ``clock_check_seconds``).
    A skew beyond ``clock_skew_threshold`` seconds is recorded (``ClockSkewRecorded``, once when
    it starts and once when it ends); intents are refused (``clock_skew``) while it, or the skew of
    the time decisions are held to, is beyond ``max_clock_skew``. None switches either off.
    Without the guard ``now`` is the clock's time.

    ``coalescer`` (``adapters.store.coalesce.CommitCoalescer`` over ``store.trading``): calls from
    many threads share commits (group commit). The lock then covers catch-up and decision only:
    each call decides on the log as committed (its versions from the fold), hands its events to
    the coalescer, and waits for its commit outside the lock, so the next call decides while
    earlier ones are in flight. Its contract is unchanged: it returns once its own events are
    durable, with its own version check and error. What is weaker than one call at a time is
    what another engine process would see: a decision does not see this writer's appends that
    are still in flight, except that a call touching a stream one of them touches waits for it
    first (so an intent and its account's risk stream are still decided one at a time: two
    intents cannot both pass the same limit).
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
        clock_guard: bool = False,
        clock_skew_threshold: float | None = 0.05,
        max_clock_skew: float | None = 1.0,
        clock_check_seconds: float = 10.0,
        clock_source: str | None = None,
        coalescer: Any = None,
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
        # the last event folded: (position, event id); a later catch-up checks it is still there
        self._known: tuple[int, str | None] = (0, None)
        self.rewound: LogRewound | None = None
        self.acknowledged: deque[tuple[int, str, int, str, str | None]] = deque(maxlen=10_000)
        self.clock_guard = clock_guard
        self.clock_skew_threshold = None if clock_skew_threshold is None else timedelta(seconds=clock_skew_threshold)
        self.max_clock_skew = None if max_clock_skew is None else timedelta(seconds=max_clock_skew)
        self.clock_check_seconds = clock_check_seconds
        self.clock_source = clock_source or (socket.gethostname()[:64] or "engine")
        self.clock_reading: ClockReading | None = None
        self._clock_checked: float | None = None
        self._checking_clock = False
        self._logged_skews: dict[str, dict[str, Any] | None] = {}
        self.log_time: datetime | None = None  # the latest recorded_at this writer has seen
        self._last_now: datetime | None = None
        self._unconfirmed = False  # a commit of ours is not yet confirmed durable
        self.fence: Any = None
        self.deposed: NotLeader | None = None
        self.coalescer = coalescer
        # stream -> the in-flight coalesced append of this writer that touches it (set when done)
        self._in_flight: dict[str, threading.Event] = {}
        self._in_flight_lock = threading.Lock()  # taken inside ``lock`` or alone, never the other way
        # shared catch-up reads of concurrent callers (``refresh`` with a coalescer)
        self._reads = threading.Condition(threading.Lock())
        self._reading = False
        self._reads_started = 0
        self._reads_done = 0

    # ------------------------------------------------------------------------- reading
    def catch_up(self) -> int:
        """Fold every event appended since the last look; returns the position reached. Raises
        ``LogRewound`` when the log no longer holds the last event folded (nothing is folded)."""
        with self.lock, gc_paused():
            if self.rewound is not None:
                raise self.rewound
            apply = self.state.apply
            loads = orjson.loads
            start = self.state.position
            known_position, known_id = self._known
            last: Any = None
            payload: Any = None
            # From the last folded event itself: one row more, to see that it is still there.
            with closing(self.store.trading.iter_rows(start - 1 if start else 0)) as rows:
                if start:
                    first = next(rows, None)
                    found_id = _event_id(first[4]) if first is not None and first[0] == start else None
                    if first is None or first[0] != start or (known_position == start and found_id != known_id):
                        self._rewind(start, known_id if known_position == start else None, found_id)
                    if known_position != start:  # a state moved on outside this writer: learn its last event
                        self._known = (start, found_id)
                    last = first
                for position, stream, version, type_name, data, recorded_at in rows:
                    payload = loads(data)
                    apply(position, stream, version, type_name, payload, recorded_at)
                    last = (position, stream, version, type_name, data, recorded_at)
            if last is not None:
                if last[0] != start:
                    self._known = (last[0], payload.get("event_id") if isinstance(payload, dict) else None)
                self._saw_time(last[5])
            if self.state.position - start > 10_000:
                # A big fold leaves a big, long-lived state: keep the collector from rescanning
                # it on every full collection while the engine trades.
                gc.freeze()
            return self.state.position

    def _rewind(self, known_position: int, known_id: str | None, found_id: str | None) -> None:
        """Raise (and keep) ``LogRewound``: the log no longer holds event ``known_id`` at
        ``known_position``; the events this writer appended that are gone are named."""
        try:
            head = self.store.trading.head()
        except Exception:  # noqa: BLE001 - the error names what is known
            head = -1
        self.rewound = LogRewound(known_position, known_id, head, found_id, self._lost())
        raise self.rewound

    def _lost(self, limit: int = 1_000) -> list[dict[str, Any]]:
        """The events this writer appended that the log no longer holds (same stream version,
        same event id), newest first until one is found: a rewound log lost a suffix."""
        lost = []
        for position, stream, version, type_name, event_id in list(reversed(self.acknowledged))[:limit]:
            try:
                rows = self.store.trading.read_stream(stream, version - 1)
            except Exception:  # noqa: BLE001 - unknown: not named
                break
            if rows and rows[0].originator_version == version and _event_id(rows[0].state) == event_id:
                break
            lost.append({"position": position, "stream_id": stream, "version": version, "type": type_name,
                         "event_id": event_id})
        lost.reverse()
        return lost

    def _saw_time(self, recorded_at: Any) -> None:
        if recorded_at.__class__ is not datetime:
            recorded_at = datetime.fromisoformat(recorded_at)
        if recorded_at.tzinfo is None:
            recorded_at = recorded_at.replace(tzinfo=timezone.utc)
        if self.log_time is None or recorded_at > self.log_time:
            self.log_time = recorded_at

    def refresh(self) -> None:
        """``catch_up`` before recording: a log that cannot be read raises ``AppendFailed`` (the
        documented error, not the driver's), and nothing was appended. With a coalescer,
        concurrent callers share reads: each returns after a catch-up that started after it
        called (so it sees every event committed before it called), one read for all of them."""
        if self.coalescer is not None and not self.lock._is_owned():  # type: ignore[attr-defined]
            self._refresh_shared()
            return
        self._refresh_now()

    def _refresh_shared(self, budget: float = 30.0) -> None:
        cond = self._reads
        deadline = time.monotonic() + budget
        with cond:
            wanted = self._reads_started + 1  # a read that starts from now on
            while self._reads_done < wanted:
                if not self._reading:
                    self._reading = True
                    self._reads_started += 1
                    mine = self._reads_started
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AppendFailed(f"no catch-up of the log finished within {budget:g} s; nothing was "
                                       "appended by this call (retrying the same call is safe)")
                cond.wait(left)
            else:
                return  # a read that started after we called has finished
        try:
            self._refresh_now()
        finally:
            with cond:
                self._reading = False
                if sys.exc_info()[0] is None:
                    self._reads_done = max(self._reads_done, mine)
                cond.notify_all()  # waiters of a failed read start their own (and get their own error)

    def _refresh_now(self) -> None:
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
        positions a crashed server skipped, voided by readers once nothing can fill them), wait up to
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

    def clock_time(self) -> datetime:
        """The clock's own time in UTC; a naive clock is ``InvalidInput``."""
        now = self.clock()
        if now.tzinfo is None:
            raise InvalidInput("the client's clock returned a naive datetime")
        return now.astimezone(timezone.utc)

    def now(self) -> datetime:
        """The time decisions and default ``occurred_at`` use: the clock's, in UTC; with
        ``clock_guard``, never before the log's last recorded time nor before a time this writer
        returned already (a clock that steps back, or runs behind the store's, cannot move the
        trading day or any time-based rule backwards)."""
        now = self.clock_time()
        if not self.clock_guard:
            return now
        log_time, last = self.log_time, self._last_now
        if log_time is not None and log_time > now:
            now = log_time
        if last is not None and last > now:
            now = last
        self._last_now = now
        return now

    def check_clock(self, *, force: bool = False) -> ClockReading | None:
        """With ``clock_guard``: measure the clock against the store's (at most every
        ``clock_check_seconds`` unless ``force``), and how far ahead of it decisions are held
        (``now``), and record a ``ClockSkewRecorded`` when the clock's skew goes beyond
        ``clock_skew_threshold`` or comes back within it. Returns the last reading (None: the
        guard is off or nothing is measured)."""
        if not self.clock_guard or (self.clock_skew_threshold is None and self.max_clock_skew is None):
            return None
        with self.lock:
            started = time.monotonic()
            checked = self._clock_checked
            if not force and checked is not None and started - checked < self.clock_check_seconds:
                return self.clock_reading
            self._clock_checked = started
            self._checking_clock = True  # recording a skew goes through ``record``: no second measurement
            try:
                before = self.clock_time()
                store_time = self.store.trading.server_time()
                after = self.clock_time()
                if store_time.tzinfo is None:
                    store_time = store_time.replace(tzinfo=timezone.utc)
                half = (after - before) / 2
                engine_time = before + half
                # A clock that jumped ahead and came back still decides at the later time (time
                # never runs backwards): how far ahead of the clock the writer holds counts too.
                held = timedelta(0)
                for floor in (self.log_time, self._last_now):
                    if floor is not None and floor - engine_time > held:
                        held = floor - engine_time
                reading = self.clock_reading = ClockReading(engine_time, store_time, engine_time - store_time,
                                                            abs(half), held)
                CLOCK_SKEW.set(reading.skew.total_seconds())
                if self.clock_skew_threshold is not None:
                    self._record_skew(reading, self.clock_skew_threshold)
                return reading
            finally:
                self._checking_clock = False

    def _record_skew(self, reading: ClockReading, threshold: timedelta) -> None:
        beyond = abs(reading.excess) > threshold
        source = self.clock_source

        def ms(t: timedelta) -> Decimal:
            return Decimal(t // timedelta(microseconds=1)) / 1000

        def decide(state: TradingState) -> rules.Decision:
            last = self._last_skew(state, source)
            in_episode = last is not None and not last["within_threshold"]
            if beyond == in_episode or (last is None and not beyond):
                return rules.AlreadyRecorded(last["position"] if last is not None else state.position)
            e = ev.ClockSkewRecorded(
                event_id=self.new_id(), occurred_at=reading.engine_time, source=source,
                engine_time=reading.engine_time, store_time=reading.store_time, skew_ms=ms(reading.skew),
                uncertainty_ms=ms(reading.uncertainty), threshold_ms=ms(threshold), within_threshold=not beyond)
            return rules.Append([(ev.CLOCK_STREAM, e)])

        last = self._last_skew(self.state, source)
        if (last is None and not beyond) or (last is not None and last["within_threshold"] == (not beyond)):
            return  # nothing changed: no append
        self.record(decide)

    def _last_skew(self, state: TradingState, source: str) -> dict[str, Any] | None:
        """The last ``ClockSkewRecorded`` of ``source``: from the fold, or (a state restored from a
        checkpoint, which does not keep them) read once from the clock stream."""
        last = state.clock_skews.get(source)
        if last is not None or source in self._logged_skews:
            return last or self._logged_skews[source]
        found = None
        for e in self.store.trading.read_stream(ev.CLOCK_STREAM):
            if e.position > state.position:
                break
            d = orjson.loads(e.state)
            if d.get("source") == source:
                found = {"within_threshold": d["within_threshold"], "position": e.position}
        self._logged_skews[source] = found
        return found

    def intent_clock(self) -> dict[str, timedelta | None]:
        """What the pre-trade check needs of the clock (``decide_intent``'s keywords): the last
        measured skew beyond its uncertainty, of the clock or of the time decisions use, whichever
        is larger, and the maximum allowed."""
        reading = self.clock_reading
        if not self.clock_guard or reading is None or self.max_clock_skew is None:
            return {"clock_skew": None, "max_clock_skew": None}
        skew = max(reading.excess, reading.decision_excess, key=abs)
        return {"clock_skew": skew, "max_clock_skew": self.max_clock_skew}

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
        if self.coalescer is not None:
            return self._record_coalesced(decide, wanted)
        last_error: Exception | None = None
        failures = 0
        attempt = 0
        for attempt in range(self.max_attempts):
            if attempt:
                self.stats.retries += 1
                time.sleep(min(0.05, 0.001 * 2**attempt) * random.random())
            with self.lock:
                if self.deposed is not None:
                    raise self.deposed
                if self._unconfirmed:
                    self._confirm()
                self.refresh()
                decision, value = self._decide(decide, wanted)
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
                except NotLeader as e:
                    self.deposed = e
                    raise
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

    def _decide(self, decide: Decide[T], wanted: tuple[str, ...]) -> tuple[Any, T | None]:
        """Under ``self.lock``, on a caught-up state: (the decision of ``decide``, the value it
        carries back). The orders named in ``wanted`` are loaded first and a quarantined one
        refuses the call; a decision to append is refused if it touches a quarantined stream."""
        if self.clock_guard:
            self._periodic_clock_check()
        if wanted:
            ensure_orders(self.state, wanted)
            refuse_quarantined(self.state, wanted)
        with deciding(self.state):
            result = decide(self.state)
        decision, value = (result.decision, result.value) if isinstance(result, Decided) else (result, None)
        if not isinstance(decision, rules.AlreadyRecorded):
            refuse_decided(self.state, decision.events)
        return decision, value

    def _record_coalesced(self, decide: Decide[T], wanted: tuple[str, ...]) -> Written[T]:
        """``record`` through the coalescer: decide under the lock, commit outside it."""
        last_error: Exception | None = None
        failures = 0
        attempt = 0
        waited = 0
        deadline = time.monotonic() + self.coalescer.wait_timeout * self.max_attempts
        while attempt < self.max_attempts:
            if attempt and not waited:
                self.stats.retries += 1
                time.sleep(min(0.05, 0.001 * 2**attempt) * random.random())
            waited = 0
            if self.deposed is not None:
                raise self.deposed
            self.refresh()  # shared with the other callers, outside the lock
            with self.lock:
                if self.deposed is not None:
                    raise self.deposed
                if self._unconfirmed:
                    self._confirm()
                decision, value = self._decide(decide, wanted)
                if isinstance(decision, rules.AlreadyRecorded):
                    return Written(decision, [decision.position], value)
                attempt_rows = self._build_attempt(decision)
                streams = {row[0] for row in attempt_rows}
                with self._in_flight_lock:
                    busy = {self._in_flight[s] for s in streams if s in self._in_flight}
                    if not busy:
                        done = threading.Event()
                        for stream in streams:
                            self._in_flight[stream] = done
            if busy:
                # An append of ours to the same stream is in flight: this decision would conflict
                # with it; decide again once it is done (on the log with it), not as a retry.
                for event in busy:
                    left = deadline - time.monotonic()
                    if left <= 0 or not event.wait(left):
                        raise AppendFailed("an earlier append of this writer to the same stream did not finish "
                                           "in time; nothing was appended by this call (retrying is safe)")
                waited = 1
                continue
            attempt += 1
            try:
                appended = self._commit_coalesced(attempt_rows)
            except ConcurrencyConflict as e:
                self.stats.conflicts += 1
                last_error = e
                self.wait_past_holes()
                continue
            except NotLeader as e:
                with self.lock:
                    self.deposed = e
                raise
            except CommitOutcomeUnknown:
                with self.lock:
                    self._unconfirmed = True
                raise
            except AppendFailed as e:
                last_error = e
                failures += 1
                with self.lock:
                    if isinstance(e, CommitInterrupted):
                        self._unconfirmed = True
                    landed = self._landed(attempt_rows)
                    if landed is not None:
                        self._unconfirmed = True
                        self._confirm()
                        return Written(decision, landed, value)
                if failures >= self.max_failures:
                    break
                continue
            finally:
                # Not under the writer lock: a call holding it (a nested record) may be waiting for this.
                with self._in_flight_lock:
                    for stream in streams:
                        if self._in_flight.get(stream) is done:
                            del self._in_flight[stream]
                done.set()
            with self.lock:
                self._appended(attempt_rows, appended)
                if self.checkpointer is not None:
                    self._checkpoint()
            return Written(decision, [a.position for a in appended], value)
        if isinstance(last_error, ConcurrencyConflict):
            raise ConcurrencyConflict(
                f"gave up after {self.max_attempts} attempts: other writers keep appending to the "
                f"same streams ({last_error})"
            )
        raise AppendFailed(
            f"could not record after {attempt} attempts; nothing was appended by this call "
            f"unless the log shows it (retrying the same call is safe): {last_error}"
        ) from last_error

    def _commit_coalesced(self, attempt: _Attempt) -> list[Any]:
        """Hand ``attempt`` to the coalescer and wait for its commit (without the lock); the
        caller folds it (``_appended``)."""
        fence = self.fence
        return self._counted(attempt, lambda stored: self.coalescer.append(stored, fence=fence))

    @staticmethod
    def _counted(attempt: _Attempt, append: Callable[[list[Any]], list[Any]]) -> list[Any]:
        """``append`` the stored form of ``attempt``, counted and timed in the append metrics
        (an error is counted by kind and raised)."""
        stored = [new_event(stream, version, type_name, data) for stream, version, type_name, _, data in attempt]
        started = time.perf_counter()
        try:
            appended = append(stored)
        except ConcurrencyConflict:
            APPENDS.labels("conflict").inc()
            raise
        except NotLeader:
            APPENDS.labels("not_leader").inc()
            raise
        except AppendFailed:
            APPENDS.labels("failed").inc()
            raise
        APPEND_SECONDS.observe(time.perf_counter() - started)
        APPENDS.labels("ok").inc()
        EVENTS_APPENDED.inc(len(stored))
        return appended

    def _periodic_clock_check(self) -> None:
        checked = self._clock_checked
        if self._checking_clock or (checked is not None and time.monotonic() - checked < self.clock_check_seconds):
            return
        try:
            self.check_clock()
        except TradestateError:
            raise
        except Exception as e:  # noqa: BLE001 - the store's clock cannot be read: the call fails like a read
            raise AppendFailed(f"the store's clock cannot be read ({type(e).__name__}: {e}); nothing was "
                               "appended by this call (retrying the same call is safe)") from e

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

    def _build_attempt(self, decision: rules.Append) -> _Attempt:
        """The decided events at their streams' next versions (after the fold's), encoded."""
        versions: dict[str, int] = {}
        attempt: _Attempt = []
        for stream, event in decision.events:
            version = versions.get(stream, self.state.stream_versions.get(stream, 0)) + 1
            versions[stream] = version
            payload = event.to_payload()
            attempt.append((stream, version, event.type_name(), payload, orjson.dumps(payload)))
        return attempt

    def _append(self, decision: rules.Append) -> list[int]:
        """Append decided events (each at its stream's next version) and fold them."""
        self._attempt = attempt = self._build_attempt(decision)
        log, fence = self.store.trading, self.fence
        appended = self._counted(attempt, log.append if fence is None else lambda stored: log.append(stored, fence=fence))
        self._appended(attempt, appended)
        return [a.position for a in appended]

    def _appended(self, attempt: _Attempt, appended: list[Any]) -> None:
        """Count a durable append (under the lock) and fold it if it directly follows the fold."""
        self.stats.appends += 1
        for (stream, version, type_name, payload, _), a in zip(attempt, appended, strict=True):
            self.acknowledged.append((a.position, stream, version, type_name, payload.get("event_id")))
        if appended[0].position == self.state.position + 1:
            # Nobody wrote in between: fold what we wrote without reading it back.
            for (stream, version, type_name, payload, _), a in zip(attempt, appended, strict=True):
                if a.position == self.state.position + 1:
                    self.state.apply(a.position, stream, version, type_name, payload, a.recorded_at)
                    self._known = (a.position, payload.get("event_id"))
            self._saw_time(appended[-1].recorded_at)

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
            for (stream, version, type_name, payload, _), position in zip(attempt, positions, strict=True):
                self.acknowledged.append((position, stream, version, type_name, payload.get("event_id")))
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


__all__ = ["ClockReading", "Decided", "Recorded", "Writer", "WriterStats", "Written", "build_event"]
