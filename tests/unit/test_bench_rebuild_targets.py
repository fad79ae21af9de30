"""The projection bench group's rebuild target: a rebuild from zero as a ratio of the raw
read+decode rate of the same run (issue 16: >= 0.6x), with the ceiling the whole-state fold sets."""

from __future__ import annotations

from tradestate.tools.bench.common import Result
from tradestate.tools.bench.projection import TARGET_REBUILD_RATIO, targets


def _rate(metric: str, backend: str, rate: float, raw: float) -> Result:
    return Result(metric, backend, rate, "events/s", "raw_select_orjson", raw, rate / raw)


def _rebuild_line(results: list[Result]) -> tuple[bool, str]:
    [found] = [(met, line) for met, line in targets(results) if line.startswith("rebuild (")]
    return found


def test_a_rebuild_is_judged_by_its_ratio_and_states_the_folds_ceiling():
    assert TARGET_REBUILD_RATIO == 0.6
    met, line = _rebuild_line([_rate("projection_catchup", "sqlite", 120_000, 600_000),
                               _rate("rebuild_fold_ceiling", "sqlite", 198_000, 600_000),
                               _rate("rebuild_fold_ceiling", "postgresql", 450_000, 600_000)])
    assert not met
    assert line == ("rebuild (sqlite): 0.20x raw read+decode (target >= 0.6x); ceiling here 0.33x: "
                    "the fold a rebuild runs, alone, no table written")
    met, line = _rebuild_line([_rate("projection_catchup", "postgresql", 400_000, 600_000)])
    assert met and line == "rebuild (postgresql): 0.67x raw read+decode (target >= 0.6x)"  # no ceiling measured
