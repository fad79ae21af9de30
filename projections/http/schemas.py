"""The API's response bodies (pydantic models) and its error body.

The row models follow the tables (``projections/tables.py``): a column added there shows up here,
typed by its kind. Decimals are strings (exact), times are UTC datetimes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, create_model

from ...domain.state import OPEN_STATUSES, TERMINAL_STATUSES
from ..tables import TABLES

# The statuses the domain knows, in lifecycle order where it has one.
_STATUS_ORDER = ("new", "submitted", "acknowledged", "partially_filled", "filled", "cancelled", "rejected",
                 "expired", "refused")
OrderStatus = Literal[tuple(sorted(OPEN_STATUSES | TERMINAL_STATUSES,  # type: ignore[valid-type]
                                   key=lambda s: (_STATUS_ORDER + (s,)).index(s)))]

_KIND_TYPES: dict[str, Any] = {"text": str, "num": str, "int": int, "bool": bool, "time": datetime, "date": str,
                               "json": dict[str, Any]}

_DESCRIPTIONS: dict[str, str] = {
    "account": "Account id",
    "venue": "Venue",
    "symbol": "Symbol",
    "qty": "Quantity",
    "avg_cost": "Average cost of the open quantity (0 when flat)",
    "realized_pnl": "Realised P&L before fees",
    "unrealized_pnl": "Unrealised P&L at the last fill price",
    "fees": "Fees paid",
    "last_price": "Last fill price",
    "updated_at": "Time of the last event that changed the row",
    "last_position": "Log position of the last event that changed the row",
    "stream_id": "The order's stream in the log",
    "client_order_id": "Client order id (the engine's idempotency key)",
    "side": "buy or sell",
    "order_type": "market, limit, stop or stop_limit",
    "limit_price": "Limit price",
    "stop_price": "Stop price",
    "time_in_force": "Time in force",
    "strategy_id": "Strategy that sent the order",
    "status": "Lifecycle status",
    "is_open": "new, submitted, acknowledged or partially filled",
    "filled_qty": "Quantity filled",
    "remaining_qty": "Quantity still to fill",
    "avg_fill_price": "Average fill price",
    "venue_order_id": "The venue's order id",
    "cancel_requested": "A cancel was requested",
    "discrepancies": "Venue facts that contradicted our state (recorded for reconciliation, not applied)",
    "refusal": "Risk checks that refused the intent",
    "created_at": "When the intent was recorded",
    "last_reconciled_at": "Time of the account's last reconciliation (ReconciliationCompleted)",
    "last_reconciliation_status": "Status of the last reconciliation: clean, corrected, discrepancies or unknown",
    "trading_day": "Trading day, YYYY-MM-DD in the exchange time zone",
    "trades": "Intents that passed the pre-trade check that day",
    "fills": "Fills",
    "volume": "Quantity filled",
    "net_pnl": "Realised P&L net of fees",
    "breaches": "Daily limits breached",
    "kill_switch": "Kill switch engaged",
    "kill_switch_reason": "Why the kill switch was engaged",
    "breaker_tripped": "The recorded breaker flag, whatever breaker_until says (see breaker_active)",
    "breaker_reason": "Why the circuit breaker was tripped",
    "breaker_until": "When a tripped breaker expires (null: until reset)",
    "ramp_pct": "Recovery ramp: numeric limits are scaled to this percentage",
    "open_orders": "Open orders",
    "limit_name": "max_order_qty, max_order_notional, max_position_qty, max_open_orders, max_daily_trades "
                  "or max_daily_loss",
    "configured": "The configured value",
    "effective": "The value in force (after the recovery ramp)",
    "used": "What is used of it (null for per-order limits)",
    "signal": "The signal",
    "value": "The signal's value",
    "attributes": "The signal's attributes",
    "at": "When it happened",
    "minute": "The minute (UTC) this point closes",
    "position": "Log position",
    "equity": "realized_pnl + unrealized_pnl - fees",
}
_TABLE_DESCRIPTIONS: dict[tuple[str, str], str] = {
    ("ts_positions", "qty"): "Signed quantity held; negative is short",
    ("ts_positions", "multiplier"): "The instrument's contract multiplier (1: not in the instrument registry)",
    ("ts_positions", "currency"): "The instrument's quote currency of prices and P&L (null: the account's)",
    ("ts_orders", "qty"): "Ordered quantity (after replaces)",
    ("ts_orders", "fees"): "Fees paid on the order's fills",
    ("ts_orders", "updated_at"): "Time of the order's last event",
    ("ts_equity_curve", "fills"): "Fills of the account in this minute",
    ("ts_equity_curve", "last_position"): "Log position of the last fill in this point",
    ("ts_risk_usage", "symbol"): "Per-symbol override (max_position_qty); null: every symbol",
    ("ts_risk_usage", "trading_day"): "Trading day the daily usage refers to",
    ("ts_signals", "at"): "When the signal was recorded",
    ("ts_orders", "fees_pending"): "Fills whose fee the venue has not reported yet (see /fees/pending)",
    ("ts_orders", "replace_pending"): "The engine's amendment (replace id) the venue has not confirmed or refused "
                                      "yet; null: none pending",
    ("ts_orders", "replace_qty"): "The whole quantity the pending amendment asks for (the order's qty changes "
                                  "only when the venue confirms)",
    ("ts_orders", "replace_limit_price"): "The limit price the pending amendment asks for",
    ("ts_orders", "replace_stop_price"): "The stop price the pending amendment asks for",
    ("ts_fees_pending", "exec_id"): "The venue's execution id whose fee is still to come",
    ("ts_fees_pending", "qty"): "Quantity of the execution",
    ("ts_fees_pending", "price"): "Price of the execution",
    ("ts_fees_pending", "last_position"): "Log position of the fill (or correction) that left the fee pending",
    ("ts_instruments", "asset_class"): "equity, etf, future, option, fx or crypto",
    ("ts_instruments", "multiplier"): "Contract multiplier (one ES future: 50)",
    ("ts_instruments", "quote_currency"): "Currency of its prices and P&L",
    ("ts_instruments", "settlement_currency"): "Currency its cash settles in",
    ("ts_instruments", "tick_size"): "Price increment (null: any price)",
    ("ts_instruments", "lot_size"): "Quantity increment (null: any quantity)",
    ("ts_instruments", "fractional"): "Fractional quantities allowed",
    ("ts_instruments", "expiry"): "Expiry of a future or option",
    ("ts_instruments", "underlying"): "An option's underlying",
    ("ts_instruments", "strike"): "An option's strike",
    ("ts_instruments", "option_right"): "An option's right: call or put",
    ("ts_instruments", "last_position"): "Log position of the definition in force",
    ("ts_cash", "currency"): "Currency (or crypto asset)",
    ("ts_cash", "balance"): "The venue's last reported balance, moved by our fills, fees and settlements since",
    ("ts_cash", "last_position"): "Log position of the account's last event when the row was written",
    ("ts_fx_rates", "base"): "Base currency",
    ("ts_fx_rates", "quote"): "Quote currency",
    ("ts_fx_rates", "rate"): "One base is worth this many quote (the last rate recorded)",
    ("ts_fx_rates", "source"): "Where the desk took the rate",
    ("ts_fx_rates", "at"): "When the rate was taken",
    ("ts_corporate_actions", "action"): "split or symbol_change",
    ("ts_corporate_actions", "effective_at"): "When it takes effect",
    ("ts_corporate_actions", "ratio_from"): "A split: this many old shares become ratio_to (2-for-1: 1 -> 2)",
    ("ts_corporate_actions", "ratio_to"): "A split: what ratio_from old shares become",
    ("ts_corporate_actions", "new_symbol"): "A symbol change: the new symbol",
    ("ts_corporate_actions", "source"): "operator or venue",
    ("ts_corporate_actions", "reason"): "Why it was recorded",
    ("ts_corporate_actions", "at"): "When it was recorded",
}
# Columns the projector always fills (the others may be null).
_REQUIRED: dict[str, set[str]] = {
    "ts_positions": {"qty", "avg_cost", "realized_pnl", "unrealized_pnl", "fees", "last_position", "multiplier"},
    "ts_orders": {"client_order_id", "account", "venue", "symbol", "side", "order_type", "qty", "status",
                  "is_open", "filled_qty", "remaining_qty", "fees", "cancel_requested", "discrepancies",
                  "last_position", "fees_pending"},
    "ts_daily_stats": {"trades", "fills", "volume", "realized_pnl", "fees", "net_pnl", "breaches",
                       "last_position"},
    "ts_risk_state": {"kill_switch", "breaker_tripped", "open_orders", "discrepancies", "last_position"},
    "ts_risk_usage": {"last_position"},
    "ts_signals": {"signal", "attributes", "last_position"},
    "ts_equity_curve": {"realized_pnl", "unrealized_pnl", "fees", "equity"},
    "ts_fees_pending": {"stream_id", "client_order_id", "venue", "symbol", "qty", "price", "last_position"},
    "ts_instruments": {"asset_class", "multiplier", "quote_currency", "settlement_currency", "fractional",
                       "last_position"},
    "ts_cash": {"balance", "last_position"},
    "ts_fx_rates": {"rate", "last_position"},
    "ts_corporate_actions": {"source", "last_position"},
}


def _table_model(name: str, table: str, doc: str, *, drop: tuple[str, ...] = (), nullable: tuple[str, ...] = (),
                 types: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> type[BaseModel]:
    columns, key = TABLES[table]
    required = (set(key) | _REQUIRED.get(table, set())) - set(nullable)
    fields: dict[str, Any] = {}
    for column, kind in columns:
        if column in drop:
            continue
        described = _TABLE_DESCRIPTIONS.get((table, column)) or _DESCRIPTIONS.get(column, column.replace("_", " "))
        typ = (types or {}).get(column, _KIND_TYPES[kind])
        if kind == "num":
            described += " (exact decimal, as a string)"
        elif kind == "time":
            described += " (ISO-8601, UTC)"
        if column in required:
            fields[column] = (typ, Field(description=described))
        else:
            fields[column] = (typ | None, Field(default=None, description=described))
    fields.update(extra or {})
    return create_model(name, __doc__=doc, **fields)


class ErrorBody(BaseModel):
    """An error: ``detail`` says what went wrong (and, for 422, ``errors`` lists each invalid input)."""

    detail: str = Field(description="What went wrong, for a human")
    errors: list[dict[str, Any]] | None = Field(default=None, description="Each invalid input (422 only)")


PositionOut = _table_model("Position", "ts_positions", "A position per account, venue and symbol (average cost).")
OrderOut = _table_model("Order", "ts_orders", "An order and its lifecycle state.",
                        types={"status": OrderStatus, "refusal": list[str]})
DailyStatsOut = _table_model("DailyStats", "ts_daily_stats",
                             "Trading statistics of an account for one trading day (exchange time zone).",
                             types={"breaches": list[str]})
EquityPointOut = _table_model("EquityPoint", "ts_equity_curve", "The account's P&L after its fills.")
SignalOut = _table_model("Signal", "ts_signals", "The last signal of a strategy for a symbol.")
FeePendingOut = _table_model("FeePending", "ts_fees_pending",
                             "An execution whose fee the venue has not reported yet (IB's late commission report).")
InstrumentOut = _table_model("Instrument", "ts_instruments", "An instrument of the registry: its last definition.",
                             types={"asset_class": Literal["equity", "etf", "future", "option", "fx", "crypto"],
                                    "option_right": Literal["call", "put"]})
CashOut = _table_model("Cash", "ts_cash", "Cash of an account at a venue in one currency.")
FxRateOut = _table_model("FxRate", "ts_fx_rates", "The last recorded FX rate of a currency pair.")
CorporateActionOut = _table_model("CorporateAction", "ts_corporate_actions",
                                  "A corporate action: a split (or reverse split) or a symbol change.",
                                  types={"action": Literal["split", "symbol_change"],
                                         "source": Literal["operator", "venue"]})
LimitUsageOut = _table_model("LimitUsage", "ts_risk_usage", "One risk limit of an account and its usage.",
                             drop=("account",), nullable=("symbol",))
RiskOut = _table_model(
    "RiskState", "ts_risk_state", "Risk state of an account: kill switch, circuit breaker, ramp, limit usage.",
    extra={
        "breaker_active": (bool, Field(description="Breaker tripped and not expired "
                                                   "(breaker_until null or in the future)")),
        "limits": (list[LimitUsageOut], Field(description="Each limit: configured, effective and used")),  # type: ignore[valid-type]
    },
)


class AccountHealthOut(BaseModel):
    """An account's kill switch and circuit breaker, as /health reports them."""

    account: str
    kill_switch: bool
    kill_switch_reason: str | None = None
    breaker_active: bool
    breaker_reason: str | None = None
    breaker_until: datetime | None = None


EngineState = Literal["active", "standby", "standby-lost", "dead", "stopped", "running", "unknown"]
_ENGINE_STATE = ("active: its lease is renewed in time; dead: its lease expired unrenewed (crashed, hung or cut "
                 "off: a standby or `tradestate recover` takes over); stopped: released its lease (a clean stop); "
                 "standby: a standby of the engine that checked in within 10 s (standby-lost: longer ago); "
                 "running / unknown: no lease (an engine started without an engine id): started and not stopped, "
                 "or neither on record")


class EngineHealthOut(BaseModel):
    """An engine's lease as /health reports it."""

    engine_id: str = Field(description="Engine id")
    state: EngineState = Field(description=_ENGINE_STATE)
    holder: str = Field(description="The process holding (or last holding) the lease: host:pid:suffix")
    epoch: int | None = Field(description="The lease's epoch: it grows at each takeover; appends carry it (the "
                                          "fence). Null for a standby")
    renewal_age_seconds: float | None = Field(
        default=None, description="Seconds since the holder last renewed the lease (a standby: last checked in), "
                                  "by the database's clock")


class EngineOut(EngineHealthOut):
    """An engine: its state, its lease and what the log says of it (`tradestate engines --json`)."""

    lease: Literal["active", "expired", "released", "never", "none"] = Field(
        description="The lease table's view: active, expired (not renewed in time), released, never held, or "
                    "none (no lease row: the engine never took one)")
    renewed_at: datetime | None = Field(default=None, description="When the lease was last renewed (UTC)")
    expires_in_seconds: float | None = Field(
        default=None, description="Seconds until the lease runs out unless renewed (negative: ran out that long ago)")
    expiry_recorded: bool | None = Field(
        default=None, description="An expired lease was recorded as a LeaseExpired event (by a standby, "
                                  "`tradestate serve` or the projector)")
    running: bool = Field(description="The log has an EngineStarted with no EngineStopped after it")
    last_recovery_position: int | None = Field(default=None,
                                               description="Log position of the engine's last RecoveryCompleted")


class DrillHealthOut(BaseModel):
    """The last restore drill on record (``tradestate drill``), as /health reports it."""

    outcome: Literal["passed", "failed"] = Field(description="passed, or failed (see reason)")
    reason: str | None = Field(default=None, description="Why it failed ('' when it passed; null without the "
                                                         "token when one is configured)")
    finished_at: datetime | None = Field(default=None, description="When the drill finished (UTC)")
    age_seconds: float | None = Field(default=None, description="Seconds since then")
    rto_seconds: float | None = Field(default=None, description="The drill's RTO: seconds from its start to a "
                                                                "ready state (restore, verify, fold)")
    rpo_seconds: float | None = Field(default=None, description="The drill's RPO: age of the newest backed-up "
                                                                "event when it ran")
    events_behind: int | None = Field(default=None, description="Live events beyond the backup when it ran")
    position: int = Field(description="Log position of its DrillCompleted")


class HealthOut(BaseModel):
    """The readiness detail: how far the read models are behind the log, with the thresholds and
    each account's kill switch and breaker (503 when behind or stalled, as /readyz)."""

    status: Literal["ok", "degraded", "behind", "stalled"] = Field(
        description="ok; degraded (still 200): the read models are current but an engine is dead (its lease "
                    "expired unrenewed), or the last restore drill failed or is older than the maximum age "
                    "(see reasons); behind: more unprojected events than the threshold; "
                    "stalled: unprojected events older than the seconds threshold (both 503)")
    log_head: int = Field(description="Last position of the trading log")
    projection_position: int = Field(description="Last log position the tables include")
    lag_events: int = Field(description="log_head - projection_position")
    lag_seconds: float = Field(description="Seconds since the oldest unprojected event was recorded; 0 when caught up")
    last_event_at: datetime | None = Field(default=None, description="When the last event was recorded (UTC)")
    projection_updated_at: datetime | None = Field(default=None, description="When the projector last wrote (UTC)")
    lag_threshold_events: int
    lag_threshold_seconds: float
    accounts: list[AccountHealthOut] | None = Field(
        default=None, description="Kill switch and breaker per account (null without the token when one is configured)")
    dead_engines: int = Field(default=0, description="Engines whose lease expired unrenewed (dead, hung or cut off)")
    engines: list[EngineHealthOut] | None = Field(
        default=None, description="Each engine with a lease: state, holder, epoch, renewal age (null without the "
                                  "token when one is configured)")
    last_drill: DrillHealthOut | None = Field(default=None, description="The last restore drill on record (null: "
                                                                        "none was ever recorded)")
    drill_status: Literal["ok", "failed", "stale", "never"] = Field(
        default="never", description="ok: the last drill passed within drill_max_age_days; failed; stale: older "
                                     "than that; never: no drill on record (degraded only when drills are "
                                     "required)")
    drill_max_age_days: float = Field(default=35.0, description="A drill older than this is stale")
    reasons: list[str] = Field(default_factory=list, description="Why the status is degraded")


class ReadyOut(BaseModel):
    """Readiness: the database answers and the read models are within the lag thresholds."""

    status: Literal["ready", "behind", "stalled"] = Field(
        description="ready (200); behind: more unprojected events than the threshold; stalled: unprojected "
                    "events older than the seconds threshold (both 503)")
    log_head: int = Field(description="Last position of the trading log")
    projection_position: int = Field(description="Last log position the read models include")
    lag_events: int = Field(description="log_head - projection_position")
    lag_seconds: float = Field(description="Seconds since the oldest unprojected event was recorded; 0 when caught up")


class LiveOut(BaseModel):
    """Liveness: the process serves requests (the database is not consulted)."""

    status: Literal["alive"] = "alive"


def error_response(status: int, detail: str, **extra: Any) -> JSONResponse:
    """A JSON error in the ``ErrorBody`` shape: ``{"detail": ..., **extra}``."""
    return JSONResponse(status_code=status, content={"detail": detail, **extra})
