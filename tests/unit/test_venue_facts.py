"""The venue-fact events ``FillCorrected`` and ``FeeCharged``, and the pending fee of a fill.

The property: folding fills and then a venue's correction of one of them gives the state that
folding the corrected fills directly gives (positions, average cost, realised P&L, fees, cash, the
day's statistics, the orders' fills), through ``TradingState.apply``, the cold fold and a
checkpoint taken between the fills and the correction.
"""

from __future__ import annotations

from decimal import Decimal
from uuid import uuid4

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.support.corrections import FILL, correct, fees_of, fill_log
from tests.support.fold import Fold
from tradestate.domain import events as ev
from tradestate.domain import snapshot
from tradestate.domain.fold import fold_cold
from tradestate.domain.state import JOURNAL_FILLS, TradingState

D = Decimal


def _r(value: Decimal) -> Decimal:
    # average-cost divisions round at 28 digits, and a replay sums them in another order
    return value.quantize(D("1e-12"))


def _fills_view(state: TradingState) -> dict:
    """What a correction must leave as the direct fold does (not the orders' statuses: a
    correction does not reopen a finished order, and orders here are never completed)."""
    out = {"positions": {}, "orders": {}, "accounts": {}}
    for key, p in sorted(state.positions.items()):
        if p.qty or p.realized_pnl or p.fees:  # a position whose only fill was busted is as none
            out["positions"][key] = (p.qty, _r(p.avg_cost), _r(p.realized_pnl), p.fees, p.last_price)
    for sid, o in sorted(dict.items(state.orders)):
        out["orders"][sid] = (o.filled_qty, o.fill_notional, o.fees,
                              sorted((k, q, px) for k, (q, px, _pos) in o.executions.items()))
    for name, a in sorted(state.accounts.items()):
        out["accounts"][name] = (dict(a.cash), {d: (s.fills, s.volume, _r(s.realized_pnl), s.fees)
                                                for d, s in sorted(a.daily.items())
                                                if s.fills or s.volume or _r(s.realized_pnl) or s.fees})
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fills=st.lists(FILL, min_size=1, max_size=14), pick=st.integers(0, 100),
       new_qty=st.integers(0, 30), new_price=st.integers(90, 110), new_fee=st.sampled_from([None, "0", "1.25"]),
       with_cash=st.booleans(), checkpoint=st.booleans())
def test_a_correction_folds_like_the_corrected_fills(fills, pick, new_qty, new_price, new_fee, with_cash, checkpoint):
    pick %= len(fills)
    if not new_qty and new_fee == "1.25":
        new_fee = None  # a bust with a fee of its own has no direct equivalent
    fees = fees_of(fills)

    def setup(f: Fold) -> None:
        if with_cash:
            f.account_event(ev.CashBalanceRecorded, venue="sim", balance="100000")

    direct = fill_log(fills, fees, setup=setup, corrected=(pick, new_qty, new_price, new_fee))
    corrected = fill_log(fills, fees, setup=setup)
    f = corrected
    if checkpoint:  # restore from a checkpoint taken before the correction
        doc, finished = snapshot.take(f.state)
        f.state = snapshot.restore(orjson.loads(snapshot.encode(doc)), finished)
    correct(f, fills, fees, pick, new_qty, new_price, new_fee)
    if len(fills) - pick <= JOURNAL_FILLS:  # the corrected fill is among the position's last ones: exact
        assert _fills_view(f.state) == _fills_view(direct.state)
    else:  # older: quantity, cash, fees and total P&L exact
        for key, p in direct.state.positions.items():
            q = f.state.positions[key]
            mark = D(100)
            assert (q.qty, q.fees) == (p.qty, p.fees)
            # equal but for the rounding of average-cost divisions (28 significant digits)
            assert abs((q.realized_pnl + mark * q.qty - q.cost) - (p.realized_pnl + mark * p.qty - p.cost)) < D("1e-9")
        assert f.state.accounts["acct"].cash == direct.state.accounts["acct"].cash
    # the execution index follows the correction
    ids = f.state.exec_ids.get("sim", {})  # a bust of the venue's only execution leaves no index
    assert f"x{pick}.01" not in ids and (f"x{pick}.02" in ids) == bool(new_qty)
    # the cold fold of the same log gives the same state
    cold, _ = fold_cold([corrected.rows])
    for sid in list(dict.keys(corrected.state.orders)):
        cold.orders.pop(sid, None)
    live = Fold()
    for row in corrected.rows:
        live.state.apply(row[0], row[1], row[2], row[3], orjson.loads(row[4]), row[5])
    assert {k: p.as_dict() for k, p in cold.positions.items()} == {k: p.as_dict() for k, p in live.state.positions.items()}
    assert {n: (a.cash, a.daily) for n, a in cold.accounts.items()} == \
        {n: (a.cash, a.daily) for n, a in live.state.accounts.items()}


def test_a_correction_that_completes_an_open_order_fills_it_and_one_on_a_filled_order_keeps_it_filled():
    f = Fold()
    f.intent("o1", "buy", "100")
    f.fill("o1", "x.01", "40", "10")
    f.order_event(ev.FillCorrected, "o1", corrected_exec_id="x.01", exec_id="x.02", qty="100", price="10",
                  previous_qty="40", previous_price="10")
    o = f.order("o1")
    assert (o.status, o.filled_qty, set(o.executions)) == ("filled", D(100), {"x.02"})
    f.order_event(ev.FillCorrected, "o1", corrected_exec_id="x.02", exec_id="x.03", qty="60", price="10.5",
                  previous_qty="100", previous_price="10")
    assert (o.status, o.filled_qty, o.avg_fill_price) == ("filled", D(60), D("10.5"))
    assert (f.position().qty, f.position().avg_cost) == (D(60), D("10.5"))


def test_a_bust_removes_the_fill_and_reopens_nothing():
    f = Fold()
    f.intent("o1", "buy", "100")
    f.fill("o1", "x.01", "40", "10", fee="1")
    f.order_event(ev.FillCorrected, "o1", corrected_exec_id="x.01", exec_id="x.02", qty="0", price="10",
                  previous_qty="40", previous_price="10", previous_fee="1", fee="0")
    o = f.order("o1")
    assert (o.status, o.filled_qty, o.fees, o.executions) == ("submitted", D(0), D(0), {})  # no ack: no venue id
    assert (f.position().qty, f.position().fees) == (D(0), D(0))
    assert f.acct().day("2024-03-05").fills == 0


def test_a_correction_needs_a_new_exec_id():
    with pytest.raises(ValidationError, match="new exec_id"):
        ev.FillCorrected(event_id=uuid4(), account="a", client_order_id="o", corrected_exec_id="x.01",
                         exec_id="x.01", qty="1", price="1", previous_qty="1", previous_price="1")


# ----------------------------------------------------------------------------------- fees


def test_a_pending_fee_is_visible_until_its_fee_is_charged_once():
    f = Fold()
    f.account_event(ev.CashBalanceRecorded, venue="sim", balance="10000")
    f.intent("o1", "buy", "10")
    f.fill("o1", "x.01", "10", "100", fee_pending=True)
    o = f.order("o1")
    assert o.as_dict()["fees_pending"] == ["x.01"]
    assert f.acct().fees_pending == {"x.01": o.stream_id}
    assert f.acct().cash["USD"] == D(9000)
    for _ in range(2):  # the same report twice: charged once
        f.account_event(ev.FeeCharged, venue="sim", fee_id="x.01", exec_id="x.01", client_order_id="o1",
                        symbol="AAPL", amount="1.05")
    assert o.as_dict()["fees_pending"] == [] and f.acct().fees_pending == {}
    assert f.acct().cash["USD"] == D("8998.95")
    assert f.position().fees == D("1.05")
    day = f.acct().day("2024-03-05")
    assert (day.fees, day.net_pnl) == (D("1.05"), D("-1.05"))
    assert f.state.summary()["accounts"]["acct"]["fee_ids"] == ["x.01"]


def test_a_fee_in_kind_reduces_the_position_not_the_cash():
    f = Fold()
    f.account_event(ev.CashBalanceRecorded, venue="sim", balance="100000")
    f.intent("o1", "buy", "1", symbol="BTC/USD")
    f.fill("o1", "x1", "1", "60000")
    f.account_event(ev.FeeCharged, venue="sim", fee_id="CFEE-1", symbol="BTC/USD", amount="0.0025",
                    currency="BTC", in_kind=True)
    p = f.position("BTC/USD")
    assert p.qty == D("0.9975") and p.cost == D(60000)
    assert f.acct().cash["USD"] == D(40000)
    with pytest.raises(ValidationError, match="in kind"):
        ev.FeeCharged(event_id=uuid4(), account="a", venue="v", fee_id="f", amount="1", in_kind=True)


def test_pending_fees_and_charged_fee_ids_survive_a_checkpoint():
    f = Fold()
    f.intent("o1", "buy", "10")
    f.fill("o1", "x.01", "5", "100", fee_pending=True)
    f.fill("o1", "x.02", "5", "100", fee_pending=True)
    f.account_event(ev.FeeCharged, venue="sim", fee_id="x.01", exec_id="x.01", amount="1")
    doc, finished = snapshot.take(f.state)
    restored = snapshot.restore(orjson.loads(snapshot.encode(doc)), finished)
    assert restored.account("acct").fees_pending == f.acct().fees_pending != {}
    assert restored.account("acct").fee_ids == f.acct().fee_ids and set(f.acct().fee_ids) == {"x.01"}
    assert restored.positions[("acct", "sim", "AAPL")].journal == f.position().journal


def test_a_version_2_fill_loads_without_a_pending_fee():
    payload = ev.OrderFilled(event_id=uuid4(), account="a", client_order_id="o", exec_id="x",
                             qty="1", price="1").to_payload()
    del payload["fee_pending"]
    payload["_v"] = 2
    assert ev.decode("OrderFilled", payload).fee_pending is False
    f = Fold()
    f.intent("o", "buy", "1", account="a")
    f.raw(f.order("o", "a").stream_id, "OrderFilled", payload)
    assert f.state.account("a").fees_pending == {}


def test_an_orders_fee_on_its_stream_folds_cold_as_it_applies_and_survives_a_checkpoint():
    f = Fold()
    f.account_event(ev.CashBalanceRecorded, venue="sim", balance="10000")
    stream = f.intent("o1", "buy", "100")
    f.fill("o1", "x.01", "40", "100", fee_pending=True)
    f.fill("o1", "y.01", "10", "100", fee="0.1")
    f.add(stream, ev.FeeCharged(event_id=uuid4(), account="acct", venue="sim", fee_id="x.01", exec_id="x.01",
                                client_order_id="o1", symbol="AAPL", amount="0.4"))
    f.order_event(ev.FillCorrected, "o1", corrected_exec_id="y.01", exec_id="y.02", qty="5", price="99",
                  previous_qty="10", previous_price="100", previous_fee="0.1", fee_pending=True)
    o = f.order("o1")
    assert (o.fees, o.exec_fees, o.as_dict()["fees_pending"]) == (D("0.4"), {"x.01": D("0.4")}, ["y.02"])
    cold, _ = fold_cold([f.rows])
    built = cold.orders[stream]  # still open: built in full from its rows
    assert (built.fees, built.exec_fees, built.filled_qty) == (o.fees, o.exec_fees, o.filled_qty)
    assert cold.accounts["acct"].fees_pending == f.acct().fees_pending == {"y.02": stream}
    assert cold.accounts["acct"].cash == f.acct().cash
    doc, finished = snapshot.take(f.state)
    restored = snapshot.restore(orjson.loads(snapshot.encode(doc)), finished).orders[stream]
    assert (restored.fees, restored.exec_fees) == (o.fees, o.exec_fees)
