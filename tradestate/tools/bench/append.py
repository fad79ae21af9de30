"""``tradestate bench`` group ``append``: durable single-event appends.

``append_single_<w>w``  appends through ``EventLog.append`` (one new stream per event), rate and
                        p50/p99 latency, against raw single-row INSERT commits of the same row
                        shape (same columns, same unique constraint, integer/bigserial primary
                        key) with the same number of writers: 1 writer on both backends, 8 writer
                        processes on PostgreSQL. The ``eventsourcing`` library's default
                        PostgreSQL recorder (LOCK TABLE + NOTIFY) is reported as an extra,
                        informative baseline.
``append_single_fenced_1w``  the same single-event appends with lease fencing on (a lease taken
                        with ``Leases.acquire`` through ``EngineLease``, renewed from its thread
                        every second as an engine's is, every append carrying the ``Fence``)
                        against the unfenced rate, one writer per backend, measured in the same
                        run through the same connection in interleaved 20 ms slices (ABBA...),
                        so drift on this shared machine hits both alike.

``append_coalesced_<n>t`` / ``append_coalesced_<n>a``  single-event appends from ``COALESCE_CALLERS``
                        concurrent callers in this one process (threads calling
                        ``CommitCoalescer.append``; asyncio tasks awaiting ``append_async``),
                        sharing commits (group commit), against the raw single-row INSERT commit
                        rate of one writer: the three run interleaved in rounds (raw, threads,
                        asyncio, raw, ...), each round's rates logged, the best round kept. These
                        are saturated (closed loop: each caller appends again as soon as its last
                        append returns), so they give the throughput; their p99 is callers /
                        throughput (Little's law) and informs only.
``append_coalesced_<n>t_at3x``  open loop: the same threads, each appending at its own evenly spaced
                        times, together offering 3x the raw rate of the same run (measured just
                        before, best raw round so far); the achieved rate against the offered one,
                        and p50/p99 (``_p50``/``_p99``, baseline ``target_5ms``) measured from each
                        append's scheduled time, so falling behind counts (no coordinated
                        omission). The round with the lowest p99 among those that reached the
                        offered rate is kept.
``append_coalesced_client_64a``  the engine's view: 64 asyncio order flows each recording fills of its
                        own order through ``connect_async(url, coalesce=True)`` (decision, fold and
                        all), against the raw single-row commit rate and against today's async
                        client (one worker thread, one commit per call), run in the same rounds.
                        Informative: no target (the issue's targets are on the commit path above).
``append_coalesced_single_1w``  one caller through the coalescer (it leads its own commits inline)
                        against today's ``EventLog.append``, interleaved in 20 ms slices like the
                        fencing rows.

Targets: ours / raw >= 0.65 for the rate; fenced / unfenced >= 0.90 (fencing costs <= 10 %);
coalesced (saturated) >= 3x the raw single-row commit rate, and with 3x the raw rate offered, p99 <=
5 ms at >= 0.95x of the offered rate achieved (else MISSED, saying the rate was not reached); a
single caller through the coalescer >= 0.95x today's single append.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
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
    mp_context,
    percentile,
    raw_table_sql_pg,
    raw_table_sql_sqlite,
    ratio_checks,
    result,
    sqlite_raw_conn,
)

TARGET_SINGLE = 0.65  # the least ours / raw single-row commit rate
TARGET_FENCED = 0.90  # the least fenced / unfenced single-event rate: fencing costs <= 10 %
# One slice of the fenced/unfenced interleaving: short, so a burst of foreign load (or a slow
# fsync) on this shared machine lands on both variants; 0.25 s slices left ratios swinging
# +-20 % between runs, 20 ms slices about +-5 %.
FENCE_SLICE_SECONDS = 0.02
# The bench engine's lease: long, so a stall of this shared machine cannot depose it mid-run,
# and renewed every second like an engine's default (3 s, renewed every 1 s).
FENCE_LEASE_SECONDS = 30.0
FENCE_RENEW_SECONDS = 1.0
TARGET_COALESCED = 3.0  # the least coalesced / raw single-row commit rate (issue 16, item 5)
TARGET_COALESCED_P99_MS = 5.0  # the most a coalesced caller's p99 append latency may be, in ms
TARGET_COALESCED_SINGLE = 0.95  # a lone caller through the coalescer / today's single append
COALESCE_CALLERS = 64  # concurrent callers in one engine process (an asyncio engine's order flows)
# The p99 target holds at this multiple of the raw single-row commit rate offered (open loop).
PACED_MULTIPLE = 3.0
# A paced run reached its offered rate when it achieved at least this share of it (the last
# appends' own latency makes even a keeping-up run finish a little after the window).
PACED_REACHED = 0.95
PACED_P99_BASELINE = "target_5ms"  # the paced latency rows' baseline: the target itself
PACED_GRACE = 3.0  # a paced run's callers start no append later than this many windows after its start


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
        conn = sqlite_raw_conn(spec["path"])
        sql = f"INSERT INTO {spec['table']} (stream_id, stream_version, type, data, recorded_at) VALUES (?,?,?,?,?)"
        execute = conn.execute
        now = datetime.now
        utc = timezone.utc

        def append(stream: str) -> Any:  # autocommit: one transaction per row
            return execute(sql, (stream, 1, "OrderFilled", payload, now(utc).isoformat()))

        return append, conn.close
    if kind == "raw_pg":
        conn = PgTarget(spec["base_url"]).connect()
        conn.execute(f"SET synchronous_commit = {spec.get('synchronous_commit', 'on')}")
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
    """One timed append run: appends per second, p50 and p99 latency (seconds) and the count."""

    rate: float
    p50: float
    p99: float
    count: int


def _summarise(count: int, latencies: list[float], seconds: float) -> WriteRun:
    latencies.sort()
    return WriteRun(count / seconds, percentile(latencies, 0.5), percentile(latencies, 0.99), count)


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

    ctx = mp_context()
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


# ----------------------------------------------------------------------------- the group


def _append_rows(metric: str, backend: str, ours: WriteRun, baseline: str, base: WriteRun) -> list[Result]:
    return [
        result(metric, backend, ours.rate, EVENTS_PER_S, baseline, base.rate),
        result(f"{metric}_p50", backend, ours.p50, "ms", baseline, base.p50),
        result(f"{metric}_p99", backend, ours.p99, "ms", baseline, base.p99),
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
            log("  " + _describe(name, run) + (f" [round {round_no}]" if sizes.rounds > 1 else ""))
            if name not in best or run.rate > best[name].rate:
                best[name] = run
    return best


def bench_append_sqlite(workdir: str, sizes: Sizes, payload: bytes) -> list[Result]:
    """``append_single_1w`` on SQLite in ``workdir``: ``EventLog.append`` against raw single-row INSERT
    commits."""
    from ...adapters.store import open_store

    path = os.path.join(workdir, "append_single.db")
    open_store(f"sqlite:///{path}").close()
    raw_path = os.path.join(workdir, "append_single_raw.db")
    conn = sqlite_raw_conn(raw_path)
    conn.execute(raw_table_sql_sqlite("raw_events"))
    conn.close()
    log(f"sqlite append_single, 1 writer, {sizes.rounds} x {sizes.single_seconds:g} s each")
    best = _best_of_rounds({
        "raw INSERT commit": {"kind": "raw_sqlite", "path": raw_path, "table": "raw_events", "payload": payload},
        "ours": {"kind": "ours", "url": f"sqlite:///{path}", "payload": payload},
    }, 1, sizes)
    return (_append_rows("append_single_1w", "sqlite", best["ours"], "raw_insert_commit_1w", best["raw INSERT commit"])
            + bench_fencing(f"sqlite:///{path}", "sqlite", sizes, payload))


def bench_append_pg(pg: PgTarget, schema_for: Callable[[str], str], sizes: Sizes, payload: bytes) -> list[Result]:
    """``append_single_1w`` and ``append_single_<writers>w`` on PostgreSQL (a schema each from
    ``schema_for``), against raw INSERT commits and, as an extra, the library's default recorder."""
    from ...adapters.store import open_store

    results: list[Result] = []
    for writers in (1, sizes.writers):
        schema = schema_for(f"a{writers}")
        url = pg.url_for(schema)
        open_store(url).close()  # creates the schema and our tables
        with pg.connect() as conn:
            conn.execute(raw_table_sql_pg(schema, "raw_events"))
        datastore, recorder = _es_recorder(pg.base_url, schema, "es_events")
        recorder.create_table()
        datastore.close()
        label = f"{writers}w"
        log(f"postgresql append_single, {writers} writer{'s' if writers > 1 else ''}"
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
    url = pg.url_for(schema_for("f1"))
    open_store(url).close()
    results += bench_fencing(url, "postgresql", sizes, payload)
    return results


# ---------------------------------------------------------------------------- fencing cost


def _fenced_pair(url: str, payload: bytes) -> tuple[dict[str, Callable[[str], Any]], Callable[[], None]]:
    """Unfenced and fenced single-event appends through one store (one connection): the fenced
    ones carry the epoch of a lease this process took and renews from its thread as an engine
    does. Returns the two appenders and a closer."""
    from ...adapters.store import new_event, open_store
    from ...engines import EngineLease

    store = open_store(url, create=False)
    lease = EngineLease(store, "bench-engine", seconds=FENCE_LEASE_SECONDS, renew_seconds=FENCE_RENEW_SECONDS)
    try:
        lease.acquire()
        lease.start()
    except BaseException:
        store.close()
        raise
    fence = lease.fence
    log_append = store.trading.append

    def unfenced(stream: str) -> Any:
        return log_append([new_event(stream, 1, "OrderFilled", payload)])

    def fenced(stream: str) -> Any:
        return log_append([new_event(stream, 1, "OrderFilled", payload)], fence=fence)

    def close() -> None:
        lease.release("bench done")
        store.close()

    return {"unfenced": unfenced, "fenced": fenced}, close


def _interleaved(appenders: dict[str, Callable[[str], Any]], seconds_each: float, warmup: int) -> dict[str, WriteRun]:
    """Each appender for ``seconds_each`` in all, in alternating slices of about
    ``FENCE_SLICE_SECONDS`` (A B B A A B ...: neither always goes first)."""
    for append in appenders.values():
        for _ in range(warmup):
            append(f"warm-{uuid.uuid4()}")
    slices = max(2, round(seconds_each / FENCE_SLICE_SECONDS))
    length = seconds_each / slices
    counts = dict.fromkeys(appenders, 0)
    spent = dict.fromkeys(appenders, 0.0)
    latencies: dict[str, list[float]] = {name: [] for name in appenders}
    names = list(appenders)
    for k in range(slices):
        for name in (names if k % 2 == 0 else names[::-1]):
            start = time.time()
            n, lat, end = _timed_appends(appenders[name], start + length)
            counts[name] += n
            spent[name] += end - start
            latencies[name] += lat
    return {name: _summarise(counts[name], latencies[name], spent[name]) for name in names}


def bench_fencing(url: str, backend: str, sizes: Sizes, payload: bytes) -> list[Result]:
    """``append_single_fenced_1w`` on the store at ``url`` against unfenced appends, interleaved."""
    seconds_each = sizes.single_seconds * sizes.rounds
    log(f"{backend} append_single fenced vs unfenced, 1 writer, {seconds_each:g} s each in "
        f"{FENCE_SLICE_SECONDS * 1000:g} ms slices, interleaved")
    appenders, close = _fenced_pair(url, payload)
    try:
        runs = _interleaved(appenders, seconds_each, sizes.warmup)
    finally:
        close()
    for name, run in runs.items():
        log("  " + _describe(name, run))
    fenced, unfenced = runs["fenced"], runs["unfenced"]
    log(f"  fenced / unfenced: {fenced.rate / unfenced.rate:.3f}")
    return _append_rows("append_single_fenced_1w", backend, fenced, "unfenced_interleaved_1w", unfenced)


# ------------------------------------------------------------------------- coalesced commits


def _coalesced_threads(coalescer: Any, payload: bytes, callers: int, seconds: float) -> WriteRun:
    """``callers`` threads appending one event each call through ``coalescer`` for ``seconds``."""
    from ...adapters.store import new_event

    go = threading.Barrier(callers + 1)
    outcomes: list[tuple[int, list[float], float]] = []
    errors: list[BaseException] = []
    deadline = [0.0]

    def caller() -> None:
        latencies: list[float] = []
        clock = time.perf_counter
        append = coalescer.append
        n = 0
        try:
            go.wait(60)
            end = deadline[0]
            while clock() < end:
                stream = f"order-{uuid.uuid4()}"
                t0 = clock()
                append([new_event(stream, 1, "OrderFilled", payload)])
                latencies.append((clock() - t0) * 1000.0)
                n += 1
        except BaseException as e:  # noqa: BLE001 - reported by the runner
            errors.append(e)
        outcomes.append((n, latencies, clock()))

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(callers)]
    for t in threads:
        t.start()
    start = time.perf_counter()
    deadline[0] = start + seconds
    go.wait(60)
    for t in threads:
        t.join(seconds + 120)
    if errors:
        raise RuntimeError(f"a coalesced caller failed: {type(errors[0]).__name__}: {errors[0]}")
    total = sum(n for n, _, _ in outcomes)
    latencies = [x for _, lat, _ in outcomes for x in lat]
    end = max(t for _, _, t in outcomes)
    return _summarise(total, latencies, end - start)


@dataclass
class PacedRun:
    """One open-loop run: the rate offered (scheduled appends / window), the rate achieved
    (appends done / time until the last one finished), p50/p99 latency in ms measured from each
    append's scheduled time (so falling behind counts), the appends done and those scheduled."""

    offered: float
    achieved: float
    p50: float
    p99: float
    count: int
    scheduled: int


def _paced_schedule(callers: int, offered_rate: float, seconds: float, poisson: bool,
                    seed: int = 16) -> list[list[float]]:
    """Each caller's scheduled append times, in seconds from the start of the window: together
    ``offered_rate`` appends per second for ``seconds``. Evenly spaced: caller ``i`` every
    ``callers / offered_rate`` s, phases staggered so the callers' arrivals interleave evenly;
    ``poisson``: each caller's gaps exponential with the same mean (a Poisson process overall)."""
    if not (offered_rate > 0 and seconds > 0 and callers > 0):
        raise ValueError("a paced run needs callers, a positive offered rate and a positive window")
    import random

    gap = callers / offered_rate
    rng = random.Random(seed)
    schedules = []
    for i in range(callers):
        times, t = [], (rng.expovariate(1.0 / gap) if poisson else gap * i / callers)
        while t < seconds:
            times.append(t)
            t += rng.expovariate(1.0 / gap) if poisson else gap
        schedules.append(times)
    return schedules


def _coalesced_paced_threads(coalescer: Any, payload: bytes, callers: int, offered_rate: float, seconds: float,
                             poisson: bool = False) -> PacedRun:
    """Open loop: ``callers`` threads, each appending one event at its own scheduled times
    (``_paced_schedule``), together offering ``offered_rate`` appends per second for ``seconds``.
    A caller that falls behind appends at once (no waiting for the next slot), and its latency
    counts from the scheduled time, so lagging behind the offered rate shows in p99 (no
    coordinated omission). Callers stop starting appends at ``PACED_GRACE`` windows past the
    start: what was scheduled and not started by then is not done (the achieved rate shows it)."""
    from ...adapters.store import new_event

    schedules = _paced_schedule(callers, offered_rate, seconds, poisson)
    go = threading.Barrier(callers + 1)
    outcomes: list[tuple[list[float], float]] = []
    errors: list[BaseException] = []
    origin = [0.0]

    def caller(times: list[float]) -> None:
        latencies: list[float] = []
        clock = time.perf_counter
        sleep = time.sleep
        append = coalescer.append
        last = 0.0
        try:
            go.wait(60)
            start = origin[0]
            give_up = start + seconds * PACED_GRACE
            for offset in times:
                due = start + offset
                if (pause := due - clock()) > 0:
                    sleep(pause)
                elif clock() > give_up:
                    break
                append([new_event(f"order-{uuid.uuid4()}", 1, "OrderFilled", payload)])
                last = clock()
                latencies.append((last - due) * 1000.0)
        except BaseException as e:  # noqa: BLE001 - reported by the runner
            errors.append(e)
        outcomes.append((latencies, last))

    threads = [threading.Thread(target=caller, args=(times,), daemon=True) for times in schedules]
    for t in threads:
        t.start()
    origin[0] = time.perf_counter() + 0.05  # every caller is past the barrier by then
    go.wait(60)
    for t in threads:
        t.join(seconds * PACED_GRACE + 120)
    if errors:
        raise RuntimeError(f"a paced coalesced caller failed: {type(errors[0]).__name__}: {errors[0]}")
    latencies = sorted(x for lat, _ in outcomes for x in lat)
    scheduled = sum(len(times) for times in schedules)
    finished = max([origin[0] + seconds] + [end for _, end in outcomes])
    return PacedRun(offered=scheduled / seconds, achieved=len(latencies) / (finished - origin[0]),
                    p50=percentile(latencies, 0.5), p99=percentile(latencies, 0.99), count=len(latencies),
                    scheduled=scheduled)


def _describe_paced(label: str, run: PacedRun) -> str:
    return (f"{label}: offered {run.offered:,.0f} events/s, achieved {run.achieved:,.0f} "
            f"({run.achieved / run.offered:.2f}x), p50 {run.p50:.3f} ms, p99 {run.p99:.3f} ms from the scheduled "
            f"time ({run.count:,} of {run.scheduled:,} appends)")


def _coalesced_async(coalescer: Any, payload: bytes, callers: int, seconds: float) -> WriteRun:
    """``callers`` asyncio tasks awaiting ``append_async`` of one event each for ``seconds``."""
    from ...adapters.store import new_event

    async def main() -> WriteRun:
        clock = time.perf_counter
        latencies: list[float] = []
        counts = [0]
        end = clock() + seconds

        async def flow() -> None:
            append = coalescer.append_async
            while clock() < end:
                stream = f"order-{uuid.uuid4()}"
                t0 = clock()
                await append([new_event(stream, 1, "OrderFilled", payload)])
                latencies.append((clock() - t0) * 1000.0)
                counts[0] += 1

        start = clock()
        await asyncio.gather(*[flow() for _ in range(callers)])
        return _summarise(counts[0], latencies, clock() - start)

    return asyncio.run(main())


def _client_flows(url: str, coalesce: bool, callers: int, seconds: float) -> WriteRun:
    """``callers`` asyncio order flows, each recording one-share fills of its own open order
    through the async client for ``seconds`` (today's client, or a coalescing one)."""
    from ... import connect_async

    async def main() -> WriteRun:
        client = await connect_async(url, venue="sim", coalesce=coalesce)
        tag = uuid.uuid4().hex[:8]
        async with client:
            for i in range(callers):
                await client.record_intent(f"acct-{i % 8}", f"{tag}-{i}", "AAPL", "buy", "1000000", reference_price="1")
                await client.record_submitted(f"acct-{i % 8}", f"{tag}-{i}")
            clock = time.perf_counter
            latencies: list[float] = []
            counts = [0]
            end = clock() + seconds

            async def flow(i: int) -> None:
                k = 0
                while clock() < end:
                    k += 1
                    t0 = clock()
                    await client.record_fill(f"acct-{i % 8}", f"{tag}-{i}", f"{tag}-{i}-{k}", "1", "1")
                    latencies.append((clock() - t0) * 1000.0)
                    counts[0] += 1

            start = clock()
            await asyncio.gather(*[flow(i) for i in range(callers)])
            return _summarise(counts[0], latencies, clock() - start)

    return asyncio.run(main())


def bench_coalesced(url: str, backend: str, raw_spec: dict[str, Any], sizes: Sizes, payload: bytes) -> list[Result]:
    """``append_coalesced_*`` on the store at ``url`` against raw single-row commits (``raw_spec``)
    and today's single append, interleaved in the same run."""
    from ...adapters.store import new_event, open_store
    from ...adapters.store.coalesce import CommitCoalescer

    callers = COALESCE_CALLERS
    seconds = sizes.single_seconds
    log(f"{backend} append_coalesced: raw single-row commits vs {callers} coalesced callers (threads, asyncio), "
        f"{sizes.rounds} round(s) x {seconds:g} s each, interleaved")
    store = open_store(url, create=False)
    coalescer = CommitCoalescer(store.trading)
    runs: dict[str, list[WriteRun]] = {"raw": [], "threads": [], "asyncio": [], "client today": [],
                                       "client coalesced": []}
    paced: list[PacedRun] = []
    try:
        for _ in range(sizes.warmup):
            coalescer.append([new_event(f"warm-{uuid.uuid4()}", 1, "OrderFilled", payload)])
        for round_no in range(1, sizes.rounds + 1):
            runs["raw"].append(_run_writers(raw_spec, 1, sizes))
            # Open loop at 3x the best raw rate measured so far in this run (the baseline the
            # rows report), right after the raw run it is paced by.
            offered = PACED_MULTIPLE * max(r.rate for r in runs["raw"])
            paced.append(_coalesced_paced_threads(coalescer, payload, callers, offered, seconds))
            log(f"  {_describe_paced(f'threads paced at {PACED_MULTIPLE:g}x raw', paced[-1])} [round {round_no}, "
                f"load {os.getloadavg()[0]:.2f}]")
            runs["threads"].append(_coalesced_threads(coalescer, payload, callers, seconds))
            runs["asyncio"].append(_coalesced_async(coalescer, payload, callers, seconds))
            runs["client today"].append(_client_flows(url, False, callers, seconds))
            runs["client coalesced"].append(_client_flows(url, True, callers, seconds))
            raw = runs["raw"][-1].rate
            for name, variant in runs.items():
                run = variant[-1]
                log(f"  {_describe(name, run)} = {run.rate / raw:.2f}x raw [round {round_no}, load "
                    f"{os.getloadavg()[0]:.2f}]")
        stats = coalescer.stats
        log(f"  coalescer: {stats.batches:,} commits for {stats.callers:,} callers "
            f"({stats.callers / max(stats.batches, 1):.1f} per commit, largest {stats.largest})")
        log(f"{backend} append_coalesced_single: one caller through the coalescer vs today's append, "
            f"{seconds * sizes.rounds:g} s each in {FENCE_SLICE_SECONDS * 1000:g} ms slices, interleaved")
        log_append = store.trading.append
        single = _interleaved({
            "today": lambda stream: log_append([new_event(stream, 1, "OrderFilled", payload)]),
            "coalesced": lambda stream: coalescer.append([new_event(stream, 1, "OrderFilled", payload)]),
        }, seconds * sizes.rounds, sizes.warmup)
    finally:
        coalescer.close()
        store.close()
    for name, run in single.items():
        log("  " + _describe(name, run))
    log(f"  coalesced / today: {single['coalesced'].rate / single['today'].rate:.3f}")
    best = {name: max(variant, key=lambda r: r.rate) for name, variant in runs.items()}
    for name, variant in runs.items():
        rates = [r.rate for r in variant]
        log(f"  {name}: best {max(rates):,.0f}, worst {min(rates):,.0f} events/s over {len(rates)} round(s)")
    label = str(callers)
    # The paced round kept: the lowest p99 among the rounds that reached their offered rate (all
    # rounds when none did), as the best round is kept for the rates.
    reached = [r for r in paced if r.achieved >= PACED_REACHED * r.offered]
    at = min(reached or paced, key=lambda r: r.p99)
    log(f"  threads paced: p99 {min(r.p99 for r in paced):.2f}-{max(r.p99 for r in paced):.2f} ms over "
        f"{len(paced)} round(s), {len(reached)} reached the offered rate")
    at_label = f"append_coalesced_{label}t_at{PACED_MULTIPLE:g}x"
    return (_append_rows(f"append_coalesced_{label}t", backend, best["threads"], "raw_insert_commit_1w", best["raw"])
            + [result(at_label, backend, at.achieved, EVENTS_PER_S, f"offered_{PACED_MULTIPLE:g}x_raw_1w", at.offered),
               result(f"{at_label}_p50", backend, at.p50, "ms", PACED_P99_BASELINE, TARGET_COALESCED_P99_MS),
               result(f"{at_label}_p99", backend, at.p99, "ms", PACED_P99_BASELINE, TARGET_COALESCED_P99_MS)]
            + _append_rows(f"append_coalesced_{label}a", backend, best["asyncio"], "raw_insert_commit_1w", best["raw"])
            + _append_rows("append_coalesced_single_1w", backend, single["coalesced"], "single_interleaved_1w",
                           single["today"])
            + _append_rows(f"append_coalesced_client_{label}a", backend, best["client coalesced"],
                           "raw_insert_commit_1w", best["raw"])
            + _append_rows(f"append_coalesced_client_{label}a", backend, best["client coalesced"],
                           "async_client_today", best["client today"]))


def bench_coalesced_sqlite(workdir: str, sizes: Sizes, payload: bytes) -> list[Result]:
    """``append_coalesced_*`` on a fresh SQLite file, raw commits into another file."""
    from ...adapters.store import open_store

    path = os.path.join(workdir, "append_coalesced.db")
    open_store(f"sqlite:///{path}").close()
    raw_path = os.path.join(workdir, "append_coalesced_raw.db")
    conn = sqlite_raw_conn(raw_path)
    conn.execute(raw_table_sql_sqlite("raw_events"))
    conn.close()
    raw = {"kind": "raw_sqlite", "path": raw_path, "table": "raw_events", "payload": payload}
    return bench_coalesced(f"sqlite:///{path}", "sqlite", raw, sizes, payload)


def bench_coalesced_pg(pg: PgTarget, schema_for: Callable[[str], str], sizes: Sizes, payload: bytes) -> list[Result]:
    """``append_coalesced_*`` on PostgreSQL, in a fresh schema with its raw table."""
    from ...adapters.store import open_store

    schema = schema_for("c64")
    url = pg.url_for(schema)
    open_store(url).close()
    with pg.connect() as conn:
        conn.execute(raw_table_sql_pg(schema, "raw_events"))
    raw = {"kind": "raw_pg", "base_url": pg.base_url, "schema": schema, "table": "raw_events", "payload": payload}
    return bench_coalesced(url, "postgresql", raw, sizes, payload)


def run(ctx: BenchContext) -> list[Result]:
    """Measure on each backend asked for; return the rows."""
    payload = fill_payload()
    results: list[Result] = []
    if "sqlite" in ctx.backends:
        results += bench_append_sqlite(ctx.workdir, ctx.sizes, payload)
        results += bench_coalesced_sqlite(ctx.workdir, ctx.sizes, payload)
    if ctx.pg is not None:
        results += bench_append_pg(ctx.pg, ctx.schema_for, ctx.sizes, payload)
        results += bench_coalesced_pg(ctx.pg, ctx.schema_for, ctx.sizes, payload)
    return results


def targets(results: list[Result]) -> list[tuple[bool, str]]:
    """(met, line) for each target of this group found in results."""
    checks: list[tuple[bool, str]] = []
    for r in results:
        if r.metric.startswith("append_single_") and r.metric.endswith("w") and r.baseline.startswith("raw_"):
            checks += ratio_checks(results, r.metric, r.backend, r.baseline, TARGET_SINGLE,
                                   "raw single-row commit rate, same writers")
        if r.metric == "append_single_fenced_1w":
            checks += ratio_checks([r], r.metric, r.backend, r.baseline, TARGET_FENCED,
                                   "the unfenced rate, interleaved in the same run (fencing costs <= 10 %)")
        # The saturated rows (every caller appending again at once) carry the throughput target;
        # their latency is Little's law (callers / throughput) and informs only. The latency
        # target is the paced row's: p99 with 3x the raw rate offered (the client row informs).
        coalesced = r.metric.startswith("append_coalesced_") and "_client_" not in r.metric
        if coalesced and r.metric[-1] in "ta" and r.baseline.startswith("raw_"):
            checks += ratio_checks([r], r.metric, r.backend, r.baseline, TARGET_COALESCED,
                                   f"the raw single-row commit rate of one writer, same run (saturated: "
                                   f"{r.value:,.0f} vs {r.baseline_value:,.0f} events/s)")
        if coalesced and r.metric.endswith(f"_at{PACED_MULTIPLE:g}x_p99"):
            checks.append(_paced_check(r, results))
        if r.metric == "append_coalesced_single_1w":
            checks += ratio_checks([r], r.metric, r.backend, r.baseline, TARGET_COALESCED_SINGLE,
                                   "today's single append, interleaved in the same run")
    return checks


def _paced_check(p99: Result, results: list[Result]) -> tuple[bool, str]:
    """(met, line) for a paced p99 row: met when the p99 is within the target and the run reached
    the rate it was offered (its achieved-rate row, same backend); a run that fell short is
    MISSED whatever its p99."""
    rate_metric = p99.metric[: -len("_p99")]
    rate = next((r for r in results if r.metric == rate_metric and r.backend == p99.backend), None)
    p50 = next((r for r in results if r.metric == f"{rate_metric}_p50" and r.backend == p99.backend), None)
    head = (f"{p99.metric} ({p99.backend}): p99 {p99.value:.2f} ms"
            + (f" (p50 {p50.value:.2f} ms)" if p50 is not None else "")
            + f" per append from its scheduled time, {PACED_MULTIPLE:g}x the raw single-row commit rate offered")
    # The JSON's ratio is the line's last N.NNx: here p99 / target, as the memory targets state it.
    target = (f"= {p99.value / TARGET_COALESCED_P99_MS:.2f}x the target (target <= {TARGET_COALESCED_P99_MS:g} ms "
              f"with >= {PACED_REACHED * 100:g} % of the offered rate achieved)")
    # Each batch is one commit: a raw single-row commit's own p99 in this run bounds what any
    # caller can see, so the line states it.
    raw = next((r for r in results if r.metric == "append_single_1w_p99" and r.backend == p99.backend
                and r.baseline.startswith("raw_")), None)
    if raw is not None:
        head += f" (a raw single-row commit's own p99 in this run: {raw.baseline_value:.2f} ms)"
    if rate is None:
        return False, f"{head}; no achieved-rate row {rate_metric}, so the offered rate is not shown reached {target}"
    reached = rate.ratio >= PACED_REACHED
    how = (f"{rate.baseline_value:,.0f} events/s offered, {rate.value:,.0f} achieved = {rate.ratio:.2f}x of it"
           + ("" if reached else ": the offered rate was NOT reached"))
    return reached and p99.value <= TARGET_COALESCED_P99_MS, f"{head} ({how}) {target}"
