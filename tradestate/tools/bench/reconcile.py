"""``tradestate bench`` group ``reconcile``: reconciling 10,000 positions and 10,000 open orders,
venue I/O excluded.

The log holds 10,000 filled orders (one position each) and 10,000 open orders; the venue's
snapshot, built in memory, agrees except for 1 % of the positions (drift no fill explains) and 1 %
of the open orders (a fill we missed), so the plan has real work to do.

``reconcile_plan_10k``  the pure diff and plan (``plan_reconciliation``), best of the repeats.
                        Baseline: folding the same 50,000 events into a fresh state (what a
                        restart costs before any reconciliation can start).
``reconcile_run_10k``   informative: the whole run on SQLite (catch up, plan, hash the raw report,
                        append the corrections and the ReconciliationCompleted in one commit).
                        Baseline: the plan alone.

Target: the plan < 1 s.
"""

from __future__ import annotations

import gc
import os
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid5

from .common import BenchContext, Result, log

TARGET_PLAN_S = 1.0
N = 10_000
ACCOUNT = "bench-acct"
VENUE = "SIM"
T0 = datetime(2026, 3, 2, 14, 30, tzinfo=timezone.utc)
NS = UUID("0b6c2f0e-3a43-4f57-9d0c-1b7f3b0e2a11")


def _events() -> list[tuple[str, str, dict[str, Any]]]:
    """(stream, type, payload) of the log: N filled orders and N open orders, all acknowledged."""
    from ...domain import events as ev
    from ...domain.ids import order_stream_id

    out = []
    at = T0.isoformat().replace("+00:00", "Z")
    for kind, n in (("f", N), ("o", N)):
        for i in range(n):
            coid = f"{kind}{i}"
            stream = order_stream_id(ACCOUNT, coid)
            intent_id = uuid5(NS, coid)
            side = "buy" if i % 2 else "sell"
            base = {"account": ACCOUNT, "client_order_id": coid, "correlation_id": str(intent_id), "causation_id": None,
                    "occurred_at": at, ev.SCHEMA_KEY: 1}
            out.append((stream, "OrderIntentRecorded", {
                **base, "event_id": str(intent_id), "venue": VENUE, "symbol": f"S{i}", "side": side,
                "order_type": "limit", "qty": "100", "limit_price": "50", "stop_price": None, "time_in_force": "day",
                "strategy_id": None, "reference_price": None}))
            out.append((stream, "OrderAcknowledged", {**base, "event_id": str(uuid5(NS, coid + "a")),
                                                      "venue_order_id": f"V-{coid}"}))
            if kind == "f":
                out.append((stream, "OrderFilled", {
                    **base, "event_id": str(uuid5(NS, coid + "x")), "exec_id": f"X-{coid}", "qty": "100",
                    "price": "50", "fee": "0", "fee_currency": "USD", "liquidity": "unknown",
                    "venue_order_id": f"V-{coid}", ev.SCHEMA_KEY: 2}))
    return out


def _fold(events: list[tuple[str, str, dict[str, Any]]]) -> Any:
    from ...domain.state import TradingState

    state = TradingState()
    versions: dict[str, int] = {}
    for position, (stream, type_name, payload) in enumerate(events, 1):
        versions[stream] = versions.get(stream, 0) + 1
        state.apply(position, stream, versions[stream], type_name, payload, T0)
    return state


def _snapshot() -> Any:
    from ...adapters.brokers.base import VenueBalance, VenueFill, VenueOrder, VenuePosition, VenueSnapshot

    positions = []
    for i in range(N):
        qty = Decimal(100 if i % 2 else -100)
        if i % 100 == 0:
            qty += 7  # drift no fill explains
        positions.append(VenuePosition(f"S{i}", qty, Decimal(50), raw={"symbol": f"S{i}", "qty": str(qty)}))
    orders, fills = [], []
    for i in range(N):
        coid = f"o{i}"
        side = "buy" if i % 2 else "sell"
        filled = Decimal(10) if i % 100 == 0 else Decimal(0)
        if filled:
            fills.append(VenueFill(f"X-{coid}", coid, f"V-{coid}", f"S{i}", side, filled, Decimal(50),
                                   occurred_at=T0 + timedelta(minutes=1), raw={"exec_id": f"X-{coid}"}))
            positions[i] = VenuePosition(f"S{i}", positions[i].qty + (filled if side == "buy" else -filled),
                                         Decimal(50), raw=positions[i].raw)
        orders.append(VenueOrder(f"V-{coid}", coid, f"S{i}", side, "limit", Decimal(100), filled,
                                 "partially_filled" if filled else "open", "open", limit_price=Decimal(50),
                                 submitted_at=T0, updated_at=T0, raw={"id": f"V-{coid}", "client_order_id": coid}))
    return VenueSnapshot(broker="sim", venue=VENUE, account=ACCOUNT, taken_at=T0 + timedelta(hours=1),
                         positions=positions, open_orders=orders, recent_orders=list(orders), fills=fills,
                         balances=[VenueBalance("USD", Decimal(100000), raw={"cash": "100000"})])


def _best(fn: Any, repeats: int, clock: Any = time.perf_counter) -> tuple[float, Any]:
    best, value = float("inf"), None
    for _ in range(repeats):
        gc.collect()
        started = clock()
        value = fn()
        best = min(best, clock() - started)
    return best, value


class _InMemoryAdapter:
    """A BrokerAdapter answering from a prepared snapshot: the venue's I/O is not measured."""

    def __new__(cls, snapshot: Any) -> Any:
        from ...adapters.brokers.base import BrokerAdapter, OrderNotFound

        class Prepared(BrokerAdapter):
            broker, venue, account = snapshot.broker, snapshot.venue, snapshot.account

            def positions(self): return snapshot.positions  # noqa: E704
            def open_orders(self): return snapshot.open_orders  # noqa: E704
            def recent_orders(self, since=None): return snapshot.recent_orders  # noqa: E704
            def fills(self, since=None): return snapshot.fills  # noqa: E704
            def balances(self): return snapshot.balances  # noqa: E704

            def order_by_client_id(self, client_order_id):
                raise OrderNotFound(client_order_id)

        return Prepared()


def _run_on_sqlite(workdir: str, events: list[tuple[str, str, dict[str, Any]]], snapshot: Any) -> float:
    import orjson

    from ...adapters.store import new_event, open_store
    from ...client import TradestateClient
    from ...reconcile import reconcile

    path = os.path.join(workdir, "reconcile.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    url = f"sqlite:///{path}"
    with open_store(url) as store:
        versions: dict[str, int] = {}
        batch = []
        for stream, type_name, payload in events:
            versions[stream] = versions.get(stream, 0) + 1
            batch.append(new_event(stream, versions[stream], type_name, orjson.dumps(payload)))
            if len(batch) == 5_000:
                store.trading.append(batch)
                batch = []
        if batch:
            store.trading.append(batch)
    client = TradestateClient(open_store(url), use_checkpoints=False)
    try:
        gc.collect()
        started = time.perf_counter()
        result = reconcile(client, _InMemoryAdapter(snapshot), now=snapshot.taken_at)
        elapsed = time.perf_counter() - started
        if result.status != "corrected":
            raise RuntimeError(f"bench reconcile: expected corrections, got {result.status}")
        return elapsed
    finally:
        client.close()


def run(ctx: BenchContext) -> list[Result]:
    """Measure; return the rows."""
    from ...domain.reconcile import plan_reconciliation

    events = _events()
    repeats = max(2, ctx.sizes.repeats)
    fold_s, state = _best(lambda: _fold(events), repeats)
    snapshot = _snapshot()
    now = snapshot.taken_at
    plan_s, plan = _best(lambda: plan_reconciliation(state, snapshot, reconciliation_id=NS, now=now), repeats)
    corrections = len(plan.events)
    # a missed fill per 100 open orders, a drift per 100 positions, the first cash balance
    if corrections != N // 50 + 1:
        raise RuntimeError(f"bench reconcile: expected {N // 50 + 1} corrective events, planned {corrections}")
    log(f"reconcile: plan {plan_s * 1000:.0f} ms for {N:,} positions and {N:,} open orders "
        f"({corrections} corrections); folding the {len(events):,} events {fold_s * 1000:.0f} ms")
    results = [Result("reconcile_plan_10k", "memory", plan_s, "s", f"fold_{len(events) // 1000}k_events",
                      fold_s, plan_s / fold_s)]
    if "sqlite" in ctx.backends:
        run_s = _run_on_sqlite(ctx.workdir, events, snapshot)
        log(f"reconcile: whole run on SQLite {run_s * 1000:.0f} ms (report hashed and stored, one commit)")
        results.append(Result("reconcile_run_10k", "sqlite", run_s, "s", "reconcile_plan_10k", plan_s,
                              run_s / plan_s))
    return results


def targets(results: list[Result]) -> list[tuple[bool, str]]:
    """(met, line) for each target of this group found in results."""
    lines = []
    for r in results:
        if r.metric == "reconcile_plan_10k":
            lines.append((r.value < TARGET_PLAN_S, f"reconcile 10k positions + 10k open orders (plan, no venue I/O): "
                                                   f"{r.value * 1000:.0f} ms, {r.value / TARGET_PLAN_S:.2f}x the target "
                                                   f"(target < {TARGET_PLAN_S * 1000:.0f} ms)"))
    return lines
