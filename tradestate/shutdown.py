"""Graceful shutdown (seed 003 §02): checks, an open-order policy, a final checkpoint, a recorded stop.

``shutdown(client, engine_id, policy=..., kind=...)`` runs, in order:

1. **pre-shutdown checks**, each with what it saw: the lease (still ours?), the engine's run,
   open orders, orders sent but not acknowledged (pending acks), open positions, unresolved
   discrepancies and blocked accounts, and (planned only) the projector caught up with the log;
2. **the open-order policy**: ``leave`` (orders stay working at the venue), ``cancel`` (an
   ``OrderCancelRequested`` per open order of ours, recorded before anything is sent; with
   ``adapters``, the cancel is sent to the venue too) or ``flatten`` (cancel, then an intent per
   non-zero position, opposite side, market, through the normal pre-trade check: a refused one is
   recorded and reported, never forced; with ``adapters``, forwarded to the venue);
3. **settle** (with ``adapters``): the venue's updates are recorded, and a planned shutdown then
   reconciles each account, so the venue's answers (cancel confirmations, fills) are on record
   before the stop and the next start finds nothing new;
4. **a final checkpoint** of the state at the head (the next start is warm);
5. **the stop**: ``ShutdownCompleted`` (the summary) and ``EngineStopped`` in one transaction,
   then the lease is handed back (``LeaseReleased``) when this client holds the engine's lease.

``kind="emergency"`` needs a ``reason``, skips the slow steps (the projector wait and the final
reconciliation; a checkpoint that fails does not stop it) and cancels at least: a ``leave``
policy is raised to ``cancel``. Orders imported from the venue (placed outside tradestate) are
never cancelled or counted as ours to cancel: they are reported as left.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any, Literal
from uuid import uuid4

from .client import TradestateClient
from .domain import events as ev
from .domain import orders as rules
from .domain.errors import InvalidInput, InvalidTransition, TradestateError
from .domain.ids import engine_stream_id
from .writer import build_event

POLICIES = ("leave", "cancel", "flatten")
KINDS = ("planned", "emergency")
MAX_SHUTDOWN_IDS = 1000  # client order ids listed in ShutdownCompleted (the counts are whole)
DEFAULT_PROJECTOR_WAIT = 5.0  # seconds a planned shutdown waits for the projector to catch up


@dataclass
class Check:
    name: str
    status: Literal["ok", "warn", "failed", "skipped"]
    detail: str
    counts: dict[str, Any] = field(default_factory=dict)


@dataclass
class ShutdownReport:
    engine_id: str
    kind: str
    policy: str  # the policy applied (an emergency raises leave to cancel)
    reason: str
    checks: list[Check] = field(default_factory=list)
    cancel_requested: list[str] = field(default_factory=list)  # client order ids
    cancels_sent: int = 0
    flatten_intents: list[str] = field(default_factory=list)  # accepted flattening intents (client order ids)
    flatten_refused: list[dict[str, Any]] = field(default_factory=list)
    venue_errors: list[str] = field(default_factory=list)
    reconciliations: list[dict[str, Any]] = field(default_factory=list)
    checkpoint_position: int | None = None
    stopped_position: int = 0  # position of the ShutdownCompleted
    open_orders_left: int = 0
    positions_left: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)


def _ours(order: Any) -> bool:
    return not order.external


def _pre_checks(client: TradestateClient, engine_id: str, kind: str, projector_wait: float) -> list[Check]:
    state = client.state
    checks: list[Check] = []
    lease = client.lease
    if lease is None or lease.engine_id != engine_id:
        checks.append(Check("lease", "skipped", f"this client holds no lease of engine {engine_id!r}"))
    elif lease.lost:
        checks.append(Check("lease", "failed", f"the lease of {engine_id!r} was lost: another engine took over"))
    else:
        checks.append(Check("lease", "ok", f"lease of {engine_id!r} held (epoch {lease.fence.epoch})",
                            {"epoch": lease.fence.epoch}))
    engine = state.engines.get(engine_id)
    if engine is None:
        checks.append(Check("engine", "warn", f"no run of engine {engine_id!r} on record"))
    else:
        checks.append(Check("engine", "ok", f"engine {engine_id!r} {'running' if engine.get('running') else 'not running'}",
                            {"running": bool(engine.get("running"))}))
    open_orders = [o for a in state.accounts.values() for o in a.open_orders.values()]
    ours = [o for o in open_orders if _ours(o)]
    checks.append(Check("open_orders", "warn" if ours else "ok",
                        f"{len(ours)} open orders of ours, {len(open_orders) - len(ours)} imported from the venue",
                        {"ours": len(ours), "imported": len(open_orders) - len(ours)}))
    pending = sorted(o.client_order_id for o in ours if o.status == "submitted")
    checks.append(Check("pending_acks", "warn" if pending else "ok",
                        (f"{len(pending)} orders sent and not acknowledged: " + ", ".join(pending[:10]))
                        if pending else "no order waits for the venue's acknowledgement", {"pending": len(pending)}))
    held = [p for p in state.positions.values() if p.qty]
    checks.append(Check("positions", "ok", f"{len(held)} open positions", {"positions": len(held)}))
    discrepancies = sum(a.discrepancies for a in state.accounts.values())
    blocked = sorted(a.account for a in state.accounts.values() if a.blocked)
    checks.append(Check("discrepancies", "warn" if discrepancies or blocked else "ok",
                        f"{discrepancies} unresolved discrepancies" + (f"; blocked: {', '.join(blocked)}" if blocked else ""),
                        {"unresolved": discrepancies, "blocked": len(blocked)}))
    checks.append(_projector_check(client, kind, projector_wait))
    return checks


def _projector_check(client: TradestateClient, kind: str, wait: float) -> Check:
    if kind == "emergency":
        return Check("projector", "skipped", "not waited for (emergency)")
    from .projections.reader import ProjectionBehind, ReadModel

    head = client.position
    try:
        model = ReadModel(client.store.url)
    except Exception as e:  # noqa: BLE001 - no read models is not a reason to refuse a stop
        return Check("projector", "skipped", f"no read models to check ({type(e).__name__})")
    try:
        try:
            reached = model.position()
        except Exception as e:  # noqa: BLE001 - tables never created: no projector runs here
            return Check("projector", "skipped", f"no read models to check ({type(e).__name__})")
        if reached == 0:
            return Check("projector", "skipped", "no projector has run against this log")
        try:
            model.wait_for(head, wait)
        except ProjectionBehind as e:
            return Check("projector", "warn", str(e), {"position": model.position(), "head": head})
        return Check("projector", "ok", f"read models caught up with position {head}", {"head": head})
    finally:
        model.close()


def check_options(policy: str, kind: str, reason: str) -> None:
    """``InvalidInput`` for a policy or kind that does not exist, or an emergency without a reason."""
    if policy not in POLICIES:
        raise InvalidInput(f"shutdown policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    if kind not in KINDS:
        raise InvalidInput(f"shutdown kind must be planned or emergency, not {kind!r}")
    if kind == "emergency" and not reason.strip():
        raise InvalidInput("an emergency shutdown needs a reason (it is recorded with the stop)")


def _adapter_for(adapters: Sequence[Any], account: str, venue: str) -> Any:
    return next((a for a in adapters if a.account == account and a.venue == venue), None)


def shutdown(
    client: TradestateClient,
    engine_id: str,
    *,
    policy: str = "leave",
    kind: str = "planned",
    reason: str = "",
    adapters: Sequence[Any] = (),
    accounts: Sequence[str] | None = None,
    projector_wait: float = DEFAULT_PROJECTOR_WAIT,
) -> ShutdownReport:
    """Shut engine ``engine_id`` down gracefully through ``client``; see the module docstring.
    ``accounts``: the accounts the policy applies to (default: every account in the log).
    Raises ``InvalidInput`` (bad policy or kind, an emergency without a reason) before anything
    is appended, and ``NotLeader`` when another engine took the lease (nothing more is recorded)."""
    from .adapters.brokers.base import VenueError

    check_options(policy, kind, reason)
    started = time.perf_counter()
    applied = "cancel" if kind == "emergency" and policy == "leave" else policy
    report = ShutdownReport(engine_id, kind, applied, reason or f"{kind} shutdown")
    client.catch_up()

    # 1. pre-shutdown checks
    report.checks = _pre_checks(client, engine_id, kind, projector_wait)
    if applied != policy:
        report.checks.append(Check("policy", "warn", "emergency: open orders are cancelled (policy leave raised "
                                                     "to cancel)"))
    chosen = set(accounts) if accounts is not None else None
    state = client.state

    def in_scope(account: str) -> bool:
        return chosen is None or account in chosen

    # 2. the policy: cancel (also before flattening: a resting order would reopen the position)
    if applied in ("cancel", "flatten"):
        why = f"{kind} shutdown of {engine_id}" + (f": {reason}" if reason else "")
        for account in sorted(a for a in list(state.accounts) if in_scope(a)):
            for order in sorted(state.accounts[account].open_orders.values(), key=lambda o: o.client_order_id):
                if not _ours(order):
                    continue
                try:
                    client.request_cancel(account, order.client_order_id, reason=why[:1000])
                except InvalidTransition:  # finished meanwhile (a fill or cancel recorded by another process)
                    continue
                report.cancel_requested.append(order.client_order_id)
                adapter = _adapter_for(adapters, account, order.venue)
                if adapter is None or not order.venue_order_id:
                    continue  # never sent or no broker here: the engine's flow (or reconciliation) settles it
                try:
                    adapter.cancel(order.venue_order_id)
                    report.cancels_sent += 1
                except (VenueError, NotImplementedError) as e:
                    report.venue_errors.append(f"cancel {order.client_order_id}: {type(e).__name__}: {e}"[:500])
    if applied == "flatten":
        _flatten(client, report, adapters, in_scope, kind)

    # 3. settle: the venue's answers on record before the stop
    if adapters:
        _settle(client, report, adapters, kind)

    # 4. the final checkpoint (of the state at the head, before the stop events)
    client.catch_up()
    report.open_orders_left = sum(len(a.open_orders) for a in client.state.accounts.values())
    report.positions_left = sum(1 for p in client.state.positions.values() if p.qty)
    report.checkpoint_position = _checkpoint(client, report, kind)

    # 5. the stop: summary and EngineStopped in one transaction, then the lease handed back
    writer = client.writer
    report.seconds = time.perf_counter() - started
    summary = build_event(
        ev.ShutdownCompleted, **writer.envelope(), engine_id=engine_id, kind=kind, policy=applied,
        reason=report.reason, checks=[asdict(c) for c in report.checks],
        cancel_requested=report.cancel_requested[:MAX_SHUTDOWN_IDS],
        flatten_intents=report.flatten_intents[:MAX_SHUTDOWN_IDS],
        cancels=len(report.cancel_requested), flattening=len(report.flatten_intents),
        checkpoint_position=report.checkpoint_position, open_orders_left=report.open_orders_left,
        positions_left=report.positions_left, seconds=Decimal(f"{report.seconds:.6f}"),
    )
    stopped = build_event(ev.EngineStopped, **writer.envelope(), engine_id=engine_id,
                          reason=f"{kind} shutdown" + (f": {reason}" if reason else ""))
    stream = engine_stream_id(engine_id)
    written = writer.record(lambda _state: rules.Append([(stream, summary), (stream, stopped)]))
    report.stopped_position = written.positions[0]
    if client.lease is not None and client.lease.engine_id == engine_id:
        client.lease.release(stopped.reason)
    client.catch_up()
    return report


def _flatten(client: TradestateClient, report: ShutdownReport, adapters: Sequence[Any], in_scope: Any,
             kind: str) -> None:
    from .adapters.brokers.base import VenueError
    from .order_flow import OrderFlow

    for (account, venue, symbol), held in sorted(client.state.positions.items()):
        if not held.qty or not in_scope(account):
            continue
        coid = f"flat-{uuid4().hex[:16]}"
        reference = held.last_price or (abs(held.cost / held.qty) if held.cost else None)
        result = client.record_intent(account, coid, symbol, "sell" if held.qty > 0 else "buy", abs(held.qty),
                                      order_type="market", venue=venue, strategy_id="shutdown",
                                      reference_price=reference if reference and reference > 0 else None)
        if not result.accepted:
            assert result.refusal is not None
            report.flatten_refused.append({"client_order_id": coid, "account": account, "symbol": symbol,
                                           "qty": str(held.qty), "reasons": result.refusal.reasons})
            continue
        report.flatten_intents.append(coid)
        adapter = _adapter_for(adapters, account, venue)
        if adapter is None:
            continue  # recorded: the engine's order flow sends it
        try:
            OrderFlow(client, adapter).forward(account, coid)
        except (VenueError, NotImplementedError, TradestateError) as e:
            report.venue_errors.append(f"flatten {coid}: {type(e).__name__}: {e}"[:500])
    if report.flatten_refused:
        refused = ", ".join(f"{r['symbol']} ({'/'.join(r['reasons'])})" for r in report.flatten_refused)
        report.checks.append(Check("flatten", "warn", f"the pre-trade check refused flattening {refused}",
                                   {"refused": len(report.flatten_refused)}))


def _settle(client: TradestateClient, report: ShutdownReport, adapters: Sequence[Any], kind: str) -> None:
    from .adapters.brokers.base import VenueError
    from .order_flow import OrderFlow

    for adapter in adapters:
        if hasattr(adapter, "updates"):  # a live stream: its cancels, acks and fills (cheap)
            try:
                OrderFlow(client, adapter).pump()
            except (VenueError, TradestateError) as e:
                report.venue_errors.append(f"{adapter.broker}/{adapter.account} updates: {type(e).__name__}: {e}"[:500])
    if kind == "emergency":
        report.checks.append(Check("reconcile", "skipped", "not run (emergency): the next start reconciles"))
        return
    from .reconcile import reconcile

    statuses, worst = [], "ok"
    for adapter in adapters:
        result = reconcile(client, adapter)
        report.reconciliations.append({"account": result.account, "broker": result.broker, "status": result.status,
                                       "discrepancies": len(result.discrepancies),
                                       "corrective_events": len(result.corrective_event_ids),
                                       "reconciliation_id": result.reconciliation_id})
        statuses.append(f"{result.broker}/{result.account}: {result.status}")
        if result.status == "unknown" or result.discrepancies and any(
                d.get("resolution") != "corrected" for d in result.discrepancies):
            worst = "warn"
    report.checks.append(Check("reconcile", worst, "final reconciliation: " + "; ".join(statuses),
                               {"runs": len(statuses)}))


def _checkpoint(client: TradestateClient, report: ShutdownReport, kind: str) -> int | None:
    from .adapters.store.checkpoints import Checkpointer

    writer = client.writer
    try:
        with writer.lock:
            info = Checkpointer(client.store).write(writer.state)
    except Exception as e:  # noqa: BLE001 - a stop is recorded without it: the next start is cold
        report.checks.append(Check("checkpoint", "failed" if kind == "planned" else "warn",
                                   f"no final checkpoint: {type(e).__name__}: {e}"[:1000]))
        return None
    report.checks.append(Check("checkpoint", "ok", f"final checkpoint at position {info.position}",
                               {"position": info.position}))
    return info.position


__all__ = ["KINDS", "POLICIES", "Check", "ShutdownReport", "check_options", "shutdown"]
