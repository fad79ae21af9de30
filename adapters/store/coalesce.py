"""Coalesced commits (group commit): many callers of one process share one durable transaction.

``CommitCoalescer(log)`` has ``EventLog.append``'s contract, per caller: ``append(events,
fence=...)`` returns the positions of the caller's own events once they are durable, and raises
the caller's own error. What changes is the cost: appends that arrive while a commit is in flight
wait for it and then go, together, into the next one, so N concurrent callers pay for about one
commit (one flush, one round of replication) instead of N.

How a batch is committed:

* The leader is the first caller to find no commit in flight: it commits its own events at once,
  in its own thread (a lone caller pays only a lock and a queue check). Only the first
  ``inline_threads`` threads ever lead inline: a commit uses its thread's connection (PostgreSQL
  pins one per thread), so a crowd of threads must not each pin one; the others hand their
  append to the committer thread even when nothing is in flight. Appends that arrive
  meanwhile queue up; when the leader is done, one committer thread takes everything queued (up
  to ``max_batch_events``, all carrying the same fence) and writes it as one ``log.append`` of all
  the callers' events, in arrival order: one transaction, fenced once, through the log's own
  multi-event path (PostgreSQL: positions drawn in order, voided in the same transaction if a
  stream version is taken, so a batch never leaves a hole; SQLite: under the file's write lock).
  Asynchronous callers (``append_async``) never commit on the event loop: the committer thread
  does it, and each caller's future is resolved on its own loop.
* Each caller keeps its own optimistic-concurrency check: a (stream, version) already taken (or
  below the stream's highest) is a conflict. Within a batch, a caller claiming a version an earlier
  caller of the batch claimed (two callers decided on the same stream version) gets
  ``ConcurrencyConflict`` without touching the database, and so does a caller continuing the
  versions of a refused one (it may have been decided on events that will not be there). When
  the batch as a whole meets a taken version (another process won a race), the batch is tried
  again after reading the streams' current versions: each caller with a version taken gets
  ``ConcurrencyConflict``, and the others go in. After ``max_rounds`` such rounds the rest are appended one by one, each with its
  own outcome. So one caller's conflict never fails another.
* An error of the batch's transaction is every caller's in it, each raising its own copy:
  ``NotLeader`` (the fence no longer holds: nothing of the batch was appended),
  ``CommitOutcomeUnknown`` (committed here, durability not confirmed), ``CommitInterrupted``
  (the connection was lost around the commit: all of the batch landed or none did; re-read),
  ``AppendFailed`` (nothing appended). Nothing is ever half-written: a batch is one transaction.
* Every wait is bounded: a caller waits at most ``wait_timeout`` seconds (default three times
  the log's own append bound, plus one). A caller still queued then is taken out of the queue
  (``AppendFailed``: nothing appended); one whose batch is being committed gets
  ``CommitInterrupted`` (its events may land yet: re-read the stream before deciding again).

Positions: each caller's events are contiguous and in its order (one multi-row insert takes
them in sequence); callers of one batch follow each other in arrival order.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import StoredEvent

from ...domain.errors import AppendFailed, CommitInterrupted, ConcurrencyConflict
from .base import Appended, EventLog
from .sql import Dialect

_QUEUED, _COMMITTING, _DONE = 0, 1, 2
DEFAULT_MAX_BATCH_EVENTS = 2_000
DEFAULT_MAX_ROUNDS = 3
DEFAULT_INLINE_THREADS = 4


def _copy_error(error: BaseException) -> BaseException:
    """Each caller raises its own exception object (a shared one would collect every thread's
    traceback); built without ``__init__``, whose signature differs from class to class."""
    try:
        copy = type(error).__new__(type(error), *error.args)
        copy.__dict__.update(error.__dict__)
        copy.__cause__ = error.__cause__
        return copy
    except Exception:  # noqa: BLE001 - an exotic exception class: share it
        return error


@dataclass
class CoalescerStats:
    """What the coalescer did: transactions committed, callers and events in them, the largest
    batch, callers refused for a version conflict, batches tried again, callers appended alone."""

    batches: int = 0
    callers: int = 0
    events: int = 0
    largest: int = 0
    conflicts: int = 0
    rounds: int = 0
    alone: int = 0


class _Request:
    """One caller's append: its events, fence, and outcome (positions or error)."""

    __slots__ = ("events", "fence", "stage", "result", "error", "done", "loop", "future", "lead")

    def __init__(self, events: Sequence[StoredEvent], fence: Any, loop: asyncio.AbstractEventLoop | None = None):
        self.events = events
        self.fence = fence
        self.stage = _QUEUED
        self.result: list[Appended] | None = None
        self.error: BaseException | None = None
        self.done: threading.Event | None = None  # made when it queues (a leader needs none)
        self.loop = loop
        self.future: asyncio.Future[list[Appended]] | None = loop.create_future() if loop is not None else None
        self.lead = False  # this caller commits its own batch (nothing was in flight)

    def outcome(self) -> list[Appended]:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def _span(req: _Request) -> tuple[dict[str, int], dict[str, int]]:
    """The lowest and highest version ``req`` appends to each of its streams."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for e in req.events:
        s, v = e.originator_id, e.originator_version
        if s not in first or v < first[s]:
            first[s] = v
        if s not in last or v > last[s]:
            last[s] = v
    return first, last


def _settle_futures(settled: list[_Request]) -> None:
    """On an event loop: resolve the futures of ``settled`` (one wake-up of the loop per batch)."""
    for req in settled:
        future = req.future
        if future is None or future.done():
            continue
        if req.error is not None:
            future.set_exception(req.error)
        else:
            future.set_result(req.result)  # type: ignore[arg-type]


def _default_wait(log: EventLog) -> float:
    """Three times the log's own bound on one append, plus a second: a caller may wait for the
    batch in flight, then its own, then a retry round."""
    datastore = getattr(log, "datastore", None)
    bound = getattr(datastore, "append_timeout", None)
    if bound is None:  # SQLite: the busy timeout bounds the wait for the write lock
        pool = getattr(datastore, "pool", None)
        bound = getattr(pool, "lock_timeout", None) or 10.0
    return 3.0 * float(bound) + 1.0


class CommitCoalescer:
    """Group commit over one ``EventLog`` (see the module docstring). Thread-safe; one per log per
    process is the intent (callers sharing it share commits). ``close`` stops its thread."""

    def __init__(self, log: EventLog, *, max_batch_events: int = DEFAULT_MAX_BATCH_EVENTS,
                 max_rounds: int = DEFAULT_MAX_ROUNDS, wait_timeout: float | None = None,
                 inline_threads: int = DEFAULT_INLINE_THREADS):
        if max_batch_events < 1 or max_rounds < 1:
            raise ValueError("max_batch_events and max_rounds must be at least 1")
        self.log = log
        self.max_batch_events = max_batch_events
        self.max_rounds = max_rounds
        self.wait_timeout = _default_wait(log) if wait_timeout is None else wait_timeout
        if not self.wait_timeout > 0:
            raise ValueError("wait_timeout must be a positive number of seconds (every wait is bounded)")
        self.stats = CoalescerStats()
        self.inline_threads = inline_threads
        self._leaders: set[int] = set()  # the threads that may lead inline (at most inline_threads)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[_Request] = deque()
        self._busy = False  # a commit is in flight, or the committer thread has been handed the queue
        self._handed = False  # the committer thread owns the queue until it finds it empty
        self._closed = False
        self._thread: threading.Thread | None = None
        self._dialect = Dialect("postgresql", log.schema) if log.schema else Dialect("sqlite")

    # ----------------------------------------------------------------------- entry points
    def append(self, events: Sequence[StoredEvent], *, fence: Any = None) -> list[Appended]:
        """``EventLog.append``'s contract for this caller's ``events`` (one caller's events are
        contiguous, in order), committed together with whatever other callers append meanwhile.
        Returns once they are durable. Raises this caller's ``ConcurrencyConflict`` (nothing of
        it appended; the others are not affected), or the batch's ``NotLeader``,
        ``CommitOutcomeUnknown``, ``CommitInterrupted`` or ``AppendFailed``; waits at most
        ``wait_timeout`` seconds (then ``AppendFailed`` if it never left the queue, else
        ``CommitInterrupted``)."""
        if not events:
            return []
        req = _Request(events, fence)
        with self._lock:
            self._check_open()
            if not self._busy and not self._queue and self._may_lead():
                self._busy = True
                req.lead = True
            else:
                req.done = threading.Event()
                self._queue.append(req)
                if not self._busy:
                    self._busy = self._handed = True
                    self._start_thread()
                    self._wake.notify()
        if req.lead:
            req.stage = _COMMITTING
            try:
                self._commit_one(req)
            finally:
                self._hand_on()
            return req.outcome()
        assert req.done is not None
        if not req.done.wait(self.wait_timeout):
            self._give_up(req)
        return req.outcome()

    async def append_async(self, events: Sequence[StoredEvent], *, fence: Any = None) -> list[Appended]:
        """``append`` for asyncio: awaits the commit without blocking the event loop (the commit
        runs on the coalescer's thread); same contract, same bounded wait."""
        if not events:
            return []
        req = _Request(events, fence, asyncio.get_running_loop())
        with self._lock:
            self._check_open()
            self._queue.append(req)
            if not self._busy:
                self._busy = self._handed = True
                self._start_thread()
                self._wake.notify()
        assert req.future is not None
        try:
            return await asyncio.wait_for(asyncio.shield(req.future), self.wait_timeout)
        except asyncio.TimeoutError:
            self._give_up(req)
            return req.outcome()

    def close(self) -> None:
        """Refuse new appends, let the committer finish what is queued, and stop its thread."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.wait_timeout)

    def __enter__(self) -> CommitCoalescer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------- the queue
    def _check_open(self) -> None:
        if self._closed:
            raise AppendFailed("the commit coalescer is closed; nothing was appended")

    def _may_lead(self) -> bool:
        me = threading.get_ident()
        if me in self._leaders:
            return True
        if len(self._leaders) < self.inline_threads:
            self._leaders.add(me)
            return True
        return False

    def _start_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="tradestate-group-commit", daemon=True)
            self._thread.start()

    def _hand_on(self) -> None:
        """After a leader's own commit: hand what queued meanwhile to the committer thread."""
        with self._lock:
            if self._queue:
                self._handed = True
                self._start_thread()
                self._wake.notify()
            else:
                self._busy = False

    def _take(self) -> list[_Request]:
        """The next batch (under the lock): queued requests carrying the first one's fence, in
        arrival order, up to ``max_batch_events`` (at least one request)."""
        first = self._queue.popleft()
        batch, size, fence, rest = [first], len(first.events), first.fence, deque()
        while self._queue:
            req = self._queue.popleft()
            if req.fence != fence or size + len(req.events) > self.max_batch_events:
                rest.append(req)
                if size + len(req.events) > self.max_batch_events:
                    break
                continue
            batch.append(req)
            size += len(req.events)
        rest.extend(self._queue)
        self._queue = rest
        for req in batch:
            req.stage = _COMMITTING
        return batch

    def _run(self) -> None:
        while True:
            with self._lock:
                while True:
                    if self._handed:
                        if self._queue:
                            break
                        self._handed = self._busy = False  # drained: the next caller leads again
                    if self._closed:
                        self.log.release_connection()  # the connection this thread pinned
                        return
                    self._wake.wait(1.0)
                batch = self._take()
            try:
                self._commit(batch)
            except BaseException as e:  # noqa: BLE001 - never leave a caller without an outcome
                for req in batch:
                    if req.stage != _DONE:
                        self._settle(req, error=e)

    def _give_up(self, req: _Request) -> None:
        """A caller's wait ran out: withdraw it if it is still queued, else report the commit
        under way as interrupted (it may land yet)."""
        with self._lock:
            if req.stage == _DONE:
                return
            if req.stage == _QUEUED and req in self._queue:
                self._queue.remove(req)
                req.error = AppendFailed(f"no commit could take this append within {self.wait_timeout:g} s "
                                         "(the commits ahead of it did not finish); nothing was appended")
            else:
                req.error = CommitInterrupted(
                    f"the group commit holding this append did not finish within {self.wait_timeout:g} s; it may "
                    "or may not commit: re-read the stream before deciding again")
            req.stage = _DONE

    # ----------------------------------------------------------------------- committing
    def _settle(self, req: _Request, result: list[Appended] | None = None,
                error: BaseException | None = None) -> bool:
        with self._lock:
            if req.stage == _DONE:  # its caller gave up waiting and has its answer
                return False
            req.result, req.error, req.stage = result, error, _DONE
        if req.done is not None:
            req.done.set()
        return True

    def _settle_all(self, settled: list[tuple[_Request, list[Appended] | None, BaseException | None]]) -> None:
        by_loop: dict[Any, list[_Request]] = {}
        for req, result, error in settled:
            if self._settle(req, result, error) and req.loop is not None:
                by_loop.setdefault(req.loop, []).append(req)
        for loop, reqs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle_futures, reqs)
            except RuntimeError:  # the loop is closed: its callers are gone
                pass

    def _commit_one(self, req: _Request) -> None:
        """A batch of one (a leader's own append): ``_commit`` without the planning, which cannot
        refuse a lone request, so a lone caller pays next to nothing over ``log.append``."""
        try:
            appended = self.log.append(req.events, fence=req.fence)
        except BaseException as e:  # noqa: BLE001 - its own error, whatever it is
            if isinstance(e, ConcurrencyConflict):
                self.stats.conflicts += 1
            req.error, req.stage = e, _DONE
            return
        self._count([req], len(req.events))
        req.result, req.stage = appended, _DONE

    def _commit(self, batch: list[_Request]) -> None:
        """Commit ``batch`` (one fence) and settle every request in it."""
        if len(batch) == 1 and batch[0].loop is None and batch[0].done is None:
            self._commit_one(batch[0])
            return
        settled: list[tuple[_Request, list[Appended] | None, BaseException | None]] = []
        pending = batch
        current: dict[str, int] | None = None  # the streams' versions, read after a batch conflict
        try:
            for round_no in range(self.max_rounds):
                if round_no:
                    self.stats.rounds += 1
                    current = self._versions(pending)
                accepted, refused = self._plan(pending, current)
                if accepted:
                    events = [e for req in accepted for e in req.events]
                    try:
                        appended = self.log.append(events, fence=batch[0].fence)
                    except ConcurrencyConflict as e:
                        if len(pending) == 1:  # its own conflict
                            self.stats.conflicts += 1
                            settled.append((pending[0], None, e))
                            return
                        # A version was taken by another process: read the versions and plan the
                        # whole batch again (a caller refused only for a claim of one that now
                        # fails must get its chance).
                        continue
                    except BaseException as e:  # noqa: BLE001 - the batch's error is every caller's in it
                        settled += [(req, None, _copy_error(e)) for req in accepted]
                    else:
                        self._count(accepted, len(events))
                        at = 0
                        for req in accepted:
                            settled.append((req, appended[at:at + len(req.events)], None))
                            at += len(req.events)
                self.stats.conflicts += len(refused)
                settled += [(req, None, error) for req, error in refused]
                return
            self._alone(pending, settled)
        except BaseException as e:  # noqa: BLE001 - reading the versions failed: nothing of the rest appended
            done = {id(req) for req, _, _ in settled}
            settled += [(req, None, AppendFailed(f"the group commit failed before appending ({type(e).__name__}: "
                                                 f"{e}); nothing was appended by this call"))
                        for req in batch if id(req) not in done]
        finally:
            self._settle_all(settled)

    def _alone(self, pending: list[_Request], settled: list[Any]) -> None:
        """Versions keep being taken under us: each caller in its own append, with its own
        outcome; one continuing the versions of a caller that did not land is refused."""
        chained_on_failed: dict[str, set[int]] = {}
        for req in pending:
            first, last = _span(req)
            chained = [f"{s}@{v}" for s, v in first.items() if v in chained_on_failed.get(s, ())]
            if chained:
                self.stats.conflicts += 1
                settled.append((req, None, ConcurrencyConflict(
                    f"{', '.join(chained)} follows an append that did not land; nothing was appended")))
            else:
                self.stats.alone += 1
                try:
                    settled.append((req, self.log.append(req.events, fence=req.fence), None))
                    self._count([req], len(req.events))
                    continue
                except BaseException as e:  # noqa: BLE001 - this caller's own error
                    settled.append((req, None, e))
            for s, v in last.items():
                chained_on_failed.setdefault(s, set()).add(v + 1)

    def _count(self, accepted: list[_Request], events: int) -> None:
        stats = self.stats
        stats.batches += 1
        stats.callers += len(accepted)
        stats.events += events
        stats.largest = max(stats.largest, len(accepted))

    @staticmethod
    def _plan(pending: list[_Request], current: dict[str, int] | None
              ) -> tuple[list[_Request], list[tuple[_Request, ConcurrencyConflict]]]:
        """Split ``pending`` into callers that go in and callers refused for a version conflict,
        in arrival order: a caller is refused if one of its versions of a stream is not above the
        stream's highest, in the log (``current``, when read) or claimed by an earlier caller of
        the batch (streams only grow at their end). A caller whose first version of a stream continues the
        versions of a refused caller is refused too: it may have been decided on that caller's
        events, which will not be there."""
        claimed: dict[str, int] = {}
        chained_on_refused: dict[str, set[int]] = {}
        accepted, refused = [], []
        for req in pending:
            first, last = _span(req)
            problem = None
            for s, v in first.items():
                taken = max(claimed.get(s, 0), current.get(s, 0) if current is not None else 0)
                if v in chained_on_refused.get(s, ()):
                    problem = f"{s}@{v} (it follows an append refused for a conflict)"
                elif v <= taken:
                    problem = f"{s}@{v} (the stream is at version {taken})"
                if problem is not None:
                    break
            if problem is not None:
                refused.append((req, ConcurrencyConflict(f"another writer already appended to {problem}")))
                for s, v in last.items():
                    chained_on_refused.setdefault(s, set()).add(v + 1)
                continue
            for s, v in last.items():
                claimed[s] = max(claimed.get(s, 0), v)
            accepted.append(req)
        return accepted, refused

    def _versions(self, pending: list[_Request]) -> dict[str, int]:
        """The current version of every stream ``pending`` appends to (absent: 0)."""
        streams = sorted({e.originator_id for req in pending for e in req.events})
        d = self._dialect
        # a partitioned log's versions table also knows the versions of archived events
        table = getattr(self.log, "versions_relation", None) or d.name(self.log.table)
        out: dict[str, int] = {}
        with self.log.transaction() as cur:
            for at in range(0, len(streams), 500):
                chunk = streams[at:at + 500]
                marks = ", ".join([d.param] * len(chunk))
                cur.execute(f"SELECT stream_id, max(stream_version) FROM {table} WHERE stream_id IN ({marks})"
                            " GROUP BY stream_id", chunk)
                out.update({s: int(v) for s, v in cur.fetchall()})
        return out


__all__ = ["CoalescerStats", "CommitCoalescer"]
