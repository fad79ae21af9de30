"""Value validation at the edge of the domain: exact quantities, aware UTC times, bounded strings,
closed vocabularies, and the cross-field rules of order intents and bars.

Every refusal must be a pydantic ``ValidationError`` (a ``ValueError``) so that the client can turn
it into ``InvalidInput``; any other exception type escaping validation is a bug.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from uuid import uuid4
from zoneinfo import ZoneInfo

import pytest
from pydantic import TypeAdapter, ValidationError

from tradestate.domain import events as ev
from tradestate.domain.values import (
    MAX_ABS_AMOUNT,
    Amount,
    Identifier,
    NonNegativeAmount,
    OrderType,
    PositiveAmount,
    Side,
    Symbol,
    Text,
    TimeInForce,
    UtcDatetime,
    utc,
)

AMOUNT = TypeAdapter(Amount)
POSITIVE = TypeAdapter(PositiveAmount)
NON_NEGATIVE = TypeAdapter(NonNegativeAmount)
WHEN = TypeAdapter(UtcDatetime)
IDENT = TypeAdapter(Identifier)
SYMBOL = TypeAdapter(Symbol)
TEXT = TypeAdapter(Text)

T0 = datetime(2024, 3, 5, 15, 0, tzinfo=timezone.utc)


def intent(**overrides):
    fields = dict(
        event_id=uuid4(),
        occurred_at=T0,
        account="acct-1",
        client_order_id="ord-1",
        venue="sim",
        symbol="AAPL",
        side="buy",
        order_type="market",
        qty="10",
    )
    fields.update(overrides)
    return ev.OrderIntentRecorded(**fields)


def bar(**overrides):
    fields = dict(
        event_id=uuid4(),
        venue="sim",
        symbol="AAPL",
        timeframe="1m",
        start=T0,
        open="100",
        high="101",
        low="99",
        close="100.5",
        volume="1200",
    )
    fields.update(overrides)
    return ev.BarRecorded(**fields)


# ----------------------------------------------------------------------------------- decimals


@pytest.mark.parametrize(
    "given, expected",
    [
        ("187.25", Decimal("187.25")),
        (" 10 ", Decimal("10")),
        (7, Decimal(7)),
        (Decimal("0.5"), Decimal("0.5")),
        ("1e3", Decimal("1000")),
        ("0.000000000001", Decimal("1e-12")),  # exactly 12 decimal places
        ("999999999999999", Decimal("999999999999999")),  # just below 1e15
    ],
)
def test_positive_amount_accepts_exact_values(given, expected):
    got = POSITIVE.validate_python(given)
    assert isinstance(got, Decimal)
    assert got == expected


@pytest.mark.parametrize("given", [0.1, 1.0, 10.0, float("nan"), float("inf"), -2.5])
def test_floats_are_refused(given):
    for adapter in (AMOUNT, POSITIVE, NON_NEGATIVE):
        with pytest.raises(ValidationError, match="float"):
            adapter.validate_python(given)


@pytest.mark.parametrize("given", [True, False])
def test_booleans_are_not_numbers(given):
    with pytest.raises(ValidationError):
        AMOUNT.validate_python(given)


@pytest.mark.parametrize(
    "given",
    ["NaN", "nan", "-NaN", "sNaN", "Infinity", "inf", "-Infinity", Decimal("NaN"), Decimal("-Infinity")],
)
def test_nan_and_infinity_are_refused(given):
    for adapter in (AMOUNT, POSITIVE, NON_NEGATIVE):
        with pytest.raises(ValidationError, match="finite"):
            adapter.validate_python(given)


@pytest.mark.parametrize("given", [0, "0", "0.000", "-0", "-1", Decimal("-0.01"), -5])
def test_positive_amount_refuses_zero_and_negative(given):
    with pytest.raises(ValidationError, match="greater than zero"):
        POSITIVE.validate_python(given)


def test_non_negative_amount_accepts_zero_refuses_negative():
    assert NON_NEGATIVE.validate_python("0") == 0
    assert NON_NEGATIVE.validate_python(0) == 0
    with pytest.raises(ValidationError, match="negative"):
        NON_NEGATIVE.validate_python("-0.01")


def test_plain_amount_allows_negative_values():
    # fees may be rebates, signal values may be negative
    assert AMOUNT.validate_python("-1.25") == Decimal("-1.25")
    assert AMOUNT.validate_python(0) == 0


@pytest.mark.parametrize(
    "given", ["1e15", "-1e15", 10**15, -(10**15), "1000000000000000.5", "9" * 40, 10**400, "1e500"]
)
def test_absurd_magnitudes_are_refused(given):
    for adapter in (AMOUNT, POSITIVE):
        with pytest.raises(ValidationError, match="absurd"):
            adapter.validate_python(given)


def test_magnitude_limit_is_exclusive():
    assert MAX_ABS_AMOUNT == Decimal("1e15")
    assert AMOUNT.validate_python("999999999999999.999") == Decimal("999999999999999.999")
    assert AMOUNT.validate_python("-999999999999999") == Decimal("-999999999999999")


@pytest.mark.parametrize("given", ["1e1000000", "1e999999999999999999", "-1E+2000000"])
def test_exponents_beyond_the_decimal_context_are_refused_as_invalid_input(given):
    # An exponent that overflows the decimal context is just another absurd magnitude: it must be
    # a validation error, not a raw decimal.Overflow escaping the validator.
    with pytest.raises(ValidationError):
        AMOUNT.validate_python(given)


@pytest.mark.parametrize("given", ["0.0000000000001", "1.1234567890123", Decimal("1e-13"), "1e-999999999"])
def test_more_than_twelve_decimal_places_are_refused(given):
    with pytest.raises(ValidationError, match="decimal places"):
        POSITIVE.validate_python(given)


@pytest.mark.parametrize("given", ["abc", "", "  ", "1,5", "1 000", "0x10", "--1", "1.2.3"])
def test_non_numeric_strings_are_refused(given):
    with pytest.raises(ValidationError, match="not a decimal number"):
        AMOUNT.validate_python(given)


@pytest.mark.parametrize("given", [None, b"10", [10], {"qty": 10}, (1,), object()])
def test_wrong_types_are_refused(given):
    with pytest.raises(ValidationError):
        POSITIVE.validate_python(given)


def test_decimals_serialise_as_strings_without_losing_digits():
    payload = intent(qty="0.123456789012", reference_price="187.250000").to_payload()
    assert payload["qty"] == "0.123456789012"
    assert payload["reference_price"] == "187.250000"
    assert Decimal(payload["qty"]) == Decimal("0.123456789012")


# ---------------------------------------------------------------------------------- timestamps


def test_naive_timestamps_are_refused():
    with pytest.raises(ValidationError, match="time zone"):
        WHEN.validate_python(datetime(2024, 3, 5, 15, 0))
    with pytest.raises(ValidationError, match="time zone"):
        WHEN.validate_python("2024-03-05T15:00:00")
    with pytest.raises(ValueError, match="time zone"):
        utc(datetime(2024, 3, 5, 15, 0))


def test_utc_timestamps_pass_unchanged():
    got = WHEN.validate_python(T0)
    assert got == T0
    assert got.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "given",
    [
        datetime(2024, 3, 5, 17, 0, tzinfo=timezone(timedelta(hours=2))),
        datetime(2024, 3, 5, 10, 0, tzinfo=ZoneInfo("America/New_York")),
        datetime(2024, 3, 6, 0, 0, tzinfo=ZoneInfo("Asia/Tokyo")),
        "2024-03-05T15:00:00Z",
        "2024-03-05T10:00:00-05:00",
        "2024-03-05T20:30:00+05:30",
    ],
)
def test_other_zones_are_converted_to_utc(given):
    got = WHEN.validate_python(given)
    assert got == T0  # same instant
    assert got.tzinfo is timezone.utc  # and expressed in UTC
    assert (got.hour, got.minute) == (15, 0)
    assert utc(got) == T0


def test_events_store_timestamps_in_utc():
    e = intent(occurred_at=datetime(2024, 3, 5, 10, 0, tzinfo=ZoneInfo("America/New_York")))
    assert e.occurred_at.tzinfo is timezone.utc
    assert e.to_payload()["occurred_at"] in ("2024-03-05T15:00:00Z", "2024-03-05T15:00:00+00:00")


@pytest.mark.parametrize("given", ["yesterday", "2024-13-01T00:00:00Z", "", 1709650800, 1.5, date(2024, 3, 5), None])
def test_non_timestamps_are_refused(given):
    with pytest.raises(ValidationError):
        WHEN.validate_python(given)


@pytest.mark.parametrize(
    "given",
    [
        datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=5))),  # before year 1 in UTC
        datetime.max.replace(tzinfo=timezone(timedelta(hours=-1))),  # after year 9999 in UTC
        "9999-12-31T23:59:59-05:00",
    ],
)
def test_timestamps_that_cannot_be_expressed_in_utc_are_refused_as_invalid_input(given):
    # Converting these to UTC overflows; that is bad input and must surface as a ValidationError
    # (so the client raises InvalidInput), not as a raw OverflowError.
    with pytest.raises(ValidationError):
        WHEN.validate_python(given)


# --------------------------------------------------------------------------------- identifiers


def test_identifier_length_bounds():
    assert IDENT.validate_python("a") == "a"
    assert IDENT.validate_python("x" * 64) == "x" * 64
    with pytest.raises(ValidationError, match="longer than 64"):
        IDENT.validate_python("x" * 65)
    with pytest.raises(ValidationError, match="longer than 64"):
        IDENT.validate_python("x" * 10_000)
    assert SYMBOL.validate_python("S" * 32) == "S" * 32
    with pytest.raises(ValidationError, match="longer than 32"):
        SYMBOL.validate_python("S" * 33)
    assert TEXT.validate_python("t" * 1000) == "t" * 1000
    with pytest.raises(ValidationError, match="longer than 1000"):
        TEXT.validate_python("t" * 1001)


@pytest.mark.parametrize("given", ["", " ", "\u3000", "   "])
def test_empty_identifiers_are_refused(given):
    with pytest.raises(ValidationError):
        IDENT.validate_python(given)
    with pytest.raises(ValidationError):
        SYMBOL.validate_python(given)


def test_text_may_be_empty():
    assert TEXT.validate_python("") == ""


@pytest.mark.parametrize(
    "given", ["a\x00b", "\x01", "acct\tid", "acct\nid", "acct\rid", "a\x1b[31m", "del\x7f", "a\x1fb", "ab\x00"]
)
def test_control_characters_are_refused(given):
    for adapter in (IDENT, SYMBOL, TEXT):
        with pytest.raises(ValidationError, match="control"):
            adapter.validate_python(given)


@pytest.mark.parametrize("given", ["acct\n", "AAPL\n", "reason\n"])
def test_a_trailing_newline_is_a_control_character_too(given):
    # ``$`` in the printable check also matches before a final "\n", so a trailing newline
    # slipped through; it must be refused like any other control character.
    for adapter in (IDENT, SYMBOL, TEXT):
        with pytest.raises(ValidationError, match="control"):
            adapter.validate_python(given)


@pytest.mark.parametrize("given", [5, None, b"acct", ["acct"], 1.0])
def test_identifiers_must_be_strings(given):
    with pytest.raises(ValidationError, match="string"):
        IDENT.validate_python(given)


def test_unicode_identifiers_are_kept_verbatim():
    assert IDENT.validate_python("kontó-ü-东京") == "kontó-ü-东京"


# --------------------------------------------------------------------------------------- enums


@pytest.mark.parametrize("side", ["buy", "sell", Side.BUY, Side.SELL])
def test_known_sides(side):
    assert intent(side=side).side in (Side.BUY, Side.SELL)


@pytest.mark.parametrize(("side", "canonical"), [("BUY", "buy"), ("Buy", "buy"), ("SELL", "sell"), ("sell", "sell"),
                                                 ("sElL", "sell")])
def test_venue_spellings_of_a_side_are_accepted_and_stored_lower_case(side, canonical):
    e = intent(side=side)
    assert e.side is Side(canonical)
    assert e.to_payload()["side"] == canonical


@pytest.mark.parametrize(("order_type", "canonical", "prices"), [
    ("MARKET", OrderType.MARKET, {}), ("Limit", OrderType.LIMIT, {"limit_price": "1"}),
    ("STOP-LIMIT", OrderType.STOP_LIMIT, {"limit_price": "1", "stop_price": "1"}),
    ("STOP", OrderType.STOP, {"stop_price": "1"}),
])
def test_venue_spellings_of_an_order_type_are_accepted_and_stored_lower_case(order_type, canonical, prices):
    e = intent(order_type=order_type, **prices)
    assert e.order_type is canonical
    assert e.to_payload()["order_type"] == canonical.value


def test_time_in_force_spellings_are_accepted():
    assert intent(time_in_force="GTC").to_payload()["time_in_force"] == "gtc"
    assert intent(time_in_force="Ioc").time_in_force is TimeInForce.IOC


def test_the_enums_are_exported_as_str_enums():
    import tradestate

    assert tradestate.Side.BUY == "buy" and tradestate.OrderType("LIMIT") == "limit"
    assert tradestate.TimeInForce("DAY") is TimeInForce.DAY
    assert {"Side", "OrderType", "TimeInForce"} <= set(tradestate.__all__)


def test_side_sign():
    assert Side.BUY.sign == 1 and Side.SELL.sign == -1


@pytest.mark.parametrize("side", ["hold", "short", "", None, 1, "buy ", " BUY"])
def test_unknown_sides_are_refused(side):
    with pytest.raises(ValidationError, match="side"):
        intent(side=side)


@pytest.mark.parametrize("order_type", ["iceberg", "MARKET ", "", None, "limit_stop"])
def test_unknown_order_types_are_refused(order_type):
    with pytest.raises(ValidationError, match="order_type"):
        intent(order_type=order_type)


def test_time_in_force_vocabulary():
    assert {t.value for t in TimeInForce} == {"day", "gtc", "ioc", "fok", "opg", "cls"}
    assert intent(time_in_force="gtc").time_in_force is TimeInForce.GTC
    with pytest.raises(ValidationError, match="time_in_force"):
        intent(time_in_force="gtd")


def test_other_closed_vocabularies():
    base = dict(event_id=uuid4(), account="a", client_order_id="o", exec_id="e", qty="1", price="1")
    assert ev.OrderFilled(**base, liquidity="maker").liquidity == "maker"
    with pytest.raises(ValidationError, match="liquidity"):
        ev.OrderFilled(**base, liquidity="both")
    with pytest.raises(ValidationError, match="limit"):
        ev.RiskLimitChanged(event_id=uuid4(), account="a", limit="max_leverage", value="1")
    with pytest.raises(ValidationError, match="ramp_pct"):
        ev.TradingResumed(event_id=uuid4(), account="a", ramp_pct=60)
    with pytest.raises(ValidationError, match="timeframe"):
        bar(timeframe="2m")


def test_events_refuse_unknown_fields_and_are_immutable():
    with pytest.raises(ValidationError, match="extra"):
        intent(leverage="10")
    e = intent()
    with pytest.raises(ValidationError):
        e.qty = Decimal("20")  # type: ignore[misc]


# ------------------------------------------------------------------------ order type vs prices


@pytest.mark.parametrize(
    "order_type, prices",
    [
        ("market", {}),
        ("market", {"reference_price": "187.25"}),
        ("limit", {"limit_price": "187.25"}),
        ("stop", {"stop_price": "180"}),
        ("stop_limit", {"limit_price": "179.5", "stop_price": "180"}),
    ],
)
def test_order_types_with_their_price_fields(order_type, prices):
    e = intent(order_type=order_type, **prices)
    assert e.order_type is OrderType(order_type)
    for name, value in prices.items():
        assert getattr(e, name) == Decimal(value)


@pytest.mark.parametrize(
    "order_type, prices, message",
    [
        ("limit", {}, "needs a limit_price"),
        ("limit", {"stop_price": "1"}, "needs a limit_price"),
        ("market", {"limit_price": "1"}, "takes no limit_price"),
        ("market", {"stop_price": "1"}, "takes no stop_price"),
        ("stop", {}, "needs a stop_price"),
        ("stop", {"limit_price": "1", "stop_price": "1"}, "takes no limit_price"),
        ("stop_limit", {"limit_price": "1"}, "needs a stop_price"),
        ("stop_limit", {"stop_price": "1"}, "needs a limit_price"),
        ("limit", {"limit_price": "1", "stop_price": "1"}, "takes no stop_price"),
    ],
)
def test_order_type_and_price_fields_must_match(order_type, prices, message):
    with pytest.raises(ValidationError, match=message):
        intent(order_type=order_type, **prices)


@pytest.mark.parametrize("field", ["limit_price", "reference_price"])
@pytest.mark.parametrize("value", ["0", "-1", 1.5, "NaN"])
def test_prices_must_be_positive_exact_numbers(field, value):
    order_type = "limit" if field == "limit_price" else "market"
    with pytest.raises(ValidationError, match=field):
        intent(order_type=order_type, **{field: value})


@pytest.mark.parametrize("qty", ["0", "-10", 10.0, "1e15", "0.0000000000001", None, ""])
def test_intent_quantity_validation(qty):
    with pytest.raises(ValidationError, match="qty"):
        intent(qty=qty)


# ----------------------------------------------------------------------------------------- bars


@pytest.mark.parametrize(
    "ohlc",
    [
        ("100", "101", "99", "100.5"),
        ("100", "100", "100", "100"),  # a flat bar
        ("99", "101", "99", "101"),  # opens at the low, closes at the high
        ("101", "101", "99", "99"),
    ],
)
def test_consistent_bars(ohlc):
    o, h, lo, c = ohlc
    b = bar(open=o, high=h, low=lo, close=c)
    assert (b.open, b.high, b.low, b.close) == tuple(Decimal(x) for x in ohlc)


@pytest.mark.parametrize(
    "ohlc",
    [
        ("100", "99.5", "99", "99.2"),  # high below open
        ("100", "101", "99", "101.5"),  # close above high
        ("100", "101", "100.2", "100.5"),  # low above open
        ("100", "101", "99", "98"),  # close below low
        ("100", "99", "101", "100"),  # high below low
    ],
)
def test_inconsistent_bars_are_refused(ohlc):
    o, h, lo, c = ohlc
    with pytest.raises(ValidationError, match="inconsistent"):
        bar(open=o, high=h, low=lo, close=c)


def test_bar_volume_and_prices():
    assert bar(volume="0").volume == 0
    with pytest.raises(ValidationError, match="volume"):
        bar(volume="-1")
    with pytest.raises(ValidationError, match="open"):
        bar(open="0", low="0")
    with pytest.raises(ValidationError, match="start"):
        bar(start=datetime(2024, 3, 5, 15, 0))
