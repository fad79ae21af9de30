"""``tradestate bench`` group ``projection``: the read models' catch-up and live lag.

* ``projection_catchup``: a rebuild of every read-model table from N realistic events (one
  transaction per page), beside a raw read + ``orjson.loads`` of the same rows in the same run,
  and beside the ``eventsourcing`` library's ``ProjectionRunner`` (one transaction per event) on
  PostgreSQL, where it can run (its SQLite recorder has no subscription).
* ``projection_live_lag``: milliseconds from an append's commit to its rows being committed in
  the tables, under a steady append load (2,000 events/s) on PostgreSQL, with a follower process.

Targets (absolute): catch-up >= 100,000 events/s, live lag p99 <= 20 ms.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import singledispatchmethod
from typing import Any

import orjson
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.projection import Projection
from psycopg.sql import SQL, Identifier

from .common import (
    EVENTS_PER_S,
    BenchContext,
    PgTarget,
    Result,
    Sizes,
    log,
    mp_context,
    percentile,
    result,
    sqlite_raw_conn,
)
from .logs import TradingLogs

LIVE_RATE = 2_000  # events/s appended during the live-lag measurement
TARGET_CATCHUP = 100_000  # events/s into the read-model tables
TARGET_LAG_P99_MS = 20.0  # append commit -> table row, at 2,000 appends/s


def _sizes(sizes: Sizes) -> tuple[int, float, int]:
    """(catch-up events, live seconds, ProjectionRunner events) for this run's size."""
    quick = sizes.replay_events < 1_000_000
    return (sizes.replay_events, 3.0 if quick else 10.0, 1_000 if quick else 10_000)


def _catchup(url: str) -> tuple[int, float]:
    from ...adapters.store import open_store
    from ...projections.projector import Projector

    with open_store(url) as store:
        projector = Projector(store)
        t0 = time.perf_counter()
        reached = projector.rebuild()
        return reached, time.perf_counter() - t0


# ------------------------------------------------------------------------------ SQLite


def bench_projection_sqlite(logs: TradingLogs, sizes: Sizes) -> list[Result]:
    """``projection_catchup`` on SQLite: a rebuild of the read models from N events (into a copy
    of the run's shared log: the rebuild writes tables) against a raw read of the same rows."""
    n, _live, _runner = _sizes(sizes)
    log(f"sqlite projection: {n:,} events")
    path = logs.sqlite_copy(n, "projection")
    url = f"sqlite:///{path}"
    conn = sqlite_raw_conn(path)
    t0 = time.perf_counter()
    count = 0
    for row in conn.execute("SELECT position, stream_id, stream_version, type, data, recorded_at FROM ts_events "
                            "ORDER BY position"):
        orjson.loads(row[4])
        count += 1
    raw = count / (time.perf_counter() - t0)
    conn.close()
    reached, seconds = _catchup(url)
    logs.discard(n, "sqlite", path)
    log(f"  rebuild: {reached / seconds:,.0f} events/s ({seconds:.2f} s); raw read+decode {raw:,.0f}/s")
    return [
        result("projection_catchup", "sqlite", reached / seconds, EVENTS_PER_S, "raw_select_orjson", raw),
        result("projection_catchup_duration", "sqlite", seconds, "s", "raw_select_orjson", n / raw),
    ]


# -------------------------------------------------------------------------- PostgreSQL


def bench_projection_pg(pg: PgTarget, schema_for: Callable[[str], str], sizes: Sizes,
                        logs: TradingLogs) -> list[Result]:
    """``projection_catchup`` and ``projection_live_lag`` on PostgreSQL (schemas from ``schema_for``),
    the catch-up also against the library's ``ProjectionRunner``."""
    n, live_seconds, runner_events = _sizes(sizes)
    log(f"postgresql projection: {n:,} events")
    schema = logs.pg_copy(n, "p")  # the rebuild writes tables: a copy of the run's shared log
    url = pg.url_for(schema)
    table = f'"{schema}".ts_events'
    with pg.connect() as conn:
        t0 = time.perf_counter()
        count = 0
        last = 0
        cur = conn.cursor(binary=True)
        while True:
            rows = cur.execute(
                f"SELECT position, stream_id, stream_version, type, data, recorded_at FROM {table} "
                "WHERE position > %s ORDER BY position LIMIT 10000", (last,)).fetchall()
            if not rows:
                break
            for row in rows:
                orjson.loads(row[4])
            count += len(rows)
            last = rows[-1][0]
        raw = count / (time.perf_counter() - t0)
    reached, seconds = _catchup(url)
    logs.discard(n, "postgresql", schema)
    log(f"  rebuild: {reached / seconds:,.0f} events/s ({seconds:.2f} s); raw read+decode {raw:,.0f}/s")
    results = [
        result("projection_catchup", "postgresql", reached / seconds, EVENTS_PER_S, "raw_select_orjson", raw),
        result("projection_catchup_duration", "postgresql", seconds, "s", "raw_select_orjson", n / raw),
    ]
    runner_rate = _eventsourcing_runner(pg, schema_for("pr"), runner_events)
    results.append(result("projection_catchup", "postgresql", reached / seconds, EVENTS_PER_S,
                          "eventsourcing_projection_runner", runner_rate))
    p50, p99 = _live_lag(pg.url_for(schema_for("pl")), live_seconds)
    # The target is absolute (p99 <= 20 ms): the "baseline" column carries the target itself.
    results.append(result("projection_live_lag_p50", "postgresql", p50, "ms", "target_20ms", TARGET_LAG_P99_MS))
    results.append(result("projection_live_lag_p99", "postgresql", p99, "ms", "target_20ms", TARGET_LAG_P99_MS))
    return results


# ----------------------------------------------------------- eventsourcing ProjectionRunner
# Module level: the library finds event classes again by their topic (module:qualname).


class RunnerBook(Aggregate):
    """The library-baseline aggregate: a book opened once, then one event per fill."""

    @event("Opened")
    def __init__(self, symbol: str):
        self.symbol = symbol

    @event("Filled")
    def fill(self, qty: int) -> None:
        """Record a fill of ``qty`` (an event; no state kept)."""


class RunnerTrading(Application):
    """The library-baseline application holding ``RunnerBook`` aggregates."""


class RunnerPositionsView(PostgresTrackingRecorder):
    """The library-baseline view: a quantity per book, written
    with its tracking row in one transaction."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.sql_create_statements.append(SQL(
            "CREATE TABLE IF NOT EXISTS {}.bench_positions (book_id uuid PRIMARY KEY, qty bigint)"
        ).format(Identifier(self.datastore.schema)))

    def fill(self, book_id: Any, qty: int, tracking: Tracking) -> None:
        """Add ``qty`` to the book's row and record ``tracking``, in one transaction."""
        with self.datastore.transaction(commit=True) as curs:
            self._insert_tracking(curs, tracking)
            curs.execute(SQL(
                "INSERT INTO {}.bench_positions VALUES (%s, %s) ON CONFLICT (book_id) DO UPDATE "
                "SET qty = bench_positions.qty + EXCLUDED.qty").format(Identifier(self.datastore.schema)),
                (book_id, qty))


class RunnerPositions(Projection[RunnerPositionsView]):
    """The library-baseline projection of ``RunnerBook`` fills into ``RunnerPositionsView``."""

    name = "positions"

    @singledispatchmethod
    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """Any other event: record its tracking only."""
        self.view.insert_tracking(tracking)

    @process_event.register(RunnerBook.Filled)
    def _(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.fill(domain_event.originator_id, domain_event.qty, tracking)


def _eventsourcing_runner(pg: PgTarget, schema: str, n: int) -> float:
    """The library's own path: ProjectionRunner feeding a PostgresTrackingRecorder view, one
    transaction (tracking row + upsert) per event."""
    from eventsourcing.projection import ProjectionRunner

    p = pg.parts
    env = {"PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": p["dbname"],
           "POSTGRES_HOST": p["host"], "POSTGRES_PORT": str(p["port"]), "POSTGRES_USER": p["user"],
           "POSTGRES_PASSWORD": p["password"], "POSTGRES_SCHEMA": schema}
    with pg.connect() as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    app = RunnerTrading(env=env)
    books = [RunnerBook(f"S{i}") for i in range(20)]
    app.save(*books)
    per_save = 100
    for i in range(0, n - len(books), per_save):
        for j in range(per_save):
            books[(i + j) % len(books)].fill(qty=1)
        app.save(*books)
    last = app.recorder.max_notification_id()
    app.close()
    log(f"  eventsourcing ProjectionRunner: catching up {last:,} events, one transaction each")
    t0 = time.perf_counter()
    with ProjectionRunner(application_class=RunnerTrading, projection_class=RunnerPositions,
                          view_class=RunnerPositionsView, env=env) as runner:
        runner.wait(last, timeout=600)
    rate = last / (time.perf_counter() - t0)
    log(f"  eventsourcing ProjectionRunner: {rate:,.0f} events/s")
    return rate


# -------------------------------------------------------------------------- live lag


def _live_follower(url: str, stop: Any, out: Any) -> None:
    from ...adapters.store import open_store
    from ...projections.projector import Projector

    store = open_store(url)
    projector = Projector(store, page=2_000)
    projector.load()
    seen: list[tuple[int, float]] = []  # (position reached, wall time its page committed)
    idle = 0.0005
    while not stop.is_set():
        if projector.run_once():
            seen.append((projector.state.position, time.time()))
            idle = 0.0005
        else:
            time.sleep(idle)
            idle = min(idle * 2, 0.002)
    projector.catch_up()
    seen.append((projector.state.position, time.time()))
    out.put(seen)
    store.close()


def _live_lag(url: str, seconds: float) -> tuple[float, float]:
    from ...adapters.store import new_event, open_store

    store = open_store(url)
    store.close()
    ctx = mp_context()
    stop, out = ctx.Event(), ctx.Queue()
    follower = ctx.Process(target=_live_follower, args=(url, stop, out))
    follower.start()
    time.sleep(1.0)  # let it load
    store = open_store(url)
    commits: list[tuple[int, float]] = []
    interval = 1.0 / LIVE_RATE
    start = time.perf_counter()
    next_at = start
    i = 0
    while time.perf_counter() - start < seconds:
        # Signals are cheap to fold and touch one row: the lag measured is the pipeline's.
        appended = store.trading.append([new_event(f"strategy-lag{i % 50}", i // 50 + 1, "SignalRecorded",
                                                   _signal(i))])
        commits.append((appended[0].position, time.time()))
        i += 1
        next_at += interval
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    achieved = i / (time.perf_counter() - start)
    time.sleep(0.2)
    stop.set()
    seen = out.get(timeout=60)
    follower.join(timeout=30)
    store.close()
    lags: list[float] = []
    k = 0
    for position, committed_at in commits:
        while k < len(seen) and seen[k][0] < position:
            k += 1
        if k < len(seen):
            lags.append(max(0.0, seen[k][1] - committed_at) * 1000)
    lags.sort()
    log(f"  live lag at {achieved:,.0f} appends/s: p50 {percentile(lags, 0.5):.2f} ms, "
        f"p99 {percentile(lags, 0.99):.2f} ms over {len(lags):,} events")
    return percentile(lags, 0.5), percentile(lags, 0.99)


def _signal(i: int) -> bytes:
    return orjson.dumps({"event_id": f"00000000-0000-4000-8000-{i:012d}", "occurred_at": None,
                         "correlation_id": None, "causation_id": None, "strategy_id": f"lag{i % 50}",
                         "symbol": "AAPL", "signal": "buy", "value": "1", "attributes": {}, "_v": 1})


# ----------------------------------------------------------------------------- the group


def run(ctx: BenchContext) -> list[Result]:
    """Measure on each backend asked for; return the rows."""
    results: list[Result] = []
    if "sqlite" in ctx.backends:
        results += bench_projection_sqlite(ctx.logs, ctx.sizes)
    if ctx.pg is not None:
        results += bench_projection_pg(ctx.pg, ctx.schema_for, ctx.sizes, ctx.logs)
    return results


def targets(results: list[Result]) -> list[tuple[bool, str]]:
    """(met, line) for each target of this group found in results."""
    checks: list[tuple[bool, str]] = []
    for r in results:
        if r.metric == "projection_catchup" and r.baseline == "raw_select_orjson":
            checks.append((r.value >= TARGET_CATCHUP,
                           f"projection_catchup ({r.backend}): {r.value:,.0f} events/s (target >= {TARGET_CATCHUP:,})"))
        if r.metric == "projection_live_lag_p99":
            checks.append((r.value <= TARGET_LAG_P99_MS,
                           f"projection_live_lag_p99 ({r.backend}): {r.value:.2f} ms (target <= {TARGET_LAG_P99_MS:g} ms)"))
    return checks
