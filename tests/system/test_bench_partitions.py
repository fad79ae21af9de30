"""The partitions bench group at a tiny size: its three rows against one table, its target lines,
and no schema left behind."""

from __future__ import annotations

import json

import pytest

from tests.support.bench import TINY
from tests.system.test_bench_quick import _bench_schemas, _own_run_id
from tradestate.tools.bench.run import run_bench

pytestmark = pytest.mark.postgres


def test_the_group_runs_and_reports_its_targets(capsys, pg_server, monkeypatch):
    run_id = _own_run_id(monkeypatch)
    code = run_bench(quick=True, as_json=True, pg_url=pg_server, only="partitions", _backends=("postgresql",),
                     _sizes=TINY)
    document = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {(r["metric"], r["baseline"]) for r in document["results"]} == {
        ("partitions_append_1w", "one_table"), ("partitions_replay", "one_table"),
        ("partitions_read_tail", "one_table")}
    lines = [t["line"] for t in document["targets"] if t["group"] == "partitions"]
    assert len(lines) == 3 and all("one table with 84 monthly partitions (target >= 0.95x)" in x for x in lines)
    assert _bench_schemas(pg_server, run_id) == set()  # every schema the run made is dropped
