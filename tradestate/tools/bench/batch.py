"""``tradestate bench`` group ``batch``: many events per append.

``append_batch_<k>``  ``sizes.batches`` appends of ``k`` events (one transaction each) against one
                      COPY FROM STDIN (PostgreSQL) / one executemany transaction (SQLite) of the
                      whole set of rows, and against the same raw write in ``k``-row transactions.

Targets (issue 16): ours / one COPY of every row >= 0.7 on PostgreSQL; ours / one executemany
transaction of every row >= 0.5 on SQLite. The ``k``-row raw transactions show what is left of the
gap once the raw write also commits (and fsyncs) once per ``k`` rows, as every append must.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from .common import (
    EVENTS_PER_S,
    BenchContext,
    PgTarget,
    Result,
    Sizes,
    fill_payload,
    log,
    raw_table_sql_pg,
    raw_table_sql_sqlite,
    result,
    sqlite_raw_conn,
)

TARGET_BATCH_PG = 0.7  # the least ours / one COPY of every row (PostgreSQL)
TARGET_BATCH_SQLITE = 0.5  # the least ours / one executemany transaction of every row (SQLite)


def _batch_events(sizes: Sizes, payload: bytes) -> list[list[Any]]:
    from ...adapters.store import new_event

    return [
        [new_event(f"order-{uuid.uuid4()}", 1, "OrderFilled", payload) for _ in range(sizes.batch_size)]
        for _ in range(sizes.batches)
    ]


def _time_batches(event_log: Any, sizes: Sizes, payload: bytes) -> float:
    """Rate of ``sizes.batches`` appends of ``sizes.batch_size`` events (built before timing)."""
    append = event_log.append
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
            log(f"  {name}: {rate:,.0f} events/s" + (f" [round {round_no}]" if sizes.rounds > 1 else ""))
            best[name] = max(best.get(name, 0.0), rate)
    return best


def bench_batch_sqlite(workdir: str, sizes: Sizes, payload: bytes) -> list[Result]:
    """``append_batch_<k>`` on SQLite in ``workdir``: batched appends against one executemany of every
    row and against raw ``k``-row transactions."""
    from ...adapters.store import open_store

    n = sizes.batch_size * sizes.batches
    k = sizes.batch_size
    log(f"sqlite append_batch: {sizes.batches:,} appends of {k} events vs one executemany of {n:,} rows")
    conn = sqlite_raw_conn(os.path.join(workdir, "batch_raw.db"))
    conn.execute(raw_table_sql_sqlite("raw_events"))
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
    log("  sqlite: " + _commit_share(ours, best["raw executemany, 1 transaction"],
                                     best[f"raw executemany, {k} rows per transaction"], k))
    return [
        result(metric, "sqlite", ours, EVENTS_PER_S, "executemany_all_1tx", best["raw executemany, 1 transaction"]),
        result(metric, "sqlite", ours, EVENTS_PER_S, f"executemany_{k}_per_tx",
               best[f"raw executemany, {k} rows per transaction"]),
    ]


def bench_batch_pg(pg: PgTarget, schema_for: Callable[[str], str], sizes: Sizes, payload: bytes) -> list[Result]:
    """``append_batch_<k>`` on PostgreSQL (a schema from ``schema_for``): batched appends against one
    COPY of every row and against raw ``k``-row transactions."""
    from ...adapters.store import open_store

    n = sizes.batch_size * sizes.batches
    k = sizes.batch_size
    schema = schema_for("b")
    url = pg.url_for(schema)
    log(f"postgresql append_batch: {sizes.batches:,} appends of {k} events vs one COPY of {n:,} rows")
    with open_store(url) as store, pg.connect() as conn:
        conn.execute(raw_table_sql_pg(schema, "raw_events"))
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
    log("  postgresql: " + _commit_share(ours, best["raw COPY FROM STDIN, 1 transaction"],
                                         best[f"raw COPY FROM STDIN, {k} rows per transaction"], k))
    return [
        result(metric, "postgresql", ours, EVENTS_PER_S, "copy_from_stdin_all", best["raw COPY FROM STDIN, 1 transaction"]),
        result(metric, "postgresql", ours, EVENTS_PER_S, f"copy_{k}_per_tx",
               best[f"raw COPY FROM STDIN, {k} rows per transaction"]),
    ]


def run(ctx: BenchContext) -> list[Result]:
    """Measure on each backend asked for; return the rows."""
    payload = fill_payload()
    results: list[Result] = []
    if "sqlite" in ctx.backends:
        results += bench_batch_sqlite(ctx.workdir, ctx.sizes, payload)
    if ctx.pg is not None:
        results += bench_batch_pg(ctx.pg, ctx.schema_for, ctx.sizes, payload)
    return results


_TARGETS = {  # backend -> (baseline row, what it is, least ratio)
    "postgresql": ("copy_from_stdin_all", "one COPY", TARGET_BATCH_PG),
    "sqlite": ("executemany_all_1tx", "one executemany", TARGET_BATCH_SQLITE),
}


def _commit_share(ours: float, raw_all: float, raw_per_tx: float, k: int) -> str:
    """How much of ours' gap to the one-transaction write is the per-``k``-rows commit: the raw
    write's own time per commit (its ``k``-row transactions against its one transaction)."""
    per_append, per_k_all, per_k_tx = k / ours, k / raw_all, k / raw_per_tx
    gap, commit = per_append - per_k_all, per_k_tx - per_k_all
    share = f"{commit / gap:.0%} of it" if gap > 0 else "ours is not behind"
    return (f"{per_append * 1e3:.2f} ms per append vs {per_k_all * 1e3:.2f} ms per {k} rows in one transaction; "
            f"a raw commit every {k} rows costs {commit * 1e3:.2f} ms: {share}")


def targets(results: list[Result]) -> list[tuple[bool, str]]:
    """(met, line) for each target of this group found in results."""
    checks: list[tuple[bool, str]] = []
    for r in results:
        target = _TARGETS.get(r.backend)
        if r.metric.startswith("append_batch_") and target is not None and r.baseline == target[0]:
            baseline, what, least = target
            checks.append((r.ratio >= least,
                           f"append_batch ({r.backend}): {r.ratio:.2f}x {what} (target >= {least:g}x)"))
    return checks
