"""The whole life of one order: intent, risk decision, submission, acks, fills, cancels, and the
corrections reconciliation made, with the order's state after each step and the causation chain.

Sources: the order's own stream (read by its deterministic id), and the account stream's events
linked to it — the ``RiskCheckPassed`` appended with the intent (causation = the intent), events
correlated with the intent, a ``FeeCharged`` naming only one of the order's executions (``exec_id``,
no client order id: such a fee is on the account stream), and reconciliation runs
(``ReconciliationCompleted``) whose corrective events or discrepancies name this order, with the
account events sharing their reconciliation id.
The account events are found through the order-reference index (``adapters.store.order_refs``)
when the database has one — a trace catches it up when it is close to the head, the only write a
post-mortem makes, and never to the log — else by reading the account's stream; the trace is
the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..adapters.store import Store, order_refs
from ..loading import state_at
from ..domain.errors import UnknownOrder
from ..domain.ids import account_stream_id, order_stream_id
from ..domain.state import TradingState
from .log import LoggedEvent, ReplayError, describe, iso

RECONCILIATION_TYPES = frozenset({"OrderImported", "DiscrepancyRecorded"})


@dataclass
class Step:
    """One event of an order's trace: its role, the order's state after it and the step that caused it
    (or the causation id when the cause is outside the trace)."""

    n: int
    event: LoggedEvent
    role: str  # intent, risk, submission, ack, fill, cancel, correction, ...
    order_after: dict[str, Any] | None  # the order's state after this step (order-stream events)
    caused_by: int | None  # the step whose event caused this one
    caused_by_id: str | None  # the causation id when it is not in the trace
    from_reconciliation: bool = False

    def to_json(self) -> dict[str, Any]:
        """The step as JSON-ready values."""
        return {
            "step": self.n,
            **self.event.envelope(),
            "role": self.role,
            "summary": describe(self.event),
            "caused_by_step": self.caused_by,
            "causation_outside_trace": self.caused_by_id,
            "from_reconciliation": self.from_reconciliation,
            "order_after": self.order_after,
            "payload": self.event.payload,
        }


@dataclass
class Trace:
    """Every event that touched one order, in log order, and the order's final state."""

    account: str
    client_order_id: str
    stream_id: str
    steps: list[Step] = field(default_factory=list)
    final: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The trace as JSON-ready values, with its causation chains."""
        return {
            "account": self.account,
            "client_order_id": self.client_order_id,
            "stream_id": self.stream_id,
            "final": self.final,
            "steps": [s.to_json() for s in self.steps],
            "causation_chains": self.chains(),
        }

    def chains(self) -> list[list[int]]:
        """Each step's chain back to its root cause, e.g. [7, 3, 1] (leaves only)."""
        parents = {s.n: s.caused_by for s in self.steps}
        has_child = {p for p in parents.values() if p is not None}
        out = []
        for s in self.steps:
            if s.n in has_child:
                continue
            chain, cur, seen = [s.n], parents.get(s.n), {s.n}
            while cur is not None and cur not in seen:
                chain.append(cur)
                seen.add(cur)
                cur = parents.get(cur)
            if len(chain) > 1:
                out.append(chain)
        return out

    def __rich__(self) -> Group:
        return render_trace(self)


_ROLES = {
    "OrderIntentRecorded": "intent", "IntentRejectedByRisk": "risk decision", "RiskCheckPassed": "risk decision",
    "OrderSubmitted": "submission", "OrderAcknowledged": "ack", "OrderRejected": "venue reject",
    "OrderFilled": "fill", "OrderCancelRequested": "cancel request", "OrderCancelled": "cancel",
    "OrderReplaced": "replace", "OrderExpired": "expiry", "DiscrepancyRecorded": "discrepancy",
    "OrderImported": "import (reconciliation)", "ReconciliationCompleted": "reconciliation",
    "PositionCorrected": "correction", "TradingBlocked": "block", "DiscrepancyAcknowledged": "acknowledgement",
    "FillCorrected": "venue correction of a fill", "FeeCharged": "fee (reported apart)",
    "OrderReplaceRequested": "amendment request", "OrderReplaceRefused": "amendment refused",
}


def _order_state(o: Any) -> dict[str, Any]:
    out = {"status": o.status, "qty": o.qty, "filled_qty": o.filled_qty, "remaining_qty": o.remaining,
           "avg_fill_price": o.avg_fill_price, "fees": o.fees, "venue_order_id": o.venue_order_id,
           "cancel_requested": o.cancel_requested, "discrepancies": o.discrepancies, "refusal": o.refusal}
    pending = o.account_state.fees_pending if o.account_state is not None else {}
    fees_pending = sorted(e for e in o.executions if e in pending)
    if fees_pending:  # executions whose fee is still to come (as far as the order's own stream says)
        out["fees_pending"] = fees_pending
    if o.replace_pending is not None:  # the engine's amendment the venue has not answered
        asked = o.replaces[o.replace_pending]["request"]
        out["replace_pending"] = {"replace_id": o.replace_pending, "qty": asked["qty"],
                                  "limit_price": asked.get("limit_price"), "stop_price": asked.get("stop_price")}
    return out


def find_accounts(store: Store, client_order_id: str) -> list[str]:
    """The accounts that have an order with this client order id."""
    state = state_at(store)
    return [a for a in sorted(state.accounts) if store.trading.read_stream(order_stream_id(a, client_order_id))[:1]]


def _account_events(store: Store, account: str, client_order_id: str,
                    order_events: list[LoggedEvent]) -> list[LoggedEvent]:
    """The account-stream events from the order's first position on (less one: a risk decision
    may precede its intent) that the linking rules below test. With the order-reference index
    (``adapters.store.order_refs``): the events after the index's end, and the indexed ones
    naming the order's event ids, its client order id, or (again and again) the event id or
    reconciliation id of one found, or one of its execution ids — a superset of every event the
    rules link, so the trace is the one of the whole stream, which is read when there is no index."""
    stream = account_stream_id(account)
    first = order_events[0].position - 1
    intent_id = order_events[0].event_id
    upto = _index_upto(store) if intent_id else None
    if upto is None:
        return [LoggedEvent.from_row((r.position, r.originator_id, r.originator_version, r.topic, r.state,
                                      r.recorded_at)) for r in store.trading.read_stream(stream)
                if r.position >= first]
    found: dict[int, LoggedEvent] = {}
    keys = {e.event_id for e in order_events if e.event_id} | {intent_id, client_order_id} | _exec_ids(order_events)

    def take(rows: list[tuple[Any, ...]]) -> None:
        for row in rows:
            e = found[row[0]] = LoggedEvent.from_row(row)
            keys.update(k for k in (e.event_id, e.payload.get("reconciliation_id")) if k)

    take(order_refs.rows_after(store, stream, max(upto, first - 1)))  # not indexed yet: all of them
    asked: set[str] = set()
    while keys - asked:
        new_keys = keys - asked
        asked |= new_keys
        take(order_refs.rows_at(store, stream, order_refs.positions(store, new_keys, after=first - 1, upto=upto)
                                - found.keys()))
    return [found[p] for p in sorted(found)]


def _exec_ids(order_events: list[LoggedEvent]) -> set[str]:
    """The venue execution ids the order's own stream names (fills and the venue's corrections)."""
    out: set[str] = set()
    for e in order_events:
        if e.type in ("OrderFilled", "FillCorrected"):
            out.update(str(e.payload[k]) for k in ("exec_id", "corrected_exec_id") if e.payload.get(k))
    return out


def _index_upto(store: Store) -> int | None:
    """How far the order-reference index goes, after catching it up when it is at most
    ``AUTO_CATCH_UP`` positions behind or of an older format (None: no index, ``tradestate replay
    index`` builds it; or an older format this database would not let us upgrade). A database that
    takes no writes (a standby) is read as it is: the rest comes by position range."""
    current = order_refs.state(store)
    if current is None:
        return None
    if (0 < store.trading.head() - current.upto <= order_refs.AUTO_CATCH_UP
            or current.format < order_refs.FORMAT):
        try:
            return order_refs.catch_up(store, limit=order_refs.AUTO_CATCH_UP).upto
        except Exception:  # noqa: BLE001 - a read-only database: use the index as far as it goes
            current = order_refs.state(store) or current
    return current.upto if current.format >= order_refs.FORMAT else None


def trace(store: Store, account: str | None, client_order_id: str) -> Trace:
    """The trace of one order (``account`` None: found among the log's accounts)."""
    if not client_order_id:
        raise ReplayError("a client order id is needed")
    if account is None:
        found = find_accounts(store, client_order_id)
        if not found:
            raise ReplayError(f"unknown order: no account has client order id {client_order_id!r}")
        if len(found) > 1:
            raise ReplayError(f"client order id {client_order_id!r} exists in several accounts "
                              f"({', '.join(found)}): pass --account")
        account = found[0]
    sid = order_stream_id(account, client_order_id)
    rows = store.trading.read_stream(sid)
    if not rows:
        raise UnknownOrder(account, client_order_id)
    order_events = [LoggedEvent.from_row((r.position, r.originator_id, r.originator_version, r.topic, r.state,
                                          r.recorded_at)) for r in rows]
    ids = {e.event_id for e in order_events if e.event_id}
    intent_id = order_events[0].event_id
    exec_ids = _exec_ids(order_events)
    # linked account-stream events
    linked: list[LoggedEvent] = []
    recon_ids: set[str] = set()
    account_events = _account_events(store, account, client_order_id, order_events)
    for e in account_events:
        d = e.payload
        if (e.causation_id in ids or e.correlation_id == intent_id
                or (e.type == "RiskCheckPassed" and d.get("client_order_id") == client_order_id)
                or (e.type == "FeeCharged" and d.get("exec_id") in exec_ids)):
            linked.append(e)
            ids.add(e.event_id)
        elif e.type == "ReconciliationCompleted":
            corrective = set(d.get("corrective_event_ids") or ())
            named = any(client_order_id in (str(x.get("client_order_id", "")), str(x.get("detail", "")))
                        for x in d.get("discrepancies") or () if isinstance(x, dict))
            if corrective & ids or named:
                linked.append(e)
                recon_ids.add(d["reconciliation_id"])
    for e in account_events:
        rid = e.payload.get("reconciliation_id")
        if rid in recon_ids and e not in linked and e.type != "ReconciliationCompleted":
            linked.append(e)
    events = sorted(order_events + linked, key=lambda e: e.position)
    by_id: dict[str, int] = {}
    recon_event_ids: set[str] = set()
    for e in events:
        if e.type == "ReconciliationCompleted":
            recon_event_ids.add(e.event_id or "")
            recon_event_ids.update(e.payload.get("corrective_event_ids") or ())
    state = TradingState()
    out = Trace(account, client_order_id, sid)
    for n, e in enumerate(events, 1):
        if e.event_id:
            by_id[e.event_id] = n
        order_after = None
        if e.stream_id == sid:
            state.apply(e.position, e.stream_id, e.version, e.type, dict(e.payload), e.recorded_at)
            order_after = _order_state(state.orders[sid])
        cause = e.causation_id
        caused_by = by_id.get(cause) if cause else None
        from_recon = (e.type in RECONCILIATION_TYPES or (e.event_id in recon_event_ids)
                      or bool(e.payload.get("reconciliation_id")) or (cause in recon_event_ids if cause else False))
        role = _ROLES.get(e.type, e.type)
        if from_recon and e.type not in RECONCILIATION_TYPES and e.type != "ReconciliationCompleted":
            role = f"{role} (reconciliation)"
        out.steps.append(Step(n, e, role, order_after, caused_by, cause if cause and caused_by is None else None,
                              from_recon))
    out.final = _order_state(state.orders[sid])
    return out


def render_trace(t: Trace) -> Group:
    """A rich table of ``t``'s steps."""
    table = Table(title=f"Trace of order {t.account}/{t.client_order_id} ({t.stream_id})", title_justify="left")
    for c in ("#", "pos", "recorded", "occurred", "role", "event", "what", "caused by", "status after", "filled/qty"):
        table.add_column(c, overflow="fold")
    for s in t.steps:
        e = s.event
        after = s.order_after
        filled = f"{_q(after['filled_qty'])}/{_q(after['qty'])}" if after else ""
        cause = f"#{s.caused_by}" if s.caused_by else (f"{s.caused_by_id[:8]}... (outside)" if s.caused_by_id else "")
        table.add_row(str(s.n), str(e.position), iso(e.recorded_at), e.payload.get("occurred_at") or "-",
                      s.role, e.type, describe(e), cause, after["status"] if after else "", filled,
                      style="yellow" if s.from_reconciliation else None)
    chains = t.chains()
    lines = [Text("Causation chains: " + ("; ".join(" <- ".join(f"#{n}" for n in c) for c in chains) or "none"))]
    if t.final:
        f = t.final
        lines.append(Text(f"Final: {f['status']}, filled {_q(f['filled_qty'])} of {_q(f['qty'])}"
                          + (f" @ {_q(round(f['avg_fill_price'], 6))}" if f["avg_fill_price"] is not None else "")
                          + (f", venue id {f['venue_order_id']}" if f["venue_order_id"] else "")
                          + (f", {f['discrepancies']} discrepancies" if f["discrepancies"] else "")
                          + (f", fee to come for {', '.join(f['fees_pending'])}" if f.get("fees_pending") else "")
                          + (f", amendment {f['replace_pending']['replace_id']} (qty {f['replace_pending']['qty']}) "
                             "waits for the venue" if f.get("replace_pending") else "")
                          + (f", refused: {', '.join(f['refusal'])}" if f["refusal"] else ""), style="bold"))
    return Group(table, *lines)


def _q(value: Any) -> str:
    return "-" if value is None else f"{value.normalize():f}"
