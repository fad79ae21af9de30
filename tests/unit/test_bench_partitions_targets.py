"""The partitions bench group's targets: one MET/MISSED line per figure against one table (issue 17:
appends and replay no slower with 84 monthly partitions, i.e. >= 0.95x)."""

from __future__ import annotations

from tradestate.tools.bench import partitions, run
from tradestate.tools.bench.common import result


def test_each_figure_has_a_target_line_against_one_table():
    rows = [result("partitions_append_1w", "postgresql", 95.0, "events/s", "one_table", 100.0),
            result("partitions_replay", "postgresql", 94.0, "events/s", "one_table", 100.0),
            result("partitions_read_tail", "postgresql", 120.0, "events/s", "one_table", 100.0)]
    assert partitions.targets(rows) == [
        (True, "partitions_append_1w (postgresql): 0.95x one table with 84 monthly partitions (target >= 0.95x)"),
        (False, "partitions_replay (postgresql): 0.94x one table with 84 monthly partitions (target >= 0.95x)"),
        (True, "partitions_read_tail (postgresql): 1.20x one table with 84 monthly partitions (target >= 0.95x)"),
    ]
    assert run.GROUPS["partitions"] is partitions
