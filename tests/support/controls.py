"""Reading the operator-control events of a log back, for the control tests."""

from __future__ import annotations

from typing import Any

import orjson
from tradestate.adapters.store import open_store

CONTROL_TYPES = frozenset({"KillSwitchEngaged", "KillSwitchReleased", "CircuitBreakerTripped", "CircuitBreakerReset",
                           "TradingResumed", "RiskLimitChanged", "DiscrepancyAcknowledged", "GateApproved"})


def log_rows(url: str) -> list[tuple[int, str, str, dict[str, Any]]]:
    """Every row of the trading log: (position, stream id, type, payload)."""
    store = open_store(url, create=False)
    try:
        return [(e.position, e.originator_id, e.topic, orjson.loads(e.state)) for e in store.trading.read(0, 100_000)]
    finally:
        store.close()


def control_events(url: str) -> list[tuple[int, str, dict[str, Any]]]:
    """The operator-control events of the log: (position, type, payload), in log order."""
    return [(pos, t, d) for pos, _sid, t, d in log_rows(url) if t in CONTROL_TYPES]


def head(url: str) -> int:
    """The log's last position."""
    store = open_store(url, create=False)
    try:
        return store.trading.head()
    finally:
        store.close()
