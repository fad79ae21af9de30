"""Trading state as a fold of the log.

``TradingState.apply`` is the only way state changes, live or on replay: the client applies the
JSON payload it has just stored, recovery applies the payloads it reads back. One code path means
"folding the stored events gives the same state as the live objects" holds by construction (and is
tested by property). It works on the stored JSON form on purpose: replay is hot, and validating
a million payloads again would triple its cost for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from itertools import islice
from typing import Any
from zoneinfo import ZoneInfo

from .events import EVENT_TYPES, SCHEMA_KEY, VOID_TYPE, upcast
from .instruments import ACCOUNT_CURRENCY, ONE, InstrumentSpec, instrument_rate

ZERO = Decimal(0)
# Fills per position kept to recompute it exactly when the venue corrects one of them
# (``FillCorrected``); an older fill's correction moves quantity, cash and total P&L exactly but
# books its realised part at the correction (see ``correct_fill``).
JOURNAL_FILLS = 8
OPEN_STATUSES = frozenset({"new", "submitted", "acknowledged", "partially_filled"})
TERMINAL_STATUSES = frozenset({"refused", "filled", "cancelled", "rejected", "expired"})
_fromiso = datetime.fromisoformat

_CURRENT_VERSION = {name: cls.schema_version for name, cls in EVENT_TYPES.items()}


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


def _time(value: str | None, fallback: datetime) -> datetime:
    return datetime.fromisoformat(value) if value else fallback


def discrepancy_key(d: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two contradicting venue facts the same fact."""
    return (d["kind"], d.get("venue_status"), d.get("venue_order_id"), d.get("exec_id"))


class OrderState:
    """One order as folded from its stream: what was intended, its status, fills, fees,
    discrepancies, refusal and where each lifecycle fact was recorded."""

    __slots__ = (
        "stream_id", "account", "client_order_id", "venue", "symbol", "side", "sign",
        "order_type", "qty", "limit_price", "stop_price", "time_in_force", "strategy_id",
        "reference_price", "intent", "status", "filled_qty", "fill_notional", "fees",
        "venue_order_id", "executions", "cancel_requested", "discrepancies", "refusal", "refusal_detail",
        "positions", "created_at", "updated_at", "intent_event_id", "discrepancy_keys",
        "position_key", "account_state", "external", "exec_fees", "replaces", "replace_pending", "adjusted",
    )  # fmt: skip

    def __init__(self, stream_id: str, d: dict[str, Any], position: int, at: datetime):
        self.stream_id = stream_id
        self.account: str = d["account"]
        self.client_order_id: str = d["client_order_id"]
        self.venue: str = d["venue"]
        self.symbol: str = d["symbol"]
        self.side: str = d["side"]
        self.sign = 1 if self.side == "buy" else -1
        self.order_type: str = d["order_type"]
        self.qty = Decimal(d["qty"])
        self.limit_price = _dec(d.get("limit_price"))
        self.stop_price = _dec(d.get("stop_price"))
        self.time_in_force: str = d.get("time_in_force", "day")
        self.strategy_id: str | None = d.get("strategy_id")
        self.reference_price = _dec(d.get("reference_price"))
        self.intent: dict[str, Any] = d  # the stored intent payload, for idempotency checks
        self.intent_event_id: str = d["event_id"]
        self.status = "new"
        self.filled_qty = ZERO
        self.fill_notional = ZERO
        self.fees = ZERO
        self.venue_order_id: str | None = None
        # exec id -> (qty, price, position); discrepant executions are kept under "!" + exec id
        self.executions: dict[str, tuple[Decimal, Decimal, int]] = {}
        self.cancel_requested = False
        self.discrepancies = 0
        self.discrepancy_keys: dict[tuple[Any, ...], int] = {}  # a repeated venue fact -> first record
        self.refusal: list[str] | None = None
        self.refusal_detail = ""
        # where each lifecycle fact was recorded, so a repeated call can return it
        self.positions: dict[str, int] = {"intent": position}
        self.created_at = at
        self.updated_at = at
        # resolved once: a fill updates them without rebuilding keys or looking accounts up
        self.position_key = (self.account, self.venue, self.symbol)
        self.account_state: AccountState | None = None
        self.external = False  # imported from the venue by reconciliation, never risk-checked
        self.exec_fees: dict[str, Decimal] | None = None  # exec id -> its fee, when not zero (a correction replaces it)
        # replace id -> the engine's amendment: {"request": stored payload, "position", "status":
        # pending | refused | replaced, and for a refusal "by", "reasons", "detail"}; None: none asked
        self.replaces: dict[str, dict[str, Any]] | None = None
        self.replace_pending: str | None = None  # the amendment the venue has not answered yet
        # the last corporate action that restated the order (``OrderAdjusted``): its position,
        # quantity, prices and the venue's restated quantity; None: never adjusted
        self.adjusted: dict[str, Any] | None = None

    @property
    def remaining(self) -> Decimal:
        """Quantity not filled yet."""
        return self.qty - self.filled_qty

    @property
    def former_symbols(self) -> tuple[str, ...]:
        """The symbols the order worked before symbol changes restated it, oldest first (a
        venue's late report may still name one of them)."""
        if self.adjusted is None:
            return ()
        former = self.adjusted.get("former_symbols")
        if former is None:  # a checkpoint from before they were kept: the intent's symbol at least
            first = self.intent["symbol"]
            return (first,) if first != self.symbol else ()
        return tuple(former)

    @property
    def is_open(self) -> bool:
        """True while the order can still be filled, cancelled or replaced."""
        return self.status in OPEN_STATUSES

    @property
    def avg_fill_price(self) -> Decimal | None:
        """Average price of the fills (None before the first)."""
        return self.fill_notional / self.filled_qty if self.filled_qty else None

    def as_dict(self) -> dict[str, Any]:
        """A plain picture of the order for queries and tests."""
        return {
            "account": self.account,
            "client_order_id": self.client_order_id,
            "stream_id": self.stream_id,
            "venue": self.venue,
            "symbol": self.symbol,
            "side": self.side,
            "order_type": self.order_type,
            "qty": self.qty,
            "limit_price": self.limit_price,
            "stop_price": self.stop_price,
            "time_in_force": self.time_in_force,
            "strategy_id": self.strategy_id,
            "status": self.status,
            "filled_qty": self.filled_qty,
            "remaining_qty": self.remaining,
            "avg_fill_price": self.avg_fill_price,
            "fees": self.fees,
            # executions whose fee the venue has not reported yet
            "fees_pending": sorted(e for e in self.executions
                                   if self.account_state is not None and e in self.account_state.fees_pending),
            "venue_order_id": self.venue_order_id,
            "cancel_requested": self.cancel_requested,
            "discrepancies": self.discrepancies,
            "refusal": self.refusal,
            "external": self.external,
            # only for an order the engine asked to amend: other orders' pictures stay as they were
            **({"replace_pending": self.replace_pending,
                "replaces": {rid: {k: v for k, v in r.items() if k not in ("request", "asked")}
                             for rid, r in self.replaces.items()}}
               if self.replaces else {}),
            **({"adjusted": self.adjusted} if self.adjusted else {}),  # only for an order a corporate action restated
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


class PositionState:
    """A position of one account, venue and symbol: signed quantity, cost basis, realised P&L, fees
    and last fill price.

    ``spec``: its instrument (None: not in the registry, multiplier 1 in the account's currency).
    Quantities are in contracts and prices per unit (the average cost too); money (realised and
    unrealised P&L) is price x quantity x the multiplier, in the instrument's quote currency."""

    __slots__ = ("account", "venue", "symbol", "qty", "cost", "realized_pnl", "fees",
                 "last_price", "updated_at", "journal", "spec")  # fmt: skip

    def __init__(self, account: str, venue: str, symbol: str, spec: InstrumentSpec | None = None):
        self.account = account
        self.venue = venue
        self.symbol = symbol
        self.qty = ZERO
        self.cost = ZERO  # cost basis of the open quantity, signed like it (sum of qty * price)
        self.realized_pnl = ZERO
        self.fees = ZERO
        self.last_price: Decimal | None = None
        self.updated_at: datetime | None = None
        # the last JOURNAL_FILLS fills: (exec id, signed qty, price, qty before, cost before, trading day)
        self.journal: list[tuple[str, Decimal, Decimal, Decimal, Decimal, str]] | None = None
        self.spec = spec

    @property
    def multiplier(self) -> Decimal:
        """The contract multiplier (1 without an instrument)."""
        return ONE if self.spec is None else self.spec.multiplier

    @property
    def currency(self) -> str | None:
        """The instrument's quote currency (None without an instrument: the account's)."""
        return None if self.spec is None else self.spec.quote_currency

    def apply_fill(self, signed_qty: Decimal, price: Decimal) -> Decimal:
        """Average-cost accounting on the total cost basis, so that closing a position
        releases exactly what opening it cost. Returns the realised P&L (before fees; times the
        instrument's multiplier)."""
        qty = self.qty
        self.last_price = price
        if qty == 0 or (qty > 0) == (signed_qty > 0):
            self.qty = qty + signed_qty
            self.cost += signed_qty * price
            return ZERO
        held = abs(qty)
        closing = min(abs(signed_qty), held)
        released = self.cost if closing == held else self.cost * closing / held
        direction = 1 if qty > 0 else -1
        realized = price * closing * direction - released
        if self.spec is not None:
            realized *= self.spec.multiplier
        new_qty = qty + signed_qty
        if new_qty == 0:
            self.cost = ZERO
        elif (new_qty > 0) != (qty > 0):  # flipped side: the rest opens at this price
            self.cost = new_qty * price
        else:
            self.cost -= released
        self.qty = new_qty
        self.realized_pnl += realized
        return realized

    @property
    def avg_cost(self) -> Decimal:
        """Average cost of the open quantity (zero when flat)."""
        return self.cost / self.qty if self.qty else ZERO

    @property
    def unrealized_pnl(self) -> Decimal:
        """P&L of the open quantity at the last fill price (zero when flat or never filled)."""
        if self.last_price is None or self.qty == 0:
            return ZERO
        pnl = self.last_price * self.qty - self.cost  # exact: no division by the quantity
        return pnl if self.spec is None else pnl * self.spec.multiplier

    def as_dict(self) -> dict[str, Any]:
        """A plain picture of the position for queries and tests (with its multiplier and
        currency when its instrument is defined)."""
        out = {
            "account": self.account,
            "venue": self.venue,
            "symbol": self.symbol,
            "qty": self.qty,
            "avg_cost": self.avg_cost,
            "realized_pnl": self.realized_pnl,
            "unrealized_pnl": self.unrealized_pnl,
            "fees": self.fees,
            "last_price": self.last_price,
        }
        if self.spec is not None:
            out["multiplier"] = self.spec.multiplier
            out["currency"] = self.spec.quote_currency
        return out


@dataclass
class DailyStats:
    """One account's trading day: trades that passed the check, fills, volume, realised P&L, fees
    and daily limits breached."""

    trades: int = 0  # orders that passed the pre-trade check that day
    fills: int = 0
    volume: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    fees: Decimal = ZERO
    breaches: set[str] = field(default_factory=set)

    @property
    def net_pnl(self) -> Decimal:
        """Realised P&L less fees."""
        return self.realized_pnl - self.fees


@dataclass
class AccountState:
    """One account's limits, breaker, kill switch, ramp, block, open orders, daily statistics, cash
    and last reconciliation."""

    account: str
    limits: dict[str, Decimal] = field(default_factory=dict)
    symbol_position_limits: dict[str, Decimal] = field(default_factory=dict)
    breaker_tripped: bool = False
    breaker_reason: str = ""
    breaker_until: datetime | None = None
    kill_switch: bool = False
    kill_switch_reason: str = ""
    ramp_pct: int = 100
    open_orders: dict[str, OrderState] = field(default_factory=dict)
    daily: dict[str, DailyStats] = field(default_factory=dict)
    discrepancies: int = 0
    # currency -> balance: the venue's last reported cash, moved by our fills since
    cash: dict[str, Decimal] = field(default_factory=dict)
    # venue -> currency -> balance: the same per venue (an account at two venues holds cash at
    # each; ``cash`` above is whichever venue reported last, kept as it always was)
    venue_cash: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    blocked: bool = False  # strict recovery/reconciliation: no trading until acknowledged
    blocked_reason: str = ""
    last_reconciliation: dict[str, Any] | None = None
    mode: str = "trading"  # "monitoring": venue facts recorded, no new intents (a closed market)
    mode_reason: str = ""
    breaker_trips: int = 0  # every trip ever folded: the ramp's "no breaker trip since" check
    # The ramp after a recovery: when the current level's healthy interval started, the counters it
    # started from (discrepancies, breaker trips: "no new ..." compares with these), and the reason
    # it is held ("" when not). None: no ramp since the log began.
    ramp_since: datetime | None = None
    ramp_baseline: tuple[int, int] = (0, 0)
    ramp_held: str = ""
    # fills whose fee the venue has not reported yet: exec id -> order stream (``fee_pending``)
    fees_pending: dict[str, str] = field(default_factory=dict)
    fee_ids: dict[str, int] = field(default_factory=dict)  # ``FeeCharged`` id -> where it was folded (once)
    # (venue, quote currency, settlement currency) -> money of fills in the quote currency that
    # could not move the cash in the settlement currency for want of a recorded rate (never 1:1);
    # the venue's next recorded balance in that currency takes their place
    unconverted: dict[tuple[str, str, str], Decimal] = field(default_factory=dict)

    def cash_at(self, venue: str) -> dict[str, Decimal]:
        """currency -> the account's cash at ``venue`` (empty: no balance recorded there)."""
        return self.venue_cash.get(venue, {})

    def day(self, trading_day: str) -> DailyStats:
        """The statistics of ``trading_day`` (created empty when first asked for)."""
        stats = self.daily.get(trading_day)
        if stats is None:
            stats = self.daily[trading_day] = DailyStats()
        return stats

    def breaker_active(self, now: datetime) -> bool:
        """True when the circuit breaker is tripped and ``now`` is before its end (or it has none)."""
        if not self.breaker_tripped:
            return False
        return self.breaker_until is None or now < self.breaker_until


def book_fill(state: TradingState, account: AccountState, key: tuple[str, str, str], sign: int, sid: str,
              d: dict[str, Any], at: Any) -> tuple[Decimal, Decimal, Decimal, datetime]:
    """Book a stored fill payload ``d`` everywhere but on its order: the position ``key``
    (account, venue, symbol) moves by ``sign`` * qty at the price (average cost, realised P&L,
    fees, time), the account's statistics of the fill's trading day count it, the account's cash
    (and its cash at the venue) moves when a balance is on record (USD by the notional, the fee's
    currency by the fee; a registered instrument: in its settlement currency, by its multiplier,
    a future's by its realised P&L; the day's P&L by the last recorded rate), and the venue's
    execution id is indexed to the order stream ``sid`` (and ``sid`` to the fill's trading day).

    ``at`` (the row's recorded time, a datetime or ISO text) counts when the payload has no
    ``occurred_at``. Returns (qty, price, fee, time of the fill). ``TradingState.apply`` and the
    cold fold both book fills through this one function."""
    qty = Decimal(d["qty"])
    price = Decimal(d["price"])
    fee = Decimal(d["fee"])
    occurred = d.get("occurred_at")
    when = _fromiso(occurred) if occurred else (at if at.__class__ is datetime else _fromiso(at))
    positions = state.positions
    held = positions.get(key)
    if held is None:
        held = positions[key] = PositionState(*key, state.instruments.get(key[2]) if state.instruments else None)
    qty_before, cost_before, signed = held.qty, held.cost, qty * sign
    realized = held.apply_fill(signed, price)
    held.fees += fee
    held.updated_at = when
    day = state._day_cache.get(occurred[:16]) if occurred and occurred[-1] == "Z" else None  # _trading_day_of's hit
    day = day or state._trading_day_of(occurred, when)
    journal = held.journal
    if journal is None:
        held.journal = [(d["exec_id"], signed, price, qty_before, cost_before, day)]
    else:
        journal.append((d["exec_id"], signed, price, qty_before, cost_before, day))
        if len(journal) > JOURNAL_FILLS:
            del journal[0]
    if "fee_pending" in d and d["fee_pending"]:
        account.fees_pending[d["exec_id"]] = sid
    stats = account.day(day)
    stats.fills += 1
    stats.volume += qty
    stats.fees += fee
    spec = held.spec
    if spec is not None:  # a registered instrument: multiplier, quote currency, a future's cash
        if realized:  # the day's P&L in the account's currency, by the last recorded rate
            rate = pnl_rate_of(state, spec)
            stats.realized_pnl += realized if rate is None else realized * rate
        if account.cash:  # in the settlement currency: a future's by its realised P&L (variation
            # margin), any other's by the notional times the multiplier; the fee in its currency
            _move_settled(state, account, key[1], spec,
                          realized if spec.is_future else -sign * qty * price * spec.multiplier,
                          d.get("fee_currency", "USD"), fee)
    else:
        stats.realized_pnl += realized
        cash = account.cash
        if cash:
            paid = sign * qty * price
            if "USD" in cash:
                cash["USD"] -= paid
            fee_currency = d.get("fee_currency", "USD")
            if fee and fee_currency in cash:
                cash[fee_currency] -= fee
            at_venue = account.venue_cash.get(key[1])  # the same at the venue (written out: the fold's hot path)
            if at_venue:
                if "USD" in at_venue:
                    at_venue["USD"] -= paid
                if fee and fee_currency in at_venue:
                    at_venue[fee_currency] -= fee
    try:
        state.exec_ids[key[1]][d["exec_id"]] = sid
    except KeyError:  # the venue's first execution (a payload always has an exec_id)
        state.exec_ids[key[1]] = {d["exec_id"]: sid}
    days = state.exec_days
    if sid in days:
        del days[sid]  # kept in the order of each order's last fill: most recent last
    days[sid] = day
    return qty, price, fee, when


def correct_fill(state: TradingState, account: AccountState, key: tuple[str, str, str], sign: int, sid: str,
                 d: dict[str, Any], at: Any) -> tuple[Decimal, Decimal, Decimal]:
    """Book a stored ``FillCorrected`` payload ``d`` everywhere but on its order, as if the
    corrected fill had had the new values: the position ``key`` (quantity, cost basis, realised
    P&L, fees), the account's daily statistics, its cash and its cash at the position's venue
    (when a balance is on record), the execution-id index and the pending fees. Exact when the
    corrected fill is among the position's last ``JOURNAL_FILLS`` fills (they are folded again
    from the corrected one on); for an older fill the quantity, cash, fees and total P&L
    (realised plus unrealised at any mark) are still exact, but the difference is booked on the
    cost basis now (realised if the position is flat) rather than spread over the realised P&L of
    the fills in between.

    On a registered instrument money is booked as ``book_fill`` books it: realised P&L times the
    multiplier in the quote currency (the days' in the account's currency by the last recorded
    rate, the one of the correction's point in the log for the fills it folds again too), cash in
    the quote currency by the notional times the multiplier (a future's by its realised P&L).

    Returns (quantity difference, notional difference, fee difference) for the order's books."""
    q0, p0, f0 = Decimal(d["previous_qty"]), Decimal(d["previous_price"]), Decimal(d.get("previous_fee") or 0)
    q1, p1 = Decimal(d["qty"]), Decimal(d["price"])
    if d.get("fee_pending"):
        f1 = ZERO  # the correcting execution's fee follows as ``FeeCharged``
    elif d.get("fee") is not None:
        f1 = Decimal(d["fee"])
    else:  # unchanged; a bust takes its fee with it
        f1 = f0 if q1 else ZERO
    occurred = d.get("occurred_at")
    when = _fromiso(occurred) if occurred else (at if at.__class__ is datetime else _fromiso(at))
    held = state.positions.get(key)
    if held is None:
        held = state.positions[key] = PositionState(*key, state.instruments.get(key[2]) if state.instruments else None)
    spec = held.spec
    rate = pnl_rate_of(state, spec)  # None: the day's P&L as it is
    moved = ZERO  # the position's realised P&L difference (quote currency, times the multiplier)
    journal = held.journal or []
    replayed = _replay_correction(held, sign, d["corrected_exec_id"], d["exec_id"], q1, p1)
    if replayed is not None:
        at_index, undone, rebuilt, redone, replay = replayed
        day = journal[at_index][5]
        for fill_day, realized in undone:
            account.day(fill_day).realized_pnl -= realized if rate is None else realized * rate
        for fill_day, realized in redone:
            account.day(fill_day).realized_pnl += realized if rate is None else realized * rate
        moved = sum((r for _, r in redone), ZERO) - sum((r for _, r in undone), ZERO)
        held.realized_pnl += moved
        held.qty, held.cost = replay.qty, replay.cost
        if at_index == len(journal) - 1 and (rebuilt or at_index):
            held.last_price = rebuilt[-1][2] if rebuilt else journal[at_index - 1][2]
        journal[at_index:] = rebuilt
        if not journal:
            held.journal = None  # as a checkpoint restores it: a bust of its only fill leaves none
    else:  # older than the journal: exact in quantity and total P&L, not in its realised part
        day = state._trading_day_of(occurred, when)
        held.qty += sign * (q1 - q0)
        held.cost += sign * (q1 * p1 - q0 * p0)
        if held.qty == 0 and held.cost:
            moved = -held.cost * held.multiplier
            held.realized_pnl += moved
            account.day(day).realized_pnl += moved if rate is None else moved * rate
            held.cost = ZERO
    held.fees += f1 - f0
    held.updated_at = when
    stats = account.day(day)
    stats.volume += q1 - q0
    stats.fees += f1 - f0
    if not q1:
        stats.fills -= 1  # a bust: the execution never happened
    if account.cash:
        notional = -sign * (q1 * p1 - q0 * p0)
        if spec is None:
            _move_cash(account, key[1], "USD", notional, d.get("fee_currency", "USD"), f1 - f0)
        else:
            _move_settled(state, account, key[1], spec, moved if spec.is_future else notional * spec.multiplier,
                          d.get("fee_currency", "USD"), f1 - f0)
    old_id, new_id = d["corrected_exec_id"], d["exec_id"]
    ids = state.exec_ids.setdefault(key[1], {})
    ids.pop(old_id, None)
    if q1:
        ids[new_id] = sid
    elif not ids:  # a bust of the venue's last execution: no empty index (a checkpoint keeps none)
        del state.exec_ids[key[1]]
    pending = account.fees_pending.pop(old_id, None)
    if q1 and (d.get("fee_pending") or (pending is not None and d.get("fee") is None)):
        account.fees_pending[new_id] = sid  # the fee of the correcting execution is still to come
    return q1 - q0, q1 * p1 - q0 * p0, f1 - f0


def _replay_correction(held: PositionState, sign: int, old_id: str, new_id: str, q1: Decimal, p1: Decimal
                       ) -> tuple[int, list[tuple[str, Decimal]], list[Any], list[tuple[str, Decimal]],
                                  PositionState] | None:
    """The fills of ``held``'s journal from ``old_id`` on, folded again with ``old_id`` replaced by
    ``new_id`` (``q1`` at ``p1``; none: a bust), without touching ``held``: (its index in the
    journal, (trading day, realised P&L) of each fill as booked, the rebuilt journal entries, the
    same pairs folded again, the position after them). None: ``old_id`` is not in the journal."""
    journal = held.journal or ()
    at_index = next((i for i in range(len(journal) - 1, -1, -1) if journal[i][0] == old_id), None)
    if at_index is None:
        return None
    old = journal[at_index:]
    new = ([(new_id, q1 * sign, p1, *old[0][3:])] if q1 else []) + old[1:]
    key = (held.account, held.venue, held.symbol)
    replay_old = PositionState(*key, held.spec)  # the spec: realised P&L times its multiplier
    replay_old.qty, replay_old.cost = old[0][3], old[0][4]
    replay = PositionState(*key, held.spec)
    replay.qty, replay.cost = old[0][3], old[0][4]
    undone = [(e[5], replay_old.apply_fill(e[1], e[2])) for e in old]
    rebuilt: list[Any] = []
    redone = []
    for e in new:
        rebuilt.append((e[0], e[1], e[2], replay.qty, replay.cost, e[5]))
        redone.append((e[5], replay.apply_fill(e[1], e[2])))
    return at_index, undone, rebuilt, redone, replay


def correction_cash(state: TradingState, key: tuple[str, str, str], sign: int, d: dict[str, Any]
                    ) -> tuple[str, Decimal | None]:
    """(currency, amount) the fold's ``correct_fill`` of the ``FillCorrected`` payload ``d`` (its
    ``corrected_exec_id``, ``exec_id``, ``qty``, ``price``, ``previous_qty``, ``previous_price``)
    adds to the cash of position ``key``'s account and venue, before fees: minus the notional's
    difference (times the multiplier), or for a future the difference of its realised P&L, in the
    settlement currency (``settlement_cash``: None without a recorded rate). For planners that
    book corrections ahead of the fold, as reconciliation does (over the state as it is: not
    over fills planned in the same run)."""
    q0, p0 = Decimal(d["previous_qty"]), Decimal(d["previous_price"])
    q1, p1 = Decimal(d["qty"]), Decimal(d["price"])
    held = state.positions.get(key)
    spec = held.spec if held is not None else (state.instruments.get(key[2]) if state.instruments else None)
    notional = -sign * (q1 * p1 - q0 * p0)
    if spec is None:
        return ACCOUNT_CURRENCY, notional
    if not spec.is_future:
        return settlement_cash(state, spec, notional * spec.multiplier)
    if held is None:
        return spec.settlement_currency, ZERO
    replayed = _replay_correction(held, sign, d["corrected_exec_id"], d["exec_id"], q1, p1)
    if replayed is not None:
        _, undone, _, redone, _ = replayed
        return settlement_cash(state, spec, sum((r for _, r in redone), ZERO) - sum((r for _, r in undone), ZERO))
    qty, cost = held.qty + sign * (q1 - q0), held.cost + sign * (q1 * p1 - q0 * p0)
    return settlement_cash(state, spec, -cost * spec.multiplier if qty == 0 and cost else ZERO)


def fill_cash(state: TradingState, symbol: str, signed_qty: Decimal, price: Decimal) -> tuple[str, Decimal | None]:
    """(currency, amount) a fill of ``signed_qty`` at ``price`` pays as the fold books it, before
    fees: the notional in USD for a symbol not in the registry; notional x multiplier in the
    settlement currency for an instrument (``settlement_cash``: None without a recorded rate);
    zero for a future, whose cash moves by its realised P&L instead (for planners that book
    fills ahead of the fold, as reconciliation does)."""
    spec = state.instruments.get(symbol) if state.instruments else None
    if spec is None:
        return "USD", signed_qty * price
    return settlement_cash(state, spec, ZERO if spec.is_future else signed_qty * price * spec.multiplier)


def margin_cash(state: TradingState, spec: InstrumentSpec | None, currency: str, marked: Decimal,
                amount: Decimal) -> Decimal:
    """The cash a ``VariationMarginSettled`` of ``amount`` in ``currency`` moves, ``marked`` being
    the P&L of the open contracts from their last mark (fill or settlement) to the settlement
    price, in the instrument's quote currency: ``marked`` itself (in ``currency`` by the recorded
    rate when that is the settlement currency), since the fills since the last mark have moved
    the cash by what they realised already and the venue's figure may or may not include it;
    the venue's ``amount`` when no rate converts it."""
    if spec is None or currency == spec.quote_currency:
        return marked if currency == (ACCOUNT_CURRENCY if spec is None else spec.quote_currency) else amount
    if currency == spec.settlement_currency:
        converted = settlement_cash(state, spec, marked)[1]
        if converted is not None:
            return converted
    return amount


def pnl_rate_of(state: TradingState, spec: InstrumentSpec | None) -> Decimal | None:
    """The rate a realised P&L of ``spec``'s position goes into the day's statistics with (the
    account's currency, by the last recorded rate: ``instruments.instrument_rate``); None: counted
    as it is (no instrument, the account's currency, or no rate recorded)."""
    if spec is None or spec.quote_currency == ACCOUNT_CURRENCY:
        return None  # the hot path of a log without instruments: no lookup
    return instrument_rate(state.fx_rates, spec)


def settlement_cash(state: TradingState, spec: InstrumentSpec, amount: Decimal) -> tuple[str, Decimal | None]:
    """(currency, amount) that ``amount`` of ``spec``'s quote currency moves in cash: the
    instrument's settlement currency, converted at the last rate recorded (the fill's, when
    folded at the fill); (settlement currency, None) when no rate is recorded (never 1:1)."""
    currency = spec.settlement_currency
    if currency == spec.quote_currency or not amount:
        return currency, amount
    rate = instrument_rate(state.fx_rates, spec, currency)
    return currency, None if rate is None else amount * rate


def _move_settled(state: TradingState, account: AccountState, venue: str, spec: InstrumentSpec, amount: Decimal,
                  fee_currency: str, fee: Decimal) -> None:
    """``_move_cash`` of ``amount`` of ``spec``'s quote currency in its settlement currency
    (``settlement_cash``); without a recorded rate the amount is kept apart, unconverted
    (``AccountState.unconverted``), for reconciliation to say so: never moved 1:1."""
    currency, paid = settlement_cash(state, spec, amount)
    if paid is None:
        if account.cash:
            key = (venue, spec.quote_currency, currency)
            account.unconverted[key] = account.unconverted.get(key, ZERO) + amount
        paid = ZERO
    _move_cash(account, venue, currency, paid, fee_currency, fee)


def _money_terms(spec: InstrumentSpec | None) -> tuple[Decimal, str, bool]:
    """What a position's money is booked by: multiplier, quote currency, whether a future."""
    return (ONE, ACCOUNT_CURRENCY, False) if spec is None else (spec.multiplier, spec.quote_currency, spec.is_future)


def _move_cash(account: AccountState, venue: str, currency: str, amount: Decimal, fee_currency: str,
               fee: Decimal) -> None:
    """Add ``amount`` of ``currency`` and take ``fee`` of ``fee_currency`` from the account's cash
    and from its cash at ``venue``, each where a balance in that currency is on record (the
    account's with none at all: nothing moves, as ``book_fill``). Fills' corrections, fees and
    instrument fills all move both books alike, so that reconciliation at ``venue`` sees no drift."""
    if not account.cash:
        return
    for book in (account.cash, account.venue_cash.get(venue)):
        if book:
            if amount and currency in book:
                book[currency] += amount
            if fee and fee_currency in book:
                book[fee_currency] -= fee


def unreadable(type_name: str, stream_id: str, error: BaseException) -> str:
    """Why a row could not be folded, in words (for the quarantine of its stream)."""
    if isinstance(error, KeyError) and error.args and error.args[0] == stream_id:
        return f"{type_name} on {stream_id}, whose order has no intent or import before it"
    return f"{type_name} on {stream_id} cannot be folded ({type(error).__name__}: {error})"


class TradingState:
    """Everything the engine and the risk checks need, folded from the trading log.

    ``exec_ids`` maps venue -> execution id -> the order stream its fill is booked on: an
    execution id is unique per venue, so a second order claiming it is a discrepancy.
    ``exec_days`` maps an order stream in that index to the trading day of its last fill, in the
    order of those last fills (what a checkpoint keeps of the index is chosen by it)."""

    def __init__(self, exchange_tz: str = "America/New_York"):
        self.exchange_tz = exchange_tz
        self._tz = ZoneInfo(exchange_tz)
        self._day_cache: dict[str, str] = {}
        self.position = 0  # last applied global position
        self.stream_versions: dict[str, int] = {}
        self.orders: dict[str, OrderState] = {}
        self.positions: dict[tuple[str, str, str], PositionState] = {}
        self.accounts: dict[str, AccountState] = {}
        self.signals: dict[tuple[str, str], dict[str, Any]] = {}
        self.engines: dict[str, dict[str, Any]] = {}
        self.exec_ids: dict[str, dict[str, str]] = {}
        self.exec_days: dict[str, str] = {}
        # clock source -> its last ClockSkewRecorded: skew_ms, within_threshold, position, at
        self.clock_skews: dict[str, dict[str, Any]] = {}
        # gate id -> the GateEvaluated that requires an operator's approval (gate, engine_id,
        # account, values, detail, position, at); gate id -> its GateApproved (gate_id, operator,
        # reason, account, position, at)
        self.gates: dict[str, dict[str, Any]] = {}
        self.gate_approvals: dict[str, dict[str, Any]] = {}
        # symbol -> its instrument (the last ``InstrumentDefined``); (base, quote) -> the last
        # recorded FX rate. Both empty in a log without them: everything folds as it always did.
        self.instruments: dict[str, InstrumentSpec] = {}
        self.fx_rates: dict[tuple[str, str], Decimal] = {}
        # (symbol, action, effective_at as stored) -> where the corporate action was recorded
        self.corporate_actions: dict[tuple[str, str, str], int] = {}
        # (account, venue, venue_ref) -> where an ``OptionSettled`` naming the venue's activity was recorded
        self.option_settlements: dict[tuple[str, str, str], int] = {}
        # (account, venue, symbol, business date) -> where its ``VariationMarginSettled`` was recorded
        self.variation_margins: dict[tuple[str, str, str, str], int] = {}
        # symbol -> keys of its positions, for definitions and corporate actions after trading
        # (``_positions_in``); kept off the fill path: caught up when asked
        self._keys_by_symbol: dict[str, list[tuple[str, str, str]]] = {}
        self._keys_indexed: tuple[dict | None, int] = (None, 0)  # (the positions dict indexed, how many of it)
        self.applied = 0  # events applied (voids excluded)
        # stream id / account -> (position, reason): rows the fold could not apply; no decision
        # is taken on them (``domain.integrity.CorruptStream``), the rest of the log is folded
        self.quarantined_streams: dict[str, tuple[int, str]] = {}
        self.quarantined_accounts: dict[str, tuple[int, str]] = {}

    # --------------------------------------------------------------------------- helpers
    def trading_day(self, at: datetime) -> str:
        """The exchange-local date of ``at``, as ISO text."""
        return at.astimezone(self._tz).date().isoformat()

    def _trading_day_of(self, occurred_at: str | None, fallback: datetime) -> str:
        # Every UTC offset is a whole number of minutes, so the local date is constant within a
        # UTC minute: cache per minute of the stored UTC string (time-zone conversion costs more
        # than the rest of a fill).
        if occurred_at is None or occurred_at[-1] != "Z":
            return self.trading_day(_time(occurred_at, fallback))
        key = occurred_at[:16]
        day = self._day_cache.get(key)
        if day is None:
            if len(self._day_cache) > 100_000:
                self._day_cache.clear()
            day = self._day_cache[key] = self.trading_day(datetime.fromisoformat(occurred_at))
        return day

    def account(self, account: str) -> AccountState:
        """The account's state (created empty when first asked for)."""
        state = self.accounts.get(account)
        if state is None:
            state = self.accounts[account] = AccountState(account)
        return state

    def pending_gates(self, account: str | None = None) -> list[dict[str, Any]]:
        """The gates that wait for an operator's approval and hold ``account`` (gates without an
        account hold every account; ``account`` None: every pending gate)."""
        return [g for gid, g in self.gates.items() if gid not in self.gate_approvals
                and (account is None or g["account"] is None or g["account"] == account)]

    def position_of(self, account: str, venue: str, symbol: str) -> PositionState | None:
        """The position of account, venue and symbol, or None if it never traded."""
        return self.positions.get((account, venue, symbol))

    # ----------------------------------------------------------------------------- fold
    def apply(
        self,
        position: int,
        stream_id: str,
        version: int,
        type_name: str,
        data: dict[str, Any],
        recorded_at: datetime,
    ) -> None:
        """Fold one stored event (its JSON payload, upcast when older) at ``position``, which must
        be after the last one applied. A ``$void`` row only advances the position."""
        if position <= self.position:
            raise ValueError(f"event at position {position} applied after {self.position}")
        if type_name == VOID_TYPE:
            self.position = position
            return
        if data.get(SCHEMA_KEY, 1) != _CURRENT_VERSION[type_name]:
            data = upcast(type_name, data)
        if self.quarantined_streams and stream_id in self.quarantined_streams:
            self.stream_versions[stream_id] = version  # a stream already refused stays refused
            self.position = position
            return
        # The handler runs while ``position`` still names the last applied event: an order that
        # a restored checkpoint left in the log is brought back as of that point, then updated.
        try:
            _HANDLERS[type_name](self, stream_id, data, position, recorded_at)
        except (KeyError, TypeError, ValueError, ArithmeticError, AttributeError) as e:
            self.quarantine(stream_id, data, position, unreadable(type_name, stream_id, e))
        self.stream_versions[stream_id] = version
        self.applied += 1
        self.position = position

    def quarantine(self, stream_id: str, data: Any, position: int, reason: str) -> None:
        """Refuse every later decision on ``stream_id`` and on the account its payload names
        (when it names one), because the row at ``position`` could not be folded (``reason``)."""
        self.quarantined_streams.setdefault(stream_id, (position, reason))
        account = data.get("account") if isinstance(data, dict) else None
        if isinstance(account, str):
            self.quarantined_accounts.setdefault(account, (position, reason))

    # orders ---------------------------------------------------------------------------
    def _on_OrderIntentRecorded(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        order = OrderState(sid, d, pos, _time(d.get("occurred_at"), at))
        self.orders[sid] = order
        order.account_state = account = self.account(order.account)
        account.open_orders[sid] = order

    def _close(self, order: OrderState, status: str, pos: int, at: datetime) -> None:
        order.status = status
        order.positions["terminal"] = pos
        order.updated_at = at
        order.account_state.open_orders.pop(order.stream_id, None)  # type: ignore[union-attr]

    def _on_IntentRejectedByRisk(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        order = self.orders[sid]
        order.refusal = list(d["reasons"])
        order.refusal_detail = d.get("detail", "")
        self._close(order, "refused", pos, _time(d.get("occurred_at"), at))

    def _on_OrderSubmitted(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        order = self.orders[sid]
        order.positions["submitted"] = pos
        if order.status == "new":
            order.status = "submitted"
        order.updated_at = _time(d.get("occurred_at"), at)

    def _on_OrderAcknowledged(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        order = self.orders[sid]
        order.positions["ack"] = pos
        order.venue_order_id = d["venue_order_id"]
        if order.status in ("new", "submitted"):
            order.status = "acknowledged"
        order.updated_at = _time(d.get("occurred_at"), at)

    def _on_OrderRejected(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        self._close(self.orders[sid], "rejected", pos, _time(d.get("occurred_at"), at))

    def _on_OrderFilled(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        order = self.orders[sid]
        account: AccountState = order.account_state  # type: ignore[assignment]
        qty, price, fee, when = book_fill(self, account, order.position_key, order.sign, order.stream_id, d, at)
        order.executions[d["exec_id"]] = (qty, price, pos)
        order.filled_qty += qty
        order.fill_notional += qty * price
        order.fees += fee
        if fee:
            if order.exec_fees is None:
                order.exec_fees = {}
            order.exec_fees[d["exec_id"]] = fee
        if d.get("venue_order_id"):
            order.venue_order_id = d["venue_order_id"]
        is_open = order.status in OPEN_STATUSES
        if order.filled_qty >= order.qty:
            if is_open:
                self._close(order, "filled", pos, when)
        elif is_open:
            order.status = "partially_filled"
        order.updated_at = when

    def _on_FillCorrected(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        order = self.orders[sid]
        account: AccountState = order.account_state  # type: ignore[assignment]
        dq, dn, dfee = correct_fill(self, account, order.position_key, order.sign, sid, d, at)
        order.executions.pop(d["corrected_exec_id"], None)
        fee = (order.exec_fees or {}).pop(d["corrected_exec_id"], ZERO) + dfee
        if Decimal(d["qty"]):
            order.executions[d["exec_id"]] = (Decimal(d["qty"]), Decimal(d["price"]), pos)
            if fee:
                if order.exec_fees is None:
                    order.exec_fees = {}
                order.exec_fees[d["exec_id"]] = fee
        order.filled_qty += dq
        order.fill_notional += dn
        order.fees += dfee
        if d.get("venue_order_id"):
            order.venue_order_id = d["venue_order_id"]
        order.positions[f"correction:{pos}"] = pos
        order.updated_at = _time(d.get("occurred_at"), at)
        if order.status in OPEN_STATUSES:  # a finished order stays finished: the venue works it no more
            if order.filled_qty >= order.qty:
                self._close(order, "filled", pos, order.updated_at)
            elif order.filled_qty > 0:
                order.status = "partially_filled"
            elif order.status == "partially_filled":
                order.status = "acknowledged" if order.venue_order_id else "submitted"

    def _on_OrderCancelRequested(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        order = self.orders[sid]
        order.cancel_requested = True
        order.positions["cancel_requested"] = pos
        order.updated_at = _time(d.get("occurred_at"), at)

    def _on_OrderCancelled(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        self._close(self.orders[sid], "cancelled", pos, _time(d.get("occurred_at"), at))

    def _on_OrderReplaceRequested(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        order = self.orders[sid]
        if order.replaces is None:
            order.replaces = {}
        order.replaces[d["replace_id"]] = {"request": d, "position": pos, "status": "pending"}
        order.replace_pending = d["replace_id"]
        order.positions[f"replace_request:{pos}"] = pos
        order.updated_at = _time(d.get("occurred_at"), at)

    def _on_OrderReplaceRefused(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        order = self.orders[sid]
        entry = (order.replaces or {}).get(d["replace_id"])
        if entry is not None:
            entry.update(status="refused", refused_at=pos, by=d.get("by", "risk"), reasons=list(d["reasons"]),
                         detail=d.get("detail", ""))
        if order.replace_pending == d["replace_id"]:
            order.replace_pending = None
        order.positions[f"replace_refused:{pos}"] = pos
        order.updated_at = _time(d.get("occurred_at"), at)

    def _on_OrderReplaced(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        order = self.orders[sid]
        if order.replace_pending is not None:  # the venue's answer to the engine's amendment
            order.replaces[order.replace_pending]["status"] = "replaced"  # type: ignore[index]
            order.replace_pending = None
        order.qty = Decimal(d["qty"])
        order.limit_price = _dec(d.get("limit_price"))
        order.stop_price = _dec(d.get("stop_price"))
        if d.get("venue_order_id"):
            order.venue_order_id = d["venue_order_id"]
        order.cancel_requested = False
        order.positions[f"replace:{pos}"] = pos
        order.updated_at = _time(d.get("occurred_at"), at)
        if order.filled_qty >= order.qty and order.is_open:  # replaced down to what was filled
            self._close(order, "filled", pos, order.updated_at)

    def _on_OrderAdjusted(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        order = self.orders[sid]
        order.qty = Decimal(d["qty"])
        order.limit_price = _dec(d.get("limit_price"))
        order.stop_price = _dec(d.get("stop_price"))
        former = list(order.former_symbols)
        if d["symbol"] != order.symbol:  # a symbol change: its fills from here on book on the new symbol
            former.append(order.symbol)
            order.symbol = d["symbol"]
            order.position_key = (order.account, order.venue, order.symbol)
        order.adjusted = {"position": pos, "corporate_action": d["corporate_action"], "qty": d["qty"],
                          "limit_price": d.get("limit_price"), "stop_price": d.get("stop_price"),
                          "restated_qty": d.get("restated_qty"), "remaining_dropped": d.get("remaining_dropped", "0"),
                          **({"former_symbols": former} if former else {})}
        entry = (order.replaces or {}).get(d.get("replace_id") or "")
        if entry is not None:  # the pending amendment restated with its order: asked from here on in these terms
            entry.setdefault("asked", entry["request"])  # as first asked: its retry is the same amendment
            entry["request"] = {**entry["request"], "qty": d["replace_qty"], "limit_price": d.get("replace_limit_price"),
                                "stop_price": d.get("replace_stop_price")}
            entry["restated_qty"] = d.get("replace_restated_qty")
        order.positions[f"adjusted:{pos}"] = pos
        order.updated_at = _time(d.get("occurred_at"), at)
        if order.is_open and order.filled_qty >= order.qty:  # nothing whole left to work
            self._close(order, "cancelled", pos, order.updated_at)

    def _on_OrderExpired(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        self._close(self.orders[sid], "expired", pos, _time(d.get("occurred_at"), at))

    def _on_DiscrepancyRecorded(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        order = self.orders[sid]
        order.discrepancies += 1
        order.discrepancy_keys.setdefault(discrepancy_key(d), pos)
        if d.get("exec_id"):
            order.executions["!" + d["exec_id"]] = (Decimal(d["qty"]), Decimal(d["price"]), pos)
        order.positions[f"discrepancy:{pos}"] = pos
        self.account(order.account).discrepancies += 1

    def _on_OrderImported(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        order = OrderState(sid, d, pos, _time(d.get("occurred_at"), at))
        order.external = not d.get("parent_client_order_id")  # a leg of ours is not external
        order.venue_order_id = d["venue_order_id"]
        order.status = "acknowledged"  # its fills and terminal state follow as their own events
        self.orders[sid] = order
        order.account_state = account = self.account(order.account)
        account.open_orders[sid] = order

    # account --------------------------------------------------------------------------
    def _on_RiskCheckPassed(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        self.account(d["account"]).day(d["trading_day"]).trades += 1

    def _on_RiskLimitChanged(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        acct = self.account(d["account"])
        value = _dec(d.get("value"))
        if d.get("symbol"):
            target, key = acct.symbol_position_limits, d["symbol"]
        else:
            target, key = acct.limits, d["limit"]
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value

    def _on_CircuitBreakerTripped(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        acct = self.account(d["account"])
        acct.breaker_tripped = True
        acct.breaker_trips += 1
        acct.breaker_reason = d["reason"]
        acct.breaker_until = _time(d.get("until"), at) if d.get("until") else None

    def _on_CircuitBreakerReset(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        acct = self.account(d["account"])
        acct.breaker_tripped = False
        acct.breaker_reason = ""
        acct.breaker_until = None

    def _on_KillSwitchEngaged(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        acct = self.account(d["account"])
        acct.kill_switch = True
        acct.kill_switch_reason = d["reason"]

    def _on_KillSwitchReleased(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        acct = self.account(d["account"])
        acct.kill_switch = False
        acct.kill_switch_reason = ""

    def _on_DailyLimitBreached(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        self.account(d["account"]).day(d["trading_day"]).breaches.add(d["limit"])

    def _on_TradingResumed(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        acct = self.account(d["account"])
        acct.ramp_pct = int(d["ramp_pct"])
        self._ramp_restarts(acct, d, at)

    @staticmethod
    def _ramp_restarts(acct: AccountState, d: dict, at: datetime, held: str = "") -> None:
        acct.ramp_since = _time(d.get("occurred_at"), at)
        acct.ramp_baseline = (acct.discrepancies, acct.breaker_trips)
        acct.ramp_held = held

    def _on_RampStepped(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        acct = self.account(d["account"])
        acct.ramp_pct = int(d["to_pct"])
        self._ramp_restarts(acct, d, at)

    def _on_RampHeld(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        self._ramp_restarts(self.account(d["account"]), d, at, held=d["reason"] or "held")

    def _on_RampHealthy(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        self._ramp_restarts(self.account(d["account"]), d, at)

    def _on_TradingModeChanged(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        acct = self.account(d["account"])
        acct.mode = d["mode"]
        acct.mode_reason = d.get("reason") or ""

    def _on_PositionCorrected(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        key = (d["account"], d["venue"], d["symbol"])
        held = self.positions.get(key)
        if held is None:
            held = self.positions[key] = PositionState(*key, self.instruments.get(key[2]) if self.instruments else None)
        qty = Decimal(d["qty_after"])
        price = _dec(d.get("avg_cost"))
        if price is None:
            price = held.avg_cost if held.qty else (held.last_price or ZERO)
        held.qty = qty
        held.cost = qty * price
        held.journal = None  # its fills no longer explain it: a later correction cannot replay them
        held.updated_at = _time(d.get("occurred_at"), at)

    def _on_FeeCharged(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        acct = self.account(d["account"])
        if d["fee_id"] in acct.fee_ids:
            return  # posted once: the same fee seen again changes nothing
        acct.fee_ids[d["fee_id"]] = pos
        if d.get("exec_id"):
            acct.fees_pending.pop(d["exec_id"], None)
        amount = Decimal(d["amount"])
        # on an order's stream: the order's fees too (None in the cold fold, which builds the order
        # from its rows, this one among them)
        order = self.orders.get(sid) if sid.startswith("order-") else None
        if order is not None and not d.get("in_kind"):
            order.fees += amount
            if d.get("exec_id"):
                fees = order.exec_fees = order.exec_fees or {}
                fees[d["exec_id"]] = fees.get(d["exec_id"], ZERO) + amount
            order.positions[f"fee:{pos}"] = pos
            order.updated_at = _time(d.get("occurred_at"), at)
        when = _time(d.get("occurred_at"), at)
        held = None
        if d.get("symbol"):
            key = (d["account"], d["venue"], d["symbol"])
            held = self.positions.get(key)
            if held is None:
                held = self.positions[key] = PositionState(*key, self.instruments.get(key[2]) if self.instruments
                                                          else None)
            held.updated_at = when
        if d.get("in_kind"):  # paid in the asset: fewer units, same cost basis
            # ``amount`` is in units of the asset; a position counts contracts of ``multiplier`` units
            held.qty -= amount if held.spec is None else amount / held.spec.multiplier  # type: ignore[union-attr]
            held.journal = None  # type: ignore[union-attr]  # its fills no longer explain it
            return
        if held is not None:
            held.fees += amount
        acct.day(self._trading_day_of(d.get("occurred_at"), when)).fees += amount
        # the fee's own currency (not multiplied: an amount of money), at the account and at its venue
        _move_cash(acct, d["venue"], d["currency"], ZERO, d["currency"], amount)

    def _on_CashBalanceRecorded(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        acct = self.account(d["account"])
        acct.cash[d["currency"]] = balance = Decimal(d["balance"])
        acct.venue_cash.setdefault(d["venue"], {})[d["currency"]] = balance
        if acct.unconverted:  # the venue's balance holds what could not be converted
            for key in [k for k in acct.unconverted if k[0] == d["venue"] and k[2] == d["currency"]]:
                del acct.unconverted[key]

    def _on_ReconciliationCompleted(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        self.account(d["account"]).last_reconciliation = {
            "reconciliation_id": d["reconciliation_id"],
            "broker": d["broker"],
            "status": d["status"],
            "discrepancies": len(d.get("discrepancies") or ()),
            "corrective_events": len(d.get("corrective_event_ids") or ()),
            "at": _time(d.get("occurred_at"), at),
            "position": pos,
        }

    def _on_TradingBlocked(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        acct = self.account(d["account"])
        acct.blocked = True
        acct.blocked_reason = d["reason"]

    def _on_DiscrepancyAcknowledged(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        acct = self.account(d["account"])
        acct.blocked = False
        acct.blocked_reason = ""

    def _on_DrillCompleted(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        pass  # an operational record (``/health`` reads it from the drill stream): no trading state

    # gates ------------------------------------------------------------------------------
    def _on_GateApproved(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        self.gate_approvals[d["gate_id"]] = {
            "gate_id": d["gate_id"],
            "operator": d["operator"],
            "reason": d["reason"],
            "account": d.get("account"),
            "position": pos,
            "at": _time(d.get("occurred_at"), at),
        }

    # strategy and engine ------------------------------------------------------------------
    def _on_SignalRecorded(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        self.signals[(d["strategy_id"], d["symbol"])] = {
            "strategy_id": d["strategy_id"],
            "symbol": d["symbol"],
            "signal": d["signal"],
            "value": _dec(d.get("value")),
            "attributes": d.get("attributes") or {},
            "at": _time(d.get("occurred_at"), at),
            "position": pos,
        }

    def _on_EngineStarted(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        previous = self.engines.get(d["engine_id"])
        crashed = bool(previous and previous["running"])
        self.engines[d["engine_id"]] = {
            "running": True,
            "started_at": at,
            "start_position": pos,
            "previous_run_crashed": crashed,
        }

    def _on_EngineStopped(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        engine = self.engines.setdefault(d["engine_id"], {"previous_run_crashed": False})
        engine["running"] = False
        engine["stopped_at"] = at

    def _on_RecoveryCompleted(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        engine = self.engines.setdefault(d["engine_id"], {"running": False, "previous_run_crashed": False})
        engine["last_recovery"] = {"ready": d["ready"], "position": pos, "at": at,
                                   "discrepancies": d.get("discrepancies", 0)}

    def _on_ShutdownCompleted(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        engine = self.engines.setdefault(d["engine_id"], {"running": False, "previous_run_crashed": False})
        engine["last_shutdown"] = {"kind": d["kind"], "policy": d["policy"], "position": pos,
                                   "checkpoint_position": d.get("checkpoint_position")}

    def _on_AccountBootstrapped(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        self.account(d["account"])  # the opening events beside it carry the state

    def _lease(self, d: dict, pos: int, state: str) -> None:
        engine = self.engines.setdefault(d["engine_id"], {"running": False, "previous_run_crashed": False})
        engine.update(epoch=d["epoch"], holder=d["holder"], lease=state, lease_position=pos)

    def _on_LeaseAcquired(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        self._lease(d, pos, "active")

    def _on_LeaseReleased(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        self._lease(d, pos, "released")
        self.engines[d["engine_id"]]["running"] = False

    def _on_LeaseExpired(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        self._lease(d, pos, "expired")

    # gates ------------------------------------------------------------------------------
    def _on_GateEvaluated(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        if d.get("requires_approval"):
            self.gates[d["gate_id"]] = {
                "gate_id": d["gate_id"], "gate": d["gate"], "engine_id": d["engine_id"],
                "account": d.get("account"), "values": d.get("values") or {}, "detail": d.get("detail") or "",
                "position": pos, "at": _time(d.get("occurred_at"), at),
            }

    # instruments and currencies -----------------------------------------------------------
    def _positions_in(self, symbol: str) -> list[tuple[tuple[str, str, str], PositionState]]:
        """The positions in ``symbol`` (every account and venue), by an index of position keys per
        symbol. Positions are only ever added, in insertion order, so the index catches up with
        the newest ones only (``reversed``): the fill path never pays for it, and a definition
        costs the positions opened since the last look plus its symbol's, not the whole book."""
        positions = self.positions
        by_symbol = self._keys_by_symbol
        indexed_of, indexed = self._keys_indexed
        if indexed_of is not positions or indexed > len(positions):  # another dict (a copy, a restore): afresh
            by_symbol.clear()
            indexed = 0
        if indexed < len(positions):
            for key in reversed(list(islice(reversed(positions), len(positions) - indexed))):  # in their order
                by_symbol.setdefault(key[2], []).append(key)
            self._keys_indexed = (positions, len(positions))
        return [(key, positions[key]) for key in by_symbol.get(symbol, ())]

    def _on_InstrumentDefined(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        spec = self.instruments[d["symbol"]] = InstrumentSpec.from_payload(d, pos)
        # A definition after trading: the symbol's positions count by it from here on.
        for _key, held in self._positions_in(spec.symbol):
            if _money_terms(held.spec) != _money_terms(spec):
                held.journal = None  # its fills were booked on other terms: not to be folded again on these
            held.spec = spec

    def _on_FxRateRecorded(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        self.fx_rates[(d["base"], d["quote"])] = Decimal(d["rate"])

    def _on_CorporateActionRecorded(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        symbol = d["symbol"]
        self.corporate_actions[(symbol, d["action"], d["effective_at"])] = pos
        held_here = self._positions_in(symbol)
        if d["action"] == "split":
            old, new = Decimal(d["ratio_from"]), Decimal(d["ratio_to"])
            for _key, held in held_here:  # the cost basis stays: the average cost follows the quantity
                held.qty = held.qty * new / old
                if held.last_price is not None:
                    held.last_price = held.last_price * old / new
                held.journal = None  # its fills (pre-split quantities) no longer explain it
            return
        renamed = d["new_symbol"]
        for (account, venue, _symbol), held in held_here:
            key = (account, venue, renamed)
            moved = self.positions.get(key)
            if moved is None:
                moved = self.positions[key] = PositionState(*key, self.instruments.get(renamed) if self.instruments
                                                            else None)
            moved.qty += held.qty
            moved.cost += held.cost
            moved.last_price = held.last_price if moved.last_price is None else moved.last_price
            moved.updated_at = held.updated_at
            held.qty = held.cost = ZERO  # the old symbol's position stays, flat, with its history
            held.journal = moved.journal = None  # neither one's fills explain it any more
        spec = self.instruments.get(symbol)
        if spec is not None and renamed not in self.instruments:
            self.instruments[renamed] = spec = replace(spec, symbol=renamed)
            for _key, held in self._positions_in(renamed):
                held.spec = spec

    def _on_OptionSettled(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        account, venue, symbol = d["account"], d["venue"], d["symbol"]
        if d.get("venue_ref"):
            self.option_settlements[(account, venue, d["venue_ref"])] = pos
        acct = self.account(account)
        when = _time(d.get("occurred_at"), at)
        qty = Decimal(d["qty"])
        spec = self.instruments.get(symbol)
        action = d["action"]
        long_side = action == "exercise" or (action == "expiry" and self._held(account, venue, symbol) > 0)
        # the option leg: long contracts sold at 0, short ones bought back at 0 (premium realised)
        self._settle_leg(acct, (account, venue, symbol), -qty if long_side else qty, ZERO, when)
        if action == "expiry":
            return
        # the underlying: a long call or a short put buys it at the strike, the others sell it
        buys = (d["action"] == "exercise") == (spec.right == "call")  # type: ignore[union-attr]
        delivered = qty * spec.multiplier  # type: ignore[union-attr]
        self._settle_leg(acct, (account, venue, spec.underlying), delivered if buys else -delivered,  # type: ignore[union-attr,arg-type]
                         spec.strike, when, cash_spec=spec)  # type: ignore[union-attr,arg-type]

    def _on_VariationMarginSettled(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        account, venue, symbol, day = d["account"], d["venue"], d["symbol"], d["business_date"]
        self.variation_margins[(account, venue, symbol, day)] = pos
        acct = self.account(account)
        key = (account, venue, symbol)
        held = self.positions.get(key)
        if held is None:
            held = self.positions[key] = PositionState(*key, self.instruments.get(symbol) if self.instruments else None)
        price = Decimal(d["settlement_price"])
        # the P&L since the last mark (the fills' prices or the last settlement) is realised by the
        # settlement, and the cost basis re-based to its price: the close realises only what follows
        realized = (price * held.qty - held.cost) * held.multiplier
        held.cost = held.qty * price
        held.last_price = price
        held.realized_pnl += realized
        held.journal = None  # moved by no fill: its fills no longer explain its cost basis
        held.updated_at = _time(d.get("occurred_at"), at)
        if realized:
            rate = pnl_rate_of(self, held.spec)
            acct.day(day).realized_pnl += realized if rate is None else realized * rate
        paid = margin_cash(self, held.spec, d["currency"], realized, Decimal(d["amount"]))
        _move_cash(acct, venue, d["currency"], paid, d["currency"], ZERO)

    def _held(self, account: str, venue: str, symbol: str) -> Decimal:
        held = self.positions.get((account, venue, symbol))
        return held.qty if held is not None else ZERO

    def _settle_leg(self, acct: AccountState, key: tuple[str, str, str], signed_qty: Decimal, price: Decimal,
                    when: datetime, cash_spec: InstrumentSpec | None = None) -> None:
        """A position moved by a settlement, not a fill: realised P&L to the day (in the account's
        currency), cash by the notional, in the settlement currency of ``cash_spec`` (the
        instrument whose terms the delivery follows; default the position's own; none: USD)."""
        held = self.positions.get(key)
        if held is None:
            held = self.positions[key] = PositionState(*key, self.instruments.get(key[2]) if self.instruments else None)
        realized = held.apply_fill(signed_qty, price)
        held.updated_at = when
        held.journal = None  # moved by no fill: a later correction cannot fold its fills again
        if realized:
            rate = pnl_rate_of(self, held.spec)
            acct.day(self.trading_day(when)).realized_pnl += realized if rate is None else realized * rate
        paid = signed_qty * price * held.multiplier
        if paid:
            spec = cash_spec or held.spec
            if spec is None:
                _move_cash(acct, key[1], ACCOUNT_CURRENCY, -paid, ACCOUNT_CURRENCY, ZERO)
            else:
                _move_settled(self, acct, key[1], spec, -paid, ACCOUNT_CURRENCY, ZERO)

    def instrument(self, symbol: str) -> InstrumentSpec | None:
        """The registry's entry for ``symbol`` (None: not defined, today's behaviour)."""
        return self.instruments.get(symbol)

    # clock ------------------------------------------------------------------------------
    def _on_ClockSkewRecorded(self, sid: str, d: dict, pos: int, at: datetime) -> None:
        self.clock_skews[d["source"]] = {
            "skew_ms": Decimal(d["skew_ms"]),
            "within_threshold": d["within_threshold"],
            "position": pos,
            "at": at,
        }

    # --------------------------------------------------------------------------- views
    def summary(self) -> dict[str, Any]:
        """A plain, comparable picture of the state (used by tests and the demo)."""
        orders = dict(self.orders.items())  # a restored state brings its finished orders back first
        return {
            "position": self.position,
            "orders": {sid: o.as_dict() for sid, o in sorted(orders.items())},
            "positions": {
                "|".join(k): p.as_dict() for k, p in sorted(self.positions.items())
            },
            "accounts": {
                name: {
                    "limits": dict(sorted(a.limits.items())),
                    "symbol_position_limits": dict(sorted(a.symbol_position_limits.items())),
                    "breaker_tripped": a.breaker_tripped,
                    "breaker_reason": a.breaker_reason,
                    "breaker_until": a.breaker_until,
                    "kill_switch": a.kill_switch,
                    "ramp_pct": a.ramp_pct,
                    "open_orders": sorted(a.open_orders),
                    "discrepancies": a.discrepancies,
                    "cash": dict(sorted(a.cash.items())),
                    # only where it says more than ``cash``: cash recorded at two venues or more
                    **({"venue_cash": {v: dict(sorted(c.items())) for v, c in sorted(a.venue_cash.items())}}
                       if len(a.venue_cash) > 1 else {}),
                    "blocked": a.blocked,
                    "blocked_reason": a.blocked_reason,
                    "last_reconciliation": a.last_reconciliation,
                    "mode": a.mode,
                    "breaker_trips": a.breaker_trips,
                    "ramp": (a.ramp_since, a.ramp_baseline, a.ramp_held),
                    **({"fees_pending": dict(sorted(a.fees_pending.items())), "fee_ids": sorted(a.fee_ids)}
                       if a.fees_pending or a.fee_ids else {}),
                    **({"unconverted": {"|".join(k): v for k, v in sorted(a.unconverted.items())}}
                       if a.unconverted else {}),
                    "daily": {
                        day: (s.trades, s.fills, s.volume, s.realized_pnl, s.fees, sorted(s.breaches))
                        for day, s in sorted(a.daily.items())
                    },
                }
                for name, a in sorted(self.accounts.items())
            },
            "signals": {"|".join(k): v for k, v in sorted(self.signals.items())},
            "engines": dict(sorted(self.engines.items())),
            **({"gates": dict(sorted(self.gates.items())), "gate_approvals": dict(sorted(self.gate_approvals.items()))}
               if self.gates or self.gate_approvals else {}),
            **({"instruments": {sym: spec.as_dict() for sym, spec in sorted(self.instruments.items())},
                "fx_rates": {"/".join(k): v for k, v in sorted(self.fx_rates.items())}}
               if self.instruments or self.fx_rates else {}),
            **({"corporate_actions": {"|".join(k): v for k, v in sorted(self.corporate_actions.items())}}
               if self.corporate_actions else {}),
            **({"option_settlements": {"|".join(k): v for k, v in sorted(self.option_settlements.items())}}
               if self.option_settlements else {}),
            **({"variation_margins": {"|".join(k): v for k, v in sorted(self.variation_margins.items())}}
               if self.variation_margins else {}),
            "stream_versions": dict(sorted(self.stream_versions.items())),
            **({"quarantined": {"streams": dict(sorted(self.quarantined_streams.items())),
                                "accounts": dict(sorted(self.quarantined_accounts.items()))}}
               if self.quarantined_streams or self.quarantined_accounts else {}),
        }


# event type -> its fold step: one table for every state (a table of bound methods per state cost
# ~10 us to build and made each state a reference cycle: the cold fold builds a scratch state per
# open order)
_HANDLERS: dict[str, Any] = {name: getattr(TradingState, "_on_" + name) for name in EVENT_TYPES if name != "BarRecorded"}

__all__ = [
    "AccountState",
    "DailyStats",
    "OrderState",
    "PositionState",
    "TradingState",
    "OPEN_STATUSES",
    "TERMINAL_STATUSES",
    "VOID_TYPE",
    "book_fill",
    "correct_fill",
    "correction_cash",
    "discrepancy_key",
    "fill_cash",
    "margin_cash",
    "pnl_rate_of",
    "settlement_cash",
    "unreadable",
]
