"""``tradestate bench`` group: Recovery time to ready (issue 4)."""

from __future__ import annotations

from typing import Any


def run(ctx: Any) -> list[Any]:
    """Measure; return bench.Result rows."""
    return []


def targets(results: list[Any]) -> list[tuple[bool, str]]:
    """(met, line) for each target of this group found in results."""
    return []
