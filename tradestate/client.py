"""The Python client a trading engine appends through.

Every ``record_*`` call goes through one ``Writer`` (``tradestate.writer``): catch up with the
log, let the domain decide against that state, append the decided events in one durable
transaction with optimistic concurrency on each stream they touch, and only then return. A
conflict (another engine wrote to the same stream) re-runs the decision on fresh state, a bounded
number of times. An ambiguous failure (the connection dropped during commit) is resolved by
reading back: the call returns our events if they landed instead of writing twice.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

from prometheus_client import Counter

from .adapters.store import Store, open_store
from .domain import events as ev
from .domain import orders as rules
from .domain.errors import InvalidInput, UnknownOrder
from .domain.ids import (
    account_stream_id,
    bar_stream_id,
    engine_stream_id,
    fx_stream_id,
    instrument_stream_id,
    order_stream_id,
    strategy_stream_id,
)
from .domain.instruments import InstrumentSpec, reporting_view
from .domain.state import AccountState, TradingState
from .loading import load_state
from .writer import Recorded, Writer, WriterStats, build_event, utc_now

REFUSALS = Counter("tradestate_intent_refusals_total", "Intents refused by the pre-trade check", ["reason"])

ClientStats = WriterStats
_BAR_FIELDS = frozenset({"venue", "symbol", "timeframe", "start", "open", "high", "low", "close", "volume"})


@dataclass(frozen=True)
class RiskRefusal:
    """Why the pre-trade check refused an intent: reason codes and a human-readable detail."""

    reasons: list[str]
    detail: str


@dataclass(frozen=True)
class IntentResult:
    """An intent as recorded: its position, its order stream, and the refusal if it was refused."""

    position: int  # global position of the intent
    order_stream: str
    refusal: RiskRefusal | None = None
    duplicate: bool = False
    event_id: UUID | None = None

    @property
    def accepted(self) -> bool:
        return self.refusal is None


@dataclass(frozen=True)
class ReplaceResult(IntentResult):
    """An amendment as recorded (``request_replace``): an ``IntentResult`` (``position`` of its
    ``OrderReplaceRequested``, the order's stream, the refusal if the pre-trade check refused it:
    send it only if ``accepted``) with the amendment's ``replace_id``."""

    replace_id: str = field(kw_only=True)


class TradestateClient:
    """An engine's handle on the log: records facts and answers queries from its own fold.

    Contract of every ``record_*`` (and ``request_cancel``, risk controls, engine and signal
    facts): input is validated first (bad input: ``InvalidInput``, nothing appended); the call
    returns only once its events are durable, or found already recorded (``duplicate=True``,
    nothing appended: every call is safe to retry with the same ids); a fact that contradicts the
    order's state is recorded as a discrepancy (``Recorded.discrepancy``) rather than refused;
    other writers' conflicting appends make the call decide again on fresh state (after
    ``max_attempts``: ``ConcurrencyConflict``); a database that fails or cannot be read is
    ``AppendFailed`` (nothing was appended by the call unless the log shows it).

    ``state`` is the fold of the log up to ``position``; queries catch up first. Thread-safe.
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], datetime] = utc_now,
        new_id: Callable[[], UUID] = uuid4,
        exchange_tz: str = "America/New_York",
        venue: str | None = None,
        max_attempts: int = 8,
        max_failures: int = 3,
        use_checkpoints: bool = True,
        checkpoint_every: int | None = None,
        checkpoint_seconds: float = 60.0,
        initial_state: TradingState | None = None,
        clock_guard: bool | None = None,
        clock_skew_threshold: float | None = 0.05,
        max_clock_skew: float | None = 1.0,
        clock_check_seconds: float = 10.0,
        clock_source: str | None = None,
        lease: Any = None,
        coalesce: bool = False,
    ):
        """``venue``: the venue intents are booked at when ``record_intent`` names none (with
        neither, an intent is ``InvalidInput``). ``use_checkpoints``: start from the newest valid
        checkpoint and fold only the tail (``self.loaded`` says which was used and which were
        refused); without a valid one, the whole log is folded. ``checkpoint_every``: write a
        checkpoint every that many events (or ``checkpoint_seconds``) after an append.
        ``initial_state``: a state already loaded from this store (recovery), caught up from
        its position.

        Time (``Writer``): with ``clock_guard`` (default: on with the wall clock, off with an
        injected ``clock``, whose time is the caller's own, a simulation's say) decisions use time
        that never runs backwards (the later of the clock and the log's last recorded time); the
        clock is measured against the store's at connect and every ``clock_check_seconds``; a
        skew beyond ``clock_skew_threshold`` seconds (default 50 ms) is recorded as a
        ``ClockSkewRecorded`` (once per episode: when it starts and when it ends) under
        ``clock_source`` (default: the host name), and intents are refused (``clock_skew``) while
        it is beyond ``max_clock_skew`` seconds (default 1 s). None switches either off.

        A log that went backwards under the client (a restore, an asynchronous failover) makes
        every later call raise ``LogRewound``; re-open and recover.

        ``lease`` (``engines.EngineLease``, taken already; ``connect(..., engine_id=...)`` does it):
        this client is the active engine: every append carries the lease's epoch and is refused
        once another engine took the lease or it expired (``NotLeader``, then on every call).

        ``coalesce``: calls made concurrently (from threads, or the async client's workers) share
        commits (``adapters.store.coalesce``: group commit): each still returns once its own
        events are durable, with its own conflict check and error, and a lone call is no slower.
        Decisions then see this client's appends still in flight only where they touch the same
        stream (see ``Writer``): the guarantee between them is the one between two engines."""
        self.store = store
        self.lease = lease
        self.venue = venue
        self.loaded = None
        if initial_state is not None:
            state = initial_state
        else:
            start = load_state(store, exchange_tz=exchange_tz, use_checkpoints=use_checkpoints)
            state, self.loaded = start.state, start.loaded
            if start.replayed > 10_000:
                # A big fold leaves a big, long-lived state: keep the collector from rescanning
                # it on every full collection while the engine trades.
                gc.freeze()
        checkpointer = None
        if checkpoint_every is not None:
            from .adapters.store.checkpoints import Checkpointer

            checkpointer = Checkpointer(store, every_events=checkpoint_every, every_seconds=checkpoint_seconds)
        if clock_guard is None:
            clock_guard = clock is utc_now
        self.coalescer = None
        if coalesce:
            from .adapters.store.coalesce import CommitCoalescer

            self.coalescer = CommitCoalescer(store.trading)
        self.writer = Writer(store, state, clock=clock, new_id=new_id, max_attempts=max_attempts,
                             max_failures=max_failures, checkpointer=checkpointer, clock_guard=clock_guard,
                             clock_skew_threshold=clock_skew_threshold, max_clock_skew=max_clock_skew,
                             clock_check_seconds=clock_check_seconds, clock_source=clock_source,
                             coalescer=self.coalescer)
        if lease is not None:
            self.writer.fence = lease.fence
            lease.start()
        self.writer.catch_up()
        self.writer.check_clock(force=True)

    # ------------------------------------------------------------------------ the writer
    @property
    def state(self) -> TradingState:
        """The fold of the log up to ``position`` (the writer's)."""
        return self.writer.state

    @property
    def stats(self) -> WriterStats:
        return self.writer.stats

    @property
    def checkpointer(self) -> Any:
        return self.writer.checkpointer

    @property
    def last_checkpoint_error(self) -> str | None:
        return self.writer.last_checkpoint_error

    @property
    def clock(self) -> Callable[[], datetime]:
        return self.writer.clock

    @property
    def clock_reading(self) -> Any:
        """The last measurement of the clock against the store's (``writer.ClockReading``; None
        without the clock guard)."""
        return self.writer.clock_reading

    @property
    def new_id(self) -> Callable[[], UUID]:
        return self.writer.new_id

    @property
    def max_attempts(self) -> int:
        return self.writer.max_attempts

    @property
    def max_failures(self) -> int:
        return self.writer.max_failures

    def catch_up(self) -> int:
        """Fold every event appended since our last look; returns the position reached."""
        return self.writer.catch_up()

    def _order_envelope(self, account: str, client_order_id: str, occurred_at: datetime | None,
                        causation_id: UUID | None = None) -> dict[str, Any]:
        """Envelope for a later order event: correlated with the order's intent."""
        writer = self.writer
        writer.refresh()  # the intent may have been recorded by another engine
        try:  # unvalidated input: a bad id simply has no intent to correlate with
            stream = order_stream_id(account, client_order_id)
            writer.load_orders([stream])
            order = self.state.orders.get(stream)
            if order is None:  # our fold may be held below a hole that hides the intent
                writer.wait_past_holes()
                writer.load_orders([stream])
                order = self.state.orders.get(stream)
        except (TypeError, UnicodeError):
            order = None
        correlation = UUID(order.intent_event_id) if order is not None else None
        return {**writer.envelope(occurred_at, correlation, causation_id), "account": account,
                "client_order_id": client_order_id}

    def _order_fact(self, decide: Callable[[TradingState], rules.Decision], e: ev.OrderEvent) -> Recorded:
        return self.writer.record_fact(decide, orders=[order_stream_id(e.account, e.client_order_id)])

    # ---------------------------------------------------------------------- order lifecycle
    def record_intent(
        self,
        account: str,
        client_order_id: str,
        symbol: str,
        side: str,
        qty: Decimal | int | str,
        *,
        order_type: str = "market",
        limit_price: Decimal | int | str | None = None,
        stop_price: Decimal | int | str | None = None,
        time_in_force: str = "day",
        venue: str | None = None,
        strategy_id: str | None = None,
        reference_price: Decimal | int | str | None = None,
        occurred_at: datetime | None = None,
        causation_id: UUID | None = None,
    ) -> IntentResult:
        """Record an order intent and its pre-trade risk decision, before anything is sent.

        ``venue``: where the order goes (default: the client's ``venue``; with neither,
        ``InvalidInput``). Same client order id and same content: the first result again
        (``duplicate=True``). Same id, other content: ``IdempotencyConflict``. A refusal is
        recorded and returned (``result.refusal``); send the order only if ``result.accepted``."""
        venue = venue if venue is not None else self.venue
        if venue is None:
            raise InvalidInput("OrderIntentRecorded: venue: give the venue the order goes to "
                               "(record_intent(..., venue=...) or connect(..., venue=...))")
        envelope = self.writer.envelope(occurred_at, None, causation_id)
        envelope["correlation_id"] = envelope["event_id"]  # an order's events all carry its intent's id
        intent = build_event(
            ev.OrderIntentRecorded,
            **envelope,
            account=account,
            client_order_id=client_order_id,
            venue=venue,
            symbol=symbol,
            side=side,
            order_type=order_type,
            qty=qty,
            limit_price=limit_price,
            stop_price=stop_price,
            time_in_force=time_in_force,
            strategy_id=strategy_id,
            reference_price=reference_price,
        )
        stream = order_stream_id(intent.account, intent.client_order_id)
        writer = self.writer
        written = writer.record(lambda state: rules.decide_intent(state, intent, writer.now(), **writer.intent_clock()),
                                orders=[stream])
        decision, positions = written.decision, written.positions
        order = self.state.orders.get(stream)
        if isinstance(decision, rules.AlreadyRecorded):
            refusal = None
            if order is not None and order.refusal:
                refusal = RiskRefusal(order.refusal, order.refusal_detail)
            return IntentResult(decision.position, stream, refusal, duplicate=True,
                                event_id=UUID(order.intent_event_id) if order else None)
        second = decision.events[1][1]
        if isinstance(second, ev.IntentRejectedByRisk):
            self.stats.refusals += 1
            for reason in second.reasons:
                REFUSALS.labels(reason).inc()
            return IntentResult(positions[0], stream, RiskRefusal(list(second.reasons), second.detail), event_id=intent.event_id)
        return IntentResult(positions[0], stream, None, event_id=intent.event_id)

    def record_submitted(self, account: str, client_order_id: str, *, occurred_at: datetime | None = None) -> Recorded:
        """Record that the order was sent to the venue. The order's intent must be on record
        (else ``UnknownOrder``); sent again after a later state: a duplicate or a discrepancy."""
        e = build_event(ev.OrderSubmitted, **self._order_envelope(account, client_order_id, occurred_at))
        return self._order_fact(lambda state: rules.decide_submitted(state, e), e)

    def record_ack(self, account: str, client_order_id: str, venue_order_id: str, *,
                   occurred_at: datetime | None = None) -> Recorded:
        """Record the venue's acknowledgement and its order id. The same ack again is a duplicate;
        another venue order id for the order is recorded as a discrepancy."""
        e = build_event(ev.OrderAcknowledged, **self._order_envelope(account, client_order_id, occurred_at),
                        venue_order_id=venue_order_id)
        return self._order_fact(lambda state: rules.decide_ack(state, e), e)

    def record_reject(self, account: str, client_order_id: str, reason: str = "", *,
                      occurred_at: datetime | None = None) -> Recorded:
        """Record the venue's rejection (a terminal state). Rejecting an order that already has
        fills or is finished otherwise is recorded as a discrepancy."""
        e = build_event(ev.OrderRejected, **self._order_envelope(account, client_order_id, occurred_at),
                        reason=reason)
        return self._order_fact(lambda state: rules.decide_reject(state, e), e)

    def record_fill(
        self,
        account: str,
        client_order_id: str,
        exec_id: str,
        qty: Decimal | int | str,
        price: Decimal | int | str,
        *,
        fee: Decimal | int | str = 0,
        fee_currency: str = "USD",
        liquidity: str = "unknown",
        venue_order_id: str | None = None,
        occurred_at: datetime | None = None,
        fee_pending: bool = False,
    ) -> Recorded:
        """Record one venue execution (partial or full): position, P&L, fees and cash follow.
        Deduplicated by ``exec_id`` (the same execution again: a duplicate; the same id with other
        numbers: ``IdempotencyConflict``); a fill beyond the order's quantity or on an order the
        log says is finished is recorded, with a discrepancy. ``fee_pending``: the venue reports
        the fee later (``record_fee``); until then the fill shows it pending, not as 0."""
        e = build_event(
            ev.OrderFilled,
            **self._order_envelope(account, client_order_id, occurred_at),
            exec_id=exec_id,
            qty=qty,
            price=price,
            fee=fee,
            fee_currency=fee_currency,
            liquidity=liquidity,
            venue_order_id=venue_order_id,
            fee_pending=fee_pending,
        )
        writer = self.writer
        return self._order_fact(lambda state: rules.decide_fill(state, e, writer.now()), e)

    def record_fill_correction(
        self,
        account: str,
        client_order_id: str,
        exec_id: str,
        corrects: tuple[str, ...] | list[str],
        qty: Decimal | int | str,
        price: Decimal | int | str,
        *,
        fee: Decimal | int | str | None = None,
        fee_currency: str = "USD",
        fee_pending: bool = False,
        venue_order_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> Recorded:
        """Record the venue's execution ``exec_id`` that corrects (replaces) one of ``corrects``
        (IB: the same execId up to its last '.'): ``FillCorrected`` of the latest of them the
        order holds, so the order, position, cash and P&L are as if the fill had had these
        values (``qty`` 0: a bust). The order holds none of them: an ordinary ``record_fill``."""
        envelope = self._order_envelope(account, client_order_id, occurred_at)
        order = self.state.orders.get(order_stream_id(account, client_order_id))
        held = [x for x in corrects if order is not None and x in order.executions]
        if not held:
            return self.record_fill(account, client_order_id, exec_id, qty, price, fee=fee or 0,
                                    fee_currency=fee_currency, venue_order_id=venue_order_id,
                                    occurred_at=occurred_at, fee_pending=fee_pending)
        assert order is not None
        q0, p0, _ = order.executions[held[-1]]
        e = build_event(ev.FillCorrected, **envelope, corrected_exec_id=held[-1], exec_id=exec_id, qty=qty,
                        price=price, previous_qty=q0, previous_price=p0,
                        previous_fee=(order.exec_fees or {}).get(held[-1], Decimal(0)),
                        fee=0 if fee_pending else fee, fee_currency=fee_currency, fee_pending=fee_pending,
                        venue_order_id=venue_order_id)
        return self._order_fact(lambda state: rules.decide_fill_correction(state, e), e)

    def record_fee(
        self,
        account: str,
        venue: str | None,
        fee_id: str,
        amount: Decimal | int | str,
        *,
        currency: str = "USD",
        symbol: str | None = None,
        in_kind: bool = False,
        exec_id: str | None = None,
        client_order_id: str | None = None,
        occurred_at: datetime | None = None,
        reason: str = "",
    ) -> Recorded:
        """Record a fee the venue posted apart from its fill (a late commission report by exec id, a
        fee activity by its id), once per ``fee_id``: cash in ``currency``, fees and net P&L
        follow; ``in_kind``: taken in the asset of position ``symbol`` (its quantity shrinks).

        A fee of one of our orders (``client_order_id``) is booked on that order's position: its
        ``symbol`` and ``venue`` are the order's when left out (``venue`` None); a symbol the order
        worked before a symbol change (the venue's report may name it) is booked on the order's
        current one; another symbol or venue than the order's is ``InvalidInput``, nothing
        appended. Any other fee names its venue."""
        order = self.state.orders.get(order_stream_id(account, client_order_id)) \
            if client_order_id is not None else None
        if order is not None:  # an unknown order: the rule says so (UnknownOrder)
            venue, symbol = self._fee_of_order(order, venue, symbol)
        e = build_event(ev.FeeCharged, **self.writer.envelope(occurred_at), account=account, venue=venue,
                        fee_id=fee_id, amount=amount, currency=currency, symbol=symbol, in_kind=in_kind,
                        exec_id=exec_id, client_order_id=client_order_id, reason=reason)
        orders = [order_stream_id(account, client_order_id)] if client_order_id is not None else []
        return self.writer.record_fact(lambda state: rules.decide_fee(state, e), orders=orders)

    @staticmethod
    def _fee_of_order(order: Any, venue: str | None, symbol: str | None) -> tuple[str, str]:
        """(venue, symbol) of a fee of ``order``: the order's (a former symbol of it stands for its
        current one); a given one that differs is refused."""
        if symbol in order.former_symbols:
            symbol = order.symbol
        for name, given, its in (("venue", venue, order.venue), ("symbol", symbol, order.symbol)):
            if given is not None and given != its:
                raise InvalidInput(f"a fee of order {order.client_order_id!r} is booked on its position ({its}): "
                                   f"{name} {given!r} is not the order's; nothing was recorded")
        return order.venue, order.symbol

    def request_cancel(self, account: str, client_order_id: str, reason: str = "", *,
                       occurred_at: datetime | None = None) -> Recorded:
        """Record that we asked the venue to cancel (before sending the request); asking again
        while it is pending is a duplicate."""
        e = build_event(ev.OrderCancelRequested, **self._order_envelope(account, client_order_id, occurred_at),
                        reason=reason)
        return self._order_fact(lambda state: rules.decide_cancel_request(state, e), e)

    def request_replace(self, account: str, client_order_id: str, *, qty: Decimal | int | str | None = None,
                        limit_price: Decimal | int | str | None = None, stop_price: Decimal | int | str | None = None,
                        reference_price: Decimal | int | str | None = None, replace_id: str | None = None,
                        reason: str = "", occurred_at: datetime | None = None) -> ReplaceResult:
        """Record the engine's amendment of an open order (new whole quantity, the filled part
        included, and/or new prices; what is not given stays) with its pre-trade check, before
        anything is sent (``OrderFlow.replace`` sends it). The check is on what the amended order
        would add (``domain.risk.check_replace``: more quantity, more notional with the
        instrument's multiplier, a more aggressive price; the account's kill switch, breaker,
        daily loss and ramp); lowering the quantity always passes. A refusal is recorded and
        returned (``result.refusal``), like a refused intent; the order goes on unchanged. The
        order takes the new values only from the venue's confirmation (``record_replaced``).

        Retries: the same ``replace_id`` again returns the first result (``duplicate=True``; other
        content: ``IdempotencyConflict``); without one, an id is drawn and the same amendment
        asked again while it is pending is a duplicate. Nothing is appended and a typed error is
        raised for an unknown order (``UnknownOrder``), one not open, not acknowledged by the
        venue yet, being cancelled or with another amendment pending, a quantity not above the filled one (``InvalidTransition``),
        a non-positive quantity or price, price fields the order type does not take, an amendment
        that changes nothing, or one off the instrument's tick, lot or fraction rules
        (``InvalidInput``)."""
        envelope = self._order_envelope(account, client_order_id, occurred_at)
        order = self.state.orders.get(order_stream_id(account, client_order_id))
        if order is None:
            raise UnknownOrder(account, client_order_id)
        replace_id = replace_id if replace_id is not None else str(self.new_id())
        e = build_event(ev.OrderReplaceRequested, **envelope, replace_id=replace_id,
                        qty=qty if qty is not None else order.qty,
                        limit_price=limit_price if limit_price is not None else order.limit_price,
                        stop_price=stop_price if stop_price is not None else order.stop_price,
                        reference_price=reference_price, reason=reason)
        writer = self.writer
        written = writer.record(lambda state: rules.decide_replace_request(state, e, writer.now(),
                                                                           **writer.intent_clock()),
                                orders=[order_stream_id(e.account, e.client_order_id)])
        decision, positions = written.decision, written.positions
        stream = order_stream_id(e.account, e.client_order_id)
        order = self.state.orders.get(stream)
        if isinstance(decision, rules.AlreadyRecorded):
            entry = next((r for r in (order.replaces or {}).values() if r["position"] == decision.position), None) \
                if order is not None else None
            refusal = None
            if entry is not None and entry["status"] == "refused" and entry.get("by") == "risk":
                refusal = RiskRefusal(list(entry["reasons"]), entry["detail"])
            rid = entry["request"]["replace_id"] if entry is not None else replace_id
            event_id = UUID(entry["request"]["event_id"]) if entry is not None else None
            return ReplaceResult(decision.position, stream, refusal, duplicate=True, event_id=event_id, replace_id=rid)
        if len(decision.events) > 1:
            refused = decision.events[1][1]
            assert isinstance(refused, ev.OrderReplaceRefused)
            self.stats.refusals += 1
            for code in refused.reasons:
                REFUSALS.labels(code).inc()
            return ReplaceResult(positions[0], stream, RiskRefusal(list(refused.reasons), refused.detail),
                                 event_id=e.event_id, replace_id=replace_id)
        return ReplaceResult(positions[0], stream, event_id=e.event_id, replace_id=replace_id)

    def record_replace_refused(self, account: str, client_order_id: str, replace_id: str, reason: str, *,
                               occurred_at: datetime | None = None) -> Recorded:
        """Record the venue's refusal of pending amendment ``replace_id`` (the order goes on as it
        was; another amendment may follow). Again: a duplicate; an amendment not pending:
        ``InvalidTransition``."""
        e = build_event(ev.OrderReplaceRefused, **self._order_envelope(account, client_order_id, occurred_at),
                        replace_id=replace_id, by="venue", reasons=["venue_rejected"], detail=reason)
        return self._order_fact(lambda state: rules.decide_replace_refused(state, e), e)

    def record_cancelled(self, account: str, client_order_id: str, reason: str = "", *,
                         occurred_at: datetime | None = None) -> Recorded:
        """Record the venue's confirmation that the order is cancelled (a terminal state)."""
        e = build_event(ev.OrderCancelled, **self._order_envelope(account, client_order_id, occurred_at),
                        reason=reason)
        return self._order_fact(lambda state: rules.decide_cancelled(state, e), e)

    def record_replaced(self, account: str, client_order_id: str, qty: Decimal | int | str, *,
                        limit_price: Decimal | int | str | None = None, stop_price: Decimal | int | str | None = None,
                        venue_order_id: str | None = None, occurred_at: datetime | None = None) -> Recorded:
        """Record the venue's confirmation of a new quantity or price for an open order."""
        e = build_event(ev.OrderReplaced, **self._order_envelope(account, client_order_id, occurred_at), qty=qty,
                        limit_price=limit_price, stop_price=stop_price, venue_order_id=venue_order_id)
        return self._order_fact(lambda state: rules.decide_replaced(state, e), e)

    def record_expired(self, account: str, client_order_id: str, *, occurred_at: datetime | None = None) -> Recorded:
        """Record that the order expired at the venue (time in force ran out; a terminal state)."""
        e = build_event(ev.OrderExpired, **self._order_envelope(account, client_order_id, occurred_at))
        return self._order_fact(lambda state: rules.decide_expired(state, e), e)

    # --------------------------------------------------------------------------- risk state
    def _account_fact(self, cls: type[ev.AccountEvent], account: str, occurred_at: datetime | None = None,
                      **fields: Any) -> Recorded:
        return self.writer.account_fact(cls, account, occurred_at, **fields)

    def set_risk_limit(self, account: str, limit: str, value: Decimal | int | str | None, *,
                       symbol: str | None = None, reason: str = "", operator: str = "") -> Recorded:
        """Set (``value``) or remove (None) one pre-trade limit of ``account``; with ``symbol``,
        the per-symbol ``max_position_qty``. Applies to intents recorded after it. ``operator``:
        who decided (empty: the engine), on the event as in every risk control below."""
        if symbol is not None and limit != "max_position_qty":
            raise InvalidInput("only max_position_qty can be set per symbol")
        return self._account_fact(ev.RiskLimitChanged, account, limit=limit, value=value, symbol=symbol, reason=reason,
                                  operator=operator)

    def trip_breaker(self, account: str, reason: str, *, until: datetime | None = None,
                     operator: str = "") -> Recorded:
        """Trip the account's circuit breaker: intents are refused until ``until`` or a reset."""
        return self._account_fact(ev.CircuitBreakerTripped, account, reason=reason, until=until, operator=operator)

    def reset_breaker(self, account: str, reason: str = "", *, operator: str = "") -> Recorded:
        """Reset the account's circuit breaker."""
        return self._account_fact(ev.CircuitBreakerReset, account, reason=reason, operator=operator)

    def engage_kill_switch(self, account: str, reason: str, *, by: str = "engine", operator: str = "") -> Recorded:
        """Engage the kill switch: every intent of the account is refused until released."""
        return self._account_fact(ev.KillSwitchEngaged, account, reason=reason, by=by, operator=operator)

    def release_kill_switch(self, account: str, reason: str = "", *, by: str = "operator",
                            operator: str = "") -> Recorded:
        """Release the kill switch."""
        return self._account_fact(ev.KillSwitchReleased, account, reason=reason, by=by, operator=operator)

    def record_daily_limit_breach(self, account: str, limit: str, value: Decimal | int | str,
                                  threshold: Decimal | int | str, *, trading_day: str | None = None) -> Recorded:
        """Record that a daily limit was breached (default: today's trading day in the exchange's
        time zone); the account's intents are refused for the rest of that day."""
        day = trading_day or self.state.trading_day(self.writer.now())
        return self._account_fact(ev.DailyLimitBreached, account, limit=limit, trading_day=day,
                                  value=value, threshold=threshold)

    def resume_trading(self, account: str, ramp_pct: int, reason: str = "", *, operator: str = "") -> Recorded:
        """Resume trading at ``ramp_pct`` percent of the account's limits (50, 75 or 100)."""
        return self._account_fact(ev.TradingResumed, account, ramp_pct=ramp_pct, reason=reason, operator=operator)

    def approve_gate(self, gate_id: str, *, operator: str, reason: str, account: str | None = None) -> Recorded:
        """Record an operator's approval of the safety gate ``gate_id`` (``GateApproved``, on the
        gate's stream); ``operator`` and ``reason`` must be given. A gate that no recovery left
        waiting is ``InvalidInput`` (nothing appended, the waiting ones named); a gate approved
        already returns that approval (``duplicate=True``, nothing appended)."""
        from .domain.ids import gate_stream_id

        e = build_event(ev.GateApproved, **self.writer.envelope(), gate_id=gate_id, operator=operator,
                        reason=reason, account=account)
        self.catch_up()
        if gate_id not in self.state.gates:
            waiting = ", ".join(g["gate_id"] for g in self.state.pending_gates()) or "none"
            raise InvalidInput(f"no gate {gate_id!r} waits for approval (waiting: {waiting})")
        done = self.state.gate_approvals.get(gate_id)
        if done is not None:
            return Recorded(done["position"], None, duplicate=True)
        return self._stream_fact(gate_stream_id(e.gate_id), e)

    # --------------------------------------------------------------- instruments, currencies
    def define_instrument(self, symbol: str, asset_class: str, *, multiplier: Decimal | int | str = 1,
                          quote_currency: str = "USD", settlement_currency: str | None = None,
                          tick_size: Decimal | int | str | None = None, lot_size: Decimal | int | str | None = None,
                          fractional: bool = False, expiry: datetime | None = None, underlying: str | None = None,
                          strike: Decimal | int | str | None = None, right: str | None = None, reason: str = "",
                          operator: str = "") -> Recorded:
        """Define (or redefine) ``symbol`` in the instrument registry (``InstrumentDefined`` on
        ``instrument-<symbol>``): intents recorded after it are checked against its tick, lot,
        fraction and expiry, and its fills count with its ``multiplier`` in its
        ``quote_currency``. A new definition supersedes the last one from here on; the same
        definition again appends nothing (``duplicate=True``). Bad input (an option without a
        strike, a future without an expiry...) is ``InvalidInput``, nothing appended."""
        e = build_event(ev.InstrumentDefined, **self.writer.envelope(), symbol=symbol, asset_class=asset_class,
                        multiplier=multiplier, quote_currency=quote_currency,
                        settlement_currency=settlement_currency, tick_size=tick_size, lot_size=lot_size,
                        fractional=fractional, expiry=expiry, underlying=underlying, strike=strike, right=right,
                        reason=reason, operator=operator)
        wanted = InstrumentSpec.from_payload(e.to_payload(), 0).as_dict()  # Decimals: 50 == 50.0

        def decide(state: TradingState) -> rules.Decision:
            current = state.instruments.get(e.symbol)
            if current is not None and {**current.as_dict(), "position": 0} == wanted:
                return rules.AlreadyRecorded(current.position)
            return rules.Append([(instrument_stream_id(e.symbol), e)])

        return self.writer.record_fact(decide)

    def record_fx_rate(self, base: str, quote: str, rate: Decimal | int | str, *, source: str = "",
                       occurred_at: datetime | None = None) -> Recorded:
        """Record a market FX rate (one ``base`` is worth ``rate`` ``quote``; ``FxRateRecorded``):
        the reporting-currency view and notional limits in the account's currency use the last
        one recorded. tradestate never fetches rates."""
        e = build_event(ev.FxRateRecorded, **self.writer.envelope(occurred_at), base=base, quote=quote, rate=rate,
                        source=source)
        return self._stream_fact(fx_stream_id(e.base, e.quote), e)

    def record_corporate_action(self, symbol: str, action: str, effective_at: datetime, *,
                                ratio_from: Decimal | int | str | None = None, ratio_to: Decimal | int | str | None = None,
                                new_symbol: str | None = None, source: str = "operator", reason: str = "",
                                operator: str = "") -> Recorded:
        """Record a corporate action (``CorporateActionRecorded`` on ``corporate-<symbol>``):
        ``split`` (``ratio_from`` old shares become ``ratio_to``: 2-for-1 is 1, 2; a 1-for-10
        reverse split 10, 1), every position in ``symbol`` is scaled, its cost basis kept; or
        ``symbol_change`` to ``new_symbol``. The same action (symbol, action, effective time)
        again appends nothing (``duplicate=True``). Reconciliation proposes one
        (``split_suspected``) when a position differs from the venue's by a split's ratio."""
        e = build_event(ev.CorporateActionRecorded, **self.writer.envelope(), symbol=symbol, action=action,
                        effective_at=effective_at, ratio_from=ratio_from, ratio_to=ratio_to, new_symbol=new_symbol,
                        source=source, reason=reason, operator=operator)
        return self.writer.record_fact(lambda state: rules.decide_corporate_action(state, e))  # open orders too

    def record_option_settlement(self, account: str, venue: str, symbol: str, action: str,
                                 qty: Decimal | int | str, *, venue_ref: str | None = None,
                                 occurred_at: datetime | None = None, reason: str = "") -> Recorded:
        """Record the venue's exercise, assignment or expiry of ``qty`` contracts of the option
        ``symbol`` (``OptionSettled``): the option leg closes, the underlying's moves at the strike
        (see the event). ``venue_ref``: the venue's activity id (the same again:
        ``duplicate=True``). ``InvalidInput``, nothing appended, when the option is not defined
        (exercise, assignment) or we do not hold ``qty`` contracts on that side (reconcile first)."""
        e = build_event(ev.OptionSettled, **self.writer.envelope(occurred_at), account=account, venue=venue,
                        symbol=symbol, action=action, qty=qty, venue_ref=venue_ref, reason=reason)

        def decide(state: TradingState) -> rules.Decision:
            if e.venue_ref is not None:
                done = state.option_settlements.get((e.account, e.venue, e.venue_ref))
                if done is not None:
                    return rules.AlreadyRecorded(done)
            spec = state.instruments.get(e.symbol)
            if e.action != "expiry" and (spec is None or spec.asset_class != "option"):
                raise InvalidInput(f"OptionSettled: {e.symbol!r} is not an option in the registry (define_instrument)")
            held = state.position_of(e.account, e.venue, e.symbol)
            qty = held.qty if held is not None else Decimal(0)
            wanted = {"exercise": qty >= e.qty, "assignment": -qty >= e.qty, "expiry": abs(qty) >= e.qty}[e.action]
            if not wanted:
                raise InvalidInput(f"OptionSettled: {e.action} of {e.qty} {e.symbol} at {e.venue}, but the log holds "
                                   f"{qty} (reconcile first)")
            return rules.Append([(account_stream_id(e.account), e)])

        return self.writer.record_fact(decide)

    def record_variation_margin(self, account: str, venue: str, symbol: str, business_date: str,
                                settlement_price: Decimal | int | str, qty: Decimal | int | str,
                                amount: Decimal | int | str, *, currency: str = "USD", venue_ref: str | None = None,
                                occurred_at: datetime | None = None, reason: str = "") -> Recorded:
        """Record the venue's daily settlement of the futures position ``symbol`` at ``venue``
        (``VariationMarginSettled``): the P&L of the open contracts from their last mark is
        realised and moves the cash (``amount`` is the venue's figure; see the event), the
        position's cost is re-based to ``settlement_price``. Once per account, venue, symbol and business
        date (again: ``duplicate=True``); ``InvalidInput``, nothing appended, when ``symbol`` is not
        a future in the registry or the log does not hold ``qty`` of it (reconcile first)."""
        e = build_event(ev.VariationMarginSettled, **self.writer.envelope(occurred_at), account=account, venue=venue,
                        symbol=symbol, business_date=business_date, settlement_price=settlement_price, qty=qty,
                        amount=amount, currency=currency, venue_ref=venue_ref, reason=reason)
        return self.writer.record_fact(lambda state: rules.decide_variation_margin(state, e))

    def instruments(self) -> list[dict[str, Any]]:
        """Every instrument of the registry as it stands now (its last definition)."""
        self.catch_up()
        return [spec.as_dict() for _, spec in sorted(self.state.instruments.items())]

    def reporting_view(self, currency: str = "USD", account: str | None = None) -> dict[str, Any]:
        """Positions and P&L in their instruments' currencies and in ``currency`` by the last
        recorded FX rates (``domain.instruments.reporting_view``)."""
        self.catch_up()
        return reporting_view(self.state, currency, account)

    # --------------------------------------------------------------- signals, engine, market
    def _stream_fact(self, stream: str, event: ev.Event) -> Recorded:
        return self.writer.record_event(stream, event)

    def record_signal(self, strategy_id: str, symbol: str, signal: str, *, value: Decimal | int | str | None = None,
                      attributes: dict[str, str] | None = None, occurred_at: datetime | None = None) -> Recorded:
        """Record a strategy's signal (what it saw and wanted), on the strategy's stream."""
        e = build_event(ev.SignalRecorded, **self.writer.envelope(occurred_at), strategy_id=strategy_id,
                        symbol=symbol, signal=signal, value=value, attributes=attributes or {})
        return self._stream_fact(strategy_stream_id(e.strategy_id), e)

    def engine_started(self, engine_id: str, *, version: str = "", config_hash: str = "") -> Recorded:
        """Record that an engine run started; see ``previous_run_crashed``."""
        e = build_event(ev.EngineStarted, **self.writer.envelope(), engine_id=engine_id,
                        version=version, config_hash=config_hash)
        return self._stream_fact(engine_stream_id(e.engine_id), e)

    def previous_run_crashed(self, engine_id: str) -> bool:
        """After ``engine_started``: whether the run before it never recorded a clean stop (then
        run ``tradestate recover`` before trading)."""
        engine = self.state.engines.get(engine_id)
        return bool(engine and engine.get("previous_run_crashed"))

    def engine_stopped(self, engine_id: str, reason: str = "clean shutdown") -> Recorded:
        """Record a clean stop of the engine run (the next start is then not a crash); an engine
        holding the lease of ``engine_id`` then hands it back (``LeaseReleased``)."""
        e = build_event(ev.EngineStopped, **self.writer.envelope(), engine_id=engine_id, reason=reason)
        recorded = self._stream_fact(engine_stream_id(e.engine_id), e)
        if self.lease is not None and self.lease.engine_id == engine_id:
            self.lease.release(reason)
        return recorded

    def shutdown(self, engine_id: str, *, policy: str = "leave", kind: str = "planned", reason: str = "",
                 adapters: Any = (), accounts: Any = None, projector_wait: float = 5.0) -> Any:
        """Shut the engine run down gracefully (``tradestate.shutdown.shutdown``): pre-shutdown
        checks, the open-order ``policy`` (leave, cancel, flatten), a final checkpoint, then
        ``ShutdownCompleted`` with ``EngineStopped`` (and the lease handed back). ``kind``:
        planned or emergency (needs a ``reason``). Returns the ``ShutdownReport``."""
        from .shutdown import shutdown

        return shutdown(self, engine_id, policy=policy, kind=kind, reason=reason, adapters=adapters,
                        accounts=accounts, projector_wait=projector_wait)

    def record_recovery(self, engine_id: str, *, ready: bool, steps: list[dict[str, Any]], strict: bool = False,
                        crashed: bool = False, checkpoint_position: int | None = None, head: int = 0,
                        replayed: int = 0, discrepancies: int = 0, corrective_events: int = 0) -> Recorded:
        """Record the report of a recovery run on the engine's stream."""
        e = build_event(ev.RecoveryCompleted, **self.writer.envelope(), engine_id=engine_id, ready=ready,
                        strict=strict, crashed=crashed, checkpoint_position=checkpoint_position, head=head,
                        replayed=replayed, discrepancies=discrepancies, corrective_events=corrective_events,
                        steps=steps)
        return self._stream_fact(engine_stream_id(e.engine_id), e)

    def record_bar(self, venue: str, symbol: str, timeframe: str, start: datetime,
                   open: Decimal | int | str, high: Decimal | int | str, low: Decimal | int | str,
                   close: Decimal | int | str, volume: Decimal | int | str) -> Recorded:
        """Append a bar to the market-data log. A bar is recorded once: the same bar again returns
        its position and appends nothing (``duplicate=True``); a different bar for the same start
        is an ``IdempotencyConflict``."""
        e = build_event(ev.BarRecorded, **self.writer.envelope(), venue=venue, symbol=symbol,
                        timeframe=timeframe, start=start, open=open, high=high, low=low, close=close, volume=volume)
        # The bar's start (epoch seconds) is its version in the market log: one row per bar.
        return self.writer.record_once(
            self.store.market, bar_stream_id(e.venue, e.symbol, e.timeframe), int(e.start.timestamp()), e,
            same=lambda stored: _same_bar(stored, e),
            conflict=f"a different {e.timeframe} bar for {e.symbol} at {e.start.isoformat()} is already recorded",
        )

    # ---------------------------------------------------------------------------- queries
    def order(self, account: str, client_order_id: str) -> dict[str, Any]:
        """One order as a dict (``UnknownOrder`` if it was never recorded)."""
        self.catch_up()
        stream = order_stream_id(account, client_order_id)
        self.writer.load_orders([stream])
        order = self.state.orders.get(stream)
        if order is None:
            raise UnknownOrder(account, client_order_id)
        return order.as_dict()

    def open_orders(self, account: str | None = None) -> list[dict[str, Any]]:
        """The open orders of ``account`` (default: every account), as dicts."""
        self.catch_up()
        accounts = [self.state.accounts[account]] if account in self.state.accounts else (
            [] if account is not None else list(self.state.accounts.values()))
        return [o.as_dict() for a in accounts for o in a.open_orders.values()]

    def positions(self, account: str | None = None) -> list[dict[str, Any]]:
        """Positions (account, venue, symbol) of ``account`` (default: every account), as dicts."""
        self.catch_up()
        return [p.as_dict() for key, p in sorted(self.state.positions.items())
                if account is None or key[0] == account]

    def risk_state(self, account: str) -> dict[str, Any]:
        """What the pre-trade check sees for ``account`` now: limits, breaker, kill switch, ramp,
        today's statistics. A query never adds state: an unknown account reads as a fresh one."""
        self.catch_up()
        from .domain.risk import effective_limit

        a = self.state.accounts.get(account) or AccountState(account)  # a query never adds state
        now = self.writer.now()
        today = a.daily.get(self.state.trading_day(now))
        return {
            "account": account,
            "kill_switch": a.kill_switch,
            "kill_switch_reason": a.kill_switch_reason,
            "breaker_tripped": a.breaker_active(now),
            "breaker_reason": a.breaker_reason,
            "breaker_until": a.breaker_until,
            "ramp_pct": a.ramp_pct,
            "limits": dict(a.limits),
            "effective_limits": {name: effective_limit(a, name) for name in a.limits},
            "symbol_position_limits": dict(a.symbol_position_limits),
            "open_orders": len(a.open_orders),
            "trading_day": self.state.trading_day(now),
            "trades_today": today.trades if today else 0,
            "realized_pnl_today": today.realized_pnl if today else Decimal(0),
            "fees_today": today.fees if today else Decimal(0),
            "breaches_today": sorted(today.breaches) if today else [],
            "unresolved_discrepancies": a.discrepancies,
        }

    def read_model(self, *, consistent: bool = True, timeout: float = 5.0) -> Any:
        """The SQL read models (what risk tools see). With ``consistent``, first wait until they
        include everything this client has recorded or folded (read-your-writes); a projector
        (`tradestate project`) must be running. For decisions, the client's own fold above is
        always current and needs no projector."""
        from .projections.reader import ReadModel

        model = ReadModel(self.store.url)
        if consistent:
            try:
                model.wait_for(self.state.position, timeout)
            except BaseException:
                model.close()
                raise
        return model

    @property
    def position(self) -> int:
        """The last log position this client has folded."""
        return self.state.position

    def close(self) -> None:
        """Close the store (and its connections). A lease held is no longer renewed (it expires
        unless ``engine_stopped`` released it: a close without a recorded stop is a crash)."""
        if self.lease is not None:
            self.lease.stop()
        if self.coalescer is not None:
            self.coalescer.close()
        self.store.close()

    def __enter__(self) -> TradestateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _same_bar(stored: dict[str, Any], new: ev.BarRecorded) -> bool:
    """Whether a stored bar payload is the bar ``new`` (ids and times of recording aside)."""
    data = {k: v for k, v in stored.items() if k != ev.SCHEMA_KEY}
    old = ev.BarRecorded.model_validate({**data, "event_id": new.event_id})
    return old.model_dump(include=_BAR_FIELDS) == new.model_dump(include=_BAR_FIELDS)


def connect(url: str | None = None, *, engine_id: str | None = None, lease_seconds: float | None = None,
            renew_seconds: float | None = None, **options: Any) -> TradestateClient:
    """Open the database named by ``url`` (or ``$TRADESTATE_DB``, or ``sqlite:///tradestate.db``)
    and return a client whose state is caught up with the log; ``options`` are
    ``TradestateClient``'s (``venue="alpaca"``: the venue of intents that name none).

    ``engine_id``: this client is the one active engine of that id: it takes the engine's lease
    (``LeaseHeld`` while another process holds it live; ``client.lease.lease`` tells how it was
    found), every append carries its epoch, and it renews the lease in the background
    (``lease_seconds``, default 3 s; ``renew_seconds``, default a third of it). See
    ``tradestate.engines``; ``tradestate.standby`` is the other half."""
    if engine_id is None:
        if lease_seconds is not None or renew_seconds is not None:
            raise InvalidInput("lease_seconds and renew_seconds need an engine_id (the engine that holds the lease)")
        return TradestateClient(open_store(url), **options)
    from .engines import DEFAULT_LEASE_SECONDS, EngineLease

    store = open_store(url)
    try:
        lease = EngineLease(store, engine_id, seconds=lease_seconds or DEFAULT_LEASE_SECONDS,
                            renew_seconds=renew_seconds, clock=options.get("clock", utc_now),
                            new_id=options.get("new_id", uuid4))
        lease.acquire()
        return TradestateClient(store, lease=lease, **options)
    except BaseException:
        store.close()
        raise
