"""Chains of backups (a full + increments) on both backends: an increment holds only what came
after the previous link, a chain restores to the live log's state, and a damaged, missing,
reordered or foreign link, or an increment of a log rewound since, is refused naming the link."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import json
import tarfile

import psycopg
import pytest
from tests.support.db import pg_base_url, schema_of, tamper, with_schema
from tests.support.projector_worker import Clock
from typer.testing import CliRunner

import tradestate
from tradestate.adapters.store import backup as bk
from tradestate.adapters.store import checkpoints, digest, open_store
from tradestate.cli.main import app
from tradestate.loading import state_at


@pytest.fixture
def url(db_url):
    yield db_url
    if db_url.startswith("postgresql"):  # the staging, target and kept-aside schemas of this test's schema
        with psycopg.connect(pg_base_url(), autocommit=True) as conn:
            for (name,) in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                                        (schema_of(db_url) + "\\_%",)).fetchall():
                conn.execute(f'DROP SCHEMA "{name}" CASCADE')


def _target(url: str, tmp_path, name: str = "t") -> str:
    if url.startswith("sqlite"):
        return f"sqlite:///{tmp_path}/{name}.db"
    return with_schema(url, f"{schema_of(url)}_{name}")


def _trade(url: str, n: int, tag: str, *, bar: int = 0) -> int:
    with tradestate.connect(url, venue="sim", clock=Clock()) as c:
        for i in range(n):
            assert c.record_intent("acct-1", f"{tag}{i}", "AAPL", "buy", "10", reference_price="100").accepted
            c.record_fill("acct-1", f"{tag}{i}", f"x{tag}{i}", "10", "100")
        if bar:
            at = datetime(2024, 3, 5, 15, tzinfo=timezone.utc) + timedelta(minutes=bar)
            c.record_bar("XNAS", "AAPL", "1m", at, "1", "2", "0.5", "1.5", "100")
        return c.position


def _summary(url: str) -> dict:
    with tradestate.connect(url, clock=Clock()) as client:
        return client.state.summary()


def _chain(url: str, tmp_path, key: bytes | None = None) -> tuple[list, int]:
    """A full backup (sealed part-way, with a checkpoint) and two increments with new events,
    new sealed ranges and a new checkpoint between them; returns the files and the head."""
    files = [tmp_path / "full.tsb", tmp_path / "inc1.tsb", tmp_path / "inc2.tsb"]
    h0 = _trade(url, 10, "a", bar=1)
    with open_store(url, create=False) as store:
        digest.seal(store, upto=12)
        checkpoints.write(store, state_at(store))
        full = bk.backup(store, files[0], key=key)
    h1 = _trade(url, 8, "b", bar=2)
    with open_store(url, create=False) as store:
        inc1 = bk.backup(store, files[1], previous=files[0], key=key, seal=True)
    _trade(url, 6, "c")
    with open_store(url, create=False) as store:
        checkpoints.write(store, state_at(store))
        inc2 = bk.backup(store, files[2], previous=files[1], key=key)
        head = store.trading.head()
    assert (full.kind, full.sequence, inc1.kind, inc1.sequence, inc2.sequence) == ("full", 0, "incremental", 1, 2)
    assert full.chain_id == inc1.chain_id == inc2.chain_id and full.previous_sha256 == ""
    assert inc1.previous_sha256 == full.manifest_sha256 and inc2.previous_sha256 == inc1.manifest_sha256
    assert inc1.logs["ts_events"] == {"from": h0 + 1, "head": h1, "rows": h1 - h0}
    assert inc2.logs["ts_events"] == {"from": h1 + 1, "head": head, "rows": head - h1}
    assert inc1.logs["ts_market_events"] == {"from": 2, "head": 2, "rows": 1}
    assert inc2.logs["ts_market_events"] == {"from": 3, "head": 2, "rows": 0}
    assert full.chain["ts_events"]["sealed_upto"] == 12
    assert inc1.chain["ts_events"]["sealed_upto"] == h1 and inc2.chain["ts_events"]["unsealed"] == head - h1
    assert inc2.checkpoints["from_id"] == full.checkpoints["upto_id"] + 1 == 2
    return files, head, h1


def test_a_chain_restores_to_the_live_state(url, tmp_path):
    files, head, h1 = _chain(url, tmp_path)
    live = _summary(url)
    with open_store(url, create=False) as store:
        live_check = digest.verify(store)
    verified = bk.verify_chain(files)
    assert verified.ok and verified.heads == {"ts_events": head, "ts_market_events": 2}
    assert [link["sequence"] for link in verified.links] == [0, 1, 2]
    assert bk.find_chain(tmp_path) == files
    target = _target(url, tmp_path)
    result = bk.restore(target, files)
    assert result.logs["ts_events"] == {"head": head, "rows": head} and result.sealed_after_restore == head - h1
    with open_store(target, create=False) as store:
        check = digest.verify(store)
        assert check.ok and check.sealed_upto == head and store.market.head() == 2, check.detail
        assert len(checkpoints.list_checkpoints(store)) == 2
    assert _summary(target) == live  # the fold of the restored chain equals the live one
    with open_store(url, create=False) as store:
        digest.seal(store)
        assert digest.verify(store).last_digest == check.last_digest == result.last_digest
    assert live_check.ok


def test_an_increment_holds_only_the_new_rows(url, tmp_path):
    files, _head, _h1 = _chain(url, tmp_path)
    _trade(url, 200, "d")
    with open_store(url, create=False) as store:
        big = bk.backup(store, tmp_path / "inc3.tsb", previous=files[2])
        empty = bk.backup(store, tmp_path / "inc4.tsb", previous=tmp_path / "inc3.tsb")
    assert big.logs["ts_events"]["rows"] == big.logs["ts_events"]["head"] - _head and empty.logs["ts_events"]["rows"] == 0
    assert _rows_held(big) == {"ts_events": big.logs["ts_events"]["rows"], "ts_market_events": 0}
    assert _rows_held(empty) == {"ts_events": 0, "ts_market_events": 0} and empty.sequence == 4
    assert bk.find_chain([tmp_path]) == files + [tmp_path / "inc3.tsb", tmp_path / "inc4.tsb"]
    result = bk.restore(_target(url, tmp_path), bk.find_chain(tmp_path))
    assert result.logs["ts_events"]["head"] == big.logs["ts_events"]["head"]


def _rows_held(manifest) -> dict[str, int]:
    """Rows of each log the file holds, as its members say."""
    if manifest.source_kind == "sqlite":
        tables = manifest.members[0]["tables"]
        return {log: tables[log]["rows"] for log in ("ts_events", "ts_market_events")}
    return {m["table"]: m["rows"] for m in manifest.members if m["table"] in ("ts_events", "ts_market_events")}


def _refused(url: str, tmp_path, paths: list, match: str) -> None:
    target = _target(url, tmp_path, "x")
    with pytest.raises(bk.BackupDamaged, match=match):
        bk.restore(target, paths)
    if url.startswith("sqlite"):
        assert not (tmp_path / "x.db").exists()
        assert not [p for p in tmp_path.iterdir() if ".restore-" in p.name]
    else:
        with psycopg.connect(pg_base_url(), autocommit=True) as conn:
            assert conn.execute("SELECT to_regclass(%s)", (f'"{schema_of(target)}".ts_events',)).fetchone()[0] is None
            assert not conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                                    (schema_of(target) + "\\_rs\\_%",)).fetchall()


def test_bad_links_are_refused_naming_the_first_bad_one(url, tmp_path):
    (full, inc1, inc2), _head, _h1 = _chain(url, tmp_path)
    _refused(url, tmp_path, [full, inc2], f"{inc2}: .*increment 1 is missing")
    _refused(url, tmp_path, [full, inc2, inc1], f"{inc2}: .*increment 1 is missing")
    _refused(url, tmp_path, [full, inc1, inc1], f"{inc1}: .*out of order")
    _refused(url, tmp_path, [inc1, inc2], f"{inc1}: the chain does not start with a full backup")
    with pytest.raises(bk.BackupDamaged, match="increment 1 is missing"):
        bk.verify_chain([full, inc2])

    # a damaged increment: one byte of its data
    damaged = tmp_path / "damaged.tsb"
    data = bytearray(inc1.read_bytes())
    with tarfile.open(inc1) as tar:
        last = tar.getmembers()[-1]
    data[last.offset_data + last.size // 2] ^= 0x20
    damaged.write_bytes(bytes(data))
    _refused(url, tmp_path, [full, damaged, inc2], f"{damaged}.*(checksum|damaged)")
    with pytest.raises(bk.BackupDamaged, match=str(damaged)):
        bk.verify_chain([full, damaged, inc2])

    # an increment of another chain (another full of the same log)
    with open_store(url, create=False) as store:
        bk.backup(store, tmp_path / "other-full.tsb")
    _trade(url, 2, "z")
    with open_store(url, create=False) as store:
        bk.backup(store, tmp_path / "other-inc.tsb", previous=tmp_path / "other-full.tsb")
    _refused(url, tmp_path, [full, inc1, inc2, tmp_path / "other-inc.tsb"], "other-inc.tsb: .*another chain")
    report = bk.check_backups(tmp_path)
    assert not report.ok and {c["ok"] for c in report.chains} == {True, False}  # damaged.tsb spoils the first chain
    damaged.unlink()
    assert bk.check_backups(tmp_path).ok


def test_an_increment_of_a_rewound_log_is_refused(url, tmp_path):
    (full, inc1, _inc2), _head, _h1 = _chain(url, tmp_path)
    bk.restore(url, full, force=True)  # the live log goes back to the full backup...
    _trade(url, 30, "r")  # ...and carries on past the increments' heads with other events
    with open_store(url, create=False) as store, pytest.raises(bk.IncrementRefused, match="take a full backup"):
        bk.backup(store, tmp_path / "inc3.tsb", previous=tmp_path / "inc2.tsb")
    assert not (tmp_path / "inc3.tsb").exists()
    # a log cut below the previous head (events deleted by hand) is refused too
    with open_store(url, create=False) as store, pytest.raises(bk.IncrementRefused):
        bk.backup(store, tmp_path / "inc3.tsb", previous=inc1)
    with open_store(url, create=False) as store:  # a new full starts a new chain
        assert bk.backup(store, tmp_path / "new.tsb").kind == "full"


def test_an_increment_needs_a_previous_backup_of_the_same_kind(sqlite_url, tmp_path):
    _trade(sqlite_url, 2, "a")
    with open_store(sqlite_url, create=False) as store:
        bk.backup(store, tmp_path / "f.tsb")
        with pytest.raises(Exception, match="no backup file"):
            bk.backup(store, tmp_path / "i.tsb", previous=tmp_path / "missing.tsb")
        with pytest.raises(Exception, match="overwrite"):
            bk.backup(store, tmp_path / "f.tsb", previous=tmp_path / "f.tsb")


# ------------------------------------------------------------------------------ the commands


def test_cli_chain_encrypted_check_restore(url, tmp_path):
    runner = CliRunner()
    backups = tmp_path / "backups"
    backups.mkdir()
    key = tmp_path / "backup.key"
    r = runner.invoke(app, ["backup", "keygen", "--to", str(key), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["key_id"]
    _trade(url, 5, "a")
    full, inc = backups / "full.tsb", backups / "inc1.tsb"
    r = runner.invoke(app, ["backup", "--db", url, "--to", str(full), "--key-file", str(key)])
    assert r.exit_code == 0 and "backup written" in r.stdout and "encrypted" in r.stdout, r.stdout + r.stderr
    head = _trade(url, 5, "b")
    r = runner.invoke(app, ["backup", "--db", url, "--to", str(inc), "--previous", str(full), "--key-file", str(key),
                            "--json"])
    assert r.exit_code == 0, r.stderr
    made = json.loads(r.stdout)["manifest"]
    assert (made["kind"], made["sequence"], made["logs"]["ts_events"]["head"]) == ("incremental", 1, head)

    r = runner.invoke(app, ["backup", "check", str(backups), "--key-file", str(key), "--json"])
    report = json.loads(r.stdout)
    assert r.exit_code == 0 and report["ok"] and report["chains"][0]["links"] == 2, r.stdout
    r = runner.invoke(app, ["backup", "check", str(backups)])
    assert r.exit_code == 1 and "is encrypted" in r.stdout  # no key: cannot be checked

    target = _target(url, tmp_path)
    r = runner.invoke(app, ["restore", "--db", target, "--from", str(full), "--from", str(inc), "--key-file",
                            str(key), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["logs"]["ts_events"]["head"] == head, r.stderr
    target2 = _target(url, tmp_path, "t2")
    r = runner.invoke(app, ["restore", "--db", target2, "--from", str(backups), "--key-file", str(key)])
    assert r.exit_code == 0 and "a chain of 2 backups" in r.stdout, r.stderr
    assert _summary(target2) == _summary(url)

    r = runner.invoke(app, ["restore", "--db", _target(url, tmp_path, "t3"), "--from", str(inc), "--key-file",
                            str(key)])
    assert r.exit_code == 1 and "does not start with a full backup" in r.stderr
    r = runner.invoke(app, ["restore", "--db", _target(url, tmp_path, "t3"), "--from", str(full), "--from", str(inc)])
    assert r.exit_code == 2 and "give the key" in r.stderr

    data = bytearray(inc.read_bytes())
    data[len(data) // 2] ^= 1
    inc.write_bytes(bytes(data))
    r = runner.invoke(app, ["backup", "check", str(backups), "--key-file", str(key)])
    assert r.exit_code == 1 and "UNREADABLE" in r.stdout and "inc1.tsb" in r.stdout and "tampered" in r.stdout
    r = runner.invoke(app, ["restore", "--db", _target(url, tmp_path, "t3"), "--from", str(full), "--from", str(inc),
                            "--key-file", str(key)])
    assert r.exit_code == 1 and "inc1.tsb" in r.stderr and "tampered" in r.stderr

    # the live log rewound to the full backup: an increment is refused, a full is the way on
    assert runner.invoke(app, ["restore", "--db", url, "--from", str(full), "--force", "--key-file",
                               str(key)]).exit_code == 0
    _trade(url, 9, "c")
    r = runner.invoke(app, ["backup", "--db", url, "--to", str(backups / "inc2.tsb"), "--previous", str(full),
                            "--key-file", str(key)])
    assert r.exit_code == 0  # the full is still continued (the increment from it is a new branch)
    r = runner.invoke(app, ["backup", "--db", url, "--to", str(backups / "inc3.tsb"), "--previous", str(backups / "inc2.tsb")])
    assert r.exit_code == 2 and "give the key" in r.stderr
    assert runner.invoke(app, ["backup", "--db", url]).exit_code == 2


def test_a_chain_whose_increment_holds_an_altered_event_is_refused_naming_it(url, tmp_path):
    _trade(url, 5, "a")
    with open_store(url, create=False) as store:
        full = bk.backup(store, tmp_path / "full.tsb")
    head = _trade(url, 5, "b")
    with open_store(url, create=False) as store:
        digest.seal(store)
        tamper(store, ("UPDATE ts_events SET data = %s WHERE position = %s", (b"{}", head - 2)))
        bk.backup(store, tmp_path / "inc1.tsb", previous=full.path)  # the backup only reads: it carries the edit
    _refused(url, tmp_path, [tmp_path / "full.tsb", tmp_path / "inc1.tsb"],
             f"{tmp_path / 'inc1.tsb'}: the backed-up log fails verification: first bad position {head - 2}")
