"""``tradestate migrate``: a log with orders, fills, checkpoints, leases and a sealed digest chain
moved SQLite -> PostgreSQL and back, on real files and the real PostgreSQL: the target verifies,
folds to the source's state, takes the next append at head + 1; a target holding a log is refused
without --force; a damaged source is refused with the target untouched; the payload views."""

from __future__ import annotations

import json
import time

import orjson
import psycopg
import pytest
from tests.support.db import pg_base_url, schema_of, tamper, with_schema
from tests.support.projector_worker import Clock, write_session
from typer.testing import CliRunner

import tradestate
from tradestate.adapters.store import checkpoints, digest, open_store
from tradestate.adapters.store import migrate as mg
from tradestate.adapters.store.lease import Leases
from tradestate.cli.main import app
from tradestate import alerts
from tradestate.engines import EngineLease
from tradestate.loading import state_at
from tradestate.projections.projector import Projector
from tradestate.projections.tables import drop_read_models

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg(pg_url):
    yield pg_url
    schema = schema_of(pg_url)  # the staging and kept-aside schemas of this test's schema
    with psycopg.connect(pg_base_url(), autocommit=True) as conn:
        for (name,) in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                                    (schema + "\\_%",)).fetchall():
            conn.execute(f'DROP SCHEMA "{name}" CASCADE')


def _take_lease(store, holder: str, seconds: float) -> None:
    EngineLease(store, "e1", holder=holder, seconds=seconds, renew_seconds=seconds / 3).acquire()


def _log(url: str, n: int = 120, seed: int = 3) -> int:
    """A log with orders and fills, a checkpoint, a lease at epoch 2, a sealed chain and an unsealed
    tail after it, and a market-data bar; returns the trading head."""
    with tradestate.connect(url, clock=Clock()) as client:
        write_session(client, n, seed=seed)
        client.record_bar("XNAS", "AAPL", "1m", Clock()(), "1", "2", "0.5", "1.5", "100")
    with open_store(url, create=False) as store:
        _take_lease(store, "a", 0.03)
        time.sleep(0.06)  # expired: "b" takes it over at epoch 2
        _take_lease(store, "b", 30)
        checkpoints.write(store, state_at(store))
        alerts.ensure_cursor_table(store)
        alerts._save_cursor(store, "ops-hook", "https://hooks.example/x", 17, 3)  # a webhook delivered up to 17
        digest.seal(store)
    with tradestate.connect(url, clock=Clock()) as client:  # the unsealed tail
        write_session(client, 10, seed=seed + 1)
        return client.store.trading.head()


def _rows(url: str, table: str = "ts_events") -> list[tuple]:
    with open_store(url, create=False) as store:
        log = store.trading if table == "ts_events" else store.market
        return [(p, s, v, t, bytes(d), r) for p, s, v, t, d, r in log.iter_rows()]


def _chain(url: str) -> list[tuple]:
    with open_store(url, create=False) as store:
        db = digest._Backend(store)
        with db.read() as cur:
            cur.execute(f"SELECT log, range_start, range_end, event_count, scheme, previous_digest, digest, fingerprints"
                        f" FROM {db.name(digest.CHAIN_TABLE)} ORDER BY log, range_start")
            return [tuple(bytes(x) if isinstance(x, (bytes, memoryview)) else x for x in r) for r in cur.fetchall()]


def _summary(url: str) -> dict:
    with tradestate.connect(url, clock=Clock()) as client:
        return client.state.summary()


def _rebuild(store, progress):
    return Projector(store).rebuild(progress)


def _positions_rows(url: str) -> int:
    with open_store(url, create=False) as store:
        db = digest._Backend(store)
        with db.read() as cur:
            cur.execute(f"SELECT count(*) FROM {db.name('ts_positions')}")
            return cur.fetchone()[0]


def _target_tables(url: str) -> set[str]:
    with psycopg.connect(pg_base_url(), autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s",
                                           (schema_of(url),)).fetchall()}


def _staging_left(url: str) -> list[str]:
    with psycopg.connect(pg_base_url(), autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                                           (schema_of(url) + "\\_mg\\_%",)).fetchall()]


def test_sqlite_to_postgres_and_back(tmp_path, pg, monkeypatch):
    monkeypatch.setattr(mg, "PARALLEL_FROM", 20)  # the log's sealed prefix in two COPY streams, as a long one goes
    source = f"sqlite:///{tmp_path}/a.db"
    head = _log(source)
    before, rows, market, chain = _summary(source), _rows(source), _rows(source, "ts_market_events"), _chain(source)
    with open_store(source, create=False) as store:
        source_digest = digest.verify(store)
        assert source_digest.ok and 0 < source_digest.sealed_upto < head

    stages: set[str] = set()
    result = mg.migrate(source, pg, extra_drop=drop_read_models, read_models=_rebuild,
                        progress=lambda stage, done, total: stages.add(stage))
    assert result.ok and result.logs["ts_events"] == {"head": head, "rows": head}
    assert result.logs["ts_market_events"] == {"head": 1, "rows": 1}
    assert result.last_digest == source_digest.last_digest and result.unsealed_checked == head - source_digest.sealed_upto
    assert result.tables["ts_checkpoints"] == 1 and result.tables["ts_leases"] == 1 and result.tables["ts_alert_cursor"] == 1
    assert result.rebuilt["read_models"] == head and result.previous_saved_to is None
    assert {"copy ts_events", "verify", "rebuild read models"} <= stages
    assert not _staging_left(pg)

    # the same rows (recorded_at the same instant), the same chain, verified there
    assert _rows(pg) == rows and _rows(pg, "ts_market_events") == market and _chain(pg) == chain
    with open_store(pg, create=False) as store:
        check = digest.verify(store)
        assert check.ok and check.last_digest == source_digest.last_digest and check.sealed_upto == source_digest.sealed_upto
        assert digest.is_protected(store) and checkpoints.risk_index_exists(store) and result.rebuilt["risk_index"]
        loaded = checkpoints.load(store)
        assert loaded.checkpoint is not None and not loaded.rejected  # the checkpoint is valid there
        lease = Leases.of(store).get("e1")
        assert lease is not None and lease.epoch == 2 and lease.holder == "b"
        assert alerts.read_cursor_position(store, "ops-hook") == (17, 3)
    assert _positions_rows(pg) > 0  # the read models, rebuilt
    assert _summary(pg) == before

    # the client opens it and appends: positions go on gap-free from the head
    with tradestate.connect(pg, clock=Clock()) as client:
        client.set_risk_limit("acct-x", "max_order_qty", 10)
        assert client.position == head + 1
    with open_store(pg, create=False) as store:
        assert digest.seal(store).sealed_upto == head + 1 and digest.verify(store).ok

    # the way back, for a test environment
    back = f"sqlite:///{tmp_path}/b.db"
    result = mg.migrate(pg, back)
    assert result.logs["ts_events"]["head"] == head + 1 and result.unsealed_checked == 0
    assert _rows(back)[:head] == rows and set(chain) < set(_chain(back))  # and the range sealed on PostgreSQL
    with open_store(back, create=False) as store:
        assert digest.verify(store).ok and store.trading.head() == head + 1
        assert Leases.of(store).get("e1").epoch == 2 and alerts.read_cursor_position(store, "ops-hook") == (17, 3)
        assert digest.is_protected(store)
        loaded = checkpoints.load(store)
        assert loaded.checkpoint is not None and not loaded.rejected
    with tradestate.connect(back, clock=Clock()) as client:
        client.set_risk_limit("acct-x", "max_order_qty", 11)
        assert client.position == head + 2
    assert not [p for p in tmp_path.iterdir() if ".migrate-" in p.name]


def test_a_target_holding_a_log_is_refused_without_force(tmp_path, pg):
    source = f"sqlite:///{tmp_path}/a.db"
    head = _log(source, n=40)
    with tradestate.connect(pg, clock=Clock()) as client:  # the target's own log
        write_session(client, 20, seed=9)
    with open_store(pg, create=False) as store:  # the target's engine went further than the source's
        for holder in ("x", "y", "z"):
            _take_lease(store, holder, 0.03)
            time.sleep(0.06)
        theirs = store.trading.head()
    with pytest.raises(mg.MigrateRefused, match="--force"):
        mg.migrate(source, pg)
    with open_store(pg, create=False) as store:
        assert store.trading.head() == theirs  # untouched

    result = mg.migrate(source, pg, force=True)
    assert result.logs["ts_events"]["head"] == head and result.previous_saved_to
    assert result.rebuilt["epochs_carried"] == 1
    with open_store(pg, create=False) as store:
        assert store.trading.head() == head and digest.verify(store).ok
        lease = Leases.of(store).get("e1")
        assert lease.epoch == 3 and not lease.live  # never backwards; nobody holds it
    with psycopg.connect(pg_base_url(), autocommit=True) as conn:  # the replaced log, kept aside
        kept = conn.execute(f'SELECT count(*) FROM "{result.previous_saved_to}".ts_events').fetchone()[0]
    assert kept == theirs


def test_a_damaged_source_is_refused_and_the_target_untouched(tmp_path, pg):
    source = f"sqlite:///{tmp_path}/a.db"
    _log(source, n=40)
    with open_store(source, create=False) as store:
        fill = next(e for e in store.trading.read(limit=10_000) if e.topic == "OrderFilled")
        assert fill.position <= digest.verify(store).sealed_upto
        tamper(store, ("UPDATE ts_events SET data = %s WHERE position = %s",
                       (orjson.dumps(orjson.loads(fill.state) | {"price": "0.01"}), fill.position)))
    with pytest.raises(mg.MigrateDamaged, match=f"first bad position {fill.position}"):
        mg.migrate(source, pg)
    assert _target_tables(pg) == set() and not _staging_left(pg)

    # into SQLite too: the target file is not created
    with pytest.raises(mg.MigrateDamaged):
        mg.migrate(source, f"sqlite:///{tmp_path}/b.db")
    assert not (tmp_path / "b.db").exists() and not [p for p in tmp_path.iterdir() if ".migrate-" in p.name]


def _sealed_in_ranges(url: str, n: int, max_range: int) -> int:
    """A log of ``n`` sessions sealed in ranges of ``max_range`` events; returns the sealed head."""
    with tradestate.connect(url, clock=Clock()) as client:
        write_session(client, n, seed=5)
    with open_store(url, create=False) as store:
        return digest.seal(store, max_range=max_range).sealed_upto


def test_the_chain_is_verified_while_copying(tmp_path, pg, monkeypatch):
    """The trading log goes in committed segments of whole ranges, in two streams, and a trailing
    thread verifies each segment on the staging schema as it lands; the final verify checks the
    links and whatever is left."""
    monkeypatch.setattr(mg, "SEGMENT", 20)
    monkeypatch.setattr(mg, "PARALLEL_FROM", 20)
    source = f"sqlite:///{tmp_path}/a.db"
    sealed_upto = _sealed_in_ranges(source, 60, 10)
    assert sealed_upto > 60
    result = mg.migrate(source, pg)
    assert result.verified_while_copying == sealed_upto and result.verify["checked_events"] == sealed_upto
    assert result.tables["ts_events"] == sealed_upto and _rows(pg) == _rows(source)
    with psycopg.connect(pg_base_url(), autocommit=True) as conn:  # the unique constraint, made after the load
        assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = to_regclass(%s) AND contype = 'u'",
                            (f'"{schema_of(pg)}".ts_events',)).fetchone()[0] == 1
    with open_store(pg, create=False) as store:
        assert digest.verify(store).ok


def test_a_source_damaged_in_a_middle_segment_is_refused(tmp_path, pg, monkeypatch):
    """The trailing verification stops at the bad segment; the final verify names the position;
    the target is untouched."""
    monkeypatch.setattr(mg, "SEGMENT", 20)
    monkeypatch.setattr(mg, "PARALLEL_FROM", 20)
    source = f"sqlite:///{tmp_path}/a.db"
    sealed_upto = _sealed_in_ranges(source, 60, 10)
    bad = sealed_upto - 15  # in the last segment but one
    with open_store(source, create=False) as store:
        tamper(store, ("UPDATE ts_events SET data = %s WHERE position = %s", (b'{"x": 1}', bad)))
    with pytest.raises(mg.MigrateDamaged, match=f"first bad position {bad} "):
        mg.migrate(source, pg)
    assert _target_tables(pg) == set() and not _staging_left(pg)


@pytest.mark.parametrize("source_kind", ["postgresql", "sqlite"])
def test_the_source_is_copied_as_of_one_snapshot(tmp_path, pg, source_kind):
    """Writers may go on during a migration: the target gets the log as of the snapshot (one
    REPEATABLE READ transaction / one SQLite read transaction), and the result says how far the
    source moved on after it."""
    source, target = (pg, f"sqlite:///{tmp_path}/b.db") if source_kind == "postgresql" else (
        f"sqlite:///{tmp_path}/a.db", pg)
    head = _log(source, n=40)
    client = tradestate.connect(source, clock=Clock())
    appended = []

    def append_meanwhile(stage: str, done: int, total: int) -> None:
        if stage == "copy ts_events" and not appended:
            client.set_risk_limit("acct-x", "max_order_qty", 10)
            appended.append(client.position)

    try:
        result = mg.migrate(source, target, progress=append_meanwhile)
    finally:
        client.close()
    assert appended == [head + 1]
    assert result.logs["ts_events"]["head"] == head and result.source_moved_on == {"ts_events": 1}
    with open_store(target, create=False) as store:
        assert store.trading.head() == head and digest.verify(store).ok


def test_postgres_to_postgres_in_two_streams_of_one_snapshot(pg, monkeypatch):
    """A second COPY stream reads the same snapshot (pg_export_snapshot): rows appended meanwhile
    are in neither."""
    monkeypatch.setattr(mg, "PARALLEL_FROM", 20)
    head = _log(pg, n=60)
    rows = _rows(pg)
    other = with_schema(pg_base_url(), schema_of(pg) + "_other")  # dropped with the test's schemas
    with tradestate.connect(pg, clock=Clock()) as client:
        def append_meanwhile(stage: str, done: int, total: int) -> None:
            if stage == "copy ts_events" and client.position == head:
                client.set_risk_limit("acct-x", "max_order_qty", 10)

        result = mg.migrate(pg, other, progress=append_meanwhile)
    assert result.logs["ts_events"]["head"] == head and result.tables["ts_events"] == head
    assert _rows(other) == rows and result.source_moved_on == {"ts_events": 1}
    with open_store(other, create=False) as store:
        assert digest.verify(store).ok


def test_same_database_and_no_log_are_refused(tmp_path, pg):
    source = f"sqlite:///{tmp_path}/a.db"
    with pytest.raises(mg.MigrateRefused, match="does not exist"):
        mg.migrate(source, pg)
    _log(source, n=10)
    with pytest.raises(mg.MigrateRefused, match="same database"):
        mg.migrate(source, f"sqlite:///{tmp_path}/./a.db")


def test_payload_views(tmp_path, pg):
    for url in (pg, f"sqlite:///{tmp_path}/v.db"):
        with tradestate.connect(url, clock=Clock()) as client:
            assert client.record_intent("acct-1", "ord-77", "AAPL", "buy", "10", venue="sim", reference_price="187.25").accepted
        with open_store(url, create=False) as store, digest._Backend(store).read() as cur:
            name = store.dialect.name("ts_events_json")
            cur.execute(f"SELECT data->>'client_order_id', data->>'symbol' FROM {name} WHERE type = 'OrderIntentRecorded'")
            assert cur.fetchall() == [("ord-77", "AAPL")]
    # an existing store without the view gets it on its next open (CREATE OR REPLACE: idempotent)
    schema = schema_of(pg)
    with psycopg.connect(pg_base_url(), autocommit=True) as conn:
        conn.execute(f'DROP VIEW "{schema}".ts_events_json')
        conn.execute(f'DROP VIEW "{schema}".ts_market_events_json')
    open_store(pg).close()
    open_store(pg).close()
    with psycopg.connect(pg_base_url(), autocommit=True) as conn:
        assert conn.execute(f"SELECT data->>'client_order_id' FROM \"{schema}\".ts_events_json"
                            " WHERE type = 'OrderIntentRecorded'").fetchone() == ("ord-77",)
        assert conn.execute(f'SELECT count(*) FROM "{schema}".ts_market_events_json').fetchone() == (0,)


def test_cli(tmp_path, pg):
    source = f"sqlite:///{tmp_path}/a.db"
    head = _log(source, n=30)
    runner = CliRunner()
    out = runner.invoke(app, ["migrate", "--from", source, "--to", pg, "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["ok"] and doc["logs"]["ts_events"]["head"] == head and doc["rebuilt"]["read_models"] == head
    assert _positions_rows(pg) > 0
    again = runner.invoke(app, ["migrate", "--from", source, "--to", pg, "--json"])
    assert again.exit_code == 2 and "--force" in again.stderr
    forced = runner.invoke(app, ["migrate", "--from", source, "--to", pg, "--force"])
    assert forced.exit_code == 0, forced.output
    assert "migrated" in forced.stdout and "kept" in forced.stdout
