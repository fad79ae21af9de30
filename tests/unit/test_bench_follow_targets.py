"""The projection group's follow-lag target line (issue 16, item 8): MET/MISSED against 5 ms, with
the achieved rate and the highest paced rate at which the target held."""

from __future__ import annotations

from tradestate.tools.bench.common import result
from tradestate.tools.bench.projection import TARGET_FOLLOW_LAG_P99_MS, targets


def _rows(full_p99: float, paced: dict[int, float]) -> list:
    rows = [result("follow_lag_p99_8w_full", "postgresql", full_p99, "ms", "target_5ms", TARGET_FOLLOW_LAG_P99_MS),
            result("follow_append_rate_8w_full", "postgresql", 3_412, "events/s", "writers", 8)]
    rows += [result(f"follow_lag_p99_8w_{rate}", "postgresql", p99, "ms", "target_5ms", TARGET_FOLLOW_LAG_P99_MS)
             for rate, p99 in paced.items()]
    return rows


def test_missed_at_full_rate_says_the_ratio_the_rate_and_where_it_holds():
    (met, line), = targets(_rows(9.0, {500: 4.0, 1_000: 4.9, 2_000: 6.0}))
    assert not met
    assert "3,412 appends/s" in line and "9.00 ms" in line and "1.80x" in line
    assert line.endswith("holds up to 1,000/s paced")


def test_met_at_full_rate():
    (met, line), = targets(_rows(4.2, {500: 9.0}))
    assert met and "0.84x" in line and line.endswith("holds at none of the paced rates")


def test_the_line_states_the_logs_ordering_floor_of_the_same_run():
    rows = _rows(9.0, {1_000: 4.9}) + [result("follow_lag_floor_p99_8w_full", "postgresql", 7.75, "ms", "target_5ms",
                                               TARGET_FOLLOW_LAG_P99_MS),
                                        result("follow_lag_floor_p99_8w_full", "sqlite", 1.0, "ms", "target_5ms",
                                               TARGET_FOLLOW_LAG_P99_MS)]
    (met, line), = targets(rows)
    assert not met and line.endswith("holds up to 1,000/s paced; the log's ordering floor p99 in this run 7.75 ms "
                                     "(an event waits for every position below it to commit)")
