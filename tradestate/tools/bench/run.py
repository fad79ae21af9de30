"""``tradestate bench``: our store against raw baselines measured in the same run, on the same box.

Three groups of metrics, each on SQLite (files in a temporary directory) and PostgreSQL (a fresh
``bench_<random>_*`` schema per measurement, dropped at the end):

``append``  durable single-event appends through ``EventLog.append`` (one new stream per event),
            rate and p50/p99 latency, against raw single-row INSERT commits of the same row shape
            (same columns, same unique constraint, integer/bigserial primary key) with the same
            number of writers: 1 writer on both backends, 8 writer processes on PostgreSQL. The
            ``eventsourcing`` library's default PostgreSQL recorder (LOCK TABLE + NOTIFY) is
            reported as an extra, informative baseline.
``batch``   100 events per append (one transaction each) against one COPY FROM STDIN
            (PostgreSQL) / one executemany transaction (SQLite) of the whole set of rows.
``replay``  positions folded from N realistic trading events through ``iter_rows`` and the
            ``PositionBook`` projection (which decodes only intents and fills: the ``type``
            column says which rows matter) against a raw read + ``orjson.loads`` of every row of
            the same table (the faster of several raw read strategies), ``COPY ... TO STDOUT`` on
            PostgreSQL, and an
            ``eventsourcing`` application (default mapper and JSON transcoder) reading back the
            same number of fill events with ``select_notifications`` + ``to_domain_event`` and
            folding them into positions. ``replay_full_state`` is the whole ``TradingState``
            (orders, positions, risk, signals) folded from the same rows, as a client opens.

Every ratio is ours / baseline (for latencies, lower is better). Progress goes to stderr; with
``--json`` stdout carries only ``{"results": [...]}``.
"""

from __future__ import annotations

import gc
import json
import multiprocessing as mp
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlparse, urlunparse
from zoneinfo import ZoneInfo

import orjson
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
# Groups added by later issues live in their own modules, each with ``run(ctx) -> list[Result]``
# and ``targets(results) -> list[(met, line)]``.
PLUGIN_GROUPS = {
    "recovery": "tradestate.tools.bench.recovery",
    "reconcile": "tradestate.tools.bench.reconcile",
    "postmortem": "tradestate.tools.bench.replay",
}
GROUPS = ("append", "batch", "replay", "projection", *PLUGIN_GROUPS)
EVENTS_PER_S = "events/s"

# Targets: the least ours / baseline ratio
TARGET_SINGLE = 0.65
TARGET_BATCH = 0.5
TARGET_REPLAY_RAW = 0.6
TARGET_REPLAY_ES = 3.0
TARGET_CATCHUP = 100_000  # events/s into the read-model tables
TARGET_LAG_P99_MS = 20.0  # append commit -> table row, at 2,000 appends/s


# ------------------------------------------------------------------------------------ sizes


@dataclass(frozen=True)
class Sizes:
    single_seconds: float  # duration of each timed single-event append run
    writers: int  # writer processes for the multi-writer PostgreSQL run
    warmup: int  # appends per writer before timing starts
    batch_size: int  # events per append in append_batch
    batches: int  # appends in append_batch (the baseline writes batch_size * batches rows)
    replay_events: int  # N events folded in replay
    repeats: int  # replay measurements are best-of-this
    page: int  # rows per page for paged reads
    rounds: int = 1  # append and batch variants run interleaved this many times, best round kept


FULL = Sizes(single_seconds=5.0, writers=8, warmup=200, batch_size=100, batches=1000,
             replay_events=1_000_000, repeats=2, page=10_000, rounds=2)
QUICK = Sizes(single_seconds=2.0, writers=8, warmup=50, batch_size=100, batches=200,
              replay_events=100_000, repeats=2, page=10_000)


def _resolve_sizes(quick: bool, override: Sizes | dict[str, Any] | None) -> Sizes:
    base = QUICK if quick else FULL
    if override is None:
        return base
    if isinstance(override, Sizes):
        return override
    unknown = set(override) - {f.name for f in fields(Sizes)}
    if unknown:
        raise ValueError(f"unknown size overrides: {sorted(unknown)}")
    return replace(base, **override)


# ---------------------------------------------------------------------------------- results


@dataclass
class Result:
    metric: str
    backend: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    ratio: float


def _result(metric: str, backend: str, value: float, unit: str, baseline: str, baseline_value: float) -> Result:
    if not (value > 0 and baseline_value > 0):
        raise RuntimeError(f"{metric} on {backend}: non-positive measurement ({value} vs {baseline} {baseline_value})")
    return Result(metric, backend, float(value), unit, baseline, float(baseline_value), float(value) / float(baseline_value))


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- payloads


def _fill_payload() -> bytes:
    """A realistic OrderFilled payload exactly as the client stores it (``Event.to_payload`` +
    orjson, with the intent's correlation id): 362 bytes."""
    from ...domain import events as ev

    fill = ev.OrderFilled(
        event_id=uuid.UUID("5f0c8a52-2f6e-4c1b-9a43-0d7e9b1c2a11"),
        occurred_at=datetime(2026, 11, 20, 14, 31, 5, 123456, tzinfo=timezone.utc),
        correlation_id=uuid.UUID("0b9d6c1e-7a43-4f55-8e21-3c5d7f9a1b02"),
        account="acct-alpha",
        client_order_id="c000123456",
        exec_id="x000123456-1",
        qty=Decimal("100"),
        price=Decimal("187.25"),
        fee=Decimal("0.35"),
        liquidity="taker",
    )
    return orjson.dumps(fill.to_payload())


# ------------------------------------------------------------------------------ PostgreSQL


@dataclass(frozen=True)
class BenchContext:
    """What a plugin group gets: where to put files, sizes, PostgreSQL (None when unreachable)."""

    workdir: str
    sizes: Sizes
    pg: PgTarget | None
    schema_for: Callable[[str], str]
    backends: tuple[str, ...]
    quick: bool


def _plugin(group: str) -> Any:
    import importlib

    return importlib.import_module(PLUGIN_GROUPS[group])


@dataclass(frozen=True)
class PgTarget:
    base_url: str

    @property
    def parts(self) -> dict[str, Any]:
        p = urlparse(self.base_url)
        return {
            "dbname": unquote(p.path.lstrip("/")) or "postgres",
            "host": p.hostname or "127.0.0.1",
            "port": p.port or 5432,
            "user": unquote(p.username or "postgres"),
            "password": unquote(p.password or ""),
        }

    def conninfo(self) -> str:
        import psycopg.conninfo

        return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in self.parts.items() if v != ""})

    def url_for(self, schema: str) -> str:
        parsed = urlparse(self.base_url)
        query = dict(parse_qsl(parsed.query))
        query["schema"] = schema
        return urlunparse(parsed._replace(query=urlencode(query)))

    def connect(self, **kw: Any):
        import psycopg

        return psycopg.connect(self.conninfo(), autocommit=True, **kw)


def _pg_problem(target: PgTarget) -> str | None:
    try:
        with target.connect(connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as e:  # noqa: BLE001 - any failure means "not usable"
        text = str(e).strip()
        return text.splitlines()[0] if text else type(e).__name__


def _raw_table_sql_pg(schema: str, table: str) -> str:
    return (
        f'CREATE TABLE "{schema}"."{table}" ('
        " position bigserial PRIMARY KEY,"
        " stream_id text NOT NULL,"
        " stream_version bigint NOT NULL,"
        " type text NOT NULL,"
        " data bytea NOT NULL,"
        " recorded_at timestamptz NOT NULL DEFAULT now(),"
        " UNIQUE (stream_id, stream_version))"
    )


def _raw_table_sql_sqlite(table: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {table} ("
        "position INTEGER PRIMARY KEY, "
        "stream_id TEXT NOT NULL, "
        "stream_version INTEGER NOT NULL, "
        "type TEXT NOT NULL, "
        "data BLOB NOT NULL, "
        "recorded_at TEXT NOT NULL, "
        "UNIQUE (stream_id, stream_version))"
    )


def _sqlite_raw_conn(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


# ------------------------------------------------------------------------- append writers


def _make_appender(spec: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], None]]:
    """An ``append(stream_id)`` of one event in its own durable transaction, and a closer."""
    kind = spec["kind"]
    payload: bytes = spec["payload"]
    if kind == "ours":
        from ...adapters.store import new_event, open_store

        store = open_store(spec["url"], create=False)
        log_append = store.trading.append

        def append(stream: str) -> Any:
            return log_append([new_event(stream, 1, "OrderFilled", payload)])

        return append, store.close
    if kind == "raw_sqlite":
        conn = _sqlite_raw_conn(spec["path"])
        sql = f"INSERT INTO {spec['table']} (stream_id, stream_version, type, data, recorded_at) VALUES (?,?,?,?,?)"
        execute = conn.execute
        now = datetime.now
        utc = timezone.utc

        def append(stream: str) -> Any:  # autocommit: one transaction per row
            return execute(sql, (stream, 1, "OrderFilled", payload, now(utc).isoformat()))

        return append, conn.close
    if kind == "raw_pg":
        conn = PgTarget(spec["base_url"]).connect()
        conn.execute("SET synchronous_commit = on")
        cur = conn.cursor()
        sql = f'INSERT INTO "{spec["schema"]}"."{spec["table"]}" (stream_id, stream_version, type, data) VALUES (%s, %s, %s, %s)'

        def append(stream: str) -> Any:  # autocommit: one transaction per row
            return cur.execute(sql, (stream, 1, "OrderFilled", payload), prepare=True)

        return append, conn.close
    if kind == "es_pg":
        from eventsourcing.persistence import StoredEvent

        datastore, recorder = _es_recorder(spec["base_url"], spec["schema"], spec["table"])

        def append(stream: str) -> Any:
            return recorder.insert_events(
                [StoredEvent(originator_id=stream, originator_version=1, topic="OrderFilled", state=payload)]
            )

        return append, datastore.close
    raise ValueError(kind)


def _es_recorder(base_url: str, schema: str, table: str):
    """The library's default PostgreSQL application recorder (LOCK TABLE + NOTIFY per insert)."""
    from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore

    p = PgTarget(base_url).parts
    datastore = PostgresDatastore(
        p["dbname"], p["host"], p["port"], p["user"], p["password"],
        schema=schema, originator_id_type="text", pool_size=1, max_overflow=0,
    )
    recorder = PostgresApplicationRecorder(datastore, events_table_name=table)
    return datastore, recorder


def _timed_appends(append: Callable[[str], Any], deadline_wall: float) -> tuple[int, list[float], float]:
    """Append until the wall clock passes ``deadline_wall``; (count, latencies in ms, end time)."""
    latencies: list[float] = []
    record = latencies.append
    clock = time.perf_counter
    wall = time.time
    new_id = uuid.uuid4
    n = 0
    while wall() < deadline_wall:
        stream = f"order-{new_id()}"
        t0 = clock()
        append(stream)
        record((clock() - t0) * 1000.0)
        n += 1
    return n, latencies, wall()


def _writer_process(spec: dict[str, Any], warmup: int, seconds: float, ready: Any, go: Any, go_at: Any, out: Any) -> None:
    try:
        append, close = _make_appender(spec)
        try:
            for _ in range(warmup):
                append(f"warm-{uuid.uuid4()}")
            ready.put(os.getpid())
            if not go.wait(120):
                raise RuntimeError("no start signal")
            start = go_at.value
            while (pause := start - time.time()) > 0:
                time.sleep(pause)
            out.put(("ok", _timed_appends(append, start + seconds)))
        finally:
            close()
    except BaseException:  # noqa: BLE001 - reported to the parent
        ready.put(-1)
        out.put(("error", traceback.format_exc()))


@dataclass
class WriteRun:
    rate: float
    p50: float
    p99: float
    count: int


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[index]


def _summarise(count: int, latencies: list[float], seconds: float) -> WriteRun:
    latencies.sort()
    return WriteRun(count / seconds, _percentile(latencies, 0.5), _percentile(latencies, 0.99), count)


def _run_writers(spec: dict[str, Any], writers: int, sizes: Sizes) -> WriteRun:
    if writers == 1:
        append, close = _make_appender(spec)
        try:
            for _ in range(sizes.warmup):
                append(f"warm-{uuid.uuid4()}")
            start = time.time()
            n, latencies, end = _timed_appends(append, start + sizes.single_seconds)
        finally:
            close()
        return _summarise(n, latencies, end - start)

    ctx = _mp_context()
    ready, out = ctx.Queue(), ctx.Queue()
    go = ctx.Event()
    go_at = ctx.Value("d", 0.0)
    procs = [
        ctx.Process(target=_writer_process, args=(spec, sizes.warmup, sizes.single_seconds, ready, go, go_at, out), daemon=True)
        for _ in range(writers)
    ]
    for p in procs:
        p.start()
    try:
        for _ in range(writers):
            if ready.get(timeout=120) == -1:
                go.set()
                raise RuntimeError("a writer process failed to start:\n" + _first_error(out))
        go_at.value = time.time() + 0.25
        go.set()
        outcomes = [out.get(timeout=sizes.single_seconds + 120) for _ in range(writers)]
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.terminate()
    errors = [detail for status, detail in outcomes if status != "ok"]
    if errors:
        raise RuntimeError("a writer process failed:\n" + errors[0])
    total, latencies, end = 0, [], go_at.value
    for _, (n, lat, finished) in outcomes:
        total += n
        latencies.extend(lat)
        end = max(end, finished)
    return _summarise(total, latencies, end - go_at.value)


def _first_error(out: Any) -> str:
    try:
        status, detail = out.get(timeout=10)
        return str(detail)
    except Exception:  # noqa: BLE001
        return "(no detail)"


_CTX: Any = None


def _mp_context():
    global _CTX
    if _CTX is None:
        if "forkserver" in mp.get_all_start_methods():
            _CTX = mp.get_context("forkserver")
            _CTX.set_forkserver_preload(["tradestate.tools.bench.run", "tradestate.adapters.store.postgres", "psycopg"])
        else:
            _CTX = mp.get_context("spawn")
    return _CTX


# --------------------------------------------------------------------------- append group


def _append_rows(metric: str, backend: str, ours: WriteRun, baseline: str, base: WriteRun) -> list[Result]:
    return [
        _result(metric, backend, ours.rate, EVENTS_PER_S, baseline, base.rate),
        _result(f"{metric}_p50", backend, ours.p50, "ms", baseline, base.p50),
        _result(f"{metric}_p99", backend, ours.p99, "ms", baseline, base.p99),
    ]


def _describe(label: str, run: WriteRun) -> str:
    return f"{label}: {run.rate:,.0f} events/s, p50 {run.p50:.3f} ms, p99 {run.p99:.3f} ms ({run.count:,} appends)"


def _best_of_rounds(specs: dict[str, dict[str, Any]], writers: int, sizes: Sizes) -> dict[str, WriteRun]:
    """Run every variant once per round, interleaved, and keep each variant's best round (by
    rate): a foreign burst of load on this shared box then hurts one round, not the result."""
    best: dict[str, WriteRun] = {}
    for round_no in range(1, sizes.rounds + 1):
        for name, spec in specs.items():
            run = _run_writers(spec, writers, sizes)
            _log("  " + _describe(name, run) + (f" [round {round_no}]" if sizes.rounds > 1 else ""))
            if name not in best or run.rate > best[name].rate:
                best[name] = run
    return best


def bench_append_sqlite(workdir: str, sizes: Sizes, payload: bytes) -> list[Result]:
    from ...adapters.store import open_store

    path = os.path.join(workdir, "append_single.db")
    open_store(f"sqlite:///{path}").close()
    raw_path = os.path.join(workdir, "append_single_raw.db")
    conn = _sqlite_raw_conn(raw_path)
    conn.execute(_raw_table_sql_sqlite("raw_events"))
    conn.close()
    _log(f"sqlite append_single, 1 writer, {sizes.rounds} x {sizes.single_seconds:g} s each")
    best = _best_of_rounds({
        "raw INSERT commit": {"kind": "raw_sqlite", "path": raw_path, "table": "raw_events", "payload": payload},
        "ours": {"kind": "ours", "url": f"sqlite:///{path}", "payload": payload},
    }, 1, sizes)
    return _append_rows("append_single_1w", "sqlite", best["ours"], "raw_insert_commit_1w", best["raw INSERT commit"])


def bench_append_pg(pg: PgTarget, schema_for: Callable[[str], str], sizes: Sizes, payload: bytes) -> list[Result]:
    from ...adapters.store import open_store

    results: list[Result] = []
    for writers in (1, sizes.writers):
        schema = schema_for(f"a{writers}")
        url = pg.url_for(schema)
        open_store(url).close()  # creates the schema and our tables
        with pg.connect() as conn:
            conn.execute(_raw_table_sql_pg(schema, "raw_events"))
        datastore, recorder = _es_recorder(pg.base_url, schema, "es_events")
        recorder.create_table()
        datastore.close()
        label = f"{writers}w"
        _log(f"postgresql append_single, {writers} writer{'s' if writers > 1 else ''}"
             f"{' (processes)' if writers > 1 else ''}, {sizes.rounds} x {sizes.single_seconds:g} s each")
        best = _best_of_rounds({
            "raw INSERT commit": {"kind": "raw_pg", "base_url": pg.base_url, "schema": schema, "table": "raw_events",
                                  "payload": payload},
            "ours": {"kind": "ours", "url": url, "payload": payload},
            "eventsourcing default recorder": {"kind": "es_pg", "base_url": pg.base_url, "schema": schema,
                                               "table": "es_events", "payload": payload},
        }, writers, sizes)
        ours = best["ours"]
        results += _append_rows(f"append_single_{label}", "postgresql", ours, f"raw_insert_commit_{label}",
                                best["raw INSERT commit"])
        results += _append_rows(f"append_single_{label}", "postgresql", ours, "eventsourcing_default",
                                best["eventsourcing default recorder"])
    return results


# ---------------------------------------------------------------------------- batch group


def _batch_events(sizes: Sizes, payload: bytes) -> list[list[Any]]:
    from ...adapters.store import new_event

    return [
        [new_event(f"order-{uuid.uuid4()}", 1, "OrderFilled", payload) for _ in range(sizes.batch_size)]
        for _ in range(sizes.batches)
    ]


def _time_batches(log: Any, sizes: Sizes, payload: bytes) -> float:
    """Rate of ``sizes.batches`` appends of ``sizes.batch_size`` events (built before timing)."""
    append = log.append
    for batch in _batch_events(replace(sizes, batches=3), payload):  # warm-up, not timed
        append(batch)
    batches = _batch_events(sizes, payload)
    t0 = time.perf_counter()
    for batch in batches:
        append(batch)
    return sizes.batch_size * sizes.batches / (time.perf_counter() - t0)


def _batch_rounds(variants: dict[str, Callable[[], float]], sizes: Sizes) -> dict[str, float]:
    best: dict[str, float] = {}
    for round_no in range(1, sizes.rounds + 1):
        for name, measure in variants.items():
            rate = measure()
            _log(f"  {name}: {rate:,.0f} events/s" + (f" [round {round_no}]" if sizes.rounds > 1 else ""))
            best[name] = max(best.get(name, 0.0), rate)
    return best


def bench_batch_sqlite(workdir: str, sizes: Sizes, payload: bytes) -> list[Result]:
    from ...adapters.store import open_store

    n = sizes.batch_size * sizes.batches
    k = sizes.batch_size
    _log(f"sqlite append_batch: {sizes.batches:,} appends of {k} events vs one executemany of {n:,} rows")
    conn = _sqlite_raw_conn(os.path.join(workdir, "batch_raw.db"))
    conn.execute(_raw_table_sql_sqlite("raw_events"))
    sql = "INSERT INTO raw_events (stream_id, stream_version, type, data, recorded_at) VALUES (?,?,?,?,?)"

    def rows(count: int) -> list[tuple[Any, ...]]:
        stamp = datetime.now(timezone.utc).isoformat()
        return [(f"order-{uuid.uuid4()}", 1, "OrderFilled", payload, stamp) for _ in range(count)]

    def raw_all() -> float:
        data = rows(n)
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, data)
        conn.execute("COMMIT")
        return n / (time.perf_counter() - t0)

    def raw_per_tx() -> float:
        data = rows(n)
        t0 = time.perf_counter()
        for i in range(0, n, k):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql, data[i : i + k])
            conn.execute("COMMIT")
        return n / (time.perf_counter() - t0)

    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(sql, rows(k))  # warm-up
    conn.execute("COMMIT")
    with open_store(f"sqlite:///{os.path.join(workdir, 'batch.db')}") as store:
        best = _batch_rounds({
            "raw executemany, 1 transaction": raw_all,
            f"raw executemany, {k} rows per transaction": raw_per_tx,
            f"ours, {k} events per append": lambda: _time_batches(store.trading, sizes, payload),
        }, sizes)
    conn.close()
    metric = f"append_batch_{k}"
    ours = best[f"ours, {k} events per append"]
    return [
        _result(metric, "sqlite", ours, EVENTS_PER_S, "executemany_all_1tx", best["raw executemany, 1 transaction"]),
        _result(metric, "sqlite", ours, EVENTS_PER_S, f"executemany_{k}_per_tx",
                best[f"raw executemany, {k} rows per transaction"]),
    ]


def bench_batch_pg(pg: PgTarget, schema_for: Callable[[str], str], sizes: Sizes, payload: bytes) -> list[Result]:
    from ...adapters.store import open_store

    n = sizes.batch_size * sizes.batches
    k = sizes.batch_size
    schema = schema_for("b")
    url = pg.url_for(schema)
    _log(f"postgresql append_batch: {sizes.batches:,} appends of {k} events vs one COPY of {n:,} rows")
    with open_store(url) as store, pg.connect() as conn:
        conn.execute(_raw_table_sql_pg(schema, "raw_events"))
        copy_sql = f'COPY "{schema}".raw_events (stream_id, stream_version, type, data) FROM STDIN'

        def rows(count: int) -> list[tuple[Any, ...]]:
            return [(f"order-{uuid.uuid4()}", 1, "OrderFilled", payload) for _ in range(count)]

        def copy(data: list[tuple[Any, ...]]) -> None:
            with conn.transaction(), conn.cursor() as cur, cur.copy(copy_sql) as cp:
                for row in data:
                    cp.write_row(row)

        def copy_all() -> float:
            data = rows(n)
            t0 = time.perf_counter()
            copy(data)
            return n / (time.perf_counter() - t0)

        def copy_per_tx() -> float:
            data = rows(n)
            t0 = time.perf_counter()
            for i in range(0, n, k):
                copy(data[i : i + k])
            return n / (time.perf_counter() - t0)

        copy(rows(k))  # warm-up
        best = _batch_rounds({
            "raw COPY FROM STDIN, 1 transaction": copy_all,
            f"raw COPY FROM STDIN, {k} rows per transaction": copy_per_tx,
            f"ours, {k} events per append": lambda: _time_batches(store.trading, sizes, payload),
        }, sizes)
    metric = f"append_batch_{k}"
    ours = best[f"ours, {k} events per append"]
    return [
        _result(metric, "postgresql", ours, EVENTS_PER_S, "copy_from_stdin_all", best["raw COPY FROM STDIN, 1 transaction"]),
        _result(metric, "postgresql", ours, EVENTS_PER_S, f"copy_{k}_per_tx",
                best[f"raw COPY FROM STDIN, {k} rows per transaction"]),
    ]


# ------------------------------------------------------------------- replay: event generator

_SYMBOLS = (
    ("AAPL", 187.25), ("MSFT", 411.10), ("NVDA", 121.40), ("AMZN", 178.90), ("GOOGL", 165.30),
    ("META", 498.75), ("TSLA", 242.15), ("AMD", 158.60), ("NFLX", 642.20), ("AVGO", 1391.00),
    ("JPM", 201.45), ("V", 276.80), ("XOM", 118.25), ("UNH", 521.30), ("COST", 861.10),
    ("SPY", 548.20), ("QQQ", 474.35), ("IWM", 204.60), ("TLT", 93.15), ("GLD", 215.40),
)  # fmt: skip
_ACCOUNTS = ("acct-alpha", "acct-beta", "acct-gamma", "acct-delta")
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
    account_versions = dict.fromkeys(_ACCOUNTS, 0)
    position = 0
    k = 0
    while True:
        k += 1
        account = _ACCOUNTS[k % len(_ACCOUNTS)]
        symbol, base = _SYMBOLS[rnd.randrange(len(_SYMBOLS))]
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


# ---------------------------------------------------------------------- replay: our path


def _replay_ours(log: Any) -> tuple[int, float]:
    """Positions folded from the whole log (the projection decodes only intents and fills)."""
    from ...adapters.store import gc_paused
    from .positions import PositionBook

    book = PositionBook()
    t0 = time.perf_counter()
    with gc_paused():
        count = book.fold_rows(log.iter_rows(0))
    elapsed = time.perf_counter() - t0
    del book
    gc.collect()
    return count, elapsed


def _replay_state(log: Any) -> tuple[int, float]:
    """The whole trading state (orders, positions, risk, signals) folded, as a client opens."""
    from ...adapters.store import gc_paused
    from ...domain.state import TradingState

    state = TradingState()
    apply = state.apply
    loads = orjson.loads
    t0 = time.perf_counter()
    with gc_paused():
        for position, stream, version, type_name, data, recorded_at in log.iter_rows(0):
            apply(position, stream, version, type_name, loads(data), recorded_at)
    elapsed = time.perf_counter() - t0
    count = state.position
    del state, apply
    gc.collect()
    return count, elapsed


def psycopg_errors() -> Any:
    import psycopg.errors

    return psycopg.errors


def load_pg_log(pg: PgTarget, schema: str, n: int) -> None:
    """A fresh log in ``schema`` holding ``n`` generated trading events, by binary COPY."""
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
        except psycopg_errors().InsufficientPrivilege:
            pass


# ------------------------------------------------------------------ replay: raw baselines


def _raw_sqlite_cursor(path: str, page: int) -> tuple[int, float]:
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


def _raw_sqlite_keyset(path: str, page: int) -> tuple[int, float]:
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


def _raw_pg_keyset(pg: PgTarget, table: str, page: int, binary: bool = False) -> tuple[int, float]:
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


def _raw_pg_server_cursor(pg: PgTarget, table: str, page: int, binary: bool = False) -> tuple[int, float]:
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


def _raw_pg_copy(pg: PgTarget, table: str) -> tuple[int, float]:
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


# ----------------------------------------------------------- replay: eventsourcing default


class BenchPosition(Aggregate):
    """A position aggregate of the eventsourcing baseline: opened once, then one event per fill."""

    @event("Opened")
    def __init__(self, account: str, venue: str, symbol: str):
        self.account, self.venue, self.symbol = account, venue, symbol

    @event("Filled")
    def fill(self, order_id: str, exec_id: str, side: str, qty: Decimal, price: Decimal, fee: Decimal,
             occurred_at: datetime) -> None:
        pass


class BenchTrading(Application):
    """The eventsourcing baseline application: library defaults (Mapper, JSONTranscoder)."""


def _es_classes() -> tuple[type[BenchTrading], type[BenchPosition]]:
    return BenchTrading, BenchPosition


def _es_load(app: Any, position_cls: Any, n: int, seed: int = 11, chunk: int = 10_000) -> float:
    """``n`` stored events (``Opened`` per position, then fills) through the app's mapper and its
    recorder's ``insert_events`` in large batches; returns the load time."""
    rnd = random.Random(seed)
    mapper = app.mapper
    insert = app.recorder.insert_events
    filled = position_cls.Filled
    positions = []
    t0 = time.perf_counter()
    pending: list[Any] = []
    for account in _ACCOUNTS:
        for symbol, base in _SYMBOLS:
            agg = position_cls(account=account, venue="sim", symbol=symbol)
            positions.append([agg.id, agg.version, base])
            pending.extend(agg.collect_events())
    made = len(pending)
    stored = [mapper.to_stored_event(e) for e in pending]
    start = datetime(2026, 11, 16, 14, 30, tzinfo=timezone.utc)
    step = timedelta(milliseconds=37)
    k = 0
    while made < n:
        k += 1
        slot = positions[rnd.randrange(len(positions))]
        slot[1] += 1
        qty = rnd.randrange(1, 50) * 10
        at = start + step * made
        e = filled(
            originator_id=slot[0], originator_version=slot[1], timestamp=at,
            order_id=f"c{k:09d}", exec_id=f"x{k:09d}-1", side="buy" if rnd.random() < 0.52 else "sell",
            qty=Decimal(qty), price=Decimal(f"{slot[2] * (1 + rnd.uniform(-0.01, 0.01)):.2f}"),
            fee=Decimal(f"{qty * 0.0035:.4f}"), occurred_at=at,
        )
        stored.append(mapper.to_stored_event(e))
        made += 1
        if len(stored) >= chunk:
            insert(stored)
            stored = []
    if stored:
        insert(stored)
    return time.perf_counter() - t0


def _es_replay(app: Any, position_cls: Any, page: int) -> tuple[int, float]:
    from ...domain.state import PositionState

    select = app.recorder.select_notifications
    to_domain = app.mapper.to_domain_event
    opened, filled = position_cls.Opened, position_cls.Filled
    positions: dict[Any, PositionState] = {}
    count = 0
    t0 = time.perf_counter()
    start = 1
    while notifications := select(start, page):
        for n in notifications:
            e = to_domain(n)
            if type(e) is filled:
                held = positions[e.originator_id]
                held.apply_fill(e.qty if e.side == "buy" else -e.qty, e.price)
                held.fees += e.fee
                held.updated_at = e.occurred_at
            elif type(e) is opened:
                positions[e.originator_id] = PositionState(e.account, e.venue, e.symbol)
        count += len(notifications)
        start = notifications[-1].id + 1
    elapsed = time.perf_counter() - t0
    return count, elapsed


def _es_app(env: dict[str, str], n: int) -> tuple[Any, Callable[[int], tuple[int, float]]]:
    """The eventsourcing baseline application with ``n`` events loaded, and its replay."""
    app_cls, position_cls = _es_classes()
    app = app_cls(env=env)
    try:
        load = _es_load(app, position_cls, n)
    except BaseException:
        app.close()
        raise
    _log(f"  eventsourcing: loaded {n:,} events in {load:.1f} s (its mapper + recorder.insert_events, 10k per call)")
    return app, lambda page: _es_replay(app, position_cls, page)


def _replay_rounds(variants: dict[str, Callable[[], tuple[int, float]]], n: int, repeats: int) -> dict[str, float]:
    """Every variant once per round, interleaved; each variant's best rate."""
    best: dict[str, float] = {}
    for round_no in range(1, max(1, repeats) + 1):
        for name, measure in variants.items():
            count, elapsed = measure()
            if count != n:
                raise RuntimeError(f"{name}: read {count:,} events, expected {n:,}")
            _log(f"  {name}: {count / elapsed:,.0f} events/s ({elapsed:.2f} s)"
                 + (f" [round {round_no}]" if repeats > 1 else ""))
            best[name] = max(best.get(name, 0.0), count / elapsed)
    return best


OURS_REPLAY = "ours: iter_rows + PositionBook (decodes intents and fills only)"
OURS_STATE = "ours: iter_rows + orjson.loads + TradingState.apply (whole state)"
ES_REPLAY = "eventsourcing default: select_notifications + to_domain_event + fold"


# ------------------------------------------------------------------------- replay: group


def bench_replay_sqlite_log(path: str, n: int) -> None:
    """A fresh SQLite log at ``path`` holding ``n`` generated trading events."""
    from ...adapters.store import open_store

    open_store(f"sqlite:///{path}").close()
    t0 = time.perf_counter()
    conn = _sqlite_raw_conn(path)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO ts_events (position, stream_id, stream_version, type, data, recorded_at) VALUES (?,?,?,?,?,?)",
        ((p, s, v, t, d, r.isoformat()) for p, s, v, t, d, r in generate_trading_rows(n)),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # readers then see one file, no WAL to search
    conn.close()
    _log(f"  loaded in {time.perf_counter() - t0:.1f} s ({os.path.getsize(path) / 1e6:,.0f} MB)")


def bench_replay_sqlite(workdir: str, sizes: Sizes) -> list[Result]:
    from ...adapters.store import open_store

    n = sizes.replay_events
    path = os.path.join(workdir, "replay.db")
    _log(f"sqlite replay: generating and loading {n:,} events")
    bench_replay_sqlite_log(path, n)

    app, es_replay = _es_app(
        {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": os.path.join(workdir, "replay_es.db")}, n)
    try:
        with open_store(f"sqlite:///{path}", create=False) as store:
            best = _replay_rounds({
                "raw SELECT (one cursor) + orjson.loads": lambda: _raw_sqlite_cursor(path, sizes.page),
                "raw SELECT (keyset pages) + orjson.loads": lambda: _raw_sqlite_keyset(path, sizes.page),
                OURS_REPLAY: lambda: _replay_ours(store.trading),
                OURS_STATE: lambda: _replay_state(store.trading),
                ES_REPLAY: lambda: es_replay(sizes.page),
            }, n, sizes.repeats)
    finally:
        app.close()
    ours = best[OURS_REPLAY]
    raw = max(v for k, v in best.items() if k.startswith("raw SELECT"))
    return [
        _result("replay", "sqlite", ours, EVENTS_PER_S, "raw_select_orjson", raw),
        _result("replay_duration", "sqlite", n / ours, "s", "raw_select_orjson", n / raw),
        _result("replay", "sqlite", ours, EVENTS_PER_S, "eventsourcing_default", best[ES_REPLAY]),
        _result("replay_full_state", "sqlite", best[OURS_STATE], EVENTS_PER_S, "raw_select_orjson", raw),
        _result("replay_full_state", "sqlite", best[OURS_STATE], EVENTS_PER_S, "eventsourcing_default", best[ES_REPLAY]),
    ]


def bench_replay_pg(pg: PgTarget, schema_for: Callable[[str], str], sizes: Sizes) -> list[Result]:
    from ...adapters.store import open_store

    n = sizes.replay_events
    schema = schema_for("r")
    url = pg.url_for(schema)
    table = f'"{schema}".ts_events'
    _log(f"postgresql replay: generating and loading {n:,} events")
    t0 = time.perf_counter()
    load_pg_log(pg, schema, n)
    with pg.connect() as conn:
        size = conn.execute(f"SELECT pg_total_relation_size('{table}')").fetchone()[0]
    _log(f"  loaded in {time.perf_counter() - t0:.1f} s ({size / 1e6:,.0f} MB with indexes)")

    p = pg.parts
    app, es_replay = _es_app(
        {"PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": p["dbname"], "POSTGRES_HOST": p["host"],
         "POSTGRES_PORT": str(p["port"]), "POSTGRES_USER": p["user"], "POSTGRES_PASSWORD": p["password"],
         "POSTGRES_SCHEMA": schema}, n)
    with pg.connect() as conn:
        try:
            conn.execute("CHECKPOINT")  # so that no checkpoint of the loads lands in a measurement
        except Exception:  # noqa: BLE001 - needs a privileged role; harmless without
            pass
    try:
        with open_store(url, create=False) as store:
            best = _replay_rounds({
                "raw SELECT (keyset pages) + orjson.loads": lambda: _raw_pg_keyset(pg, table, sizes.page),
                "raw SELECT (server-side cursor) + orjson.loads": lambda: _raw_pg_server_cursor(pg, table, sizes.page),
                "raw SELECT (keyset pages, binary format) + orjson.loads":
                    lambda: _raw_pg_keyset(pg, table, sizes.page, binary=True),
                "raw SELECT (server-side cursor, binary format) + orjson.loads":
                    lambda: _raw_pg_server_cursor(pg, table, sizes.page, binary=True),
                "raw COPY (SELECT ...) TO STDOUT (binary) + orjson.loads": lambda: _raw_pg_copy(pg, table),
                OURS_REPLAY: lambda: _replay_ours(store.trading),
                OURS_STATE: lambda: _replay_state(store.trading),
                ES_REPLAY: lambda: es_replay(sizes.page),
            }, n, sizes.repeats)
    finally:
        app.close()
    ours = best[OURS_REPLAY]
    # The target is checked against the fastest raw read, whatever its format (we read binary).
    raw = max(v for k, v in best.items() if k.startswith("raw SELECT"))
    raw_binary = max(v for k, v in best.items() if k.startswith("raw SELECT") and "binary" in k)
    return [
        _result("replay", "postgresql", ours, EVENTS_PER_S, "raw_select_orjson", raw),
        _result("replay_duration", "postgresql", n / ours, "s", "raw_select_orjson", n / raw),
        _result("replay", "postgresql", ours, EVENTS_PER_S, "raw_select_binary_orjson", raw_binary),
        _result("replay", "postgresql", ours, EVENTS_PER_S, "copy_to_stdout_orjson",
                best["raw COPY (SELECT ...) TO STDOUT (binary) + orjson.loads"]),
        _result("replay", "postgresql", ours, EVENTS_PER_S, "eventsourcing_default", best[ES_REPLAY]),
        _result("replay_full_state", "postgresql", best[OURS_STATE], EVENTS_PER_S, "raw_select_orjson", raw),
        _result("replay_full_state", "postgresql", best[OURS_STATE], EVENTS_PER_S, "eventsourcing_default",
                best[ES_REPLAY]),
    ]


# ------------------------------------------------------------------------------ reporting


def _targets(results: list[Result]) -> list[tuple[bool, str]]:
    checks: list[tuple[bool, str]] = []

    def check(metric: str, backend: str, baseline: str, minimum: float, what: str) -> None:
        for r in results:
            if r.metric == metric and r.backend == backend and r.baseline == baseline:
                checks.append((r.ratio >= minimum,
                               f"{metric} ({backend}): {r.ratio:.2f}x {what} (target >= {minimum:g}x)"))

    for r in results:
        if r.metric.startswith("append_single_") and r.metric.endswith("w") and r.baseline.startswith("raw_"):
            check(r.metric, r.backend, r.baseline, TARGET_SINGLE, "raw single-row commit rate, same writers")
        # The batched target is stated against COPY; SQLite's executemany rows are informative
        # (one 1M-row transaction writes each index page once, 100 rows per commit cannot).
        if r.metric.startswith("append_batch_") and r.baseline == "copy_from_stdin_all":
            check(r.metric, r.backend, r.baseline, TARGET_BATCH, "raw COPY rate")
    for backend in ("sqlite", "postgresql"):
        check("replay", backend, "raw_select_orjson", TARGET_REPLAY_RAW, "raw read + decode")
        check("replay", backend, "eventsourcing_default", TARGET_REPLAY_ES, "eventsourcing default replay")
    for r in results:  # absolute targets
        if r.metric == "projection_catchup" and r.baseline == "raw_select_orjson":
            checks.append((r.value >= TARGET_CATCHUP,
                           f"projection_catchup ({r.backend}): {r.value:,.0f} events/s (target >= {TARGET_CATCHUP:,})"))
        if r.metric == "projection_live_lag_p99":
            checks.append((r.value <= TARGET_LAG_P99_MS,
                           f"projection_live_lag_p99 ({r.backend}): {r.value:.2f} ms (target <= {TARGET_LAG_P99_MS:g} ms)"))
    for group in PLUGIN_GROUPS:
        try:
            checks += _plugin(group).targets(results)
        except ImportError:
            pass
    return checks


def _format_value(value: float, unit: str) -> str:
    if unit == EVENTS_PER_S:
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.3f}"
    return f"{value:.2f}"


def _print_human(results: list[Result], notes: list[str], sizes: Sizes, quick: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal or console.width < 132:
        console = Console(width=132)
    table = Table(title=f"tradestate bench ({'quick' if quick else 'full'}; ratio = ours / baseline, "
                        "for ms lower is better)")
    for name, justify in (("metric", "left"), ("backend", "left"), ("value", "right"), ("unit", "left"),
                          ("baseline", "left"), ("baseline value", "right"), ("ratio", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in results:
        table.add_row(r.metric, r.backend, _format_value(r.value, r.unit), r.unit, r.baseline,
                      _format_value(r.baseline_value, r.unit), f"{r.ratio:.2f}x")
    console.print(table)
    console.print(f"replay: {sizes.replay_events:,} events; append_single: {sizes.single_seconds:g} s per run; "
                  f"append_batch: {sizes.batches:,} x {sizes.batch_size}", highlight=False)
    for ok, line in _targets(results):
        console.print(f"[{'green' if ok else 'red'}]{'MET   ' if ok else 'MISSED'}[/] {line}", highlight=False)
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


# ---------------------------------------------------------------------------------- entry


def run_bench(
    quick: bool = False,
    as_json: bool = False,
    pg_url: str | None = None,
    sqlite_dir: str | None = None,
    only: str | None = None,
    *,
    _sizes: Sizes | dict[str, Any] | None = None,
    _backends: tuple[str, ...] = ("sqlite", "postgresql"),
) -> int:
    """Run the benchmark; print a table (or JSON); return the exit code (0 unless it failed)."""
    try:
        sizes = _resolve_sizes(quick, _sizes)
        groups = GROUPS if not only else tuple(g.strip() for g in only.split(",") if g.strip())
        unknown = [g for g in groups if g not in GROUPS]
        if unknown or not groups:
            _log(f"error: unknown metric group(s) {unknown or only!r}; choose from {', '.join(GROUPS)}")
            return 2
        if sqlite_dir is not None and not os.path.isdir(sqlite_dir):
            _log(f"error: --sqlite-dir {sqlite_dir!r} is not a directory")
            return 2
    except ValueError as e:
        _log(f"error: {e}")
        return 2

    notes: list[str] = []
    results: list[Result] = []
    payload = _fill_payload()
    started = time.perf_counter()
    workdir = tempfile.mkdtemp(prefix="tradestate-bench-", dir=sqlite_dir)
    pg: PgTarget | None = None
    schemas: list[str] = []
    run_id = f"bench_{uuid.uuid4().hex[:10]}"

    def schema_for(suffix: str) -> str:
        name = f"{run_id}_{suffix}"
        schemas.append(name)
        return name

    if "postgresql" in _backends:
        target = PgTarget(pg_url or os.environ.get("TRADESTATE_TEST_PG") or DEFAULT_PG)
        problem = _pg_problem(target)
        if problem is None:
            pg = target
        else:
            message = f"PostgreSQL unreachable at {_redact(target.base_url)} ({problem}): skipping the PostgreSQL rows"
            _log(message)
            notes.append(message)
    _log(f"{'quick' if quick else 'full'} run; SQLite files in {workdir}"
         + (f"; PostgreSQL {_redact(pg.base_url)}, schemas {run_id}_*" if pg else "")
         + f"; single-event payload {len(payload)} bytes")
    load = _load_average()
    if load is not None and load > 0.5:
        _log(f"warning: 1-minute load average is {load:.2f} before the run: other work on this machine "
             "will depress the figures")
    try:
        if "append" in groups:
            if "sqlite" in _backends:
                results += bench_append_sqlite(workdir, sizes, payload)
            if pg:
                results += bench_append_pg(pg, schema_for, sizes, payload)
        if "batch" in groups:
            if "sqlite" in _backends:
                results += bench_batch_sqlite(workdir, sizes, payload)
            if pg:
                results += bench_batch_pg(pg, schema_for, sizes, payload)
        if "replay" in groups:
            if "sqlite" in _backends:
                results += bench_replay_sqlite(workdir, sizes)
            if pg:
                results += bench_replay_pg(pg, schema_for, sizes)
        if "projection" in groups:
            from .projection import bench_projection_pg, bench_projection_sqlite

            if "sqlite" in _backends:
                results += bench_projection_sqlite(workdir, sizes)
            if pg:
                results += bench_projection_pg(pg, schema_for, sizes)
        ctx = BenchContext(workdir, sizes, pg, schema_for, _backends, quick)
        for group in PLUGIN_GROUPS:
            if group in groups:
                results += _plugin(group).run(ctx)
    except Exception as e:  # noqa: BLE001 - a benchmark that fails says why and exits non-zero
        _log(f"error: {type(e).__name__}: {e}")
        traceback.print_exc(file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if pg and schemas:
            try:
                with pg.connect() as conn:
                    for name in schemas:
                        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            except Exception as e:  # noqa: BLE001
                _log(f"warning: could not drop schemas {schemas}: {e}")
    _log(f"done in {time.perf_counter() - started:.0f} s")
    if as_json:
        sys.stdout.write(json.dumps({"results": [asdict(r) for r in results]}) + "\n")
        sys.stdout.flush()
    else:
        _print_human(results, notes, sizes, quick)
    return 0


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return urlunparse(parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@")))
    return url
