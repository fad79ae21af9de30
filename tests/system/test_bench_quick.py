"""``tradestate bench`` at toy sizes: the JSON shape, positive ratios, and the generated log.

The real figures come from ``tradestate bench`` (``--quick`` in CI); these tests only check that
every measurement runs end to end on real SQLite files and a real PostgreSQL and reports sanely.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import orjson
import psycopg
import pytest

from tests.support.bench import TINY
from tradestate.tools import pg_cluster
from tradestate.tools.bench.logs import ACCOUNTS, SYMBOLS, generate_trading_rows, open_state_size
from tradestate.tools.bench.run import GROUPS, run_bench
from tradestate.domain.events import decode
from tradestate.domain.state import TradingState

KEYS = {"metric", "backend", "value", "unit", "baseline", "baseline_value", "ratio"}
DOCUMENT = {"results", "runs", "targets", "sizes", "scaling", "loads", "machine", "failures"}
MEMORY_ROWS = {("memory_client_warm_open", "interpreter_import_open_store"),
               ("memory_recover_warm", "interpreter_import_open_store"),
               ("memory_recover_cold", "interpreter_import_open_store"),
               ("memory_projector_rebuild", "interpreter_import_open_store"),
               ("memory_recover_warm_s", "memory_recover_cold_s")}


def _run_document(capsys: pytest.CaptureFixture[str], **kwargs) -> dict:
    kwargs.setdefault("_sizes", TINY)
    code = run_bench(quick=True, as_json=True, **kwargs)
    out = capsys.readouterr().out
    assert code == 0
    document = json.loads(out)  # stdout is exactly one JSON document
    assert set(document) == DOCUMENT and document["failures"] == []
    results = document["results"]
    assert results
    for row in results:
        assert set(row) == KEYS
        assert isinstance(row["metric"], str) and row["metric"]
        assert row["backend"] in ("sqlite", "postgresql", "memory")  # memory: pure computation, no database
        assert row["unit"] in ("events/s", "ms", "s", "bars/s", "MB", "plans/s")
        for key in ("value", "baseline_value", "ratio"):
            assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, row
        assert row["ratio"] == pytest.approx(row["value"] / row["baseline_value"])
    assert [row for run in document["runs"] for row in run["results"]] == results
    for target in document["targets"]:
        assert set(target) == {"group", "met", "line", "ratio", "events"}
        assert isinstance(target["met"], bool) and isinstance(target["line"], str) and target["line"]
        assert target["ratio"] is None or (isinstance(target["ratio"], float) and target["ratio"] > 0)
    machine = document["machine"]
    assert machine["cores"] >= 1 and len(machine["load_average_before"]) == 3 and machine["date"].startswith("20")
    return document


def _run_json(capsys: pytest.CaptureFixture[str], **kwargs) -> list[dict]:
    return _run_document(capsys, **kwargs)["results"]


def _metrics(results: list[dict], backend: str) -> set[tuple[str, str]]:
    return {(r["metric"], r["baseline"]) for r in results if r["backend"] == backend}


@pytest.mark.slow
def test_sqlite_rows(capsys, tmp_path):
    results = _run_json(capsys, sqlite_dir=str(tmp_path), _backends=("sqlite",))
    got = _metrics(results, "sqlite")
    names = {metric for metric, _ in got}
    assert {"recovery_cold", "recovery_warm", "reconcile_run_10k", "postmortem_state_at_p99_ms",
            "postmortem_market_replay"} <= names
    assert {("takeover_p50", "lease_3s"), ("takeover_p95", "lease_3s")} <= got
    assert ("reconcile_plan_10k", "fold_50k_events") in _metrics(results, "memory")
    assert MEMORY_ROWS <= got
    assert {("append_coalesced_64t", "raw_insert_commit_1w"), ("append_coalesced_64a", "raw_insert_commit_1w"),
            ("append_coalesced_single_1w", "single_interleaved_1w")} <= got
    assert {("backup_incremental", "backup_full"), ("backup_incremental_encrypted", "backup_incremental"),
            ("drill_rto", "restore_raw")} <= got
    assert {m for m in got if not m[0].startswith(("recovery_", "reconcile_", "postmortem_", "takeover_", "memory_",
                                                   "append_coalesced_", "backup_", "drill_"))} == {
        ("append_single_1w", "raw_insert_commit_1w"),
        ("append_single_1w_p50", "raw_insert_commit_1w"),
        ("append_single_1w_p99", "raw_insert_commit_1w"),
        ("append_single_fenced_1w", "unfenced_interleaved_1w"),
        ("append_single_fenced_1w_p50", "unfenced_interleaved_1w"),
        ("append_single_fenced_1w_p99", "unfenced_interleaved_1w"),
        ("append_batch_10", "executemany_all_1tx"),
        ("append_batch_10", "executemany_10_per_tx"),
        ("append_batch_10_floor", "executemany_all_1tx"),
        ("replay", "raw_select_orjson"),
        ("replay_duration", "raw_select_orjson"),
        ("replay", "eventsourcing_default"),
        ("replay_full_state", "raw_select_orjson"),
        ("replay_full_state", "eventsourcing_default"),
        ("projection_catchup", "raw_select_orjson"),
        ("projection_catchup_duration", "raw_select_orjson"),
        ("rebuild_fold_ceiling", "raw_select_orjson"),
    }
    assert list(tmp_path.iterdir()) == []  # the SQLite files are removed afterwards


@pytest.mark.slow
@pytest.mark.postgres
# every group end to end on PostgreSQL (its own primary + standby included): 72 s alone, past the
# 300 s default with a loaded CI box's other workers beside it. It checks rows, not time: a longer
# bound (a hang still fails), not the serial phase, which it would double
@pytest.mark.timeout(900)
def test_postgresql_rows(capsys, pg_server, monkeypatch):
    run_id = _own_run_id(monkeypatch)
    results = _run_json(capsys, pg_url=pg_server, _backends=("postgresql",))
    got = _metrics(results, "postgresql")
    for writers in ("1w", "2w"):
        for suffix in ("", "_p50", "_p99"):
            assert (f"append_single_{writers}{suffix}", f"raw_insert_commit_{writers}") in got
            assert (f"append_single_{writers}{suffix}", "eventsourcing_default") in got
    for suffix in ("", "_p50", "_p99"):
        assert (f"append_single_fenced_1w{suffix}", "unfenced_interleaved_1w") in got
    assert {
        ("append_batch_10", "copy_from_stdin_all"),
        ("append_batch_10", "copy_10_per_tx"),
        ("append_batch_10_floor", "copy_from_stdin_all"),
        ("replay", "raw_select_orjson"),
        ("replay", "raw_select_binary_orjson"),
        ("replay", "copy_to_stdout_orjson"),
        ("replay", "eventsourcing_default"),
        ("replay_full_state", "raw_select_orjson"),
        ("replay_full_state", "eventsourcing_default"),
        ("projection_catchup", "raw_select_orjson"),
        ("projection_catchup", "eventsourcing_projection_runner"),
        ("projection_live_lag_p50", "target_20ms"),
        ("projection_live_lag_p99", "target_20ms"),
        ("recovery_cold", "raw_select_orjson"),
        ("recovery_cold_fold_only", "raw_select_orjson"),
        ("recovery_cold_verify_only", "raw_select_orjson"),
        ("rebuild_fold_ceiling", "raw_select_orjson"),
        ("postmortem_state_at_p99_ms", "fold_from_zero_ms"),
        ("takeover_p95", "lease_3s"),
    } | MEMORY_ROWS <= got
    if pg_cluster.available() is None:  # the replication group starts its own primary + standby
        for level in ("on", "remote_apply"):
            for suffix in ("", "_p50", "_p99"):
                assert (f"sync_standby_append_1w_{level}{suffix}", f"raw_insert_commit_1w_{level}") in got
    assert _bench_schemas(pg_server, run_id) == set()  # every schema the run made is dropped


@pytest.mark.slow
@pytest.mark.postgres
def test_failover_group_reports_unavailability_against_its_target(capsys, pg_server):
    if pg_cluster.available() is not None:
        pytest.skip(pg_cluster.available())
    code = run_bench(quick=True, as_json=True, pg_url=pg_server, only="failover", _backends=("postgresql",),
                     _sizes={**TINY, "failover_rounds": 1})
    document = json.loads(capsys.readouterr().out)
    assert code == 0
    rows = {r["metric"]: r for r in document["results"]}
    assert set(rows) == {"failover_pg_ctl_unavailability_p50", "failover_pg_ctl_unavailability_p95"}
    for row in rows.values():
        assert row["unit"] == "s" and row["backend"] == "postgresql"
        assert row["baseline"] == "detection_0s_plus_2s" and row["baseline_value"] == 2.0
        assert 0 < row["value"] < 60 and row["ratio"] == pytest.approx(row["value"] / 2.0)
    from tradestate.tools.bench import failover
    from tradestate.tools.bench.common import Result

    (met, line), = failover.targets([Result(**r) for r in document["results"]])
    assert met == (rows["failover_pg_ctl_unavailability_p95"]["value"] <= 2.0)
    assert line.startswith("failover_pg_ctl_unavailability_p95: ") and "target <= detection 0 s" in line
    # a Patroni p95 past detection + 2 s is MISSED
    (missed, _), = failover.targets([Result("failover_patroni_unavailability_p95", "postgresql", 13.5, "s",
                                            "detection_11s_plus_2s", 13.0, 13.5 / 13.0)])
    assert missed is False


def _own_run_id(monkeypatch: pytest.MonkeyPatch) -> _RunId:
    """The bench run's id (its schemas' prefix), chosen here: other tests running at the same time
    (pytest-xdist) make and drop ``bench_*`` schemas of their own on the same server."""
    import types
    import uuid

    from tradestate.tools.bench import run

    fixed = uuid.uuid4()
    taken: list[uuid.UUID] = []
    monkeypatch.setattr(run, "uuid", types.SimpleNamespace(uuid4=lambda: taken.append(fixed) or fixed))
    return _RunId(f"bench_{fixed.hex[:10]}", taken)


class _RunId(str):
    """A bench run's id that knows whether the run took it (else the check below proves nothing)."""

    def __new__(cls, value: str, taken: list) -> _RunId:
        self = super().__new__(cls, value)
        self.taken = taken
        return self


def _bench_schemas(url: str, run_id: str) -> set[str]:
    """The schemas of the bench run ``run_id`` still on the server."""
    assert run_id.taken, "the bench run did not take its id from _own_run_id"
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                            (run_id.replace("_", "\\_") + "\\_%",)).fetchall()
    return {name for (name,) in rows}


def test_the_fencing_rows_come_with_their_target_line():
    """The fenced/unfenced ratio is judged against 0.90 (fencing costs at most 10 %), on each
    backend, and only that row of the three carries the target."""
    from tradestate.tools.bench import append
    from tradestate.tools.bench.common import result

    rows = [result("append_single_fenced_1w", "sqlite", 95.0, "events/s", "unfenced_interleaved_1w", 100.0),
            result("append_single_fenced_1w_p50", "sqlite", 1.1, "ms", "unfenced_interleaved_1w", 1.0),
            result("append_single_fenced_1w", "postgresql", 85.0, "events/s", "unfenced_interleaved_1w", 100.0)]
    checks = append.targets(rows)
    assert [met for met, _ in checks] == [True, False]
    assert all("fencing costs <= 10 %" in line and "target >= 0.9x" in line for _, line in checks)


def test_only_filters_groups(capsys, tmp_path):
    results = _run_json(capsys, sqlite_dir=str(tmp_path), only="batch", _backends=("sqlite",))
    assert {r["metric"] for r in results} == {"append_batch_10", "append_batch_10_floor"}


def _failing_group(message: str) -> SimpleNamespace:
    """A group whose measurement raises (as a cluster that never comes back does)."""
    def run(_ctx):
        raise RuntimeError(message)
    return SimpleNamespace(run=run, targets=lambda _results: [])


def test_a_group_that_fails_costs_only_its_own_rows_and_the_run_exits_1(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(GROUPS, "broken", _failing_group("the old leader never came back"))
    code = run_bench(quick=True, as_json=True, only="broken,batch", sqlite_dir=str(tmp_path), _sizes=TINY,
                     _backends=("sqlite",))
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert code == 1
    assert {r["metric"] for r in document["results"]} == {"append_batch_10", "append_batch_10_floor"}
    assert document["failures"] == [{"events": TINY["replay_events"], "group": "broken",
                                     "error": "RuntimeError: the old leader never came back"}]
    assert "error in group broken: RuntimeError: the old leader never came back" in captured.err
    code = run_bench(quick=True, only="broken,batch", sqlite_dir=str(tmp_path), _sizes=TINY, _backends=("sqlite",))
    out = " ".join(capsys.readouterr().out.split())
    assert code == 1 and "append_batch_10" in out
    assert ("FAILED group broken: RuntimeError: the old leader never came back (its rows are missing; the other "
            "groups' rows stand)") in out


def test_unknown_group_is_an_error(capsys):
    assert run_bench(quick=True, as_json=True, only="appendd", _sizes=TINY, _backends=("sqlite",)) == 2
    assert capsys.readouterr().out == ""


def test_unreachable_postgresql_is_skipped_with_a_message(capsys, tmp_path):
    code = run_bench(quick=True, as_json=True, only="batch", sqlite_dir=str(tmp_path),
                     pg_url="postgresql://postgres@127.0.0.1:1/nowhere", _sizes=TINY)
    captured = capsys.readouterr()
    assert code == 0
    assert {r["backend"] for r in json.loads(captured.out)["results"]} == {"sqlite"}
    assert "PostgreSQL unreachable" in captured.err


def test_replication_without_server_binaries_is_skipped_with_the_reason(capsys, monkeypatch):
    monkeypatch.setattr(pg_cluster, "bindir", lambda: None)
    code = run_bench(quick=True, as_json=True, only="replication", _sizes=TINY, _backends=("postgresql",))
    captured = capsys.readouterr()
    assert code == 0
    document = json.loads(captured.out)
    assert document["results"] == [] and document["targets"] == [] and document["runs"] == [
        {"events": TINY["replay_events"], "results": []}]
    assert "replication: skipped (no PostgreSQL server binaries" in captured.err


@pytest.mark.postgres
def test_replication_rows_and_targets(capsys):
    if (problem := pg_cluster.available()) is not None:
        pytest.skip(problem)
    from tradestate.tools.bench import replication
    from tradestate.tools.bench.common import Result

    results = _run_json(capsys, only="replication", _backends=("postgresql",))
    assert {(r["metric"], r["baseline"]) for r in results} == {
        (f"sync_standby_append_1w_{level}{suffix}", f"raw_insert_commit_1w_{level}")
        for level in ("on", "remote_apply") for suffix in ("", "_p50", "_p99")
    }
    checks = replication.targets([Result(**r) for r in results])
    assert [line.split(" (")[0] for _, line in checks] == ["sync_standby_append_1w_on", "sync_standby_append_1w_remote_apply"]


def test_generated_log_is_valid_and_folds():
    rows = list(generate_trading_rows(5_000))
    assert rows == list(generate_trading_rows(5_000))  # deterministic
    assert [r[0] for r in rows] == list(range(1, 5_001))
    versions: dict[str, int] = {}
    state = TradingState()
    for position, stream, version, type_name, data, recorded_at in rows:
        assert version == versions.get(stream, 0) + 1  # gap-free stream versions
        versions[stream] = version
        payload = orjson.loads(data)
        decode(type_name, payload)  # valid against the event catalogue
        state.apply(position, stream, version, type_name, payload, recorded_at)
    assert state.applied == 5_000
    # every order is filled but those of the open state the log ends with (5,000 events: 50 open
    # orders, 20 more positions), acknowledged and at most partially filled
    open_orders, extra_positions = open_state_size(5_000)
    assert (open_orders, extra_positions) == (50, 25)
    orders = list(state.orders.values())
    assert {o.status for o in orders[:-open_orders]} == {"filled"}
    assert {o.status for o in orders[-open_orders:]} == {"acknowledged", "partially_filled"}
    assert len(state.positions) == len(SYMBOLS) * len(ACCOUNTS) + extra_positions


def test_cli_rejects_a_bad_group():
    proc = subprocess.run(
        [sys.executable, "-m", "tradestate.cli", "bench", "--quick", "--json", "--only", "nope"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "unknown metric group" in proc.stderr


def test_the_full_open_state_from_100k_events():
    from tradestate.tools.bench.logs import OPEN_ORDERS, OPEN_POSITIONS

    assert open_state_size(100_000) == open_state_size(10_000_000) == (OPEN_ORDERS, OPEN_POSITIONS - 80)
    assert open_state_size(1_000) == (10, 5)


@pytest.mark.parametrize(("text", "events"), [("1000", 1_000), ("100k", 100_000), ("1M", 1_000_000),
                                              ("2.5M", 2_500_000), ("10m", 10_000_000), ("1_000_000", 1_000_000),
                                              (250_000, 250_000)])
def test_events_are_read_with_their_suffix(text, events):
    from tradestate.tools.bench.run import parse_events

    assert parse_events(text) == events


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"events": "0"}, "--events must be at least 1,000 events (got 0)"),
    ({"events": 999}, "--events must be at least 1,000 events (got 999)"),
    ({"events": "-5"}, "not a number of events: '-5'"),
    ({"events": "lots"}, "not a number of events: 'lots'"),
    ({"events": "1.5k5"}, "not a number of events"),
    ({"events": "1.0005k"}, "not a whole number of events"),
    ({"events": "1M", "scaling": "100k,1M"}, "--events and --scaling exclude each other"),
    ({"events": "1M", "scaling": True}, "--events and --scaling exclude each other"),
    ({"scaling": "100k"}, "--scaling needs at least two different sizes"),
    ({"scaling": "100k,100k"}, "--scaling needs at least two different sizes"),
    ({"scaling": "100k,,1M"}, "--scaling: an empty size"),
    ({"scaling": "1k,0"}, "--scaling must be at least 1,000 events (got 0)"),
    ({"scaling": "1k,2k", "only": "append"}, "--scaling runs only the log-size-dependent groups"),
])
def test_bad_sizes_are_refused_before_anything_runs(capsys, kwargs, message):
    assert run_bench(quick=True, as_json=True, _sizes=TINY, _backends=("sqlite",), **kwargs) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err


def test_events_sets_the_log_of_every_log_size_dependent_group(capsys, tmp_path):
    document = _run_document(capsys, sqlite_dir=str(tmp_path), only="replay,batch", events="1.5k",
                             _backends=("sqlite",))
    assert document["sizes"]["events"] == document["sizes"]["replay_events"] == 1_500
    assert document["sizes"]["scaling"] is False
    assert [run["events"] for run in document["runs"]] == [1_500]
    assert document["scaling"] == []
    assert set(document["loads"]) == {"sqlite load 1,500"}  # replay reads the shared log: loaded once
    groups = {t["group"]: t for t in document["targets"]}
    assert groups["replay"]["events"] == 1_500 and groups["replay"]["ratio"] > 0
    assert list(tmp_path.iterdir()) == []


def test_scaling_reports_each_figure_at_each_size_with_its_growth(capsys, tmp_path):
    document = _run_document(capsys, sqlite_dir=str(tmp_path), only="replay", scaling="2k,1k",
                             _backends=("sqlite",))
    assert document["sizes"]["events"] == [1_000, 2_000] and document["sizes"]["scaling"] is True
    assert [run["events"] for run in document["runs"]] == [1_000, 2_000]
    assert {t["events"] for t in document["targets"]} == {1_000, 2_000}
    figures = {(f["metric"], f["backend"], f["baseline"]): f for f in document["scaling"]}
    assert ("replay", "sqlite", "raw_select_orjson") in figures
    for figure in figures.values():
        assert set(figure["values"]) == set(figure["ratios"]) == {"1000", "2000"}
        (span, growth), = figure["growth_per_10x"].items()
        assert span == "1000-2000"
        v1, v2 = figure["values"]["1000"], figure["values"]["2000"]
        assert growth == pytest.approx((v2 / v1) ** (1 / math.log10(2)))
    assert set(document["loads"]) == {"sqlite load 1,000", "sqlite load 2,000"}
    assert list(tmp_path.iterdir()) == []


def test_growth_per_10x():
    from tradestate.tools.bench.run import growth_per_10x

    assert growth_per_10x(2.0, 100_000, 20.0, 1_000_000) == pytest.approx(10.0)  # linear
    assert growth_per_10x(5.0, 1_000_000, 5.0, 10_000_000) == pytest.approx(1.0)  # constant
    assert growth_per_10x(1.0, 100_000, 100.0, 10_000_000) == pytest.approx(10.0)  # per 10x, over 100x


def test_every_target_line_says_met_or_missed_in_the_table(capsys):
    from tradestate.tools.bench import memory
    from tradestate.tools.bench.common import Result
    from tradestate.tools.bench.run import _print_human, _target_doc
    from tradestate.tools.bench.common import QUICK

    rows = [Result("memory_client_warm_open", "sqlite", 450.0, "MB", "interpreter_import_open_store", 50.0, 9.0),
            Result("memory_recover_warm_s", "sqlite", 0.1, "s", "memory_recover_cold_s", 2.0, 0.05)]
    (missed, line1), (met, line2) = memory.targets(rows)
    assert (missed, met) == (False, True)
    assert "1.50x the target (target <= 300 MB)" in line1 and "0.40x the target" in line2
    assert _target_doc("memory", missed, line1, 10_000_000)["ratio"] == 1.5
    _print_human(rows, [], QUICK, True)
    out = capsys.readouterr().out
    assert "MISSED memory_client_warm_open (sqlite): 450 MB" in out and "MET    memory_recover_warm_s" in out


def test_cli_scaling_alone_means_the_default_sizes(monkeypatch):
    import typer.core

    from tradestate.cli.bench import DEFAULT_SCALING, _BenchCommand

    seen = []
    monkeypatch.setattr(typer.core.TyperCommand, "parse_args", lambda self, ctx, args: seen.append(args) or [])
    for args in (["--only", "memory", "--scaling"], ["--scaling", "--json"], ["--scaling", "100k,1M"]):
        _BenchCommand(name="bench").parse_args(None, args)
    assert seen == [["--only", "memory", "--scaling", DEFAULT_SCALING], ["--scaling", DEFAULT_SCALING, "--json"],
                    ["--scaling", "100k,1M"]]


def test_cli_rejects_bad_sizes():
    for args in (["--events", "0"], ["--events", "1M", "--scaling"], ["--scaling", "1M"]):
        proc = subprocess.run([sys.executable, "-m", "tradestate.cli", "bench", "--json", *args],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, args
        assert proc.stdout == ""
        assert "error:" in proc.stderr


@pytest.mark.postgres
def test_scaling_on_postgresql_gives_each_size_its_own_schemas(capsys, pg_server, monkeypatch):
    run_id = _own_run_id(monkeypatch)
    document = _run_document(capsys, pg_url=pg_server, only="replay", scaling="1k,2k", _backends=("postgresql",))
    assert [len(run["results"]) for run in document["runs"]] == [7, 7]  # the library's app of 2k read 2k, not 3k
    assert set(document["loads"]) == {"postgresql load 1,000", "postgresql load 2,000"}
    assert _bench_schemas(pg_server, run_id) == set()
