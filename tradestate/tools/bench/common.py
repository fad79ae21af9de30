"""What every benchmark group shares: sizes, result rows, progress lines, the run's context,
the PostgreSQL target, and the raw-baseline table and payload.

A group module has ``run(ctx: BenchContext) -> list[Result]`` and
``targets(results) -> list[(met, line)]``; it imports from here, never from ``run``.
"""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlparse, urlunparse

import orjson

EVENTS_PER_S = "events/s"


# ------------------------------------------------------------------------------------ sizes


@dataclass(frozen=True)
class Sizes:
    """How much each benchmark group does (``FULL`` for the report, ``QUICK`` for a check)."""

    single_seconds: float  # duration of each timed single-event append run
    writers: int  # writer processes for the multi-writer PostgreSQL run
    warmup: int  # appends per writer before timing starts
    batch_size: int  # events per append in append_batch
    batches: int  # appends in append_batch (the baseline writes batch_size * batches rows)
    replay_events: int  # N events folded in replay
    repeats: int  # replay measurements are best-of-this
    page: int  # rows per page for paged reads
    rounds: int = 1  # append and batch variants run interleaved this many times, best round kept
    failover_rounds: int = 5  # pg_ctl-promoted failovers under engine load (0: none)
    patroni_rounds: int = 3  # Patroni-managed failovers, where Patroni and etcd are installed (0: none)
    takeovers: int = 3  # engine takeovers timed per backend (each waits out a 3 s lease)


FULL = Sizes(single_seconds=5.0, writers=8, warmup=200, batch_size=100, batches=1000,
             replay_events=1_000_000, repeats=2, page=10_000, rounds=2, takeovers=10)
QUICK = Sizes(single_seconds=2.0, writers=8, warmup=50, batch_size=100, batches=200,
              replay_events=100_000, repeats=2, page=10_000, failover_rounds=2, patroni_rounds=1)


# ---------------------------------------------------------------------------------- results


@dataclass
class Result:
    """One measured metric on one backend beside its baseline; ``ratio`` is ours over the baseline."""

    metric: str
    backend: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    ratio: float


def result(metric: str, backend: str, value: float, unit: str, baseline: str, baseline_value: float) -> Result:
    """A row with ``ratio = value / baseline_value``; both must be positive."""
    if not (value > 0 and baseline_value > 0):
        raise RuntimeError(f"{metric} on {backend}: non-positive measurement ({value} vs {baseline} {baseline_value})")
    return Result(metric, backend, float(value), unit, baseline, float(baseline_value), float(value) / float(baseline_value))


def ratio_checks(results: list[Result], metric: str, backend: str, baseline: str, minimum: float,
                 what: str) -> list[tuple[bool, str]]:
    """(met, line) for each row of ``metric`` on ``backend`` against ``baseline``: met when its
    ratio is at least ``minimum``."""
    return [(r.ratio >= minimum, f"{metric} ({backend}): {r.ratio:.2f}x {what} (target >= {minimum:g}x)")
            for r in results if r.metric == metric and r.backend == backend and r.baseline == baseline]


def log(message: str) -> None:
    """A progress line on stderr (stdout is kept for the result)."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of already sorted values; NaN when there are none."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[index]


# --------------------------------------------------------------------------------- context


@dataclass(frozen=True)
class BenchContext:
    """What a group gets: where to put files, sizes, PostgreSQL (None when unreachable or not
    asked for), a maker of fresh schema names (dropped after the run), the backends asked for,
    ``notes``: lines a group adds for the report (e.g. why it skipped), and ``logs``: the run's
    generated trading logs (``logs.TradingLogs``: one per backend and size, loaded once; a group
    that writes into its log takes a copy). The log size of every log-size-dependent group is
    ``sizes.replay_events``."""

    workdir: str
    sizes: Sizes
    pg: PgTarget | None
    schema_for: Callable[[str], str]
    backends: tuple[str, ...]
    quick: bool
    notes: list[str] = field(default_factory=list)
    logs: Any = None  # logs.TradingLogs (not imported here: logs imports this module)


# ------------------------------------------------------------------------------ PostgreSQL


@dataclass(frozen=True)
class PgTarget:
    """The PostgreSQL server the benchmarks use, from a ``postgresql://`` URL."""

    base_url: str

    @property
    def parts(self) -> dict[str, Any]:
        """libpq connection parameters from the URL (host, port, database, user, password), with
        defaults."""
        p = urlparse(self.base_url)
        return {
            "dbname": unquote(p.path.lstrip("/")) or "postgres",
            "host": p.hostname or "127.0.0.1",
            "port": p.port or 5432,
            "user": unquote(p.username or "postgres"),
            "password": unquote(p.password or ""),
        }

    def conninfo(self) -> str:
        """The libpq connection string of ``parts``."""
        import psycopg.conninfo

        return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in self.parts.items() if v != ""})

    def url_for(self, schema: str) -> str:
        """The base URL with its ``schema`` query parameter set to ``schema``."""
        parsed = urlparse(self.base_url)
        query = dict(parse_qsl(parsed.query))
        query["schema"] = schema
        return urlunparse(parsed._replace(query=urlencode(query)))

    def connect(self, **kw: Any):
        """A new autocommit psycopg connection to the server."""
        import psycopg

        return psycopg.connect(self.conninfo(), autocommit=True, **kw)


# ------------------------------------------------------------------------- raw baselines


def raw_table_sql_pg(schema: str, table: str) -> str:
    """The raw baseline's table on PostgreSQL: our row shape and unique constraint."""
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


def raw_table_sql_sqlite(table: str) -> str:
    """The raw baseline's table on SQLite: our row shape and unique constraint."""
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


def sqlite_raw_conn(path: str) -> sqlite3.Connection:
    """An autocommit connection in WAL mode with full fsync, as our SQLite store runs."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def fill_payload() -> bytes:
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


# ------------------------------------------------------------------------------ processes

_CTX: Any = None


def mp_context():
    """The multiprocessing context for writer and follower processes: forkserver (with the
    modules that hold process targets preloaded) where available, else spawn."""
    global _CTX
    if _CTX is None:
        if "forkserver" in mp.get_all_start_methods():
            _CTX = mp.get_context("forkserver")
            _CTX.set_forkserver_preload(["tradestate.tools.bench.append", "tradestate.tools.bench.projection",
                                         "tradestate.tools.bench.logs",
                                         "tradestate.adapters.store.postgres", "psycopg"])
        else:
            _CTX = mp.get_context("spawn")
    return _CTX
