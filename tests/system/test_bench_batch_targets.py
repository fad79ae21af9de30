"""The batch group's targets: one MET/MISSED line per backend against its own baseline (issue 16:
>= 0.7x one COPY on PostgreSQL, >= 0.5x one executemany transaction on SQLite)."""

from __future__ import annotations

from tradestate.tools.bench import batch
from tradestate.tools.bench.common import result


def _rows(sqlite_ours: float, pg_ours: float) -> list:
    return [
        result("append_batch_100", "sqlite", sqlite_ours, "events/s", "executemany_all_1tx", 100.0),
        result("append_batch_100", "sqlite", sqlite_ours, "events/s", "executemany_100_per_tx", 20.0),
        result("append_batch_100", "postgresql", pg_ours, "events/s", "copy_from_stdin_all", 100.0),
        result("append_batch_100", "postgresql", pg_ours, "events/s", "copy_100_per_tx", 40.0),
    ]


def test_each_backend_has_one_target_line_against_its_one_transaction_baseline():
    checks = batch.targets(_rows(50.0, 70.0))
    assert checks == [
        (True, "append_batch (sqlite): 0.50x one executemany (target >= 0.5x)"),
        (True, "append_batch (postgresql): 0.70x one COPY (target >= 0.7x)"),
    ]


def test_below_the_target_is_missed():
    checks = batch.targets(_rows(49.0, 69.0))
    assert [met for met, _ in checks] == [False, False]
    assert batch.TARGET_BATCH_PG == 0.7 and batch.TARGET_BATCH_SQLITE == 0.5


def test_the_commit_share_explains_the_gap_with_the_raw_per_transaction_write():
    # ours 50k/s, one transaction 100k/s, 100-row transactions 40k/s: per 100 rows 2 ms vs 1 ms,
    # a raw commit costs 1.5 ms, more than the whole 1 ms gap
    line = batch._commit_share(50_000, 100_000, 40_000, 100)
    assert "2.00 ms per append vs 1.00 ms per 100 rows" in line and "costs 1.50 ms: 150% of it" in line
    assert "ours is not behind" in batch._commit_share(100_000, 100_000, 40_000, 100)


def test_the_floor_a_flush_per_append_allows_is_measured_and_stated():
    # one transaction writes 100 rows in 1 ms; a flush costs 2.5 ms: an append takes at least 3.5 ms, 0.29x
    floor = batch._flush_floor("append_batch_100", "sqlite", 100_000.0, 0.0025, 100, "one executemany")
    assert (floor.metric, floor.baseline) == ("append_batch_100_floor", "executemany_all_1tx")
    assert round(floor.ratio, 3) == round(1 / 3.5, 3)
    checks = batch.targets(_rows(27.0, 70.0) + [floor])
    assert checks[0] == (False, "append_batch (sqlite): target >= 0.5x one executemany, floor here 0.29x (a commit "
                                "flush per append leaves the target out of reach); ours 94% of the floor: 0.27x")
    assert checks[1] == (True, "append_batch (postgresql): 0.70x one COPY (target >= 0.7x)")


def test_a_floor_above_the_target_says_it_is_attainable():
    floor = batch._flush_floor("append_batch_100", "postgresql", 100_000.0, 0.0000625, 100, "one COPY")
    (_, line), = [c for c in batch.targets(_rows(50.0, 60.0) + [floor]) if "postgresql" in c[1]]
    assert "floor here 0.94x (attainable)" in line and line.endswith(": 0.60x")


def test_the_flush_is_the_median_of_paired_differences_whichever_commit_goes_first():
    spans = {True: [0.004, 0.009, 0.005, 0.004], False: [0.001, 0.006, 0.001, 0.002]}
    order: list[bool] = []
    clock = {"now": 0.0}

    def commit(flushed: bool) -> None:
        order.append(flushed)
        clock["now"] += spans[flushed].pop(0)

    pairs = batch._FlushPairs(clock=lambda: clock["now"])
    pairs.sample(commit, 4)
    assert order == [True, False, False, True, True, False, False, True]
    assert sorted(round(d, 6) for d in pairs.differences) == [0.002, 0.003, 0.003, 0.004]
    assert round(pairs.seconds, 6) == 0.003
    assert batch._FlushPairs().seconds == 0.0
