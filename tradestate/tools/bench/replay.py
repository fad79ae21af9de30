"""``tradestate bench`` group ``replay``: positions folded from a log of N realistic trading events.

``replay``             ``iter_rows`` and the ``PositionBook`` projection (which decodes only
                       intents and fills: the ``type`` column says which rows matter) against a
                       raw read + ``orjson.loads`` of every row of the same table (the faster of
                       several raw read strategies), ``COPY ... TO STDOUT`` on PostgreSQL, and an
                       ``eventsourcing`` application (default mapper and JSON transcoder) reading
                       back the same number of fill events with ``select_notifications`` +
                       ``to_domain_event`` and folding them into positions.
``replay_full_state``  the whole ``TradingState`` (orders, positions, risk, signals) folded from
                       the same rows, as a client opens.

Targets: ours / raw read >= 0.6, ours / eventsourcing >= 3.
"""

from __future__ import annotations

import gc
import os
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from .common import EVENTS_PER_S, BenchContext, PgTarget, Result, Sizes, log, ratio_checks, result
from .logs import (
    ACCOUNTS,
    SYMBOLS,
    raw_pg_copy,
    raw_pg_keyset,
    raw_pg_server_cursor,
    raw_sqlite_cursor,
    raw_sqlite_keyset,
)

TARGET_REPLAY_RAW = 0.6  # the least ours / raw read + decode rate
TARGET_REPLAY_ES = 3.0  # the least ours / eventsourcing default replay rate


# ------------------------------------------------------------------------------- our path


def _replay_ours(event_log: Any) -> tuple[int, float]:
    """Positions folded from the whole log (the projection decodes only intents and fills)."""
    from ...adapters.store import gc_paused
    from .positions import PositionBook

    book = PositionBook()
    t0 = time.perf_counter()
    with gc_paused():
        count = book.fold_rows(event_log.iter_rows(0))
    elapsed = time.perf_counter() - t0
    del book
    gc.collect()
    return count, elapsed


def _replay_state(event_log: Any) -> tuple[int, float]:
    """The whole trading state (orders, positions, risk, signals) folded, as a client opens."""
    from ...adapters.store import gc_paused
    from ...domain.state import TradingState

    state = TradingState()
    apply = state.apply
    loads = orjson.loads
    t0 = time.perf_counter()
    with gc_paused():
        for position, stream, version, type_name, data, recorded_at in event_log.iter_rows(0):
            apply(position, stream, version, type_name, loads(data), recorded_at)
    elapsed = time.perf_counter() - t0
    count = state.position
    del state, apply
    gc.collect()
    return count, elapsed


# ------------------------------------------------------------------ eventsourcing default


class BenchPosition(Aggregate):
    """A position aggregate of the eventsourcing baseline: opened once, then one event per fill."""

    @event("Opened")
    def __init__(self, account: str, venue: str, symbol: str):
        self.account, self.venue, self.symbol = account, venue, symbol

    @event("Filled")
    def fill(self, order_id: str, exec_id: str, side: str, qty: Decimal, price: Decimal, fee: Decimal,
             occurred_at: datetime) -> None:
        """Record a fill (an event; the baseline folds positions from the events, not here)."""


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
    for account in ACCOUNTS:
        for symbol, base in SYMBOLS:
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
    log(f"  eventsourcing: loaded {n:,} events in {load:.1f} s (its mapper + recorder.insert_events, 10k per call)")
    return app, lambda page: _es_replay(app, position_cls, page)


def _replay_rounds(variants: dict[str, Callable[[], tuple[int, float]]], n: int, repeats: int) -> dict[str, float]:
    """Every variant once per round, interleaved; each variant's best rate."""
    best: dict[str, float] = {}
    for round_no in range(1, max(1, repeats) + 1):
        for name, measure in variants.items():
            count, elapsed = measure()
            if count != n:
                raise RuntimeError(f"{name}: read {count:,} events, expected {n:,}")
            log(f"  {name}: {count / elapsed:,.0f} events/s ({elapsed:.2f} s)"
                + (f" [round {round_no}]" if repeats > 1 else ""))
            best[name] = max(best.get(name, 0.0), count / elapsed)
    return best


OURS_REPLAY = "ours: iter_rows + PositionBook (decodes intents and fills only)"
OURS_STATE = "ours: iter_rows + orjson.loads + TradingState.apply (whole state)"
ES_REPLAY = "eventsourcing default: select_notifications + to_domain_event + fold"


# ----------------------------------------------------------------------------- the group


def bench_replay_sqlite(workdir: str, sizes: Sizes, path: str) -> list[Result]:
    """``replay`` and ``replay_full_state`` on SQLite (the log at ``path``, read only; files of its own
    in ``workdir``), best of ``sizes.repeats``, against raw reads and the library's application."""
    from ...adapters.store import open_store

    n = sizes.replay_events
    log(f"sqlite replay: {n:,} events")

    app, es_replay = _es_app(
        {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": os.path.join(workdir, f"replay_es_{n}.db")}, n)
    try:
        with open_store(f"sqlite:///{path}", create=False) as store:
            best = _replay_rounds({
                "raw SELECT (one cursor) + orjson.loads": lambda: raw_sqlite_cursor(path, sizes.page),
                "raw SELECT (keyset pages) + orjson.loads": lambda: raw_sqlite_keyset(path, sizes.page),
                OURS_REPLAY: lambda: _replay_ours(store.trading),
                OURS_STATE: lambda: _replay_state(store.trading),
                ES_REPLAY: lambda: es_replay(sizes.page),
            }, n, sizes.repeats)
    finally:
        app.close()
    ours = best[OURS_REPLAY]
    raw = max(v for k, v in best.items() if k.startswith("raw SELECT"))
    return [
        result("replay", "sqlite", ours, EVENTS_PER_S, "raw_select_orjson", raw),
        result("replay_duration", "sqlite", n / ours, "s", "raw_select_orjson", n / raw),
        result("replay", "sqlite", ours, EVENTS_PER_S, "eventsourcing_default", best[ES_REPLAY]),
        result("replay_full_state", "sqlite", best[OURS_STATE], EVENTS_PER_S, "raw_select_orjson", raw),
        result("replay_full_state", "sqlite", best[OURS_STATE], EVENTS_PER_S, "eventsourcing_default", best[ES_REPLAY]),
    ]


def bench_replay_pg(pg: PgTarget, schema_for: Callable[[str], str], sizes: Sizes, schema: str) -> list[Result]:
    """``replay`` and ``replay_full_state`` on PostgreSQL (the log in ``schema``, read only; the
    library's application in a schema from ``schema_for``), against raw reads, COPY and the
    library's application."""
    from ...adapters.store import open_store

    n = sizes.replay_events
    url = pg.url_for(schema)
    table = f'"{schema}".ts_events'
    with pg.connect() as conn:
        size = conn.execute(f"SELECT pg_total_relation_size('{table}')").fetchone()[0]
    log(f"postgresql replay: {n:,} events ({size / 1e6:,.0f} MB with indexes)")

    es_schema = schema_for("res")  # the library's tables apart from the shared log
    with pg.connect() as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{es_schema}"')
    p = pg.parts
    app, es_replay = _es_app(
        {"PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": p["dbname"], "POSTGRES_HOST": p["host"],
         "POSTGRES_PORT": str(p["port"]), "POSTGRES_USER": p["user"], "POSTGRES_PASSWORD": p["password"],
         "POSTGRES_SCHEMA": es_schema}, n)
    with pg.connect() as conn:
        try:
            conn.execute("CHECKPOINT")  # so that no checkpoint of the loads lands in a measurement
        except Exception:  # noqa: BLE001 - needs a privileged role; harmless without
            pass
    try:
        with open_store(url, create=False) as store:
            best = _replay_rounds({
                "raw SELECT (keyset pages) + orjson.loads": lambda: raw_pg_keyset(pg, table, sizes.page),
                "raw SELECT (server-side cursor) + orjson.loads": lambda: raw_pg_server_cursor(pg, table, sizes.page),
                "raw SELECT (keyset pages, binary format) + orjson.loads":
                    lambda: raw_pg_keyset(pg, table, sizes.page, binary=True),
                "raw SELECT (server-side cursor, binary format) + orjson.loads":
                    lambda: raw_pg_server_cursor(pg, table, sizes.page, binary=True),
                "raw COPY (SELECT ...) TO STDOUT (binary) + orjson.loads": lambda: raw_pg_copy(pg, table),
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
        result("replay", "postgresql", ours, EVENTS_PER_S, "raw_select_orjson", raw),
        result("replay_duration", "postgresql", n / ours, "s", "raw_select_orjson", n / raw),
        result("replay", "postgresql", ours, EVENTS_PER_S, "raw_select_binary_orjson", raw_binary),
        result("replay", "postgresql", ours, EVENTS_PER_S, "copy_to_stdout_orjson",
               best["raw COPY (SELECT ...) TO STDOUT (binary) + orjson.loads"]),
        result("replay", "postgresql", ours, EVENTS_PER_S, "eventsourcing_default", best[ES_REPLAY]),
        result("replay_full_state", "postgresql", best[OURS_STATE], EVENTS_PER_S, "raw_select_orjson", raw),
        result("replay_full_state", "postgresql", best[OURS_STATE], EVENTS_PER_S, "eventsourcing_default",
               best[ES_REPLAY]),
    ]


def run(ctx: BenchContext) -> list[Result]:
    """Measure on each backend asked for; return the rows."""
    results: list[Result] = []
    n = ctx.sizes.replay_events
    if "sqlite" in ctx.backends:
        results += bench_replay_sqlite(ctx.workdir, ctx.sizes, ctx.logs.sqlite(n))
    if ctx.pg is not None:
        results += bench_replay_pg(ctx.pg, ctx.schema_for, ctx.sizes, ctx.logs.pg(n))
    return results


def targets(results: list[Result]) -> list[tuple[bool, str]]:
    """(met, line) for each target of this group found in results."""
    checks: list[tuple[bool, str]] = []
    for backend in ("sqlite", "postgresql"):
        checks += ratio_checks(results, "replay", backend, "raw_select_orjson", TARGET_REPLAY_RAW, "raw read + decode")
        checks += ratio_checks(results, "replay", backend, "eventsourcing_default", TARGET_REPLAY_ES,
                               "eventsourcing default replay")
    return checks
