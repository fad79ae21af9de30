"""Column types of the SQL read models as BI tools see them: money sorts and aggregates as numbers
on SQLite, trading days are dates on PostgreSQL, and tables of an older shape are rebuilt."""

from __future__ import annotations

import sqlite3
import zlib
from datetime import date
from decimal import Decimal

import psycopg
import pytest
from tradestate.adapters.store import open_store
from tradestate.projections.projector import PROJECTION, Projector
from tradestate.projections.reader import ReadModel
from tradestate.projections.tables import SCHEMA_ROW, TABLES, TRACKING_TABLE

import tradestate

QTYS = ("92.40", "159.90", "152.40", "0.70")  # lexicographic order differs from numeric order
NUMERIC_DESC = [Decimal("159.9"), Decimal("152.4"), Decimal("92.4"), Decimal("0.7")]


def _trade(url: str) -> None:
    with tradestate.connect(url, venue="sim") as c:
        for i, qty in enumerate(QTYS):
            c.record_intent("bi", f"o-{i}", f"S{i}", "buy", qty, order_type="limit", limit_price="10")
            c.record_fill("bi", f"o-{i}", f"X-{i}", qty, "10")


def _project(url: str) -> int:
    with open_store(url) as store:
        return Projector(store).catch_up()


def test_money_columns_sort_and_aggregate_numerically_on_sqlite(sqlite_url):
    _trade(sqlite_url)
    _project(sqlite_url)
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        ordered = [Decimal(str(q)) for (q,) in conn.execute("SELECT qty FROM ts_positions ORDER BY qty DESC")]
        (biggest,) = conn.execute("SELECT MAX(qty) FROM ts_positions").fetchone()
        (above_100,) = conn.execute("SELECT COUNT(*) FROM ts_positions WHERE qty > 100").fetchone()
    assert ordered == NUMERIC_DESC
    assert Decimal(str(biggest)) == Decimal("159.9") and above_100 == 2
    # what the readers decode is still the exact decimal
    model = ReadModel(sqlite_url)
    try:
        assert sorted(p["qty"] for p in model.positions("bi")) == sorted(Decimal(q) for q in QTYS)
    finally:
        model.close()


def test_trading_day_is_a_date_on_postgresql(pg_url):
    _trade(pg_url)
    with tradestate.connect(pg_url, venue="sim") as c:
        c.set_risk_limit("bi", "max_daily_trades", 100)
        c.record_fill("bi", "o-0", "X-9", "1", "10")
    _project(pg_url)
    with open_store(pg_url) as store:
        schema = Projector(store).dialect.schema
    base = pg_url.split("?")[0]
    with psycopg.connect(base) as conn:
        types = dict(conn.execute(
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND column_name IN ('trading_day', 'qty', 'equity')", (schema,)).fetchall())
        (day,) = conn.execute(f'SELECT trading_day FROM "{schema}".ts_daily_stats').fetchone()
        (usage_day,) = conn.execute(
            f'SELECT trading_day FROM "{schema}".ts_risk_usage WHERE limit_name = %s', ("max_daily_trades",)).fetchone()
    assert types["ts_daily_stats.trading_day"] == "date" and types["ts_risk_usage.trading_day"] == "date"
    assert types["ts_positions.qty"] == "numeric" and types["ts_equity_curve.equity"] == "numeric"
    assert isinstance(day, date) and usage_day == day
    # the readers still give the day as YYYY-MM-DD text
    model = ReadModel(pg_url)
    try:
        assert [s["trading_day"] for s in model.daily_stats("bi")] == [day.isoformat()]
    finally:
        model.close()


def _old_ddl(conn: sqlite3.Connection) -> None:
    """The read models as an earlier version declared them: decimals and days as TEXT."""
    for table, (columns, key) in TABLES.items():
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        cols = ", ".join(f"{c} {'TEXT' if k in ('num', 'date', 'time', 'text', 'json') else 'INTEGER'}"
                         for c, k in columns)
        conn.execute(f"CREATE TABLE {table} ({cols}, PRIMARY KEY ({', '.join(key)}))")


def test_tables_of_the_old_shape_are_rebuilt_and_then_sort_numerically(sqlite_url):
    _trade(sqlite_url)
    head = _project(sqlite_url)
    path = sqlite_url.removeprefix("sqlite:///")
    old_tables = {t: ([(c, "text" if c == "trading_day" else k) for c, k in cols], key)
                  for t, (cols, key) in TABLES.items()}
    old_fingerprint = zlib.crc32(repr(sorted(old_tables.items())).encode())
    with sqlite3.connect(path) as conn:
        conn.execute("DROP VIEW IF EXISTS ts_open_orders")
        _old_ddl(conn)
        conn.executemany("INSERT INTO ts_positions (account, venue, symbol, qty, last_position) VALUES (?, ?, ?, ?, ?)",
                         [("bi", "sim", f"S{i}", q, head) for i, q in enumerate(QTYS)])
        conn.execute(f"UPDATE {TRACKING_TABLE} SET position = ? WHERE projection = ?", (old_fingerprint, SCHEMA_ROW))
        conn.execute(f"UPDATE {TRACKING_TABLE} SET position = ? WHERE projection = ?", (head, PROJECTION))
        before = [q for (q,) in conn.execute("SELECT qty FROM ts_positions ORDER BY qty DESC")]
    assert before == ["92.40", "159.90", "152.40", "0.70"]  # the text order the old shape gave

    assert _project(sqlite_url) == head  # the projector sees the old shape, drops it and folds the log again
    with sqlite3.connect(path) as conn:
        declared = {name: kind for _, name, kind, *_ in conn.execute("PRAGMA table_info(ts_positions)")}
        after = [Decimal(str(q)) for (q,) in conn.execute("SELECT qty FROM ts_positions ORDER BY qty DESC")]
    assert declared["qty"] == "NUMERIC"
    assert after == NUMERIC_DESC


@pytest.mark.parametrize("text", ["187.4666666666666666666666667", "0.000000000001", "12345678.123456"])
def test_what_sqlite_keeps_of_a_decimal(tmp_path, text):
    """NUMERIC keeps up to 15 significant digits exactly; a longer value becomes the nearest double."""
    with sqlite3.connect(tmp_path / "n.db") as conn:
        conn.execute("CREATE TABLE t (x NUMERIC)")
        conn.execute("INSERT INTO t VALUES (?)", (text,))
        (value,) = conn.execute("SELECT x FROM t").fetchone()
    digits = len(Decimal(text).normalize().as_tuple().digits)
    if digits <= 15:
        assert Decimal(repr(value)) == Decimal(text)
    else:
        assert Decimal(repr(value)) != Decimal(text) and abs(Decimal(repr(value)) - Decimal(text)) < Decimal("1e-12")
