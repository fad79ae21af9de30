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
``memory``      peak RSS of a warm-opened client, of the projector during a rebuild and of
                ``recover`` (cold and warm), each in a fresh process; warm recovery time
``takeover``    SIGKILL of the active engine to the standby's first accepted intent (p50/p95),
                default lease
``replication`` durable single-event appends with a synchronous hot standby (commit levels ``on``
                and ``remote_apply``), against raw single-row INSERT commits to the same pair;
                starts its own throwaway primary + standby (skipped, with the reason, when the
                server binaries are missing)
``failover``    write unavailability p50/p95 when the primary dies under engine load (the failover
                harness: ``pg_ctl promote`` rounds, and Patroni rounds where Patroni and etcd are
                installed), against the target detection time + 2 s; skipped like ``replication``
``migrate``     ``tradestate migrate`` SQLite -> PostgreSQL of the generated log (copy, verify, swap) in
                events/s, against one binary COPY of the same rows

The log-size-dependent groups (``LOG_GROUPS``: replay, projection, recovery, postmortem,
memory, backup, drill) measure on a generated trading log of ``--events`` events (1M full, 100k quick), loaded
once per backend and size and shared (``logs.TradingLogs``). ``--scaling`` runs only those groups,
at 100k, 1M and 10M events (or the sizes given), and reports how each figure grows: its value at
each size and the growth factor per 10x more events.

SQLite files go to a temporary directory; PostgreSQL measurements each get a fresh
``bench_<random>_*`` schema, dropped at the end. Every ratio is ours / baseline (for latencies,
lower is better). Every target says MET or MISSED. Progress goes to stderr; with ``--json``
stdout carries one document: ``results`` (every row; with ``--scaling``, of every size in
turn), ``runs`` (the rows per log size), ``targets`` (``met``, ``line``, ``group``, ``ratio`` when
the line states one, ``events``), ``sizes``, ``scaling`` (per figure: values, ratios and growth
per 10x; empty without ``--scaling``), ``loads`` (seconds per log load or copy) and ``machine``
(cores, load average before and after, date).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import asdict, fields, replace
from datetime import datetime, timezone
from types import ModuleType
from typing import Any
from urllib.parse import urlparse, urlunparse

from . import (
    append,
    backup,
    batch,
    drill,
    failover,
    instruments,
    memory,
    migrate,
    partitions,
    postmortem,
    projection,
    reconcile,
    recovery,
    replay,
    replication,
    takeover,
)
from .common import EVENTS_PER_S, FULL, QUICK, BenchContext, PgTarget, Result, Sizes, fill_payload, log
from .logs import MIN_EVENTS, TradingLogs

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
    "memory": memory,
    "takeover": takeover,
    "replication": replication,
    "failover": failover,
    "backup": backup,
    "migrate": migrate,
    "drill": drill,
    "partitions": partitions,
    "instruments": instruments,
}

# The groups whose figures depend on the trading log's length: --events sets it, --scaling varies it.
LOG_GROUPS = ("replay", "projection", "recovery", "postmortem", "memory", "backup", "drill")
SCALING_SIZES = (100_000, 1_000_000, 10_000_000)
_SUFFIXES = {"": 1, "k": 1_000, "m": 1_000_000}


def parse_events(text: str | int, option: str = "--events") -> int:
    """A log size: an integer, or with a ``k`` / ``M`` suffix (``100k``, ``1M``, ``2.5M``,
    ``1_000_000``); at least ``MIN_EVENTS``. ValueError says what is wrong."""
    if isinstance(text, bool):
        raise ValueError(f"not a number of events: {text!r}")
    if isinstance(text, int):
        value = text
    else:
        match = re.fullmatch(r"\s*([0-9][0-9_]*(?:\.[0-9]+)?)\s*([kKmM]?)\s*", str(text))
        if not match:
            raise ValueError(f"not a number of events: {text!r} (e.g. 250000, 100k, 1M)")
        number = float(match.group(1).replace("_", "")) * _SUFFIXES[match.group(2).lower()]
        if number != int(number):
            raise ValueError(f"not a whole number of events: {text!r}")
        value = int(number)
    if value < MIN_EVENTS:
        raise ValueError(f"{option} must be at least {MIN_EVENTS:,} events (got {value:,})")
    return value


def parse_scaling(text: str | bool | tuple[int | str, ...] | list[int | str] | None) -> tuple[int, ...] | None:
    """The sizes of a scaling run: None (no scaling), True (``SCALING_SIZES``), or a comma-separated
    list / sequence of sizes (at least two, all different); returned in increasing order."""
    if text is None or text is False:
        return None
    if text is True:
        return SCALING_SIZES
    items = [p for p in str(text).split(",")] if isinstance(text, str) else list(text)
    if any(isinstance(p, str) and not p.strip() for p in items):
        raise ValueError(f"--scaling: an empty size in {text!r} (e.g. --scaling 100k,1M)")
    sizes = sorted({parse_events(p, "--scaling") for p in items})
    if len(sizes) < 2:
        raise ValueError(f"--scaling needs at least two different sizes (got {text!r})")
    return tuple(sizes)


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

_RATIO = re.compile(r"(\d[\d,]*\.\d+)x")
_TARGET_BOUND = re.compile(r"target\s*[<>]=\s*[\d,.]+x")  # the target's own figure, not a measurement
# what a line states beside its measurement: the best this machine allows, and its parts
_CONTEXT = re.compile(r"(?:ceiling|floor) here [\d,.]+x|\([\d,.]+x alone\)")


def target_checks(results: list[Result]) -> list[tuple[str, bool, str]]:
    """(group, met, line) for every target each group states, in group order."""
    checks: list[tuple[str, bool, str]] = []
    for name, group in GROUPS.items():
        checks += [(name, bool(met), line) for met, line in group.targets(results)]
    return checks


def targets(results: list[Result]) -> list[tuple[bool, str]]:
    """(met, line) for every target each group states, in group order."""
    return [(met, line) for _group, met, line in target_checks(results)]


def _target_doc(group: str, met: bool, line: str, events: int | None) -> dict[str, Any]:
    """A target for the JSON: its verdict and line, the ratio the line states (the last ``N.NNx``
    that is neither the target's own bound, ``target >= 0.6x``, nor the context stated beside it,
    ``floor here 1.52x``, ``ceiling here 0.37x``, ``(2.01x alone)``; None when it states none) and
    the log size it was measured at."""
    ratios = _RATIO.findall(_CONTEXT.sub("", _TARGET_BOUND.sub("", line)))
    return {"group": group, "met": met, "line": line,
            "ratio": float(ratios[-1].replace(",", "")) if ratios else None, "events": events}


def _format_value(value: float, unit: str) -> str:
    if unit == EVENTS_PER_S:
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.3f}"
    if unit == "MB":
        return f"{value:,.1f}"
    return f"{value:.2f}"


def _events_label(n: int) -> str:
    for divisor, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= divisor and n % (divisor // 10) == 0:
            return f"{n / divisor:g}{suffix}"
    return f"{n:,}"


def growth_per_10x(v1: float, n1: int, v2: float, n2: int) -> float:
    """How much a figure grows per 10x more events between two sizes: (v2/v1)^(1/log10(n2/n1));
    1.0 is constant in the log length, 10.0 linear (for a duration; a rate then falls 10x)."""
    return (v2 / v1) ** (1 / math.log10(n2 / n1))


def scaling_table(runs: list[tuple[int, list[Result]]]) -> list[dict[str, Any]]:
    """Per figure (metric, backend, baseline): its unit, value and ratio at each size measured,
    and the growth per 10x between consecutive sizes ("100000-1000000": factor)."""
    figures: dict[tuple[str, str, str], dict[str, Any]] = {}
    for n, results in runs:
        for r in results:
            doc = figures.setdefault((r.metric, r.backend, r.baseline), {
                "metric": r.metric, "backend": r.backend, "baseline": r.baseline, "unit": r.unit,
                "values": {}, "ratios": {}, "growth_per_10x": {}})
            doc["values"][str(n)] = r.value
            doc["ratios"][str(n)] = r.ratio
    for doc in figures.values():
        sizes = [int(k) for k in doc["values"]]
        for a, b in zip(sizes, sizes[1:]):
            doc["growth_per_10x"][f"{a}-{b}"] = growth_per_10x(doc["values"][str(a)], a, doc["values"][str(b)], b)
    return list(figures.values())


def _console():
    from rich.console import Console

    console = Console()
    if not console.is_terminal or console.width < 132:
        console = Console(width=132)
    return console


def _print_results(console: Any, results: list[Result], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for name, justify in (("metric", "left"), ("backend", "left"), ("value", "right"), ("unit", "left"),
                          ("baseline", "left"), ("baseline value", "right"), ("ratio", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in results:
        table.add_row(r.metric, r.backend, _format_value(r.value, r.unit), r.unit, r.baseline,
                      _format_value(r.baseline_value, r.unit), f"{r.ratio:.2f}x")
    console.print(table)


def _print_targets(console: Any, checks: list[tuple[str, bool, str]], prefix: str = "") -> None:
    for _group, ok, line in checks:
        console.print(f"[{'green' if ok else 'red'}]{'MET   ' if ok else 'MISSED'}[/] {prefix}{line}", highlight=False)


def _print_human(results: list[Result], notes: list[str], sizes: Sizes, quick: bool) -> None:
    console = _console()
    _print_results(console, results, f"tradestate bench ({'quick' if quick else 'full'}; "
                                      "ratio = ours / baseline, for ms, s and MB lower is better)")
    console.print(f"log-size-dependent groups: {sizes.replay_events:,} events; append_single: "
                  f"{sizes.single_seconds:g} s per run; append_batch: {sizes.batches:,} x {sizes.batch_size}",
                  highlight=False)
    _print_targets(console, target_checks(results))
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


def _print_scaling(runs: list[tuple[int, list[Result]]], notes: list[str]) -> None:
    from rich.table import Table

    console = _console()
    sizes = [n for n, _ in runs]
    for n, results in runs:
        _print_results(console, results, f"tradestate bench at {n:,} events (ratio = ours / baseline)")
    table = Table(title="how each figure grows with the log (growth per 10x events: 1.00 = constant; "
                        "a duration growing linearly shows 10.00)")
    table.add_column("metric")
    table.add_column("backend")
    table.add_column("unit")
    for n in sizes:
        table.add_column(_events_label(n), justify="right")
    for a, b in zip(sizes, sizes[1:]):
        table.add_column(f"x/10x {_events_label(a)}-{_events_label(b)}", justify="right")
    table.add_column("ratio at each size", justify="right")
    table.add_column("baseline")
    for doc in scaling_table(runs):
        cells = [_format_value(doc["values"][str(n)], doc["unit"]) if str(n) in doc["values"] else "-" for n in sizes]
        growth = [f"{doc['growth_per_10x'][f'{a}-{b}']:.2f}" if f"{a}-{b}" in doc["growth_per_10x"] else "-"
                  for a, b in zip(sizes, sizes[1:])]
        ratios = " / ".join(f"{doc['ratios'][str(n)]:.2f}x" if str(n) in doc["ratios"] else "-" for n in sizes)
        table.add_row(doc["metric"], doc["backend"], doc["unit"], *cells, *growth, ratios, doc["baseline"])
    console.print(table)
    for n, results in runs:
        _print_targets(console, target_checks(results), f"[{_events_label(n)}] ")
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


def _machine(load_before: tuple[float, float, float] | None) -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "load_average_before": list(load_before) if load_before else None,
        "load_average_after": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------------------------- entry


def run_bench(
    quick: bool = False,
    as_json: bool = False,
    pg_url: str | None = None,
    sqlite_dir: str | None = None,
    only: str | None = None,
    *,
    events: int | str | None = None,
    scaling: str | bool | tuple[int | str, ...] | list[int | str] | None = None,
    _sizes: Sizes | dict[str, Any] | None = None,
    _backends: tuple[str, ...] = ("sqlite", "postgresql"),
) -> int:
    """Run the benchmark; print a table (or JSON); return the exit code (0 unless it failed, 2 for
    bad arguments). ``events``: the log size of the log-size-dependent groups (``LOG_GROUPS``;
    default 1M, quick 100k). ``scaling``: run only those groups at each size (True: 100k, 1M,
    10M; or a comma-separated list such as ``"100k,1M"``) and report how each figure grows."""
    try:
        sizes = _resolve_sizes(quick, _sizes)
        if events is not None and scaling not in (None, False):
            raise ValueError("--events and --scaling exclude each other (--scaling takes its sizes: --scaling 100k,1M)")
        if events is not None:
            sizes = replace(sizes, replay_events=parse_events(events))
        scaling_sizes = parse_scaling(scaling)
        groups = tuple(GROUPS) if not only else tuple(g.strip() for g in only.split(",") if g.strip())
        unknown = [g for g in groups if g not in GROUPS]
        if unknown or not groups:
            log(f"error: unknown metric group(s) {unknown or only!r}; choose from {', '.join(GROUPS)}")
            return 2
        if scaling_sizes is not None:
            if only and (other := [g for g in groups if g not in LOG_GROUPS]):
                raise ValueError(f"--scaling runs only the log-size-dependent groups ({', '.join(LOG_GROUPS)}); "
                                 f"not {', '.join(other)}")
            groups = tuple(g for g in groups if g in LOG_GROUPS)
        if sqlite_dir is not None and not os.path.isdir(sqlite_dir):
            log(f"error: --sqlite-dir {sqlite_dir!r} is not a directory")
            return 2
    except ValueError as e:
        log(f"error: {e}")
        return 2

    notes: list[str] = []
    runs: list[tuple[int, list[Result]]] = []
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
    sizes_text = (f"scaling over {', '.join(f'{n:,}' for n in scaling_sizes)} events" if scaling_sizes
                  else f"{sizes.replay_events:,}-event trading log")
    log(f"{'quick' if quick else 'full'} run, {sizes_text}; SQLite files in {workdir}"
        + (f"; PostgreSQL {_redact(pg.base_url)}, schemas {run_id}_*" if pg else "")
        + f"; single-event payload {len(payload)} bytes")
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    load = _load_average()
    if load is not None and load > 0.5:
        log(f"warning: 1-minute load average is {load:.2f} before the run: other work on this machine "
            "will depress the figures")
    logs = TradingLogs(workdir, pg, schema_for)
    failures: list[tuple[int, str, str]] = []  # (log size, group, error): a group that raised
    ctx = BenchContext(workdir, sizes, pg, schema_for, _backends, quick, notes, logs)
    try:
        for n in scaling_sizes or (sizes.replay_events,):
            # each size its own directory: the groups' own files do not meet those of another size
            size_dir = os.path.join(workdir, str(n)) if scaling_sizes else workdir
            os.makedirs(size_dir, exist_ok=True)
            size_ctx = replace(ctx, sizes=replace(sizes, replay_events=n), workdir=size_dir,
                               schema_for=(lambda suffix, n=n: schema_for(f"{suffix}{n}")) if scaling_sizes
                               else schema_for)  # and its own schemas
            results: list[Result] = []
            runs.append((n, results))
            for name, group in GROUPS.items():
                if name in groups:
                    try:
                        results += group.run(size_ctx)
                    except Exception as e:  # noqa: BLE001 - the other groups' figures still count
                        log(f"error in group {name}: {type(e).__name__}: {e}")
                        traceback.print_exc(file=sys.stderr)
                        failures.append((n, name, f"{type(e).__name__}: {e}"))
            logs.release(n)  # the logs of this size are done with: free the disk before the next
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
    if logs.seconds:
        notes.append("trading logs generated and loaded once per backend and size (copies for groups that write): "
                     + "; ".join(f"{what} {seconds:.1f} s" for what, seconds in logs.seconds.items()))
    if as_json:
        document = {
            "results": [asdict(r) for _n, results in runs for r in results],
            "runs": [{"events": n, "results": [asdict(r) for r in results]} for n, results in runs],
            "targets": [_target_doc(group, met, line, n if name_uses_log(group) else None)
                        for n, results in runs for group, met, line in target_checks(results)],
            "sizes": {**asdict(sizes), "events": list(scaling_sizes) if scaling_sizes else sizes.replay_events,
                      "scaling": scaling_sizes is not None, "quick": quick},
            "scaling": scaling_table(runs) if scaling_sizes else [],
            "loads": logs.seconds,
            "machine": _machine(load_before),
            "failures": [{"events": n, "group": name, "error": error} for n, name, error in failures],
        }
        sys.stdout.write(json.dumps(document) + "\n")
        sys.stdout.flush()
    elif scaling_sizes:
        _print_scaling(runs, notes)
    else:
        _print_human(runs[0][1], notes, sizes, quick)
    if failures:
        if not as_json:
            console = _console()
            for n, name, error in failures:
                console.print(f"[bold red]FAILED[/] group {name}" + (f" at {n:,} events" if scaling_sizes else "")
                              + f": {error} (its rows are missing; the other groups' rows stand)", highlight=False)
        return 1
    return 0


def name_uses_log(group: str) -> bool:
    """Whether ``group``'s figures depend on the trading log's length (``LOG_GROUPS``)."""
    return group in LOG_GROUPS


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
