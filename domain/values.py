"""Value types shared by events and commands: exact quantities, aware UTC times, bounded strings."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer

# Absurd values are input errors, not trades: no instrument trades a quadrillion units.
MAX_ABS_AMOUNT = Decimal("1e15")
MAX_DECIMAL_PLACES = 12


class _Spelling(str, Enum):
    """A str enum whose canonical values are lower case and that accepts the venues' spellings of
    them: any case, and '-' for '_' ('BUY', 'Buy' are ``Side.BUY``; 'STOP-LIMIT' is
    ``OrderType.STOP_LIMIT``). Padding is not trimmed ('buy ' is refused). Stored events hold the
    canonical value."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if isinstance(value, str):
            wanted = value.lower().replace("-", "_")
            for member in cls:
                if member.value == wanted:
                    return member
        return None


class Side(_Spelling):
    """Order side; ``sign`` is +1 for a buy, -1 for a sell."""

    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        """+1 for a buy, -1 for a sell."""
        return 1 if self is Side.BUY else -1


class OrderType(_Spelling):
    """Order type; limit and stop-limit orders carry a limit price, stop and stop-limit a stop price."""

    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"


class TimeInForce(_Spelling):
    """How long an order rests at the venue."""

    DAY = "day"
    GTC = "gtc"
    IOC = "ioc"
    FOK = "fok"
    OPG = "opg"
    CLS = "cls"


def _to_decimal(value: Any) -> Decimal:
    # Floats are refused outright: 0.1 is not a price anyone meant.
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError("must be a Decimal, int or decimal string, not a float")
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, str):
        try:
            d = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"not a decimal number: {value!r}") from None
    else:
        raise ValueError(f"must be a decimal number, got {type(value).__name__}")
    if not d.is_finite():
        raise ValueError("must be finite (NaN and infinity are refused)")
    # adjusted() is the exponent of the leading digit: no arithmetic, so no overflow on 1e1000000
    if d and d.adjusted() >= MAX_ABS_AMOUNT.adjusted():
        raise ValueError(f"absurd magnitude {d} (limit {MAX_ABS_AMOUNT})")
    exponent = d.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > MAX_DECIMAL_PLACES:
        raise ValueError(f"more than {MAX_DECIMAL_PLACES} decimal places: {d}")
    return d


def _positive(d: Decimal) -> Decimal:
    if d <= 0:
        raise ValueError("must be greater than zero")
    return d


def _non_negative(d: Decimal) -> Decimal:
    if d < 0:
        raise ValueError("must not be negative")
    return d


_decimal_str = PlainSerializer(lambda d: str(d), return_type=str, when_used="json")


def _computed_decimal(value: Any) -> Decimal:
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError("must be a Decimal, not a float")
    d = value if isinstance(value, Decimal) else Decimal(str(value))
    if not d.is_finite():
        raise ValueError("must be finite")
    return d

# Decimals travel as strings in JSON so that no digit is ever lost.
Amount = Annotated[Decimal, BeforeValidator(_to_decimal), _decimal_str]
PositiveAmount = Annotated[Decimal, BeforeValidator(_to_decimal), AfterValidator(_positive), _decimal_str]
NonNegativeAmount = Annotated[
    Decimal, BeforeValidator(_to_decimal), AfterValidator(_non_negative), _decimal_str
]
# A value the domain computed (a notional, a day's P&L): exact, any precision, never user input.
ComputedAmount = Annotated[Decimal, BeforeValidator(_computed_decimal), _decimal_str]


# Trading timestamps outside this range are input errors (and beyond 9999 cannot be converted).
MIN_TIME = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_TIME = datetime(2200, 1, 1, tzinfo=timezone.utc)


def _to_utc(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an ISO-8601 timestamp: {value!r}") from None
    if not isinstance(value, datetime):
        raise ValueError(f"must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("timestamp has no time zone; give an aware datetime (UTC)")
    try:
        value = value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"timestamp {value!r} cannot be expressed in UTC") from None
    if not MIN_TIME <= value < MAX_TIME:
        raise ValueError(f"timestamp {value.isoformat()} is outside {MIN_TIME.year}-{MAX_TIME.year}")
    return value


UtcDatetime = Annotated[datetime, BeforeValidator(_to_utc)]

_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f-\x9f]*")  # no C0 or C1 control characters


def _bounded(max_len: int, *, allow_empty: bool = False):
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {type(value).__name__}")
        if not allow_empty and not value.strip():
            raise ValueError("must not be empty")
        if len(value) > max_len:
            raise ValueError(f"longer than {max_len} characters ({len(value)})")
        if not _PRINTABLE.fullmatch(value):
            raise ValueError("contains control characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("is not valid Unicode text (lone surrogate)") from None
        return value

    return BeforeValidator(check)


Identifier = Annotated[str, _bounded(64)]  # accounts, client order ids, exec ids, strategies
Symbol = Annotated[str, _bounded(32)]
Text = Annotated[str, _bounded(1000, allow_empty=True)]


def utc(dt: datetime) -> datetime:
    """Validate and normalise a timestamp given to the domain (used outside pydantic models)."""
    return _to_utc(dt)
