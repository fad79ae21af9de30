"""Generated trading logs and the raw reads every replay-like group measures against.

``generate_trading_rows`` makes a realistic order flow; ``load_sqlite_log`` / ``load_pg_log`` put
it into a fresh log of our store by the fastest raw path; the ``raw_*`` readers read the same
table back with plain SQL (or COPY) and ``orjson.loads`` every payload: the floor for any replay.
Each reader returns ``(rows read, seconds)``.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from .common import PgTarget, log, sqlite_raw_conn

SYMBOLS = (
    ("AAPL", 187.25), ("MSFT", 411.10), ("NVDA", 121.40), ("AMZN", 178.90), ("GOOGL", 165.30),
    ("META", 498.75), ("TSLA", 242.15), ("AMD", 158.60), ("NFLX", 642.20), ("AVGO", 1391.00),
    ("JPM", 201.45), ("V", 276.80), ("XOM", 118.25), ("UNH", 521.30), ("COST", 861.10),
    ("SPY", 548.20), ("QQQ", 474.35), ("IWM", 204.60), ("TLT", 93.15), ("GLD", 215.40),
)  # fmt: skip
ACCOUNTS = ("acct-alpha", "acct-beta", "acct-gamma", "acct-delta")
_STRATEGIES = ("mean-revert", "momentum", "pairs")
_EXCHANGE_TZ = ZoneInfo("America/New_York")


def _templates() -> dict[str, dict[str, Any]]:
    """One payload per event type, made by the domain models themselves (key order, ``_v``)."""
    from ...domain import events as ev

    at = datetime(2026, 11, 20, 14, 31, 5, 123456, tzinfo=timezone.utc)
    eid = uuid.UUID("5f0c8a52-2f6e-4c1b-9a43-0d7e9b1c2a11")
    common = {"event_id": eid, "occurred_at": at, "correlation_id": eid, "account": "acct-alpha",
              "client_order_id": "c000000001"}
    return {
        "limit": ev.OrderIntentRecorded(**common, venue="sim", symbol="AAPL", side="buy", order_type="limit",
                                        qty=Decimal(100), limit_price=Decimal("187.25"), strategy_id="momentum").to_payload(),
        "market": ev.OrderIntentRecorded(**common, venue="sim", symbol="AAPL", side="buy", order_type="market",
                                         qty=Decimal(100), reference_price=Decimal("187.25"),
                                         strategy_id="momentum").to_payload(),
        "RiskCheckPassed": ev.RiskCheckPassed(**{**common, "causation_id": eid}, symbol="AAPL", side="buy",
                                              qty=Decimal(100), notional=Decimal("18725.00"),
                                              trading_day="2026-11-20").to_payload(),
        "OrderSubmitted": ev.OrderSubmitted(**common).to_payload(),
        "OrderAcknowledged": ev.OrderAcknowledged(**common, venue_order_id="v000000001").to_payload(),
        "OrderFilled": ev.OrderFilled(**common, exec_id="x000000001-1", qty=Decimal(100), price=Decimal("187.25"),
                                      fee=Decimal("0.35"), liquidity="taker", venue_order_id="v000000001").to_payload(),
    }


def generate_trading_rows(n: int, seed: int = 7) -> Iterator[tuple[int, str, int, str, bytes, datetime]]:
    """``n`` log rows (position 1..n) of a realistic order flow: per order an intent, its risk
    check in the account stream, submitted, acknowledged and one or two fills, across 20 symbols,
    4 accounts and 3 strategies. Payloads are exactly what ``Event.to_payload()`` + orjson give."""
    from ...domain.ids import account_stream_id, order_stream_id

    rnd = random.Random(seed)
    t = _templates()
    dumps = orjson.dumps
    id_prefix = str(uuid.UUID(int=rnd.getrandbits(128), version=4))[:24]  # 8-4-4-4- of a v4 uuid
    t0 = datetime(2026, 11, 16, 14, 30, tzinfo=timezone.utc)
    step = timedelta(milliseconds=37)
    account_versions = dict.fromkeys(ACCOUNTS, 0)
    position = 0
    k = 0
    while True:
        k += 1
        account = ACCOUNTS[k % len(ACCOUNTS)]
        symbol, base = SYMBOLS[rnd.randrange(len(SYMBOLS))]
        side = "buy" if rnd.random() < 0.52 else "sell"
        qty = rnd.randrange(1, 50) * 10
        price = base * (1 + rnd.uniform(-0.01, 0.01))
        coid = f"c{k:09d}"
        stream = order_stream_id(account, coid)
        acct_stream = account_stream_id(account)
        intent_id = f"{id_prefix}{position + 1:012x}"
        is_limit = rnd.random() < 0.8
        px = f"{price:.2f}"
        fills = 1 if rnd.random() < 0.7 else 2
        per_fill = [qty] if fills == 1 else [qty // 2, qty - qty // 2]
        venue_order_id = f"v{k:09d}"
        plan: list[tuple[str, int, str, dict[str, Any]]] = []

        d = dict(t["limit"] if is_limit else t["market"])
        d.update(account=account, client_order_id=coid, symbol=symbol, side=side, qty=str(qty),
                 strategy_id=_STRATEGIES[k % 3], correlation_id=intent_id)
        if is_limit:
            d["limit_price"] = px
        else:
            d["reference_price"] = px
        plan.append((stream, 1, "OrderIntentRecorded", d))

        account_versions[account] += 1
        d = dict(t["RiskCheckPassed"])
        d.update(account=account, client_order_id=coid, symbol=symbol, side=side, qty=str(qty),
                 notional=f"{qty * price:.2f}", correlation_id=intent_id, causation_id=intent_id)
        plan.append((acct_stream, account_versions[account], "RiskCheckPassed", d))

        d = dict(t["OrderSubmitted"])
        d.update(account=account, client_order_id=coid, correlation_id=intent_id)
        plan.append((stream, 2, "OrderSubmitted", d))

        d = dict(t["OrderAcknowledged"])
        d.update(account=account, client_order_id=coid, correlation_id=intent_id, venue_order_id=venue_order_id)
        plan.append((stream, 3, "OrderAcknowledged", d))

        for i, fq in enumerate(per_fill, 1):
            d = dict(t["OrderFilled"])
            fill_px = f"{price * (1 + rnd.uniform(-0.0005, 0.0005)):.2f}"
            d.update(account=account, client_order_id=coid, correlation_id=intent_id, exec_id=f"x{k:09d}-{i}",
                     qty=str(fq), price=fill_px, fee=f"{fq * 0.0035:.4f}", venue_order_id=venue_order_id,
                     liquidity="maker" if is_limit else "taker")
            plan.append((stream, 3 + i, "OrderFilled", d))

        for stream_id, version, type_name, payload in plan:
            position += 1
            at = t0 + step * position
            iso = at.isoformat().replace("+00:00", "Z")
            payload["event_id"] = f"{id_prefix}{position:012x}"
            payload["occurred_at"] = iso
            if type_name == "RiskCheckPassed":
                payload["trading_day"] = at.astimezone(_EXCHANGE_TZ).date().isoformat()
            yield position, stream_id, version, type_name, dumps(payload), at
            if position >= n:
                return


def load_pg_log(pg: PgTarget, schema: str, n: int) -> None:
    """A fresh log in ``schema`` holding ``n`` generated trading events, by binary COPY."""
    import psycopg.errors

    from ...adapters.store import open_store

    open_store(pg.url_for(schema)).close()
    table = f'"{schema}".ts_events'
    with pg.connect() as conn:
        with conn.transaction(), conn.cursor() as cur, cur.copy(
            f"COPY {table} (position, stream_id, stream_version, type, data, recorded_at) FROM STDIN (FORMAT BINARY)"
        ) as cp:
            cp.set_types(["int8", "text", "int8", "text", "bytea", "timestamptz"])
            for row in generate_trading_rows(n):
                cp.write_row(row)
        conn.execute(f"SELECT setval('\"{schema}\".ts_events_position_seq', %s)", (n,))
        conn.execute(f"VACUUM (ANALYZE) {table}")  # hint bits set once, for every reader alike
        try:  # the load's dirty pages are written now, not by a checkpoint in the middle of a measurement
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            pass


def load_sqlite_log(path: str, n: int) -> None:
    """A fresh SQLite log at ``path`` holding ``n`` generated trading events."""
    from ...adapters.store import open_store

    open_store(f"sqlite:///{path}").close()
    t0 = time.perf_counter()
    conn = sqlite_raw_conn(path)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO ts_events (position, stream_id, stream_version, type, data, recorded_at) VALUES (?,?,?,?,?,?)",
        ((p, s, v, t, d, r.isoformat()) for p, s, v, t, d, r in generate_trading_rows(n)),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # readers then see one file, no WAL to search
    conn.close()
    log(f"  loaded in {time.perf_counter() - t0:.1f} s ({os.path.getsize(path) / 1e6:,.0f} MB)")


# ------------------------------------------------------------------------------ raw reads


def raw_sqlite_cursor(path: str, page: int) -> tuple[int, float]:
    """Read every row of the log and orjson.loads its payload from the SQLite file at ``path`` with one
    cursor, ``page`` rows per fetch; returns (rows read, seconds)."""
    conn = sqlite3.connect(path)
    loads = orjson.loads
    count = 0
    t0 = time.perf_counter()
    cur = conn.execute("SELECT position, stream_id, stream_version, type, data, recorded_at FROM ts_events ORDER BY position")
    while rows := cur.fetchmany(page):
        for row in rows:
            loads(row[4])
        count += len(rows)
    elapsed = time.perf_counter() - t0
    conn.close()
    return count, elapsed


def raw_sqlite_keyset(path: str, page: int) -> tuple[int, float]:
    """Read every row of the log and orjson.loads its payload from the SQLite file at ``path`` by keyset
    pages of ``page`` rows; returns (rows read, seconds)."""
    conn = sqlite3.connect(path)
    loads = orjson.loads
    sql = ("SELECT position, stream_id, stream_version, type, data, recorded_at FROM ts_events "
           "WHERE position > ? ORDER BY position LIMIT ?")
    count, after = 0, 0
    t0 = time.perf_counter()
    while rows := conn.execute(sql, (after, page)).fetchall():
        for row in rows:
            loads(row[4])
        count += len(rows)
        after = rows[-1][0]
    elapsed = time.perf_counter() - t0
    conn.close()
    return count, elapsed


_COLUMNS = "position, stream_id, stream_version, type, data, recorded_at"


def raw_pg_keyset(pg: PgTarget, table: str, page: int, binary: bool = False) -> tuple[int, float]:
    """Read every row of the log and orjson.loads its payload of PostgreSQL ``table`` by keyset pages of
    ``page`` rows (binary results with ``binary``); returns (rows read, seconds)."""
    from psycopg.rows import tuple_row

    loads = orjson.loads
    sql = f"SELECT {_COLUMNS} FROM {table} WHERE position > %s ORDER BY position LIMIT %s"
    count, after = 0, 0
    with pg.connect() as conn:
        cur = conn.cursor(row_factory=tuple_row, binary=binary)
        t0 = time.perf_counter()
        while rows := cur.execute(sql, (after, page), prepare=True).fetchall():
            for row in rows:
                loads(row[4])
            count += len(rows)
            after = rows[-1][0]
        elapsed = time.perf_counter() - t0
    return count, elapsed


def raw_pg_server_cursor(pg: PgTarget, table: str, page: int, binary: bool = False) -> tuple[int, float]:
    """Read every row of the log and orjson.loads its payload of PostgreSQL ``table`` through a
    server-side cursor, ``page`` rows per fetch; returns (rows read, seconds)."""
    from psycopg.rows import tuple_row

    loads = orjson.loads
    count = 0
    with pg.connect() as conn:
        t0 = time.perf_counter()
        with conn.transaction(), conn.cursor("bench_replay", row_factory=tuple_row, binary=binary) as cur:
            cur.itersize = page
            cur.execute(f"SELECT {_COLUMNS} FROM {table} ORDER BY position")
            while rows := cur.fetchmany(page):
                for row in rows:
                    loads(row[4])
                count += len(rows)
        elapsed = time.perf_counter() - t0
    return count, elapsed


def raw_pg_copy(pg: PgTarget, table: str) -> tuple[int, float]:
    """Read every row of the log and orjson.loads its payload of PostgreSQL ``table`` through one binary
    ``COPY ... TO STDOUT``; returns (rows read, seconds)."""
    loads = orjson.loads
    count = 0
    with pg.connect() as conn:
        t0 = time.perf_counter()
        with conn.cursor() as cur, cur.copy(f"COPY (SELECT {_COLUMNS} FROM {table} ORDER BY position) TO STDOUT (FORMAT BINARY)") as cp:
            cp.set_types(["int8", "text", "int8", "text", "bytea", "timestamptz"])
            for row in cp.rows():
                loads(row[4])
                count += 1
        elapsed = time.perf_counter() - t0
    return count, elapsed
