"""Restore drills (``tradestate drill``): a drill of the newest backup passes on both backends and
records DrillCompleted with sane figures; a damaged backup or one of another log fails and is
recorded as failed; --no-record and a read-only database write nothing; the fold accepts
DrillCompleted; the scratch place is always removed."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import orjson
import psycopg
import pytest
from tests.support.db import pg_base_url, with_schema
from tests.support.projector_worker import write_session
from typer.testing import CliRunner

import tradestate
from tradestate import drill as drill_mod
from tradestate.adapters.store import backup as bk
from tradestate.adapters.store import digest, open_store
from tradestate.adapters.store.sql import PgUrl
from tradestate.cli.main import app
from tradestate.domain import events as ev
from tradestate.domain.state import TradingState
from tradestate.loading import fold_cold, load_state

READ_ONLY = "options=-cdefault_transaction_read_only%3Don"


def _session(url: str, n: int = 60, seed: int = 3) -> int:
    with tradestate.connect(url) as client:  # the wall clock: the RPO is measured against now
        return write_session(client, n, seed=seed)


def _more(url: str, n: int = 10, seed: int = 9) -> int:
    return _session(url, n, seed)


def _backup(url: str, path: Path, seal: bool = True) -> bk.Manifest:
    with open_store(url, create=False) as store:
        return bk.backup(store, path, seal=seal)


def _drills(url: str) -> list[dict]:
    with open_store(url, create=False) as store:
        return [orjson.loads(e.state) | {"position": e.position} for e in store.trading.read_stream(ev.DRILL_STREAM)]


def _drill_schemas() -> set[str]:
    with psycopg.connect(pg_base_url(), autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'ts\\_drill\\_%'")}


def test_a_drill_passes_and_records_its_figures(db_url, tmp_path):
    _session(db_url)
    _backup(db_url, tmp_path / "b1.tsb", seal=False)  # an older backup: the drill takes the newest
    head = _more(db_url)
    _backup(db_url, tmp_path / "b2.tsb", seal=False)  # its tail unsealed: compared row by row
    live = _more(db_url, 5, seed=11)  # the live log moves on after the backup
    report = drill_mod.drill(db_url, [tmp_path])

    assert report.passed, report.reason
    assert report.links == [str(tmp_path / "b2.tsb")]
    assert report.heads["ts_events"] == head and report.live_heads["ts_events"] == live
    assert report.events_behind == live - head > 0
    assert 0 < report.rto_seconds < 60 and report.restore_seconds <= report.rto_seconds
    assert 0 <= report.rpo_seconds < 600
    assert report.verify["ok"] and report.last_digest
    assert [s.name for s in report.steps] == ["find", "restore", "fold", "compare", "rpo"]
    assert report.steps[3].figures["ts_events"]["tail_compared"] > 0
    # on record, with the figures
    (recorded,) = _drills(db_url)
    assert recorded["position"] == report.recorded_position == live + 1
    assert recorded["outcome"] == "passed" and recorded["reason"] == ""
    assert recorded["heads"]["ts_events"] == head and recorded["events_behind"] == live - head
    assert float(recorded["rto_seconds"]) == pytest.approx(report.rto_seconds, abs=0.001)
    assert float(recorded["rpo_seconds"]) == pytest.approx(report.rpo_seconds, abs=0.001)
    assert recorded["links"] == report.links and recorded["started_at"] <= recorded["finished_at"]
    # the scratch place is gone
    if db_url.startswith("postgresql"):  # this drill's schema and its restore's staging one (others may run meanwhile)
        schema = PgUrl.parse(report.scratch).schema
        assert schema.startswith("ts_drill_") and not {s for s in _drill_schemas() if s.startswith(schema)}
    assert report.scratch and not any(Path(report.scratch.removeprefix("sqlite:///")).parent.glob("scratch.db*"))
    # and the live log still verifies, and folds (DrillCompleted included)
    with open_store(db_url, create=False) as store:
        assert digest.verify(store).ok
        assert load_state(store, use_checkpoints=False).state.position == live + 1


def test_a_sealed_backup_is_compared_by_its_last_digest(sqlite_url, tmp_path):
    head = _session(sqlite_url)
    _backup(sqlite_url, tmp_path / "b.tsb", seal=True)
    report = drill_mod.drill(sqlite_url, [tmp_path / "b.tsb"], record=False)
    assert report.passed, report.reason
    compare = report.steps[3].figures["ts_events"]
    assert compare["sealed_upto"] == head and compare["digest"] == report.last_digest
    assert "tail_compared" not in compare


def test_a_damaged_backup_fails_and_is_recorded(db_url, tmp_path):
    _session(db_url)
    path = tmp_path / "b.tsb"
    _backup(db_url, path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)  # inside the data member: its checksum no longer matches
    path.write_bytes(bytes(data))

    report = drill_mod.drill(db_url, [path])

    assert not report.passed and report.reason.startswith("restore refused")
    assert report.rto_seconds is None and report.rpo_seconds is None
    (recorded,) = _drills(db_url)
    assert recorded["outcome"] == "failed" and "restore refused" in recorded["reason"]
    assert recorded["rto_seconds"] is None


def test_a_backup_of_another_log_diverges(db_url, tmp_path):
    other = db_url.replace(".db", "-other.db") if db_url.startswith("sqlite") else None
    if other is None:
        other = with_schema(pg_base_url(), f"drill_other_{os.getpid()}_{id(tmp_path) % 100000}")
    try:
        _session(other, 30, seed=5)  # a log of its own: same shape, other events
        _backup(other, tmp_path / "other.tsb")
        _session(db_url, 40, seed=3)
        report = drill_mod.drill(db_url, [tmp_path / "other.tsb"])
        assert not report.passed
        assert "diverges from the live log" in report.reason and "ts_events" in report.reason
        assert report.rto_seconds is not None  # it did restore and fold: the comparison failed it
        (recorded,) = _drills(db_url)
        assert recorded["outcome"] == "failed" and "diverges" in recorded["reason"]
    finally:
        if other.startswith("postgresql"):
            with psycopg.connect(pg_base_url(), autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{other.rsplit("=", 1)[1]}" CASCADE')


def test_a_backup_ahead_of_the_live_log_fails(sqlite_url, tmp_path):
    _session(sqlite_url, 40)
    _backup(sqlite_url, tmp_path / "b.tsb")
    rolled_back = sqlite_url.replace(".db", "-short.db")
    _session(rolled_back, 10)  # the same commands, fewer of them: a prefix of the backup
    report = drill_mod.drill(rolled_back, [tmp_path / "b.tsb"], record=False)
    assert not report.passed and "the live log only" in report.reason


def test_no_record_writes_nothing(db_url, tmp_path):
    head = _session(db_url)
    _backup(db_url, tmp_path / "b.tsb")
    report = drill_mod.drill(db_url, [tmp_path], record=False)
    assert report.passed and report.recorded_position is None and "--no-record" in report.record_note
    with open_store(db_url, create=False) as store:
        assert store.trading.head() == head


@pytest.mark.postgres
def test_a_read_only_live_database_is_drilled_but_not_written(pg_url, tmp_path):
    head = _session(pg_url)
    _backup(pg_url, tmp_path / "b.tsb")
    with pytest.raises(tradestate.InvalidInput, match="--scratch"):  # its server takes no scratch schema either
        drill_mod.drill(pg_url + "&" + READ_ONLY, [tmp_path])
    scratch = with_schema(pg_base_url(), f"drill_scratch_{os.getpid()}_{id(tmp_path) % 100000}")
    report = drill_mod.drill(pg_url + "&" + READ_ONLY, [tmp_path], scratch=scratch)
    assert report.passed, report.reason
    assert report.recorded_position is None and "reads only" in report.record_note
    with open_store(pg_url, create=False) as store:
        assert store.trading.head() == head


def test_bad_input_creates_nothing(sqlite_url, tmp_path):
    _session(sqlite_url, 10)
    with pytest.raises(tradestate.InvalidInput):
        drill_mod.drill(sqlite_url, [tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(tradestate.InvalidInput):
        drill_mod.drill(sqlite_url, [tmp_path / "empty"])
    _backup(sqlite_url, tmp_path / "b.tsb")
    taken = tmp_path / "taken.db"
    taken.write_bytes(b"x")
    with pytest.raises(tradestate.InvalidInput, match="exists"):
        drill_mod.drill(sqlite_url, [tmp_path / "b.tsb"], scratch=f"sqlite:///{taken}")
    with pytest.raises(tradestate.InvalidInput, match="live database"):
        drill_mod.drill(sqlite_url, [tmp_path / "b.tsb"], scratch=sqlite_url)
    assert taken.read_bytes() == b"x" and _drills(sqlite_url) == []


def test_a_scratch_url_is_used_and_removed(sqlite_url, tmp_path):
    _session(sqlite_url, 20)
    _backup(sqlite_url, tmp_path / "b.tsb")
    scratch = tmp_path / "scratch" / "drill.db"
    scratch.parent.mkdir()
    report = drill_mod.drill(sqlite_url, [tmp_path / "b.tsb"], scratch=f"sqlite:///{scratch}")
    assert report.passed and str(scratch) in report.scratch
    assert list(scratch.parent.iterdir()) == []


def test_the_fold_accepts_drill_completed_and_old_logs_fold_unchanged(sqlite_url, tmp_path):
    head = _session(sqlite_url, 40)
    with open_store(sqlite_url, create=False) as store:
        before = load_state(store, use_checkpoints=False).state.summary()
    _backup(sqlite_url, tmp_path / "b.tsb")
    drill_mod.drill(sqlite_url, [tmp_path])
    with open_store(sqlite_url, create=False) as store:
        cold, _ = fold_cold(store)
        full = TradingState()
        for e in store.trading.read(0, limit=10_000):
            full.apply(e.position, e.originator_id, e.originator_version, e.topic, orjson.loads(e.state), e.recorded_at)
        for state in (cold, full):
            after = state.summary()
            assert state.position == head + 1 and not state.quarantined_streams
            assert after["stream_versions"].pop(ev.DRILL_STREAM) == 1
            skip = ("stream_versions", "position")
            assert {k: v for k, v in after.items() if k not in skip} == {k: v for k, v in before.items() if k not in skip}
    # the stored payload decodes to the typed event
    (recorded,) = _drills(sqlite_url)
    typed = ev.decode("DrillCompleted", {k: v for k, v in recorded.items() if k != "position"})
    assert typed.outcome == "passed" and typed.finished_at.tzinfo is not None
    # and the replay tools describe it
    from tradestate.replay.log import LoggedEvent, describe

    line = describe(LoggedEvent("trading", head + 1, ev.DRILL_STREAM, 1, "DrillCompleted", typed.finished_at, recorded))
    assert line.startswith("restore drill passed: RTO ") and " s, RPO " in line


def test_cli_drill_json_and_exit_codes(sqlite_url, tmp_path):
    _session(sqlite_url, 20)
    _backup(sqlite_url, tmp_path / "b.tsb")
    runner = CliRunner()
    ok = runner.invoke(app, ["drill", "--db", sqlite_url, "--from", str(tmp_path), "--json", "--no-record"])
    assert ok.exit_code == 0, ok.output
    out = json.loads(ok.stdout)
    assert out["outcome"] == "passed" and out["rto_seconds"] > 0 and out["recorded_position"] is None
    table = runner.invoke(app, ["drill", "--db", sqlite_url, "--from", str(tmp_path / "b.tsb")])
    assert table.exit_code == 0 and "passed" in table.stdout and "RTO" in table.stdout
    assert "DrillCompleted recorded" in table.stdout
    bad = runner.invoke(app, ["drill", "--db", sqlite_url, "--from", str(tmp_path / "nope"), "--json"])
    assert bad.exit_code == 2
    (tmp_path / "b.tsb").write_bytes(b"not a backup")
    failed = runner.invoke(app, ["drill", "--db", sqlite_url, "--from", str(tmp_path / "b.tsb"), "--json"])
    assert failed.exit_code == 1 and json.loads(failed.stdout)["outcome"] == "failed"
    assert [d["outcome"] for d in _drills(sqlite_url)] == ["passed", "failed"]


def _chain(url: str, directory: Path, key: bytes | None = None) -> list[Path]:
    """A full backup and two increments, with activity between them."""
    paths = [directory / "full.tsb", directory / "inc1.tsb", directory / "inc2.tsb"]
    _session(url, 30)
    with open_store(url, create=False) as store:
        bk.backup(store, paths[0], key=key)
    for i, path in enumerate(paths[1:], 1):
        _session(url, 8, seed=20 + i)
        with open_store(url, create=False) as store:
            bk.backup(store, path, previous=paths[i - 1], key=key)
    return paths


def test_a_chain_of_increments_is_drilled_encrypted(db_url, tmp_path):
    key = os.urandom(32)
    (tmp_path / "k").write_bytes(key.hex().encode())
    backups = tmp_path / "backups"
    backups.mkdir()
    paths = _chain(db_url, backups, key)
    head = _more(db_url, 0)
    report = drill_mod.drill(db_url, [backups], key=key)
    assert report.passed, report.reason
    assert report.links == [str(p) for p in paths] and report.heads["ts_events"] == head
    assert report.events_behind == 0
    (recorded,) = _drills(db_url)
    assert recorded["links"] == report.links and recorded["chain_id"] == report.chain_id
    # the CLI with the key file
    out = CliRunner().invoke(app, ["drill", "--db", db_url, "--from", str(backups), "--key-file",
                                   str(tmp_path / "k"), "--json", "--no-record"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["links"] == report.links
    # a wrong key: a failed drill, recorded
    wrong = drill_mod.drill(db_url, [backups], key=os.urandom(32))
    assert not wrong.passed and "no usable backup chain" in wrong.reason
    assert [d["outcome"] for d in _drills(db_url)] == ["passed", "failed"]


def test_a_damaged_or_missing_increment_fails_the_drill(sqlite_url, tmp_path):
    paths = _chain(sqlite_url, tmp_path)
    with tarfile.open(paths[1]) as tar:
        member = tar.getmembers()[-1]  # the data, after the manifest: the manifest still reads
    data = bytearray(paths[1].read_bytes())
    data[member.offset_data + 20:member.offset_data + 40] = bytes(20)
    paths[1].write_bytes(bytes(data))
    damaged = drill_mod.drill(sqlite_url, [tmp_path], record=False)
    assert not damaged.passed and "restore refused" in damaged.reason and "inc1.tsb" in damaged.reason
    paths[1].unlink()  # now missing, while inc2 is there: a broken chain, not a shorter one
    missing = drill_mod.drill(sqlite_url, [tmp_path], record=False)
    assert not missing.passed and "link 1 is missing" in missing.reason
