"""``tradestate bench`` group ``migrate``: a log moved SQLite -> PostgreSQL, against one COPY.

On a private copy of the run's generated trading log (``sizes.replay_events`` events), sealed
like a real log:

``migrate_rate``     events per second of ``migrate()`` (copy in one snapshot into a staging
                     schema by binary COPY, verify of the whole digest chain there, checks against
                     the source, swap), the read-model rebuild left out (its own row). Baseline:
                     one binary ``COPY FROM STDIN`` of the same rows read from the same file into
                     a fresh table of the log's shape (``recorded_at`` parsed as ours is): the
                     floor for moving these rows at all.
``migrate_rebuild``  seconds of the read-model rebuild on the target that ``tradestate migrate``
                     runs after the swap (baseline: the migration itself).

Target (issue 17): migration rate >= 0.5x the COPY's. Baseline and migration are measured
interleaved (at least ``ROUNDS`` rounds, each going first in turn, a CHECKPOINT before each run),
the best of each kept; the rebuild is timed once, after the last migration.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timezone

from .common import BenchContext, Result, log, raw_table_sql_pg, result

TARGET_RATIO = 0.5
ROUNDS = 3  # at least: the best of each is kept (a shared box's noise is large beside a second's work)
_COLUMNS = "position, stream_id, stream_version, type, data, recorded_at"


def _checkpoint(ctx: BenchContext) -> None:
    """A CHECKPOINT before each timed run: the previous run's dirty pages and WAL are not written
    by a checkpoint in the middle of the next one (whichever of the two comes second)."""
    import psycopg.errors

    assert ctx.pg is not None
    with ctx.pg.connect() as conn:
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            pass


def _copy_baseline(ctx: BenchContext, path: str, round_: int) -> tuple[int, float]:
    """(rows, seconds) of one binary COPY of the log's rows from the SQLite file into a fresh table."""
    assert ctx.pg is not None
    schema = ctx.schema_for(f"migcopy{round_}")
    fromiso, utc = datetime.fromisoformat, timezone.utc
    with ctx.pg.connect() as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(raw_table_sql_pg(schema, "ts_events"))
        source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        n = 0
        t0 = time.perf_counter()
        try:
            with conn.transaction(), conn.cursor() as cur, cur.copy(
                    f'COPY "{schema}".ts_events ({_COLUMNS}) FROM STDIN (FORMAT binary)') as copy:
                copy.set_types(["int8", "text", "int8", "text", "bytea", "timestamptz"])
                rows = source.execute(f"SELECT {_COLUMNS} FROM ts_events ORDER BY position")
                while chunk := rows.fetchmany(20_000):
                    for p, s, v, t, d, r in chunk:
                        at = fromiso(r)
                        copy.write_row((p, s, v, t, d, at if at.tzinfo else at.replace(tzinfo=utc)))
                    n += len(chunk)
            seconds = time.perf_counter() - t0
        finally:
            source.close()
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    return n, seconds


def _migrate_once(ctx: BenchContext, path: str, round_: int, rebuild: bool) -> tuple[float, float, dict[str, float]]:
    """(seconds of the migration without the rebuild, seconds of the rebuild (0 unless ``rebuild``),
    stages) into a fresh schema."""
    from ...adapters.store import migrate as mg
    from ...adapters.store import open_store
    from ...projections.projector import Projector

    assert ctx.pg is not None
    schema = ctx.schema_for(f"migrate{round_}")
    url = ctx.pg.url_for(schema)
    t0 = time.perf_counter()
    outcome = mg.migrate(f"sqlite:///{path}", url)
    seconds = time.perf_counter() - t0
    rebuilt = 0.0
    if rebuild:
        t0 = time.perf_counter()
        with open_store(url, create=False) as store:
            Projector(store).rebuild()
        rebuilt = time.perf_counter() - t0
    with ctx.pg.connect() as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    return seconds, rebuilt, outcome.seconds


def run(ctx: BenchContext) -> list[Result]:
    """Measure SQLite -> PostgreSQL (needs both); return the rows."""
    if ctx.pg is None or "sqlite" not in ctx.backends:
        ctx.notes.append("migrate: skipped (needs the SQLite backend and a PostgreSQL server)")
        return []
    from ...adapters.store import digest, open_store

    n = ctx.sizes.replay_events
    log(f"migrate sqlite -> postgresql: {n:,} events")
    path = ctx.logs.sqlite_copy(n, "migrate")
    with open_store(f"sqlite:///{path}", create=False) as store:  # a real log is sealed
        sealed = digest.seal(store)
    log(f"  log sealed ({sealed.events:,} events in {sealed.seconds:.1f} s)")
    copies, migrations, rebuilds = [], [], []
    rounds = max(ROUNDS, ctx.sizes.repeats)
    for round_ in range(rounds):
        for ours in ((False, True) if round_ % 2 == 0 else (True, False)):  # each goes first in turn
            _checkpoint(ctx)
            if ours:
                took, rebuild, stages = _migrate_once(ctx, path, round_, rebuild=round_ == rounds - 1)
                migrations.append(took)
            else:
                rows, seconds = _copy_baseline(ctx, path, round_)
                copies.append(seconds)
        log(f"  COPY {rows:,} rows {seconds:.2f} s; migrate {took:.2f} s ("
            + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items() if k not in ("total", "rebuild")) + ")"
            + (f"; rebuild of the read models {rebuild:.2f} s" if rebuild else ""))
        if rebuild:
            rebuilds.append(rebuild)
    ctx.logs.discard(n, "sqlite", path)
    copy_rate, rate = n / min(copies), n / min(migrations)
    log(f"  migrate {rate:,.0f} events/s, COPY {copy_rate:,.0f} events/s ({rate / copy_rate:.2f}x)")
    return [
        result("migrate_rate", "sqlite->postgresql", rate, "events/s", "binary_copy_same_rows", copy_rate),
        result("migrate_rebuild", "postgresql", min(rebuilds), "s", "migrate (without the rebuild)", min(migrations)),
    ]


def targets(results: list[Result]) -> list[tuple[bool, str]]:
    """(met, line) for each target of this group found in results."""
    return [(r.ratio >= TARGET_RATIO,
             f"migrate_rate ({r.backend}): {r.ratio:.2f}x one binary COPY of the same rows (target >= "
             f"{TARGET_RATIO:g}x; {r.value:,.0f} vs {r.baseline_value:,.0f} events/s)")
            for r in results if r.metric == "migrate_rate"]
