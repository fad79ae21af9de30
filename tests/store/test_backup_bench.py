"""The bench group ``backup`` on a tiny log (both backends): its rows, and its target line."""

from __future__ import annotations

import json

import pytest

from tests.support.bench import TINY
from tradestate.tools.bench.backup import NEW_EVENTS, TARGET_INCREMENT_S, targets
from tradestate.tools.bench.common import Result
from tradestate.tools.bench.run import run_bench



@pytest.mark.postgres
def test_the_backup_group_measures_both_backends(capsys, tmp_path, pg_server):
    code = run_bench(quick=True, as_json=True, only="backup", sqlite_dir=str(tmp_path), pg_url=pg_server,
                     events="2k", _sizes=TINY)
    document = json.loads(capsys.readouterr().out)
    assert code == 0
    rows = {(r["metric"], r["backend"]): r for r in document["results"]}
    for backend in ("sqlite", "postgresql"):
        assert rows[("backup_incremental", backend)]["baseline"] == "backup_full"
        assert rows[("backup_incremental_encrypted", backend)]["value"] > 0
    lines = [t["line"] for t in document["targets"]]
    assert len(lines) == 2 and all(line.startswith("backup_incremental (") for line in lines)
    assert list(tmp_path.iterdir()) == []


def test_the_target_is_one_second_for_the_increment():
    assert TARGET_INCREMENT_S == 1.0 and NEW_EVENTS == 10_000
    [(met, line)] = targets([Result("backup_incremental", "sqlite", 0.25, "s", "backup_full", 10.0, 0.025)])
    assert met and line == ("backup_incremental (sqlite): 0.250 s for 10,000 new events (target < 1 s; full backup "
                            "10.00 s, 0.025x)")
    [(met, _line)] = targets([Result("backup_incremental", "postgresql", 1.5, "s", "backup_full", 10.0, 0.15)])
    assert not met


def test_the_target_line_states_the_increment_against_the_same_runs_raw_copy_of_its_rows():
    """Beside the absolute 1 s: the increment over the raw copy of the same new rows to a file
    (same run, same load), the ratio the JSON's target carries."""
    from tradestate.tools.bench.run import _target_doc

    rows = [Result("backup_incremental", "sqlite", 0.25, "s", "backup_full", 10.0, 0.025),
            Result("backup_incremental_raw", "sqlite", 0.1, "s", "10,000 new rows copied to a file", 0.1, 1.0),
            Result("backup_incremental_raw", "postgresql", 0.2, "s", "10,000 new rows copied to a file", 0.2, 1.0)]
    [(met, line)] = targets(rows)
    assert met and line.startswith("backup_incremental (sqlite): 0.250 s for 10,000 new events (target < 1 s;")
    assert line.endswith("2.50x the raw copy of the same rows, 0.100 s)")
    assert _target_doc("backup", met, line, 2_000)["ratio"] == 2.5
