"""Reconciliation: diff what a venue reports against the folded log, and plan corrective events.

Pure: no I/O; the venue's answers (a ``VenueSnapshot`` and the results of looking single orders
up by client order id), the reconciliation id and the time are passed in. The planner never
mutates the state it reads: the runner appends the planned events and the fold applies them.

Rules (the broker is the truth for what happened at the venue; every correction says why):

- A venue fill our log lacks is recorded as ``OrderFilled`` (deduplicated by exec id against the
  order's executions and within the plan), unless it contradicts the order (past its quantity,
  on an order we hold finished): then a ``DiscrepancyRecorded`` that moves nothing.
- When the venue's filled quantity exceeds what the listed executions explain (its fill history
  was cut by the query window), the gap is recorded as one inferred fill with a deterministic
  ``recon-`` exec id. Never when the fills query failed: then the gap is "unknown".
- A venue fill that corrects (replaces) an execution we hold (``VenueFill.corrects``: IB's
  ``.01`` -> ``.02``) is recorded as ``FillCorrected``, never as a second fill, on an open or a
  finished order alike; the position and cash are compared after it.
- A fill recorded with its fee pending (``fee_pending``) whose fee the venue now reports gets
  ``FeeCharged`` for that exec id (fees and cash follow), not a blind cash correction.
- A fee that stays pending past the venue's ``fee_report_wait`` (IB: the commission report never
  reaches a client that neither placed the order nor is the master client id) is a
  ``fee_report_missing`` discrepancy per execution. A cash shortfall no larger than the pending
  fees can be (``max_fee_rate`` of their notional) is put down to them, never corrected blindly:
  one pending execution in that currency, past the wait, gets ``FeeCharged`` for the shortfall on
  the venue's evidence (its reason says so); younger ones wait for their reports; several past
  the wait cannot be told apart and stay a ``cash_fees_unreported`` discrepancy naming them.
- Two venue orders with one client order id (IB: two permIds behind one orderRef, a resend or a
  second engine) are a ``duplicate_order_ref`` discrepancy naming both: the original (the one
  our log acknowledged, else the first placed) stays ours; the other is imported as an external
  order, so its fills count in the position but never fill our order.
- Status drift (we hold it open, the venue finished it) appends the venue's terminal event.
- An order the venue has and we never recorded is imported (``OrderImported``) with its fills
  and its terminal event.
- An order we hold open that the venue's lists do not show is looked up by client order id. Not
  found: ``DiscrepancyRecorded(kind="missing_at_venue")`` once, and it stays pending: an
  ambiguous submit is never assumed rejected.
- Positions and cash are compared after the planned fills; a remaining difference is set to
  the venue's (``PositionCorrected``, ``CashBalanceRecorded``). Only when positions, orders and
  fills all answered: a difference seen through a failed query could be a fill we cannot see.
- A part of the snapshot that is ``Unknown`` derives nothing: no correction, no flattening.
- Planned fills count toward the day's loss limit as live ones do: the fill that takes the
  trading day's net P&L to ``max_daily_loss`` is followed by ``DailyLimitBreached`` (once a day).

Every event id is a uuid5 of the facts it records (account, client order id, exec id...), so
planning again on the same facts yields the same events, and once they are folded, none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID, uuid5

from pydantic import ValidationError

# The venue-neutral report shapes are plain dataclasses without I/O; the domain reads them.
from . import events as ev
from .ids import account_stream_id, order_stream_id
from .instruments import fx_rate, split_ratio
from .risk import MAX_DAILY_LOSS, daily_loss_breach, pnl_rate
from .state import (OPEN_STATUSES, OrderState, PositionState, TradingState, correction_cash, fill_cash, margin_cash,
                    settlement_cash)
from .venue import Unknown, VenueFill, VenueOrder, VenueSnapshot

# Fixed forever: changing it would change every corrective event id.
RECONCILIATION_NAMESPACE = UUID("2d7c8f5e-9a41-4b6e-8d3c-5f0a1e7b6c92")
ZERO = Decimal(0)
MAX_PLACES = Decimal(1).scaleb(-12)  # events refuse more than 12 decimal places
FEE_ROUNDING = Decimal("1e-9")  # a venue rounds each fee it takes (Alpaca: 9 decimal places)
PARTS = ("positions", "open_orders", "recent_orders", "fills", "balances")

Resolution = Literal["corrected", "pending", "unknown"]


def _opt_dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


def fact_id(*parts: object) -> UUID:
    """Deterministic id of a reconciliation fact; the separator cannot occur in identifiers."""
    return uuid5(RECONCILIATION_NAMESPACE, "\x1f".join("" if p is None else str(p) for p in parts))


def external_client_order_id(venue_order_id: str) -> str:
    """Our id for an imported order that carries no client order id of its own."""
    candidate = "ext-" + venue_order_id
    return candidate if len(candidate) <= 64 else "ext-" + fact_id("external", venue_order_id).hex


def inferred_exec_id(account: str, client_order_id: str, venue_filled_qty: Decimal) -> str:
    """The exec id of a fill reconciliation infers from the venue's filled quantity (no execution
    listed): deterministic, so a rerun infers the same id."""
    return "recon-" + fact_id("inferred", account, client_order_id, venue_filled_qty).hex[:24]


def _fit(value: Decimal) -> Decimal:
    """Round a computed amount to what events accept (12 places); exact values pass unchanged."""
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -12:
        return value.quantize(MAX_PLACES)
    return value


@dataclass(frozen=True)
class Discrepancy:
    """One disagreement between the log and the venue, and what became of it."""

    kind: str  # missed_fill, status_drift, unknown_order, missing_at_venue, position_mismatch, ...
    detail: str
    resolution: Resolution
    client_order_id: str | None = None
    venue_order_id: str | None = None
    symbol: str | None = None
    ours: str | None = None
    theirs: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields that are set, for reports and JSON."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class _PendingFee:
    """An execution whose fee the venue has not reported: what the planner knows of it."""

    exec_id: str
    stream_id: str
    client_order_id: str
    venue_order_id: str | None
    symbol: str
    correlation_id: UUID
    qty: Decimal
    price: Decimal
    currency: str  # the fee's currency (the venue's, when it lists the execution)
    notional: Decimal  # |qty x price x multiplier|
    occurred_at: datetime | None  # None: the venue no longer lists it (from before its window)


@dataclass
class ReconciliationPlan:
    """What one reconciliation decided: the events to append (order and account streams), the
    disagreements found, what could not be compared, and counts."""

    account: str
    venue: str
    reconciliation_id: UUID
    events: list[tuple[str, ev.Event]] = field(default_factory=list)
    discrepancies: list[Discrepancy] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # what could not be compared, and why
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def event_ids(self) -> list[UUID]:
        """The ids of the planned events, in order."""
        return [e.event_id for _, e in self.events]

    @property
    def status(self) -> ev.ReconciliationStatus:
        """unknown (something could not be compared), discrepancies (one not corrected), corrected
        (events planned) or clean."""
        if self.unknown:
            return "unknown"
        if any(d.resolution != "corrected" for d in self.discrepancies):
            return "discrepancies"
        return "corrected" if self.events else "clean"

    @property
    def blocking(self) -> bool:
        """Strict mode blocks trading on any disagreement found by this run, or any unknown."""
        return bool(self.discrepancies or self.unknown)

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name``."""
        self.counts[name] = self.counts.get(name, 0) + n


class _Order:
    """Our view of one order while planning: the folded state plus what the plan adds."""

    __slots__ = ("client_order_id", "stream_id", "symbol", "venue", "side", "sign", "qty", "limit_price",
                 "status", "filled_qty", "fill_notional", "executions", "venue_order_id",
                 "discrepancy_keys", "correlation_id", "imported", "exec_fees")  # fmt: skip

    def __init__(self, o: OrderState | None = None):
        if o is None:
            return
        self.client_order_id = o.client_order_id
        self.stream_id = o.stream_id
        self.symbol = o.symbol
        self.venue = o.venue
        self.side = o.side
        self.sign = o.sign
        self.qty = o.qty
        self.limit_price = o.limit_price
        self.status = o.status
        self.filled_qty = o.filled_qty
        self.fill_notional = o.fill_notional
        self.executions = o.executions
        self.venue_order_id = o.venue_order_id
        self.discrepancy_keys = o.discrepancy_keys
        self.correlation_id = UUID(o.intent_event_id)
        self.imported = False
        self.exec_fees = o.exec_fees or {}

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES


def venue_orders(snapshot: VenueSnapshot) -> dict[str, VenueOrder]:
    """Open and recent orders by venue order id. The same order in both lists: the report that
    is further along (more filled, or finished) wins, since statuses only move forward."""
    merged: dict[str, VenueOrder] = {}
    for part in (snapshot.open_orders, snapshot.recent_orders):
        if isinstance(part, Unknown):
            continue
        for order in part:
            seen = merged.get(order.venue_order_id)
            if seen is None or (order.filled_qty, not order.is_open) > (seen.filled_qty, not seen.is_open):
                merged[order.venue_order_id] = order
    return merged


def orders_to_look_up(state: TradingState, snapshot: VenueSnapshot) -> list[str]:
    """Client order ids of our open orders at this venue that the snapshot's lists do not show:
    finished outside the window, or never seen by the venue. The runner asks the venue for each."""
    account = state.accounts.get(snapshot.account)
    if account is None:
        return []
    listed = venue_orders(snapshot)
    client_ids = {o.client_order_id for o in listed.values() if o.client_order_id}
    wanted = []
    for order in account.open_orders.values():
        if order.venue != snapshot.venue:
            continue
        if order.client_order_id in client_ids or (order.venue_order_id and order.venue_order_id in listed):
            continue
        wanted.append(order.client_order_id)
    return sorted(wanted)


def finished_by_replace(vo: VenueOrder) -> VenueOrder:
    """A replaced venue order that is no order of ours (an imported one, a stranger's) is simply
    finished: cancelled, saying by which order."""
    if vo.status != "replaced":
        return vo
    by = vo.raw.get("replaced_by") if vo.raw else None
    return replace(vo, status="cancelled", raw={**vo.raw, "reason": f"replaced at the venue by {by or 'another order'}"})


def filled_legs(orders: Mapping[str, VenueOrder]) -> dict[str, str]:
    """Parent venue order id -> a filled leg of it."""
    return {o.parent_venue_order_id: o.venue_order_id for o in orders.values()
            if o.parent_venue_order_id and o.status == "filled"}


def held_leg_ended(leg: VenueOrder, orders: Mapping[str, VenueOrder],
                   filled: Mapping[str, str] | None = None) -> str | None:
    """Why a ``held`` bracket/OCO/OTO leg is over although the venue still says held, or None.

    A leg's group ends when its parent is cancelled, expired or rejected (any cancel cancels the
    group), when the other exit leg of a bracket filled, or when an OCO's parent (its take-profit)
    filled: only one exit can execute (Alpaca's orders.md, Bracket and OCO orders). The venue does
    not always send the held leg's cancel (alpacahq/alpaca-py#198). ``filled``: ``filled_legs``
    of ``orders``, when already known."""
    if leg.raw_status.lower() != "held" or not leg.parent_venue_order_id:
        return None
    parent = orders.get(leg.parent_venue_order_id)
    if parent is None:
        return None
    if parent.status in ("cancelled", "expired", "rejected"):
        return f"its parent order {parent.venue_order_id} is {parent.status}"
    if parent.status == "filled" and str(leg.raw.get("order_class") or "").lower() == "oco":
        return f"the other side of the OCO ({parent.venue_order_id}) filled"
    other = (filled_legs(orders) if filled is None else filled).get(leg.parent_venue_order_id)
    if other is not None and other != leg.venue_order_id:
        return f"the other exit leg {other} filled"
    return None


LookupResult = VenueOrder | Unknown | None  # None: the venue said it never saw the order


def plan_reconciliation(
    state: TradingState,
    snapshot: VenueSnapshot,
    *,
    reconciliation_id: UUID,
    now: datetime,
    lookups: Mapping[str, LookupResult] | None = None,
) -> ReconciliationPlan:
    """The corrective events and discrepancies for one account at one venue."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return _Planner(state, snapshot, reconciliation_id, now.astimezone(timezone.utc), lookups or {}).run()


class _Planner:
    def __init__(self, state: TradingState, snapshot: VenueSnapshot, reconciliation_id: UUID,
                 now: datetime, lookups: Mapping[str, LookupResult]):
        self.state = state
        self.snap = snapshot
        self.account = snapshot.account
        self.venue = snapshot.venue
        self.rid = reconciliation_id
        self.now = now
        self.lookups = lookups
        self.acct = state.accounts.get(self.account)
        # our open orders by client order id: most venue orders are found here without a uuid5
        self.open_by_client_id = {o.client_order_id: o for o in self.acct.open_orders.values()} if self.acct else {}
        self.plan = ReconciliationPlan(self.account, self.venue, reconciliation_id)
        self.order_events: list[tuple[str, ev.Event]] = []
        self.account_events: list[tuple[str, ev.Event]] = []
        self.planned_exec_ids: set[str] = set()
        self.planned_position: dict[tuple[str, str], Decimal] = {}  # (venue, symbol) -> signed qty
        self.planned_cash: dict[str, Decimal] = {}
        self.planned_fill_days: dict[tuple[str, str], str] = {}  # (venue, symbol) -> last trading day planned
        self.unmatched_margins: set[str] = set()  # currencies of the venue's settlements not recorded
        self.planned_unconverted: dict[tuple[str, str], Decimal] = {}  # (quote, settlement currency) -> amount
        # the day's loss as the planned fills move it: positions and net P&L after them
        self.preview_positions: dict[tuple[str, str], PositionState] = {}
        self.cash_previews: dict[tuple[str, str], PositionState] = {}  # a future's planned fills: its cash
        self.planned_day_net: dict[str, Decimal] = {}
        self.planned_breach_days: set[str] = set()
        self.orders: Mapping[str, VenueOrder] = {}
        self.chain_fills: dict[str, list[VenueFill]] = {}  # fills of replaced orders, for their chain's end
        self._open_by_venue_id: dict[str, OrderState] | None = None
        self._unposted: dict[tuple[str, str], Decimal] | None = None
        self._filled_legs: dict[str, str] | None = None
        self.duplicates: dict[str, str] = {}  # venue order id -> the original's, for one client order id
        self.planned_fees_pending: dict[str, _PendingFee] = {}  # fills this plan records with their fee pending
        self.fees_settled: set[str] = set()  # exec ids whose pending fee this plan records (or replaces)
        self.fills_known = not isinstance(snapshot.fills, Unknown)
        self.orders_known = not isinstance(snapshot.open_orders, Unknown) and not isinstance(
            snapshot.recent_orders, Unknown
        )

    # ------------------------------------------------------------------------------ helpers
    def discrepancy(self, kind: str, detail: str, resolution: Resolution, **fields: Any) -> None:
        self.plan.discrepancies.append(Discrepancy(kind, detail, resolution, **fields))

    def build(self, cls: type[ev.Event], **fields: Any) -> ev.Event | None:
        """Venue data that our events refuse (an over-long id, a zero price) is reported, not
        appended: one bad record must not stop the rest of the reconciliation."""
        try:
            return cls(**fields)
        except (ValidationError, ValueError, TypeError) as e:
            problem = str(e).splitlines()[0] if str(e) else type(e).__name__
            self.discrepancy("invalid_venue_data", f"{cls.__name__} refused: {problem}"[:1000], "pending",
                             client_order_id=fields.get("client_order_id"), symbol=fields.get("symbol"))
            return None

    def order_event(self, ours: _Order, cls: type[ev.OrderEvent], key: tuple[object, ...],
                    occurred_at: datetime | None, **fields: Any) -> ev.Event | None:
        e = self.build(cls, event_id=fact_id(cls.__name__, self.account, ours.client_order_id, *key),
                       occurred_at=occurred_at or self.now, correlation_id=ours.correlation_id,
                       causation_id=self.rid, account=self.account, client_order_id=ours.client_order_id,
                       **fields)
        if e is not None:
            self.order_events.append((ours.stream_id, e))
        return e

    def record_discrepancy(self, ours: _Order, kind: str, detail: str, *, venue_status: str | None = None,
                           venue_order_id: str | None = None, fill: VenueFill | None = None,
                           resolution: Resolution = "pending") -> None:
        """A contradiction goes on the order's record once (the fold's discrepancy key)."""
        exec_id = fill.exec_id if fill else None
        key = (kind, venue_status, venue_order_id, exec_id)
        if key in ours.discrepancy_keys or (exec_id and "!" + exec_id in ours.executions):
            self.plan.count("known_discrepancies")
            return
        extra: dict[str, Any] = {}
        if fill is not None:
            extra = {"exec_id": fill.exec_id, "qty": fill.qty, "price": fill.price}
        e = self.order_event(ours, ev.DiscrepancyRecorded, (kind, venue_status, venue_order_id, exec_id), None,
                             kind=kind, detail=detail[:1000], venue_status=venue_status,
                             venue_order_id=venue_order_id, **extra)
        if e is not None:
            ours.discrepancy_keys = {**ours.discrepancy_keys, key: -1}  # never mutate the state's dict
            self.plan.count("discrepancies_recorded")
        self.discrepancy(kind, detail, resolution, client_order_id=ours.client_order_id,
                         venue_order_id=venue_order_id, symbol=ours.symbol,
                         ours=ours.status, theirs=venue_status)

    def fill(self, ours: _Order, qty: Decimal, price: Decimal, exec_id: str, fee: Decimal, fee_currency: str,
             occurred_at: datetime | None, venue_order_id: str | None, *, fee_pending: bool = False) -> bool:
        e = self.order_event(ours, ev.OrderFilled, (exec_id,), occurred_at, exec_id=exec_id, qty=qty,
                             price=price, fee=fee, fee_currency=fee_currency, venue_order_id=venue_order_id,
                             fee_pending=fee_pending)
        if e is None:
            return False
        assert isinstance(e, ev.OrderFilled)
        self.daily_loss(ours, e)
        if fee_pending:
            self.planned_fees_pending[exec_id] = self.pending_fee(ours, exec_id, qty, price, fee_currency, occurred_at,
                                                                  venue_order_id)
        ours.filled_qty += qty
        ours.fill_notional += qty * price
        ours.executions = {**ours.executions, exec_id: (qty, price, -1)}
        if ours.status in OPEN_STATUSES:
            ours.status = "filled" if ours.filled_qty >= ours.qty else "partially_filled"
        key = (ours.venue, ours.symbol)
        self.planned_position[key] = self.planned_position.get(key, ZERO) + ours.sign * qty
        day = self.state.trading_day(occurred_at or self.now)
        self.planned_fill_days[key] = max(day, self.planned_fill_days.get(key, day))
        # the fold moves cash only once a balance is on record, and in these currencies
        cash = self.acct.cash_at(self.venue) if self.acct is not None else {}  # this venue's cash
        if cash:
            spec = self.state.instrument(ours.symbol)
            if spec is not None and spec.is_future:  # a future's cash moves by the fill's realised P&L
                realized = self.scratch_position(self.cash_previews, ours).apply_fill(ours.sign * qty, price)
                currency, paid = settlement_cash(self.state, spec, -realized)
            else:
                currency, paid = fill_cash(self.state, ours.symbol, ours.sign * qty, price)  # multiplier, currency
            if paid is None:  # no rate recorded: the fold keeps it apart, unconverted
                self.unconverted(spec, -ours.sign * qty * price * spec.multiplier if not spec.is_future  # type: ignore[union-attr]
                                 else realized)
            elif currency in cash:
                self.planned_cash[currency] = self.planned_cash.get(currency, ZERO) - paid
            if fee and fee_currency in cash:
                self.planned_cash[fee_currency] = self.planned_cash.get(fee_currency, ZERO) - fee
        return True

    def correction(self, ours: _Order, f: VenueFill) -> bool:
        """``f`` replaces an execution we hold: ``FillCorrected`` (True), or a discrepancy when the
        corrected quantity does not fit the order (True); False when we hold none of the
        executions it corrects (then it is an ordinary fill of ours)."""
        held = [e for e in f.corrects if e in ours.executions]
        if not held:
            return False
        old_id = held[-1]  # the latest version we hold
        q0, p0, _ = ours.executions[old_id]
        f0 = ours.exec_fees.get(old_id, ZERO)
        where = dict(client_order_id=ours.client_order_id, venue_order_id=f.venue_order_id, symbol=ours.symbol,
                     ours=f"{q0}@{p0}", theirs=f"{f.qty}@{f.price}")
        if ours.filled_qty - q0 + f.qty > ours.qty:
            self.record_discrepancy(ours, "overfill", f"venue correction {f.exec_id} of {old_id} to {f.qty} @ "
                                    f"{f.price} takes the order past {ours.qty}", venue_order_id=f.venue_order_id,
                                    fill=f)
            return True
        e = self.order_event(ours, ev.FillCorrected, (old_id, f.exec_id), f.occurred_at, corrected_exec_id=old_id,
                             exec_id=f.exec_id, qty=f.qty, price=f.price, previous_qty=q0, previous_price=p0,
                             previous_fee=f0, fee=ZERO if f.fee_pending else f.fee, fee_currency=f.fee_currency,
                             fee_pending=f.fee_pending, venue_order_id=f.venue_order_id,
                             reconciliation_id=str(self.rid),
                             reason=f"the venue corrected execution {old_id} ({q0} @ {p0}) by {f.exec_id}")
        if e is None:
            return True
        f1 = ZERO if f.fee_pending else f.fee
        self.fees_settled.add(old_id)  # the fold moves a pending fee to the correcting execution
        if f.fee_pending and f.qty:
            self.planned_fees_pending[f.exec_id] = self.pending_fee(ours, f.exec_id, f.qty, f.price, f.fee_currency,
                                                                    f.occurred_at, f.venue_order_id)
        executions = {k: v for k, v in ours.executions.items() if k != old_id}
        if f.qty:
            executions[f.exec_id] = (f.qty, f.price, -1)
        ours.executions = executions
        ours.exec_fees = {**{k: v for k, v in ours.exec_fees.items() if k != old_id}, f.exec_id: f1}
        ours.filled_qty += f.qty - q0
        ours.fill_notional += f.qty * f.price - q0 * p0
        if ours.status in OPEN_STATUSES:
            ours.status = "filled" if ours.filled_qty >= ours.qty else ours.status
        key = (ours.venue, ours.symbol)
        self.planned_position[key] = self.planned_position.get(key, ZERO) + ours.sign * (f.qty - q0)
        cash = self.acct.cash_at(self.venue) if self.acct is not None else {}  # this venue's cash, as the fold moves it
        if cash:
            currency, paid = correction_cash(  # multiplier, quote currency, a future's P&L
                self.state, (self.account, ours.venue, ours.symbol), ours.sign,
                {"corrected_exec_id": old_id, "exec_id": f.exec_id, "qty": f.qty, "price": f.price,
                 "previous_qty": q0, "previous_price": p0})
            if paid is None:  # no rate recorded: the fold keeps it apart, unconverted
                self.plan.unknown.append(f"cash of the correction of {old_id}: no {currency} rate recorded")
            elif currency in cash:
                self.planned_cash[currency] = self.planned_cash.get(currency, ZERO) + paid
            if f1 != f0 and f.fee_currency in cash:
                self.planned_cash[f.fee_currency] = self.planned_cash.get(f.fee_currency, ZERO) - (f1 - f0)
        self.plan.count("fills_corrected")
        self.discrepancy("fill_corrected", f"the venue corrected execution {old_id} ({q0} @ {p0}) to {f.qty} @ "
                         f"{f.price} ({f.exec_id})", "corrected", **where)
        return True

    def late_fee(self, ours: _Order, f: VenueFill) -> None:
        """A fill we recorded with its fee pending, whose fee the venue now reports: ``FeeCharged``."""
        if f.fee_pending or self.acct is None or f.exec_id not in self.acct.fees_pending:
            return
        e = self.build(ev.FeeCharged, event_id=fact_id("FeeCharged", self.account, self.venue, f.exec_id),
                       occurred_at=f.occurred_at or self.now, correlation_id=ours.correlation_id,
                       causation_id=self.rid, account=self.account, venue=self.venue, fee_id=f.exec_id,
                       amount=f.fee, currency=f.fee_currency, symbol=ours.symbol, exec_id=f.exec_id,
                       client_order_id=ours.client_order_id, reconciliation_id=str(self.rid),
                       reason=f"the venue's fee for execution {f.exec_id}, reported after the fill")
        if e is None:
            return
        self.order_events.append((ours.stream_id, e))  # on the order's stream: its fees count it
        self.fees_settled.add(f.exec_id)
        self.plan.count("fees_charged")
        if f.fee and f.fee_currency in self.acct.cash_at(self.venue):
            self.planned_cash[f.fee_currency] = self.planned_cash.get(f.fee_currency, ZERO) - f.fee

    def scratch_position(self, previews: dict[tuple[str, str], PositionState], ours: _Order) -> PositionState:
        """In ``previews``, a scratch copy of the position a planned fill lands on (the state's as
        it is, then moved by the fills planned before it; never the state's own)."""
        key = (ours.venue, ours.symbol)
        preview = previews.get(key)
        if preview is None:
            preview = previews[key] = PositionState(self.account, ours.venue, ours.symbol,
                                                    self.state.instrument(ours.symbol))
            held = self.state.position_of(self.account, ours.venue, ours.symbol)
            if held is not None:
                preview.qty, preview.cost = held.qty, held.cost
        return preview

    def daily_loss(self, ours: _Order, fill: ev.OrderFilled) -> None:
        """``risk.daily_loss_breach`` of a planned fill, over the fills planned before it (as
        ``decide_fill`` does for a live fill): the breach, at most one per day, is planned too."""
        if self.acct is None:
            return
        day = self.state.trading_day(fill.occurred_at or self.now)
        preview = self.scratch_position(self.preview_positions, ours)
        stats = self.acct.daily.get(day)
        net_before = self.planned_day_net.get(day, stats.net_pnl if stats is not None else ZERO)
        breached = day in self.planned_breach_days or (stats is not None and MAX_DAILY_LOSS in stats.breaches)
        self.planned_day_net[day], breach = daily_loss_breach(self.acct, fill, ours.sign, day, preview, net_before,
                                                              breached=breached, rate=pnl_rate(self.state, ours.symbol))
        if breach is not None:
            self.planned_breach_days.add(day)
            self.account_events.append((account_stream_id(self.account), breach))
            self.plan.count("daily_limits_breached")

    # -------------------------------------------------------------------------------- run
    def run(self) -> ReconciliationPlan:
        snap = self.snap
        for name in PARTS:
            part = getattr(snap, name)
            if isinstance(part, Unknown):
                self.plan.unknown.append(f"{name}: {part.reason}")
        listed = venue_orders(snap)
        lookup_found: dict[str, VenueOrder] = {}
        for coid, result in sorted(self.lookups.items()):
            if isinstance(result, VenueOrder) and result.venue_order_id not in listed:
                lookup_found[result.venue_order_id] = result
        orders = {**listed, **lookup_found}
        self.orders = orders
        fills_by_order = self.group_fills(orders)
        self.plan.count("orders_checked", len(orders))
        self.duplicate_order_refs(orders)

        def order_key(o: VenueOrder) -> tuple[datetime, str]:
            return (o.submitted_at or self.now, o.venue_order_id)

        for vo in sorted(orders.values(), key=order_key):
            self.venue_order(vo, fills_by_order.pop(vo.venue_order_id, []))
        for venue_order_id, fills in sorted(fills_by_order.items()):
            self.orphan_fills(venue_order_id, fills)
        self.unseen_orders(orders)
        self.posted_fees()
        self.variation_margins()
        self.positions()
        self.cash()
        self.missing_fee_reports()
        self.plan.events = self.order_events + self.account_events
        return self.plan

    def group_fills(self, orders: Mapping[str, VenueOrder]) -> dict[str, list[VenueFill]]:
        by_exec: dict[str, VenueFill] = {}
        if not isinstance(self.snap.fills, Unknown):
            for f in self.snap.fills:
                by_exec.setdefault(f.exec_id, f)
        for order in orders.values():
            for f in order.fills:
                by_exec.setdefault(f.exec_id, f)
        self.plan.count("fills_checked", len(by_exec))
        grouped: dict[str, list[VenueFill]] = {}
        for f in by_exec.values():
            grouped.setdefault(f.venue_order_id, []).append(f)
        for fills in grouped.values():
            fills.sort(key=lambda f: (f.occurred_at or self.now, f.exec_id))
        return grouped

    def find(self, client_order_id: str | None, venue_order_id: str) -> OrderState | None:
        if client_order_id:
            order = self.open_by_client_id.get(client_order_id)
            if order is not None:
                return order
        for coid in (client_order_id, external_client_order_id(venue_order_id)):
            if not coid:
                continue
            order = self.state.orders.get(order_stream_id(self.account, coid))
            if order is not None:
                return order
        return None

    def ours_for(self, client_order_id: str | None, venue_order_id: str) -> _Order | None:
        order = self.find(client_order_id, venue_order_id)
        return None if order is None else _Order(order)

    # ------------------------------------------------------------------------ orders
    def duplicate_order_refs(self, orders: Mapping[str, VenueOrder]) -> None:
        """Venue orders sharing one client order id: the original stays ours (the one our log
        acknowledged, else the first placed); each other one is reported and kept apart."""
        by_coid: dict[str, list[VenueOrder]] = {}
        for vo in orders.values():
            if vo.client_order_id:
                by_coid.setdefault(vo.client_order_id, []).append(vo)
        for coid, same in sorted(by_coid.items()):
            if len(same) < 2:
                continue
            found = self.find(coid, same[0].venue_order_id)
            epoch = datetime.min.replace(tzinfo=timezone.utc)

            def placed(vo: VenueOrder) -> tuple[bool, datetime, int, str]:
                acked = found is not None and found.venue_order_id == vo.venue_order_id
                digits = vo.venue_order_id.isdigit()
                return (not acked, vo.submitted_at or epoch, int(vo.venue_order_id) if digits else 0, vo.venue_order_id)

            original, *others = sorted(same, key=placed)
            for vo in others:
                self.duplicates[vo.venue_order_id] = original.venue_order_id
            live = [vo.venue_order_id for vo in same if vo.is_open]
            ids = ", ".join(vo.venue_order_id for vo in [original, *others])
            self.plan.count("duplicate_order_refs")
            self.discrepancy(
                "duplicate_order_ref",
                f"{len(same)} venue orders carry client order id {coid!r} ({ids}; original {original.venue_order_id}, "
                f"{len(live)} still working): a possible double exposure; the others are kept apart as external "
                "orders", "pending", client_order_id=coid, venue_order_id=ids, symbol=original.symbol,
                ours=original.venue_order_id, theirs=ids)

    def venue_order(self, vo: VenueOrder, fills: list[VenueFill]) -> None:
        ended = None
        if vo.parent_venue_order_id and vo.raw_status.lower() == "held":
            if self._filled_legs is None:
                self._filled_legs = filled_legs(self.orders)
            ended = held_leg_ended(vo, self.orders, self._filled_legs)
        if ended:  # the venue may never send this leg's cancel: its group says it is over
            vo = replace(vo, status="cancelled", raw={**vo.raw, "reason": f"inferred: {ended}"})
            self.plan.count("leg_cancels_inferred")
        if vo.replaces and vo.status == "rejected" and self.replacement_refused(vo):
            return
        if (vo.replaces or vo.status == "replaced") and self.replaced_chain(vo, fills):
            return
        self.single_order(finished_by_replace(vo), fills)

    def replacement_refused(self, vo: VenueOrder) -> bool:
        """A replacement the venue rejected before it took over (the order it was to replace was
        not replaced by it: Alpaca rejects the replacement when the old order fills first): our
        order never moved to it; a pending amendment of ours is refused by the venue. False when
        the order it was to replace is not ours, or was replaced by it (then it is the chain's)."""
        old = self.orders.get(vo.replaces or "")
        if old is not None and old.status == "replaced" and str((old.raw or {}).get("replaced_by")) == vo.venue_order_id:
            return False
        found = self.owner(old) if old is not None else self.open_by_venue_id(vo.replaces or "")
        if found is None:
            return False
        if found.replace_pending is not None and found.is_open:
            e = self.order_event(_Order(found), ev.OrderReplaceRefused, ("replacement_rejected", vo.venue_order_id),
                                 vo.updated_at, replace_id=found.replace_pending, by="venue",
                                 reasons=["venue_rejected"],
                                 detail=f"the venue rejected replacement order {vo.venue_order_id}")
            if e is not None:
                self.plan.count("replaces_refused")
        return True

    def single_order(self, vo: VenueOrder, fills: list[VenueFill]) -> None:
        if vo.venue_order_id in self.duplicates:  # never ours, whatever client order id it carries
            external = external_client_order_id(vo.venue_order_id)
            found = self.state.orders.get(order_stream_id(self.account, external))
        else:
            external = None
            found = self.find(vo.client_order_id, vo.venue_order_id)
            if found is None and vo.parent_venue_order_id and self.leg(vo, fills):
                return
        fees_due = self.acct.fees_pending if self.acct is not None else {}
        if (found is not None and found.venue_order_id is not None and vo.filled_qty == found.filled_qty
                and (vo.is_open and found.is_open or vo.status == found.status)
                and all(found.executions.get(f.exec_id, (None, None))[:2] == (f.qty, f.price) for f in fills)
                and not (fees_due and any(f.exec_id in fees_due and not f.fee_pending for f in fills))
                and found.replace_pending is None):
            return  # the venue and the log agree on this order (the common case: keep it cheap)
        ours = None if found is None else _Order(found)
        if ours is None:
            ours = self.import_order(vo, external)
            if ours is None:
                return
        elif ours.venue_order_id is None and ours.is_open and vo.status != "rejected":
            e = self.order_event(ours, ev.OrderAcknowledged, (vo.venue_order_id,), vo.submitted_at,
                                 venue_order_id=vo.venue_order_id)
            if e is not None:
                ours.venue_order_id = vo.venue_order_id
                self.plan.count("acks_recorded")
                self.discrepancy("missed_ack", "the venue has the order; its ack was not recorded", "corrected",
                                 client_order_id=ours.client_order_id, venue_order_id=vo.venue_order_id,
                                 symbol=ours.symbol, ours=ours.status, theirs=vo.status)
        if vo.notional is not None:
            self.notional_qty(ours, vo, fills)
        self.missed_fills(ours, fills)
        self.fill_gap(ours, vo)
        self.status(ours, vo)
        if found is not None and found.replace_pending is not None:
            self.pending_replace(ours, found, vo)

    def pending_replace(self, ours: _Order, found: OrderState, vo: VenueOrder) -> None:
        """An amendment of ours recorded but not confirmed (a crash between its record and its
        send, or a lost confirmation) that the venue's order shows applied in place (same venue
        order id: IB, the simulated venue): recorded as ``OrderReplaced``. One it does not show
        stays pending (``OrderFlow.settle_replaces`` settles it after a restart): never sent again
        from here. Alpaca's replacements are new orders, read as chains (``replaced_chain``)."""
        entry = found.replaces[found.replace_pending]  # type: ignore[index]
        want = entry["request"]
        qty = Decimal(want["qty"])  # in our terms; after a split the venue may restate the filled part too
        shown = {qty} if entry.get("restated_qty") is None else {qty, Decimal(entry["restated_qty"])}
        if (not ours.is_open or vo.venue_order_id != ours.venue_order_id or vo.replaces or vo.qty not in shown
                or (vo.limit_price, vo.stop_price) != (_opt_dec(want.get("limit_price")),
                                                       _opt_dec(want.get("stop_price")))):
            return
        e = self.order_event(ours, ev.OrderReplaced, ("amended", found.replace_pending), vo.updated_at,
                             qty=qty, limit_price=vo.limit_price, stop_price=vo.stop_price,
                             venue_order_id=vo.venue_order_id)
        if e is not None:
            before = ours.qty
            ours.qty, ours.limit_price = qty, vo.limit_price
            self.plan.count("replaces_recorded")
            self.discrepancy("missed_replace", f"the venue shows our amendment {found.replace_pending!r} applied "
                             f"({vo.qty} @ {vo.limit_price or vo.stop_price or 'market'}): recorded as replaced",
                             "corrected", client_order_id=ours.client_order_id, venue_order_id=vo.venue_order_id,
                             symbol=ours.symbol, ours=str(before), theirs=str(vo.qty))

    def notional_qty(self, ours: _Order, vo: VenueOrder, fills: list[VenueFill] = ()) -> None:  # type: ignore[assignment]
        """An amount order's quantity is known only as it fills: our order's quantity follows the
        venue's (what is filled once it is done; never below what is filled while it works),
        recorded as ``OrderReplaced``, so its fills are neither an overfill nor a shortfall. What
        is filled counts fills the venue no longer lists (an earlier day's, recorded) with the
        listed ones not recorded yet (IB lists the current day's executions only)."""
        new = sum((f.qty for f in fills if f.exec_id not in ours.executions and "!" + f.exec_id not in ours.executions
                   and not any(c in ours.executions for c in f.corrects)), ZERO)
        done = max(vo.filled_qty, ours.filled_qty + new)
        target = done if vo.status == "filled" else max(ours.qty, done)
        if not ours.is_open or target == ours.qty or target <= 0:
            return
        e = self.order_event(ours, ev.OrderReplaced, ("notional", target), vo.updated_at, qty=target,
                             limit_price=ours.limit_price, stop_price=vo.stop_price,
                             venue_order_id=vo.venue_order_id)
        if e is not None:
            ours.qty = target
            self.plan.count("notional_quantities_recorded")

    # ------------------------------------------------ venue order links: replaces, bracket legs
    def open_by_venue_id(self, venue_order_id: str) -> OrderState | None:
        """Our open order at this venue that carries ``venue_order_id`` (built on first use)."""
        if self._open_by_venue_id is None:
            self._open_by_venue_id = {o.venue_order_id: o for o in self.open_by_client_id.values()
                                      if o.venue == self.venue and o.venue_order_id}
        return self._open_by_venue_id.get(venue_order_id)

    def owner(self, vo: VenueOrder) -> OrderState | None:
        """Our order for a venue order: by its ids, or as the order that carries its venue id."""
        return self.find(vo.client_order_id, vo.venue_order_id) or self.open_by_venue_id(vo.venue_order_id)

    def chain(self, vo: VenueOrder) -> list[VenueOrder]:
        """The cancel/replace chain that ends at ``vo``, as far back as the venue reported it."""
        chain, seen = [vo], {vo.venue_order_id}
        while chain[-1].replaces and chain[-1].replaces in self.orders and chain[-1].replaces not in seen:
            chain.append(self.orders[chain[-1].replaces])
            seen.add(chain[-1].venue_order_id)
        chain.reverse()
        return chain

    def replaced_chain(self, vo: VenueOrder, fills: list[VenueFill]) -> bool:
        """A venue order that replaced another (or was replaced): our order carries on under the
        newest venue order of the chain. Its fills (of every order of the chain) are our order's,
        and the replace is recorded once as ``OrderReplaced`` (quantity: what the earlier orders
        filled plus the new order's quantity; its prices; its venue order id), never as a cancel
        and an import. False when no order of ours is in the chain (then it is a stranger's)."""
        successor = vo.raw.get("replaced_by") if vo.raw else None
        if vo.status == "replaced" and successor and str(successor) in self.orders:
            self.chain_fills[vo.venue_order_id] = fills  # handled with the chain's newest order
            return True
        chain = self.chain(vo)
        found = None
        for link in chain:
            found = self.owner(link)
            if found is None and link.replaces:
                found = self.open_by_venue_id(link.replaces)
            if found is not None:
                break
        if found is None:  # a stranger's chain: each order on its own, the replaced ones finished
            for link in chain[:-1]:
                self.single_order(finished_by_replace(link), self.chain_fills.pop(link.venue_order_id, []))
            return False
        ours = _Order(found)
        prior = chain[:-1]
        for link in prior:
            self.missed_fills(ours, self.chain_fills.pop(link.venue_order_id, []))
        prior_filled = sum((p.filled_qty for p in prior), ZERO)
        where = dict(client_order_id=ours.client_order_id, venue_order_id=vo.venue_order_id, symbol=ours.symbol)
        if vo.status != "replaced" and ours.venue_order_id != vo.venue_order_id:
            qty = prior_filled + vo.qty
            if not ours.is_open:
                self.record_discrepancy(ours, "status_conflict", f"the venue replaced it with order "
                                        f"{vo.venue_order_id}, we hold it {ours.status}",
                                        venue_status="replaced", venue_order_id=vo.venue_order_id)
            elif self.order_event(ours, ev.OrderReplaced, (vo.venue_order_id,), vo.submitted_at, qty=qty,
                                  limit_price=vo.limit_price, stop_price=vo.stop_price,
                                  venue_order_id=vo.venue_order_id) is not None:
                before = ours.qty
                ours.qty, ours.limit_price, ours.venue_order_id = qty, vo.limit_price, vo.venue_order_id
                self.plan.count("replaces_recorded")
                self.discrepancy("missed_replace", f"the venue replaced it with order {vo.venue_order_id} "
                                 f"({qty} @ {vo.limit_price or vo.stop_price or 'market'}): recorded as replaced",
                                 "corrected", ours=str(before), theirs=str(qty), **where)
        self.missed_fills(ours, fills)
        if vo.status == "replaced":  # its replacement is not in the venue's answer
            self.discrepancy("replacement_unseen", f"the venue replaced order {vo.venue_order_id} by "
                             f"{successor or 'an order it did not report'}", "pending", **where)
            return True
        total = prior_filled + vo.filled_qty
        prices = [(p.avg_fill_price, p.filled_qty) for p in chain if p.filled_qty]
        avg = (sum((a * q for a, q in prices), ZERO) / total
               if total and all(a is not None for a, _ in prices) else vo.avg_fill_price)  # type: ignore[operator]
        whole = replace(vo, qty=prior_filled + vo.qty, filled_qty=total, avg_fill_price=avg)
        self.fill_gap(ours, whole)
        self.status(ours, whole)
        return True

    def leg(self, vo: VenueOrder, fills: list[VenueFill]) -> bool:
        """A bracket/OCO/OTO leg the venue created for one of our orders: imported linked to it
        (``parent_client_order_id``, the parent's intent as correlation), not as a stranger's order.
        False when the parent is not ours."""
        parent = self.orders.get(vo.parent_venue_order_id or "")
        found = self.owner(parent) if parent is not None else self.open_by_venue_id(vo.parent_venue_order_id or "")
        if found is None:
            return False
        ours = self.import_order(vo, parent=found)
        if ours is None:
            return True
        self.missed_fills(ours, fills)
        self.fill_gap(ours, vo)
        self.status(ours, vo)
        return True

    def import_order(self, vo: VenueOrder, coid: str | None = None, parent: OrderState | None = None) -> _Order | None:
        coid = coid or vo.client_order_id or external_client_order_id(vo.venue_order_id)
        if vo.notional is not None and vo.qty <= 0:
            self.plan.count("notional_orders_unfilled")  # no quantity yet: imported once it fills
            return None
        import_id = fact_id("OrderImported", self.account, self.venue, vo.venue_order_id)
        tif = vo.time_in_force if vo.time_in_force in {t.value for t in ev.TimeInForce} else "day"
        correlation = import_id if parent is None else UUID(parent.intent_event_id)
        linked: dict[str, Any] = {} if parent is None else {
            "parent_client_order_id": parent.client_order_id,
            "reason": f"{vo.raw.get('order_class') or 'bracket'} leg of order {parent.client_order_id}"[:1000]}
        allocation = vo.raw.get("fa_allocation") if vo.raw and parent is None else None
        if allocation:  # IB: this account's share of an FA group order placed from the advisor's account
            linked = {"reason": (f"allocation to {allocation.get('account')} of FA group order "
                                 f"{allocation.get('order_ref') or vo.venue_order_id} (group {allocation.get('group')}, "
                                 f"placed from {allocation.get('advisor_account')})")[:1000]}
        e = self.build(
            ev.OrderImported, event_id=import_id, occurred_at=vo.submitted_at or self.now,
            correlation_id=correlation, causation_id=self.rid, account=self.account, client_order_id=coid,
            venue=self.venue, symbol=vo.symbol, side=vo.side, order_type=vo.order_type, qty=vo.qty,
            limit_price=vo.limit_price, stop_price=vo.stop_price, time_in_force=tif,
            venue_order_id=vo.venue_order_id, venue_status=vo.raw_status or vo.status,
            reconciliation_id=str(self.rid), **linked,
        )
        if e is None:
            return None
        stream = order_stream_id(self.account, coid)
        self.order_events.append((stream, e))
        if parent is not None:
            self.plan.count("legs_linked")  # the venue made it for our order: not a disagreement
        elif allocation:
            self.plan.count("fa_allocations_imported")
            self.discrepancy("fa_allocation", linked["reason"] + ": imported", "corrected", client_order_id=coid,
                             venue_order_id=vo.venue_order_id, symbol=vo.symbol, ours="absent", theirs=vo.status)
        else:
            self.plan.count("orders_imported")
            self.discrepancy("unknown_order", f"{vo.side} {vo.qty} {vo.symbol} placed outside tradestate: "
                             "imported as external", "corrected", client_order_id=coid,
                             venue_order_id=vo.venue_order_id, symbol=vo.symbol, ours="absent", theirs=vo.status)
        ours = _Order()
        ours.client_order_id, ours.stream_id, ours.symbol, ours.venue = coid, stream, vo.symbol, self.venue
        ours.side, ours.sign, ours.qty, ours.limit_price = vo.side, 1 if vo.side == "buy" else -1, vo.qty, vo.limit_price
        ours.status, ours.filled_qty, ours.fill_notional = "acknowledged", ZERO, ZERO
        ours.executions, ours.venue_order_id, ours.discrepancy_keys = {}, vo.venue_order_id, {}
        ours.correlation_id, ours.imported, ours.exec_fees = correlation, True, {}
        return ours

    def missed_fills(self, ours: _Order, fills: list[VenueFill]) -> None:
        for f in fills:
            seen = ours.executions.get(f.exec_id)
            if seen is not None:
                if (seen[0], seen[1]) != (f.qty, f.price):
                    self.discrepancy("fill_conflict", f"execution {f.exec_id} is recorded as {seen[0]} @ {seen[1]}, "
                                     f"the venue says {f.qty} @ {f.price}", "pending",
                                     client_order_id=ours.client_order_id, venue_order_id=f.venue_order_id,
                                     symbol=ours.symbol, ours=f"{seen[0]}@{seen[1]}", theirs=f"{f.qty}@{f.price}")
                else:
                    self.late_fee(ours, f)
                continue
            if "!" + f.exec_id in ours.executions or f.exec_id in self.planned_exec_ids:
                continue
            self.planned_exec_ids.add(f.exec_id)
            if f.corrects and self.correction(ours, f):
                continue
            owner = self.state.exec_ids.get(ours.venue, {}).get(f.exec_id)
            if owner is not None and owner != ours.stream_id:
                self.record_discrepancy(ours, "duplicate_exec_id", f"venue fill {f.exec_id} of {f.qty} @ {f.price} "
                                        f"is already booked on another order ({owner})",
                                        venue_order_id=f.venue_order_id, fill=f)
            elif not ours.is_open:
                self.record_discrepancy(ours, "fill_on_terminal", f"venue fill {f.exec_id} of {f.qty} @ {f.price} "
                                        f"on an order we hold {ours.status}", venue_order_id=f.venue_order_id, fill=f)
            elif f.qty > ours.qty - ours.filled_qty:
                self.record_discrepancy(ours, "overfill", f"venue fill {f.exec_id} of {f.qty} with only "
                                        f"{ours.qty - ours.filled_qty} remaining", venue_order_id=f.venue_order_id, fill=f)
            elif self.fill(ours, f.qty, f.price, f.exec_id, f.fee, f.fee_currency, f.occurred_at, f.venue_order_id,
                           fee_pending=f.fee_pending):
                self.plan.count("fills_recorded")
                if not ours.imported:
                    self.discrepancy("missed_fill", f"venue fill {f.exec_id}: {f.side} {f.qty} @ {f.price} was not "
                                     "in the log", "corrected", client_order_id=ours.client_order_id,
                                     venue_order_id=f.venue_order_id, symbol=ours.symbol, theirs=f"{f.qty}@{f.price}")

    def fill_gap(self, ours: _Order, vo: VenueOrder) -> None:
        """The venue says more is filled than the executions we know explain."""
        gap = vo.filled_qty - ours.filled_qty
        if gap <= 0:
            return
        where = dict(client_order_id=ours.client_order_id, venue_order_id=vo.venue_order_id, symbol=ours.symbol,
                     ours=str(ours.filled_qty), theirs=str(vo.filled_qty))
        if not self.fills_known:
            self.discrepancy("fills_unknown", f"the venue reports {vo.filled_qty} filled, the log {ours.filled_qty}; "
                             "the fills query failed", "unknown", **where)
            self.plan.unknown.append(f"fills of order {ours.client_order_id}: the fills query failed")
            return
        if not ours.is_open or gap > ours.qty - ours.filled_qty:
            self.discrepancy("fill_unexplained", f"the venue reports {vo.filled_qty} filled, the log "
                             f"{ours.filled_qty}, and the order cannot take the difference", "pending", **where)
            return
        price = None
        if vo.avg_fill_price is not None and vo.avg_fill_price > 0:
            price = (vo.avg_fill_price * vo.filled_qty - ours.fill_notional) / gap
            if price <= 0:
                price = vo.avg_fill_price
        elif ours.limit_price is not None:
            price = ours.limit_price
        if price is None:
            self.discrepancy("fill_unexplained", f"the venue reports {vo.filled_qty} filled without executions "
                             "or a price", "pending", **where)
            return
        exec_id = inferred_exec_id(self.account, ours.client_order_id, vo.filled_qty)
        if exec_id in ours.executions:
            return
        if self.fill(ours, gap, _fit(price), exec_id, ZERO, "USD", vo.updated_at, vo.venue_order_id):
            self.plan.count("fills_inferred")
            self.discrepancy("missed_fill", f"the venue reports {vo.filled_qty} filled but lists no execution for "
                             f"{gap}: recorded as inferred fill {exec_id}", "corrected", **where)

    def status(self, ours: _Order, vo: VenueOrder) -> None:
        theirs = vo.status
        where = dict(venue_status=theirs, venue_order_id=vo.venue_order_id)
        if theirs == "unknown":
            self.discrepancy("unknown_venue_status", f"the venue says {vo.raw_status!r}", "unknown",
                             client_order_id=ours.client_order_id, venue_order_id=vo.venue_order_id,
                             symbol=ours.symbol, ours=ours.status, theirs=vo.raw_status)
            self.plan.unknown.append(f"order {ours.client_order_id}: venue status {vo.raw_status!r}")
            return
        if vo.is_open:
            if not ours.is_open:
                self.record_discrepancy(ours, "status_conflict", f"the venue holds it {theirs}, we hold it "
                                        f"{ours.status}", **where)
            return
        if theirs == "replaced":  # its replacement carries the order on (replaced_chain)
            return
        if theirs == "filled":
            if ours.status == "filled":
                return
            if ours.is_open:  # the fills did not add up; fill_gap has said why
                if vo.filled_qty <= ours.filled_qty:
                    self.discrepancy("fill_unexplained", f"the venue says filled at {vo.filled_qty}, the order is "
                                     f"for {ours.qty}", "pending", client_order_id=ours.client_order_id,
                                     venue_order_id=vo.venue_order_id, symbol=ours.symbol, ours=ours.status,
                                     theirs=theirs)
                return
            self.record_discrepancy(ours, "status_conflict", f"the venue says filled, we hold it {ours.status}", **where)
            return
        # cancelled, expired, rejected
        if ours.status == theirs:
            return
        if not ours.is_open:
            kind = "cancel_after_fill" if ours.status == "filled" and theirs == "cancelled" else "status_conflict"
            self.record_discrepancy(ours, kind, f"the venue says {theirs}, we hold it {ours.status}", **where)
            return
        if vo.filled_qty > ours.filled_qty:
            return  # fills we could not record: closing now would turn them into discrepancies later
        if theirs == "rejected" and ours.filled_qty > 0:
            self.record_discrepancy(ours, "reject_after_fill", f"the venue says rejected after {ours.filled_qty} "
                                    "filled", **where)
            return
        reason = str(vo.raw.get("reject_reason") or vo.raw.get("reason") or "") if vo.raw else ""
        fields: dict[str, Any] = {}
        cls: type[ev.OrderEvent]
        if theirs == "cancelled":
            cls, fields = ev.OrderCancelled, {"reason": reason or "cancelled at the venue (reconciliation)"}
        elif theirs == "rejected":
            cls, fields = ev.OrderRejected, {"reason": reason or "rejected by the venue (reconciliation)"}
        else:
            cls = ev.OrderExpired
        before = ours.status
        if self.order_event(ours, cls, (), vo.updated_at, **fields) is not None:
            ours.status = theirs
            self.plan.count("statuses_corrected")
            if not ours.imported:
                self.discrepancy("status_drift", f"we held it {before}, the venue says {theirs}", "corrected",
                                 client_order_id=ours.client_order_id, venue_order_id=vo.venue_order_id,
                                 symbol=ours.symbol, ours=before, theirs=theirs)

    def orphan_fills(self, venue_order_id: str, fills: list[VenueFill]) -> None:
        """Fills whose order is not in the venue's lists (outside the window, or the orders
        query failed): recorded on our order when we know it; otherwise reported."""
        first = fills[0]
        ours = self.ours_for(first.client_order_id, venue_order_id)
        if ours is not None:
            self.missed_fills(ours, fills)
            return
        resolution: Resolution = "pending" if self.orders_known else "unknown"
        for f in fills:
            self.discrepancy("unmatched_fill", f"venue fill {f.exec_id} ({f.side} {f.qty} {f.symbol} @ {f.price}) "
                             "belongs to no order we know or the venue listed", resolution,
                             client_order_id=f.client_order_id, venue_order_id=venue_order_id, symbol=f.symbol)

    def unseen_orders(self, orders: Mapping[str, VenueOrder]) -> None:
        """Our open orders the venue did not list: the lookup by client order id decides."""
        if self.acct is None:
            return
        listed_coids = {o.client_order_id for o in orders.values() if o.client_order_id}
        unseen = [o for o in self.acct.open_orders.values()
                  if o.venue == self.venue and o.client_order_id not in listed_coids
                  and not (o.venue_order_id and o.venue_order_id in orders)]
        for order in sorted(unseen, key=lambda o: o.client_order_id):
            result = self.lookups.get(order.client_order_id, Unknown("not looked up"))
            if isinstance(result, Unknown):
                self.plan.unknown.append(f"order {order.client_order_id}: lookup failed: {result.reason}")
                continue
            self.plan.count("lookups")
            if isinstance(result, VenueOrder):
                continue  # found by the lookup and reconciled with the listed orders
            if order.status == "new":
                self.plan.count("unsent_orders")  # never submitted, and the venue agrees
                continue
            ours = _Order(order)
            self.record_discrepancy(ours, "missing_at_venue", f"we hold it {order.status}; the venue does not know "
                                    "it (ambiguous submit: kept pending, never assumed rejected)")

    # -------------------------------------------------------------------- fees posted apart
    def posted_fees(self) -> None:
        """Each fee the venue posted apart from its fills (Alpaca's end-of-day crypto fee) is
        recorded once as ``FeeCharged``: in kind, the position shrinks by it; in cash, the cash."""
        fees = self.snap.fees
        if isinstance(fees, Unknown):
            self.plan.unknown.append(f"fees: {fees.reason}")
            return
        recorded = self.acct.fee_ids if self.acct is not None else set()
        for fee in fees:
            if fee.fee_id in recorded:
                continue
            e = self.build(
                ev.FeeCharged, event_id=fact_id("FeeCharged", self.account, self.venue, fee.fee_id),
                occurred_at=fee.occurred_at or self.now, causation_id=self.rid, account=self.account,
                venue=self.venue, fee_id=fee.fee_id, amount=fee.amount, currency=fee.currency, symbol=fee.symbol,
                in_kind=fee.in_kind, reconciliation_id=str(self.rid),
                reason=f"fee posted by the venue apart from its fills ({fee.raw.get('activity_type') or 'fee'})",
            )
            if e is None:
                continue
            self.account_events.append((account_stream_id(self.account), e))
            self.plan.count("fees_recorded")
            if fee.in_kind and fee.symbol:
                key = (self.venue, fee.symbol)
                spec = self.state.instrument(fee.symbol)  # the fold takes units of the asset: contracts of multiplier
                taken = fee.amount if spec is None else fee.amount / spec.multiplier
                self.planned_position[key] = self.planned_position.get(key, ZERO) - taken
            elif self.acct is not None and fee.currency in self.acct.cash_at(self.venue):
                self.planned_cash[fee.currency] = self.planned_cash.get(fee.currency, ZERO) - fee.amount

    def unposted_fees(self) -> dict[tuple[str, str], Decimal]:
        """The most the venue may have taken in fees it has not posted yet: ("position", symbol)
        for buys (a fee in the asset), ("cash", currency) for sells, at the snapshot's
        ``unposted_fee_rates``, over the venue's executions after the last day whose fees it
        posted. Empty for venues that post fees with their fills."""
        if self._unposted is not None:
            return self._unposted
        # what the venue itself bounds (it knows its fee schedule: Alpaca's regulatory fees)
        self._unposted = {("cash", currency): amount for currency, amount in self.snap.unposted_cash_fees.items()}
        rates = self.snap.unposted_fee_rates
        if not rates or isinstance(self.snap.fills, Unknown) or isinstance(self.snap.fees, Unknown):
            return self._unposted
        posted: dict[str, str] = {}  # symbol -> last UTC day whose fees were posted
        for fee in self.snap.fees:
            if fee.symbol and fee.occurred_at is not None:
                day = fee.occurred_at.astimezone(timezone.utc).date().isoformat()
                posted[fee.symbol] = max(posted.get(fee.symbol, day), day)
        seen: set[str] = set()
        fills = [*self.snap.fills, *(f for o in self.orders.values() for f in o.fills)]
        for f in fills:
            rate = rates.get(f.symbol)
            if rate is None or f.exec_id in seen:
                continue
            seen.add(f.exec_id)
            day = (f.occurred_at or self.now).astimezone(timezone.utc).date().isoformat()
            if f.symbol in posted and day <= posted[f.symbol]:
                continue
            if f.side == "buy":
                key, amount = ("position", f.symbol), f.qty * rate
            else:
                key, amount = ("cash", f.symbol.split("/")[1] if "/" in f.symbol else "USD"), f.qty * f.price * rate
            self._unposted[key] = self._unposted.get(key, ZERO) + amount + FEE_ROUNDING
        return self._unposted

    # ------------------------------------------------------- fees the venue has not reported
    def pending_fee(self, ours: _Order, exec_id: str, qty: Decimal, price: Decimal, currency: str,
                    occurred_at: datetime | None, venue_order_id: str | None) -> _PendingFee:
        spec = self.state.instrument(ours.symbol)
        notional = abs(qty * price * (spec.multiplier if spec is not None else 1))
        return _PendingFee(exec_id, ours.stream_id, ours.client_order_id, venue_order_id, ours.symbol,
                           ours.correlation_id, qty, price, currency, notional, occurred_at)

    def pending_fees(self) -> list[_PendingFee]:
        """The executions at this venue whose fee is pending after this plan (recorded so, or
        recorded so by it), oldest first; only for venues that bound the wait (``fee_report_wait``)."""
        if self.snap.fee_report_wait is None or self.acct is None:
            return []
        listed: dict[str, VenueFill] = {}
        if self.fills_known:
            listed.update((f.exec_id, f) for f in self.snap.fills)  # type: ignore[union-attr]
        for order in self.orders.values():
            listed.update((f.exec_id, f) for f in order.fills)
        pending: dict[str, _PendingFee] = {}
        for exec_id, stream_id in self.acct.fees_pending.items():
            order = self.state.orders.get(stream_id)
            if exec_id in self.fees_settled or order is None or order.venue != self.venue:
                continue
            held = order.executions.get(exec_id)
            if held is None:
                continue
            f = listed.get(exec_id)
            spec = self.state.instrument(order.symbol)
            currency = f.fee_currency if f is not None else spec.quote_currency if spec is not None else "USD"
            pending[exec_id] = self.pending_fee(_Order(order), exec_id, held[0], held[1], currency,
                                                f.occurred_at if f is not None else None, order.venue_order_id)
        pending.update((k, v) for k, v in self.planned_fees_pending.items() if k not in self.fees_settled)
        epoch = datetime.min.replace(tzinfo=timezone.utc)
        return sorted(pending.values(), key=lambda p: (p.occurred_at or epoch, p.exec_id))

    def overdue(self, fee: _PendingFee) -> bool:
        """Past the venue's wait for its fee report (an execution it no longer lists is)."""
        wait = self.snap.fee_report_wait or timedelta(0)
        return fee.occurred_at is None or self.now - fee.occurred_at >= wait

    def cash_short_by_pending_fees(self, currency: str, short: Decimal, expected: Decimal, held: Decimal) -> bool:
        """The venue holds ``short`` less ``currency`` than the log projects: True when fees it has
        not reported explain it (then no cash correction): one overdue execution's fee is recorded
        (``FeeCharged`` on the venue's evidence), fees not yet overdue are waited for, several
        overdue ones stay a discrepancy naming them. False: the pending fees cannot explain it."""
        rate = self.snap.max_fee_rate
        pending = [p for p in self.pending_fees() if p.currency == currency]
        if rate is None or not pending or short > sum((p.notional for p in pending), ZERO) * rate + FEE_ROUNDING:
            return False
        overdue = [p for p in pending if self.overdue(p)]
        if not overdue:
            self.plan.count("cash_fees_pending")  # their commission reports may still come
            return True
        if len(pending) == 1 and not self.can_correct_totals("cash"):
            return False  # seen through a partial answer: the cash is reported unknown
        names = ", ".join(f"{p.exec_id} (order {p.client_order_id})" for p in pending)
        if len(pending) == 1:
            (fee,) = pending
            e = self.build(ev.FeeCharged, event_id=fact_id("FeeCharged", self.account, self.venue, fee.exec_id),
                           occurred_at=fee.occurred_at or self.now, correlation_id=fee.correlation_id,
                           causation_id=self.rid, account=self.account, venue=self.venue, fee_id=fee.exec_id,
                           amount=_fit(short), currency=currency, symbol=fee.symbol, exec_id=fee.exec_id,
                           client_order_id=fee.client_order_id, reconciliation_id=str(self.rid),
                           reason=f"the venue's fee for execution {fee.exec_id} was never reported; its {currency} "
                                  f"cash is {short} below the log's (the fee, on the venue's evidence)")
            if e is None:
                return False
            self.order_events.append((fee.stream_id, e))
            self.fees_settled.add(fee.exec_id)
            self.plan.count("fees_inferred")
            self.discrepancy("fee_inferred", f"no commission report for execution {fee.exec_id}; the venue's "
                             f"{currency} cash is {short} below the log's: recorded as its fee (FeeCharged)",
                             "corrected", client_order_id=fee.client_order_id, venue_order_id=fee.venue_order_id,
                             symbol=fee.symbol, ours=str(expected), theirs=str(held))
            return True
        self.discrepancy("cash_fees_unreported", f"{currency} cash: the log projects {expected}, the venue holds "
                         f"{held}; the {short} is within the unreported fees of executions {names}, which "
                         "cannot be told apart: not corrected (record each fee from the venue's statement, or "
                         "reconcile as the master client id)", "pending", ours=str(expected), theirs=str(held))
        return True

    def missing_fee_reports(self) -> None:
        """Each fee still pending past the venue's wait: a ``fee_report_missing`` discrepancy."""
        for fee in self.pending_fees():
            if not self.overdue(fee):
                continue
            since = "before the venue's listing window" if fee.occurred_at is None else \
                f"since {fee.occurred_at.isoformat()}"
            self.plan.count("fee_reports_missing")
            self.discrepancy("fee_report_missing", f"the venue has not reported the fee of execution {fee.exec_id} "
                             f"({fee.qty} {fee.symbol} @ {fee.price}) {since}: its fee is not on record (IB sends "
                             "commission reports only to the client that placed the order and to the master "
                             "API client id)", "pending", client_order_id=fee.client_order_id,
                             venue_order_id=fee.venue_order_id, symbol=fee.symbol, theirs=fee.exec_id)
    # ------------------------------------------------------------------- settlement currencies
    def unconverted(self, spec: Any, amount: Decimal) -> None:
        """A planned fill's cash (``amount`` of ``spec``'s quote currency) the fold will keep apart
        for want of a rate into its settlement currency."""
        key = (spec.quote_currency, spec.settlement_currency)
        self.planned_unconverted[key] = self.planned_unconverted.get(key, ZERO) + amount

    def unconverted_into(self, currency: str) -> dict[str, Decimal]:
        """quote currency -> the fills' cash at this venue not converted into ``currency`` yet (the
        fold's and this plan's)."""
        out: dict[str, Decimal] = {}
        for (venue, quote, into), amount in (self.acct.unconverted.items() if self.acct is not None else ()):
            if venue == self.venue and into == currency:
                out[quote] = out.get(quote, ZERO) + amount
        for (quote, into), amount in self.planned_unconverted.items():
            if into == currency:
                out[quote] = out.get(quote, ZERO) + amount
        return out

    # ------------------------------------------------------------- futures' daily settlements
    def held_after_plan(self, symbol: str) -> Decimal:
        """Our position in ``symbol`` at this venue once the planned fills are booked."""
        held = self.state.position_of(self.account, self.venue, symbol)
        return (held.qty if held is not None else ZERO) + self.planned_position.get((self.venue, symbol), ZERO)

    def variation_margins(self) -> None:
        """Each daily settlement of a futures position the venue posted and the log lacks is
        recorded as ``VariationMarginSettled`` (its cash moves, the position's cost is re-based), in
        business-date order after the planned fills. Not when the position it names is not the one
        we hold once the planned fills are booked, or a planned fill came after its business date
        (then the re-base would land on the wrong quantity): a pending discrepancy says so."""
        margins = self.snap.variation_margins
        if margins is None:
            return
        if isinstance(margins, Unknown):
            self.plan.unknown.append(f"variation_margins: {margins.reason}")
            return
        cash = self.acct.cash_at(self.venue) if self.acct is not None else {}
        for m in sorted(margins, key=lambda m: (m.business_date, m.symbol)):
            if (self.account, self.venue, m.symbol, m.business_date) in self.state.variation_margins:
                continue
            where = dict(symbol=m.symbol, theirs=f"{m.qty}@{m.settlement_price} {m.business_date}")
            spec = self.state.instrument(m.symbol)
            held = self.held_after_plan(m.symbol)
            later = self.planned_fill_days.get((self.venue, m.symbol), "")
            if spec is None or not spec.is_future or held != m.qty or later > m.business_date:
                why = ("not a future in the registry" if spec is None or not spec.is_future else
                       f"the log holds {held}" if held != m.qty else f"a fill of {later} is recorded before it")
                self.unmatched_margins.add(m.currency)  # its cash difference is explained, not corrected
                self.discrepancy("variation_margin_unmatched", f"the venue settled {m.qty} {m.symbol} at "
                                 f"{m.settlement_price} on {m.business_date} ({m.amount} {m.currency}): {why}; "
                                 "not recorded", "pending", ours=str(held), **where)
                continue
            e = self.build(
                ev.VariationMarginSettled,
                event_id=fact_id("VariationMarginSettled", self.account, self.venue, m.symbol, m.business_date),
                occurred_at=self.now, causation_id=self.rid, account=self.account, venue=self.venue,
                symbol=m.symbol, business_date=m.business_date, settlement_price=m.settlement_price, qty=m.qty,
                amount=m.amount, currency=m.currency, venue_ref=m.venue_ref, reconciliation_id=str(self.rid),
                reason=f"the venue's daily settlement of {m.symbol} on {m.business_date}")
            if e is None:
                continue
            self.account_events.append((account_stream_id(self.account), e))
            self.plan.count("variation_margins_recorded")
            # the position as the planned fills leave it (a future's are previewed for its cash), re-based
            preview = self.cash_previews.get((self.venue, m.symbol))
            if preview is None:
                preview = self.cash_previews[(self.venue, m.symbol)] = PositionState(
                    self.account, self.venue, m.symbol, spec)
                held_now = self.state.position_of(self.account, self.venue, m.symbol)
                if held_now is not None:
                    preview.qty, preview.cost = held_now.qty, held_now.cost
            marked = (m.settlement_price * preview.qty - preview.cost) * spec.multiplier
            preview.cost = preview.qty * m.settlement_price
            if m.currency in cash:
                paid = margin_cash(self.state, spec, m.currency, marked, m.amount)
                self.planned_cash[m.currency] = self.planned_cash.get(m.currency, ZERO) + paid

    def unsettled_futures(self, currency: str) -> list[str]:
        """Our open futures positions at this venue whose cash moves in ``currency``, when the venue
        does not report its daily settlements: its cash may have moved by them unseen (when it does,
        a settlement of its that could not be recorded)."""
        if self.snap.variation_margins is not None:
            return ["a settlement not recorded"] if currency in self.unmatched_margins else []
        return sorted(f"{symbol} {self.held_after_plan(symbol)}"
                      for (account, venue, symbol), held in self.state.positions.items()
                      if account == self.account and venue == self.venue and held.spec is not None
                      and held.spec.is_future and held.spec.settlement_currency == currency
                      and self.held_after_plan(symbol))

    # -------------------------------------------------------------------- positions, cash
    def can_correct_totals(self, what: str) -> bool:
        return self.fills_known and self.orders_known

    def positions(self) -> None:
        snap = self.snap
        if isinstance(snap.positions, Unknown):
            return
        theirs: dict[str, Decimal] = {}
        avg_cost: dict[str, Decimal | None] = {}
        for p in snap.positions:
            theirs[p.symbol] = theirs.get(p.symbol, ZERO) + p.qty
            avg_cost[p.symbol] = p.avg_cost
        ours: dict[str, Decimal] = {}
        for (account, venue, symbol), held in self.state.positions.items():
            if account == self.account and venue == self.venue:
                ours[symbol] = held.qty
        for (venue, symbol), delta in self.planned_position.items():
            if venue == self.venue:
                ours[symbol] = ours.get(symbol, ZERO) + delta
        self.plan.count("positions_checked", len(set(theirs) | {s for s, q in ours.items() if q}))
        correctable = self.can_correct_totals("positions")
        unposted = self.unposted_fees()
        for symbol in sorted(set(theirs) | set(ours)):
            mine, venue_qty = ours.get(symbol, ZERO), theirs.get(symbol, ZERO)
            if mine == venue_qty:
                continue
            if ZERO < mine - venue_qty <= unposted.get(("position", symbol), ZERO):
                self.plan.count("positions_fees_unposted")  # the venue took a fee it posts later
                continue
            if mine and venue_qty and (mine > 0) != (venue_qty > 0):
                kind = "side_flip"
            else:
                kind = "position_mismatch"
            side = "long" if (venue_qty or mine) > 0 else "short"
            detail = f"{side} position: the log holds {mine}, the venue {venue_qty}"
            where = dict(symbol=symbol, ours=str(mine), theirs=str(venue_qty))
            if not correctable:
                self.discrepancy(kind, detail + "; not corrected: orders or fills unknown", "unknown", **where)
                continue
            cost = avg_cost.get(symbol)
            held = self.state.positions.get((self.account, self.venue, symbol))
            ratio = split_ratio(mine, venue_qty, held.avg_cost if held is not None else None, cost)
            if ratio is not None:  # a split's footprint: proposed, never corrected blindly
                self.discrepancy("split_suspected", f"{detail}: a split of {ratio} new per old share would explain "
                                 "it; record the corporate action (record_corporate_action), not corrected",
                                 "pending", **where)
                continue
            e = self.build(
                ev.PositionCorrected,
                event_id=fact_id("PositionCorrected", self.account, self.venue, symbol, mine, venue_qty,
                                 self.state.position),
                occurred_at=self.now, causation_id=self.rid, account=self.account, venue=self.venue,
                symbol=symbol, qty_before=_fit(mine), qty_after=venue_qty,
                avg_cost=_fit(cost) if cost is not None and cost > 0 else None,
                reconciliation_id=str(self.rid), reason=detail,
            )
            if e is not None:
                self.account_events.append((account_stream_id(self.account), e))
                self.plan.count("positions_corrected")
                self.discrepancy(kind, detail, "corrected", **where)

    def cash(self) -> None:
        snap = self.snap
        if isinstance(snap.balances, Unknown):
            return
        recorded = self.acct.cash_at(self.venue) if self.acct is not None else {}  # this venue's cash, not another's
        self.plan.count("balances_checked", len(snap.balances))
        for balance in sorted(snap.balances, key=lambda b: b.currency):
            before = recorded.get(balance.currency)
            expected = None if before is None else before + self.planned_cash.get(balance.currency, ZERO)
            converted = ""
            waiting = self.unconverted_into(balance.currency) if expected is not None else {}
            if waiting:  # fills whose cash could not be converted when folded, for want of a rate
                rates = {q: fx_rate(self.state.fx_rates, q, balance.currency) for q in waiting}
                missing = [q for q, r in rates.items() if r is None]
                said = ", ".join(f"{amount} {q}" for q, amount in sorted(waiting.items()))
                if missing:
                    self.discrepancy("fx_rate_missing", f"{balance.currency} cash: fills of {said} could not move it: "
                                     f"no {'/'.join(missing)}/{balance.currency} rate recorded (record_fx_rate); the "
                                     f"venue holds {balance.cash}, not corrected", "pending",
                                     ours=str(expected), theirs=str(balance.cash))
                    continue
                expected += sum((amount * rates[q] for q, amount in waiting.items()), ZERO)  # type: ignore[operator]
                converted = f" (with fills of {said} converted at the rates recorded since)"
            if expected == balance.cash and not converted:
                continue
            if expected is not None and ZERO < expected - balance.cash <= self.unposted_fees().get(
                    ("cash", balance.currency), ZERO):
                self.plan.count("cash_fees_unposted")  # the venue took a fee it posts later
                continue
            if expected is not None and expected > balance.cash and self.cash_short_by_pending_fees(
                    balance.currency, expected - balance.cash, expected, balance.cash):
                continue
            if expected is None and self.plan.unknown:
                # A first balance is the baseline that fills recorded later move. Taken while the
                # venue's answer was partial (fills, orders or a lookup unknown), it may already
                # hold fills the log lacks: each one recorded later would move it a second time
                # and show up as a cash correction that never happened (blocking under strict).
                self.plan.count("cash_baselines_deferred")
                continue
            detail = (f"first {balance.currency} balance on record: {balance.cash}" if expected is None else
                      f"{balance.currency} cash: the log projects {expected}{converted}, the venue holds "
                      f"{balance.cash}")
            unsettled = self.unsettled_futures(balance.currency) if expected is not None else []
            if unsettled:  # a daily settlement the venue does not report: never corrected blindly
                self.discrepancy("variation_margin_unrecorded", detail + "; open futures (" + ", ".join(unsettled)
                                 + ") settle daily in it: record the venue's settlement (record_variation_margin), "
                                 "not corrected", "pending", ours=str(expected), theirs=str(balance.cash))
                continue
            if expected is not None and not self.can_correct_totals("cash"):
                self.discrepancy("cash_drift", detail + "; not corrected: orders or fills unknown", "unknown",
                                 ours=str(expected), theirs=str(balance.cash))
                continue
            e = self.build(
                ev.CashBalanceRecorded,
                event_id=fact_id("CashBalanceRecorded", self.account, self.venue, balance.currency, expected,
                                 balance.cash, self.state.position),
                occurred_at=self.now, causation_id=self.rid, account=self.account, venue=self.venue,
                currency=balance.currency, balance=balance.cash,
                expected=None if expected is None else _fit(expected),
                reconciliation_id=str(self.rid), reason=detail,
            )
            if e is not None:
                self.account_events.append((account_stream_id(self.account), e))
                self.plan.count("cash_recorded")
                if expected == balance.cash:  # the converted fills explain it: a record, not a disagreement
                    self.plan.count("cash_converted")
                elif expected is not None:  # a first balance is a baseline, not a disagreement
                    self.discrepancy("cash_drift", detail, "corrected", ours=str(expected), theirs=str(balance.cash))


__all__ = [
    "Discrepancy",
    "RECONCILIATION_NAMESPACE",
    "ReconciliationPlan",
    "external_client_order_id",
    "fact_id",
    "held_leg_ended",
    "inferred_exec_id",
    "orders_to_look_up",
    "plan_reconciliation",
    "venue_orders",
]
