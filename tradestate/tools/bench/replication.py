"""``tradestate bench`` group ``replication``: durable single-event appends with a synchronous
hot standby.

Starts a throwaway primary + synchronous hot standby on loopback ports
(:mod:`tradestate.tools.pg_cluster`, the machine's PostgreSQL server binaries) and measures, for
each commit level:

``sync_standby_append_1w_on``            ``EventLog.append`` (one new stream per event) with
                                         ``synchronous_commit = on`` (the standby has flushed the
                                         commit), rate and p50/p99 latency, against raw single-row
                                         INSERT commits at the same level to the same pair
                                         (baseline ``raw_insert_commit_1w_on``)
``sync_standby_append_1w_remote_apply``  the same with the URL option
                                         ``?synchronous_commit=remote_apply`` (the standby has
                                         applied it: readable there), against raw commits with
                                         ``SET synchronous_commit = remote_apply``

Both servers run with ``fsync = on``, as a production pair does (the throwaway clusters' default
is off), so a commit is flushed on the primary and, before it is acknowledged, on the standby;
on a machine whose disk is shared with other work the figures vary from run to run. One writer each; the variants run
interleaved, best of ``rounds``. Without the server binaries
(or as root without a ``postgres`` OS user) the group is skipped with the reason, as a note.

Target: ours / raw >= 0.65 for the rate, at both levels.
"""

from __future__ import annotations

from dataclasses import replace

from .append import TARGET_SINGLE, _append_rows, _best_of_rounds
from .common import BenchContext, PgTarget, Result, fill_payload, log, raw_table_sql_pg, ratio_checks

LEVELS = ("on", "remote_apply")
WHAT = "raw single-row commit rate with a synchronous standby, same commit level"


def metric_for(level: str) -> str:
    return f"sync_standby_append_1w_{level}"


def baseline_for(level: str) -> str:
    return f"raw_insert_commit_1w_{level}"


def run(ctx: BenchContext) -> list[Result]:
    """Start the pair, measure both commit levels, tear the pair down; [] (and a note) when
    a cluster cannot be started here."""
    if "postgresql" not in ctx.backends:
        return []
    from .. import pg_cluster

    problem = pg_cluster.available()
    cluster = None
    if problem is None:
        try:
            cluster = pg_cluster.PgCluster(standbys=1, synchronous=True, extra_conf="fsync = on")
            cluster.start()
        except (RuntimeError, OSError) as e:
            problem = f"the primary + standby pair did not start: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    if problem is not None:
        if cluster is not None:
            cluster.close()
        message = f"replication: skipped ({problem})"
        log(message)
        ctx.notes.append(message)
        return []
    assert cluster is not None
    try:
        return _measure(ctx, cluster)
    finally:
        cluster.close()


def _measure(ctx: BenchContext, cluster) -> list[Result]:
    from ...adapters.store import open_store

    payload = fill_payload()
    # Two interleaved rounds even when the sizes ask for one, in the same total time: a burst of
    # foreign load on a shared machine then spoils one round of a variant, not its figure.
    sizes = ctx.sizes if ctx.sizes.rounds > 1 else replace(ctx.sizes, rounds=2, single_seconds=ctx.sizes.single_seconds / 2)
    primary = PgTarget(cluster.primary.url())
    results: list[Result] = []
    log(f"replication: primary :{cluster.primary.port}, synchronous standby :{cluster.standby.port} "
        f"({cluster.bin}); 1 writer, {sizes.rounds} x {sizes.single_seconds:g} s each")
    for level in LEVELS:
        schema = f"bench_sync_{level}"
        url = primary.url_for(schema) + ("&synchronous_commit=remote_apply" if level == "remote_apply" else "")
        with open_store(url) as store, store.trading.transaction() as cur:
            (effective,) = cur.execute("SHOW synchronous_commit").fetchone()
        if effective != level:
            raise RuntimeError(f"tradestate's session runs synchronous_commit={effective}, not {level}")
        with primary.connect() as conn:
            conn.execute(raw_table_sql_pg(schema, "raw_events"))
        cluster.wait_sync()
        log(f"replication, synchronous_commit = {level}")
        best = _best_of_rounds({
            "raw INSERT commit": {"kind": "raw_pg", "base_url": primary.base_url, "schema": schema,
                                  "table": "raw_events", "payload": payload, "synchronous_commit": level},
            "ours": {"kind": "ours", "url": url, "payload": payload},
        }, 1, sizes)
        results += _append_rows(metric_for(level), "postgresql", best["ours"], baseline_for(level),
                                best["raw INSERT commit"])
    return results


def targets(results: list[Result]) -> list[tuple[bool, str]]:
    """(met, line) for each commit level found in results."""
    checks: list[tuple[bool, str]] = []
    for level in LEVELS:
        checks += ratio_checks(results, metric_for(level), "postgresql", baseline_for(level), TARGET_SINGLE, WHAT)
    return checks
