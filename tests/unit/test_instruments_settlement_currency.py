"""A fill's cash moves in its instrument's settlement currency, converted at the FX rate recorded
before the fill; without one it is kept apart and said (``AccountState.unconverted``), never
moved 1:1, and reconciliation holds the cash until a rate explains it."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from uuid import uuid4

import orjson

from tradestate.domain import events as ev
from tradestate.domain import instruments as ins
from tradestate.domain import snapshot
from tradestate.domain.fold import fold_cold
from tradestate.domain.ids import fx_stream_id, instrument_stream_id

from tests.support.fold import Fold

D = Decimal
EXPIRY = datetime(2026, 12, 18, 14, 30, tzinfo=timezone.utc)


def define(f: Fold, symbol: str, asset_class: str = "equity", **fields) -> None:
    if asset_class == "future":
        fields.setdefault("expiry", EXPIRY)
    f.add(instrument_stream_id(symbol), ev.InstrumentDefined(event_id=uuid4(), symbol=symbol, asset_class=asset_class,
                                                             **fields))


def rate(f: Fold, base: str, quote: str, value: str) -> None:
    f.add(fx_stream_id(base, quote), ev.FxRateRecorded(event_id=uuid4(), base=base, quote=quote, rate=value))


def trade(f: Fold, coid: str, side: str, qty: str, price: str, symbol: str) -> None:
    f.intent(coid, side, qty, symbol=symbol)
    f.fill(coid, f"x-{coid}", qty, price)


def test_a_fill_pays_in_the_settlement_currency_at_the_rate_recorded_before_it():
    f = Fold()
    define(f, "SAPX", quote_currency="EUR", settlement_currency="USD")
    f.account_event(ev.CashBalanceRecorded, venue="sim", currency="USD", balance="100000")
    rate(f, "EUR", "USD", "1.1")
    trade(f, "o1", "buy", "10", "100", "SAPX")
    assert f.acct().cash == {"USD": D(100000) - D(1100)}
    rate(f, "EUR", "USD", "1.25")  # a later rate counts for later fills only
    trade(f, "o2", "sell", "10", "100", "SAPX")
    assert f.acct().cash == {"USD": D(100000) - D(1100) + D(1250)}


def test_a_future_settled_in_another_currency_moves_its_realised_pnl_converted():
    f = Fold()
    define(f, "NKD", "future", multiplier=5, quote_currency="JPY", settlement_currency="USD")
    f.account_event(ev.CashBalanceRecorded, venue="sim", currency="USD", balance="0")
    rate(f, "USD", "JPY", "150")
    trade(f, "o1", "buy", "1", "39000", "NKD")
    trade(f, "o2", "sell", "1", "39300", "NKD")
    assert f.acct().cash["USD"] == D(300 * 5) / D(150)


def test_without_a_rate_the_cash_is_kept_apart_and_said_never_moved_one_to_one():
    f = Fold()
    define(f, "SAPX", quote_currency="EUR", settlement_currency="USD")
    f.account_event(ev.CashBalanceRecorded, venue="sim", currency="USD", balance="100000")
    trade(f, "o1", "buy", "10", "100", "SAPX")
    assert f.acct().cash == {"USD": 100000}
    assert f.acct().unconverted == {("sim", "EUR", "USD"): D(-1000)}
    assert f.state.summary()["accounts"]["acct"]["unconverted"] == {"sim|EUR|USD": D(-1000)}
    cold, _ = fold_cold([f.rows])
    doc, finished = snapshot.take(f.state)
    restored = snapshot.restore(orjson.loads(snapshot.encode(doc)), finished)
    assert cold.accounts["acct"].unconverted == f.acct().unconverted
    assert restored.accounts["acct"].unconverted == f.acct().unconverted
    f.account_event(ev.CashBalanceRecorded, venue="sim", currency="USD", balance="98900")  # the venue's balance
    assert f.acct().unconverted == {} and f.acct().cash == {"USD": 98900}


def test_reconciliation_holds_unconverted_cash_until_a_rate_explains_it():
    from tests.unit.test_reconcile_domain import ACCOUNT, apply, apply_plan, cash, intent, kinds, plan, snapshot as venue
    from tests.unit.test_reconcile_domain import types, vfill, vorder
    from tradestate.domain.state import TradingState

    state = TradingState()
    apply(state, instrument_stream_id("SAPX"), ev.InstrumentDefined(
        event_id=uuid4(), symbol="SAPX", asset_class="equity", quote_currency="EUR", settlement_currency="USD"))
    cash(state, 100_000)
    intent(state, "o1", "SAPX", qty=10, ack="V1", fills=[("X1", 10, 100)])
    snap = venue(orders=[vorder("V1", "o1", "filled", qty=10, filled=10, symbol="SAPX")],
                 fills=[vfill("X1", "o1", "V1", 10, 100, symbol="SAPX")], positions=[("SAPX", 10)],
                 balances=[("USD", "98900")])
    held = plan(state, snap)
    assert types(held) == [] and kinds(held) == ["fx_rate_missing"]
    assert "no EUR/USD rate recorded" in held.discrepancies[0].detail
    apply(state, fx_stream_id("EUR", "USD"), ev.FxRateRecorded(event_id=uuid4(), base="EUR", quote="USD", rate="1.1"))
    taken = plan(state, snap)  # the rate explains the venue's balance: recorded, not a disagreement
    assert types(taken) == ["CashBalanceRecorded"] and kinds(taken) == [] and taken.counts["cash_converted"] == 1
    apply_plan(state, taken)
    assert state.accounts[ACCOUNT].unconverted == {} and state.accounts[ACCOUNT].cash_at("SIM") == {"USD": 98900}
    assert types(plan(state, snap)) == []


def test_reconciliation_plans_a_missed_fills_cash_in_the_settlement_currency():
    from tests.unit.test_reconcile_domain import ACCOUNT, apply, apply_plan, cash, intent, kinds, plan, snapshot as venue
    from tests.unit.test_reconcile_domain import types, vfill, vorder
    from tradestate.domain.state import TradingState

    state = TradingState()
    apply(state, instrument_stream_id("SAPX"), ev.InstrumentDefined(
        event_id=uuid4(), symbol="SAPX", asset_class="equity", quote_currency="EUR", settlement_currency="USD"))
    apply(state, fx_stream_id("EUR", "USD"), ev.FxRateRecorded(event_id=uuid4(), base="EUR", quote="USD", rate="1.1"))
    cash(state, 100_000)
    intent(state, "o1", "SAPX", qty=10, ack="V1")
    snap = venue(orders=[vorder("V1", "o1", "filled", qty=10, filled=10, symbol="SAPX")],
                 fills=[vfill("X1", "o1", "V1", 10, 100, symbol="SAPX")], positions=[("SAPX", 10)],
                 balances=[("USD", "98900")])
    p = plan(state, snap)
    assert types(p) == ["OrderFilled"] and kinds(p) == ["missed_fill"]  # no cash drift
    apply_plan(state, p)
    assert state.accounts[ACCOUNT].cash_at("SIM") == {"USD": 98900}


def test_one_lookup_converts_an_instruments_money():
    rates = {("EUR", "USD"): D("1.25")}
    eur = ins.InstrumentSpec.from_payload({"symbol": "X", "asset_class": "equity", "quote_currency": "EUR"}, 0)
    assert ins.instrument_rate(rates, None) == 1  # no instrument: the account's currency
    assert ins.instrument_rate(rates, eur) == D("1.25")
    assert ins.instrument_rate(rates, eur, "EUR") == 1
    assert ins.instrument_rate({("USD", "EUR"): D("0.8")}, eur) == D("1.25")  # the inverse pair
    assert ins.instrument_rate({}, eur) is None


# ----------------------------------------------------------------------------------- property

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

steps = st.lists(st.one_of(
    st.tuples(st.just("fill"), st.sampled_from((1, -1)), st.integers(1, 30), st.integers(1, 10**5)),
    st.tuples(st.just("rate"), st.integers(50, 200)),
), min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(steps=steps, multiplier=st.sampled_from(["1", "10", "100", "0.5"]), future=st.booleans())
def test_cash_in_the_settlement_currency_is_each_fills_money_at_the_rate_before_it(steps, multiplier, future):
    """Cash (USD) == the sum of each fill's money in its quote currency (EUR: notional x multiplier,
    a future's realised P&L) times the EUR/USD rate last recorded before it; a fill before any
    rate moves nothing and is kept apart, in EUR."""
    f = Fold()
    define(f, "X", "future" if future else "equity", quote_currency="EUR", settlement_currency="USD",
           multiplier=multiplier)
    f.account_event(ev.CashBalanceRecorded, venue="sim", currency="USD", balance="0")
    mult, current, qty, cost = D(multiplier), None, D(0), D(0)
    expected_usd, kept_eur = D(0), D(0)
    for i, step in enumerate(steps):
        if step[0] == "rate":
            current = D(step[1]) / 100
            rate(f, "EUR", "USD", str(current))
            continue
        _, sign, n, cents = step
        price = D(cents) / 100
        trade(f, f"o{i}", "buy" if sign > 0 else "sell", str(n), str(price), "X")
        if future:  # the reference's own average-cost P&L of the fill
            signed = sign * n
            if qty == 0 or (qty > 0) == (signed > 0):
                money, qty, cost = D(0), qty + signed, cost + signed * price
            else:
                closing = min(abs(signed), abs(qty))
                released = cost if closing == abs(qty) else cost * closing / abs(qty)
                money = (price * closing * (1 if qty > 0 else -1) - released) * mult
                new = qty + signed
                cost = D(0) if new == 0 else (new * price if (new > 0) != (qty > 0) else cost - released)
                qty = new
        else:
            money = -sign * n * price * mult
        if current is None:
            kept_eur += money
        else:
            expected_usd += money * current
    assert f.acct().cash["USD"] == expected_usd
    assert f.acct().unconverted.get(("sim", "EUR", "USD"), D(0)) == kept_eur
    cold, _ = fold_cold([f.rows])
    assert cold.accounts["acct"].cash == f.acct().cash and cold.accounts["acct"].unconverted == f.acct().unconverted
