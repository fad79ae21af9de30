"""``backup`` only reads the database it backs up (so it runs against a hot standby): it records
the last sealed position and the unsealed tail in the manifest, and ``restore`` seals that tail
once the backup is in place, so the restored log verifies whole."""

from __future__ import annotations

import sqlite3
from urllib.parse import parse_qs, urlparse

import psycopg
import pytest
from tests.support.db import pg_base_url, with_schema
from tests.support.projector_worker import Clock

import tradestate
from tradestate.adapters.store import backup as bk
from tradestate.adapters.store import digest, open_store
from tradestate.adapters.store.sql import read_cursor

READ_ONLY = "options=-cdefault_transaction_read_only%3Don"  # every transaction of the session is read-only


def _trade(url: str, n: int) -> int:
    with tradestate.connect(url, venue="sim", clock=Clock()) as c:
        for i in range(n):
            assert c.record_intent("acct-1", f"o{i}", "AAPL", "buy", "10", reference_price="100").accepted
            c.record_fill("acct-1", f"o{i}", f"x{i}", "10", "100")
        return c.position


def _chain_rows(store) -> int:
    with read_cursor(store) as cur:
        cur.execute(f"SELECT count(*) FROM {store.dialect.name(digest.CHAIN_TABLE)}")
        return int(cur.fetchone()[0])


def _restored_verifies(target_url: str, backup_path, head: int, sealed_before: int) -> None:
    result = bk.restore(target_url, backup_path)
    assert result.ok and result.sealed_after_restore == head - sealed_before
    with open_store(target_url, create=False) as store:
        check = digest.verify(store)
        assert check.ok and check.sealed_upto == head and check.unsealed_events == 0, check.detail
        assert result.last_digest == check.last_digest
        assert digest.verify_meaning(store).ok


def test_sqlite_backup_runs_while_another_process_holds_the_write_lock(sqlite_url, tmp_path):
    head = _trade(sqlite_url, 10)
    with open_store(sqlite_url, create=False) as store:
        digest.seal(store, upto=7)
        chain_before = _chain_rows(store)
    path = sqlite_url[len("sqlite:///"):]
    locker = sqlite3.connect(path, isolation_level=None, timeout=0)
    locker.execute("BEGIN IMMEDIATE")  # nobody else can write until we say so: a write would wait, then fail
    try:
        with open_store(sqlite_url, create=False) as store:
            manifest = bk.backup(store, tmp_path / "b.tsb")
            assert _chain_rows(store) == chain_before
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert manifest.chain["ts_events"] == {"sealed_upto": 7, "last_digest": manifest.chain["ts_events"]["last_digest"],
                                           "unsealed": head - 7}
    assert len(manifest.chain["ts_events"]["last_digest"]) == 64
    _restored_verifies(f"sqlite:///{tmp_path}/restored.db", tmp_path / "b.tsb", head, 7)


@pytest.mark.postgres
def test_postgres_backup_runs_on_a_read_only_session(pg_url, tmp_path):
    head = _trade(pg_url, 10)
    read_only = f"{pg_url}&{READ_ONLY}" if "?" in pg_url else f"{pg_url}?{READ_ONLY}"
    with open_store(read_only, create=False) as store:
        with pytest.raises(Exception, match="read-only"):
            digest.seal(store)  # the session really refuses writes
        manifest = bk.backup(store, tmp_path / "b.tsb")
    assert manifest.logs["ts_events"]["head"] == head
    assert manifest.chain["ts_events"] == {"sealed_upto": 0, "last_digest": "", "unsealed": head}
    schema = parse_qs(urlparse(pg_url).query)["schema"][0] + "_restored"
    target = with_schema(pg_url, schema)
    try:
        _restored_verifies(target, tmp_path / "b.tsb", head, 0)
    finally:
        with psycopg.connect(pg_base_url(), autocommit=True) as conn:
            for (name,) in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                                        (schema + "%",)).fetchall():
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
