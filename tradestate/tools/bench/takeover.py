"""``tradestate bench`` group ``takeover``: from SIGKILL of the active engine to the standby's
first accepted intent, with default settings (lease 3 s, renewed every 1 s).

An active engine process and a warm standby of one engine id on a SQLite file (several
processes on one file) and on a PostgreSQL schema, the active one SIGKILLed at a random moment
while it trades, N times (quick: 3, full: 10) by the standby harness (``tools.standby_chaos``,
whose checks must all pass: a takeover that lost or duplicated a call is no figure).

``takeover_p50``, ``takeover_p95``  seconds from the kill to the new active engine's first
                                    accepted intent. Baseline: the lease duration (the part of the
                                    wait that is detection: the lease must run out).

Target: p95 < 5 s.
"""

from __future__ import annotations

import os
import uuid

from .common import BenchContext, Result, log, result

TARGET_P95_S = 5.0


def _measure(url: str, backend: str, rounds: int, workdir: str) -> list[Result]:
    from ..standby_chaos import DEFAULT_LEASE_SECONDS, run_standby_chaos

    report = run_standby_chaos(url, rounds, pause_fraction=0.0, lease_seconds=DEFAULT_LEASE_SECONDS,
                               workdir=os.path.join(workdir, f"takeover-{backend}-{uuid.uuid4().hex[:6]}"))
    if not report.ok:
        failed = {name: found[:2] for name, found in report.checks.items() if found}
        raise RuntimeError(f"takeover on {backend}: a check failed (seed {report.seed}): {failed}")
    stats = report.stats("kill")
    log(f"  {backend}: {stats['n']} takeovers, p50 {stats['p50']:.2f} s, p95 {stats['p95']:.2f} s, "
        f"max {stats['max']:.2f} s (seed {report.seed})")
    baseline = f"lease_{DEFAULT_LEASE_SECONDS:g}s"
    return [result("takeover_p50", backend, stats["p50"], "s", baseline, DEFAULT_LEASE_SECONDS),
            result("takeover_p95", backend, stats["p95"], "s", baseline, DEFAULT_LEASE_SECONDS)]


def run(ctx: BenchContext) -> list[Result]:
    """Measure on each backend asked for; return the rows."""
    rounds = ctx.sizes.takeovers
    results: list[Result] = []
    if "sqlite" in ctx.backends:
        log(f"sqlite takeover: {rounds} SIGKILLs of the active engine")
        results += _measure(f"sqlite:///{os.path.join(ctx.workdir, 'takeover.db')}", "sqlite", rounds, ctx.workdir)
    if ctx.pg is not None:
        log(f"postgresql takeover: {rounds} SIGKILLs of the active engine")
        results += _measure(ctx.pg.url_for(ctx.schema_for("takeover")), "postgresql", rounds, ctx.workdir)
    return results


def targets(results: list[Result]) -> list[tuple[bool, str]]:
    """(met, line) for each target of this group found in results."""
    return [(r.value < TARGET_P95_S, f"takeover_p95 ({r.backend}): {r.value:.2f} s, {r.value / TARGET_P95_S:.2f}x the "
                                     f"target (target < {TARGET_P95_S:g} s)")
            for r in results if r.metric == "takeover_p95"]
