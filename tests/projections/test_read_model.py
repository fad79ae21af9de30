"""The client's read-your-writes view of the SQL read models."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import threading
import time
from decimal import Decimal

import psycopg
import pytest
from tradestate.adapters.store import open_store
from tradestate.projections import queries
from tradestate.projections.projector import Projector
from tradestate.projections.reader import ProjectionBehind

import tradestate


def test_read_model_waits_for_the_clients_own_writes(db_url):
    client = tradestate.connect(db_url, venue="sim")
    client.set_risk_limit("rm", "max_position_qty", 100)
    client.record_intent("rm", "r-1", "AAPL", "buy", "10", reference_price="50")
    client.record_fill("rm", "r-1", "X-1", "4", "50.5")
    with pytest.raises(ProjectionBehind, match="tradestate project"):
        client.read_model(timeout=0.05)  # nobody projects yet: a clear error, not stale rows

    store = open_store(db_url)
    projector = Projector(store)
    stop = threading.Event()

    def follow() -> None:
        while not stop.is_set():
            if not projector.run_once():
                stop.wait(0.002)

    thread = threading.Thread(target=follow)
    thread.start()
    try:
        fill = client.record_fill("rm", "r-1", "X-2", "6", "51")
        with client.read_model(timeout=10) as model:
            assert model.position() >= fill.position
            [position] = model.positions("rm")
            assert position["qty"] == Decimal("10")
            assert position["avg_cost"] == (Decimal("4") * Decimal("50.5") + Decimal("6") * Decimal("51")) / 10
            assert model.order("rm", "r-1")["status"] == "filled"
            assert model.open_orders("rm") == []
            risk = model.risk_state("rm")
            assert [(u["limit_name"], u["used"]) for u in risk["limits"]] == [("max_position_qty", Decimal("10"))]
            with pytest.raises(tradestate.UnknownOrder):
                model.order("rm", "nope")
    finally:
        stop.set()
        thread.join()
        store.close()
        client.close()


def test_the_python_read_path_does_not_import_the_web_framework():
    code = ("import sys, tradestate.projections.reader, tradestate.projections.queries; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    # the probe can see the framework when it is imported (so the [] above means something)
    code = "import sys, tradestate.projections.http.app; print('fastapi' in sys.modules, 'starlette' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "True True"


@pytest.mark.parametrize(("stored", "text"), [
    (92.4, "92.4"), (159.9, "159.9"), (0.1, "0.1"), (1e-07, "0.0000001"), (1e22, "10000000000000000000000"),
    (-3.25, "-3.25"), (5, "5"), (0, "0"), (Decimal("1.50"), "1.50"), ("187.48", "187.48"), ("0.50", "0.50"),
    (None, None),
])
def test_decimals_decode_to_exact_text_whatever_the_column_returns(stored, text):
    assert queries._num(stored) == text


def test_numeric_affinity_columns_read_back_exact(tmp_path):
    """A SQLite column of NUMERIC affinity turns decimal text into REAL or INTEGER: the readers
    still answer the decimal the text meant."""
    path = tmp_path / "numeric.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (a NUMERIC, b NUMERIC, c NUMERIC)")
        conn.execute("INSERT INTO t VALUES ('92.40', '159.90', '7')")
    reader = queries.open_reader(f"sqlite:///{path}")
    with reader.read() as tx:
        row = tx.one("SELECT a, b, c FROM t")
    assert [type(v) for v in row] == [float, float, int]  # what SQLite hands back
    assert [queries._num(v) for v in row] == ["92.4", "159.9", "7"]
    assert [reader_typed("num", v) for v in row] == [Decimal("92.4"), Decimal("159.9"), Decimal("7")]


def reader_typed(kind, value):
    from tradestate.projections.reader import _typed

    return _typed(kind, value)


@pytest.mark.postgres
def test_postgres_reads_are_pooled_read_only_and_never_get_a_dead_connection(pg_url, pg_server):
    client = tradestate.connect(pg_url)
    client.record_signal("s", "AAPL", "long")
    client.close()
    url = pg_url + "&connect_timeout=1"
    reader = queries.PostgresReader(url, max_connections=1)
    try:
        with reader.read() as tx:
            first_pid = tx.one("SELECT pg_backend_pid()")[0]
            assert tx.one("SHOW transaction_read_only")[0] == "on"
            assert tx.one("SHOW transaction_isolation")[0] == "repeatable read"
            assert tx.one("SHOW TimeZone")[0] == "UTC"
        with reader.read() as tx:
            assert tx.one("SELECT pg_backend_pid()")[0] == first_pid  # kept for reuse
        # the server drops the idle connection: the next read gets a sound one, not an error
        with psycopg.connect(pg_server, autocommit=True) as admin:
            assert admin.execute("SELECT pg_terminate_backend(%s)", (first_pid,)).fetchone()[0]
        with reader.read() as tx:
            assert tx.one("SELECT pg_backend_pid()")[0] != first_pid
            assert queries.log_head(tx) == 1
        # nothing can be written through it
        with pytest.raises(queries.DatabaseUnavailable, match="read-only"):
            with reader.read() as tx:
                tx.rows(f'CREATE TABLE {tx.dialect.name("nope")} (x int)')
        # bounded: with its one connection busy, another read waits connect_timeout, then says why
        release, started = threading.Event(), threading.Event()

        def hold() -> None:
            with reader.read():
                started.set()
                release.wait(10)

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            assert started.wait(10)
            t0 = time.monotonic()
            with pytest.raises(queries.DatabaseUnavailable, match="too many concurrent requests"):
                with reader.read():
                    pass
            assert 0.9 < time.monotonic() - t0 < 5
        finally:
            release.set()
            holder.join()
    finally:
        reader.close()


def test_an_unreachable_postgres_is_a_one_line_error_within_the_connect_timeout():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reader = queries.open_reader(f"postgresql://postgres@127.0.0.1:{port}/test?connect_timeout=1")
    try:
        t0 = time.monotonic()
        with pytest.raises(queries.DatabaseUnavailable) as caught:
            with reader.read():
                pass
        assert time.monotonic() - t0 < 5
        message = str(caught.value)
        assert f"cannot connect to PostgreSQL at 127.0.0.1:{port}/test" in message and "\n" not in message
    finally:
        reader.close()
