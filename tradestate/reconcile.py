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
import time
from dataclasses import dataclass, field
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
) -> ReconciliationResult:
    """Reconcile one broker account with the log; see the module docstring. ``client``: the
    client (or its ``Writer``) whose log is reconciled. Raises ``InvalidInput`` for naive times.

    ``dry_run``: query the venue and plan exactly as a run would, against the log as it is now,
    and append nothing. The result (``dry_run`` True, ``position`` 0) says what a run would
    append: ``corrective_event_ids``/``corrective_events``, and ``blocked`` if it would block."""
    started = time.perf_counter()
    writer = _writer(client)
    if now is None:
        now = writer.now()
    if now.tzinfo is None or (since is not None and since.tzinfo is None):
        raise InvalidInput("reconcile: now and since must be timezone-aware")
    now = now.astimezone(timezone.utc)
    account = adapter.account
    snapshot = adapter.snapshot(since, now=now)
    writer.catch_up()
    lookups = look_up(adapter, orders_to_look_up(writer.state, snapshot), lookup_limit)
    report, digest = venue_report(snapshot, lookups)
    run_id = fact_id("reconciliation", account, adapter.broker, snapshot.venue, digest)
    completed_id = fact_id("ReconciliationCompleted", run_id)

    def decide(state: TradingState) -> Decided[tuple[ReconciliationPlan, bool]]:
        # Runs after every catch-up (again after a conflict): the plan is always against the log
        # as it is now, so a concurrent writer's events are never corrected twice.
        plan = plan_reconciliation(state, snapshot, reconciliation_id=run_id, now=now, lookups=lookups)
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
            status=plan.status,
            counts=plan.counts,
            discrepancies=[d.as_dict() for d in plan.discrepancies],
            corrective_event_ids=plan.event_ids,
            errors=_errors(plan)[:MAX_ERRORS],
            venue_report=report,
            venue_report_sha256=digest,
        )
        events = [*plan.events, (account_stream_id(account), completed)]
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
        return Decided(rules.Append(events), (plan, block))

    touched = orders_touched(account, snapshot, lookups)
    if dry_run:
        with writer.lock:
            writer.refresh()
            writer.load_orders(touched)
            with deciding(writer.state) as state:
                planned = decide(state)
        plan, blocked = planned.value  # type: ignore[misc]
        position = 0
    else:
        written = writer.record(decide, orders=touched)
        plan, blocked = written.value  # type: ignore[misc]
        if isinstance(written.decision, rules.Append):
            position = written.positions[len(plan.events)]
        else:  # cannot happen: decide always appends
            position, blocked = written.positions[0], False
    return ReconciliationResult(
        reconciliation_id=str(run_id),
        account=account,
        broker=adapter.broker,
        venue=snapshot.venue,
        status=plan.status,
        discrepancies=[d.as_dict() for d in plan.discrepancies],
        corrective_event_ids=plan.event_ids,
        counts=dict(plan.counts),
        errors=_errors(plan),
        duration_s=time.perf_counter() - started,
        blocked=blocked,
        position=position,
        venue_report_sha256=digest,
        corrective_events=[_summary(e) for _, e in plan.events],
        dry_run=dry_run,
    )


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


__all__ = [
    "BROKERS",
    "Discrepancy",
    "ReconciliationResult",
    "acknowledge",
    "make_adapter",
    "orders_touched",
    "reconcile",
    "venue_report",
]
