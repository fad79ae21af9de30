"""Backup and restore: the restore drill (backup, damage the database, restore, verify, same state),
damaged or truncated backup files refused with the target untouched, and --force over a log."""

from __future__ import annotations

import json
import os
import sqlite3
import tarfile
from pathlib import Path

import orjson
import psycopg
import pytest
from tests.support.db import pg_base_url
from tests.support.projector_worker import Clock, write_session
from tests.support.db import schema_of, tamper
from tests.support.partitioned import db_url  # noqa: F401 - also on a partitioned PostgreSQL log
from typer.testing import CliRunner

import tradestate
from tradestate.adapters.store import backup as bk
from tradestate.adapters.store import digest, open_store
from tradestate.cli.main import app
from tradestate.projections.tables import Dialect, drop_read_models


@pytest.fixture
def url(db_url):
    yield db_url
    if db_url.startswith("postgresql"):  # the staging and kept-aside schemas of this test's schema
        schema = schema_of(db_url)
        with psycopg.connect(pg_base_url(), autocommit=True) as conn:
            for (name,) in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                                        (schema + "\\_%",)).fetchall():
                conn.execute(f'DROP SCHEMA "{name}" CASCADE')


def _session(url: str, n: int = 120, seed: int = 3) -> int:
    with tradestate.connect(url, clock=Clock()) as client:
        head = write_session(client, n, seed=seed)
        client.record_bar("XNAS", "AAPL", "1m", Clock()(), "1", "2", "0.5", "1.5", "100")
    return head


def _summary(url: str) -> dict:
    with tradestate.connect(url, clock=Clock()) as client:
        return client.state.summary()


def _read_models(url: str, create: bool = False) -> set[str]:
    with open_store(url, create=False) as store:
        dialect = Dialect(store.kind, digest._Backend(store).schema)
        db = digest._Backend(store)
        with db.write() as cur:
            if create:
                for statement in dialect.create_statements():
                    cur.execute(statement)
        return {t for t in ("ts_positions", "ts_orders", "ts_projection_tracking") if db.table_exists(t)}


def _leftovers(url: str, directory: Path) -> list[str]:
    if url.startswith("sqlite"):
        return [p.name for p in directory.iterdir() if ".restore-" in p.name or ".tmp-" in p.name]
    with psycopg.connect(pg_base_url(), autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                                           (schema_of(url) + "\\_rs\\_%",)).fetchall()]


def test_restore_drill(url, tmp_path):
    head = _session(url)
    assert _read_models(url, create=True)
    with open_store(url, create=False) as store:
        digest.protect_log(store)
        digest.seal(store)  # a backup only reads: the chain is sealed by whoever may write
        manifest = bk.backup(store, tmp_path / "drill.tsb")
    before = _summary(url)
    assert manifest.logs["ts_events"] == {"from": 1, "head": head, "rows": head}
    assert manifest.logs["ts_market_events"]["head"] == 1
    assert manifest.chain["ts_events"]["sealed_upto"] == head and len(manifest.chain["ts_events"]["last_digest"]) == 64
    assert bk.read_manifest(tmp_path / "drill.tsb").logs == manifest.logs

    # damage the database: a fill's price edited, the last event deleted
    with open_store(url, create=False) as store:
        fill = next(e for e in store.trading.read(limit=head) if e.topic == "OrderFilled")
        payload = orjson.loads(fill.state) | {"price": "0.01"}
        tamper(store, ("UPDATE ts_events SET data = %s WHERE position = %s", (orjson.dumps(payload), fill.position)),
               ("DELETE FROM ts_events WHERE position = %s", (head,)))
        check = digest.verify(store)
        assert (check.first_bad_position, check.problem) == (fill.position, "edited")
    assert _summary(url) != before

    with pytest.raises(bk.RestoreRefused, match="--force"):
        bk.restore(url, tmp_path / "drill.tsb")
    result = bk.restore(url, tmp_path / "drill.tsb", force=True, extra_drop=drop_read_models)
    assert result.ok and result.logs["ts_events"]["head"] == head and result.read_models_dropped
    assert result.previous_saved_to and result.last_digest == manifest.chain["ts_events"]["last_digest"]

    with open_store(url, create=False) as store:
        check = digest.verify(store)
        assert check.ok and check.sealed_upto == head and check.unsealed_events == 0, check.detail
        assert store.trading.head() == head and store.market.head() == 1
        assert digest.is_protected(store)  # the protection came back with the restored tables
    assert _summary(url) == before
    assert not _read_models(url)  # stale read models are gone: the projector rebuilds them
    assert not _leftovers(url, tmp_path)

    # the restored log carries on: positions continue after the restored head, without holes
    with tradestate.connect(url, clock=Clock()) as client:
        client.set_risk_limit("acct-x", "max_order_qty", 10)
        assert client.position == head + 1
    with open_store(url, create=False) as store:
        assert digest.seal(store).sealed_upto == head + 1 and digest.verify(store).ok

    # and the previous (damaged) content was kept aside, not lost
    if url.startswith("sqlite"):
        kept = sqlite3.connect(result.previous_saved_to)
        assert kept.execute("SELECT count(*) FROM ts_events").fetchone()[0] == head - 1
        kept.close()
    else:
        with psycopg.connect(pg_base_url()) as conn:
            n = conn.execute(f'SELECT count(*) FROM "{result.previous_saved_to}".ts_events').fetchone()[0]
            assert n == head - 1


def test_restore_into_an_empty_target_needs_no_force(url, tmp_path):
    head = _session(url, 60)
    with open_store(url, create=False) as store:
        bk.backup(store, tmp_path / "b.tsb")
    before = _summary(url)
    if url.startswith("sqlite"):
        target = f"sqlite:///{tmp_path}/fresh.db"
    else:
        target = url.replace(f"schema={schema_of(url)}", f"schema={schema_of(url)}_fresh")
    result = bk.restore(target, tmp_path / "b.tsb")
    assert result.previous_saved_to is None and result.logs["ts_events"]["head"] == head
    assert not result.read_models_dropped  # the store drops derived tables only when told which
    assert _summary(target) == before
    with open_store(target, create=False) as store:
        assert digest.verify(store).ok


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip a data byte", "flip a manifest byte", "truncate", "cut the last member",
                                    "not a backup", "empty"])
def test_damaged_backup_is_refused_and_the_target_untouched(url, tmp_path, damage):
    _session(url, 60)
    file = tmp_path / "b.tsb"
    with open_store(url, create=False) as store:
        bk.backup(store, file)
    # the target: the same database, with a different log since the backup
    with tradestate.connect(url, clock=Clock()) as client:
        client.set_risk_limit("acct-x", "max_order_qty", 10)
    before = _summary(url)
    size = file.stat().st_size
    raw = file.read_bytes()
    with tarfile.open(file) as tar:
        last = tar.getmembers()[-1]
        middle_of_last = last.offset_data + last.size // 2
    if damage == "flip a data byte":
        _flip(file, middle_of_last)
    elif damage == "flip a manifest byte":
        _flip(file, raw.index(b'"created_at"') + 3)
    elif damage == "truncate":
        file.write_bytes(raw[: size // 2])
    elif damage == "cut the last member":
        file.write_bytes(raw[:middle_of_last])
    elif damage == "not a backup":
        file.write_bytes(b"hello, this is not a tar file at all" * 100)
    else:
        file.write_bytes(b"")
    with pytest.raises(bk.BackupDamaged, match="nothing was restored|damaged|truncated|checksum|not a"):
        bk.restore(url, file, force=True)
    assert _summary(url) == before
    with open_store(url, create=False) as store:
        assert digest.verify(store).ok
    assert not _leftovers(url, tmp_path)


def test_a_backup_of_a_tampered_log_is_refused(url, tmp_path):
    _session(url, 60)
    with open_store(url, create=False) as store:
        digest.seal(store)
        tamper(store, ("UPDATE ts_events SET data = %s WHERE position = %s", (b"{}", 12)))
        bk.backup(store, tmp_path / "b.tsb", seal=False)
    target = f"sqlite:///{tmp_path}/t.db" if url.startswith("sqlite") else url.replace(
        f"schema={schema_of(url)}", f"schema={schema_of(url)}_t")
    with pytest.raises(bk.BackupDamaged, match="first bad position 12"):
        bk.restore(target, tmp_path / "b.tsb")
    if url.startswith("sqlite"):
        assert not os.path.exists(tmp_path / "t.db")
    else:
        with psycopg.connect(pg_base_url()) as conn:
            assert conn.execute("SELECT to_regclass(%s)", (f'"{schema_of(target)}".ts_events',)).fetchone()[0] is None


def test_sqlite_restore_over_a_file_that_is_no_database(sqlite_url, tmp_path):
    head = _session(sqlite_url, 60)
    with open_store(sqlite_url, create=False) as store:
        bk.backup(store, tmp_path / "b.tsb")
    before = _summary(sqlite_url)
    path = Path(sqlite_url[len("sqlite:///"):])
    path.write_bytes(b"\0garbage" * 4096)  # the disk ate it
    with pytest.raises(bk.RestoreRefused, match="not a readable database"):
        bk.restore(sqlite_url, tmp_path / "b.tsb")
    result = bk.restore(sqlite_url, tmp_path / "b.tsb", force=True)
    assert Path(result.previous_saved_to).read_bytes().startswith(b"\0garbage")
    assert _summary(sqlite_url) == before
    with open_store(sqlite_url, create=False) as store:
        assert digest.verify(store).ok and store.trading.head() == head


def test_cross_backend_restore_is_refused_clearly(sqlite_url, tmp_path):
    _session(sqlite_url, 20)
    with open_store(sqlite_url, create=False) as store:
        bk.backup(store, tmp_path / "b.tsb")
    with pytest.raises(bk.RestoreRefused, match="sqlite backup"):
        bk.restore("postgresql://nobody@127.0.0.1:1/none", tmp_path / "b.tsb")


# ------------------------------------------------------------------------------ the commands


def test_cli_verify_backup_restore(url, tmp_path):
    runner = CliRunner()
    head = _session(url, 60)
    r = runner.invoke(app, ["verify", "--db", url, "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["sealed_upto"] == 0  # nothing sealed yet: ok
    r = runner.invoke(app, ["verify", "--db", url, "--seal"])
    assert r.exit_code == 0 and "ok" in r.stdout
    r = runner.invoke(app, ["backup", "--db", url, "--to", str(tmp_path / "b.tsb"), "--json"])
    assert r.exit_code == 0, r.stdout
    assert json.loads(r.stdout)["manifest"]["logs"]["ts_events"]["head"] == head

    with open_store(url, create=False) as store:
        tamper(store, ("UPDATE ts_events SET type = %s WHERE position = %s", ("OrderCancelled", 33)))
    r = runner.invoke(app, ["verify", "--db", url, "--json"])
    out = json.loads(r.stdout)
    assert r.exit_code == 1 and (out["ok"], out["first_bad_position"], out["problem"]) == (False, 33, "edited")
    r = runner.invoke(app, ["verify", "--db", url])
    assert r.exit_code == 1 and "first bad position" in r.stdout and "33" in r.stdout

    r = runner.invoke(app, ["restore", "--db", url, "--from", str(tmp_path / "b.tsb"), "--json"])
    assert r.exit_code == 2 and "--force" in json.loads(r.stderr)["error"]
    r = runner.invoke(app, ["restore", "--db", url, "--from", str(tmp_path / "b.tsb"), "--force"])
    assert r.exit_code == 0, r.stdout
    assert runner.invoke(app, ["verify", "--db", url]).exit_code == 0

    (tmp_path / "bad.tsb").write_bytes((tmp_path / "b.tsb").read_bytes()[:5000])
    r = runner.invoke(app, ["restore", "--db", url, "--from", str(tmp_path / "bad.tsb"), "--force"])
    assert r.exit_code == 1 and "nothing was restored" in r.stderr
    assert runner.invoke(app, ["verify", "--db", url]).exit_code == 0

    missing = f"sqlite:///{tmp_path}/missing.db"
    assert runner.invoke(app, ["verify", "--db", missing]).exit_code == 2
    assert runner.invoke(app, ["backup", "--db", missing, "--to", str(tmp_path / "x.tsb")]).exit_code == 2
    assert runner.invoke(app, ["restore", "--db", url, "--from", str(tmp_path / "none.tsb")]).exit_code == 2
