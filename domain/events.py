"""The event catalogue: versioned, immutable pydantic schemas.

An event is validated once, where it enters the system (client, API, adapters). It is stored as
the JSON form of the model (Decimals as strings, UTC ISO timestamps) plus its schema version under
``"_v"``. Replay folds that JSON form directly and does not validate again; ``decode`` turns a
stored payload back into a typed event (after upcasting) for humans and queries.

Changing an event type means: bump ``schema_version``, register an upcaster from the old version,
and add a test that a stored payload of the old version still loads.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from .values import (
    Amount,
    ComputedAmount,
    Identifier,
    NonNegativeAmount,
    OrderType,
    PositiveAmount,
    Side,
    Symbol,
    Text,
    TimeInForce,
    UtcDatetime,
)

SCHEMA_KEY = "_v"
# A log position given up by an append that failed (PostgreSQL only): stream and type of its row.
VOID_STREAM = "$void"
VOID_TYPE = "$void"
# The account-neutral stream of clock measurements (``ClockSkewRecorded``).
CLOCK_STREAM = "clock"
# The account-neutral stream of restore drills (``DrillCompleted``): ``/health`` reads its last
# event through the (stream_id, stream_version) index, without a fold.
DRILL_STREAM = "drill"


class Event(BaseModel):
    """Envelope fields every event carries in its payload.

    Stream id, stream version, global position and ``recorded_at`` belong to the store and are
    not part of the payload.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)

    schema_version: ClassVar[int] = 1
    stream_kind: ClassVar[str] = ""

    event_id: UUID
    occurred_at: UtcDatetime | None = None  # venue/engine clock, when known
    correlation_id: UUID | None = None  # the intent's event id, carried by its ack, fills, corrections
    causation_id: UUID | None = None  # the event that directly caused this one

    @classmethod
    def type_name(cls) -> str:
        """The name the event is stored under (its class name)."""
        return cls.__name__

    def to_payload(self) -> dict[str, Any]:
        """The stored JSON form: the model's JSON dump plus its schema version under ``SCHEMA_KEY``."""
        payload = self.model_dump(mode="json")
        payload[SCHEMA_KEY] = self.schema_version
        return payload


# --------------------------------------------------------------------------------------- orders


class OrderEvent(Event):
    """An event of one order's stream, named by account and client order id."""

    stream_kind: ClassVar[str] = "order"
    account: Identifier
    client_order_id: Identifier


class OrderIntentRecorded(OrderEvent):
    """The engine intends to send an order. Recorded before anything is sent."""

    venue: Identifier
    symbol: Symbol
    side: Side
    order_type: OrderType
    qty: PositiveAmount
    limit_price: PositiveAmount | None = None
    stop_price: PositiveAmount | None = None
    time_in_force: TimeInForce = TimeInForce.DAY
    strategy_id: Identifier | None = None
    reference_price: PositiveAmount | None = None  # for notional checks of market orders

    @model_validator(mode="after")
    def _prices_match_type(self) -> OrderIntentRecorded:
        needs_limit = self.order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT)
        needs_stop = self.order_type in (OrderType.STOP, OrderType.STOP_LIMIT)
        if needs_limit and self.limit_price is None:
            raise ValueError(f"a {self.order_type.value} order needs a limit_price")
        if not needs_limit and self.limit_price is not None:
            raise ValueError(f"a {self.order_type.value} order takes no limit_price")
        if needs_stop and self.stop_price is None:
            raise ValueError(f"a {self.order_type.value} order needs a stop_price")
        if not needs_stop and self.stop_price is not None:
            raise ValueError(f"a {self.order_type.value} order takes no stop_price")
        return self


class IntentRejectedByRisk(OrderEvent):
    """The pre-trade check refused the intent: its reason codes and a readable detail. The order is
    finished (refused)."""

    reasons: list[str] = Field(min_length=1, max_length=20)
    detail: Text = ""


class OrderSubmitted(OrderEvent):
    """The engine is about to send the order to the venue; recorded before it leaves."""


class OrderAcknowledged(OrderEvent):
    """The venue accepted the order under ``venue_order_id``."""

    venue_order_id: Identifier


class OrderRejected(OrderEvent):
    """The venue refused the order; it is finished (rejected)."""

    reason: Text = ""


class OrderFilled(OrderEvent):
    """One venue execution. Partial or full; ``exec_id`` is the venue's execution id.
    ``fee_pending``: the venue reports the fee apart from the execution and it has not come yet
    (IB's commission report): ``fee`` is 0 for now, and the fee follows as ``FeeCharged``."""

    schema_version: ClassVar[int] = 3
    exec_id: Identifier
    qty: PositiveAmount
    price: PositiveAmount
    fee: Amount = Decimal(0)
    fee_currency: Identifier = "USD"
    liquidity: Literal["maker", "taker", "unknown"] = "unknown"
    venue_order_id: Identifier | None = None
    fee_pending: bool = False  # v3: the venue's fee for this execution is not known yet (``FeeCharged`` follows)


class OrderCancelRequested(OrderEvent):
    """The engine asked the venue to cancel the order; the order stays open until the venue
    confirms."""

    reason: Text = ""


class OrderCancelled(OrderEvent):
    """The venue cancelled the order (what was not filled); it is finished."""

    reason: Text = ""


class OrderReplaced(OrderEvent):
    """The venue replaced the order's quantity and prices (a replace down to the filled quantity
    fills it)."""

    qty: PositiveAmount
    limit_price: PositiveAmount | None = None
    stop_price: PositiveAmount | None = None
    venue_order_id: Identifier | None = None


class OrderExpired(OrderEvent):
    """The order's time in force ran out at the venue; it is finished."""


DiscrepancyKind = Literal[
    "missing_at_venue",  # we recorded it submitted, the venue does not know it (kept pending)
    "overfill",  # a fill beyond the order's remaining quantity
    "fill_on_terminal",  # a fill on a cancelled, rejected, expired or refused order
    "cancel_after_fill",  # the venue says cancelled, we hold it filled
    "reject_after_fill",  # the venue says rejected, the order has fills
    "status_conflict",  # any other venue status that contradicts ours
    "venue_order_id_changed",  # a second ack with another venue order id
    "duplicate_exec_id",  # a fill whose venue execution id is already booked on another order
]


class DiscrepancyRecorded(OrderEvent):
    """A broker fact that contradicts our state. Never dropped, never applied blindly:
    reconciliation resolves it with corrective events."""

    kind: DiscrepancyKind
    detail: Text = ""
    exec_id: Identifier | None = None
    qty: PositiveAmount | None = None
    price: PositiveAmount | None = None
    venue_status: Identifier | None = None
    venue_order_id: Identifier | None = None


class OrderImported(OrderEvent):
    """An order found at the venue that tradestate never recorded (placed outside it). It enters
    the log as an external order so that its fills and position count; it never passed our risk
    checks, and says so.

    v2: ``parent_client_order_id``: the order is a leg the venue created for one of ours (a
    bracket's take-profit or stop-loss, an OCO's other side): it is linked to that order (its
    ``correlation_id`` is the parent's intent) and is not external."""

    schema_version: ClassVar[int] = 2
    venue: Identifier
    symbol: Symbol
    side: Side
    order_type: OrderType
    qty: PositiveAmount
    limit_price: PositiveAmount | None = None
    stop_price: PositiveAmount | None = None
    time_in_force: TimeInForce = TimeInForce.DAY
    venue_order_id: Identifier
    venue_status: Identifier
    reconciliation_id: Identifier | None = None
    reason: Text = "order placed outside tradestate"
    parent_client_order_id: Identifier | None = None


class FillCorrected(OrderEvent):
    """The venue corrected one of the order's executions: ``exec_id`` REPLACES the execution
    ``corrected_exec_id`` with quantity ``qty`` at ``price`` (``qty`` 0: the execution is busted).
    The fold recomputes the order's filled quantity, the position, its average cost, the cash and
    the realised P&L as if the earlier fill had had these values. ``previous_*`` are the values
    our log held for the corrected execution (so that folding needs no look-up, like
    ``PositionCorrected.qty_before``). ``fee`` None: the fee is unchanged (or follows as
    ``FeeCharged``); a bust without a ``fee`` takes the fill's fee with it. A correction does not reopen a finished order (a venue does not work a
    filled order again); one that completes an open order fills it."""

    corrected_exec_id: Identifier
    exec_id: Identifier
    qty: NonNegativeAmount
    price: PositiveAmount
    previous_qty: PositiveAmount
    previous_price: PositiveAmount
    previous_fee: Amount = Decimal(0)
    fee: Amount | None = None
    fee_currency: Identifier = "USD"
    fee_pending: bool = False  # the correcting execution's fee is still to come (``FeeCharged``): 0 until then
    venue_order_id: Identifier | None = None
    reconciliation_id: Identifier | None = None
    reason: Text = ""

    @model_validator(mode="after")
    def _replaces_another(self) -> FillCorrected:
        if self.exec_id == self.corrected_exec_id:
            raise ValueError("a correction carries a new exec_id: the same id is not a correction")
        return self


class OrderReplaceRequested(OrderEvent):
    """The engine asks the venue to amend an open order: its whole new quantity (the filled part
    included) and prices (the order type's price fields, the unchanged ones repeated). Recorded
    with its pre-trade check (``risk.check_replace``) before the request leaves; the order keeps
    its quantity and prices until the venue confirms (``OrderReplaced``). ``replace_id``: the
    engine's id of this amendment (idempotency). Followed in the same transaction by
    ``OrderReplaceRefused`` when the check refuses it (the request is then never sent)."""

    replace_id: Identifier
    qty: PositiveAmount
    limit_price: PositiveAmount | None = None
    stop_price: PositiveAmount | None = None
    reference_price: PositiveAmount | None = None  # a market order's price for the notional checks
    reason: Text = ""


class OrderReplaceRefused(OrderEvent):
    """An amendment (``OrderReplaceRequested`` ``replace_id``) that will not happen: refused by the
    pre-trade check (``by`` "risk", its reason codes) or by the venue (``by`` "venue"). The order
    goes on as it was."""

    replace_id: Identifier
    by: Literal["risk", "venue"] = "risk"
    reasons: list[str] = Field(min_length=1, max_length=20)
    detail: Text = ""


# -------------------------------------------------------------------------------------- account

RiskLimitName = Literal[
    "max_order_qty",
    "max_order_notional",
    "max_position_qty",
    "max_open_orders",
    "max_daily_trades",
    "max_daily_loss",
]


class AccountEvent(Event):
    """An event of one account's stream (limits, breaker, kill switch, cash, risk facts)."""

    stream_kind: ClassVar[str] = "account"
    account: Identifier


class RiskCheckPassed(AccountEvent):
    """The pre-trade check passed for an intent; appended with the intent, in the account's
    stream, so that two engines racing for the same limit conflict and one re-decides."""

    client_order_id: Identifier
    symbol: Symbol
    side: Side
    qty: PositiveAmount
    notional: ComputedAmount | None = None
    trading_day: str


class RiskLimitChanged(AccountEvent):
    """Sets (or with ``value`` None removes) a risk limit of the account, or a per-symbol position
    limit."""

    limit: RiskLimitName
    value: NonNegativeAmount | None  # None removes the limit
    schema_version: ClassVar[int] = 2
    symbol: Symbol | None = None  # per-symbol override (max_position_qty only)
    reason: Text = ""
    operator: Text = ""  # who decided (v2): the engine's changes leave it empty


class CircuitBreakerTripped(AccountEvent):
    """Trading of the account stops until ``until`` (None: until reset)."""

    schema_version: ClassVar[int] = 2
    reason: Text
    until: UtcDatetime | None = None  # None: until reset
    operator: Text = ""  # who tripped it (v2): empty when the engine did


class CircuitBreakerReset(AccountEvent):
    """The account's circuit breaker is reset; trading may resume."""

    schema_version: ClassVar[int] = 2
    reason: Text = ""
    operator: Text = ""  # who reset it (v2)


class KillSwitchEngaged(AccountEvent):
    """Every new intent of the account is refused until the switch is released."""

    schema_version: ClassVar[int] = 2
    reason: Text
    by: Identifier = "engine"  # the role: engine or operator
    operator: Text = ""  # the operator's identity when ``by`` is operator (v2)


class KillSwitchReleased(AccountEvent):
    """The account's kill switch is released."""

    schema_version: ClassVar[int] = 2
    reason: Text = ""
    by: Identifier = "operator"
    operator: Text = ""  # the operator's identity (v2)


class DailyLimitBreached(AccountEvent):
    """A fill took the account's day to a daily limit: ``value`` against ``threshold`` on
    ``trading_day``. Recorded once per limit and day."""

    limit: Literal["max_daily_loss", "max_daily_trades"]
    trading_day: str
    value: ComputedAmount
    threshold: ComputedAmount


def _whole_number(value: Any) -> Any:
    if isinstance(value, (bool, float)):
        raise ValueError("must be a whole number: 50, 75 or 100")
    return value


# The ramp levels trading resumes at, in percent of the limits; 50.0 or True is not a level.
RampPct = Annotated[Literal[50, 75, 100], BeforeValidator(_whole_number)]


class TradingResumed(AccountEvent):
    """After a recovery, the account's limits apply at ``ramp_pct`` percent of their value."""

    schema_version: ClassVar[int] = 2
    ramp_pct: RampPct
    reason: Text = ""
    operator: Text = ""  # who resumed it (v2): empty when recovery did on its own


class PositionCorrected(AccountEvent):
    """The venue's position differs from ours and no fill explains it: ours is set to the
    venue's (the broker is the truth for what it holds), with the difference on record."""

    venue: Identifier
    symbol: Symbol
    qty_before: Amount
    qty_after: Amount
    avg_cost: PositiveAmount | None = None  # the venue's, when it reports one
    reconciliation_id: Identifier | None = None
    reason: Text = ""


class CashBalanceRecorded(AccountEvent):
    """The venue's cash balance in one currency; our fills move it from there on. ``expected``
    is what we projected before this record (None the first time)."""

    venue: Identifier
    currency: Identifier = "USD"
    balance: Amount
    expected: Amount | None = None
    reconciliation_id: Identifier | None = None
    reason: Text = ""


class FeeCharged(AccountEvent):
    """A fee the venue posted apart from its fill (IB's late commission report, Alpaca's crypto
    fee activity). ``fee_id`` (the execution id it belongs to, or the venue's activity id) makes
    it idempotent: a second ``FeeCharged`` with the same ``fee_id`` changes nothing. ``amount``
    is in ``currency``; the cash in that currency, the fees and net P&L move by it. When
    ``in_kind`` the fee was taken in the asset of the position ``symbol`` (a crypto fee in BTC):
    that position's quantity shrinks by ``amount`` (its cost basis stays, so its average cost
    rises) and no cash moves. ``exec_id`` clears the fill's pending fee. A fee of one of our
    orders' fills (``client_order_id`` set) goes on that order's stream, so the order's fees count
    it however the order is folded; any other fee goes on the account's stream."""

    venue: Identifier
    fee_id: Identifier
    amount: Amount
    currency: Identifier = "USD"
    symbol: Symbol | None = None  # the position the fee belongs to (required when in_kind)
    in_kind: bool = False
    exec_id: Identifier | None = None
    client_order_id: Identifier | None = None
    reconciliation_id: Identifier | None = None
    reason: Text = ""

    @model_validator(mode="after")
    def _kind_names_position(self) -> FeeCharged:
        if self.in_kind and self.symbol is None:
            raise ValueError("a fee taken in kind names the position (symbol) whose asset it took")
        return self


ReconciliationStatus = Literal["clean", "corrected", "discrepancies", "unknown"]


class ReconciliationCompleted(AccountEvent):
    """One reconciliation run against one broker account: what was compared, what disagreed,
    which corrective events were appended, and the raw venue report it acted on."""

    reconciliation_id: Identifier
    broker: Identifier
    venue: Identifier
    status: ReconciliationStatus
    counts: dict[Identifier, int] = Field(default_factory=dict, max_length=50)
    discrepancies: list[dict[str, Any]] = Field(default_factory=list)
    corrective_event_ids: list[UUID] = Field(default_factory=list)
    errors: list[Text] = Field(default_factory=list, max_length=100)
    venue_report: dict[str, Any] = Field(default_factory=dict)
    venue_report_sha256: Identifier = ""


class TradingBlocked(AccountEvent):
    """Trading refused until an operator acknowledges (strict recovery or reconciliation)."""

    reason: Text
    reconciliation_id: Identifier | None = None


class DiscrepancyAcknowledged(AccountEvent):
    """An operator's decision on the discrepancies that blocked trading; unblocks it."""

    by: Identifier
    decision: Text
    reconciliation_id: Identifier | None = None


def _stated(value: str, what: str) -> str:
    if not value.strip():
        raise ValueError(f"{what} must not be empty")
    return value


class GateApproved(Event):
    """An operator approved the safety gate ``gate_id`` (a gate that held trading back after a
    recovery: repeated crashes, exposure, volatility, a closed market), saying who and why.
    On the gate's own stream (``gate-<gate_id>``); ``account`` when the gate is an account's."""

    stream_kind: ClassVar[str] = "gate"
    gate_id: Identifier
    operator: Text
    reason: Text
    account: Identifier | None = None

    @model_validator(mode="after")
    def _said_who_and_why(self) -> GateApproved:
        _stated(self.operator, "operator")
        _stated(self.reason, "reason")
        return self


# ------------------------------------------------------------------------ strategy, engine, market


class SignalRecorded(Event):
    """A strategy's signal for a symbol; the latest per strategy and symbol is kept."""

    stream_kind: ClassVar[str] = "strategy"
    strategy_id: Identifier
    symbol: Symbol
    signal: Identifier  # e.g. "buy", "sell", "flat", "sma_cross_up"
    value: Amount | None = None
    attributes: dict[Identifier, Text] = Field(default_factory=dict, max_length=50)


class EngineStarted(Event):
    """An engine process started; a start without a stop before it means the previous run crashed."""

    stream_kind: ClassVar[str] = "engine"
    engine_id: Identifier
    version: Text = ""
    config_hash: Text = ""


class EngineStopped(Event):
    """An engine process stopped cleanly."""

    stream_kind: ClassVar[str] = "engine"
    engine_id: Identifier
    reason: Text = ""


ShutdownKind = Literal["planned", "emergency"]
ShutdownPolicy = Literal["leave", "cancel", "flatten"]


class ShutdownCompleted(Event):
    """The summary of a graceful shutdown (``client.shutdown``, ``tradestate shutdown``), appended
    in the same transaction as the ``EngineStopped`` it explains: the pre-shutdown checks and what
    they saw, the open-order ``policy`` applied (``leave``; ``cancel``: cancel requests recorded;
    ``flatten``: cancels, then an intent per position through the pre-trade check), the final
    checkpoint's position (None: not written, see ``checks``) and the orders and positions left.
    ``kind``: ``planned`` (every step) or ``emergency`` (slow steps skipped, open orders cancelled
    at least, a reason required)."""

    stream_kind: ClassVar[str] = "engine"
    engine_id: Identifier
    kind: ShutdownKind
    policy: ShutdownPolicy
    reason: Text = ""
    checks: list[dict[str, Any]] = Field(default_factory=list, max_length=50)
    # client order ids (the first 1000: a payload stays small; the counts are whole)
    cancel_requested: list[Identifier] = Field(default_factory=list, max_length=1000)
    flatten_intents: list[Identifier] = Field(default_factory=list, max_length=1000)
    cancels: int = 0
    flattening: int = 0
    checkpoint_position: int | None = None
    open_orders_left: int = 0
    positions_left: int = 0
    seconds: ComputedAmount = Decimal(0)


class LeaseAcquired(Event):
    """An engine process took the lease of ``engine_id``: from here on the store accepts appends
    carrying ``epoch`` only (an epoch only grows). ``reason``: ``first`` (never held before),
    ``released`` (the previous holder handed it over), ``expired`` (the previous holder stopped
    renewing: crashed, hung or cut off), ``reacquired`` (the same holder again)."""

    stream_kind: ClassVar[str] = "engine"
    engine_id: Identifier
    epoch: int = Field(ge=1)
    holder: Text
    reason: Literal["first", "released", "expired", "reacquired"]
    lease_seconds: ComputedAmount
    previous_holder: Text = ""
    previous_epoch: int = Field(default=0, ge=0)


class LeaseReleased(Event):
    """The holder of ``epoch`` handed the lease back (a clean stop or handover): a standby may take
    it at once."""

    stream_kind: ClassVar[str] = "engine"
    engine_id: Identifier
    epoch: int = Field(ge=1)
    holder: Text
    reason: Text = ""


class LeaseExpired(Event):
    """The holder of ``epoch`` stopped renewing its lease (dead, hung or cut off): noticed by
    ``detected_by`` (a standby, the projector, the API server) once the lease ran out by the
    store's clock. Recorded once per epoch, by whichever process noticed first."""

    stream_kind: ClassVar[str] = "engine"
    engine_id: Identifier
    epoch: int = Field(ge=1)
    holder: Text
    renewed_at: UtcDatetime
    expired_at: UtcDatetime
    detected_by: Text


class RecoveryCompleted(Event):
    """The report of one ``tradestate recover`` run (each step, its duration and counts)."""

    stream_kind: ClassVar[str] = "engine"
    engine_id: Identifier
    ready: bool
    strict: bool = False
    crashed: bool = False
    checkpoint_position: int | None = None
    head: int = 0
    replayed: int = 0
    discrepancies: int = 0
    corrective_events: int = 0
    steps: list[dict[str, Any]] = Field(default_factory=list, max_length=50)


class AccountBootstrapped(AccountEvent):
    """The account's opening state was imported from the venue into a log that held nothing of it
    (``tradestate reconcile --bootstrap``): its positions (``PositionCorrected`` from zero), open
    and recent orders (``OrderImported`` with their fills) and cash (``CashBalanceRecorded``) were
    appended in the same transaction, beside the ``ReconciliationCompleted`` that stores the raw
    venue report (``reconciliation_id``, ``venue_report_sha256``)."""

    broker: Identifier
    venue: Identifier
    reconciliation_id: Identifier
    venue_report_sha256: Identifier
    counts: dict[Identifier, int] = Field(default_factory=dict, max_length=50)
    reason: Text = ""


GateName = Literal["repeated_crashes", "gross_exposure", "volatility", "market_hours"]
GateAction = Literal["proceed", "approval", "monitoring"]


class GateEvaluated(Event):
    """One safety gate's decision before trading resumes after a recovery (seed 002 steps 2, 7,
    8): what it saw (``values``), whether it passed, and what follows: ``proceed``, ``approval``
    (resumption waits for a ``GateApproved`` naming ``gate_id``) or ``monitoring`` (a closed
    market: venue facts are recorded, no new intents, until the market opens). ``account`` None:
    the gate holds every account; else only that one. On the recovering engine's stream."""

    stream_kind: ClassVar[str] = "engine"
    engine_id: Identifier
    gate_id: Identifier
    gate: GateName
    passed: bool
    action: GateAction = "proceed"
    requires_approval: bool = False
    account: Identifier | None = None
    values: dict[str, Any] = Field(default_factory=dict)
    detail: Text = ""


TradingMode = Literal["trading", "monitoring"]


class TradingModeChanged(AccountEvent):
    """``monitoring``: the account's venue facts are recorded but no new intent is accepted (a
    closed market after a recovery); ``trading``: intents are accepted again."""

    mode: TradingMode
    reason: Text = ""


class RampStepped(AccountEvent):
    """The ramp after a recovery moved the account's limits from ``from_pct`` to ``to_pct`` percent
    (up after a healthy interval, or down when a check failed), with the checks it saw."""

    from_pct: Annotated[Literal[50, 75, 100], BeforeValidator(_whole_number)]
    to_pct: Annotated[Literal[50, 75, 100], BeforeValidator(_whole_number)]
    checks: dict[str, Any] = Field(default_factory=dict)
    reason: Text = ""


class RampHeld(AccountEvent):
    """A ramp check failed: the account stays at ``pct`` and its healthy interval restarts once the
    checks pass again (``RampHealthy``)."""

    pct: Annotated[Literal[50, 75, 100], BeforeValidator(_whole_number)]
    reason: Text
    checks: dict[str, Any] = Field(default_factory=dict)


class RampHealthy(AccountEvent):
    """After a hold, every ramp check passes again: the healthy interval at ``pct`` starts here."""

    pct: Annotated[Literal[50, 75, 100], BeforeValidator(_whole_number)]
    checks: dict[str, Any] = Field(default_factory=dict)


class ClockSkewRecorded(Event):
    """The engine's clock measured against the store's: ``skew_ms`` is engine minus store, in
    milliseconds, known to within ``uncertainty_ms`` (half the measurement's round trip). Recorded
    when the skew goes beyond ``threshold_ms`` (``within_threshold`` False: an episode starts) and
    when it is back within (True: the episode ends); not on every measurement. On the
    account-neutral ``clock`` stream."""

    stream_kind: ClassVar[str] = "clock"
    source: Identifier  # whose clock: the engine's host, or a name the engine gives
    engine_time: UtcDatetime
    store_time: UtcDatetime
    skew_ms: ComputedAmount
    uncertainty_ms: ComputedAmount
    threshold_ms: ComputedAmount
    within_threshold: bool


DrillOutcome = Literal["passed", "failed"]


class DrillCompleted(Event):
    """One restore drill (``tradestate drill``): the newest backup chain restored into a scratch
    database, verified, compared with the live log and folded to a ready state. ``outcome``
    ``failed`` names the first ``reason`` (a damaged link, a backup that diverges from the live
    log...). ``links``: the chain's files in restore order (full first), ``heads``: each log's head
    in the backup, ``live_heads``: in the live log when the drill compared them. ``rto_seconds``:
    from the drill's start to a ready state (restore, verify, fold); ``rpo_seconds``: age of the
    newest backed-up event at ``finished_at``; ``events_behind``: events the live trading log holds
    beyond the backup. Recorded for a failed drill too (figures it did not reach are None). On
    the account-neutral ``drill`` stream; it changes no trading state."""

    stream_kind: ClassVar[str] = "drill"
    outcome: DrillOutcome
    reason: Text = ""
    chain_id: Text = ""
    links: list[Text] = Field(default_factory=list, max_length=1000)
    source_kind: Identifier | None = None
    heads: dict[Identifier, int] = Field(default_factory=dict, max_length=10)
    live_heads: dict[Identifier, int] = Field(default_factory=dict, max_length=10)
    last_digest: Text = ""
    rto_seconds: ComputedAmount | None = None
    rpo_seconds: ComputedAmount | None = None
    events_behind: int | None = None
    newest_backed_up_at: UtcDatetime | None = None
    started_at: UtcDatetime
    finished_at: UtcDatetime
    steps: list[dict[str, Any]] = Field(default_factory=list, max_length=50)


class BarRecorded(Event):
    """One OHLCV bar. Lives in the market-data log, not the trading log."""

    stream_kind: ClassVar[str] = "bar"
    venue: Identifier
    symbol: Symbol
    timeframe: Literal["1s", "5s", "1m", "5m", "15m", "1h", "1d"]
    start: UtcDatetime
    open: PositiveAmount
    high: PositiveAmount
    low: PositiveAmount
    close: PositiveAmount
    volume: NonNegativeAmount

    @model_validator(mode="after")
    def _ohlc_consistent(self) -> BarRecorded:
        if not (self.low <= min(self.open, self.close) and self.high >= max(self.open, self.close)):
            raise ValueError("bar prices are inconsistent: need low <= open, close <= high")
        return self


# ------------------------------------------------------------------------ instruments and currencies

AssetClass = Literal["equity", "etf", "future", "option", "fx", "crypto"]


def _currency(value: Any) -> Any:
    if isinstance(value, str) and not (2 <= len(value) <= 10 and value.isalnum() and value.isupper()):
        raise ValueError(f"not a currency or asset code (2-10 upper-case letters or digits): {value!r}")
    return value


Currency = Annotated[Identifier, BeforeValidator(_currency)]


class InstrumentDefined(Event):
    """The registry's entry for ``symbol``: asset class, contract ``multiplier`` (one ES future:
    50), ``quote_currency`` of its prices and ``settlement_currency`` (default: the quote
    currency), ``tick_size`` and ``lot_size`` (None: any price, any quantity), whether fractional
    quantities are allowed, ``expiry`` (futures and options: required), and an option's
    ``underlying``, ``strike`` and ``right``. A later definition of the symbol supersedes the
    earlier one from its position on (fills already booked stay booked). On the stream
    ``instrument-<symbol>``."""

    stream_kind: ClassVar[str] = "instrument"
    symbol: Symbol
    asset_class: AssetClass
    multiplier: PositiveAmount = Decimal(1)
    quote_currency: Currency = "USD"
    settlement_currency: Currency | None = None
    tick_size: PositiveAmount | None = None
    lot_size: PositiveAmount | None = None
    fractional: bool = False
    expiry: UtcDatetime | None = None
    underlying: Symbol | None = None
    strike: PositiveAmount | None = None
    right: Literal["call", "put"] | None = None
    reason: Text = ""
    operator: Text = ""

    @model_validator(mode="after")
    def _consistent(self) -> InstrumentDefined:
        derivative = self.asset_class in ("future", "option")
        if derivative and self.expiry is None:
            raise ValueError(f"a {self.asset_class} needs an expiry")
        if not derivative and self.expiry is not None:
            raise ValueError(f"only futures and options have an expiry, not an instrument of class {self.asset_class}")
        option_fields = (self.underlying, self.strike, self.right)
        if self.asset_class == "option" and None in option_fields:
            raise ValueError("an option needs its underlying, strike and right (call or put)")
        if self.asset_class != "option" and (self.strike is not None or self.right is not None):
            raise ValueError("only an option has a strike and a right")
        if not self.fractional and self.lot_size is not None and self.lot_size != self.lot_size.to_integral_value():
            raise ValueError(f"lot size {self.lot_size} is fractional but the instrument allows whole units only")
        return self


class FxRateRecorded(Event):
    """A market FX rate as the desk took it: one ``base`` is worth ``rate`` ``quote``. Recorded,
    never fetched: reporting-currency views and limits in the account's currency use the last
    rate recorded (or its inverse). On the stream ``fx-<base>-<quote>``."""

    stream_kind: ClassVar[str] = "fx"
    base: Currency
    quote: Currency
    rate: PositiveAmount
    source: Text = ""

    @model_validator(mode="after")
    def _two_currencies(self) -> FxRateRecorded:
        if self.base == self.quote:
            raise ValueError(f"an FX rate needs two currencies, got {self.base} twice")
        return self


class CorporateActionRecorded(Event):
    """A corporate action on ``symbol``, effective at ``effective_at``, from the operator or the
    venue's reports (``source``). ``split``: every ``ratio_from`` shares become ``ratio_to`` (a
    2-for-1 split is 1 -> 2, a 1-for-10 reverse split 10 -> 1): quantities scale by to/from, the
    cost basis stays (so the average cost scales by from/to), the last price by from/to, and the
    market value is unchanged. ``symbol_change``: the positions move to ``new_symbol`` (the old
    symbol's stay, flat, with their realised P&L), as does its instrument definition. On the
    stream ``corporate-<symbol>``."""

    stream_kind: ClassVar[str] = "corporate_action"
    symbol: Symbol
    action: Literal["split", "symbol_change"]
    effective_at: UtcDatetime
    ratio_from: PositiveAmount | None = None
    ratio_to: PositiveAmount | None = None
    new_symbol: Symbol | None = None
    source: Literal["operator", "venue"] = "operator"
    reason: Text = ""
    operator: Text = ""

    @model_validator(mode="after")
    def _complete(self) -> CorporateActionRecorded:
        if self.action == "split":
            if self.ratio_from is None or self.ratio_to is None:
                raise ValueError("a split needs ratio_from and ratio_to (2-for-1: 1 and 2)")
            if self.ratio_from == self.ratio_to:
                raise ValueError("a split of ratio 1 changes nothing")
            if self.new_symbol is not None:
                raise ValueError("a split keeps its symbol (record a symbol_change for a new one)")
        else:
            if self.new_symbol is None or self.new_symbol == self.symbol:
                raise ValueError("a symbol change needs a new_symbol other than the symbol")
            if self.ratio_from is not None or self.ratio_to is not None:
                raise ValueError("a symbol change has no ratio (record a split beside it)")
        return self


class OptionSettled(AccountEvent):
    """A venue fact that ends ``qty`` contracts of the option ``symbol`` held at ``venue`` and
    moves both legs: ``exercise`` (we held them long: a call delivers qty x multiplier of the
    underlying bought at the strike, a put sold), ``assignment`` (we were short: a call delivers
    the underlying sold at the strike, a put bought) or ``expiry`` (worthless, nothing delivered).
    The option leg closes at 0 (its premium realised), the underlying's opens or closes at the
    strike, cash moves by the strike's notional. The option must be in the registry (for
    ``expiry``: any instrument). ``venue_ref``: the venue's activity id, which makes the fact
    recorded once."""

    venue: Identifier
    symbol: Symbol
    action: Literal["exercise", "assignment", "expiry"]
    qty: PositiveAmount
    venue_ref: Identifier | None = None
    reconciliation_id: Identifier | None = None
    reason: Text = ""


class OrderAdjusted(OrderEvent):
    """A corporate action restated one of our open orders (recorded with the action, on the
    order's stream). ``split``: the remaining quantity times ratio_to / ratio_from, the limit and
    stop prices times ratio_from / ratio_to; what is filled stays as the executions were booked,
    so ``qty`` (the order's whole quantity: filled + the new remaining) is in mixed units, as a
    venue's cancel/replace chain counts it. On an instrument of whole units (or lots) the
    remaining quantity is rounded down and ``remaining_dropped`` says by how much; a price off its
    tick grid is rounded to it, never more aggressive. A remaining quantity of zero finishes the
    order (cancelled). ``symbol_change``: the order works ``symbol`` from here on (``previous_symbol``
    before), quantities and prices as they were.

    v2: an engine amendment still pending (``replace_id``: ``OrderReplaceRequested`` not confirmed
    or refused yet) is restated by a split like the order (``replace_qty``: its whole quantity,
    the filled part as booked + its remaining restated and rounded the same way; its prices; and
    ``replace_restated_qty``, the whole of it in post-split units), so that the venue's
    confirmation in post-split terms matches it. None: no amendment pending, or a symbol change
    (its numbers stand)."""

    schema_version: ClassVar[int] = 2

    corporate_action: Literal["split", "symbol_change"]
    effective_at: UtcDatetime
    symbol: Symbol
    previous_symbol: Symbol
    qty: NonNegativeAmount
    previous_qty: PositiveAmount
    limit_price: PositiveAmount | None = None
    stop_price: PositiveAmount | None = None
    previous_limit_price: PositiveAmount | None = None
    previous_stop_price: PositiveAmount | None = None
    ratio_from: PositiveAmount | None = None
    ratio_to: PositiveAmount | None = None
    # the whole order restated in post-split units (what a venue that restates the filled part
    # too reports as its quantity): its confirmation at this quantity is not a second adjustment
    restated_qty: NonNegativeAmount | None = None
    remaining_dropped: NonNegativeAmount = Decimal(0)
    reason: Text = ""
    replace_id: Identifier | None = None
    replace_qty: NonNegativeAmount | None = None
    replace_limit_price: PositiveAmount | None = None
    replace_stop_price: PositiveAmount | None = None
    replace_restated_qty: NonNegativeAmount | None = None


def _business_date(value: Any) -> Any:
    from datetime import date

    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        try:
            return date.fromisoformat(value).isoformat()
        except ValueError:
            pass
    raise ValueError(f"business_date must be a date (YYYY-MM-DD), got {value!r}")


class VariationMarginSettled(AccountEvent):
    """The venue's daily settlement of a futures position (a venue fact, from its statement or
    its cash activity): ``amount`` of ``currency`` moved to (positive) or from the account's cash
    at ``venue`` for the position in ``symbol`` (signed ``qty`` contracts) marked at
    ``settlement_price`` on ``business_date``. The position's cost basis is re-based to the
    settlement price (the P&L from the contracts' last mark is realised by it), so that the later
    close realises and pays only what moved after it. The cash moves by that P&L (fills since the
    last mark moved it by what they realised: the venue's figure may include them), in
    ``currency``: as it is in the quote currency, at the recorded rate in the settlement
    currency; by ``amount`` when no rate converts it. Recorded once per account, venue, symbol
    and business date; ``venue_ref``: the venue's id of the posting, as evidence."""

    venue: Identifier
    symbol: Symbol
    business_date: Annotated[str, BeforeValidator(_business_date)]
    settlement_price: PositiveAmount
    qty: Amount
    amount: Amount
    currency: Currency = "USD"
    venue_ref: Identifier | None = None
    reconciliation_id: Identifier | None = None
    reason: Text = ""


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        OrderIntentRecorded,
        IntentRejectedByRisk,
        OrderSubmitted,
        OrderAcknowledged,
        OrderRejected,
        OrderFilled,
        OrderCancelRequested,
        OrderCancelled,
        OrderReplaced,
        OrderExpired,
        DiscrepancyRecorded,
        OrderImported,
        FillCorrected,
        OrderReplaceRequested,
        OrderReplaceRefused,
        RiskCheckPassed,
        RiskLimitChanged,
        CircuitBreakerTripped,
        CircuitBreakerReset,
        KillSwitchEngaged,
        KillSwitchReleased,
        DailyLimitBreached,
        TradingResumed,
        PositionCorrected,
        CashBalanceRecorded,
        ReconciliationCompleted,
        TradingBlocked,
        DiscrepancyAcknowledged,
        GateApproved,
        SignalRecorded,
        EngineStarted,
        EngineStopped,
        RecoveryCompleted,
        ShutdownCompleted,
        AccountBootstrapped,
        LeaseAcquired,
        LeaseReleased,
        LeaseExpired,
        ClockSkewRecorded,
        BarRecorded,
        GateEvaluated,
        TradingModeChanged,
        RampStepped,
        RampHeld,
        RampHealthy,
        DrillCompleted,
        FeeCharged,
        InstrumentDefined,
        FxRateRecorded,
        CorporateActionRecorded,
        OptionSettled,
        OrderAdjusted,
        VariationMarginSettled,
    )
}

# ------------------------------------------------------------------------------------ upcasting

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

# (type name, from version) -> function returning the payload at from version + 1
UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcaster(type_name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register the decorated function as the upcaster of ``type_name`` payloads from
    ``from_version`` to the next version."""
    def register(fn: Upcaster) -> Upcaster:
        UPCASTERS[(type_name, from_version)] = fn
        return fn

    return register


@upcaster("OrderFilled", 1)
def _fill_v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    # v1 had no fee currency or liquidity flag; v1 fees were always in USD.
    payload.setdefault("fee_currency", "USD")
    payload.setdefault("liquidity", "unknown")
    return payload


@upcaster("OrderFilled", 2)
def _fill_v2_to_v3(payload: dict[str, Any]) -> dict[str, Any]:
    # v2 had no pending-fee flag: its fee was final when recorded.
    payload.setdefault("fee_pending", False)
    return payload


@upcaster("OrderImported", 1)
def _import_v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    # v1 imports were all orders placed outside tradestate: none was a leg of ours.
    payload.setdefault("parent_client_order_id", None)
    return payload


def _no_operator(payload: dict[str, Any]) -> dict[str, Any]:
    # v1 of the operator-controlled account events named no operator: recorded before anyone did.
    payload.setdefault("operator", "")
    return payload


for _type_name in ("RiskLimitChanged", "CircuitBreakerTripped", "CircuitBreakerReset", "KillSwitchEngaged",
                   "KillSwitchReleased", "TradingResumed"):
    upcaster(_type_name, 1)(_no_operator)


@upcaster("OrderAdjusted", 1)
def _adjusted_v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    # v1 never restated a pending amendment: none is named.
    for name in ("replace_id", "replace_qty", "replace_limit_price", "replace_stop_price", "replace_restated_qty"):
        payload.setdefault(name, None)
    return payload


def upcast(type_name: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Bring a stored payload to the current schema version of its type (in place)."""
    cls = EVENT_TYPES.get(type_name)
    if cls is None:
        raise KeyError(f"unknown event type {type_name!r}")
    version = payload.get(SCHEMA_KEY, 1)
    if version > cls.schema_version:
        raise ValueError(
            f"{type_name} payload has schema version {version}, newer than this code "
            f"({cls.schema_version}); upgrade tradestate"
        )
    while version < cls.schema_version:
        step = UPCASTERS.get((type_name, version))
        if step is None:
            raise ValueError(f"no upcaster for {type_name} v{version}")
        payload = step(payload)
        version += 1
        payload[SCHEMA_KEY] = version
    return payload


def decode(type_name: str, payload: dict[str, Any]) -> Event:
    """Typed event from a stored payload (upcast first). For queries and humans, not replay."""
    data = upcast(type_name, dict(payload))
    data.pop(SCHEMA_KEY, None)
    return EVENT_TYPES[type_name].model_validate(data)
