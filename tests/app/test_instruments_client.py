"""The instrument registry and FX rates through the real client, sync and asyncio, on both
databases: definitions and rates are recorded events, intents are checked against them, fills
count with the multiplier, and a fresh client (a cold fold of the log) sees the same state."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from decimal import Decimal

import pytest

import tradestate
from tradestate.domain import instruments as ins
from tradestate.domain.errors import InvalidInput

EXPIRY = datetime(2030, 3, 15, 13, 30, tzinfo=timezone.utc)


def test_define_trade_and_report_an_es_future(db_url):
    with tradestate.connect(db_url, venue="sim") as client:
        first = client.define_instrument("ES", "future", multiplier=50, tick_size="0.25", expiry=EXPIRY,
                                         operator="desk", reason="CME E-mini S&P 500")
        again = client.define_instrument("ES", "future", multiplier="50.0", tick_size="0.25", expiry=EXPIRY,
                                         operator="desk", reason="CME E-mini S&P 500")
        assert again.duplicate and again.position == first.position
        head = client.position
        with pytest.raises(InvalidInput, match="needs an expiry"):
            client.define_instrument("NQ", "future", multiplier=20)
        assert client.position == head  # nothing appended
        client.record_fx_rate("EUR", "USD", "1.08", source="ECB reference")
        client.set_risk_limit("a1", "max_order_notional", "300000")

        refused = client.record_intent("a1", "o1", "ES", "buy", "1", order_type="limit", limit_price="5000.10")
        assert refused.refusal.reasons == [ins.OFF_TICK]
        too_big = client.record_intent("a1", "o2", "ES", "buy", "2", order_type="limit", limit_price="5000")
        assert too_big.refusal.reasons == ["max_order_notional"]  # 2 x 5000 x 50 = 500,000
        assert client.record_intent("a1", "o3", "ES", "buy", "1", order_type="limit", limit_price="5000").accepted
        client.record_fill("a1", "o3", "x1", "1", "5000")
        assert client.record_intent("a1", "o4", "ES", "sell", "1", order_type="limit", limit_price="5010").accepted
        client.record_fill("a1", "o4", "x2", "1", "5010")
        (position,) = client.positions("a1")
        assert position["realized_pnl"] == 500 and position["multiplier"] == 50 and position["currency"] == "USD"
        assert [i["symbol"] for i in client.instruments()] == ["ES"]
        view = client.reporting_view("EUR")
        assert view["totals"]["realized_pnl"] == Decimal(500) / Decimal("1.08")
        live = client.state.summary()

    with tradestate.connect(db_url) as fresh:  # folded from the log alone
        assert fresh.state.summary()["instruments"] == live["instruments"]
        assert fresh.positions("a1") == [position]


def test_the_async_client_defines_instruments_and_rates(sqlite_url):
    async def session():
        async with await tradestate.connect_async(sqlite_url, venue="sim") as client:
            await client.define_instrument("BTC/USD", "crypto", fractional=True, lot_size="0.0001")
            await client.record_fx_rate("USD", "JPY", "150")
            result = await client.record_intent("a1", "o1", "BTC/USD", "buy", "0.00005")
            assert result.refusal.reasons == [ins.LOT_SIZE]
            return await client.instruments()

    (btc,) = asyncio.run(session())
    assert btc["fractional"] is True and btc["lot_size"] == Decimal("0.0001")


def test_the_positions_read_model_shows_multiplier_and_currency(sqlite_url):
    from tradestate.adapters.store import open_store
    from tradestate.projections.projector import Projector
    from tradestate.projections.reader import ReadModel

    with tradestate.connect(sqlite_url, venue="sim") as client:
        client.record_intent("a1", "o1", "AAPL", "buy", "10")
        client.record_fill("a1", "o1", "x1", "10", "100")
        client.record_intent("a1", "o2", "FESX", "buy", "1")
        client.record_fill("a1", "o2", "x2", "1", "5000")
        client.define_instrument("FESX", "future", multiplier=10, quote_currency="EUR", expiry=EXPIRY)
        client.record_fx_rate("EUR", "USD", "1.1")
        client.record_intent("a1", "o3", "FESX", "sell", "1")
        client.record_fill("a1", "o3", "x3", "1", "5010")  # 10 points x 10 = 100 EUR realised
    store = open_store(sqlite_url)
    try:
        Projector(store).run_once()
    finally:
        store.close()
    with ReadModel(sqlite_url) as read_model:
        rows = {r["symbol"]: r for r in read_model.positions()}
        curve = read_model.equity_curve("a1")
    assert rows["AAPL"]["multiplier"] == 1 and rows["AAPL"]["currency"] is None
    assert rows["FESX"]["multiplier"] == 10 and rows["FESX"]["currency"] == "EUR"  # defined after the fill
    assert rows["FESX"]["realized_pnl"] == 100 and curve[-1]["realized_pnl"] == Decimal("110.0")  # in USD


def test_a_split_recorded_once_scales_the_position(db_url):
    with tradestate.connect(db_url, venue="sim") as client:
        assert client.record_intent("a1", "o1", "NVDA", "buy", "10").accepted
        client.record_fill("a1", "o1", "x1", "10", "1200")
        when = datetime(2024, 6, 10, 13, 30, tzinfo=timezone.utc)
        first = client.record_corporate_action("NVDA", "split", when, ratio_from=1, ratio_to=10, source="venue")
        again = client.record_corporate_action("NVDA", "split", when, ratio_from=1, ratio_to=10, source="venue")
        assert again.duplicate and again.position == first.position
        (position,) = client.positions("a1")
        assert (position["qty"], position["avg_cost"], position["last_price"]) == (100, 120, 120)
    with tradestate.connect(db_url) as fresh:
        assert fresh.positions("a1") == [position]


def test_an_option_exercise_is_recorded_once_and_checked(db_url):
    with tradestate.connect(db_url, venue="sim") as client:
        client.define_instrument("XYZC", "option", multiplier=100, expiry=EXPIRY, underlying="XYZ", strike="100",
                                 right="call")
        assert client.record_intent("a1", "o1", "XYZC", "buy", "2").accepted
        client.record_fill("a1", "o1", "x1", "2", "3")
        head = client.position
        with pytest.raises(InvalidInput, match="holds 2"):
            client.record_option_settlement("a1", "sim", "XYZC", "exercise", "3")
        with pytest.raises(InvalidInput, match="not an option"):
            client.record_option_settlement("a1", "sim", "AAPL", "exercise", "1")
        assert client.position == head
        first = client.record_option_settlement("a1", "sim", "XYZC", "exercise", "2", venue_ref="EXC-1")
        again = client.record_option_settlement("a1", "sim", "XYZC", "exercise", "2", venue_ref="EXC-1")
        assert again.duplicate and again.position == first.position
        held = {p["symbol"]: p["qty"] for p in client.positions("a1")}
        assert held == {"XYZ": 200, "XYZC": 0}
