"""The instrument registry, multipliers and currencies in the pure domain: events, fold, pre-trade
checks, FX rates, checkpoints and the cold fold."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from uuid import uuid4

import pytest
from pydantic import ValidationError

from tradestate.domain import events as ev
from tradestate.domain import instruments as ins
from tradestate.domain import orders as rules
from tradestate.domain import snapshot
from tradestate.domain.fold import fold_cold
from tradestate.domain.ids import fx_stream_id, instrument_stream_id, order_stream_id
from tradestate.domain.instruments import reporting_view

from tests.support.fold import T0, Fold

D = Decimal
EXPIRY = datetime(2026, 12, 18, 14, 30, tzinfo=timezone.utc)


def define(f: Fold, symbol: str = "ES", asset_class: str = "future", **fields) -> int:
    if asset_class in ("future", "option"):
        fields.setdefault("expiry", EXPIRY)
    return f.add(instrument_stream_id(symbol), ev.InstrumentDefined(
        event_id=uuid4(), symbol=symbol, asset_class=asset_class, **fields))


def fx(f: Fold, base: str, quote: str, rate: str) -> int:
    return f.add(fx_stream_id(base, quote), ev.FxRateRecorded(event_id=uuid4(), base=base, quote=quote, rate=rate))


def trade(f: Fold, coid: str, side: str, qty: str, price: str, symbol: str = "ES", **fill) -> None:
    f.intent(coid, side, qty, symbol=symbol)
    f.fill(coid, f"x-{coid}", qty, price, **fill)


def decide(f: Fold, coid: str, side: str = "buy", qty: str = "1", *, symbol: str = "ES", now=T0, **extra):
    intent = ev.OrderIntentRecorded(event_id=uuid4(), occurred_at=now, account="acct", client_order_id=coid,
                                    venue="sim", symbol=symbol, side=side, order_type=extra.pop("order_type", "limit"),
                                    qty=qty, **extra)
    decision = rules.decide_intent(f.state, intent, now)
    assert isinstance(decision, rules.Append)
    return decision.events[1][1]


# ------------------------------------------------------------------------------------- events


@pytest.mark.parametrize("fields, message", [
    ({"asset_class": "future"}, "needs an expiry"),
    ({"asset_class": "equity", "expiry": EXPIRY}, "only futures and options have an expiry"),
    ({"asset_class": "option", "expiry": EXPIRY, "strike": "100"}, "underlying, strike and right"),
    ({"asset_class": "equity", "right": "call"}, "only an option"),
    ({"asset_class": "equity", "lot_size": "0.5"}, "whole units only"),
    ({"asset_class": "equity", "quote_currency": "usd"}, "currency"),
    ({"asset_class": "equity", "multiplier": "0"}, "greater than zero"),
    ({"asset_class": "bond"}, "asset_class"),
])
def test_an_inconsistent_definition_is_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        ev.InstrumentDefined(event_id=uuid4(), symbol="X", **fields)


def test_an_fx_rate_needs_two_currencies():
    with pytest.raises(ValidationError, match="two currencies"):
        ev.FxRateRecorded(event_id=uuid4(), base="EUR", quote="EUR", rate="1")


def test_an_option_definition_round_trips_through_its_stored_form():
    e = ev.InstrumentDefined(event_id=uuid4(), symbol="SPY261218C00500000", asset_class="option", multiplier=100,
                             expiry=EXPIRY, underlying="SPY", strike="500", right="call", tick_size="0.01")
    assert ev.decode("InstrumentDefined", e.to_payload()) == e


# ------------------------------------------------------------------------------- money and P&L


def test_one_es_future_is_its_price_times_fifty():
    f = Fold()
    define(f, multiplier=50, tick_size="0.25")
    trade(f, "o1", "buy", "2", "5000")
    trade(f, "o2", "sell", "1", "5010.25")
    p = f.position("ES")
    assert p.qty == 1 and p.avg_cost == 5000  # per contract, in price units
    assert p.realized_pnl == D("10.25") * 50
    assert p.unrealized_pnl == D("10.25") * 50  # marked at the last fill
    assert p.as_dict()["multiplier"] == 50 and p.as_dict()["currency"] == "USD"
    assert f.acct().daily["2024-03-05"].realized_pnl == D("512.50")


def test_a_notional_limit_counts_the_multiplier():
    f = Fold()
    define(f, multiplier=50, tick_size="0.25")
    f.limit("max_order_notional", "200000")
    refusal = decide(f, "o1", limit_price="5000")
    assert isinstance(refusal, ev.IntentRejectedByRisk)
    assert refusal.reasons == ["max_order_notional"] and "250000" in refusal.detail
    passed = decide(f, "o2", qty="1", symbol="AAPL", limit_price="5000")  # not registered: multiplier 1
    assert isinstance(passed, ev.RiskCheckPassed) and passed.notional == 5000


@pytest.mark.parametrize("qty, price, now, code", [
    ("1", "5000.10", T0, ins.OFF_TICK),
    ("1.5", "5000", T0, ins.FRACTIONAL_QTY),
    ("3", "5000", T0, ins.LOT_SIZE),
    ("2", "5000", EXPIRY, ins.EXPIRED),
])
def test_an_intent_off_its_instrument_is_refused_with_a_typed_reason(qty, price, now, code):
    f = Fold()
    define(f, multiplier=50, tick_size="0.25", lot_size="2")
    refusal = decide(f, "o1", qty=qty, limit_price=price, now=now)
    assert isinstance(refusal, ev.IntentRejectedByRisk)
    assert code in refusal.reasons
    assert isinstance(decide(f, "ok", qty="2", limit_price="5000.25"), ev.RiskCheckPassed)


def test_a_stop_price_is_on_the_grid_too_and_fractions_pass_where_allowed():
    f = Fold()
    define(f, "BTC/USD", "crypto", fractional=True, lot_size="0.0001", tick_size="0.01")
    assert isinstance(decide(f, "o1", qty="0.0125", symbol="BTC/USD", limit_price="60000.01"), ev.RiskCheckPassed)
    refusal = decide(f, "o2", qty="0.01", symbol="BTC/USD", order_type="stop", stop_price="60000.005")
    assert refusal.reasons == [ins.OFF_TICK]
    assert decide(f, "o3", qty="0.00001", symbol="BTC/USD", limit_price="1").reasons == [ins.LOT_SIZE]


def test_an_unknown_instrument_keeps_todays_checks():
    f = Fold()
    define(f, "AAPL", "equity", lot_size="1")  # another symbol's definition changes nothing here
    assert isinstance(decide(f, "o1", qty="0.5", symbol="MSFT", limit_price="100.001"), ev.RiskCheckPassed)


def test_a_later_definition_supersedes_the_earlier_one():
    f = Fold()
    define(f, multiplier=50)
    trade(f, "o1", "buy", "1", "100")
    define(f, multiplier=5)  # redefined: the open position counts by the new one from here on
    trade(f, "o2", "sell", "1", "110")
    assert f.state.instrument("ES").multiplier == 5
    assert f.position("ES").realized_pnl == 50


def test_a_definition_after_trading_applies_to_the_open_position():
    f = Fold()
    trade(f, "o1", "buy", "2", "100")
    define(f, multiplier=10)
    assert f.position("ES").multiplier == 10


def test_cash_moves_by_notional_times_multiplier_but_a_future_only_by_its_pnl():
    f = Fold()
    define(f, "SPYC", "option", multiplier=100, underlying="SPY", strike="500", right="call")
    define(f, "ES", "future", multiplier=50)
    f.account_event(ev.CashBalanceRecorded, venue="sim", currency="USD", balance="100000")
    trade(f, "o1", "buy", "2", "3.5", symbol="SPYC")
    assert f.acct().cash["USD"] == 100000 - 2 * D("3.5") * 100
    trade(f, "o2", "buy", "1", "5000", symbol="ES")
    trade(f, "o3", "sell", "1", "5002", symbol="ES", fee="2.5")
    assert f.acct().cash["USD"] == 100000 - 700 + 100 - D("2.5")


# --------------------------------------------------------------------------------- currencies


def test_positions_stay_in_their_currency_and_report_in_another_by_recorded_rates():
    f = Fold()
    define(f, "FESX", "future", multiplier=10, quote_currency="EUR")
    define(f, "7203", "equity", quote_currency="JPY")
    trade(f, "o1", "buy", "1", "5000", symbol="FESX")
    trade(f, "o2", "sell", "1", "5010", symbol="FESX")
    trade(f, "o3", "buy", "100", "3000", symbol="7203")
    view = reporting_view(f.state, "USD")
    assert view["missing_rates"] == ["EUR", "JPY"] and view["totals"]["realized_pnl"] == 0
    fx(f, "EUR", "USD", "1.1")
    fx(f, "USD", "JPY", "150")  # the inverse serves JPY -> USD
    view = reporting_view(f.state, "USD")
    fesx = next(r for r in view["positions"] if r["symbol"] == "FESX")
    assert fesx["currency"] == "EUR" and fesx["realized_pnl"] == 100
    assert fesx["reporting"]["realized_pnl"] == D("110.0")
    toyota = next(r for r in view["positions"] if r["symbol"] == "7203")
    assert toyota["market_value"] == 300000 and toyota["reporting"]["market_value"] == 2000
    assert view["missing_rates"] == []


def test_the_days_pnl_is_converted_at_the_rate_recorded_before_the_fill():
    f = Fold()
    define(f, "FESX", "future", multiplier=10, quote_currency="EUR")
    fx(f, "EUR", "USD", "1.25")
    trade(f, "o1", "buy", "1", "5000", symbol="FESX")
    trade(f, "o2", "sell", "1", "4990", symbol="FESX")
    assert f.position("FESX").realized_pnl == -100  # EUR
    assert f.acct().daily["2024-03-05"].realized_pnl == D("-125.00")  # USD


def test_a_notional_limit_in_another_currency_needs_a_recorded_rate():
    f = Fold()
    define(f, "FESX", "future", multiplier=10, quote_currency="EUR")
    f.limit("max_order_notional", "60000")
    assert decide(f, "o1", symbol="FESX", limit_price="5000").reasons == [ins.NO_FX_RATE]
    fx(f, "EUR", "USD", "1.1")
    passed = decide(f, "o2", symbol="FESX", limit_price="5000")
    assert isinstance(passed, ev.RiskCheckPassed) and passed.notional == D("55000.0")
    assert decide(f, "o3", symbol="FESX", limit_price="6000").reasons == ["max_order_notional"]


# ------------------------------------------------------------------------ checkpoint, cold fold


def _instrument_log() -> Fold:
    f = Fold()
    define(f, multiplier=50, tick_size="0.25")
    define(f, "FESX", "future", multiplier=10, quote_currency="EUR")
    fx(f, "EUR", "USD", "1.1")
    trade(f, "o1", "buy", "3", "5000")
    trade(f, "o2", "sell", "1", "5001.5")
    trade(f, "o3", "sell", "2", "5000", symbol="FESX")
    f.intent("o4", "buy", "1", symbol="FESX")  # open: built in full
    return f


def test_a_checkpoint_keeps_the_registry_rates_and_multipliers():
    f = _instrument_log()
    doc, finished = snapshot.take(f.state)
    assert snapshot.problems(doc, position=f.pos, head=f.pos, now=T0 + timedelta(days=1)) == []
    restored = snapshot.restore(orjson_roundtrip(doc), finished)
    assert restored.summary()["instruments"] == f.state.summary()["instruments"]
    assert restored.summary()["positions"] == f.state.summary()["positions"]
    assert restored.fx_rates == f.state.fx_rates


def test_a_checkpoint_of_a_log_without_instruments_has_no_new_keys():
    f = Fold()
    trade(f, "o1", "buy", "3", "5000")
    doc, _ = snapshot.take(f.state)
    assert "instruments" not in doc and "fx_rates" not in doc


def test_the_cold_fold_books_multipliers_like_apply():
    f = _instrument_log()
    cold, rows = fold_cold([f.rows])
    assert rows == len(f.rows)
    want = f.state.summary()
    got = cold.summary()
    for key in ("positions", "instruments", "fx_rates"):
        assert got[key] == want[key]
    assert got["accounts"]["acct"]["daily"] == want["accounts"]["acct"]["daily"]


def orjson_roundtrip(doc):
    import orjson

    return orjson.loads(snapshot.encode(doc))


def test_stream_ids():
    assert instrument_stream_id("ES") == "instrument-ES"
    assert fx_stream_id("EUR", "USD") == "fx-EUR-USD"
    assert order_stream_id("a", "b").startswith("order-")


def test_gross_exposure_counts_the_multiplier_and_the_rate():
    from tradestate.domain.gates import gross_exposure
    from tradestate.gates import holdings

    f = Fold()
    define(f, multiplier=50)
    define(f, "FESX", "future", multiplier=10, quote_currency="EUR")
    trade(f, "o1", "buy", "1", "5000")
    trade(f, "o2", "sell", "2", "4000", symbol="FESX")
    decision = gross_exposure(holdings(f.state), None)
    assert decision.values["gross_exposure"] == "250000" and decision.values["unpriced"] == ["acct/sim/FESX"]
    fx(f, "EUR", "USD", "1.5")
    assert gross_exposure(holdings(f.state), None).values["gross_exposure"] == "370000.0"


# ------------------------------------------------------------------------------ cash per venue


def test_one_account_at_two_venues_keeps_each_venues_cash_and_reconciles_clean():
    """Before: ``cash`` per account only, so reconciling venue A after venue B compared A's balance
    with B's and corrected it, back and forth, every run."""
    from dataclasses import replace

    from tests.unit.test_reconcile_domain import ACCOUNT, apply_plan, intent, plan, snapshot, types, vfill, vorder
    from tradestate.domain.state import TradingState

    state = TradingState()
    at_sim = snapshot(balances=[("USD", "100000")])  # venue SIM
    at_ib = replace(snapshot(balances=[("USD", "50000")]), venue="IB")
    for snap in (at_sim, at_ib):
        apply_plan(state, plan(state, snap))
    account = state.accounts[ACCOUNT]
    assert account.cash_at("SIM") == {"USD": 100000} and account.cash_at("IB") == {"USD": 50000}
    assert state.summary()["accounts"][ACCOUNT]["venue_cash"] == {"IB": {"USD": 50000}, "SIM": {"USD": 100000}}
    intent(state, "o1", qty=2, ack="V1")  # at SIM
    filled = snapshot(orders=[vorder("V1", "o1", "filled", qty=2, filled=2)], fills=[vfill("X1", "o1", "V1", 2, 100)],
                      positions=[("AAPL", 2)], balances=[("USD", "99800")])
    apply_plan(state, plan(state, filled))  # the missed fill, and SIM's cash follows it exactly
    assert account.cash_at("SIM") == {"USD": 99800} and account.cash_at("IB") == {"USD": 50000}
    for _ in range(2):
        assert types(plan(state, filled)) == [] and types(plan(state, at_ib)) == []  # clean, both ways
    restored = snapshot_restore(state)
    assert restored.accounts[ACCOUNT].venue_cash == account.venue_cash


def snapshot_restore(state):
    doc, finished = snapshot.take(state)
    return snapshot.restore(orjson_roundtrip(doc), finished)


# ------------------------------------------------------------------------- corporate actions


def corporate(f: Fold, symbol: str, action: str, **fields) -> int:
    from tradestate.domain.ids import corporate_action_stream_id

    return f.add(corporate_action_stream_id(symbol), ev.CorporateActionRecorded(
        event_id=uuid4(), symbol=symbol, action=action, effective_at=T0, **fields))


@pytest.mark.parametrize("fields, message", [
    ({"action": "split", "ratio_from": "1"}, "ratio_from and ratio_to"),
    ({"action": "split", "ratio_from": "2", "ratio_to": "2"}, "ratio 1"),
    ({"action": "symbol_change"}, "new_symbol"),
    ({"action": "symbol_change", "new_symbol": "X", "ratio_to": "2"}, "no ratio"),
])
def test_an_incomplete_corporate_action_is_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        ev.CorporateActionRecorded(event_id=uuid4(), symbol="X" if "new_symbol" not in fields else "Y",
                                   effective_at=T0, **fields)


def test_a_two_for_one_split_doubles_the_quantity_and_halves_the_average_cost():
    f = Fold()
    trade(f, "o1", "buy", "100", "150", symbol="AAPL")
    trade(f, "o2", "sell", "40", "160", symbol="AAPL")
    before = f.position("AAPL").as_dict()
    corporate(f, "AAPL", "split", ratio_from="1", ratio_to="2")
    p = f.position("AAPL")
    assert (p.qty, p.avg_cost, p.last_price) == (120, 75, 80)
    assert p.realized_pnl == before["realized_pnl"] and p.unrealized_pnl == before["unrealized_pnl"]
    corporate(f, "AAPL", "split", ratio_from="10", ratio_to="1")  # then a 1-for-10 reverse split
    assert (p.qty, p.avg_cost, p.last_price) == (12, 750, 800)


def test_a_symbol_change_moves_the_position_and_the_instrument():
    f = Fold()
    define(f, "FB", "equity", tick_size="0.01")
    trade(f, "o1", "buy", "10", "300", symbol="FB")
    corporate(f, "FB", "symbol_change", new_symbol="META")
    assert f.position("FB").qty == 0
    meta = f.position("META")
    assert (meta.qty, meta.avg_cost, meta.currency) == (10, 300, "USD")
    assert f.state.instrument("META").symbol == "META"
    assert decide(f, "o2", qty="1", symbol="META", limit_price="300.001").reasons == [ins.OFF_TICK]


def test_reconciliation_proposes_a_split_instead_of_correcting_blindly():
    from tradestate.adapters.brokers.base import VenuePosition
    from tests.unit.test_reconcile_domain import ACCOUNT, intent, plan, snapshot, types, vfill, vorder
    from tradestate.domain.state import TradingState

    state = TradingState()
    intent(state, "o1", qty=100, ack="V1", fills=[("X1", 100, 100)])
    orders, fills = [vorder("V1", "o1", "filled", qty=100, filled=100)], [vfill("X1", "o1", "V1", 100, 100)]
    split = snapshot(orders=orders, fills=fills, positions=[])
    split.positions.append(VenuePosition("AAPL", D(200), D(50)))  # twice the shares at half the cost
    proposed = plan(state, split)
    assert types(proposed) == [] and [d.kind for d in proposed.discrepancies] == ["split_suspected"]
    assert "2 new per old share" in proposed.discrepancies[0].detail
    for cost in (D(100), None):  # the venue's cost did not halve, or it gives none: a plain difference
        other = snapshot(orders=orders, fills=fills, positions=[])
        other.positions.append(VenuePosition("AAPL", D(200), cost))
        assert types(plan(state, other)) == ["PositionCorrected"]
    apply(state, ev.CorporateActionRecorded(event_id=uuid4(), symbol="AAPL", action="split", ratio_from=1,
                                            ratio_to=2, effective_at=T0, source="venue"))
    assert types(plan(state, split)) == [] and plan(state, split).discrepancies == []
    assert state.position_of(ACCOUNT, "SIM", "AAPL").avg_cost == 50


def apply(state, event):
    from tests.unit.test_reconcile_domain import apply as fold_one
    from tradestate.domain.ids import corporate_action_stream_id

    fold_one(state, corporate_action_stream_id(event.symbol), event)


@pytest.mark.parametrize("ours, theirs, our_cost, their_cost, ratio", [
    ("100", "200", "50", "25", D(2)),
    ("-300", "-30", "10", "100", D("0.1")),  # a 1-for-10 reverse split of a short
    ("100", "150", "30", "20", D("1.5")),
    ("100", "80", "10", "12.5", None),  # 4-for-5 is not a split desks see
    ("100", "200", "50", "50", None),  # the cost did not follow: a missed fill
    ("100", "200", "50", None, None),
    ("100", "-200", "50", "25", None),
])
def test_split_ratio_reads_a_splits_footprint(ours, theirs, our_cost, their_cost, ratio):
    assert ins.split_ratio(D(ours), D(theirs), D(our_cost), their_cost and D(their_cost)) == ratio


def test_reconciliation_plans_a_missed_fills_cash_with_the_multiplier():
    from tests.unit.test_reconcile_domain import (ACCOUNT, apply as fold_one, apply_plan, cash, intent, kinds, plan,
                                                  snapshot, types, vfill, vorder)
    from tradestate.domain.state import TradingState

    state = TradingState()
    for e in (ev.InstrumentDefined(event_id=uuid4(), symbol="SPYC", asset_class="option", multiplier=100,
                                   expiry=EXPIRY, underlying="SPY", strike="500", right="call"),
              ev.InstrumentDefined(event_id=uuid4(), symbol="ES", asset_class="future", multiplier=50, expiry=EXPIRY)):
        fold_one(state, instrument_stream_id(e.symbol), e)
    cash(state, 100_000)
    intent(state, "o1", "SPYC", qty=2, ack="V1")
    intent(state, "o2", "ES", qty=1, ack="V2")
    snap = snapshot(orders=[vorder("V1", "o1", "filled", qty=2, filled=2, symbol="SPYC"),
                            vorder("V2", "o2", "filled", qty=1, filled=1, symbol="ES")],
                    fills=[vfill("X1", "o1", "V1", 2, "3.5", symbol="SPYC"), vfill("X2", "o2", "V2", 1, 5000, symbol="ES")],
                    positions=[("SPYC", 2), ("ES", 1)], balances=[("USD", "99300")])  # 2 x 3.5 x 100 paid; a future pays none
    p = plan(state, snap)
    assert types(p) == ["OrderFilled", "OrderFilled"] and kinds(p) == ["missed_fill", "missed_fill"]  # no cash drift
    apply_plan(state, p)
    assert state.accounts[ACCOUNT].cash_at("SIM") == {"USD": 99300}


def test_reconciliation_plans_a_missed_closing_fill_of_a_future_with_its_realised_pnl_in_cash():
    from tests.unit.test_reconcile_domain import (ACCOUNT, apply as fold_one, apply_plan, cash, intent, kinds, plan,
                                                  snapshot, types, vfill, vorder)
    from tradestate.domain.state import TradingState

    state = TradingState()
    e = ev.InstrumentDefined(event_id=uuid4(), symbol="ES", asset_class="future", multiplier=50, expiry=EXPIRY)
    fold_one(state, instrument_stream_id(e.symbol), e)
    cash(state, 100_000)
    intent(state, "o1", "ES", qty=1, ack="V1")
    intent(state, "o2", "ES", side="sell", qty=1, ack="V2")
    # both missed: bought at 5,000, sold at 5,010; the venue's cash moved by the realised 10 x 50
    snap = snapshot(orders=[vorder("V1", "o1", "filled", qty=1, filled=1, symbol="ES"),
                            vorder("V2", "o2", "filled", qty=1, filled=1, side="sell", symbol="ES")],
                    fills=[vfill("X1", "o1", "V1", 1, 5000, symbol="ES"),
                           vfill("X2", "o2", "V2", 1, 5010, side="sell", symbol="ES")],
                    positions=[], balances=[("USD", "100500")])
    p = plan(state, snap)
    assert types(p) == ["OrderFilled", "OrderFilled"] and kinds(p) == ["missed_fill", "missed_fill"]  # no cash drift
    apply_plan(state, p)
    assert state.accounts[ACCOUNT].cash_at("SIM") == {"USD": 100500}


# ------------------------------------------------------------------ exercise, assignment, expiry


def settle(f: Fold, symbol: str, action: str, qty: str, **fields) -> int:
    return f.account_event(ev.OptionSettled, venue="sim", symbol=symbol, action=action, qty=qty, **fields)


def option(f: Fold, symbol: str, right: str, strike: str = "100") -> None:
    define(f, symbol, "option", multiplier=100, underlying="XYZ", strike=strike, right=right)


def test_exercising_a_long_call_buys_the_underlying_at_the_strike():
    f = Fold()
    option(f, "XYZC", "call")
    f.account_event(ev.CashBalanceRecorded, venue="sim", currency="USD", balance="100000")
    trade(f, "o1", "buy", "2", "3", symbol="XYZC")  # 600 of premium
    settle(f, "XYZC", "exercise", "2", venue_ref="act-1")
    opt, und = f.position("XYZC"), f.position("XYZ")
    assert opt.qty == 0 and opt.realized_pnl == -600  # the premium, realised
    assert (und.qty, und.avg_cost) == (200, 100)
    assert f.acct().cash_at("sim") == {"USD": 100000 - 600 - 20000}
    assert f.acct().daily["2024-03-05"].realized_pnl == -600
    assert f.state.option_settlements == {("acct", "sim", "act-1"): f.pos}


@pytest.mark.parametrize("right, underlying", [("call", -100), ("put", 100)])
def test_an_assigned_short_option_delivers_the_underlying(right, underlying):
    f = Fold()
    option(f, "XYZO", right, strike="50")
    trade(f, "o1", "sell", "1", "2", symbol="XYZO")  # 200 of premium received
    settle(f, "XYZO", "assignment", "1")
    assert f.position("XYZO").qty == 0 and f.position("XYZO").realized_pnl == 200
    assert (f.position("XYZ").qty, f.position("XYZ").avg_cost) == (underlying, 50)


def test_a_long_put_exercised_sells_and_an_expiry_closes_at_zero():
    f = Fold()
    option(f, "XYZP", "put")
    trade(f, "o1", "buy", "3", "1.5", symbol="XYZP")
    settle(f, "XYZP", "exercise", "1")
    assert f.position("XYZ").qty == -100
    settle(f, "XYZP", "expiry", "2")
    assert f.position("XYZP").qty == 0 and f.position("XYZP").realized_pnl == -450
    restored = snapshot_restore(f.state)
    assert restored.summary()["positions"] == f.state.summary()["positions"]


def test_a_daily_loss_in_another_currency_breaches_at_the_recorded_rate():
    f = Fold()
    define(f, "FESX", "future", multiplier=10, quote_currency="EUR")
    fx(f, "EUR", "USD", "1.5")
    f.limit("max_daily_loss", "140")
    trade(f, "o1", "buy", "1", "5000", symbol="FESX")
    f.intent("o2", "sell", "1", symbol="FESX")
    fill = ev.OrderFilled(event_id=uuid4(), occurred_at=T0, account="acct", client_order_id="o2", exec_id="x2",
                          qty="1", price="4990", fee="0")  # -100 EUR is -150 USD: beyond 140
    decision = rules.decide_fill(f.state, fill, T0)
    breach = decision.events[1][1]
    assert isinstance(breach, ev.DailyLimitBreached) and breach.value == D("-150.0")
