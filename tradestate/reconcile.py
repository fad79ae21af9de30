"""The reconciliation runner: snapshot the venue, plan against the log, append the corrections.

One run appends, in one transaction, the corrective events, a ``ReconciliationCompleted`` with
the raw venue report it acted on (and its sha256), and in strict mode a ``TradingBlocked`` when
the venue disagreed with the log or could not be read in full. The append goes through the
``Writer`` (optimistic concurrency): on a conflict it catches up and plans again on the fresh log.

Every run is recorded, also a clean one: "we compared at T and agreed" is itself a fact an
auditor wants. The run's id is a uuid5 of the account, venue and the report's hash (which
includes the time the snapshot was taken): a retry of the same run after an ambiguous commit
finds its own events instead of writing twice, while the next run is a new record. The
corrective events carry ids derived from the facts they record, so a second run on the same
venue state appends nothing but its own ``ReconciliationCompleted``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any
from uuid import UUID

import orjson
from pydantic_core import to_jsonable_python

from .adapters.brokers.base import BrokerAdapter, OrderNotFound, Unknown, VenueError, VenueOrder, VenueSnapshot
from .adapters.brokers.registry import BROKERS, make_adapter
from .client import TradestateClient
from .domain import events as ev
from .domain import orders as rules
from .domain.errors import InvalidInput
from .domain.ids import account_stream_id, order_stream_id
from .domain.reconcile import (
    Discrepancy,
    LookupResult,
    ReconciliationPlan,
    external_client_order_id,
    fact_id,
    orders_to_look_up,
    plan_reconciliation,
)
from .domain.state import TradingState
from .loading import deciding
from .writer import Decided, Recorded, Writer, build_event

DEFAULT_LOOKUP_LIMIT = 500  # single-order lookups per run; beyond that the orders stay "unknown"
MAX_ERRORS = 100  # ReconciliationCompleted.errors holds at most this many


@dataclass(frozen=True)
class ReconciliationResult:
    reconciliation_id: str
    account: str
    broker: str
    venue: str
    status: ev.ReconciliationStatus  # clean, corrected, discrepancies, unknown
    discrepancies: list[dict[str, Any]]
    corrective_event_ids: list[UUID]
    counts: dict[str, int]
    errors: list[str]
    duration_s: float
    blocked: bool  # a TradingBlocked was appended by this run (strict mode)
    position: int = 0  # log position of the ReconciliationCompleted
    venue_report_sha256: str = ""
    corrective_events: list[dict[str, Any]] = field(default_factory=list)  # type and a summary of each
    dry_run: bool = False  # planned only: nothing appended; the events above are what a run would append
    stuck: list[dict[str, Any]] = field(default_factory=list)  # open orders past the stuck thresholds
    withheld: int = 0  # corrections planned but not appended: the venue's answer was partial

    def as_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready values; a dry run adds ``would_append`` (the number of
        corrective events a run would append) and ``unknown`` (the same as ``errors``)."""
        extra: dict[str, Any] = {"would_append": len(self.corrective_event_ids), "unknown": self.errors} \
            if self.dry_run else {}
        return {
            "reconciliation_id": self.reconciliation_id,
            "account": self.account,
            "broker": self.broker,
            "venue": self.venue,
            "status": self.status,
            "blocked": self.blocked,
            "discrepancies": self.discrepancies,
            "corrective_event_ids": [str(i) for i in self.corrective_event_ids],
            "corrective_events": self.corrective_events,
            "counts": self.counts,
            "errors": self.errors,
            "duration_s": self.duration_s,
            "position": self.position,
            "venue_report_sha256": self.venue_report_sha256,
            "dry_run": self.dry_run,
            "stuck": self.stuck,
            "withheld": self.withheld,
            **extra,
        }


def venue_report(snapshot: VenueSnapshot, lookups: dict[str, LookupResult]) -> tuple[dict[str, Any], str]:
    """The raw venue data one run acted on (snapshot and single-order lookups) as plain JSON, and
    the sha256 of its canonical form (sorted keys)."""
    report = snapshot.raw_report()
    report["lookups"] = {
        coid: (result.raw if isinstance(result, VenueOrder) else
               {"unknown": result.reason} if isinstance(result, Unknown) else {"not_found": True})
        for coid, result in sorted(lookups.items())
    }
    plain = to_jsonable_python(report, fallback=str)
    digest = hashlib.sha256(orjson.dumps(plain, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return plain, digest


def look_up(adapter: BrokerAdapter, client_order_ids: list[str], limit: int) -> dict[str, LookupResult]:
    results: dict[str, LookupResult] = {}
    for n, coid in enumerate(client_order_ids):
        if n >= limit:
            results[coid] = Unknown(f"more than {limit} orders to look up in one run")
            continue
        try:
            results[coid] = adapter.order_by_client_id(coid)
        except OrderNotFound:
            results[coid] = None
        except VenueError as e:
            results[coid] = Unknown(f"{type(e).__name__}: {e}")
    return results


def _summary(event: ev.Event) -> dict[str, Any]:
    data = event.model_dump(mode="json", exclude={"occurred_at", "correlation_id", "causation_id"})
    keep = ("event_id", "client_order_id", "symbol", "exec_id", "qty", "price", "kind", "qty_before", "qty_after",
            "currency", "balance", "expected", "venue_order_id", "reason")
    return {"type": event.type_name(), **{k: data[k] for k in keep if data.get(k) not in (None, "")}}


def orders_touched(account: str, snapshot: VenueSnapshot, lookups: dict[str, LookupResult]) -> list[str]:
    """The order streams a plan of ``snapshot`` may read: every order and fill the venue reported,
    by our client order id and by the id an order found only at the venue is imported under."""
    coids: set[str] = set(lookups)
    venue_orders_seen = [*(o for part in (snapshot.open_orders, snapshot.recent_orders)
                           if not isinstance(part, Unknown) for o in part),
                         *(r for r in lookups.values() if isinstance(r, VenueOrder))]
    fills = [] if isinstance(snapshot.fills, Unknown) else list(snapshot.fills)
    for order in venue_orders_seen:
        fills.extend(order.fills)
    for item in [*venue_orders_seen, *fills]:
        if item.client_order_id:
            coids.add(item.client_order_id)
        coids.add(external_client_order_id(item.venue_order_id))
    return [order_stream_id(account, coid) for coid in sorted(coids)]


def _writer(client: TradestateClient | Writer) -> Writer:
    return client if isinstance(client, Writer) else client.writer


def reconcile(
    client: TradestateClient | Writer,
    adapter: BrokerAdapter,
    *,
    strict: bool = False,
    since: datetime | None = None,
    now: datetime | None = None,
    lookup_limit: int = DEFAULT_LOOKUP_LIMIT,
    dry_run: bool = False,
    stuck: StuckThresholds | None = None,
    correct_partial: bool = True,
    cash: bool = True,
    snapshot: VenueSnapshot | None = None,
) -> ReconciliationResult:
    """Reconcile one broker account with the log; see the module docstring. ``client``: the
    client (or its ``Writer``) whose log is reconciled. Raises ``InvalidInput`` for naive times.

    ``dry_run``: query the venue and plan exactly as a run would, against the log as it is now,
    and append nothing. The result (``dry_run`` True, ``position`` 0) says what a run would
    append: ``corrective_event_ids``/``corrective_events``, and ``blocked`` if it would block.

    ``correct_partial`` False (continuous reconciliation): when any part of the venue's answer is
    unknown (a query failed, a lookup failed, the venue unreachable), no corrective event is
    appended at all, only the ``ReconciliationCompleted`` (status ``unknown``, the planned
    corrections counted as ``withheld_events`` and their discrepancies marked ``withheld``).
    ``stuck``: flag open orders past its thresholds (``stuck_orders``) as ``stuck_submitted`` /
    ``stuck_missing_at_venue`` entries of the record's discrepancies; they change nothing.
    ``cash`` False: the venue's balances are kept in the record's venue report but not compared
    or recorded (``tradestate.multi_venue``: a domain with one cash per account and currency
    would see two venues' balances correct each other). ``snapshot``: one already taken from
    ``adapter`` (its ``taken_at`` is the run's time).

    The venue is queried before the writer's lock is taken; the lock is held only to plan against
    the caught-up log and append (as long as any append), so a slow venue never holds up trading."""
    started = time.perf_counter()
    writer = _writer(client)
    if now is None:
        now = writer.now()
    if now.tzinfo is None or (since is not None and since.tzinfo is None):
        raise InvalidInput("reconcile: now and since must be timezone-aware")
    now = now.astimezone(timezone.utc)
    account = adapter.account
    if snapshot is None:
        snapshot = adapter.snapshot(since, now=now)
    else:
        now = snapshot.taken_at
    planned_snapshot = snapshot if cash else replace(snapshot, balances=[])
    writer.catch_up()
    lookups = look_up(adapter, orders_to_look_up(writer.state, snapshot), lookup_limit)
    report, digest = venue_report(snapshot, lookups)
    run_id = fact_id("reconciliation", account, adapter.broker, snapshot.venue, digest)
    completed_id = fact_id("ReconciliationCompleted", run_id)

    def decide(state: TradingState) -> Decided[tuple[ReconciliationPlan, bool]]:
        # Runs after every catch-up (again after a conflict): the plan is always against the log
        # as it is now, so a concurrent writer's events are never corrected twice.
        plan = plan_reconciliation(state, planned_snapshot, reconciliation_id=run_id, now=now, lookups=lookups)
        outcome = _Outcome.of(plan, withhold=not correct_partial and bool(plan.unknown),
                              flags=stuck_orders(state, account, snapshot.venue, now, stuck) if stuck else [])
        state_account = state.accounts.get(account)
        block = strict and plan.blocking and not (state_account is not None and state_account.blocked)
        completed = build_event(
            ev.ReconciliationCompleted,
            event_id=completed_id,
            occurred_at=now,
            causation_id=run_id,
            account=account,
            reconciliation_id=str(run_id),
            broker=adapter.broker,
            venue=snapshot.venue,
            status=outcome.status,
            counts=outcome.counts,
            discrepancies=outcome.discrepancies,
            corrective_event_ids=[e.event_id for _, e in outcome.events],
            errors=_errors(plan)[:MAX_ERRORS],
            venue_report=report,
            venue_report_sha256=digest,
        )
        events = [*outcome.events, (account_stream_id(account), completed)]
        if block:
            events.append((account_stream_id(account), build_event(
                ev.TradingBlocked,
                event_id=fact_id("TradingBlocked", run_id),
                occurred_at=now,
                causation_id=completed_id,
                account=account,
                reason=_block_reason(plan),
                reconciliation_id=str(run_id),
            )))
        return Decided(rules.Append(events), (plan, block, outcome))

    touched = orders_touched(account, snapshot, lookups)
    if dry_run:
        with writer.lock:
            writer.refresh()
            writer.load_orders(touched)
            with deciding(writer.state) as state:
                planned = decide(state)
        plan, blocked, outcome = planned.value  # type: ignore[misc]
        position = 0
    else:
        written = writer.record(decide, orders=touched)
        plan, blocked, outcome = written.value  # type: ignore[misc]
        if isinstance(written.decision, rules.Append):
            position = written.positions[len(outcome.events)]
        else:  # cannot happen: decide always appends
            position, blocked = written.positions[0], False
    return ReconciliationResult(
        reconciliation_id=str(run_id),
        account=account,
        broker=adapter.broker,
        venue=snapshot.venue,
        status=outcome.status,
        discrepancies=outcome.discrepancies,
        corrective_event_ids=[e.event_id for _, e in outcome.events],
        counts=dict(outcome.counts),
        errors=_errors(plan),
        duration_s=time.perf_counter() - started,
        blocked=blocked,
        position=position,
        venue_report_sha256=digest,
        corrective_events=[_summary(e) for _, e in outcome.events],
        dry_run=dry_run,
        stuck=outcome.flags,
        withheld=outcome.withheld,
    )


@dataclass(frozen=True)
class StuckThresholds:
    """How long an open order may stay where it should not (seconds; None: not checked):
    ``submitted``: recorded sent, never acknowledged; ``missing_at_venue``: still open after the
    venue said it does not know it (a ``missing_at_venue`` discrepancy, kept pending)."""

    submitted: float | None = 60.0
    missing_at_venue: float | None = 300.0

    def __post_init__(self) -> None:
        for name in ("submitted", "missing_at_venue"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise InvalidInput(f"stuck threshold {name} must be >= 0 seconds")


def stuck_orders(state: TradingState, account: str, venue: str, now: datetime,
                 thresholds: StuckThresholds) -> list[dict[str, Any]]:
    """The account's open orders at ``venue`` past ``thresholds`` (age: since their last status
    change), as discrepancy entries of kind ``stuck_submitted`` or ``stuck_missing_at_venue``
    (resolution ``pending``: a flag for an operator, nothing is changed)."""
    acct = state.accounts.get(account)
    if acct is None:
        return []
    flags = []
    for o in sorted(acct.open_orders.values(), key=lambda o: o.client_order_id):
        if o.venue != venue or o.updated_at is None:
            continue
        age = (now - o.updated_at).total_seconds()
        missing = any(key[0] == "missing_at_venue" for key in o.discrepancy_keys)
        if missing and thresholds.missing_at_venue is not None and age > thresholds.missing_at_venue:
            kind, limit = "stuck_missing_at_venue", thresholds.missing_at_venue
        elif o.status == "submitted" and thresholds.submitted is not None and age > thresholds.submitted:
            kind, limit = "stuck_submitted", thresholds.submitted
        else:
            continue
        flags.append({"kind": kind, "client_order_id": o.client_order_id, "symbol": o.symbol, "ours": o.status,
                      "resolution": "pending", "age_seconds": round(age, 3),
                      "detail": f"{o.status} for {age:.0f} s (threshold {limit:g} s)"
                                + ("; the venue does not know it" if missing else "")})
    return flags


@dataclass(frozen=True)
class _Outcome:
    """What one run records, from its plan: the events appended (none when withheld), the
    discrepancies with the stuck flags, the status and counts."""

    events: list[tuple[str, ev.Event]]
    discrepancies: list[dict[str, Any]]
    status: ev.ReconciliationStatus
    counts: dict[str, int]
    flags: list[dict[str, Any]]
    withheld: int

    @classmethod
    def of(cls, plan: ReconciliationPlan, *, withhold: bool, flags: list[dict[str, Any]]) -> _Outcome:
        discrepancies = [d.as_dict() for d in plan.discrepancies]
        counts = dict(plan.counts)
        withheld = len(plan.events) if withhold else 0
        if withheld:
            counts["withheld_events"] = withheld
            for d in discrepancies:
                if d["resolution"] == "corrected":
                    d["resolution"] = "withheld"  # seen through a partial answer: not acted on
        if flags:
            counts["stuck_orders"] = len(flags)
        status = plan.status
        if flags and status in ("clean", "corrected"):
            status = "discrepancies"
        return cls([] if withhold else list(plan.events), discrepancies + flags, status, counts, flags, withheld)


def _errors(plan: ReconciliationPlan) -> list[str]:
    return [u[:1000] for u in plan.unknown]


def _block_reason(plan: ReconciliationPlan) -> str:
    kinds: dict[str, int] = {}
    for d in plan.discrepancies:
        kinds[d.kind] = kinds.get(d.kind, 0) + 1
    parts = [f"{n} {kind}" for kind, n in sorted(kinds.items())]
    if plan.unknown:
        parts.append(f"{len(plan.unknown)} unknown ({plan.unknown[0]})")
    return ("strict reconciliation: " + ", ".join(parts))[:1000]


def acknowledge(client: TradestateClient | Writer, account: str, *, by: str, decision: str) -> Recorded:
    """Record an operator's decision on the discrepancies that blocked trading (unblocks it).
    An empty ``decision`` is ``InvalidInput``."""
    if not decision or not decision.strip():
        raise InvalidInput("acknowledge: say what was decided (--decision)")
    writer = _writer(client)
    writer.catch_up()
    state = writer.state.accounts.get(account)
    last = state.last_reconciliation if state is not None else None
    return writer.account_fact(
        ev.DiscrepancyAcknowledged, account, by=by, decision=decision,
        reconciliation_id=last["reconciliation_id"] if last else None,
    )


# ------------------------------------------------------------------------- continuous reconciliation


@dataclass
class FollowRound:
    """One round of ``reconcile_follow``: a result per adapter that answered, and the error of
    each adapter whose run failed outright (nothing recorded for it)."""

    number: int
    started_at: datetime
    results: list[ReconciliationResult] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # "broker venue account" -> error
    seconds: float = 0.0
    # "broker venue account" -> the three views compared (an account with a drop copy): the
    # report's rows that disagree, its alert count and whether the corrections were withheld
    three_way: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def withheld_by_alerts(self) -> list[str]:
        """The accounts whose corrections this round withheld: the API and the drop copy disagree."""
        return [where for where, report in self.three_way.items() if report["withheld"]]

    @property
    def stuck(self) -> list[dict[str, Any]]:
        """The stuck orders flagged in this round, every adapter's."""
        return [flag for r in self.results for flag in r.stuck]

    def as_dict(self) -> dict[str, Any]:
        """The round as plain JSON-ready values."""
        return {"round": self.number, "started_at": self.started_at.isoformat(), "seconds": self.seconds,
                "results": [r.as_dict() for r in self.results], "errors": self.errors, "stuck": self.stuck,
                **({"three_way": self.three_way} if self.three_way else {})}


def reconcile_follow(
    client: TradestateClient | Writer,
    adapters: list[BrokerAdapter],
    *,
    every: float = 30.0,
    rounds: int | None = None,
    stop: threading.Event | None = None,
    strict: bool = False,
    since: datetime | None = None,
    dry_run: bool = False,
    stuck: StuckThresholds | None = StuckThresholds(),
    lookup_limit: int = DEFAULT_LOOKUP_LIMIT,
    on_round: Callable[[FollowRound], None] | None = None,
    drop_copies: Sequence[BrokerAdapter] = (),
) -> list[FollowRound]:
    """Reconcile every adapter's account every ``every`` seconds (from one round's start to the
    next; a round longer than that is followed at once) until ``stop`` is set or ``rounds`` rounds
    ran. Each run is ``reconcile(..., correct_partial=False, stuck=stuck)``: a partial or failed
    venue answer corrects nothing, and open orders past the ``stuck`` thresholds are flagged.
    An adapter whose run raises (the venue away, a timeout) is reported in the round's ``errors``
    and tried again next round; nothing is recorded for it. ``on_round`` is told of each round
    (its errors are not caught). ``drop_copies``: FIX drop copies of some of the accounts (paired
    by account and venue): those are compared three ways on every round (``three_way``), their
    corrections withheld on alerts. Returns the rounds (only the last 100 are kept)."""
    from .three_way import pair_drop_copies, reconcile_one

    drops = pair_drop_copies(adapters, drop_copies)
    if not every > 0:
        raise InvalidInput("reconcile --every must be a positive number of seconds")
    if rounds is not None and rounds < 1:
        raise InvalidInput("reconcile --rounds must be at least 1")
    stop = stop or threading.Event()
    done: list[FollowRound] = []
    number = 0
    writer = _writer(client)
    while not stop.is_set():
        number += 1
        began = time.monotonic()
        current = FollowRound(number, writer.now())
        for i, adapter in enumerate(adapters):
            if stop.is_set():
                break
            where = f"{adapter.broker} {getattr(adapter, 'venue', '')} {adapter.account}".replace("  ", " ")
            try:
                result, three = reconcile_one(client, adapter, drops.get(i), strict=strict, since=since,
                                              dry_run=dry_run, stuck=stuck, lookup_limit=lookup_limit,
                                              correct_partial=False)
                current.results.append(result)
                if three is not None:
                    current.three_way[where] = three.as_dict()["three_way"]
            except InvalidInput:
                raise  # a mistake in the call, not a venue's bad moment
            except Exception as e:  # noqa: BLE001 - the next round tries again
                current.errors[where] = f"{type(e).__name__}: {e}"[:1000]
        current.seconds = time.monotonic() - began
        done.append(current)
        del done[:-100]
        if on_round is not None:
            on_round(current)
        if rounds is not None and number >= rounds:
            break
        stop.wait(max(0.0, every - (time.monotonic() - began)))
    return done


class ReconcileLoop:
    """``reconcile_follow`` in a daemon thread (the live order flow's continuous check).
    ``rounds`` holds the recent rounds, ``last`` the latest; ``stop()`` ends it within one venue
    query. An unexpected error ends the loop and is kept in ``error``."""

    def __init__(self, client: TradestateClient | Writer, adapters: list[BrokerAdapter], **options: Any):
        self.client = client
        self.adapters = adapters
        self.options = options
        self.rounds: list[FollowRound] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_round = options.pop("on_round", None)

    @property
    def last(self) -> FollowRound | None:
        """The latest round, or None before the first ended."""
        return self.rounds[-1] if self.rounds else None

    def _round(self, r: FollowRound) -> None:
        self.rounds.append(r)
        del self.rounds[:-100]
        if self._on_round is not None:
            self._on_round(r)

    def _run(self) -> None:
        try:
            reconcile_follow(self.client, self.adapters, stop=self._stop, on_round=self._round, **self.options)
        except BaseException as e:  # noqa: BLE001 - kept for the owner to see
            self.error = e

    def start(self) -> ReconcileLoop:
        """Start the thread (idempotent); returns self."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="tradestate-reconcile-loop", daemon=True)
            self._thread.start()
        return self

    def wait_rounds(self, n: int, timeout: float) -> bool:
        """Wait at most ``timeout`` s until ``n`` rounds ended; True if they did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.rounds) >= n or (self._thread is not None and not self._thread.is_alive()):
                return len(self.rounds) >= n
            time.sleep(0.02)
        return len(self.rounds) >= n

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the venue query in hand (waits at most ``timeout`` s)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


__all__ = [
    "BROKERS",
    "Discrepancy",
    "FollowRound",
    "ReconcileLoop",
    "ReconciliationResult",
    "StuckThresholds",
    "stuck_orders",
    "acknowledge",
    "make_adapter",
    "orders_touched",
    "reconcile",
    "reconcile_follow",
    "venue_report",
]
