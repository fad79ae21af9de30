"""``tradestate bench`` group ``batch``: many events per append.

``append_batch_<k>``  ``sizes.batches`` appends of ``k`` events (one transaction each) against one
                      COPY FROM STDIN (PostgreSQL) / one executemany transaction (SQLite) of the
                      whole set of rows, and against the same raw write in ``k``-row transactions.

Targets (issue 16): ours / one COPY of every row >= 0.7 on PostgreSQL; ours / one executemany
transaction of every row >= 0.5 on SQLite. The ``k``-row raw transactions show what is left of the
gap once the raw write also commits (and fsyncs) once per ``k`` rows, as every append must.

``append_batch_<k>_floor``  the best ratio a commit flush per append allows on this machine: the
                      one-transaction write's time per ``k`` rows plus one commit flush, against
                      the one-transaction write. The flush is the median, over adjacent pairs taken
                      in each round, of a raw ``k``-row transaction committed durably minus the same
                      committed without waiting for the disk (SQLite ``synchronous=OFF``, PostgreSQL
                      ``synchronous_commit=off``; baselines only, never our appends): pairs, so that
                      the machine's drifting load cancels. A target above the floor cannot be met
                      here by an append that is durable when it returns.
Each variant's client CPU per ``k`` rows (``time.process_time``) is logged beside its rate.
"""

from __future__ import annotations

import os
import statistics
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


class _Timed:
    """A timed write of ``rows`` rows: its rate (wall clock) and client CPU seconds."""

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def __enter__(self) -> _Timed:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu = time.process_time() - self._cpu
        self.rate = self.rows / (time.perf_counter() - self._wall)


def _time_batches(event_log: Any, sizes: Sizes, payload: bytes) -> _Timed:
    """``sizes.batches`` appends of ``sizes.batch_size`` events (built before timing), timed."""
    append = event_log.append
    for batch in _batch_events(replace(sizes, batches=3), payload):  # warm-up, not timed
        append(batch)
    batches = _batch_events(sizes, payload)
    with _Timed(sizes.batch_size * sizes.batches) as timed:
        for batch in batches:
            append(batch)
    return timed


def _batch_rounds(variants: dict[str, Callable[[], _Timed]], sizes: Sizes) -> dict[str, float]:
    """Every variant once per round, interleaved; each variant's best rate."""
    best: dict[str, float] = {}
    for round_no in range(1, sizes.rounds + 1):
        for name, measure in variants.items():
            timed = measure()
            log(f"  {name}: {timed.rate:,.0f} events/s, client CPU {timed.cpu / timed.rows * sizes.batch_size * 1e3:.2f} "
                f"ms per {sizes.batch_size} rows" + (f" [round {round_no}]" if sizes.rounds > 1 else ""))
            best[name] = max(best.get(name, 0.0), timed.rate)
    return best


def _flush_pairs(sizes: Sizes) -> int:
    """Flush pairs sampled per round: a fifth as many as the appends timed (at least 20)."""
    return max(20, sizes.batches // 5)


class _FlushPairs:
    """Commit flush samples: ``sample(commit, pairs)`` times ``commit(True)`` (a ``k``-row raw
    transaction committed durably) beside ``commit(False)`` (the same, not waiting for the disk),
    alternating which goes first; ``seconds`` is the median difference."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.differences: list[float] = []
        self._clock = clock

    def sample(self, commit: Callable[[bool], None], pairs: int) -> None:
        clock = self._clock
        for i in range(pairs):
            spans = {}
            for flushed in ((True, False) if i % 2 == 0 else (False, True)):
                t0 = clock()
                commit(flushed)
                spans[flushed] = clock() - t0
            self.differences.append(spans[True] - spans[False])

    @property
    def seconds(self) -> float:
        return max(0.0, statistics.median(self.differences)) if self.differences else 0.0


def _flush_floor(metric: str, backend: str, raw_all: float, flush: float, k: int, all_what: str) -> Result:
    """The floor row: the one-transaction write's time per ``k`` rows (at rate ``raw_all``) plus one
    commit flush of ``flush`` seconds, as a rate against the one-transaction write."""
    per_k_all = k / raw_all
    floor = result(f"{metric}_floor", backend, k / (per_k_all + flush), EVENTS_PER_S, _TARGETS[backend][0], raw_all)
    log(f"  {backend}: floor: the best ratio a per-append flush allows here: {floor.ratio:.2f}x (a commit flush "
        f"costs {flush * 1e3:.2f} ms on this machine; {all_what} writes {k} rows in {per_k_all * 1e3:.2f} ms)")
    return floor


def bench_batch_sqlite(workdir: str, sizes: Sizes, payload: bytes) -> list[Result]:
    """``append_batch_<k>`` on SQLite in ``workdir``: batched appends against one executemany of every
    row and against raw ``k``-row transactions."""
    from ...adapters.store import open_store

    n = sizes.batch_size * sizes.batches
    k = sizes.batch_size
    log(f"sqlite append_batch: {sizes.batches:,} appends of {k} events vs one executemany of {n:,} rows")
    from ...adapters.store.sqlite import WAL_AUTOCHECKPOINT_PAGES

    conn = sqlite_raw_conn(os.path.join(workdir, "batch_raw.db"))
    # As our store runs: a commit that checkpoints the WAL at another size is another flush.
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
    conn.execute(raw_table_sql_sqlite("raw_events"))
    flushes, pairs = _FlushPairs(), _flush_pairs(sizes)
    sql = "INSERT INTO raw_events (stream_id, stream_version, type, data, recorded_at) VALUES (?,?,?,?,?)"

    def rows(count: int) -> list[tuple[Any, ...]]:
        stamp = datetime.now(timezone.utc).isoformat()
        return [(f"order-{uuid.uuid4()}", 1, "OrderFilled", payload, stamp) for _ in range(count)]

    def raw_all() -> _Timed:
        data = rows(n)
        with _Timed(n) as timed:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql, data)
            conn.execute("COMMIT")
        return timed

    def raw_per_tx() -> _Timed:
        data = rows(n)
        with _Timed(n) as timed:
            for i in range(0, n, k):
                conn.execute("BEGIN IMMEDIATE")
                conn.executemany(sql, data[i : i + k])
                conn.execute("COMMIT")
        flushes.sample(commit_k, pairs)
        return timed

    def commit_k(flushed: bool) -> None:
        data = rows(k)
        conn.execute(f"PRAGMA synchronous={'FULL' if flushed else 'OFF'}")
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql, data)
            conn.execute("COMMIT")
        finally:
            conn.execute("PRAGMA synchronous=FULL")

    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(sql, rows(k))  # warm-up
    conn.execute("COMMIT")
    with open_store(f"sqlite:///{os.path.join(workdir, 'batch.db')}") as store:
        best = _batch_rounds({
            "raw executemany, 1 transaction": raw_all,
            f"raw executemany, {k} rows per transaction": raw_per_tx,  # and flush pairs
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
        _flush_floor(metric, "sqlite", best["raw executemany, 1 transaction"], flushes.seconds, k, "one executemany"),
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
    flushes, pairs = _FlushPairs(), _flush_pairs(sizes)
    with open_store(url) as store, pg.connect() as conn:
        conn.execute(raw_table_sql_pg(schema, "raw_events"))
        copy_sql = f'COPY "{schema}".raw_events (stream_id, stream_version, type, data) FROM STDIN'

        def rows(count: int) -> list[tuple[Any, ...]]:
            return [(f"order-{uuid.uuid4()}", 1, "OrderFilled", payload) for _ in range(count)]

        def copy(data: list[tuple[Any, ...]], flushed: bool = True) -> None:
            with conn.transaction(), conn.cursor() as cur:
                if not flushed:  # this baseline transaction only: its commit does not wait for the disk
                    cur.execute("SET LOCAL synchronous_commit = off")
                with cur.copy(copy_sql) as cp:
                    for row in data:
                        cp.write_row(row)

        def copy_all() -> _Timed:
            data = rows(n)
            with _Timed(n) as timed:
                copy(data)
            return timed

        def copy_per_tx() -> _Timed:
            data = rows(n)
            with _Timed(n) as timed:
                for i in range(0, n, k):
                    copy(data[i : i + k])
            flushes.sample(lambda flushed: copy(rows(k), flushed), pairs)
            return timed

        copy(rows(k))  # warm-up
        best = _batch_rounds({
            "raw COPY FROM STDIN, 1 transaction": copy_all,
            f"raw COPY FROM STDIN, {k} rows per transaction": copy_per_tx,  # and flush pairs
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
        _flush_floor(metric, "postgresql", best["raw COPY FROM STDIN, 1 transaction"], flushes.seconds, k,
                     "one COPY"),
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
    floors = {(r.metric[: -len("_floor")], r.backend): r.ratio for r in results if r.metric.endswith("_floor")}
    for r in results:
        target = _TARGETS.get(r.backend)
        if (r.metric.startswith("append_batch_") and not r.metric.endswith("_floor") and target is not None
                and r.baseline == target[0]):
            baseline, what, least = target
            floor = floors.get((r.metric, r.backend))
            if floor is None:
                line = f"append_batch ({r.backend}): {r.ratio:.2f}x {what} (target >= {least:g}x)"
            else:  # ours last: the JSON takes a target line's last ratio as its ratio
                reach = "a commit flush per append leaves the target out of reach" if floor < least else "attainable"
                line = (f"append_batch ({r.backend}): target >= {least:g}x {what}, floor here {floor:.2f}x ({reach}); "
                        f"ours {r.ratio / floor:.0%} of the floor: {r.ratio:.2f}x")
            checks.append((r.ratio >= least, line))
    return checks
