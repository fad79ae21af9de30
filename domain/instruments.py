"""Instruments and currencies: the registry's entries, the checks an intent passes against its
instrument, and money across currencies from recorded FX rates.

An instrument is defined in the log (``InstrumentDefined``, on the stream ``instrument-<symbol>``);
a later definition of the same symbol supersedes the earlier one from its position on. A symbol
with no definition keeps the behaviour every log had before instruments existed: multiplier 1,
prices in the account's currency (``ACCOUNT_CURRENCY``), any tick, lot and fraction.

FX rates are market facts recorded in the log (``FxRateRecorded``), never fetched: a conversion
uses the last rate recorded before the point of the log it is made at, or says it has none.

Pure: no I/O; ``now`` is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

# The currency of every amount of a log without instruments (cash, P&L, notional limits).
ACCOUNT_CURRENCY = "USD"
ONE = Decimal(1)

ASSET_CLASSES = ("equity", "etf", "future", "option", "fx", "crypto")
DERIVATIVES = frozenset({"future", "option"})

# Refusal reason codes of the instrument checks (``IntentRejectedByRisk.reasons``).
OFF_TICK = "instrument_off_tick"
LOT_SIZE = "instrument_lot_size"
FRACTIONAL_QTY = "instrument_fractional_qty"
EXPIRED = "instrument_expired"
NO_FX_RATE = "no_fx_rate"


@dataclass(frozen=True, slots=True)
class InstrumentSpec:
    """One instrument as the fold keeps it (the payload of its last ``InstrumentDefined``).

    ``tick_size`` / ``lot_size`` None: any price / any quantity; ``position``: where the
    definition was recorded."""

    symbol: str
    asset_class: str
    multiplier: Decimal
    quote_currency: str
    settlement_currency: str
    tick_size: Decimal | None
    lot_size: Decimal | None
    fractional: bool
    expiry: datetime | None
    underlying: str | None
    strike: Decimal | None
    right: str | None
    position: int

    @classmethod
    def from_payload(cls, d: dict[str, Any], position: int) -> InstrumentSpec:
        """From a stored ``InstrumentDefined`` payload (validated when it was recorded)."""
        expiry = d.get("expiry")
        quote = d.get("quote_currency") or ACCOUNT_CURRENCY
        multiplier, tick, lot, strike = d.get("multiplier") or 1, d.get("tick_size"), d.get("lot_size"), d.get("strike")
        known = _DECIMALS.get  # most definitions share their few amounts ("1", "0.01", "100")
        return _spec(cls, d["symbol"], d["asset_class"], known(multiplier) or _dec(multiplier), quote,
                     d.get("settlement_currency") or quote, known(tick) or _dec(tick), known(lot) or _dec(lot),
                     bool(d.get("fractional", False)),
                     datetime.fromisoformat(expiry.replace("Z", "+00:00")) if expiry else None,
                     d.get("underlying"), known(strike) or _dec(strike), d.get("right"), position)

    @property
    def is_future(self) -> bool:
        """Futures settle their P&L (variation margin), not their notional."""
        return self.asset_class == "future"

    def to_doc(self) -> dict[str, Any]:
        """The stored (JSON) form ``from_payload`` reads back, with ``position``: for checkpoints."""
        return {
            "symbol": self.symbol, "asset_class": self.asset_class, "multiplier": str(self.multiplier),
            "quote_currency": self.quote_currency, "settlement_currency": self.settlement_currency,
            "tick_size": _s(self.tick_size), "lot_size": _s(self.lot_size), "fractional": self.fractional,
            "expiry": self.expiry.isoformat() if self.expiry else None, "underlying": self.underlying,
            "strike": _s(self.strike), "right": self.right, "position": self.position,
        }

    def as_dict(self) -> dict[str, Any]:
        """A plain picture for queries and tests."""
        return {
            "symbol": self.symbol, "asset_class": self.asset_class, "multiplier": self.multiplier,
            "quote_currency": self.quote_currency, "settlement_currency": self.settlement_currency,
            "tick_size": self.tick_size, "lot_size": self.lot_size, "fractional": self.fractional,
            "expiry": self.expiry, "underlying": self.underlying, "strike": self.strike, "right": self.right,
            "position": self.position,
        }


_DECIMALS: dict[str, Decimal] = {}  # stored text -> its Decimal (immutable: sharing one is the same value)
_DECIMALS_KEPT = 65_536


def _dec(value: Any) -> Decimal | None:
    if value is None:
        return None
    if value.__class__ is not str:
        return Decimal(value)
    number = _DECIMALS.get(value)
    if number is None:
        if len(_DECIMALS) >= _DECIMALS_KEPT:
            _DECIMALS.clear()
        number = _DECIMALS[value] = Decimal(value)
    return number


# A frozen dataclass's ``__init__`` pays one ``object.__setattr__`` per field (seven times a plain
# class's): a registry of 10,000 instruments folded from the log paid most of its fold there.
# ``_spec`` sets the slots through their descriptors instead: the same instance, the same checks.
_new = object.__new__
_FIELDS = ("symbol", "asset_class", "multiplier", "quote_currency", "settlement_currency", "tick_size", "lot_size",
           "fractional", "expiry", "underlying", "strike", "right", "position")
assert set(_FIELDS) == set(InstrumentSpec.__slots__), "a new field of InstrumentSpec goes into _spec too"
(_symbol, _asset_class, _multiplier, _quote, _settlement, _tick, _lot, _fractional, _expiry, _underlying, _strike,
 _right, _position) = (getattr(InstrumentSpec, name).__set__ for name in _FIELDS)


def _spec(cls: type[InstrumentSpec], symbol: str, asset_class: str, multiplier: Decimal, quote: str,
          settlement: str, tick: Decimal | None, lot: Decimal | None, fractional: bool, expiry: datetime | None,
          underlying: str | None, strike: Decimal | None, right: str | None, position: int) -> InstrumentSpec:
    """``cls(...)`` of these fields in their order, without the frozen ``__init__``'s cost."""
    spec = _new(cls)
    _symbol(spec, symbol)
    _asset_class(spec, asset_class)
    _multiplier(spec, multiplier)
    _quote(spec, quote)
    _settlement(spec, settlement)
    _tick(spec, tick)
    _lot(spec, lot)
    _fractional(spec, fractional)
    _expiry(spec, expiry)
    _underlying(spec, underlying)
    _strike(spec, strike)
    _right(spec, right)
    _position(spec, position)
    return spec


def _s(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _multiple(value: Decimal, step: Decimal) -> bool:
    return value % step == 0


def intent_refusals(spec: InstrumentSpec, qty: Decimal, prices: list[Decimal], now: datetime) -> list[tuple[str, str]]:
    """(reason code, detail) of every way an intent of ``qty`` at ``prices`` (its limit and stop
    prices, those given) breaks its instrument at ``now``: a price off the tick grid, a quantity
    not a multiple of the lot, a fraction where none is allowed, a derivative at or past its
    expiry. Empty: the instrument allows it."""
    out: list[tuple[str, str]] = []
    if spec.tick_size is not None:
        off = [p for p in prices if not _multiple(p, spec.tick_size)]
        if off:
            out.append((OFF_TICK, f"{spec.symbol}: price {off[0]} is not on the tick grid of {spec.tick_size}"))
    if not spec.fractional and qty != qty.to_integral_value():
        out.append((FRACTIONAL_QTY, f"{spec.symbol}: qty {qty} is fractional and the instrument allows whole units"))
    if spec.lot_size is not None and not _multiple(qty, spec.lot_size):
        out.append((LOT_SIZE, f"{spec.symbol}: qty {qty} is not a multiple of the lot size {spec.lot_size}"))
    if spec.expiry is not None and now >= spec.expiry:
        out.append((EXPIRED, f"{spec.symbol} expired at {spec.expiry.isoformat()}"))
    return out


# The splits reconciliation recognises in a position difference: forward (new shares per old:
# 2-for-1, 3-for-2...) and reverse (1-for-N). Others (5-for-4 is 0.8 one way) look too much like
# a missed fill to be proposed as a split.
FORWARD_SPLITS = tuple(Decimal(r) for r in ("2", "3", "4", "5", "10", "20", "1.5"))
REVERSE_SPLITS = tuple(Decimal(n) for n in ("2", "3", "4", "5", "8", "10", "15", "20", "25", "50", "100"))


def split_ratio(ours: Decimal, theirs: Decimal, our_avg_cost: Decimal | None = None,
                their_avg_cost: Decimal | None = None) -> Decimal | None:
    """The split (new shares per old, < 1 for a reverse split) that would turn our position
    ``ours`` into the venue's ``theirs``: a common one (``FORWARD_SPLITS``, or 1 /
    ``REVERSE_SPLITS``) whose footprint is in both numbers, the quantity times the ratio and the
    venue's average cost ours divided by it (within 1 %). Else None: a plain difference (without
    both average costs, a difference is never taken for a split: a missed fill can double a
    position too)."""
    if not ours or not theirs or (ours > 0) != (theirs > 0) or not our_avg_cost or not their_avg_cost:
        return None
    ratio = theirs / ours
    if ratio not in FORWARD_SPLITS and not any(ratio * n == 1 for n in REVERSE_SPLITS):
        return None
    if abs(their_avg_cost * ratio - our_avg_cost) > our_avg_cost / 100:
        return None
    return ratio


PLACES = Decimal(1).scaleb(-12)  # events refuse more than 12 decimal places


@dataclass(frozen=True, slots=True)
class SplitOrder:
    """An open order's working part restated by a split: the new remaining quantity, what of it
    could not be kept (a fraction of a whole-unit instrument, a part of a lot, digits past the
    12th place), and the new limit and stop prices."""

    remaining: Decimal
    dropped: Decimal
    limit_price: Decimal | None
    stop_price: Decimal | None


def _round_price(price: Decimal, step: Decimal, up: bool) -> Decimal:
    steps = (price / step).to_integral_value(rounding=ROUND_CEILING if up else ROUND_FLOOR)
    return max(steps, ONE) * step  # a price stays positive: at least one step


def split_order(spec: InstrumentSpec | None, sign: int, remaining: Decimal, limit_price: Decimal | None,
                stop_price: Decimal | None, ratio_from: Decimal, ratio_to: Decimal) -> SplitOrder:
    """The working part of an open order (``sign`` 1 buys, -1 sells) after a split of
    ``ratio_from`` -> ``ratio_to``: ``remaining`` times to / from, rounded down to what the
    instrument trades (whole units unless fractional, a multiple of its lot; an instrument not in
    the registry: 12 places); prices times from / to, on the instrument's tick grid (else 12
    places), rounded never more aggressive: a buy limit and a sell stop down, a sell limit and a
    buy stop up. Exact (nothing dropped, prices unrounded) whenever the numbers allow it, so the
    working notional (remaining x price) is kept."""
    exact = remaining * ratio_to / ratio_from
    step = PLACES
    if spec is not None:
        if spec.lot_size is not None:
            step = spec.lot_size
        elif not spec.fractional:
            step = ONE
    kept = (exact / step).to_integral_value(rounding=ROUND_FLOOR) * step
    tick = spec.tick_size if spec is not None and spec.tick_size is not None else PLACES

    def restated(price: Decimal | None, up: bool) -> Decimal | None:
        if price is None:
            return None
        value = price * ratio_from / ratio_to
        return tidy(value if value % tick == 0 else _round_price(value, tick, up))

    return SplitOrder(tidy(kept), tidy((exact - kept).quantize(PLACES)), restated(limit_price, sign < 0),
                      restated(stop_price, sign > 0))


def tidy(value: Decimal) -> Decimal:
    """``value`` without trailing zeros, never in exponent form (120.000 -> 120, not 1.2E+2)."""
    value = value.normalize()
    return value.quantize(ONE) if value.as_tuple().exponent > 0 else value  # type: ignore[operator]


def fx_rate(rates: dict[tuple[str, str], Decimal], base: str, quote: str) -> Decimal | None:
    """How many ``quote`` one ``base`` is worth by the recorded rates (``rates``: (base, quote) ->
    the last rate recorded): the pair's rate, else the inverse of the opposite pair's, else None.
    The same currency is 1."""
    if base == quote:
        return ONE
    rate = rates.get((base, quote))
    if rate is not None:
        return rate
    inverse = rates.get((quote, base))
    return ONE / inverse if inverse is not None else None


def instrument_rate(rates: dict[tuple[str, str], Decimal], spec: InstrumentSpec | None, to: str = ACCOUNT_CURRENCY,
                    ) -> Decimal | None:
    """How many ``to`` one unit of ``spec``'s money (its quote currency; without an instrument,
    the account's) is worth by the last recorded rates: 1 when already in ``to``, None when no
    rate is recorded. The one lookup behind the day's P&L, notional limits, exposure, the
    reporting view and a fill's cash in its settlement currency."""
    return fx_rate(rates, ACCOUNT_CURRENCY if spec is None else spec.quote_currency, to)


def convert(rates: dict[tuple[str, str], Decimal], amount: Decimal, currency: str, to: str) -> Decimal | None:
    """``amount`` of ``currency`` in ``to`` by the recorded rates (None: no rate recorded)."""
    rate = fx_rate(rates, currency, to)
    return None if rate is None else amount * rate


def reporting_view(state: Any, currency: str = ACCOUNT_CURRENCY, account: str | None = None) -> dict[str, Any]:
    """Positions and P&L of ``state`` (a ``TradingState``) in their instrument's currency and in
    ``currency``, by the last recorded FX rates: ``positions`` (one row each: quantity,
    multiplier, currency, market value, realised and unrealised P&L, both ways; the converted
    ones None without a rate), ``totals`` in ``currency`` of what could be converted, and
    ``missing_rates`` (the currencies that could not be)."""
    rates = state.fx_rates
    rows = []
    realized = unrealized = market_value = Decimal(0)
    missing: set[str] = set()
    for (acct, venue, symbol), p in sorted(state.positions.items()):
        if account is not None and acct != account:
            continue
        own = p.currency or ACCOUNT_CURRENCY
        rate = instrument_rate(rates, p.spec, currency)
        price = p.last_price if p.last_price is not None else p.avg_cost
        value = p.qty * price * p.multiplier
        row = {
            "account": acct, "venue": venue, "symbol": symbol, "qty": p.qty, "multiplier": p.multiplier,
            "currency": own, "market_value": value, "realized_pnl": p.realized_pnl,
            "unrealized_pnl": p.unrealized_pnl, "fx_rate": rate,
            "reporting": None if rate is None else {
                "market_value": value * rate, "realized_pnl": p.realized_pnl * rate,
                "unrealized_pnl": p.unrealized_pnl * rate,
            },
        }
        rows.append(row)
        if rate is None:
            missing.add(own)
        else:
            realized += p.realized_pnl * rate
            unrealized += p.unrealized_pnl * rate
            market_value += value * rate
    return {
        "currency": currency,
        "positions": rows,
        "totals": {"market_value": market_value, "realized_pnl": realized, "unrealized_pnl": unrealized},
        "missing_rates": sorted(missing),
    }


__all__ = [
    "ACCOUNT_CURRENCY",
    "ASSET_CLASSES",
    "EXPIRED",
    "FRACTIONAL_QTY",
    "InstrumentSpec",
    "LOT_SIZE",
    "NO_FX_RATE",
    "OFF_TICK",
    "FORWARD_SPLITS",
    "REVERSE_SPLITS",
    "SplitOrder",
    "convert",
    "fx_rate",
    "instrument_rate",
    "intent_refusals",
    "reporting_view",
    "split_order",
    "split_ratio",
    "tidy",
]
