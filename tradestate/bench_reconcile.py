"""``tradestate bench`` group: Reconciling 10,000 positions and 10,000 open orders (issue 5)."""

from __future__ import annotations

from typing import Any


def run(ctx: Any) -> list[Any]:
    """Measure; return bench.Result rows."""
    return []


def targets(results: list[Any]) -> list[tuple[bool, str]]:
    """(met, line) for each target of this group found in results."""
    return []
