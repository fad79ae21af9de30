"""``tradestate chaos``: the kill -9 harness; ``tradestate failover-chaos``: the failover harness;
``tradestate standby-chaos``: the active/standby engine takeover harness."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from .common import ConfigOption, ExitCode, choice, command, exit_codes, fail, settings

DbOptionChaos = Annotated[
    Optional[str],
    typer.Option("--db", help="Database URL: sqlite:///path.db or postgresql://...?schema=name (a fresh "
                              "schema is best; default: $TRADESTATE_DB, the config file, then sqlite:///tradestate.db)"),
]


def render_report(report: Any, console: Any) -> None:
    """Print a chaos report: each check's passed and failed counts, the run's totals, the verdict."""
    from rich.table import Table

    from ..tools.chaos import CHECKS

    table = Table(title=f"tradestate chaos: {report.kills} kills on {report.backend} (seed {report.seed})")
    for name, justify in (("check", "left"), ("what", "left"), ("passed", "right"), ("failed", "right"),
                          ("first failure", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for name, what in CHECKS:
        t = report.checks[name]
        style = "bold red" if t.failed else "green"
        table.add_row(name, what, f"{t.passed:,}", f"[{style}]{t.failed:,}[/]", (t.first or "")[:300])
    console.print(table)
    ms = sorted(report.kill_after_ms)
    console.print(
        f"{report.kills:,} engine kills, {report.projector_kills:,} projector kills in {report.seconds:,.1f} s "
        f"({report.check_seconds:,.1f} s checking); log head {report.head:,} ({report.events:,} events this run, "
        f"{report.voids:,} $void); {report.calls:,} acknowledged calls, {report.refused:,} intents refused by risk; "
        f"{report.in_flight:,} calls in flight at a kill ({report.in_flight_landed:,} had committed), "
        f"{report.resent_acked:,} acknowledged calls re-sent"
        + (f"; kill after {ms[0]:.0f}-{ms[-1]:.0f} ms (median {ms[len(ms) // 2]:.0f})" if ms else ""),
        highlight=False,
    )
    phases = ", ".join(f"{name} {value:,.1f} s" for name, value in report.phase_seconds.items())
    console.print(f"checking: {phases}; tables compared with a fresh fold after {report.fresh_folds:,} kills",
                  highlight=False)
    for problem in report.problems[:20]:
        console.print(f"[red]-[/] {problem}", highlight=False)
    verdict = "[bold green]PASSED[/]" if report.ok else "[bold red]FAILED[/]"
    console.print(f"{verdict}: replay with --seed {report.seed}", highlight=False)


def render_failover(report: Any, console: Any) -> None:
    """Print a failover report: one row per failover, then acknowledged vs stored, lost,
    duplicates, unavailability p50/p95 and the verdict."""
    from rich.table import Table

    def secs(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    table = Table(title=f"tradestate failover-chaos: {len(report.rounds)} {report.mode} failovers by {report.manager} "
                        f"(seed {report.seed})")
    for name in ("round", "stopped", "promoted", "promote s", "rebuild s", "first failure s",
                 "unavailable s", "since stop s", "stalled s", "acked after"):
        table.add_column(name, justify="left" if name in ("stopped", "promoted") else "right")
    for r in report.rounds:
        table.add_row(str(r.round), r.killed, r.promoted, secs(r.promote_s), secs(r.rebuild_s),
                      secs(r.first_failure_s), secs(r.unavailable_s), secs(r.since_stop_s),
                      secs(r.stalled_s), f"{r.acked_after:,}")
    console.print(table)
    lost_style = "bold red" if report.lost else "green"
    console.print(
        f"{report.mode} replication: {report.acknowledged:,} calls acknowledged, {report.stored:,} stored, "
        f"[{lost_style}]{report.lost:,} lost[/], {report.duplicates:,} duplicates, {report.gaps:,} gaps or torn "
        f"rows, {report.misplaced:,} misplaced; {report.rewinds:,} LogRewound seen by the engine "
        f"({report.rewound_lost:,} events it said were lost); {report.retried_calls:,} calls retried; log head "
        f"{report.head:,} ({report.voids:,} $void); {report.seconds:,.1f} s",
        highlight=False,
    )
    p50, p95 = report.p50, report.p95
    console.print(f"write unavailability per failover (first failed call -> next acknowledged one): "
                  f"p50 {secs(p50)} s, p95 {secs(p95)} s; stalled (every wait > 0.25 s for an acknowledgement "
                  f"until the next failover) p50 {secs(report.stalled_p50)} s, p95 {secs(report.stalled_p95)} s",
                  highlight=False)
    for call in report.lost_calls[:10]:
        console.print(f"[red]lost:[/] {call}", highlight=False)
    for problem in report.problems[:20]:
        console.print(f"[red]-[/] {problem}", highlight=False)
    if report.engine_error:
        console.print(f"[red]engine error:[/] {report.engine_error.strip().splitlines()[-1]}", highlight=False)
    verdict = "[bold green]PASSED[/]" if report.ok else "[bold red]FAILED[/]"
    console.print(f"{verdict}: replay with --seed {report.seed}", highlight=False)


def render_standby(report: Any, console: Any) -> None:
    """Print a standby-chaos report: takeover time p50/p95/max (all rounds, kills, pauses),
    acknowledged vs stored, duplicates, double-writer intervals, each check and the verdict."""
    from rich.table import Table

    from ..tools.standby_chaos import CHECKS

    def secs(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    table = Table(title=f"tradestate standby-chaos: {len(report.rounds)} takeovers on {report.backend} "
                        f"(lease {report.lease_seconds:g} s, seed {report.seed})")
    for name in ("active engine stopped by", "n", "takeover p50 s", "p95 s", "max s"):
        table.add_column(name, justify="left" if name.startswith("active") else "right")
    for label, action in (("all", None), ("SIGKILL", "kill"), ("SIGSTOP > lease", "pause")):
        st = report.stats(action)
        table.add_row(label, str(st["n"]), secs(st["p50"]), secs(st["p95"]), secs(st["max"]))
    console.print(table)
    pauses = [r for r in report.rounds if r.pause_s is not None]
    if pauses:
        console.print(f"pause rounds: {sum(1 for r in pauses if r.while_paused):,} of {len(pauses):,} taken over while "
                      "the engine was stopped (the others waited for a database lock it held until SIGCONT)",
                      highlight=False)
    f = report.figures
    if f:
        intervals = f["double_writer_intervals"]
        style = "bold red" if intervals else "green"
        console.print(
            f"{f['acknowledged']:,} calls acknowledged, {f['stored']:,} stored ({f['intents_acknowledged']:,} intent "
            f"calls acknowledged, re-sends included; {f['intents_stored']:,} intents stored); {f['duplicates']:,} "
            f"duplicates; {f['resent']:,} calls re-sent after a takeover ({f['resent_recognised']:,} recognised as "
            f"recorded); {f['paused']:,} paused engines resumed, {f['paused_refused']:,} refused; {f['epochs']:,} epochs; "
            f"[{style}]{len(intervals)} double-writer intervals[/]; log head {f['head']:,}; {report.seconds:,.1f} s",
            highlight=False)
        for interval in intervals[:10]:
            console.print(f"[red]double writer:[/] epoch {interval['epoch']} appended at {interval['first']}.."
                          f"{interval['last']} after epoch {interval['epoch'] + 1} began at {interval['newer_at']}",
                          highlight=False)
    for name, what in CHECKS:
        found = report.checks[name]
        mark = f"[bold red]{len(found)} failed[/]" if found else "[green]passed[/]"
        console.print(f"{name}: {mark} - {what}", highlight=False)
        for problem in found[:5]:
            console.print(f"  [red]-[/] {problem[:400]}", highlight=False)
    verdict = "[bold green]PASSED[/]" if report.ok else "[bold red]FAILED[/]"
    console.print(f"{verdict}: replay with --seed {report.seed}", highlight=False)


def _interrupt_on_sigterm() -> None:
    """SIGTERM interrupts the run like Ctrl-C, so its clean-up (children, clusters) runs."""
    import signal

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def _finish(report: Any, as_json: bool, render: Any) -> None:
    """Print a harness report (JSON or rendered) and exit 0 only if every check passed."""
    from ..render import console, to_json

    if as_json:
        print(to_json(report.as_dict()))
    else:
        render(report, console)
    raise typer.Exit(ExitCode.OK if report.ok else ExitCode.PROBLEM)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``tradestate`` command."""
    from ..render import console, to_json

    @app.command(epilog=exit_codes("a check failed (replay with the printed --seed)"))
    @command
    def chaos(
        db: DbOptionChaos = None,
        kills: Annotated[int, typer.Option("--kills", min=1, help="How many times to SIGKILL the engine.")] = 25,
        seed: Annotated[Optional[int], typer.Option("--seed", help="Replay a run (kill times, workload).")] = None,
        json: Annotated[bool, typer.Option("--json", help="Print the report as JSON for scripts.")] = False,
        projector: Annotated[bool, typer.Option("--projector/--no-projector",
                                                help="Also run a projector beside the engine and kill it at random.")] = True,
        min_ms: Annotated[float, typer.Option("--min-ms", help="Earliest kill after the engine is ready.")] = 20,
        max_ms: Annotated[float, typer.Option("--max-ms", help="Latest kill after the engine is ready.")] = 300,
        fsync_acks: Annotated[bool, typer.Option("--fsync-acks", help="fsync the side channel after every line "
                                                 "(not needed for SIGKILL: the kernel keeps the file).")] = False,
        workdir: Annotated[Optional[str], typer.Option("--workdir", help="Keep side channels and child logs here.")] = None,
        stop_on_failure: Annotated[bool, typer.Option("--stop-on-failure", help="Stop at the first failed check.")] = False,
        fold_every: Annotated[int, typer.Option("--fold-every", min=1, help="Compare the tables with a fresh fold "
                                                "of the whole log after every N kills (and the last; default every "
                                                "kill). Every other check runs after every kill.")] = 1,
        config: ConfigOption = None,
    ) -> None:
        """SIGKILL an engine (recording intents, acks and fills at full speed) at random moments,
        restart it, and check after every kill: acknowledged events present, no torn event, no gap,
        projections equal a fresh fold, re-sends create no duplicates. Exit 0 only if all passed."""
        import sys

        from ..adapters.store import resolve_url
        from ..tools.chaos import run_chaos
        from ..domain.errors import TradestateError


        _interrupt_on_sigterm()
        url = resolve_url(settings(config, db=db).db)
        if min_ms < 0 or max_ms < min_ms:
            fail("need 0 <= --min-ms <= --max-ms")
        progress = None
        on_kill = None
        if not json and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            progress = Progress(TextColumn("chaos"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("{task.fields[status]}"), console=Console(stderr=True), transient=True)
            task = progress.add_task("kills", total=kills, status="")

            def on_kill(k: int, report: Any) -> None:
                failed = sum(t.failed for t in report.checks.values())
                progress.update(task, completed=k + 1,
                                status=f"head {report.head:,}, {report.calls:,} acked calls"
                                       + (f", [red]{failed} failed checks[/]" if failed else ""))
        try:
            if progress is not None:
                with progress:
                    report = run_chaos(url, kills, seed=seed, projector=projector, min_ms=min_ms, max_ms=max_ms,
                                       fsync_acks=fsync_acks, workdir=workdir, on_kill=on_kill,
                                       stop_on_failure=stop_on_failure, fold_every=fold_every)
            else:
                report = run_chaos(url, kills, seed=seed, projector=projector, min_ms=min_ms, max_ms=max_ms,
                                   fsync_acks=fsync_acks, workdir=workdir, stop_on_failure=stop_on_failure,
                                   fold_every=fold_every)
        except TradestateError as e:
            fail(str(e))
        _finish(report, json, render_report)

    @app.command("failover-chaos", epilog=exit_codes("a check failed: in synchronous mode an acknowledged "
                                                     "call was lost, or a duplicate, a gap, or an engine that "
                                                     "did not carry on"))
    @command
    def failover_chaos(
        rounds: Annotated[int, typer.Option("--failover", "--rounds", min=1, help="How many failovers to run.")] = 10,
        asynchronous: Annotated[bool, typer.Option("--async", help="Asynchronous replication: the promoted node "
                                                   "is an asynchronous standby, and the report shows what that "
                                                   "loses (not a failure).")] = False,
        seed: Annotated[Optional[int], typer.Option("--seed", help="Replay a run (timings, workload).")] = None,
        manager: Annotated[str, typer.Option("--manager", **choice("pg_ctl", "patroni", what="manager"),
                                             help="What fails over: pg_ctl (the harness stops the primary and "
                                                  "promotes the standby of a pair) or patroni (three nodes under "
                                                  "Patroni and etcd; a node is killed and Patroni promotes; needs "
                                                  "the patroni and etcd commands).")] = "pg_ctl",
        bindir: Annotated[str, typer.Option("--bindir", help="Directory of initdb, pg_ctl and pg_basebackup.")]
            = "/usr/lib/postgresql/15/bin",
        workdir: Annotated[Optional[str], typer.Option("--workdir", help="Parent directory of the cluster's "
                                                       "temporary directory.")] = None,
        json: Annotated[bool, typer.Option("--json", help="Print the report as JSON for scripts.")] = False,
        config: ConfigOption = None,
    ) -> None:
        """Start a PostgreSQL primary and a standby on free loopback ports, run an engine on a
        multi-host URL, and fail over N times (stop the primary at once, promote the standby,
        rebuild the old primary as the new standby). Prints acknowledged vs stored calls, lost,
        duplicates and write unavailability p50/p95. Exit 0 only if nothing acknowledged was lost
        (synchronous mode), no duplicate or gap, and the engine carried on after every failover."""

        from ..tools.failover import ClusterError, run_failover

        _interrupt_on_sigterm()
        settings(config)  # the harness starts its own cluster: only a bad config file stops it here
        try:
            report = run_failover(rounds, asynchronous=asynchronous, seed=seed, bindir=bindir, workdir=workdir,
                                  manager=manager)
        except ClusterError as e:
            fail(str(e))
        _finish(report, json, render_failover)

    @app.command("standby-chaos", epilog=exit_codes("a check failed: an acknowledged call missing, a duplicate, "
                                                    "a double-writer interval, a resumed engine not refused, a "
                                                    "process error or a round without a takeover"))
    @command
    def standby_chaos(
        db: DbOptionChaos = None,
        rounds: Annotated[int, typer.Option("--rounds", min=1, help="How many takeovers to run.")] = 20,
        pause_fraction: Annotated[float, typer.Option("--pause-fraction", min=0.0, max=1.0,
                                                      help="Share of rounds that SIGSTOP the active engine for "
                                                           "longer than the lease, SIGCONT it (it must be refused) "
                                                           "and then kill it; the others SIGKILL it.")] = 0.25,
        lease: Annotated[float, typer.Option("--lease", min=0.1, help="Lease seconds (renewed every third).")] = 3.0,
        seed: Annotated[Optional[int], typer.Option("--seed", help="Replay a run (timings, actions, workload).")] = None,
        engine_id: Annotated[str, typer.Option("--engine-id", help="The engine id both processes run as.")]
            = "chaos-standby",
        workdir: Annotated[Optional[str], typer.Option("--workdir", help="Keep side channels and child logs here.")] = None,
        json: Annotated[bool, typer.Option("--json", help="Print the report as JSON for scripts.")] = False,
        config: ConfigOption = None,
    ) -> None:
        """Run an active engine and a warm standby of one engine id (separate processes on one
        SQLite file or PostgreSQL schema), SIGKILL or pause the active one at random moments, let
        the standby take over and start a new standby, N times. Prints takeover time p50/p95/max
        (kill or SIGSTOP -> the new engine's first accepted intent), acknowledged vs stored,
        duplicates and double-writer intervals. Exit 0 only if every check passed."""
        import sys

        from ..adapters.store import resolve_url
        from ..domain.errors import TradestateError
        from ..tools.standby_chaos import run_standby_chaos

        _interrupt_on_sigterm()
        url = resolve_url(settings(config, db=db).db)
        on_round = None
        if not json and sys.stderr.isatty():
            def on_round(r: Any, report: Any) -> None:
                print(f"round {r.round + 1}/{rounds}: {r.action}, epoch {r.epoch_before} -> {r.epoch_after}, "
                      f"takeover {r.takeover_s:.3f} s", file=sys.stderr, flush=True)
        try:
            report = run_standby_chaos(url, rounds, seed=seed, pause_fraction=pause_fraction, lease_seconds=lease,
                                       engine_id=engine_id, workdir=workdir, on_round=on_round)
        except TradestateError as e:
            fail(str(e))
        _finish(report, json, render_standby)
