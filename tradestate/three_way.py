"""Three-way reconciliation runner: the broker's API, a FIX drop copy and our log.

Both venues are read first (each answers completely or its parts are ``Unknown``), the log is
compared with them (``domain.three_way``), and then the two-way reconciliation runs on the *same*
API snapshot. When any row is an alert (the API is the odd one out, the drop copy is, or no two
views agree) nothing is corrected: the reconciliation runs as a dry run, so the report says what
a run would have appended, and the operator decides. Otherwise it runs as usual (the rows where
the log is behind are the ones its corrective events fix).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .adapters.brokers.base import BrokerAdapter
from .client import TradestateClient
from .domain.errors import InvalidInput
from .domain.three_way import ThreeWayReport, compare_three_ways, order_streams
from .loading import deciding
from .reconcile import ReconciliationResult, reconcile
from .writer import Writer


@dataclass(frozen=True)
class ThreeWayResult:
    """The comparison and the two-way reconciliation that followed it (a dry run on alerts)."""

    report: ThreeWayReport
    result: ReconciliationResult
    withheld: bool  # True: alerts, so nothing was corrected

    def as_dict(self) -> dict[str, Any]:
        return {**self.result.as_dict(), "three_way": {**self.report.as_dict(), "withheld": self.withheld}}


def reconcile_three_way(client: TradestateClient | Writer, adapter: BrokerAdapter, drop_copy: BrokerAdapter, *,
                        strict: bool = False, since: datetime | None = None, now: datetime | None = None,
                        dry_run: bool = False, **options: Any) -> ThreeWayResult:
    """Compare the log, ``adapter``'s API and ``drop_copy`` for one account (see the module
    docstring). ``options`` go to ``reconcile`` as they are (``stuck``, ``lookup_limit``,
    ``correct_partial``: a follow round's). Raises ``InvalidInput`` when the two adapters are not
    of the same account and venue."""
    if (adapter.account, adapter.venue) != (drop_copy.account, drop_copy.venue):
        raise InvalidInput(f"the drop copy is for {drop_copy.account}@{drop_copy.venue}, the broker for "
                           f"{adapter.account}@{adapter.venue}")
    writer = client if isinstance(client, Writer) else client.writer
    now = (now or writer.now()).astimezone(timezone.utc)
    api = adapter.snapshot(since, now=now)
    drop = drop_copy.snapshot(since, now=now)
    with writer.lock:
        writer.refresh()
        writer.load_orders(order_streams(adapter.account, [api, drop]))
        with deciding(writer.state) as state:
            report = compare_three_ways(state, api, drop)
    withheld = bool(report.alerts)
    # planned on exactly the snapshot the comparison saw; single-order lookups still go to the venue
    result = reconcile(client, adapter, strict=strict, since=since, now=now, dry_run=dry_run or withheld,
                       snapshot=api, **options)
    return ThreeWayResult(report, result, withheld)


def pair_drop_copies(adapters: Sequence[BrokerAdapter],
                     drop_copies: Sequence[BrokerAdapter]) -> dict[int, BrokerAdapter]:
    """Each drop copy paired with the broker adapter of its account and venue: adapter index ->
    drop copy. ``InvalidInput`` for a drop copy that matches no adapter, or two for one adapter."""
    paired: dict[int, BrokerAdapter] = {}
    for drop in drop_copies:
        match = [i for i, a in enumerate(adapters) if (a.account, a.venue) == (drop.account, drop.venue)]
        if not match:
            raise InvalidInput(f"the drop copy of {drop.account}@{drop.venue} matches no broker account (they are "
                               + ", ".join(f"{a.account}@{a.venue}" for a in adapters) + ")")
        if match[0] in paired:
            raise InvalidInput(f"two drop copies of {drop.account}@{drop.venue}")
        paired[match[0]] = drop
    return paired


def reconcile_one(client: TradestateClient | Writer, adapter: BrokerAdapter, drop_copy: BrokerAdapter | None,
                  **options: Any) -> tuple[ReconciliationResult, ThreeWayResult | None]:
    """One account's run inside a loop of runs (``reconcile --follow``, ``recover``): the
    three-way run when the account has a drop copy, else the two-way one; ``options`` go to
    either as they are. Returns the reconciliation and the three-way outcome (None: two-way)."""
    if drop_copy is None:
        return reconcile(client, adapter, **options), None
    outcome = reconcile_three_way(client, adapter, drop_copy, **options)
    return outcome.result, outcome


__all__ = ["ThreeWayResult", "pair_drop_copies", "reconcile_one", "reconcile_three_way"]
