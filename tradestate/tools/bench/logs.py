"""Generated trading logs and the raw reads every replay-like group measures against.

``generate_trading_rows`` makes a realistic order flow; ``load_sqlite_log`` / ``load_pg_log`` put
it into a fresh log of our store by the fastest raw path; the ``raw_*`` readers read the same
table back with plain SQL (or COPY) and ``orjson.loads`` every payload: the floor for any replay.
Each reader returns ``(rows read, seconds)``.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
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
# The open state a generated log ends with (in full from 100k events on): OPEN_ORDERS limit orders
# acknowledged and not filled (about one in four partially filled) at its end, and OPEN_POSITIONS
# positions: the main flow's 20 symbols x 4 accounts, plus one filled order at its start for each
# of as many other (symbol, account) pairs as it takes. A warm open of a long log then has an open
# state to hold, and memory figures say whether it holds that or the history.
OPEN_ORDERS = 1_000
OPEN_POSITIONS = 500
_EXTRA_POSITIONS = OPEN_POSITIONS - len(SYMBOLS) * len(ACCOUNTS)
MIN_EVENTS = 1_000  # the smallest generated log (its open state: 10 orders, 5 more positions)


def open_state_size(n: int) -> tuple[int, int]:
    """(open orders at the end, positions opened at the start) of a generated log of ``n`` events:
    (1,000, 420) from 100k events on, proportionally fewer below (1,000 events: 10 and 5)."""
    return min(OPEN_ORDERS, max(10, n // 100)), min(_EXTRA_POSITIONS, max(4, n // 200))


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
    """``n`` log rows (position 1..n) of a realistic order flow, the same for the same ``n`` and
    ``seed``: per order an intent, its risk check in the account stream, submitted, acknowledged
    and one or two fills, across 20 symbols, 4 accounts and 3 strategies. It starts with one filled
    order per extra (symbol, account) position and ends with the open orders of
    ``open_state_size(n)`` (intent, risk check, submitted, acknowledged, some a partial fill); every
    order in between is complete. Payloads are exactly what ``Event.to_payload()`` + orjson give."""
    from ...domain.ids import account_stream_id, order_stream_id

    if n < MIN_EVENTS:
        raise ValueError(f"a generated trading log has at least {MIN_EVENTS} events (got {n})")
    rnd = random.Random(seed)
    side_rnd = random.Random(seed + 1)  # the open state's own draws: the main flow's stay as they were
    t = _templates()
    dumps = orjson.dumps
    id_prefix = str(uuid.UUID(int=rnd.getrandbits(128), version=4))[:24]  # 8-4-4-4- of a v4 uuid
    t0 = datetime(2026, 11, 16, 14, 30, tzinfo=timezone.utc)
    step = timedelta(milliseconds=37)
    account_versions = dict.fromkeys(ACCOUNTS, 0)
    open_orders, extra_positions = open_state_size(n)
    # The open orders take 4 events each plus one partial fill for a quarter of them; the main
    # flow stops at the last whole order that leaves room, and the room left over (at most one
    # order's 6 events) becomes more partial fills.
    tail_base = 4 * open_orders + open_orders // 4
    position = 0

    def plan_order(account: str, coid: str, symbol: str, side: str, qty: int, price: float, is_limit: bool,
                   strategy: str, fills: list[int], acked: bool = True, fill_rnd: random.Random = rnd,
                   ) -> list[tuple[str, int, str, dict[str, Any]]]:
        stream = order_stream_id(account, coid)
        intent_id = f"{id_prefix}{position + 1:012x}"
        px = f"{price:.2f}"
        venue_order_id = "v" + coid[1:]
        plan: list[tuple[str, int, str, dict[str, Any]]] = []
        d = dict(t["limit"] if is_limit else t["market"])
        d.update(account=account, client_order_id=coid, symbol=symbol, side=side, qty=str(qty),
                 strategy_id=strategy, correlation_id=intent_id)
        if is_limit:
            d["limit_price"] = px
        else:
            d["reference_price"] = px
        plan.append((stream, 1, "OrderIntentRecorded", d))
        account_versions[account] += 1
        d = dict(t["RiskCheckPassed"])
        d.update(account=account, client_order_id=coid, symbol=symbol, side=side, qty=str(qty),
                 notional=f"{qty * price:.2f}", correlation_id=intent_id, causation_id=intent_id)
        plan.append((account_stream_id(account), account_versions[account], "RiskCheckPassed", d))
        d = dict(t["OrderSubmitted"])
        d.update(account=account, client_order_id=coid, correlation_id=intent_id)
        plan.append((stream, 2, "OrderSubmitted", d))
        d = dict(t["OrderAcknowledged"])
        d.update(account=account, client_order_id=coid, correlation_id=intent_id, venue_order_id=venue_order_id)
        plan.append((stream, 3, "OrderAcknowledged", d))
        for i, fq in enumerate(fills, 1):
            d = dict(t["OrderFilled"])
            fill_px = f"{price * (1 + fill_rnd.uniform(-0.0005, 0.0005)):.2f}"
            d.update(account=account, client_order_id=coid, correlation_id=intent_id, exec_id=f"x{coid[1:]}-{i}",
                     qty=str(fq), price=fill_px, fee=f"{fq * 0.0035:.4f}", venue_order_id=venue_order_id,
                     liquidity="maker" if is_limit else "taker")
            plan.append((stream, 3 + i, "OrderFilled", d))
        return plan

    def emit(plan: list[tuple[str, int, str, dict[str, Any]]]) -> Iterator[tuple[int, str, int, str, bytes, datetime]]:
        nonlocal position
        for stream_id, version, type_name, payload in plan:
            position += 1
            at = t0 + step * position
            payload["event_id"] = f"{id_prefix}{position:012x}"
            payload["occurred_at"] = at.isoformat().replace("+00:00", "Z")
            if type_name == "RiskCheckPassed":
                payload["trading_day"] = at.astimezone(_EXCHANGE_TZ).date().isoformat()
            yield position, stream_id, version, type_name, dumps(payload), at

    # positions beyond the main flow's: one small filled order each, on symbols of their own
    for j in range(extra_positions):
        account = ACCOUNTS[j % len(ACCOUNTS)]
        symbol, base = f"X{j // len(ACCOUNTS):03d}", 20.0 + j // len(ACCOUNTS)
        qty = side_rnd.randrange(1, 50) * 10
        yield from emit(plan_order(account, f"p{j:09d}", symbol, "buy", qty, base, True, _STRATEGIES[j % 3], [qty],
                                   fill_rnd=side_rnd))

    k = 0
    while True:
        k += 1
        account = ACCOUNTS[k % len(ACCOUNTS)]
        symbol, base = SYMBOLS[rnd.randrange(len(SYMBOLS))]
        side = "buy" if rnd.random() < 0.52 else "sell"
        qty = rnd.randrange(1, 50) * 10
        price = base * (1 + rnd.uniform(-0.01, 0.01))
        is_limit = rnd.random() < 0.8
        fills = 1 if rnd.random() < 0.7 else 2
        per_fill = [qty] if fills == 1 else [qty // 2, qty - qty // 2]
        if position + 4 + fills > n - tail_base:
            break  # this order does not fit: nothing of it is emitted
        yield from emit(plan_order(account, f"c{k:09d}", symbol, side, qty, price, is_limit, _STRATEGIES[k % 3],
                                   per_fill))

    # the open orders: acknowledged limit orders, the first ``partial`` of them partially filled
    partial = n - position - 4 * open_orders
    for j in range(open_orders):
        account = ACCOUNTS[j % len(ACCOUNTS)]
        symbol, base = SYMBOLS[side_rnd.randrange(len(SYMBOLS))]
        side = "buy" if side_rnd.random() < 0.5 else "sell"
        qty = side_rnd.randrange(2, 50) * 10
        # away from the market, as resting orders are
        price = base * (1 - 0.02 * side_rnd.random() if side == "buy" else 1 + 0.02 * side_rnd.random())
        fills = [qty // 2] if j < partial else []
        yield from emit(plan_order(account, f"o{j:09d}", symbol, side, qty, price, True, _STRATEGIES[j % 3], fills,
                                   fill_rnd=side_rnd))
    assert position == n, (position, n)


_CHUNK = 5_000


def _generate_into(n: int, iso_times: bool, out: Any) -> None:
    """In a child process: ``generate_trading_rows(n)`` sent through ``out`` in lists of ``_CHUNK``
    rows (``recorded_at`` as ISO text with ``iso_times``, as SQLite stores it), then None."""
    chunk: list[tuple[Any, ...]] = []
    for p, s, v, t, d, r in generate_trading_rows(n):
        chunk.append((p, s, v, t, d, r.isoformat() if iso_times else r))
        if len(chunk) == _CHUNK:
            out.send(chunk)
            chunk = []
    out.send(chunk)
    out.send(None)
    out.close()


def generated_rows(n: int, *, iso_times: bool = False, in_child: bool = True) -> Iterator[tuple[Any, ...]]:
    """``generate_trading_rows(n)`` (``recorded_at`` as ISO text with ``iso_times``), generated in a
    second process with ``in_child`` so that generating and inserting use two cores."""
    if not in_child:
        for p, s, v, t, d, r in generate_trading_rows(n):
            yield p, s, v, t, d, (r.isoformat() if iso_times else r)
        return
    from .common import mp_context

    ctx = mp_context()
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_generate_into, args=(n, iso_times, send), name="bench-generate-log")
    child.start()
    send.close()
    try:
        while (chunk := receive.recv()) is not None:
            yield from chunk
    except EOFError:
        raise RuntimeError(f"the log generator process died (exit code {child.exitcode})") from None
    finally:
        receive.close()
        child.join(timeout=5)
        if child.is_alive():
            child.kill()
            child.join()


def load_pg_log(pg: PgTarget, schema: str, n: int) -> float:
    """A fresh log in ``schema`` holding ``n`` generated trading events, by binary COPY; returns
    the seconds it took (generation, COPY, VACUUM ANALYZE and CHECKPOINT)."""
    from ...adapters.store import open_store

    t0 = time.perf_counter()
    open_store(pg.url_for(schema)).close()
    table = f'"{schema}".ts_events'
    with pg.connect() as conn:
        with conn.transaction(), conn.cursor() as cur, cur.copy(
            f"COPY {table} (position, stream_id, stream_version, type, data, recorded_at) FROM STDIN (FORMAT BINARY)"
        ) as cp:
            cp.set_types(["int8", "text", "int8", "text", "bytea", "timestamptz"])
            for row in generated_rows(n):
                cp.write_row(row)
        conn.execute(f"SELECT setval('\"{schema}\".ts_events_position_seq', %s)", (n,))
        _settle_pg(conn, table)
    _index_log(pg.url_for(schema))
    return time.perf_counter() - t0


def _settle_pg(conn: Any, table: str) -> None:
    import psycopg.errors

    conn.execute(f"VACUUM (ANALYZE) {table}")  # hint bits set once, for every reader alike
    try:  # the load's dirty pages are written now, not by a checkpoint in the middle of a measurement
        conn.execute("CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        pass


def copy_pg_log(pg: PgTarget, source: str, schema: str, n: int) -> float:
    """A fresh log in ``schema`` with the rows of the log in schema ``source`` (``n`` events),
    copied inside the server (``INSERT ... SELECT``); returns the seconds it took."""
    from ...adapters.store import open_store

    t0 = time.perf_counter()
    open_store(pg.url_for(schema)).close()
    table = f'"{schema}".ts_events'
    with pg.connect() as conn:
        conn.execute(f"INSERT INTO {table} ({_COLUMNS}) SELECT {_COLUMNS} FROM \"{source}\".ts_events")
        conn.execute(f"SELECT setval('\"{schema}\".ts_events_position_seq', %s)", (n,))
        _settle_pg(conn, table)
    _index_log(pg.url_for(schema))
    return time.perf_counter() - t0


def load_sqlite_log(path: str, n: int, *, bulk: bool = True) -> float:
    """A fresh SQLite log at ``path`` holding ``n`` generated trading events (one executemany
    transaction); returns the seconds it took. ``bulk``: written as a fresh file is best written
    (no WAL, which would hold the whole transaction and then be copied into the file: every page
    written twice; a 1 GB page cache for the random inserts into the stream index; one fsync at
    the end), then put back in WAL mode, as the store runs."""
    from ...adapters.store import open_store

    t0 = time.perf_counter()
    open_store(f"sqlite:///{path}").close()
    conn = sqlite_raw_conn(path)
    if bulk:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-1000000")
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO ts_events (position, stream_id, stream_version, type, data, recorded_at) VALUES (?,?,?,?,?,?)",
        generated_rows(n, iso_times=True),
    )
    conn.execute("COMMIT")
    if bulk:
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA journal_mode=WAL")
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # the one fsync synchronous=OFF left out
        finally:
            os.close(fd)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # readers then see one file, no WAL to search
    conn.close()
    _index_log(f"sqlite:///{path}")
    return time.perf_counter() - t0


def _index_log(url: str) -> None:
    """The log's risk-event index, as ``tradestate replay index`` builds it on a long existing log
    (a log that grew through the store has it from its first checkpoint)."""
    from ...adapters.store import checkpoints, open_store

    with open_store(url, create=False) as store:
        checkpoints.create_risk_index(store)


class TradingLogs:
    """The run's generated trading logs: one per backend and size, loaded the first time a group
    asks for it and shared by every group after (``sqlite`` / ``pg``: a path / a schema to read,
    never to write). A group that writes into its log (checkpoints, the digest chain, read-model
    tables) asks for a private copy instead (``sqlite_copy`` / ``pg_copy``: a file copy, or an
    ``INSERT ... SELECT`` inside the server), and may ``discard`` it when done. ``seconds`` holds
    how long each load and copy took, for the report."""

    def __init__(self, workdir: str, pg: PgTarget | None, schema_for: Callable[[str], str]):
        self.workdir = workdir
        self.pg_target = pg
        self.schema_for = schema_for
        self._sqlite: dict[int, str] = {}
        self._pg: dict[int, str] = {}
        self._copies: dict[int, list[tuple[str, str]]] = {}  # n -> (backend, path or schema)
        self.seconds: dict[str, float] = {}  # "sqlite load 1,000,000" -> seconds

    def _note(self, what: str, seconds: float, extra: str = "") -> None:
        self.seconds[what] = seconds
        log(f"  {what}: {seconds:.1f} s{extra}")

    def sqlite(self, n: int) -> str:
        """The path of the shared SQLite log of ``n`` events (loaded on first use). Read only."""
        if n not in self._sqlite:
            path = os.path.join(self.workdir, f"log_{n}.db")
            log(f"sqlite: generating and loading the shared log of {n:,} events")
            seconds = load_sqlite_log(path, n)
            self._note(f"sqlite load {n:,}", seconds, f" ({os.path.getsize(path) / 1e6:,.0f} MB, "
                                                      f"{n / seconds:,.0f} events/s)")
            self._sqlite[n] = path
        return self._sqlite[n]

    def sqlite_copy(self, n: int, name: str) -> str:
        """A private copy of the shared SQLite log of ``n`` events, at ``<workdir>/<name>_<n>.db``."""
        source = self.sqlite(n)
        path = os.path.join(self.workdir, f"{name}_{n}.db")
        t0 = time.perf_counter()
        shutil.copyfile(source, path)
        self._note(f"sqlite copy {n:,} for {name}", time.perf_counter() - t0)
        self._copies.setdefault(n, []).append(("sqlite", path))
        return path

    def pg(self, n: int) -> str:
        """The schema of the shared PostgreSQL log of ``n`` events (loaded on first use). Read only."""
        if self.pg_target is None:
            raise RuntimeError("no PostgreSQL target in this run")
        if n not in self._pg:
            schema = self.schema_for(f"log{n}")
            log(f"postgresql: generating and loading the shared log of {n:,} events (binary COPY)")
            seconds = load_pg_log(self.pg_target, schema, n)
            self._note(f"postgresql load {n:,}", seconds, f" ({n / seconds:,.0f} events/s)")
            self._pg[n] = schema
        return self._pg[n]

    def pg_copy(self, n: int, suffix: str) -> str:
        """The schema of a private copy of the shared PostgreSQL log of ``n`` events."""
        source = self.pg(n)
        assert self.pg_target is not None
        schema = self.schema_for(f"{suffix}{n}")
        seconds = copy_pg_log(self.pg_target, source, schema, n)
        self._note(f"postgresql copy {n:,} for {suffix}", seconds)
        self._copies.setdefault(n, []).append(("postgresql", schema))
        return schema

    def discard(self, n: int, backend: str, where: str) -> None:
        """Remove a copy made by ``sqlite_copy`` / ``pg_copy`` (its file, or its schema)."""
        self._drop(backend, where)
        copies = self._copies.get(n, [])
        if (backend, where) in copies:
            copies.remove((backend, where))

    def release(self, n: int) -> None:
        """Remove every log of ``n`` events, shared and copied (a scaling run frees the disk of
        one size before loading the next)."""
        for backend, where in self._copies.pop(n, []):
            self._drop(backend, where)
        if n in self._sqlite:
            self._drop("sqlite", self._sqlite.pop(n))
        if n in self._pg:
            self._drop("postgresql", self._pg.pop(n))

    def _drop(self, backend: str, where: str) -> None:
        if backend == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(where + suffix)
        elif self.pg_target is not None:
            with self.pg_target.connect() as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{where}" CASCADE')


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
