"""The drill bench group's target: the drill's RTO within the seed's 4 hours, with its ratio to
the raw restore; and the group is registered."""

from __future__ import annotations

from tradestate.tools.bench.common import result
from tradestate.tools.bench.drill import TARGET_RTO_S, targets
from tradestate.tools.bench.run import GROUPS


def test_the_drill_rto_is_judged_against_four_hours():
    assert TARGET_RTO_S == 14_400 and "drill" in GROUPS
    [(met, line)] = targets([result("drill_rto", "sqlite", 12.0, "s", "restore_raw", 8.0)])
    assert met and line.startswith("drill_rto (sqlite): 12.00 s to a ready state (target <= 14,400 s")
    assert "1.50x the raw restore of 8.00 s" in line
    [(met, _line)] = targets([result("drill_rto", "postgresql", 20_000.0, "s", "restore_raw", 9_000.0)])
    assert not met
