"""``tradestate bench`` group ``partitions``: a PostgreSQL log in 84 monthly partitions against
the same log in one table (issue 17: appends and replay no slower with seven years of months).

Two logs of N events (``--events``; the same generated rows), one a plain table, one created with
``?partitions=month`` and laid out as 83 closed partitions holding the N events plus the open one
appends go to (``partitions.create_history``), so 84 in all:

``partitions_append_1w``  single-event commits of one writer (``EventLog.append``, as the
                          ``append`` group's single-writer row), events/s. Baseline: the same on
                          the one table.
``partitions_replay``     reading the whole log (``iter_rows``, every partition), events/s.
                          Baseline: the same on the one table.
``partitions_read_tail``  reading the last 1/84 of the positions (a follower catching up, a
                          replay from a recent checkpoint: the reader prunes to one partition),
                          events/s. Baseline: the same on the one table.

At least six rounds run interleaved (one table then partitioned, then the other way round, ...)
and the best of each is kept, so that a burst of load on the box slows both alike. Target: each >= 0.95x the one table ("no slower").
The roll (closing the open partition at the head under a short lock) is timed and logged.
"""

from __future__ import annotations

import gc
import statistics
import time

from .common import EVENTS_PER_S, BenchContext, Result, log, ratio_checks, result

MONTHS = 84
TARGET_RATIO = 0.95
STREAMS = 1_000


def _months(n: int) -> list[str]:
    return [f"{2019 + i // 12}-{i % 12 + 1:02d}" for i in range(n)]


def _load(url: str, n: int, *, partitioned: bool) -> None:
    """A log of ``n`` generated events at ``url`` (84 partitions when ``partitioned``)."""
    from ...adapters.store import open_store
    from ...adapters.store import partitions as P
    from .common import fill_payload

    payload = fill_payload()
    with open_store(url) as store:
        schema = store.trading.schema
        if partitioned:
            per = max(1, n // (MONTHS - 1))
            bounds = [1] + [1 + per * i for i in range(1, MONTHS - 1)] + [n + 1]
            P.create_history(store, "ts_events", _months(MONTHS), bounds)
        conn = store.trading.checkout_connection()
        try:
            with conn.transaction(), conn.cursor().copy(
                    f'COPY "{schema}".ts_events (position, stream_id, stream_version, type, data) FROM STDIN') as cp:
                for p in range(1, n + 1):
                    cp.write_row((p, f"s{p % STREAMS}", p // STREAMS + 1, "OrderFilled", payload))
            conn.execute(f"SELECT setval('\"{schema}\".ts_events_position_seq', %s)", (n,))
            conn.execute(f'ANALYZE "{schema}".ts_events')
        finally:
            store.trading.checkin_connection(conn)


def _append_rate(url: str, seconds: float, stream: str) -> float:
    from ...adapters.store import new_event, open_store
    from .common import fill_payload

    payload = fill_payload()
    with open_store(url, create=False) as store:
        log_ = store.trading
        version = 0
        for _ in range(50):  # warm: connection, prepared statements
            version += 1
            log_.append([new_event(stream, version, "OrderFilled", payload)])
        count = 0
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            version += 1
            log_.append([new_event(stream, version, "OrderFilled", payload)])
            count += 1
        return count / elapsed


def _read_rate(url: str, after: int, stop: int, page: int) -> float:
    from ...adapters.store import open_store

    with open_store(url, create=False) as store:
        # a long-lived reader's connections (a follower, the service): the catalog of the partitions
        # (and of the one table) is loaded and the statements prepared once per connection, not per
        # read. A fresh connection pays that once: ~25 ms for 84 partitions here (logged by run()).
        for _ in range(6):
            sum(1 for _ in store.trading.iter_rows(after, after + 1))
        sum(1 for _ in store.trading.iter_rows(after, stop, batch=page))  # the streaming connection too
        gc.collect()
        started = time.perf_counter()
        count = sum(1 for _ in store.trading.iter_rows(after, stop, batch=page))
        elapsed = time.perf_counter() - started
    if count != stop - after:
        raise RuntimeError(f"read {count} rows of {after + 1}..{stop}")
    return count / elapsed


def run(ctx: BenchContext) -> list[Result]:
    """Measure on PostgreSQL (the layout is PostgreSQL's); return the rows."""
    if ctx.pg is None:
        ctx.notes.append("partitions: PostgreSQL only, and it is not reachable: skipped")
        return []
    n = max(ctx.sizes.replay_events, MONTHS * 10)
    plain = ctx.pg.url_for(ctx.schema_for("part_one"))
    parted = ctx.pg.url_for(ctx.schema_for("part_84")) + "&partitions=month"
    log(f"partitions: {n:,} events in one table and in {MONTHS} monthly partitions")
    for url, flag in ((plain, False), (parted, True)):
        started = time.perf_counter()
        _load(url, n, partitioned=flag)
        log(f"  loaded {'84 partitions' if flag else 'one table'} in {time.perf_counter() - started:.1f} s")
    best: dict[tuple[str, bool], float] = {}
    rounds: dict[tuple[str, bool], list[float]] = {}
    seconds = ctx.sizes.single_seconds / 4
    tail = max(1, n // MONTHS)
    layouts = [(plain, False), (parted, True)]
    for round_ in range(max(6, 3 * ctx.sizes.repeats)):
        for url, flag in layouts if round_ % 2 == 0 else layouts[::-1]:  # neither always goes first
            figures = {
                "partitions_append_1w": _append_rate(url, seconds, f"bench-{round_}"),
                "partitions_replay": _read_rate(url, 0, n, ctx.sizes.page),
                "partitions_read_tail": _read_rate(url, n - tail, n, ctx.sizes.page),
            }
            for metric, value in figures.items():
                best[(metric, flag)] = max(best.get((metric, flag), 0.0), value)
                rounds.setdefault((metric, flag), []).append(value)
    rows = [result(metric, "postgresql", best[(metric, True)], EVENTS_PER_S, "one_table", best[(metric, False)])
            for metric in ("partitions_append_1w", "partitions_replay", "partitions_read_tail")]
    for r in rows:
        # each round's two runs were back to back: the median of their ratios, beside the best of each
        paired = statistics.median(a / b for a, b in zip(rounds[(r.metric, True)], rounds[(r.metric, False)]))
        line = (f"partitions: {r.metric} {r.value:,.0f} vs {r.baseline_value:,.0f} events/s in one table "
                f"(best of each {r.ratio:.2f}x; median of the rounds' ratios {paired:.2f}x)")
        log("  " + line)
        ctx.notes.append(line)
    from ...adapters.store import open_store
    from ...adapters.store import partitions as P

    with open_store(parted, create=False) as store:
        started = time.perf_counter()
        closed = P.roll(store, "ts_events", month="2099-01")
        rolled = time.perf_counter() - started
    rows_closed = (closed.end - closed.first) if closed else 0
    cold = {}
    for url, flag in layouts:  # the catalog cost of a fresh connection (a command's first read)
        import psycopg

        with psycopg.connect(ctx.pg.conninfo(), autocommit=True) as conn:
            schema = url.split("schema=")[1].split("&")[0]
            started = time.perf_counter()
            conn.execute(f'SELECT count(*) FROM "{schema}".ts_events WHERE position > 0 AND position <= 10').fetchone()
            cold[flag] = time.perf_counter() - started
    first = (f"partitions: a fresh connection's first read took {cold[True] * 1000:.1f} ms with {MONTHS} partitions, "
             f"{cold[False] * 1000:.1f} ms with one table (the catalog, loaded once per connection)")
    log("  " + first)
    ctx.notes.append(first)
    note = f"partitions: the roll closed an open partition of {rows_closed:,} positions in {rolled * 1000:.0f} ms"
    log("  " + note)
    ctx.notes.append(note)
    return rows


def targets(results: list[Result]) -> list[tuple[bool, str]]:
    """(met, line) for each target of this group found in results."""
    checks: list[tuple[bool, str]] = []
    for metric in ("partitions_append_1w", "partitions_replay", "partitions_read_tail"):
        checks += ratio_checks(results, metric, "postgresql", "one_table", TARGET_RATIO,
                               f"one table with {MONTHS} monthly partitions")
    return checks
