"""``tradestate bench``: our store against raw baselines measured in the same run, on the same box.

Each metric group is the module of the same name, with ``run(ctx) -> list[Result]`` and
``targets(results) -> list[(met, line)]``:

``append``      durable single-event appends, against raw single-row INSERT commits; and with
                lease fencing on, against without it (interleaved in the same run)
``batch``       100 events per append, against one COPY / executemany of every row
``replay``      positions and the whole state folded from N trading events, against raw reads
                and the ``eventsourcing`` library's replay
``projection``  read-model catch-up and live lag
``recovery``    crash to ready-to-trade, cold and from a checkpoint
``reconcile``   a 10k-position, 10k-open-order reconciliation plan
``postmortem``  state at a past instant and market-data replay
``takeover``    SIGKILL of the active engine to the standby's first accepted intent (p50/p95),
                default lease
``replication`` durable single-event appends with a synchronous hot standby (commit levels ``on``
                and ``remote_apply``), against raw single-row INSERT commits to the same pair;
                starts its own throwaway primary + standby (skipped, with the reason, when the
                server binaries are missing)
``failover``    write unavailability p50/p95 when the primary dies under engine load (the failover
                harness: ``pg_ctl promote`` rounds, and Patroni rounds where Patroni and etcd are
                installed), against the target detection time + 2 s; skipped like ``replication``

SQLite files go to a temporary directory; PostgreSQL measurements each get a fresh
``bench_<random>_*`` schema, dropped at the end. Every ratio is ours / baseline (for latencies,
lower is better). Progress goes to stderr; with ``--json`` stdout carries only
``{"results": [...]}``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import asdict, fields, replace
from types import ModuleType
from typing import Any
from urllib.parse import urlparse, urlunparse

from . import append, batch, failover, postmortem, projection, reconcile, recovery, replay, replication, takeover
from .common import EVENTS_PER_S, FULL, QUICK, BenchContext, PgTarget, Result, Sizes, fill_payload, log

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
# In the order they run and report.
GROUPS: dict[str, ModuleType] = {
    "append": append,
    "batch": batch,
    "replay": replay,
    "projection": projection,
    "recovery": recovery,
    "reconcile": reconcile,
    "postmortem": postmortem,
    "takeover": takeover,
    "replication": replication,
    "failover": failover,
}


def _resolve_sizes(quick: bool, override: Sizes | dict[str, Any] | None) -> Sizes:
    base = QUICK if quick else FULL
    if override is None:
        return base
    if isinstance(override, Sizes):
        return override
    unknown = set(override) - {f.name for f in fields(Sizes)}
    if unknown:
        raise ValueError(f"unknown size overrides: {sorted(unknown)}")
    return replace(base, **override)


def _pg_problem(target: PgTarget) -> str | None:
    try:
        with target.connect(connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as e:  # noqa: BLE001 - any failure means "not usable"
        text = str(e).strip()
        return text.splitlines()[0] if text else type(e).__name__


# ------------------------------------------------------------------------------ reporting


def targets(results: list[Result]) -> list[tuple[bool, str]]:
    """(met, line) for every target each group states, in group order."""
    checks: list[tuple[bool, str]] = []
    for group in GROUPS.values():
        checks += group.targets(results)
    return checks


def _format_value(value: float, unit: str) -> str:
    if unit == EVENTS_PER_S:
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.3f}"
    return f"{value:.2f}"


def _print_human(results: list[Result], notes: list[str], sizes: Sizes, quick: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal or console.width < 132:
        console = Console(width=132)
    table = Table(title=f"tradestate bench ({'quick' if quick else 'full'}; ratio = ours / baseline, "
                        "for ms lower is better)")
    for name, justify in (("metric", "left"), ("backend", "left"), ("value", "right"), ("unit", "left"),
                          ("baseline", "left"), ("baseline value", "right"), ("ratio", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in results:
        table.add_row(r.metric, r.backend, _format_value(r.value, r.unit), r.unit, r.baseline,
                      _format_value(r.baseline_value, r.unit), f"{r.ratio:.2f}x")
    console.print(table)
    console.print(f"replay: {sizes.replay_events:,} events; append_single: {sizes.single_seconds:g} s per run; "
                  f"append_batch: {sizes.batches:,} x {sizes.batch_size}", highlight=False)
    for ok, line in targets(results):
        console.print(f"[{'green' if ok else 'red'}]{'MET   ' if ok else 'MISSED'}[/] {line}", highlight=False)
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


# ---------------------------------------------------------------------------------- entry


def run_bench(
    quick: bool = False,
    as_json: bool = False,
    pg_url: str | None = None,
    sqlite_dir: str | None = None,
    only: str | None = None,
    *,
    _sizes: Sizes | dict[str, Any] | None = None,
    _backends: tuple[str, ...] = ("sqlite", "postgresql"),
) -> int:
    """Run the benchmark; print a table (or JSON); return the exit code (0 unless it failed)."""
    try:
        sizes = _resolve_sizes(quick, _sizes)
        groups = tuple(GROUPS) if not only else tuple(g.strip() for g in only.split(",") if g.strip())
        unknown = [g for g in groups if g not in GROUPS]
        if unknown or not groups:
            log(f"error: unknown metric group(s) {unknown or only!r}; choose from {', '.join(GROUPS)}")
            return 2
        if sqlite_dir is not None and not os.path.isdir(sqlite_dir):
            log(f"error: --sqlite-dir {sqlite_dir!r} is not a directory")
            return 2
    except ValueError as e:
        log(f"error: {e}")
        return 2

    notes: list[str] = []
    results: list[Result] = []
    payload = fill_payload()
    started = time.perf_counter()
    workdir = tempfile.mkdtemp(prefix="tradestate-bench-", dir=sqlite_dir)
    pg: PgTarget | None = None
    schemas: list[str] = []
    run_id = f"bench_{uuid.uuid4().hex[:10]}"

    def schema_for(suffix: str) -> str:
        name = f"{run_id}_{suffix}"
        schemas.append(name)
        return name

    if "postgresql" in _backends:
        target = PgTarget(pg_url or os.environ.get("TRADESTATE_TEST_PG") or DEFAULT_PG)
        problem = _pg_problem(target)
        if problem is None:
            pg = target
        else:
            message = f"PostgreSQL unreachable at {_redact(target.base_url)} ({problem}): skipping the PostgreSQL rows"
            log(message)
            notes.append(message)
    log(f"{'quick' if quick else 'full'} run; SQLite files in {workdir}"
        + (f"; PostgreSQL {_redact(pg.base_url)}, schemas {run_id}_*" if pg else "")
        + f"; single-event payload {len(payload)} bytes")
    load = _load_average()
    if load is not None and load > 0.5:
        log(f"warning: 1-minute load average is {load:.2f} before the run: other work on this machine "
            "will depress the figures")
    ctx = BenchContext(workdir, sizes, pg, schema_for, _backends, quick, notes)
    try:
        for name, group in GROUPS.items():
            if name in groups:
                results += group.run(ctx)
    except Exception as e:  # noqa: BLE001 - a benchmark that fails says why and exits non-zero
        log(f"error: {type(e).__name__}: {e}")
        traceback.print_exc(file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if pg and schemas:
            try:
                with pg.connect() as conn:
                    for name in schemas:
                        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            except Exception as e:  # noqa: BLE001
                log(f"warning: could not drop schemas {schemas}: {e}")
    log(f"done in {time.perf_counter() - started:.0f} s")
    if as_json:
        sys.stdout.write(json.dumps({"results": [asdict(r) for r in results]}) + "\n")
        sys.stdout.flush()
    else:
        _print_human(results, notes, sizes, quick)
    return 0


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return urlunparse(parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@")))
    return url
