"""Start from the venue: adopt tradestate on an account that already trades.

``bootstrap`` reads the account at the venue (positions, open and recent orders with their fills,
cash), plans the opening events exactly as a reconciliation of an empty log would (the same
planner, so a reconciliation right after finds nothing to correct), and appends them in one
transaction with the ``ReconciliationCompleted`` that stores the raw venue report and an
``AccountBootstrapped`` marker:

- positions: ``PositionCorrected`` from zero to the venue's quantity (what the imported orders'
  fills do not already explain), with the venue's average cost;
- orders: ``OrderImported`` (they never passed our pre-trade check, and say so) with their fills
  and, for finished ones, their terminal event;
- cash: ``CashBalanceRecorded`` per currency.

All or nothing: a query that failed, a record our events refuse, or anything the planner could
not settle makes it append nothing (``VenueIncomplete``). An account the log already holds is
refused (``AccountOnRecord``): its state is there, a reconciliation is what corrects it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .adapters.brokers.base import BrokerAdapter, Unknown
from .client import TradestateClient
from .domain import events as ev
from .domain import orders as rules
from .domain.errors import AccountOnRecord, InvalidInput, VenueIncomplete
from .domain.ids import account_stream_id
from .domain.reconcile import PARTS, ReconciliationPlan, fact_id, plan_reconciliation
from .domain.state import TradingState
from .reconcile import _summary, orders_touched, venue_report
from .writer import Decided, Writer, build_event


@dataclass(frozen=True)
class BootstrapResult:
    account: str
    broker: str
    venue: str
    reconciliation_id: str
    venue_report_sha256: str
    counts: dict[str, int]
    events: list[dict[str, Any]] = field(default_factory=list)  # type and a summary of each opening event
    position: int = 0  # log position of the AccountBootstrapped marker
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def account_on_record(state: TradingState, account: str) -> str | None:
    """Why the log already holds ``account`` (None: it holds nothing of it)."""
    if account_stream_id(account) in state.stream_versions:
        return "its account stream has events"
    held = state.accounts.get(account)
    if held is not None:
        return "orders of it are recorded"
    if any(key[0] == account for key in state.positions):
        return "positions of it are recorded"
    return None


def _problems(snapshot: Any, plan: ReconciliationPlan) -> list[str]:
    problems = [f"{part}: {getattr(snapshot, part).reason}" for part in PARTS
                if isinstance(getattr(snapshot, part), Unknown)]
    problems += plan.unknown
    problems += [f"{d.kind}: {d.detail}" for d in plan.discrepancies if d.resolution != "corrected"]
    return problems


def bootstrap(
    client: TradestateClient | Writer,
    adapter: BrokerAdapter,
    *,
    since: datetime | None = None,
    now: datetime | None = None,
    reason: str = "opening state imported from the venue",
) -> BootstrapResult:
    """Import ``adapter``'s account from the venue as the opening events of the log; see the
    module docstring. ``since``: the window of recent orders and fills asked for (default: what
    the venue reports by default). Raises ``AccountOnRecord`` or ``VenueIncomplete`` with nothing
    appended; ``InvalidInput`` for naive times."""
    started = time.perf_counter()
    writer = client if isinstance(client, Writer) else client.writer
    if now is None:
        now = writer.now()
    if now.tzinfo is None or (since is not None and since.tzinfo is None):
        raise InvalidInput("bootstrap: now and since must be timezone-aware")
    now = now.astimezone(timezone.utc)
    account = adapter.account
    writer.catch_up()
    held = account_on_record(writer.state, account)
    if held is not None:  # before asking the venue anything
        raise AccountOnRecord(account, held)
    snapshot = adapter.snapshot(since, now=now)
    report, digest = venue_report(snapshot, {})
    run_id = fact_id("bootstrap", account, adapter.broker, snapshot.venue, digest)
    stream = account_stream_id(account)

    def decide(state: TradingState) -> Decided[ReconciliationPlan]:
        # Again on the freshest state: another writer may have recorded the account meanwhile.
        held = account_on_record(state, account)
        if held is not None:
            raise AccountOnRecord(account, held)
        plan = plan_reconciliation(state, snapshot, reconciliation_id=run_id, now=now, lookups={})
        problems = _problems(snapshot, plan)
        if problems:
            raise VenueIncomplete(f"bootstrap of {account} at {snapshot.venue}: nothing appended, the venue's "
                                  f"answer cannot be imported in full: " + "; ".join(problems[:5])[:2000])
        completed_id = fact_id("ReconciliationCompleted", run_id)
        completed = build_event(
            ev.ReconciliationCompleted, event_id=completed_id, occurred_at=now, causation_id=run_id,
            account=account, reconciliation_id=str(run_id), broker=adapter.broker, venue=snapshot.venue,
            status=plan.status, counts=plan.counts, discrepancies=[d.as_dict() for d in plan.discrepancies],
            corrective_event_ids=plan.event_ids, venue_report=report, venue_report_sha256=digest,
        )
        counts = _opening_counts(plan, snapshot)
        marker = build_event(
            ev.AccountBootstrapped, event_id=fact_id("AccountBootstrapped", run_id), occurred_at=now,
            causation_id=completed_id, account=account, broker=adapter.broker, venue=snapshot.venue,
            reconciliation_id=str(run_id), venue_report_sha256=digest, counts=counts, reason=reason,
        )
        return Decided(rules.Append([*plan.events, (stream, completed), (stream, marker)]), plan)

    written = writer.record(decide, orders=orders_touched(account, snapshot, {}))
    plan = written.value
    assert plan is not None
    return BootstrapResult(
        account=account, broker=adapter.broker, venue=snapshot.venue, reconciliation_id=str(run_id),
        venue_report_sha256=digest, counts=_opening_counts(plan, snapshot), events=[_summary(e) for _, e in plan.events],
        position=written.positions[-1], duration_s=time.perf_counter() - started,
    )


def _opening_counts(plan: ReconciliationPlan, snapshot: Any) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for _, e in plan.events:
        kinds[e.type_name()] = kinds.get(e.type_name(), 0) + 1
    return {
        "positions": kinds.get("PositionCorrected", 0),
        "orders_imported": kinds.get("OrderImported", 0),
        "open_orders": len(snapshot.open_orders),  # known: an unknown part appends nothing
        "fills": kinds.get("OrderFilled", 0),
        "balances": kinds.get("CashBalanceRecorded", 0),
        "events": len(plan.events),
    }


__all__ = ["BootstrapResult", "account_on_record", "bootstrap"]
