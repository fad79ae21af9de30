"""The append group's coalesced-commit targets: each says MET or MISSED with its ratio."""

from tradestate.tools.bench import append
from tradestate.tools.bench.common import result


def test_coalesced_targets_say_met_or_missed():
    rows = [
        result("append_coalesced_64t", "sqlite", 3_100.0, "events/s", "raw_insert_commit_1w", 1_000.0),
        result("append_coalesced_64t_p99", "sqlite", 4.0, "ms", "raw_insert_commit_1w", 2.0),
        result("append_coalesced_64a", "postgresql", 2_900.0, "events/s", "raw_insert_commit_1w", 1_000.0),
        result("append_coalesced_64a_p99", "postgresql", 7.5, "ms", "raw_insert_commit_1w", 3.0),
        result("append_coalesced_single_1w", "sqlite", 96.0, "events/s", "single_interleaved_1w", 100.0),
        result("append_coalesced_single_1w", "postgresql", 90.0, "events/s", "single_interleaved_1w", 100.0),
        result("append_coalesced_client_64a", "sqlite", 500.0, "events/s", "raw_insert_commit_1w", 1_000.0),
        result("append_coalesced_client_64a_p99", "sqlite", 50.0, "ms", "raw_insert_commit_1w", 2.0),
    ]
    checks = {line.split(":")[0]: met for met, line in append.targets(rows)}
    assert checks == {
        "append_coalesced_64t (sqlite)": True,
        "append_coalesced_64t_p99 (sqlite)": True,
        "append_coalesced_64a (postgresql)": False,
        "append_coalesced_64a_p99 (postgresql)": False,
        "append_coalesced_single_1w (sqlite)": True,
        "append_coalesced_single_1w (postgresql)": False,
    }
    lines = [line for _, line in append.targets(rows)]
    assert any("3.10x" in line and ">= 3x" in line for line in lines)
    assert any("7.50 ms" in line and "<= 5 ms" in line for line in lines)
    assert append.TARGET_COALESCED == 3.0 and append.TARGET_COALESCED_P99_MS == 5.0
    assert append.TARGET_COALESCED_SINGLE == 0.95
