"""Instruments together with the venue facts (pure domain): a venue's correction (``FillCorrected``)
and a fee posted apart (``FeeCharged``) on a registered instrument book money as its fills do
(multiplier, quote currency, a future's cash by its realised P&L, the day's P&L by the recorded FX
rate), at the account and at the venue; corporate actions and settlements drop the fill journal;
apply, the cold fold and a checkpoint with its tail agree on logs mixing all of them; the
reconciliation plan's per-venue cash check composes with corrections and fees."""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal
from uuid import UUID, uuid4

import orjson
import pytest
from hypothesis import example, HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.corrections import FILL, correct, fees_of, fill_log
from tests.support.fold import T0, Fold
from tradestate.domain import events as ev
from tradestate.domain import snapshot
from tradestate.domain.fold import fold_cold
from tradestate.domain.ids import account_stream_id, corporate_action_stream_id, fx_stream_id, instrument_stream_id, order_stream_id
from tradestate.domain.reconcile import plan_reconciliation
from tradestate.domain.state import JOURNAL_FILLS, TradingState
from tradestate.domain.venue import VenueBalance, VenueFee, VenueFill, VenueOrder, VenuePosition, VenueSnapshot

D = Decimal
EXPIRY = "2030-01-01T00:00:00Z"


def _r(value: Decimal) -> Decimal:
    # average-cost divisions round at 28 digits, and a replay sums them in another order
    return value.quantize(D("1e-9"))


def define(f: Fold, symbol: str, asset_class: str, multiplier: str = "1", currency: str = "USD", **fields) -> None:
    f.add(instrument_stream_id(symbol), ev.InstrumentDefined(
        event_id=uuid4(), symbol=symbol, asset_class=asset_class, multiplier=multiplier, quote_currency=currency,
        expiry=EXPIRY if asset_class in ("future", "option") else None, **fields))


def rate(f: Fold, value: str = "1.1") -> None:
    f.add(fx_stream_id("EUR", "USD"), ev.FxRateRecorded(event_id=uuid4(), base="EUR", quote="USD", rate=value))


def balances(f: Fold, venues=("sim", "ib"), currencies=("USD", "EUR"), amount: str = "1000000") -> None:
    for venue in venues:
        for currency in currencies:
            f.account_event(ev.CashBalanceRecorded, venue=venue, currency=currency, balance=amount)


def money_view(state: TradingState) -> dict:
    """What a correction must leave as the direct fold of the corrected fills does: positions with
    their instrument, orders' fills, the account's cash, its cash per venue and its days."""
    out: dict = {"positions": {}, "orders": {}, "accounts": {}}
    for key, p in sorted(state.positions.items()):
        if p.qty or p.realized_pnl or p.fees:  # a position whose only fill was busted is as none
            out["positions"][key] = (p.qty, _r(p.avg_cost), _r(p.realized_pnl), p.fees, p.last_price,
                                     p.multiplier, p.currency)
    for sid, o in sorted(dict.items(state.orders)):
        out["orders"][sid] = (o.filled_qty, o.fill_notional, o.fees,
                              sorted((k, q, px) for k, (q, px, _pos) in o.executions.items()))
    for name, a in sorted(state.accounts.items()):
        out["accounts"][name] = (
            {c: _r(v) for c, v in a.cash.items()},
            {venue: {c: _r(v) for c, v in cash.items()} for venue, cash in a.venue_cash.items()},
            {d: (s.fills, s.volume, _r(s.realized_pnl), s.fees) for d, s in sorted(a.daily.items())
             if s.fills or s.volume or _r(s.realized_pnl) or s.fees})
    return out


def restored(state: TradingState) -> TradingState:
    doc, finished = snapshot.take(state)
    return snapshot.restore(orjson.loads(snapshot.encode(doc)), finished)


# ---------------------------------------------------------------- (a) a correction on an instrument

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fills=st.lists(FILL, min_size=1, max_size=JOURNAL_FILLS), pick=st.integers(0, 100),
       new_qty=st.integers(0, 30), new_price=st.integers(90, 110), new_fee=st.sampled_from([None, "0", "1.25"]),
       asset_class=st.sampled_from(["future", "equity"]), multiplier=st.sampled_from(["1", "0.1", "50", "100"]),
       currency=st.sampled_from(["USD", "EUR"]), checkpoint=st.booleans())
def test_a_correction_on_an_instrument_folds_like_the_corrected_fills(fills, pick, new_qty, new_price, new_fee,
                                                                      asset_class, multiplier, currency, checkpoint):
    """Fills on an instrument with a multiplier, then a ``FillCorrected`` of one of them, equal the
    fold of the corrected fills: position, realised P&L, the days' P&L (by the FX rate), the cash
    of the account and of each venue, in the quote currency (a future's by its realised P&L)."""
    pick %= len(fills)
    if not new_qty and new_fee == "1.25":
        new_fee = None  # a bust with a fee of its own has no direct equivalent
    fees = fees_of(fills)

    def setup(f: Fold) -> None:
        rate(f)
        define(f, "ES", asset_class, multiplier, currency)
        balances(f)

    direct = fill_log(fills, fees, setup=setup, symbol="ES", corrected=(pick, new_qty, new_price, new_fee))
    f = fill_log(fills, fees, setup=setup, symbol="ES")
    if checkpoint:  # restored from a checkpoint before the correction: journal and spec both kept
        f.state = restored(f.state)
    correct(f, fills, fees, pick, new_qty, new_price, new_fee)
    got, want = money_view(f.state), money_view(direct.state)
    assert got == want
    # the other venue's cash is untouched; this venue's moved as the account's did
    acct = f.acct()
    assert acct.venue_cash["ib"] == {"USD": D(1000000), "EUR": D(1000000)}
    assert acct.venue_cash["sim"] == acct.cash


# ---------------------------------------------------------------- (b) a fee on an instrument position


@settings(max_examples=150, deadline=None)
@given(amount=st.integers(1, 10**6).map(lambda c: D(c) / 1000), currency=st.sampled_from(["USD", "EUR"]),
       on_order=st.booleans(), traded=st.booleans(), in_kind=st.booleans(),
       multiplier=st.sampled_from(["1", "0.1", "50", "100"]))
def test_a_fee_on_an_instrument_moves_account_and_venue_cash_equally(amount, currency, on_order, traded, in_kind,
                                                                     multiplier):
    f = Fold()
    rate(f)
    define(f, "BTC/EUR", "crypto", multiplier, "EUR", fractional=True)
    balances(f)
    stream = f.intent("o1", "buy", "10", symbol="BTC/EUR")
    if traded:
        f.fill("o1", "x1", "10", "100", fee_pending=True)
    before_cash, before_sim = dict(f.acct().cash), dict(f.acct().venue_cash["sim"])
    held = f.position("BTC/EUR")
    qty_before, fees_before = (held.qty, held.fees) if held is not None else (D(0), D(0))
    fee = ev.FeeCharged(event_id=uuid4(), account="acct", venue="sim", fee_id="fee-1", amount=amount,
                        currency="BTC" if in_kind else currency, symbol="BTC/EUR", in_kind=in_kind,
                        exec_id="x1" if traded else None, client_order_id="o1" if on_order else None)
    f.add(stream if on_order else account_stream_id("acct"), fee)
    held = f.position("BTC/EUR")
    assert held.spec is f.state.instruments["BTC/EUR"]  # a position the fee created has its instrument
    acct = f.acct()
    if in_kind:  # units of the asset, in contracts of the multiplier; no cash
        assert held.qty == qty_before - amount / D(multiplier)
        assert (acct.cash, acct.venue_cash["sim"]) == (before_cash, before_sim)
    else:
        moved = {c: acct.cash[c] - before_cash[c] for c in acct.cash}
        at_venue = {c: acct.venue_cash["sim"][c] - before_sim[c] for c in acct.venue_cash["sim"]}
        assert moved == at_venue == {"USD": D(0), "EUR": D(0), currency: -amount}
        assert held.fees == fees_before + amount
    assert acct.venue_cash["ib"] == {"USD": D(1000000), "EUR": D(1000000)}
    assert acct.fees_pending == {}
    cold, _ = fold_cold([f.rows])
    assert (cold.accounts["acct"].cash, cold.accounts["acct"].venue_cash) == (acct.cash, acct.venue_cash)
    assert cold.positions[("acct", "sim", "BTC/EUR")].as_dict() == held.as_dict()


# ------------------------------------------- (c) apply, cold fold and checkpoint + tail on mixed logs

SYMBOLS = ("ES", "XYZ", "BTC/USD", "AAPL")  # future x50 EUR, equity x100 EUR, crypto USD, unregistered


def mixed_log(seed: int, steps: int = 70) -> Fold:
    """A log of instruments, FX rates, cash at two venues, fills (some with their fee pending),
    corrections and busts of earlier fills, fees on orders and on the account (in cash and in
    kind) and splits, drawn from ``seed``."""
    rng = random.Random(seed)
    f = Fold()
    f.now = T0
    rate(f, "1.1")
    define(f, "ES", "future", "50", "EUR")
    define(f, "XYZ", "equity", "100", "EUR")
    define(f, "BTC/USD", "crypto", "1", "USD", fractional=True)
    balances(f, amount="500000")
    orders: list[tuple[str, str, str]] = []  # (coid, symbol, venue)
    execs: dict[str, dict[str, tuple[str, str, str]]] = {}  # coid -> exec id -> (qty, price, fee)
    n = 0
    for _ in range(steps):
        f.now += timedelta(minutes=rng.randint(1, 400))
        roll = rng.random()
        if roll < 0.2 or not orders:
            n += 1
            coid, symbol, venue = f"o{n}", rng.choice(SYMBOLS), rng.choice(("sim", "ib"))
            f.intent(coid, rng.choice(("buy", "sell")), "1000", symbol=symbol, venue=venue)
            orders.append((coid, symbol, venue))
            execs[coid] = {}
        elif roll < 0.55:
            coid, symbol, venue = rng.choice(orders)
            n += 1
            qty, price = str(rng.randint(1, 20)), str(rng.randint(90, 110))
            pending = rng.random() < 0.2
            fee = "0" if pending else str(D(rng.randint(0, 300)) / 100)
            f.fill(coid, f"x{n}.01", qty, price, fee=fee, fee_pending=pending)
            execs[coid][f"x{n}.01"] = (qty, price, fee)
        elif roll < 0.7:
            candidates = [(c, e) for c, by in execs.items() for e in by]
            if not candidates:
                continue
            coid, old = rng.choice(candidates)
            q0, p0, f0 = execs[coid].pop(old)
            n += 1
            new = f"{old.split('.')[0]}.c{n}"
            q1 = str(rng.choice((0, rng.randint(1, 20))))
            p1 = str(rng.randint(90, 110))
            fee = rng.choice((None, "0", "0.5")) if q1 != "0" else None
            f.order_event(ev.FillCorrected, coid, corrected_exec_id=old, exec_id=new, qty=q1, price=p1,
                          previous_qty=q0, previous_price=p0, previous_fee=f0, fee=fee)
            if q1 != "0":
                execs[coid][new] = (q1, p1, f0 if fee is None else fee)
        elif roll < 0.82:
            n += 1
            coid, symbol, venue = rng.choice(orders)
            amount = str(D(rng.randint(1, 500)) / 100)
            if rng.random() < 0.5 and execs[coid]:
                exec_id = rng.choice(list(execs[coid]))
                f.add(order_stream_id("acct", coid), ev.FeeCharged(
                    event_id=uuid4(), account="acct", venue=venue, fee_id=f"fee-{n}", exec_id=exec_id,
                    client_order_id=coid, symbol=symbol, amount=amount, currency=rng.choice(("USD", "EUR"))))
            elif symbol == "BTC/USD" and rng.random() < 0.5:
                f.account_event(ev.FeeCharged, venue=venue, fee_id=f"fee-{n}", symbol=symbol, in_kind=True,
                                amount=str(D(rng.randint(1, 100)) / 1000), currency="BTC")
            else:
                f.account_event(ev.FeeCharged, venue=venue, fee_id=f"fee-{n}", symbol=symbol, amount=amount,
                                currency=rng.choice(("USD", "EUR")))
        elif roll < 0.87:
            rate(f, str(D(rng.randint(100, 130)) / 100))
        elif roll < 0.9:
            symbol = rng.choice(("XYZ", "AAPL"))
            f.add(corporate_action_stream_id(symbol), ev.CorporateActionRecorded(
                event_id=uuid4(), symbol=symbol, action="split", ratio_from=1, ratio_to=2, effective_at=f.now))
        else:
            f.now += timedelta(hours=rng.randint(5, 30))  # another trading day
    return f


def _compared(state: TradingState) -> dict:
    s = state.summary()
    return {
        "positions": s["positions"],
        "journals": {k: p.journal for k, p in sorted(state.positions.items())},
        "specs": {k: p.spec for k, p in sorted(state.positions.items())},
        "instruments": s["instruments"], "fx_rates": s["fx_rates"],
        "accounts": {name: (a.cash, a.venue_cash, a.daily, a.fees_pending, a.fee_ids)
                     for name, a in sorted(state.accounts.items())},
        "exec_ids": state.exec_ids,
    }


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), cut=st.floats(0, 1), page=st.integers(1, 9))
@example(seed=95, cut=0.7, page=3)  # a bust of a venue's only execution before the cut (an empty index)
def test_apply_cold_fold_and_checkpoint_with_tail_agree_on_logs_with_instruments_corrections_and_fees(seed, cut,
                                                                                                       page):
    f = mixed_log(seed)
    want = _compared(f.state)
    rows = f.rows
    cold = fold_cold([rows[i:i + page] for i in range(0, len(rows), page)])[0]
    assert _compared(cold) == want
    k = int(len(rows) * cut)
    head = TradingState()
    for row in rows[:k]:
        head.apply(row[0], row[1], row[2], row[3], orjson.loads(row[4]), row[5])
    tail = restored(head)
    for row in rows[k:]:
        tail.apply(row[0], row[1], row[2], row[3], orjson.loads(row[4]), row[5])
    assert _compared(tail) == want


# ------------------------------------------------------------------- checkpoints, journals, splits


def test_a_checkpoint_keeps_a_positions_journal_and_spec_and_old_checkpoints_load():
    f = Fold()
    rate(f)
    define(f, "ES", "future", "50", "EUR")
    balances(f)
    f.intent("o1", "buy", "10", symbol="ES")
    f.intent("o2", "sell", "10", symbol="ES")
    f.fill("o1", "x1.01", "4", "100")
    f.fill("o2", "y1.01", "3", "104")
    doc, finished = snapshot.take(f.state)
    doc = orjson.loads(snapshot.encode(doc))
    back = snapshot.restore(doc, finished)
    p, q = f.position("ES"), back.positions[("acct", "sim", "ES")]
    assert (q.spec, q.journal, q.as_dict()) == (p.spec, p.journal, p.as_dict())
    assert q.multiplier == 50 and q.currency == "EUR" and len(q.journal) == 2
    # a correction after the restore replays the journal with the multiplier, as without one
    fields = dict(corrected_exec_id="x1.01", exec_id="x1.02", qty="4", price="101", previous_qty="4",
                  previous_price="100")
    f.order_event(ev.FillCorrected, "o1", **fields)
    g = Fold()
    g.state, g.pos, g.versions, g.now = back, f.pos - 1, f.versions.copy(), f.now
    g.versions[order_stream_id("acct", "o1")] -= 1
    g.order_event(ev.FillCorrected, "o1", **fields)
    assert money_view(g.state) == money_view(f.state)
    assert f.position("ES").realized_pnl == 3 * (104 - 101) * 50  # short 3 closed against a long at 101
    # an old checkpoint: positions of nine fields, no instruments, no journal, no venue cash
    old = orjson.loads(snapshot.encode(snapshot.take(f.state)[0]))
    for key in ("instruments", "fx_rates", "corporate_actions", "option_settlements"):
        old.pop(key)
    old["positions"] = [p[:9] for p in old["positions"]]
    for a in old["accounts"].values():
        a.pop("venue_cash")
    legacy = snapshot.restore(old, b"").positions[("acct", "sim", "ES")]
    assert (legacy.spec, legacy.journal, legacy.qty) == (None, None, f.position("ES").qty)


@pytest.mark.parametrize("event", ["split", "symbol_change", "option_expiry", "redefined", "redefined_same"])
def test_what_no_fill_explains_drops_the_journal(event):
    f = Fold()
    define(f, "XYZ", "equity", "100")
    f.intent("o1", "buy", "10", symbol="XYZ")
    f.fill("o1", "x1.01", "4", "100")
    if event == "split":
        f.add(corporate_action_stream_id("XYZ"), ev.CorporateActionRecorded(
            event_id=uuid4(), symbol="XYZ", action="split", ratio_from=1, ratio_to=2, effective_at=f.now))
    elif event == "symbol_change":
        f.add(corporate_action_stream_id("XYZ"), ev.CorporateActionRecorded(
            event_id=uuid4(), symbol="XYZ", action="symbol_change", new_symbol="XYZW", effective_at=f.now))
        assert f.position("XYZW").journal is None
    elif event == "option_expiry":
        f.account_event(ev.OptionSettled, venue="sim", symbol="XYZ", action="expiry", qty="4")
    else:
        define(f, "XYZ", "equity", "100" if event == "redefined_same" else "10")
    held = f.position("XYZ")
    assert (held.journal is None) == (event != "redefined_same")
    before = (held.qty, held.cost, held.realized_pnl)
    # a later correction of the fill (4 bought 1 cheaper) books on the position as it is: exact in
    # quantity and total P&L; a flat one (renamed away, expired) realises it at once
    f.order_event(ev.FillCorrected, "o1", corrected_exec_id="x1.01", exec_id="x1.02", qty="4", price="99",
                  previous_qty="4", previous_price="100")
    if before[0]:
        assert (held.qty, held.cost, held.realized_pnl) == (before[0], before[1] - 4, before[2])
    else:
        assert (held.qty, held.cost, held.realized_pnl) == (0, 0, before[2] + 4 * held.multiplier)


# ------------------------------------------------------------- the reconciliation plan composes

RID = UUID("00000000-0000-4000-8000-000000000018")
NOW = T0 + timedelta(days=1)


def plan(state: TradingState, *, fills=(), orders=(), positions=(), balances=(), fees=()):
    snap = VenueSnapshot(broker="sim", venue="sim", account="acct", taken_at=NOW,
                         positions=[VenuePosition(s, D(q)) for s, q in positions], open_orders=[],
                         recent_orders=list(orders), fills=list(fills),
                         balances=[VenueBalance(c, D(a)) for c, a in balances], fees=list(fees))
    return plan_reconciliation(state, snap, reconciliation_id=RID, now=NOW + timedelta(minutes=5))


def apply_plan(f: Fold, p) -> None:
    for stream, e in p.events:
        f.add(stream, e)


def vorder(coid: str, side: str, qty: str, filled: str, symbol: str) -> VenueOrder:
    return VenueOrder(venue_order_id=f"V-{coid}", client_order_id=coid, symbol=symbol, side=side,
                      order_type="market", qty=D(qty), filled_qty=D(filled), status="filled", raw_status="filled",
                      limit_price=None, avg_fill_price=None, submitted_at=T0, updated_at=T0)


def vfill(exec_id: str, coid: str, side: str, qty: str, price: str, symbol: str, **fields) -> VenueFill:
    return VenueFill(exec_id=exec_id, client_order_id=coid, venue_order_id=f"V-{coid}", symbol=symbol, side=side,
                     qty=D(qty), price=D(price), occurred_at=T0, **fields)


@pytest.mark.parametrize("asset_class", ["future", "equity"])
def test_a_planned_correction_on_an_instrument_moves_this_venues_cash_as_the_fold_will(asset_class):
    """The plan compares the venue's balance with the cash we hold AT THAT VENUE, moved by the
    correction it plans as the fold will move it (multiplier, quote currency, a future's realised
    P&L): no cash drift, and nothing left to do once applied. Another venue's cash stays."""
    f = Fold()
    rate(f)
    define(f, "ES", asset_class, "50", "EUR")
    balances(f, currencies=("EUR",), amount="100000")
    f.intent("b", "buy", "2", symbol="ES")
    f.intent("s", "sell", "1", symbol="ES")
    f.fill("b", "X.01", "2", "100")
    f.fill("s", "Y.01", "1", "110")
    cash_sim = f.acct().venue_cash["sim"]["EUR"]
    # the venue corrects the sell's price: 110 -> 112
    moved = D(2 * 50)  # +2 on one contract x 50: the notional received, or a future's realised P&L
    corrected = vfill("Y.02", "s", "sell", "1", "112", "ES", corrects=("Y.01",))
    venue = dict(orders=[vorder("b", "buy", "2", "2", "ES"), vorder("s", "sell", "1", "1", "ES")],
                 fills=[vfill("X.01", "b", "buy", "2", "100", "ES"), corrected], positions=[("ES", 1)],
                 balances=[("EUR", cash_sim + moved)])
    p = plan(f.state, **venue)
    assert [e.type_name() for _, e in p.events] == ["FillCorrected"]
    assert {d.kind for d in p.discrepancies} == {"fill_corrected"}  # no cash drift at this venue
    apply_plan(f, p)
    acct = f.acct()
    assert acct.venue_cash["sim"]["EUR"] == acct.cash["EUR"] == cash_sim + moved
    assert acct.venue_cash["ib"]["EUR"] == D(100000)
    assert f.position("ES").realized_pnl == D(12 * 50)  # (112 - 100) x 50, in EUR
    assert acct.daily["2024-03-05"].realized_pnl == D(12 * 50) * D("1.1")  # in USD by the recorded rate
    assert plan(f.state, **venue).events == []


def test_a_late_fee_and_a_posted_fee_in_kind_on_an_instrument_compose_with_the_venues_cash():
    f = Fold()
    define(f, "ETH/USD", "crypto", "10", "USD", fractional=True)
    balances(f, currencies=("USD",), amount="100000")
    f.intent("b", "buy", "2", symbol="ETH/USD")
    f.fill("b", "X.01", "2", "100", fee_pending=True)
    cash_sim = f.acct().venue_cash["sim"]["USD"]
    assert cash_sim == D(100000) - 2 * 100 * 10
    reported = vfill("X.01", "b", "buy", "2", "100", "ETH/USD", fee=D("1.5"))
    in_kind = VenueFee(fee_id="CFEE-1", amount=D("0.5"), currency="ETH", symbol="ETH/USD", in_kind=True,
                       occurred_at=T0)
    venue = dict(orders=[vorder("b", "buy", "2", "2", "ETH/USD")], fills=[reported],
                 positions=[("ETH/USD", D(2) - D("0.05"))], balances=[("USD", cash_sim - D("1.5"))], fees=[in_kind])
    p = plan(f.state, **venue)
    assert sorted(e.type_name() for _, e in p.events) == ["FeeCharged", "FeeCharged"]
    assert not [d for d in p.discrepancies if d.kind in ("cash_drift", "position_mismatch")]
    apply_plan(f, p)
    acct = f.acct()
    assert acct.venue_cash["sim"]["USD"] == acct.cash["USD"] == cash_sim - D("1.5")
    assert acct.venue_cash["ib"]["USD"] == D(100000)
    assert f.position("ETH/USD").qty == D("1.95")  # 0.5 ETH is 0.05 contracts of 10
    assert plan(f.state, **venue).events == []
