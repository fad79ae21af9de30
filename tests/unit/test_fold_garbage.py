"""The application pauses Python's cyclic garbage collector around a fold (``adapters.store.gc_paused``):
sound only if a fold leaves no cycles behind (before, every scratch state the cold fold built an
open order in was one, 56 objects each, piling up until the pause ended). And the registry entries
the fold builds directly (``InstrumentSpec.from_payload``, no frozen ``__init__``) are the
instances the dataclass's own constructor builds."""

from __future__ import annotations

import gc
from datetime import datetime, timezone
from decimal import Decimal
from uuid import uuid4

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tradestate.domain import events as ev
from tradestate.domain.fold import fold_cold
from tradestate.domain.ids import instrument_stream_id
from tradestate.domain.instruments import ASSET_CLASSES, InstrumentSpec
from tradestate.domain.state import TradingState
from tests.support.instrument_logs import legacy_log


def _cycles_left_by(work) -> int:
    gc.collect()
    gc.disable()
    try:
        work()
        return gc.collect()  # what a pass finds unreachable: the cycles ``work`` left behind
    finally:
        gc.enable()


def test_a_state_is_freed_without_the_collector():
    assert _cycles_left_by(lambda: [TradingState() for _ in range(50)]) == 0


def test_a_cold_fold_leaves_no_cycles_behind():
    f = legacy_log(7, steps=120)
    for symbol in ("ES", "BTC/USD"):
        f.add(instrument_stream_id(symbol), ev.InstrumentDefined(
            event_id=uuid4(), symbol=symbol, asset_class="crypto", fractional=True))
    open_orders = [o for o in f.state.orders.values() if o.is_open]
    assert open_orders  # the fold builds each of them from its rows at the end

    kept = []  # the state itself is cyclic (orders and their accounts): kept, it is not garbage
    assert _cycles_left_by(lambda: kept.append(fold_cold([f.rows])[0])) == 0


_amount = st.one_of(st.none(), st.sampled_from(["1", "0.01", "0.25", "100", "50", "0.0001", "12.5"]),
                    st.decimals(min_value=Decimal("0.0001"), max_value=Decimal(10_000), places=4).map(str))


@settings(max_examples=200, deadline=None)
@given(asset_class=st.sampled_from(ASSET_CLASSES), multiplier=st.one_of(st.none(), st.integers(1, 1000), _amount),
       quote=st.sampled_from([None, "USD", "EUR"]), settlement=st.sampled_from([None, "USD", "JPY"]),
       tick=_amount, lot=_amount, fractional=st.one_of(st.none(), st.booleans()),
       expiry=st.sampled_from([None, "2030-12-20T14:30:00Z", "2031-01-02T00:00:00+00:00"]),
       underlying=st.sampled_from([None, "SPX"]), strike=_amount, right=st.sampled_from([None, "call", "put"]),
       position=st.integers(1, 10**9))
def test_a_registry_entry_is_the_one_the_dataclass_builds(asset_class, multiplier, quote, settlement, tick, lot,
                                                           fractional, expiry, underlying, strike, right, position):
    payload = {"symbol": "S1", "asset_class": asset_class, "multiplier": multiplier, "quote_currency": quote,
               "settlement_currency": settlement, "tick_size": tick, "lot_size": lot, "fractional": fractional,
               "expiry": expiry, "underlying": underlying, "strike": strike, "right": right}
    d = orjson.loads(orjson.dumps({k: v for k, v in payload.items() if v is not None or k == "strike"}))
    built = InstrumentSpec.from_payload(d, position)

    def dec(value):
        return None if value is None else Decimal(value)

    by_init = InstrumentSpec(
        symbol="S1", asset_class=asset_class, multiplier=Decimal(multiplier or 1), quote_currency=quote or "USD",
        settlement_currency=settlement or quote or "USD", tick_size=dec(tick), lot_size=dec(lot),
        fractional=bool(fractional), underlying=underlying, strike=dec(strike), right=right, position=position,
        expiry=datetime.fromisoformat(expiry.replace("Z", "+00:00")) if expiry else None)
    assert built == by_init and hash(built) == hash(by_init) and repr(built) == repr(by_init)
    for name in InstrumentSpec.__slots__:  # the same values, of the same types
        assert type(getattr(built, name)) is type(getattr(by_init, name)), name
    assert built.expiry is None or built.expiry.tzinfo == timezone.utc
