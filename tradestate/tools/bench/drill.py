"""``tradestate bench`` group ``drill``: the restore drill's RTO for a log of ``--events`` events.

On a private copy of the run's trading log (1M full, 100k quick), sealed like a real log, SQLite
and PostgreSQL: a full backup is taken, then

``drill_rto``   ``tradestate drill`` (``tradestate.drill.drill``): find the chain, restore it into a
                scratch place (a temporary SQLite file / a throwaway schema), verify the whole
                digest chain, fold to a ready state; seconds from its start to ready. Baseline:
                ``restore_raw``, ``bk.restore`` of the same backup into an empty place alone
                (which already verifies the chain): the drill's own cost is the fold beside it.

The seed's disaster-recovery plan sets the RTO at 4 hours: the target is the drill's RTO within
it (and the line says how far below). The drill's comparison with the live log and its record
come after the ready state and are not in the RTO; their time is logged.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import time

from .common import BenchContext, Result, log, result

TARGET_RTO_S = 4 * 3600.0  # seed 000: RTO 4 hours


def _raw_restore(url: str, path: str, scratch_url: str) -> float:
    from ...adapters.store import backup as bk

    gc.collect()
    t0 = time.perf_counter()
    bk.restore(scratch_url, [path])
    return time.perf_counter() - t0


def _measure(url: str, backend: str, n: int, workdir: str, repeats: int, raw_scratch: list[str],
             drop_raw: object) -> list[Result]:
    from ...adapters.store import backup as bk
    from ...adapters.store import digest, open_store
    from ...drill import drill

    with open_store(url, create=False) as store:
        sealed = digest.seal(store)
        t0 = time.perf_counter()
        manifest = bk.backup(store, os.path.join(workdir, f"drill_{backend}_{n}.tsb"))
    log(f"  {backend}: log sealed ({sealed.events:,} events in {sealed.seconds:.1f} s); full backup "
        f"{manifest.size / 1e6:,.0f} MB in {time.perf_counter() - t0:.1f} s")
    raws, rtos = [], []
    for i in range(repeats):  # interleaved: a burst of load on the box slows both alike
        raws.append(_raw_restore(url, manifest.path, raw_scratch[i]))
        drop_raw(raw_scratch[i])  # type: ignore[operator]
        gc.collect()
        t0 = time.perf_counter()
        report = drill(url, [manifest.path], record=i == repeats - 1)
        if not report.passed:
            raise RuntimeError(f"the drill failed: {report.reason}")
        rtos.append(report.rto_seconds)
        log(f"  {backend}: drill RTO {report.rto_seconds:.2f} s (restore {report.restore_seconds:.2f} s, fold "
            f"{report.fold_seconds:.2f} s), whole drill {time.perf_counter() - t0:.2f} s "
            f"(compare and record after ready); raw restore {raws[-1]:.2f} s")
    return [result("drill_rto", backend, min(rtos), "s", "restore_raw", min(raws))]


def run(ctx: BenchContext) -> list[Result]:
    """Measure on each backend asked for; return the rows."""
    n = ctx.sizes.replay_events
    repeats = max(1, min(ctx.sizes.repeats, 2))
    results: list[Result] = []
    if "sqlite" in ctx.backends:
        log(f"sqlite drill: {n:,} events")
        path = ctx.logs.sqlite_copy(n, "drill")
        scratch = tempfile.mkdtemp(prefix="drill-raw-", dir=ctx.workdir)
        try:
            results += _measure(f"sqlite:///{path}", "sqlite", n, ctx.workdir, repeats,
                                [f"sqlite:///{scratch}/raw{i}.db" for i in range(repeats)],
                                lambda u: [os.remove(u[len("sqlite:///"):] + s) for s in ("", "-wal", "-shm")
                                           if os.path.exists(u[len("sqlite:///"):] + s)])
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            ctx.logs.discard(n, "sqlite", path)
    if ctx.pg is not None:
        import psycopg

        log(f"postgresql drill: {n:,} events")
        schema = ctx.logs.pg_copy(n, "drill")
        pg = ctx.pg
        raw = [ctx.schema_for(f"drillraw{i}") for i in range(repeats)]

        def drop(url: str) -> None:
            from ...adapters.store.sql import PgUrl

            with psycopg.connect(pg.conninfo(), autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{PgUrl.parse(url).schema}" CASCADE')

        try:
            results += _measure(pg.url_for(schema), "postgresql", n, ctx.workdir, repeats,
                                [pg.url_for(s) for s in raw], drop)
        finally:
            ctx.logs.discard(n, "postgresql", schema)
    return results


def targets(results: list[Result]) -> list[tuple[bool, str]]:
    """(met, line) for each target of this group found in results."""
    return [(r.value <= TARGET_RTO_S,
             f"drill_rto ({r.backend}): {r.value:.2f} s to a ready state (target <= {TARGET_RTO_S:,.0f} s, the "
             f"seed's 4 h RTO: {r.value / TARGET_RTO_S:.5f}x of it; {r.ratio:.2f}x the raw restore of "
             f"{r.baseline_value:.2f} s)")
            for r in results if r.metric == "drill_rto"]
