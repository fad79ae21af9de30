"""The order lifecycle: given the folded state and a validated event, decide what to append.

Engine commands that the lifecycle forbids raise ``InvalidTransition``. Venue facts that
contradict our state (a fill past the quantity, a fill on a cancelled order...) are never refused
and never applied blindly: they become a ``DiscrepancyRecorded`` for reconciliation. Repeating a
fact that is already recorded returns where it was recorded (``AlreadyRecorded``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from . import events as ev
from .errors import IdempotencyConflict, InvalidInput, InvalidTransition, UnknownOrder
from .ids import account_stream_id, corporate_action_stream_id, derived_id, order_stream_id
from .instruments import PLACES, intent_refusals, split_order, tidy
from .risk import MAX_DAILY_LOSS, check_intent, check_replace, daily_loss_breach, pnl_rate
from .state import OPEN_STATUSES, OrderState, PositionState, TradingState, discrepancy_key


@dataclass(frozen=True)
class AlreadyRecorded:
    """The fact is in the log already, at this position; nothing new is appended."""

    position: int


@dataclass(frozen=True)
class Append:
    """Events to append in one transaction, each with its stream."""

    events: list[tuple[str, ev.Event]]


Decision = Append | AlreadyRecorded

_ENVELOPE = {"event_id", "occurred_at", "correlation_id", "causation_id"}


def _order(state: TradingState, e: ev.OrderEvent) -> OrderState:
    order = state.orders.get(order_stream_id(e.account, e.client_order_id))
    if order is None:
        raise UnknownOrder(e.account, e.client_order_id)
    return order


def same_content(stored: dict[str, Any], new: ev.Event) -> bool:
    """Whether a stored payload and a new event state the same fact: equal once ids, clocks and the
    schema marker are left out (the stored one is validated again, so '10' and '10.0' are equal)."""
    data = {k: v for k, v in stored.items() if k not in _ENVELOPE and k != ev.SCHEMA_KEY}
    old = type(new).model_validate({**data, "event_id": new.event_id})
    return old.model_dump(exclude=_ENVELOPE) == new.model_dump(exclude=_ENVELOPE)


def _discrepancy(e: ev.OrderEvent, order: OrderState, kind: str, detail: str, **fields: Any) -> Decision:
    record = ev.DiscrepancyRecorded(
        event_id=e.event_id,
        occurred_at=e.occurred_at,
        correlation_id=e.correlation_id,
        causation_id=e.causation_id,
        account=e.account,
        client_order_id=e.client_order_id,
        kind=kind,  # type: ignore[arg-type]
        detail=detail,
        **fields,
    )
    seen = order.discrepancy_keys.get(discrepancy_key(record.model_dump(mode="json")))
    if seen is not None:  # the same contradiction reported again is the same fact
        return AlreadyRecorded(seen)
    return Append([(order_stream_id(e.account, e.client_order_id), record)])


def _single(e: ev.OrderEvent) -> Append:
    return Append([(order_stream_id(e.account, e.client_order_id), e)])


# ------------------------------------------------------------------------------ engine commands


def decide_intent(state: TradingState, intent: ev.OrderIntentRecorded, now: datetime, *,
                  clock_skew: timedelta | None = None, max_clock_skew: timedelta | None = None) -> Decision:
    """Record an intent with its pre-trade decision at ``now`` (``risk.check_intent``, with the
    engine clock's ``clock_skew`` and ``max_clock_skew``): the intent and ``RiskCheckPassed`` (in
    the account's stream), or the intent and ``IntentRejectedByRisk``. The same intent again is
    ``AlreadyRecorded``; the same client order id with other content raises
    ``IdempotencyConflict``."""
    stream = order_stream_id(intent.account, intent.client_order_id)
    existing = state.orders.get(stream)
    if existing is not None:
        if same_content(existing.intent, intent):
            return AlreadyRecorded(existing.positions["intent"])
        raise IdempotencyConflict(
            f"client order id {intent.client_order_id!r} of account {intent.account!r} was already "
            "recorded with other content; use a new client order id"
        )
    risk = check_intent(state, intent, now, clock_skew=clock_skew, max_clock_skew=max_clock_skew)
    if not risk.passed:
        refusal = ev.IntentRejectedByRisk(
            event_id=derived_id(intent.event_id, ev.IntentRejectedByRisk.__name__),
            occurred_at=intent.occurred_at,
            correlation_id=intent.event_id,
            causation_id=intent.event_id,
            account=intent.account,
            client_order_id=intent.client_order_id,
            reasons=risk.reasons,
            detail=risk.detail,
        )
        return Append([(stream, intent), (stream, refusal)])
    passed = ev.RiskCheckPassed(
        event_id=derived_id(intent.event_id, ev.RiskCheckPassed.__name__),
        occurred_at=intent.occurred_at,
        correlation_id=intent.event_id,
        causation_id=intent.event_id,
        account=intent.account,
        client_order_id=intent.client_order_id,
        symbol=intent.symbol,
        side=intent.side,
        qty=intent.qty,
        notional=risk.notional,
        trading_day=risk.trading_day,
    )
    return Append([(stream, intent), (account_stream_id(intent.account), passed)])


def decide_submitted(state: TradingState, e: ev.OrderSubmitted) -> Decision:
    """Record that a new order is being sent. Again: ``AlreadyRecorded``; an order past new:
    ``InvalidTransition``."""
    order = _order(state, e)
    if "submitted" in order.positions:
        return AlreadyRecorded(order.positions["submitted"])
    if order.status != "new":
        raise InvalidTransition(
            f"order {order.client_order_id!r} is {order.status}; only a new order can be submitted"
        )
    return _single(e)


def decide_cancel_request(state: TradingState, e: ev.OrderCancelRequested) -> Decision:
    """Record a cancel request of an open order. Again: ``AlreadyRecorded``; a finished order:
    ``InvalidTransition``."""
    order = _order(state, e)
    if order.cancel_requested and "cancel_requested" in order.positions:
        return AlreadyRecorded(order.positions["cancel_requested"])
    if not order.is_open:
        raise InvalidTransition(f"order {order.client_order_id!r} is {order.status}; nothing to cancel")
    return _single(e)


def decide_replace_request(state: TradingState, e: ev.OrderReplaceRequested, now: datetime, *,
                           clock_skew: timedelta | None = None, max_clock_skew: timedelta | None = None) -> Decision:
    """Record the engine's amendment of an open order with its pre-trade check at ``now``
    (``risk.check_replace``): the request alone when it passes, the request and
    ``OrderReplaceRefused`` (by risk) when it does not.

    The same ``replace_id`` again: ``AlreadyRecorded`` (other content: ``IdempotencyConflict``);
    the same amendment while it is pending, under another id: ``AlreadyRecorded`` too (a retry).
    Nothing is appended and ``InvalidTransition`` is raised for an order that is not open, not
    ours (imported), being cancelled, not acknowledged by the venue yet, or with another amendment pending, and for a quantity not
    above what is filled; ``InvalidInput`` for price fields the order type does not take, an
    amendment that changes nothing, or one its instrument refuses (tick, lot, fraction, expiry)."""
    order = _order(state, e)
    stream = order_stream_id(e.account, e.client_order_id)
    entry = (order.replaces or {}).get(e.replace_id)
    if entry is not None:
        if _same_amendment(entry, e):
            return AlreadyRecorded(entry["position"])
        raise IdempotencyConflict(f"replace id {e.replace_id!r} of order {e.client_order_id!r} was already recorded "
                                  "with other content; use a new replace id")
    name = repr(order.client_order_id)
    if order.external:
        raise InvalidTransition(f"order {name} was imported from the venue; it is not ours to amend")
    if not order.is_open:
        raise InvalidTransition(f"order {name} is {order.status}; only an open order can be amended")
    if order.cancel_requested:
        raise InvalidTransition(f"order {name} has a cancel pending; it cannot be amended")
    if order.venue_order_id is None:  # what ``forward`` would send is the intent: amend what the venue holds
        raise InvalidTransition(f"order {name} is not acknowledged by the venue yet; amend it once it is")
    if order.replace_pending is not None:
        pending = order.replaces[order.replace_pending]  # type: ignore[index]
        if _same_amendment(pending, e, e.replace_id):
            return AlreadyRecorded(pending["position"])
        raise InvalidTransition(f"order {name} has amendment {order.replace_pending!r} pending; wait for the "
                                "venue's answer")
    needs_limit = order.order_type in ("limit", "stop_limit")
    needs_stop = order.order_type in ("stop", "stop_limit")
    if needs_limit != (e.limit_price is not None) or needs_stop != (e.stop_price is not None):
        raise InvalidInput(f"a {order.order_type} order takes "
                           + ("a limit price" if needs_limit else "no limit price") + " and "
                           + ("a stop price" if needs_stop else "no stop price"))
    if e.qty <= order.filled_qty:
        raise InvalidTransition(f"new quantity {e.qty} is not above the {order.filled_qty} already filled "
                                "(nothing would be left to work: cancel instead)")
    if (e.qty, e.limit_price, e.stop_price) == (order.qty, order.limit_price, order.stop_price) and (
            e.reference_price is None or e.reference_price == order.reference_price):
        raise InvalidInput(f"the amendment of order {name} changes nothing")
    spec = state.instruments.get(order.symbol) if state.instruments else None
    if spec is not None:
        broken = intent_refusals(spec, e.qty, [p for p in (e.limit_price, e.stop_price) if p is not None], now)
        if broken:
            raise InvalidInput("; ".join(detail for _code, detail in broken))
    risk = check_replace(state, order, e.qty, e.limit_price, e.stop_price, e.reference_price, now,
                         clock_skew=clock_skew, max_clock_skew=max_clock_skew)
    if risk.passed:
        return Append([(stream, e)])
    refusal = ev.OrderReplaceRefused(
        event_id=derived_id(e.event_id, ev.OrderReplaceRefused.__name__),
        occurred_at=e.occurred_at,
        correlation_id=e.correlation_id,
        causation_id=e.event_id,
        account=e.account,
        client_order_id=e.client_order_id,
        replace_id=e.replace_id,
        by="risk",
        reasons=risk.reasons,
        detail=risk.detail,
    )
    return Append([(stream, e), (stream, refusal)])


def _same_amendment(entry: dict[str, Any], e: ev.OrderReplaceRequested, replace_id: str | None = None) -> bool:
    """Whether ``e`` asks what amendment ``entry`` asked: as it stands, or as first asked before
    a split restated it (``asked``); under ``replace_id`` when given (a retry under another id)."""
    for request in (entry["request"], entry.get("asked")):
        try:
            if request is not None and same_content({**request, "replace_id": replace_id or request["replace_id"]}, e):
                return True
        except ValueError:  # restated to nothing left to work: no request can ask that
            continue
    return False


def decide_replace_refused(state: TradingState, e: ev.OrderReplaceRefused) -> Decision:
    """Record the venue's refusal of a pending amendment (the order goes on as it was). Again:
    ``AlreadyRecorded``; an amendment that is not pending (unknown, already answered):
    ``InvalidTransition``."""
    order = _order(state, e)
    entry = (order.replaces or {}).get(e.replace_id)
    if entry is None:
        raise InvalidTransition(f"order {order.client_order_id!r} has no amendment {e.replace_id!r}")
    if entry["status"] == "refused":
        return AlreadyRecorded(entry["refused_at"])
    if order.replace_pending != e.replace_id:
        raise InvalidTransition(f"amendment {e.replace_id!r} of order {order.client_order_id!r} is {entry['status']}")
    return _single(e)


# ---------------------------------------------------------------------------------- venue facts


def decide_ack(state: TradingState, e: ev.OrderAcknowledged) -> Decision:
    """Record the venue's ack. The same ack again: ``AlreadyRecorded``; another venue order id or an
    ack of a finished order: a discrepancy."""
    order = _order(state, e)
    if "ack" in order.positions:
        if order.venue_order_id == e.venue_order_id:
            return AlreadyRecorded(order.positions["ack"])
        return _discrepancy(
            e,
            order,
            "venue_order_id_changed",
            f"acknowledged again with venue order id {e.venue_order_id!r}, "
            f"first ack had {order.venue_order_id!r}",
            venue_order_id=e.venue_order_id,
        )
    if order.status in ("refused", "rejected", "cancelled", "expired"):
        return _discrepancy(
            e,
            order,
            "status_conflict",
            f"venue acknowledged an order we hold {order.status}",
            venue_status="acknowledged",
            venue_order_id=e.venue_order_id,
        )
    # An ack after fills (a late ack) is recorded; it changes no status.
    return _single(e)


def decide_reject(state: TradingState, e: ev.OrderRejected) -> Decision:
    """Record the venue's reject of an open order without fills; a reject after fills or of a
    finished order is a discrepancy."""
    order = _order(state, e)
    if order.status == "rejected":
        return AlreadyRecorded(order.positions["terminal"])
    if order.filled_qty > 0:
        return _discrepancy(e, order, "reject_after_fill", f"rejected after {order.filled_qty} filled: {e.reason}",
                            venue_status="rejected")
    if not order.is_open:
        return _discrepancy(e, order, "status_conflict", f"venue rejected an order we hold {order.status}",
                            venue_status="rejected")
    return _single(e)


def decide_fill(state: TradingState, e: ev.OrderFilled, now: datetime) -> Decision:
    """Record a venue execution. Its exec id again with the same qty and price: ``AlreadyRecorded``,
    with others: ``IdempotencyConflict``. An exec id the venue already gave another order, a fill
    of a finished order and a fill past the remaining quantity are discrepancies (not booked). A
    fill that takes the day's loss to ``max_daily_loss`` appends the ``DailyLimitBreached`` with
    it."""
    order = _order(state, e)
    seen = order.executions.get(e.exec_id) or order.executions.get("!" + e.exec_id)
    if seen is not None:
        qty, price, position = seen
        if qty == e.qty and price == e.price:
            return AlreadyRecorded(position)
        raise IdempotencyConflict(
            f"execution {e.exec_id!r} is recorded as {qty} @ {price}; "
            f"the same execution id now says {e.qty} @ {e.price}"
        )
    owner = state.exec_ids.get(order.venue, {}).get(e.exec_id)
    if owner is not None and owner != order.stream_id:
        return _discrepancy(e, order, "duplicate_exec_id",
                            f"execution {e.exec_id!r} of venue {order.venue!r} is already booked on another order "
                            f"({owner}); fill of {e.qty} @ {e.price} not booked",
                            exec_id=e.exec_id, qty=e.qty, price=e.price, venue_order_id=e.venue_order_id)
    if order.status not in OPEN_STATUSES:
        return _discrepancy(e, order, "fill_on_terminal", f"fill of {e.qty} @ {e.price} on an order we hold {order.status}",
                            exec_id=e.exec_id, qty=e.qty, price=e.price, venue_order_id=e.venue_order_id)
    if e.qty > order.remaining:
        return _discrepancy(e, order, "overfill", f"fill of {e.qty} with only {order.remaining} remaining",
                            exec_id=e.exec_id, qty=e.qty, price=e.price, venue_order_id=e.venue_order_id)
    events: list[tuple[str, ev.Event]] = [(order.stream_id, e)]
    day = state.trading_day(e.occurred_at or now)
    account = state.account(order.account)
    stats = account.daily.get(day)
    spec = state.instruments.get(order.symbol) if state.instruments else None
    preview = PositionState(order.account, order.venue, order.symbol, spec)
    held = state.position_of(order.account, order.venue, order.symbol)
    if held is not None:
        preview.qty, preview.cost = held.qty, held.cost
    _, breach = daily_loss_breach(account, e, order.sign, day, preview, stats.net_pnl if stats else Decimal(0),
                                  breached=stats is not None and MAX_DAILY_LOSS in stats.breaches,
                                  rate=pnl_rate(state, order.symbol))
    if breach is not None:
        events.append((account_stream_id(order.account), breach))
    return Append(events)


def decide_fill_correction(state: TradingState, e: ev.FillCorrected) -> Decision:
    """Record the venue's correction of one of the order's executions. Already applied (the
    corrected execution is gone and the correcting one is there, or gone too for a bust):
    ``AlreadyRecorded``. The corrected execution held with other numbers than ``previous_*``:
    ``IdempotencyConflict`` (decide again on the current log). A correction that takes the order
    past its quantity is an ``overfill`` discrepancy (nothing moves)."""
    order = _order(state, e)
    held = order.executions.get(e.corrected_exec_id)
    if held is None:
        done = order.executions.get(e.exec_id)
        corrections = [p for k, p in order.positions.items() if k.startswith("correction:")]
        if done is not None or (e.qty == 0 and corrections):
            return AlreadyRecorded(done[2] if done is not None else max(corrections))
        raise InvalidTransition(f"execution {e.corrected_exec_id!r} is not booked on order {e.client_order_id!r}: "
                                "nothing to correct (record the fill instead)")
    if (held[0], held[1]) != (e.previous_qty, e.previous_price):
        raise IdempotencyConflict(f"execution {e.corrected_exec_id!r} is booked as {held[0]} @ {held[1]}, the "
                                  f"correction says it was {e.previous_qty} @ {e.previous_price}")
    if order.filled_qty - e.previous_qty + e.qty > order.qty:
        return _discrepancy(e, order, "overfill", f"correction {e.exec_id} of {e.corrected_exec_id} to {e.qty} "
                            f"takes the order past {order.qty}", exec_id=e.exec_id, qty=e.qty or None,
                            price=e.price, venue_order_id=e.venue_order_id)
    return _single(e)


def decide_fee(state: TradingState, e: ev.FeeCharged) -> Decision:
    """Record a fee posted apart from its fill, once per ``fee_id``."""
    account = state.accounts.get(e.account)
    seen = account.fee_ids.get(e.fee_id) if account is not None else None
    if seen is not None:
        return AlreadyRecorded(seen)
    if e.client_order_id is not None:
        stream = order_stream_id(e.account, e.client_order_id)
        if state.orders.get(stream) is None:
            raise UnknownOrder(e.account, e.client_order_id)
        return Append([(stream, e)])
    return Append([(account_stream_id(e.account), e)])


def decide_cancelled(state: TradingState, e: ev.OrderCancelled) -> Decision:
    """Record the venue's cancel of an open order; a cancel of a filled or otherwise finished order
    is a discrepancy."""
    order = _order(state, e)
    if order.status == "cancelled":
        return AlreadyRecorded(order.positions["terminal"])
    if order.status == "filled":
        return _discrepancy(e, order, "cancel_after_fill", f"venue says cancelled, we hold it filled: {e.reason}",
                            venue_status="cancelled")
    if not order.is_open:
        return _discrepancy(e, order, "status_conflict", f"venue says cancelled, we hold it {order.status}",
                            venue_status="cancelled")
    return _single(e)


def decide_expired(state: TradingState, e: ev.OrderExpired) -> Decision:
    """Record the venue's expiry of an open order; an expiry of a finished order is a discrepancy."""
    order = _order(state, e)
    if order.status == "expired":
        return AlreadyRecorded(order.positions["terminal"])
    if not order.is_open:
        return _discrepancy(e, order, "status_conflict", f"venue says expired, we hold it {order.status}",
                            venue_status="expired")
    return _single(e)


def adjustment_confirmed(order: OrderState, e: ev.OrderReplaced) -> bool:
    """Whether ``e`` is the venue's own confirmation of the corporate action that restated
    ``order`` (``OrderAdjusted``): no replace since, and the adjusted prices with the adjusted
    quantity or the venue's full restatement of it (``restated_qty``)."""
    adjusted = order.adjusted
    if adjusted is None or any(k.startswith("replace:") and p > adjusted["position"] for k, p in order.positions.items()):
        return False
    quantities = {Decimal(adjusted["qty"])}
    if adjusted.get("restated_qty") is not None:
        quantities.add(Decimal(adjusted["restated_qty"]))
    return e.qty in quantities and (e.limit_price, e.stop_price) == (order.limit_price, order.stop_price)


def _restated_amendment_qty(order: OrderState, e: ev.OrderReplaced) -> Decimal | None:
    """Our quantity of the pending amendment a split restated (``OrderAdjusted.replace_qty``) when
    ``e`` confirms it in the venue's whole restatement (the filled part in post-split units too):
    its prices and that quantity; else None."""
    if order.replace_pending is None:
        return None
    entry = order.replaces[order.replace_pending]  # type: ignore[index]
    request, whole = entry["request"], entry.get("restated_qty")
    if whole is None or e.qty != Decimal(whole) or e.qty == Decimal(request["qty"]):
        return None
    if (e.limit_price, e.stop_price) != (_price(request.get("limit_price")), _price(request.get("stop_price"))):
        return None
    return Decimal(request["qty"])


def decide_replaced(state: TradingState, e: ev.OrderReplaced) -> Decision:
    """Record a replace of an open order (quantity not below what is filled, the order type's price
    fields kept); anything else raises ``InvalidTransition``. The venue's confirmation of a
    corporate action's adjustment (``adjustment_confirmed``) is not a second adjustment: nothing
    is appended (``AlreadyRecorded`` at the adjustment), or, when it names a new venue order id,
    that id with our adjusted quantity."""
    order = _order(state, e)
    if not order.is_open:
        raise InvalidTransition(f"order {order.client_order_id!r} is {order.status}; only an open order can be replaced")
    if adjustment_confirmed(order, e):
        if e.venue_order_id is None or e.venue_order_id == order.venue_order_id:
            return AlreadyRecorded(order.adjusted["position"])  # type: ignore[index]
        return _single(e.model_copy(update={"qty": order.qty}))
    ours = _restated_amendment_qty(order, e)
    if ours is not None:  # the venue's whole restatement of our restated amendment: in our terms
        e = e.model_copy(update={"qty": ours})
    if e.qty < order.filled_qty:  # down to exactly the filled quantity fills the order
        raise InvalidTransition(f"new quantity {e.qty} is below the {order.filled_qty} already filled")
    needs_limit = order.order_type in ("limit", "stop_limit")
    needs_stop = order.order_type in ("stop", "stop_limit")
    if needs_limit != (e.limit_price is not None) or needs_stop != (e.stop_price is not None):
        raise InvalidTransition(f"a {order.order_type} order's replacement must keep its price fields")
    return _single(e)


# ----------------------------------------------------------------------------- corporate actions


def decide_corporate_action(state: TradingState, e: ev.CorporateActionRecorded) -> Decision:
    """Record a corporate action with what it does to our open orders in ``e.symbol``: the action
    (on ``corporate-<symbol>``) and one ``OrderAdjusted`` per open order (on the order's stream,
    in the same append), a split restating its remaining quantity and prices
    (``instruments.split_order``), a symbol change moving it to the new symbol. The same action
    (symbol, action, effective time) again: ``AlreadyRecorded``."""
    stored = e.to_payload()
    done = state.corporate_actions.get((e.symbol, e.action, stored["effective_at"]))
    if done is not None:
        return AlreadyRecorded(done)
    events: list[tuple[str, ev.Event]] = [(corporate_action_stream_id(e.symbol), e)]
    working = sorted((o for a in state.accounts.values() for o in a.open_orders.values() if o.symbol == e.symbol),
                     key=lambda o: o.stream_id)
    for order in working:
        events.append((order.stream_id, _adjusted(state, order, e)))
    return Append(events)


def _restated_by_venue(order: OrderState, spec: Any, ratio_from: Decimal, ratio_to: Decimal) -> bool:
    """Whether the venue's replace of ``order`` (recorded before the split was) already made it
    the split of its intent: its prices are the intent's restated, and its quantity the intent's
    restated in our terms (filled as booked + the rest restated) or whole. Only for an order
    replaced since its intent and never adjusted: the venue adjusted it on the ex-date and the
    action is recorded after."""
    if order.adjusted is not None or not any(k.startswith("replace:") for k in order.positions):
        return False
    intent = order.intent
    qty0 = Decimal(intent["qty"])
    prices0 = [Decimal(intent[k]) if intent.get(k) is not None else None for k in ("limit_price", "stop_price")]
    split = split_order(spec, order.sign, qty0 - order.filled_qty, prices0[0], prices0[1], ratio_from, ratio_to)
    restated = {order.filled_qty + split.remaining, tidy((qty0 * ratio_to / ratio_from).quantize(PLACES))}
    return ((split.limit_price, split.stop_price) == (order.limit_price, order.stop_price)
            and order.qty in restated and order.qty != qty0)


def _adjusted(state: TradingState, order: OrderState, e: ev.CorporateActionRecorded) -> ev.OrderAdjusted:
    """The ``OrderAdjusted`` of open ``order`` by corporate action ``e``."""
    fields: dict[str, Any] = dict(
        event_id=derived_id(e.event_id, f"OrderAdjusted:{order.stream_id}"), occurred_at=e.occurred_at,
        correlation_id=UUID(order.intent_event_id), causation_id=e.event_id, account=order.account,
        client_order_id=order.client_order_id, corporate_action=e.action, effective_at=e.effective_at,
        previous_symbol=order.symbol, previous_qty=order.qty, previous_limit_price=order.limit_price,
        previous_stop_price=order.stop_price)
    if e.action == "symbol_change":
        return ev.OrderAdjusted(**fields, symbol=e.new_symbol, qty=order.qty, limit_price=order.limit_price,
                                stop_price=order.stop_price,
                                reason=f"{order.symbol} became {e.new_symbol}: the order works {e.new_symbol}")
    assert e.ratio_from is not None and e.ratio_to is not None  # the event's own validation
    spec = state.instruments.get(order.symbol) if state.instruments else None
    if _restated_by_venue(order, spec, e.ratio_from, e.ratio_to):
        return ev.OrderAdjusted(**fields, symbol=order.symbol, qty=order.qty, limit_price=order.limit_price,
                                stop_price=order.stop_price, ratio_from=e.ratio_from, ratio_to=e.ratio_to,
                                restated_qty=order.qty,
                                reason=f"{e.ratio_from}-to-{e.ratio_to} split of {order.symbol}: the venue restated "
                                "the order already (replaced before the action was recorded): unchanged")
    split = split_order(spec, order.sign, order.remaining, order.limit_price, order.stop_price, e.ratio_from,
                        e.ratio_to)
    qty = order.filled_qty + split.remaining
    restated = tidy((order.qty * e.ratio_to / e.ratio_from).quantize(PLACES))
    reason = (f"{e.ratio_from}-to-{e.ratio_to} split of {order.symbol}: remaining {order.remaining} -> "
              f"{split.remaining}" + _dropped_said(split.dropped, order.symbol, spec))
    if not split.remaining:
        reason += "; nothing whole is left to work: the order is finished (cancelled)"
    amendment: dict[str, Any] = {}
    if order.replace_pending is not None:  # restated like the order, so the venue's confirmation matches
        asked = order.replaces[order.replace_pending]["request"]  # type: ignore[index]
        asked_qty = Decimal(asked["qty"])
        left = asked_qty - order.filled_qty
        moved = split_order(spec, order.sign, left, _price(asked.get("limit_price")),
                            _price(asked.get("stop_price")), e.ratio_from, e.ratio_to)
        amendment = dict(replace_id=order.replace_pending, replace_qty=order.filled_qty + moved.remaining,
                         replace_limit_price=moved.limit_price, replace_stop_price=moved.stop_price,
                         replace_restated_qty=tidy((asked_qty * e.ratio_to / e.ratio_from).quantize(PLACES)))
        reason += (f"; pending amendment {order.replace_pending}: remaining {left} -> {moved.remaining}"
                   + _dropped_said(moved.dropped, order.symbol, spec))
        if not moved.remaining:
            reason += " (nothing whole is left of it to work: it cannot be sent as is)"
    return ev.OrderAdjusted(**fields, symbol=order.symbol, qty=qty, limit_price=split.limit_price,
                            stop_price=split.stop_price, ratio_from=e.ratio_from, ratio_to=e.ratio_to,
                            restated_qty=restated, remaining_dropped=split.dropped, reason=reason[:1000],
                            **amendment)


def _price(stored: Any) -> Decimal | None:
    return None if stored is None else Decimal(stored)


def _dropped_said(dropped: Decimal, symbol: str, spec: Any) -> str:
    """The words for ``dropped`` units a split's rounding took off (nothing when none)."""
    if not dropped:
        return ""
    unit = ("its lot of " + str(spec.lot_size)) if spec is not None and spec.lot_size is not None else (
        "whole units" if spec is not None and not spec.fractional else "12 decimal places")
    return f"; {dropped} dropped ({symbol} trades in {unit})"


def decide_variation_margin(state: TradingState, e: ev.VariationMarginSettled) -> Decision:
    """Record the venue's daily settlement of a futures position (on the account's stream), once
    per account, venue, symbol and business date (again: ``AlreadyRecorded``). ``InvalidInput``,
    nothing appended, when ``e.symbol`` is not a future in the registry or the log does not hold
    ``e.qty`` contracts of it at ``e.venue`` (reconcile first: a settlement re-bases the position
    it names, no other)."""
    done = state.variation_margins.get((e.account, e.venue, e.symbol, e.business_date))
    if done is not None:
        return AlreadyRecorded(done)
    spec = state.instruments.get(e.symbol) if state.instruments else None
    if spec is None or not spec.is_future:
        raise InvalidInput(f"VariationMarginSettled: {e.symbol!r} is not a future in the registry (define_instrument)")
    held = state.position_of(e.account, e.venue, e.symbol)
    qty = held.qty if held is not None else Decimal(0)
    if qty != e.qty:
        raise InvalidInput(f"VariationMarginSettled: {e.qty} {e.symbol} settled at {e.venue} on {e.business_date}, "
                           f"but the log holds {qty} (reconcile first)")
    return Append([(account_stream_id(e.account), e)])
