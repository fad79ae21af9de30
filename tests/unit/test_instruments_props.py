"""Properties of instruments, multipliers and currencies over generated logs (pure domain)."""

from __future__ import annotations

import pytest

from tests.support.instrument_logs import legacy_log, summary_digest

# sha256 of the summary of ``legacy_log(seed)``, taken with the code before instruments existed
# (commit f0b7bc1): a log without instrument events must fold to the same bytes for ever.
LEGACY_DIGESTS = [
    "09aca2643f75165529a3f7109926ff073140a55e84b8f8686d6b90ba80768e60",
    "7aabf99a78ed72e56ae6361f58102c9f2fbde8079681766f44f8c9cadb57ebf7",
    "f765d357d4dc9cda57456fca770c4557150e8459807cb177469e50630549e765",
    "bcada6775a3763a630000d074154fb69509ca0d25cc5a6d9714b135a1b98c968",
    "0ca236ecb3d4e89839b3abc08b31f272d89dae722d6f5d478504729f5724dd3f",
    "62a5873639b187e9395e9aa470c7dc3ee5f930f8ab5464f2d1e60e438bfb155d",
    "87e5605517accdaeded34ffd5e67ca1020238c78f6a4e6cf5cfe100f297d1824",
    "1919134bcc9ae07c62d8c3d48d173ed65a0a13523c77d5a9580f51c51c05bc88",
    "9b5b8a71784dd43e85bfe951f545e1556f9f837732bdac725e4988e467b64570",
    "ebb77f4d675e6a9fcafc0d543be634a2532c48fa9c9ec29c6dbee5d7f3536cfe",
    "46e5412cf600eaab7ae1db729e86f18c03abd5a5658dea8be53b05644727589d",
    "2dc79e51aa11a4eab4e2d03a6c2de2908cb35a80382ec2a3ba7b74af297f8ed1",
]


@pytest.mark.parametrize("seed", range(len(LEGACY_DIGESTS)))
def test_a_log_without_instruments_folds_to_the_same_bytes_as_before_instruments(seed):
    assert summary_digest(legacy_log(seed).state) == LEGACY_DIGESTS[seed]


# ------------------------------------------------------------------------------- hypothesis

from datetime import timezone  # noqa: E402
from decimal import Decimal  # noqa: E402
from uuid import uuid4  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tradestate.domain import events as ev  # noqa: E402
from tradestate.domain import snapshot  # noqa: E402
from tradestate.domain.ids import fx_stream_id, instrument_stream_id  # noqa: E402
from tradestate.domain.state import PositionState  # noqa: E402
from tests.support.fold import Fold  # noqa: E402
from tests.support.instrument_logs import SYMBOLS  # noqa: E402

TOLERANCE = Decimal("1e-12")
seeds = st.integers(min_value=0, max_value=2**32 - 1)
multipliers = st.sampled_from(["1", "0.1", "5", "50", "100", "1000", "0.01"])
fills = st.lists(
    st.tuples(st.sampled_from((1, -1)), st.integers(1, 40), st.integers(1, 10**6).map(lambda c: Decimal(c) / 100)),
    min_size=1, max_size=40)


@settings(max_examples=40, deadline=None)
@given(seed=seeds)
def test_instruments_of_untraded_symbols_and_fx_rates_change_nothing_else(seed):
    plain = legacy_log(seed).state.summary()
    f = Fold()
    for n, symbol in enumerate(("NQ", "CL", "GC")):  # never traded by the generated log
        f.add(instrument_stream_id(symbol), ev.InstrumentDefined(
            event_id=uuid4(), symbol=symbol, asset_class="future", multiplier=[20, 1000, 100][n],
            expiry="2030-01-01T00:00:00Z", quote_currency="EUR"))
    f.add(fx_stream_id("EUR", "USD"), ev.FxRateRecorded(event_id=uuid4(), base="EUR", quote="USD", rate="1.1"))
    mixed = legacy_log(seed, fold=f).state.summary()
    assert set(mixed.pop("instruments")) == {"NQ", "CL", "GC"} and mixed.pop("fx_rates") == {"EUR/USD": Decimal("1.1")}
    # the instruments' own streams are new streams, and every position of the log moved by 5
    versions = {k: v for k, v in mixed.pop("stream_versions").items() if not k.startswith(("instrument-", "fx-"))}
    assert versions == plain.pop("stream_versions")
    assert mixed.pop("position") == plain.pop("position") + 4
    assert mixed == plain


@settings(max_examples=40, deadline=None)
@given(seed=seeds)
def test_a_unit_instrument_in_the_account_currency_changes_no_number(seed):
    plain = legacy_log(seed).state.summary()
    f = Fold()
    for symbol in SYMBOLS:
        f.add(instrument_stream_id(symbol), ev.InstrumentDefined(event_id=uuid4(), symbol=symbol, asset_class="crypto",
                                                                 fractional=True))
    defined = legacy_log(seed, fold=f).state.summary()
    for key, p in defined["positions"].items():
        assert p.pop("multiplier") == 1 and p.pop("currency") == "USD"
    for key in ("accounts", "positions", "orders"):
        assert defined[key] == plain[key]


@settings(max_examples=200, deadline=None)
@given(fills=fills, multiplier=multipliers)
def test_pnl_with_a_multiplier_equals_the_reference_computation(fills, multiplier):
    """Reference: whatever the accounting method, realised + unrealised P&L at the last price is
    the multiplier times (cash paid and received + what is held at the last price); and the
    realised part alone is the multiplier times the realised P&L of the same fills on a unit
    instrument. Equal to 1e-12: a partial close releases cost * closed / held, rounded to
    Decimal's 28 digits (today's accounting, kept)."""
    f = Fold()
    m = Decimal(multiplier)
    f.add(instrument_stream_id("ES"), ev.InstrumentDefined(event_id=uuid4(), symbol="ES", asset_class="future",
                                                           multiplier=multiplier, expiry="2030-01-01T00:00:00Z"))
    unit = PositionState("acct", "sim", "UNIT")
    flow = held = Decimal(0)
    for n, (sign, qty, price) in enumerate(fills):
        f.intent(f"o{n}", "buy" if sign > 0 else "sell", str(qty), symbol="ES")
        f.fill(f"o{n}", f"x{n}", str(qty), str(price))
        unit.apply_fill(Decimal(sign * qty), price)
        flow -= sign * qty * price
        held += sign * qty
    p = f.position("ES")
    last = fills[-1][2]
    assert p.qty == held
    assert abs(p.realized_pnl + p.unrealized_pnl - m * (flow + held * last)) < TOLERANCE
    assert abs(p.realized_pnl - m * unit.realized_pnl) < TOLERANCE
    assert f.acct().daily["2024-03-05"].realized_pnl == p.realized_pnl
    restored = snapshot.restore(snapshot.take(f.state)[0], b"")
    assert restored.positions[("acct", "sim", "ES")].as_dict() == p.as_dict()


SPLITS = [("1", "2"), ("1", "3"), ("1", "4"), ("1", "10"), ("2", "3"), ("4", "5"), ("2", "1"), ("10", "1"),
          ("3", "1"), ("20", "1")]


@settings(max_examples=200, deadline=None)
@given(fills=fills, multiplier=multipliers, split=st.sampled_from(SPLITS))
def test_a_split_preserves_market_value_cost_basis_and_pnl(fills, multiplier, split):
    """After a split: the cost basis and realised P&L are unchanged, the quantity is exactly
    old x to / from, the average cost old x from / to, and the market value (qty x last price x
    multiplier) and unrealised P&L are unchanged (to 1e-12: a ratio like 1/3 rounds the price to
    Decimal's 28 digits)."""
    from tradestate.domain.ids import corporate_action_stream_id

    f = Fold()
    f.add(instrument_stream_id("ES"), ev.InstrumentDefined(event_id=uuid4(), symbol="ES", asset_class="future",
                                                           multiplier=multiplier, expiry="2030-01-01T00:00:00Z"))
    for n, (sign, qty, price) in enumerate(fills):
        f.intent(f"o{n}", "buy" if sign > 0 else "sell", str(qty), symbol="ES")
        f.fill(f"o{n}", f"x{n}", str(qty), str(price))
    p = f.position("ES")
    qty, cost, realized, unrealized, avg = p.qty, p.cost, p.realized_pnl, p.unrealized_pnl, p.avg_cost
    value = p.qty * p.last_price * p.multiplier
    old, new = (Decimal(x) for x in split)
    f.add(corporate_action_stream_id("ES"), ev.CorporateActionRecorded(
        event_id=uuid4(), symbol="ES", action="split", ratio_from=old, ratio_to=new, effective_at=f.now))
    assert p.cost == cost and p.realized_pnl == realized
    assert p.qty == qty * new / old
    if new % old == 0:  # a forward split by a whole number: the quantity scales exactly
        assert p.qty == qty * (new // old)
    assert abs(p.avg_cost - avg * old / new) < TOLERANCE
    assert abs(p.qty * p.last_price * p.multiplier - value) < TOLERANCE
    assert abs(p.unrealized_pnl - unrealized) < TOLERANCE


@settings(max_examples=40, deadline=None)
@given(seed=seeds, multiplier=multipliers, currency=st.sampled_from(["USD", "EUR"]))
def test_apply_the_cold_fold_and_a_checkpoint_agree_on_a_log_with_instruments(seed, multiplier, currency):
    from tradestate.domain.fold import fold_cold
    from tradestate.domain.ids import corporate_action_stream_id

    f = Fold()
    f.add(fx_stream_id("EUR", "USD"), ev.FxRateRecorded(event_id=uuid4(), base="EUR", quote="USD", rate="1.1"))
    for symbol, kind in (("ES", "future"), ("BTC/USD", "crypto")):
        f.add(instrument_stream_id(symbol), ev.InstrumentDefined(
            event_id=uuid4(), symbol=symbol, asset_class=kind, multiplier=multiplier, quote_currency=currency,
            fractional=kind == "crypto", expiry="2030-01-01T00:00:00Z" if kind == "future" else None))
    legacy_log(seed, steps=40, fold=f)
    f.add(corporate_action_stream_id("AAPL"), ev.CorporateActionRecorded(
        event_id=uuid4(), symbol="AAPL", action="split", ratio_from=1, ratio_to=2, effective_at=f.now))
    legacy_log(seed + 1, steps=20, fold=f, prefix="p")
    want = f.state.summary()
    cold = fold_cold([f.rows[i:i + 7] for i in range(0, len(f.rows), 7)])[0].summary()
    restored = snapshot.restore(snapshot.take(f.state)[0], b"").summary()
    for got in (cold, restored):
        for key in ("positions", "instruments", "fx_rates", "corporate_actions"):
            assert got[key] == want[key], key
        for name, account in want["accounts"].items():
            for key in ("cash", "daily", "venue_cash"):
                assert got["accounts"][name].get(key) == account.get(key), (name, key)
