"""Checkpoints: validated snapshots of the whole trading state at a log position.

(Interface first; the checkpoint table and validation land with issue 4.)
"""

from __future__ import annotations

import orjson

from ...domain.state import TradingState
from . import Store, gc_paused


def state_at(store: Store, position: int | None = None, *, exchange_tz: str = "America/New_York") -> TradingState:
    """The trading state after the event at ``position`` (default: the head): from the newest
    valid checkpoint at or before it, then the log up to it."""
    state = TradingState(exchange_tz)
    with gc_paused():
        apply, loads = state.apply, orjson.loads
        for pos, stream, version, type_name, data, at in store.trading.iter_rows(0, position):
            apply(pos, stream, version, type_name, loads(data), at)
    return state
