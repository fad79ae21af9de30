"""``tradestate bench`` group ``failover``: write unavailability when the primary dies.

Runs the failover harness (:func:`tradestate.tools.failover.run_failover`: its own synchronous
primary + standby on loopback ports, an engine process recording orders on a multi-host URL, the
primary stopped with ``pg_ctl stop -m immediate`` while it works) and reports, per failover
manager, the write unavailability the engine saw (its first failed call after the stop to its next
acknowledged call), p50 and p95 over the rounds:

``failover_pg_ctl_unavailability_p50/_p95``  ``failover_rounds`` failovers promoted at once with
                                              ``pg_ctl promote`` (detection time 0: the harness
                                              knows the primary is dead)
``failover_patroni_unavailability_p50/_p95`` ``patroni_rounds`` failovers of three nodes under
                                              Patroni + etcd (the leader's node killed; Patroni
                                              promotes once the leader key expires); skipped, with
                                              the reason, where Patroni or etcd is not installed

The baseline of each row is the target, ``detection_<D>s_plus_2s`` = the manager's detection time
``D`` (Patroni: its ``ttl`` + ``loop_wait`` as the harness configures them) + 2 s, so ``ratio`` <= 1
meets it. A run whose checks fail (an acknowledged call lost, a duplicate, a gap, an engine that
did not carry on) fails the benchmark: its unavailability would mean nothing. Without the server
binaries the group is skipped, with the reason, as a note.

Target (issue 13): p95 write unavailability in a managed failover <= detection time + 2 s.
"""

from __future__ import annotations

from .common import BenchContext, Result, log, result

MANAGERS = ("pg_ctl", "patroni")
MARGIN_S = 2.0  # what a failover may cost beyond the manager's detection time


def metric_for(manager: str, quantile: str) -> str:
    return f"failover_{manager}_unavailability_{quantile}"


def baseline_for(detection_s: float) -> str:
    return f"detection_{detection_s:g}s_plus_{MARGIN_S:g}s"


def _skip(ctx: BenchContext, why: str) -> None:
    message = f"failover: {why}"
    log(message)
    ctx.notes.append(message)


def run(ctx: BenchContext) -> list[Result]:
    """Run the pg_ctl rounds, then the Patroni rounds; a note for each part that cannot run here."""
    if "postgresql" not in ctx.backends:
        return []
    from .. import pg_cluster
    from ..failover import PatroniCluster

    problem = pg_cluster.available()
    if problem is not None:
        _skip(ctx, f"skipped ({problem})")
        return []
    results: list[Result] = []
    for manager, rounds in (("pg_ctl", ctx.sizes.failover_rounds), ("patroni", ctx.sizes.patroni_rounds)):
        if rounds <= 0:
            _skip(ctx, f"{manager} rounds skipped (0 asked)")
            continue
        if manager == "patroni" and PatroniCluster.problem():
            _skip(ctx, f"patroni rounds skipped ({PatroniCluster.problem()})")
            continue
        results += _measure(manager, rounds)
    return results


def _measure(manager: str, rounds: int) -> list[Result]:
    from ..failover import run_failover

    log(f"failover: {rounds} synchronous failover(s) by {manager} under engine load")

    def progress(rnd, _report) -> None:  # type: ignore[no-untyped-def]
        log(f"failover ({manager}) round {rnd.round}: {rnd.killed} -> {rnd.promoted}, unavailable "
            f"{rnd.unavailable_s} s (promoted {rnd.promote_s} s after the stop)")

    report = run_failover(rounds, manager=manager, on_round=progress)
    if not report.ok:
        raise RuntimeError(f"failover ({manager}, seed {report.seed}): the run's checks failed: "
                           f"{len(report.rounds)}/{rounds} rounds, lost {report.lost}, duplicates {report.duplicates}, "
                           f"gaps {report.gaps}, rewinds {report.rewinds}, engine error {report.engine_error!r}, "
                           f"problems {report.problems[:3]}")
    log(f"failover ({manager}): {report.acknowledged:,} calls acknowledged, all stored; unavailability "
        f"p50 {report.p50} s, p95 {report.p95} s; stalled p50 {report.stalled_p50} s, p95 {report.stalled_p95} s")
    target = report.detection_s + MARGIN_S
    return [result(metric_for(manager, q), "postgresql", value, "s", baseline_for(report.detection_s), target)
            for q, value in (("p50", report.p50), ("p95", report.p95)) if value is not None]


def targets(results: list[Result]) -> list[tuple[bool, str]]:
    """(met, line) for each manager's p95: unavailability <= detection time + 2 s."""
    checks: list[tuple[bool, str]] = []
    for manager in MANAGERS:
        for r in results:
            if r.metric == metric_for(manager, "p95") and r.backend == "postgresql":
                detection = r.baseline_value - MARGIN_S
                how = "pg_ctl promote at once" if manager == "pg_ctl" else "Patroni ttl + loop_wait"
                checks.append((r.value <= r.baseline_value,
                               f"{r.metric}: {r.value:.2f} s write unavailability, {r.ratio:.2f}x the target; "
                               f"target <= detection {detection:g} s ({how}) + {MARGIN_S:g} s = {r.baseline_value:g} s"))
    return checks
