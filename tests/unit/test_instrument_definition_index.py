"""An instrument defined (or a corporate action recorded) after trading reaches the positions of
its symbol without scanning every position of the log: the work of a definition is the positions
of its symbol (and those opened since the last one looked), not the whole book."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from uuid import uuid4

from tradestate.domain import events as ev
from tradestate.domain.fold import fold_cold
from tradestate.domain.ids import corporate_action_stream_id, instrument_stream_id

from tests.support.fold import T0, Fold

SYMBOLS = 150


class CountingPositions(dict):
    """The state's positions, counting every position a walk over them visits."""

    visited = 0

    def _walk(self, keys):
        for key in keys:
            type(self).visited += 1
            yield key

    def __iter__(self):
        return self._walk(super().__iter__())

    def __reversed__(self):
        return self._walk(super().__reversed__())

    def keys(self):
        return list(self._walk(super().keys()))

    def items(self):
        return [(k, self[k]) for k in self._walk(super().keys())]

    def values(self):
        return [self[k] for k in self._walk(super().keys())]


def traded(symbols: int) -> Fold:
    f = Fold()
    f.state.positions = CountingPositions()
    CountingPositions.visited = 0
    for n in range(symbols):
        f.intent(f"o{n}", "buy", "3", symbol=f"S{n}")
        f.fill(f"o{n}", f"x{n}", "3", "10")
    return f


def define(f: Fold, symbol: str, multiplier: str = "1") -> None:
    f.add(instrument_stream_id(symbol), ev.InstrumentDefined(event_id=uuid4(), symbol=symbol, asset_class="future",
                                                             multiplier=multiplier, expiry=T0 + timedelta(days=365)))


def test_definitions_after_trading_visit_their_own_positions_not_every_one():
    f = traded(SYMBOLS)
    before = CountingPositions.visited
    for n in range(SYMBOLS):
        define(f, f"S{n}", multiplier="50")
    # one catch-up over the positions opened before, then each definition its own: not SYMBOLS x SYMBOLS
    assert CountingPositions.visited - before <= 2 * SYMBOLS
    for n in range(SYMBOLS):
        held = f.position(f"S{n}")
        assert held.spec is not None and held.spec.multiplier == 50 and held.journal is None  # other money terms


def test_positions_opened_after_a_definition_are_found_by_the_next_one():
    f = traded(3)
    define(f, "S0")
    f.intent("late", "sell", "2", symbol="S9", venue="other")
    f.fill("late", "x-late", "2", "11")
    define(f, "S9", multiplier="5")
    assert f.state.position_of("acct", "other", "S9").spec.multiplier == 5
    f.add(corporate_action_stream_id("S9"), ev.CorporateActionRecorded(
        event_id=uuid4(), occurred_at=T0, symbol="S9", action="symbol_change", new_symbol="S10", effective_at=T0))
    moved = f.state.position_of("acct", "other", "S10")
    assert (moved.qty, moved.spec.multiplier, f.state.position_of("acct", "other", "S9").qty) == (-2, 5, 0)
    define(f, "S10", multiplier="7")  # the renamed position was opened by the action: the index has it
    assert moved.spec.multiplier == 7
    cold, _ = fold_cold([f.rows])
    assert {k: (p.qty, p.spec.multiplier if p.spec else None) for k, p in cold.positions.items()} == {
        k: (p.qty, p.spec.multiplier if p.spec else None) for k, p in f.state.positions.items()}


def test_a_state_whose_positions_were_replaced_is_indexed_afresh():
    f = traded(2)
    define(f, "S0")
    f.state.positions = dict(f.state.positions)  # e.g. a report's frozen copy: another dict
    define(f, "S1", multiplier="3")
    assert f.position("S1").spec.multiplier == Decimal(3)
