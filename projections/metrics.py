"""Prometheus metrics of the read models, read from the database at scrape time.

The API keeps a registry of its own (``CollectorRegistry``) holding one collector that queries
the log and the projection tables on every scrape, so concurrent scrapes never race on shared
gauge objects and a value is never older than the scrape. ``/metrics`` serves that registry
together with ``prometheus_client.REGISTRY``: whatever the client library registers in-process
(append counters, latency histograms...) shows up when an engine embeds the server. A family
name registered in both is served once, ours first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..domain.state import OPEN_STATUSES, TERMINAL_STATUSES

ORDER_STATUSES: tuple[str, ...] = tuple(sorted(OPEN_STATUSES | TERMINAL_STATUSES))


@dataclass
class MetricsSnapshot:
    """What one scrape reads from the database (in one read transaction)."""

    log_head: int = 0
    projection_position: int = 0
    lag_events: int = 0
    lag_seconds: float = 0.0
    orders_by_status: dict[str, int] = field(default_factory=dict)
    kill_switch: dict[str, bool] = field(default_factory=dict)  # account -> engaged
    breaker_active: dict[str, bool] = field(default_factory=dict)  # account -> active now
    engines: list[dict[str, Any]] = field(default_factory=list)  # tradestate.engines.engine_rows
    # what the alerting rules (projections/http/alerts.rules.yml) watch
    accounts: list[dict[str, Any]] = field(default_factory=list)  # ts_risk_state rows
    positions: list[dict[str, Any]] = field(default_factory=list)  # queries.operations
    limits: list[dict[str, Any]] = field(default_factory=list)
    open_discrepancies: dict[str, int] = field(default_factory=dict)
    fees_pending: dict[str, tuple[int, Any]] = field(default_factory=dict)  # account -> (fills, oldest fill's time)
    now: float = 0.0  # unix time of the scrape (seconds since the last reconciliation)
    drill: dict[str, Any] | None = None  # queries.last_drill: the last restore drill on record


class ReadModelCollector:
    """Yields the read-model gauges; ``read`` returns a snapshot or raises on a database error."""

    def __init__(self, read: Callable[[], MetricsSnapshot]):
        self._read = read

    def describe(self) -> Iterable[Metric]:
        """No families at registration: every value is read from the database at scrape time."""
        return []  # values come from the database at scrape time: nothing to read at register time

    def collect(self) -> Iterator[Metric]:
        """``tradestate_api_database_up`` (0 and nothing else when the database cannot be read), then
        the log head, projection position, lag, orders by status, refusals and breakers from one
        snapshot."""
        up = GaugeMetricFamily("tradestate_api_database_up",
                               "1 if the last scrape could read the database, 0 otherwise")
        try:
            snap = self._read()
        except Exception:  # noqa: BLE001 - a scrape must still answer (and say the database is down)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield _gauge("tradestate_log_head", "Last global position of the trading log", snap.log_head)
        yield _gauge("tradestate_projection_position",
                     "Last log position the read-model tables include", snap.projection_position)
        yield _gauge("tradestate_projection_lag_events",
                     "Log events not yet in the read-model tables", snap.lag_events)
        yield _gauge("tradestate_projection_lag_seconds",
                     "Seconds since the oldest unprojected event was recorded (0 when caught up)",
                     snap.lag_seconds)
        orders = GaugeMetricFamily("tradestate_orders", "Orders in the read model by status",
                                   labels=["status"])
        for status in sorted(set(ORDER_STATUSES) | set(snap.orders_by_status)):
            orders.add_metric([status], snap.orders_by_status.get(status, 0))
        yield orders
        refusals = CounterMetricFamily("tradestate_risk_refusals",
                                       "Order intents refused by the pre-trade risk check (orders with status 'refused')")
        refusals.add_metric([], snap.orders_by_status.get("refused", 0))
        yield refusals
        kill = GaugeMetricFamily("tradestate_kill_switch_engaged", "1 if the account's kill switch is engaged",
                                 labels=["account"])
        for account, engaged in sorted(snap.kill_switch.items()):
            kill.add_metric([account], 1 if engaged else 0)
        yield kill
        breaker = GaugeMetricFamily("tradestate_breaker_active",
                                    "1 if the account's circuit breaker is tripped and not expired",
                                    labels=["account"])
        for account, active in sorted(snap.breaker_active.items()):
            breaker.add_metric([account], 1 if active else 0)
        yield breaker
        yield from _engine_families(snap.engines)
        yield from _operation_families(snap)
        yield from _drill_families(snap.drill)


def _drill_families(drill: dict[str, Any] | None) -> Iterator[Metric]:
    """The last restore drill (``tradestate drill``); no samples when none is on record (alert on
    ``absent(...)`` or on ``time() - tradestate_drill_last_completed_timestamp_seconds``)."""
    at = GaugeMetricFamily("tradestate_drill_last_completed_timestamp_seconds",
                           "Unix time the last restore drill finished")
    passed = GaugeMetricFamily("tradestate_drill_passed", "1 if the last restore drill passed, 0 if it failed")
    rto = GaugeMetricFamily("tradestate_drill_rto_seconds",
                            "The last drill's RTO: seconds from its start to a ready state (absent: not reached)")
    rpo = GaugeMetricFamily("tradestate_drill_rpo_seconds",
                            "The last drill's RPO: age of the newest backed-up event when it ran")
    behind = GaugeMetricFamily("tradestate_drill_events_behind",
                               "Live trading events beyond the backup when the last drill ran")
    if drill is not None:
        if drill.get("finished_at") is not None:
            at.add_metric([], drill["finished_at"].timestamp())
        passed.add_metric([], 1 if drill.get("outcome") == "passed" else 0)
        for family, key in ((rto, "rto_seconds"), (rpo, "rpo_seconds"), (behind, "events_behind")):
            if drill.get(key) is not None:
                family.add_metric([], float(drill[key]))
    yield from (at, passed, rto, rpo, behind)


def _num(value: Any) -> float:
    return float(value) if value not in (None, "") else 0.0


def _operation_families(snap: MetricsSnapshot) -> Iterator[Metric]:
    """Positions and P&L, limit usage, blocked accounts, discrepancies and reconciliation age."""
    labels = ["account", "venue", "symbol"]
    qty = GaugeMetricFamily("tradestate_position_qty", "Position quantity (negative: short)", labels=labels)
    realized = GaugeMetricFamily("tradestate_position_realized_pnl", "Realised P&L of the position before fees",
                                 labels=labels)
    unrealized = GaugeMetricFamily("tradestate_position_unrealized_pnl",
                                   "Unrealised P&L of the position at the last fill price", labels=labels)
    for p in snap.positions:
        key = [p["account"], p["venue"], p["symbol"]]
        qty.add_metric(key, _num(p["qty"]))
        realized.add_metric(key, _num(p["realized_pnl"]))
        unrealized.add_metric(key, _num(p["unrealized_pnl"]))
    yield from (qty, realized, unrealized)
    used = GaugeMetricFamily("tradestate_limit_used", "Usage of a risk limit (same unit as the limit)",
                             labels=["account", "limit", "symbol"])
    effective = GaugeMetricFamily("tradestate_limit_effective", "A risk limit's value after the ramp",
                                  labels=["account", "limit", "symbol"])
    ratio = GaugeMetricFamily("tradestate_limit_usage_ratio", "Usage of a risk limit as a fraction of its "
                              "effective value (absent for a zero limit)", labels=["account", "limit", "symbol"])
    for u in snap.limits:
        key = [u["account"], u["limit_name"], u["symbol"] or ""]
        used.add_metric(key, _num(u["used"]))
        effective.add_metric(key, _num(u["effective"]))
        if _num(u["effective"]) > 0:
            ratio.add_metric(key, abs(_num(u["used"])) / _num(u["effective"]))
    yield from (used, effective, ratio)
    blocked = GaugeMetricFamily("tradestate_account_blocked", "1 if the account's trading is blocked until an "
                                "operator acknowledges (strict recovery or reconciliation)", labels=["account"])
    recorded = CounterMetricFamily("tradestate_discrepancies", "Discrepancies recorded for the account (all time)",
                                   labels=["account"])
    open_ = GaugeMetricFamily("tradestate_discrepancies_open", "Discrepancies recorded on orders still open "
                              "(e.g. missing_at_venue kept pending)", labels=["account"])
    age = GaugeMetricFamily("tradestate_reconciliation_age_seconds", "Seconds since the account's last "
                            "reconciliation (absent: never reconciled)", labels=["account"])
    status = GaugeMetricFamily("tradestate_reconciliation_status", "1 for the status of the account's last "
                               "reconciliation", labels=["account", "status"])
    for a in snap.accounts:
        name = a["account"]
        blocked.add_metric([name], 1 if a.get("trading_blocked") else 0)
        recorded.add_metric([name], int(a.get("discrepancies") or 0))
        open_.add_metric([name], snap.open_discrepancies.get(name, 0))
        at = a.get("last_reconciled_at")
        if at is not None:
            age.add_metric([name], max(0.0, snap.now - at.timestamp()))
            for s in ("clean", "corrected", "discrepancies", "unknown"):
                status.add_metric([name, s], 1 if a.get("last_reconciliation_status") == s else 0)
    yield from (blocked, recorded, open_, age, status)
    pending = GaugeMetricFamily("tradestate_fees_pending", "Fills whose fee the venue has not reported yet "
                                "(IB's commission report)", labels=["account"])
    overdue = GaugeMetricFamily("tradestate_fees_pending_oldest_age_seconds", "Seconds since the oldest fill whose "
                                "fee is still to come (absent: none pending)", labels=["account"])
    for name, (count, oldest) in sorted(snap.fees_pending.items()):
        pending.add_metric([name], count)
        if oldest is not None:
            overdue.add_metric([name], max(0.0, snap.now - oldest.timestamp()))
    yield from (pending, overdue)


def _engine_families(rows: list[dict[str, Any]]) -> Iterator[Metric]:
    """The engines' lease gauges, for alerting on a dead or hung engine: ``up`` is 1 while the lease is
    renewed in time, 0 once it expired unrenewed (an engine stopped cleanly has no ``up``: nothing to
    alert on; ``state`` says it)."""
    leased = [r for r in rows if r.get("lease") in ("active", "expired", "released")]
    age = GaugeMetricFamily("tradestate_engine_lease_renewal_age_seconds",
                            "Seconds since the engine's lease holder last renewed it (database clock)",
                            labels=["engine", "holder"])
    up = GaugeMetricFamily("tradestate_engine_up", "1 if the engine renews its lease in time, 0 if it expired "
                                                   "unrenewed (dead, hung or cut off)", labels=["engine"])
    epoch = GaugeMetricFamily("tradestate_engine_lease_epoch", "The current epoch of the engine's lease",
                              labels=["engine"])
    state = GaugeMetricFamily("tradestate_engine_state", "1 for the engine's state (active, dead, stopped)",
                              labels=["engine", "state"])
    standbys = GaugeMetricFamily("tradestate_engine_standbys",
                                 "Standbys of the engine that checked in within 10 s (ready to take over)",
                                 labels=["engine"])
    for row in leased:
        name = row["engine_id"]
        standbys.add_metric([name], sum(1 for r in rows if r["engine_id"] == name and r["state"] == "standby"))
        age.add_metric([name, row.get("holder") or ""], row.get("renewal_age_seconds") or 0.0)
        if row["state"] in ("active", "dead"):
            up.add_metric([name], 1 if row["state"] == "active" else 0)
        epoch.add_metric([name], row.get("epoch") or 0)
        for s in ("active", "dead", "stopped"):
            state.add_metric([name, s], 1 if row["state"] == s else 0)
    yield from (age, up, epoch, state, standbys)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class CombinedRegistry:
    """Our registry, then the process-wide default one (families we already served skipped)."""

    def __init__(self, own: CollectorRegistry, shared: Any = REGISTRY):
        self.own = own
        self.shared = shared

    def collect(self) -> Iterator[Metric]:
        """Our families, then the default registry's, each family name once (ours wins)."""
        seen: set[str] = set()
        for family in self.own.collect():
            seen.add(family.name)
            yield family
        for family in self.shared.collect():
            if family.name not in seen:
                seen.add(family.name)
                yield family


def make_registry(read: Callable[[], MetricsSnapshot]) -> CombinedRegistry:
    """A registry whose read-model gauges come from ``read()`` at each scrape (a failing read
    gives ``tradestate_api_database_up 0``), followed by the process's default registry."""
    own = CollectorRegistry(auto_describe=False)
    own.register(ReadModelCollector(read))
    return CombinedRegistry(own)


def exposition(registry: CombinedRegistry) -> bytes:
    """The Prometheus text format of both registries."""
    return generate_latest(registry)  # type: ignore[arg-type] - any object with collect() will do
