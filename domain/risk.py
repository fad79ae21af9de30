"""Pre-trade risk checks: pure functions of the folded state, the intent and the decision time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from .events import DailyLimitBreached, OrderFilled, OrderIntentRecorded
from .ids import derived_id
from .instruments import ACCOUNT_CURRENCY, NO_FX_RATE, instrument_rate, intent_refusals
from .state import AccountState, OrderState, PositionState, TradingState, pnl_rate_of

# Refusal reason codes, stable for tools and tests.
KILL_SWITCH = "kill_switch"
CIRCUIT_BREAKER = "circuit_breaker"
TRADING_BLOCKED = "trading_blocked"
MAX_ORDER_QTY = "max_order_qty"
MAX_ORDER_NOTIONAL = "max_order_notional"
NO_PRICE_FOR_NOTIONAL = "no_price_for_notional"
MAX_POSITION_QTY = "max_position_qty"
MAX_OPEN_ORDERS = "max_open_orders"
MAX_DAILY_TRADES = "max_daily_trades"
MAX_DAILY_LOSS = "max_daily_loss"
CLOCK_SKEW = "clock_skew"
MONITORING_MODE = "monitoring_mode"
GATE_PENDING = "gate_pending"

COUNT_LIMITS = frozenset({"max_open_orders", "max_daily_trades"})


def effective_limit(account: AccountState, name: str, symbol: str | None = None) -> Decimal | None:
    """A limit as it applies now: after a recovery, limits scale with the ramp level (50/75/100 %)."""
    value = None
    if symbol is not None and name == "max_position_qty":
        value = account.symbol_position_limits.get(symbol)
    if value is None:
        value = account.limits.get(name)
    if value is None:
        return None
    if account.ramp_pct != 100:
        value = value * account.ramp_pct / 100
    if name in COUNT_LIMITS:
        value = value.to_integral_value(rounding=ROUND_FLOOR)
    return value


def order_price(intent: OrderIntentRecorded) -> Decimal | None:
    """The price the notional checks use: the limit price, else the stop price, else the reference
    price (None: no price)."""
    return intent.limit_price or intent.stop_price or intent.reference_price


@dataclass(frozen=True)
class RiskDecision:
    """The pre-trade check's answer: reason codes (empty: passed), a readable detail, the trading
    day and the notional."""

    reasons: list[str]  # empty: the intent passes
    detail: str
    trading_day: str
    notional: Decimal | None

    @property
    def passed(self) -> bool:
        """True when no check refused the intent."""
        return not self.reasons


def check_intent(state: TradingState, intent: OrderIntentRecorded, now: datetime, *,
                 clock_skew: timedelta | None = None, max_clock_skew: timedelta | None = None) -> RiskDecision:
    """Run every pre-trade check of an intent against the folded state at ``now`` (kill switch,
    block, breaker, order qty and notional, worst-case position, open orders, daily trades, daily
    loss, and the engine clock: ``clock_skew``, its measured offset from the store's clock beyond
    the measurement's uncertainty, refuses the intent when larger than ``max_clock_skew`` either
    way) and return all reasons that refuse it."""
    account = state.account(intent.account)
    day = state.trading_day(now)
    reasons: list[str] = []
    details: list[str] = []
    _account_refusals(state, account, now, clock_skew, max_clock_skew, reasons, details)

    spec = state.instruments.get(intent.symbol) if state.instruments else None
    if spec is not None:  # the instrument's own rules: tick, lot, fraction, expiry
        for code, detail in intent_refusals(spec, intent.qty, [p for p in (intent.limit_price, intent.stop_price)
                                                               if p is not None], now):
            reasons.append(code)
            details.append(detail)

    limit = effective_limit(account, "max_order_qty")
    if limit is not None and intent.qty > limit:
        reasons.append(MAX_ORDER_QTY)
        details.append(f"qty {intent.qty} > {limit}")

    notional, rate_missing = order_notional(state, intent.symbol, intent.qty, order_price(intent))
    _notional_refusals(account, spec, notional, rate_missing, "intent", reasons, details)
    _position_refusals(state, account, intent.account, intent.venue, intent.symbol, intent.side.value, intent.qty,
                       None, reasons, details)

    limit = effective_limit(account, "max_open_orders")
    if limit is not None and len(account.open_orders) + 1 > limit:
        reasons.append(MAX_OPEN_ORDERS)
        details.append(f"{len(account.open_orders)} open orders, limit {limit}")

    stats = account.daily.get(day)
    limit = effective_limit(account, "max_daily_trades")
    if limit is not None and (stats.trades if stats else 0) + 1 > limit:
        reasons.append(MAX_DAILY_TRADES)
        details.append(f"{stats.trades if stats else 0} trades on {day}, limit {limit}")

    _daily_loss_refusals(account, day, reasons, details)
    return RiskDecision(reasons, "; ".join(details), day, notional)


def _account_refusals(state: TradingState, account: AccountState, now: datetime, clock_skew: timedelta | None,
                      max_clock_skew: timedelta | None, reasons: list[str], details: list[str]) -> None:
    """The account's own state: engine clock skew, kill switch, block, breaker, monitoring mode,
    pending gates (appended to ``reasons`` / ``details``)."""
    if clock_skew is not None and max_clock_skew is not None and abs(clock_skew) > max_clock_skew:
        reasons.append(CLOCK_SKEW)
        details.append(f"engine clock {clock_skew.total_seconds() * 1000:+.1f} ms off the store's clock, "
                       f"beyond the {max_clock_skew.total_seconds() * 1000:.1f} ms allowed")

    if account.kill_switch:
        reasons.append(KILL_SWITCH)
        details.append(f"kill switch engaged: {account.kill_switch_reason}")
    if account.blocked:
        reasons.append(TRADING_BLOCKED)
        details.append(f"trading blocked until an operator acknowledges: {account.blocked_reason}")
    if account.breaker_active(now):
        reasons.append(CIRCUIT_BREAKER)
        details.append(f"circuit breaker tripped: {account.breaker_reason}")
    if account.mode == "monitoring":
        reasons.append(MONITORING_MODE)
        details.append(f"monitoring mode, no new intents: {account.mode_reason}")
    pending = state.pending_gates(account.account) if state.gates else ()
    if pending:
        reasons.append(GATE_PENDING)
        details.append("waiting for an operator's approval of gate(s) "
                       + ", ".join(g["gate_id"] for g in pending[:10]))


def order_notional(state: TradingState, symbol: str, qty: Decimal, price: Decimal | None) -> tuple[Decimal | None, bool]:
    """(notional, FX rate missing) of ``qty`` at ``price`` in the account's currency: quantity x
    price, times the instrument's multiplier at the last recorded FX rate. (None, False): no price;
    (None, True): an instrument quoted in a currency without a recorded rate."""
    if price is None:
        return None, False
    notional = qty * price
    spec = state.instruments.get(symbol) if state.instruments else None
    if spec is not None:
        notional *= spec.multiplier
        rate = instrument_rate(state.fx_rates, spec)
        if rate is None:
            return None, True
        if rate != 1:
            notional *= rate
    return notional, False


def _notional_refusals(account: AccountState, spec: Any, notional: Decimal | None, rate_missing: bool, what: str,
                       reasons: list[str], details: list[str]) -> None:
    limit = effective_limit(account, "max_order_notional")
    if limit is not None:
        if rate_missing:
            reasons.append(NO_FX_RATE)
            details.append(f"a notional limit is set but no {spec.quote_currency}/{ACCOUNT_CURRENCY} "
                           "rate is recorded (record_fx_rate)")
        elif notional is None:
            reasons.append(NO_PRICE_FOR_NOTIONAL)
            details.append(f"a notional limit is set but the {what} has no price (give reference_price)")
        elif notional > limit:
            reasons.append(MAX_ORDER_NOTIONAL)
            details.append(f"notional {notional} > {limit}")


def _position_refusals(state: TradingState, account: AccountState, account_id: str, venue: str, symbol: str,
                       side: str, qty: Decimal, exclude: str | None, reasons: list[str], details: list[str]) -> None:
    """The worst-case position when ``qty`` more of ``side`` is working besides every open order
    of the symbol at the venue but ``exclude`` (an order stream being amended)."""
    limit = effective_limit(account, "max_position_qty", symbol)
    if limit is not None:
        held = state.position_of(account_id, venue, symbol)
        current = held.qty if held is not None else Decimal(0)
        open_buys = open_sells = Decimal(0)
        for order in account.open_orders.values():
            if order.symbol == symbol and order.venue == venue and order.stream_id != exclude:
                if order.sign > 0:
                    open_buys += order.remaining
                else:
                    open_sells += order.remaining
        # Worst case either way: every open order on one side fills, and so does this one.
        if side == "buy":
            worst = max(abs(current + open_buys + qty), abs(current - open_sells))
        else:
            worst = max(abs(current + open_buys), abs(current - open_sells - qty))
        if worst > limit:
            reasons.append(MAX_POSITION_QTY)
            details.append(f"worst-case position {worst} > {limit}")


def _daily_loss_refusals(account: AccountState, day: str, reasons: list[str], details: list[str]) -> None:
    stats = account.daily.get(day)
    limit = effective_limit(account, "max_daily_loss")
    loss = -(stats.net_pnl if stats is not None else Decimal(0))
    if limit is not None and loss >= limit:  # reaching the limit stops trading; 0 allows none
        reasons.append(MAX_DAILY_LOSS)
        details.append(f"net P&L {-loss} on {day}, loss limit {limit}")


def check_replace(state: TradingState, order: OrderState, qty: Decimal, limit_price: Decimal | None,
                  stop_price: Decimal | None, reference_price: Decimal | None, now: datetime, *,
                  clock_skew: timedelta | None = None, max_clock_skew: timedelta | None = None) -> RiskDecision:
    """The pre-trade check of amending open ``order`` to ``qty`` (its whole quantity, the filled
    part included) at ``limit_price`` / ``stop_price`` (``reference_price``: a market order's price
    for the notional checks; default the intent's), on what the amendment would add.

    An amendment that adds nothing (quantity not up, the priced notional not up, the price not
    more aggressive: higher for a buy, lower for a sell) always passes: it is a partial cancel,
    allowed under a kill switch too. One that adds is checked as the amended order, against the
    account's state (kill switch, block, breaker, monitoring, gates, clock skew, daily loss) and
    every limit as it applies now (after the ramp): order quantity, notional (the instrument's
    multiplier and FX rate), worst-case position with this order's remaining quantity replaced by
    the amended one. The two counts an amendment does not change (open orders, daily trades) are
    not checked. ``notional`` of the answer: the amended order's."""
    account = state.account(order.account)
    day = state.trading_day(now)
    reference = reference_price if reference_price is not None else order.reference_price
    old_price = order.limit_price or order.stop_price or order.reference_price
    new_price = limit_price or stop_price or reference
    old_notional, _ = order_notional(state, order.symbol, order.qty, old_price)
    notional, rate_missing = order_notional(state, order.symbol, qty, new_price)
    more_qty = qty > order.qty
    more_notional = notional is not None and old_notional is not None and notional > old_notional
    aggressive = (new_price is not None and old_price is not None
                  and (new_price > old_price if order.sign > 0 else new_price < old_price))
    if not (more_qty or more_notional or aggressive):
        return RiskDecision([], "", day, notional)
    reasons: list[str] = []
    details: list[str] = []
    _account_refusals(state, account, now, clock_skew, max_clock_skew, reasons, details)
    limit = effective_limit(account, "max_order_qty")
    if limit is not None and qty > limit:
        reasons.append(MAX_ORDER_QTY)
        details.append(f"qty {qty} > {limit}")
    spec = state.instruments.get(order.symbol) if state.instruments else None
    _notional_refusals(account, spec, notional, rate_missing, "amended order", reasons, details)
    _position_refusals(state, account, order.account, order.venue, order.symbol, order.side,
                       qty - order.filled_qty, order.stream_id, reasons, details)
    _daily_loss_refusals(account, day, reasons, details)
    return RiskDecision(reasons, "; ".join(details), day, notional)


def pnl_rate(state: TradingState, symbol: str) -> Decimal | None:
    """The rate the fold converts ``symbol``'s realised P&L into the account's currency with (the
    last recorded one); None: no conversion (not a registered instrument in another currency, or
    no rate recorded: counted as it is, as the fold counts it)."""
    spec = state.instruments.get(symbol) if state.instruments else None
    return None if spec is None else pnl_rate_of(state, spec)


def daily_loss_breach(
    account: AccountState, fill: OrderFilled, sign: int, day: str, preview: PositionState,
    net_before: Decimal, *, breached: bool, rate: Decimal | None = None,
) -> tuple[Decimal, DailyLimitBreached | None]:
    """What a fill does to the account's ``max_daily_loss`` on ``day``.

    ``preview`` is a scratch copy of the position the fill lands on (the caller's, never the
    state's); the fill is booked on it (``sign`` * qty at the fill's price) to get its realised
    P&L. ``net_before`` is the day's net P&L before the fill. Returns (the day's net P&L after the
    fill and its fee, the ``DailyLimitBreached`` to append when the loss reaches the effective
    limit and ``breached`` says the day has not breached it yet, else None). With no limit set:
    (``net_before``, None), and ``preview`` is left untouched. ``rate``: the position's currency
    in the account's (None: the same, or no rate recorded), as the fold converts the day's
    realised P&L."""
    limit = effective_limit(account, MAX_DAILY_LOSS)
    if limit is None:
        return net_before, None
    realized = preview.apply_fill(fill.qty * sign, fill.price)
    if rate is not None and realized:
        realized *= rate
    net = net_before + realized - fill.fee
    if breached or -net < limit:
        return net, None
    return net, DailyLimitBreached(
        event_id=derived_id(fill.event_id, DailyLimitBreached.__name__),
        occurred_at=fill.occurred_at,
        correlation_id=fill.correlation_id,
        causation_id=fill.event_id,
        account=account.account,
        limit=MAX_DAILY_LOSS,
        trading_day=day,
        value=net,
        threshold=limit,
    )


def limit_usage(state: TradingState, account: str, now: datetime) -> list[dict[str, Any]]:
    """Each limit of an account: configured value, value after the ramp, and what is used now."""
    a = state.accounts.get(account) or AccountState(account)  # reading never adds state
    stats = a.daily.get(state.trading_day(now))
    held = {sym: abs(p.qty) for (acct, _v, sym), p in state.positions.items() if acct == account}
    usage: dict[str, Any] = {
        "max_open_orders": len(a.open_orders),
        "max_daily_trades": stats.trades if stats else 0,
        "max_daily_loss": max(Decimal(0), -(stats.net_pnl if stats else Decimal(0))),
        "max_position_qty": max(held.values(), default=Decimal(0)),
    }
    rows = [
        {"limit": name, "symbol": None, "value": value, "effective": effective_limit(a, name), "used": usage.get(name)}
        for name, value in sorted(a.limits.items())
    ]
    rows += [
        {"limit": "max_position_qty", "symbol": sym, "value": value,
         "effective": effective_limit(a, "max_position_qty", sym), "used": held.get(sym, Decimal(0))}
        for sym, value in sorted(a.symbol_position_limits.items())
    ]
    return rows
