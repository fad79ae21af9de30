"""Positions folded from the log alone: a projection that reads only what it needs.

Only intents (to learn each order's account, venue, symbol and side) and fills move positions,
so the fold looks at the ``type`` column first and decodes nothing else. The arithmetic is the
domain's (``PositionState.apply_fill``), so these positions always equal the client's.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import orjson

from ...domain.state import PositionState

POSITION_TYPES = frozenset({"OrderIntentRecorded", "OrderFilled"})


class PositionBook:
    """Positions per (account, venue, symbol) folded from intents and fills only; ``position`` is the
    last log position applied."""

    def __init__(self) -> None:
        self.position = 0
        self.positions: dict[tuple[str, str, str], PositionState] = {}
        self._orders: dict[str, tuple[tuple[str, str, str], int]] = {}  # stream -> (key, sign)

    def apply(self, position: int, stream_id: str, type_name: str, data: dict[str, Any]) -> None:
        """Apply the log row at ``position``: an intent records its order's key and side, a fill moves
        that order's position; other types are ignored. The fill's order must have had its intent
        applied first (``KeyError`` otherwise)."""
        self.position = position
        if type_name == "OrderFilled":
            key, sign = self._orders[stream_id]
            held = self.positions.get(key)
            if held is None:
                held = self.positions[key] = PositionState(*key)
            held.apply_fill(Decimal(data["qty"]) * sign, Decimal(data["price"]))
            held.fees += Decimal(data["fee"])
        elif type_name == "OrderIntentRecorded":
            self._orders[stream_id] = (
                (data["account"], data["venue"], data["symbol"]),
                1 if data["side"] == "buy" else -1,
            )

    def fold_rows(self, rows: Iterable[tuple[Any, ...]]) -> int:
        """Fold ``(position, stream_id, version, type, data, recorded_at)`` rows; returns how
        many rows were read."""
        wanted = POSITION_TYPES
        loads = orjson.loads
        apply = self.apply
        count = 0
        for position, stream_id, _version, type_name, data, _at in rows:
            count += 1
            if type_name in wanted:
                apply(position, stream_id, type_name, loads(data))
            else:
                self.position = position
        return count
