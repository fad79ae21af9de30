"""Logs whose ``recorded_at`` steps back (a store clock that stepped back), for replay and
checkpoint tests: signal events appended through the client, then restamped as the table owner."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import tradestate
from tradestate.adapters.store import open_store

from tests.support.db import restamp
from tests.support.projector_worker import Clock

B = datetime(2026, 3, 2, 15, 0, tzinfo=timezone.utc)
S = timedelta(seconds=1)


def signals(url: str, n: int, clock: Clock | None = None) -> None:
    """Append ``n`` signals ``x0``..``x{n-1}`` (one event each) for strategy ``s`` on AAPL."""
    with tradestate.connect(url, clock=clock or Clock(), venue="sim") as client:
        for i in range(n):
            client.record_signal("s", "AAPL", f"x{i}")


def stepped_back_log(url: str, base: datetime = B, clock: Clock | None = None) -> dict[int, datetime]:
    """40 events: 1..20 stamped ``base``+p s; then the store's clock steps back half an hour
    (21..30 stamped ``base``-30min+p s); 31..40 stamped ``base``+60+p s (the clock caught up).
    Returns the stamps by position."""
    signals(url, 40, clock)
    stamps = {p: base + p * S for p in range(1, 21)}
    stamps.update({p: base - timedelta(minutes=30) + p * S for p in range(21, 31)})
    stamps.update({p: base + (60 + p) * S for p in range(31, 41)})
    with open_store(url, create=False) as store:
        restamp(store, stamps)
    return stamps
