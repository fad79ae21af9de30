"""``tradestate bench`` group ``postmortem``: post-mortem queries — state at an instant, an order's
trace, market-data replay — on a generated log of ``sizes.replay_events`` events (1M; quick: 100k).

* ``postmortem_state_at_ms`` (p50 and p99): ``replay.state_at_time`` (instant -> position by binary
  search, newest checkpoint at or before it restored and checked, tail folded, the state view
  built) at random instants, with checkpoints on a grid of ``CHECKPOINT_EVERY`` events. The
  instants are drawn first and only the grid checkpoints they use (the newest grid point at or
  before each) are written, in one fold of the log: each query restores exactly the checkpoint
  it would with the whole grid kept, and the run stays within a disk at ten million events
  (a checkpoint holds the packed ids of every finished order: ~30 MB there). Baseline: that
  fold, from zero to the head, the checkpoint writes left out (an old instant with only the
  newest checkpoints kept, as an engine keeps them, costs a fold from zero up to it). Target: p99 <= ``TARGET_STATE_AT_P99_MS``.
* ``postmortem_trace_ms`` (p50 and p99): ``replay.trace`` of random orders of the log with the
  order-reference index built (its build time is logged). Baseline: the trace without the index
  (reading the order's account stream), median of a few. Target: p99 <= ``TARGET_TRACE_P99_MS``.
* ``postmortem_market_replay`` (bars/s): ``replay_market(..., speed=max)`` over a generated market
  log (read, decode, sort by time, deliver to a callback), in rounds interleaved with the
  baseline, the store's raw read of the same rows plus ``orjson.loads``; the row is the round of
  the median ratio. Target: >= ``TARGET_MARKET_RAW`` of it.
"""

from __future__ import annotations

import os
import random
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson

from .common import BenchContext, Result, Sizes, log, percentile, result, sqlite_raw_conn

TARGET_STATE_AT_P99_MS = 100.0  # issue 16: state at a random instant, p99
TARGET_TRACE_P99_MS = 50.0  # issue 16: the trace of an order, p99
TARGET_MARKET_RAW = 0.6  # issue 16: market replay at full speed / raw read + decode of the same rows
CHECKPOINT_EVERY = 2_000
MARKET_ROUNDS = 5


def _sample_instants(store: Any, samples: int, seed: int) -> list[datetime]:
    from ...replay.log import bounds

    b = bounds(store)
    rnd = random.Random(seed)
    span = (b.last_at - b.first_at).total_seconds()
    return [b.first_at + timedelta(seconds=rnd.uniform(0, span)) for _ in range(samples)]


def _write_grid_checkpoints(store: Any, every: int, instants: list[datetime]) -> tuple[int, float, float]:
    """The checkpoints of a grid of ``every`` events that ``instants`` use (the newest grid point at
    or before each one's position), written in one fold of the log from zero; (written, seconds
    folding to the last of them, the writes left out, seconds writing)."""
    from ...adapters.store import checkpoints as cp
    from ...adapters.store import gc_paused
    from ...domain.state import TradingState
    from ...replay import position_at

    grid = sorted({position_at(store, t) // every * every for t in instants} - {0})
    grid.append(store.trading.head())  # the fold goes on to the head: the baseline (a fold from zero)
    state = TradingState()
    written, writing = 0, 0.0
    t0 = time.perf_counter()
    with gc_paused():
        apply, loads = state.apply, orjson.loads
        wanted = iter(grid)
        next_at = next(wanted, None)
        stop = grid[-1] if grid else 0
        for pos, stream, version, type_name, data, at in store.trading.iter_rows(0, stop):
            apply(pos, stream, version, type_name, loads(data), at)
            if pos == next_at:
                next_at = next(wanted, None)
                if next_at is None:
                    break  # the head: folded, not a grid point
                w0 = time.perf_counter()
                cp.write(store, state, keep=0)
                writing += time.perf_counter() - w0
                written += 1
    return written, time.perf_counter() - t0 - writing, writing


def _state_at_samples(store: Any, instants: list[datetime]) -> list[float]:
    from ... import replay

    out = []
    for t in instants:
        t0 = time.perf_counter()
        st = replay.state_at_time(store, t)
        st.view()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _state_at(backend: str, url: str, sizes: Sizes, samples: int) -> list[Result]:
    from ...adapters.store import checkpoints as cp
    from ...adapters.store import open_store
    from ...replay.log import log_times

    store = open_store(url, create=False)
    try:
        t0 = time.perf_counter()
        log_times(store)
        log(f"{backend} postmortem: the log's times scanned in {time.perf_counter() - t0:.1f} s (once per process)")
        t0 = time.perf_counter()
        cp.create_risk_index(store)
        log(f"{backend} postmortem: risk-event index made in {time.perf_counter() - t0:.1f} s")
        warm = _sample_instants(store, 3, seed=5)
        instants = _sample_instants(store, samples, seed=6)
        written, folding, writing = _write_grid_checkpoints(store, CHECKPOINT_EVERY, warm + instants)
        size = max((c.size for c in cp.list_checkpoints(store)), default=0)
        baseline = folding * 1000  # the fold from zero to the head that wrote them, the writes left out
        log(f"{backend} postmortem: {written} checkpoints of a grid of {CHECKPOINT_EVERY:,} written in {writing:.1f} s "
            f"(the largest {size / 1e6:.1f} MB) by a fold from zero to the head that took {folding:.1f} s besides")
        _state_at_samples(store, warm)  # connections, caches
        lat = _state_at_samples(store, instants)
    finally:
        store.close()
    lat.sort()
    p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
    log(f"{backend} postmortem: state at a random instant of {sizes.replay_events:,} events: p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms, max {lat[-1]:.1f} ms over {samples} instants (fold from zero: {baseline:,.0f} ms)")
    return [
        result("postmortem_state_at_p50_ms", backend, p50, "ms", "fold_from_zero_ms", baseline),
        result("postmortem_state_at_p99_ms", backend, p99, "ms", "fold_from_zero_ms", baseline),
    ]


def _random_orders(store: Any, count: int, seed: int) -> list[tuple[str, str]]:
    """(account, client order id) of ``count`` orders at random positions of the log."""
    rnd = random.Random(seed)
    head = store.trading.head()
    out: list[tuple[str, str]] = []
    while len(out) < count:
        rows = store.trading.read(after=rnd.randrange(head), limit=1)
        if rows and rows[0].originator_id.startswith("order-"):
            d = orjson.loads(rows[0].state)
            out.append((d["account"], d["client_order_id"]))
    return out


def _trace_ms(store: Any, orders: list[tuple[str, str]]) -> list[float]:
    from ... import replay

    out = []
    for account, coid in orders:
        t0 = time.perf_counter()
        replay.trace(store, account, coid).to_json()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _trace_ms_without_index(store: Any, orders: list[tuple[str, str]]) -> list[float]:
    """``_trace_ms`` as without the order index (reading each order's account stream)."""
    import importlib

    trace_module = importlib.import_module("...replay.trace", __package__)  # the module, not the function
    kept = trace_module._index_upto
    trace_module._index_upto = lambda store: None
    try:
        return _trace_ms(store, orders)
    finally:
        trace_module._index_upto = kept


def _trace(backend: str, url: str, sizes: Sizes, samples: int, scans: int) -> list[Result]:
    from ...adapters.store import open_store, order_refs

    store = open_store(url, create=False)
    try:
        scanned = sorted(_trace_ms_without_index(store, _random_orders(store, scans, seed=8)))
        if order_refs.state(store) is None or order_refs.state(store).upto < store.trading.head():
            built = order_refs.catch_up(store)
            log(f"{backend} postmortem: order index built in {built.seconds:.1f} s ({built.events:,} account events, "
                f"{built.refs:,} references)")
        _trace_ms(store, _random_orders(store, 3, seed=9))  # connections, caches
        lat = sorted(_trace_ms(store, _random_orders(store, samples, seed=10)))
    finally:
        store.close()
    p50, p99, scan = percentile(lat, 0.5), percentile(lat, 0.99), percentile(scanned, 0.5)
    log(f"{backend} postmortem: trace of a random order of {sizes.replay_events:,} events: p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms, max {lat[-1]:.1f} ms over {samples} orders (without the index: {scan:,.0f} ms)")
    return [
        result("postmortem_trace_p50_ms", backend, p50, "ms", "trace_scan_ms", scan),
        result("postmortem_trace_p99_ms", backend, p99, "ms", "trace_scan_ms", scan),
    ]


def _bars(n: int) -> list[tuple[int, str, int, str, bytes, datetime]]:
    from ...domain import events as ev
    from ...domain.ids import bar_stream_id

    rnd = random.Random(3)
    t0 = datetime(2026, 11, 16, 14, 30, tzinfo=timezone.utc)
    symbols = [f"S{i:02d}" for i in range(20)]
    price = {s: 100.0 + i for i, s in enumerate(symbols)}
    rows = []
    template = ev.BarRecorded(event_id="5f0c8a52-2f6e-4c1b-9a43-0d7e9b1c2a11", occurred_at=t0, venue="sim",
                              symbol="S00", timeframe="1m", start=t0, open=Decimal(1), high=Decimal(1),
                              low=Decimal(1), close=Decimal(1), volume=Decimal(1)).to_payload()
    for i in range(n):
        minute, k = divmod(i, len(symbols))
        s = symbols[k]
        start = t0 + timedelta(minutes=minute)
        o = price[s]
        c = max(1.0, o * (1 + rnd.uniform(-0.002, 0.002)))
        price[s] = c
        d = dict(template)
        d.update(event_id=f"5f0c8a52-2f6e-4c1b-9a43-{i:012x}", symbol=s, start=start.isoformat(),
                 occurred_at=(start + timedelta(minutes=1)).isoformat(), open=f"{o:.2f}", close=f"{c:.2f}",
                 high=f"{max(o, c) * 1.001:.2f}", low=f"{min(o, c) * 0.999:.2f}", volume=str(rnd.randrange(100, 9999)))
        rows.append((i + 1, bar_stream_id("sim", s, "1m"), int(start.timestamp()), "BarRecorded", orjson.dumps(d),
                     start + timedelta(minutes=1)))
    return rows


def _market(workdir: str, quick: bool) -> list[Result]:
    from ...adapters.store import open_store
    from ...replay import replay_market

    n = 20_000 if quick else 200_000
    path = os.path.join(workdir, "postmortem_market.db")
    open_store(f"sqlite:///{path}").close()
    conn = sqlite_raw_conn(path)
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO ts_market_events (position, stream_id, stream_version, type, data, recorded_at) "
                     "VALUES (?,?,?,?,?,?)", ((p, s, v, t, d, r.isoformat()) for p, s, v, t, d, r in _bars(n)))
    conn.execute("COMMIT")
    conn.close()
    store = open_store(f"sqlite:///{path}", create=False)
    start = datetime(2026, 11, 16, tzinfo=timezone.utc)
    raws, rates, cpu_ratios = [], [], []
    try:
        for round_no in range(1, MARKET_ROUNDS + 1):  # interleaved: the machine's load hits both alike
            t0, c0 = time.perf_counter(), time.process_time()
            count = 0
            for row in store.market.iter_rows(0):
                orjson.loads(row[4])
                count += 1
            raws.append(count / (time.perf_counter() - t0))
            raw_cpu = time.process_time() - c0
            got: list[Any] = []
            t0, c0 = time.perf_counter(), time.process_time()
            stats = replay_market(store, start, start + timedelta(days=30), None, got.append, trading=False).run()
            rates.append(stats.bars / (time.perf_counter() - t0))
            cpu_ratios.append(raw_cpu / (time.process_time() - c0) if count == stats.bars else float("nan"))
            del got
            if stats.bars != n:
                raise RuntimeError(f"market replay delivered {stats.bars} of {n} bars")
            log(f"  round {round_no}: replay {rates[-1]:,.0f} bars/s, raw {raws[-1]:,.0f} rows/s "
                f"({rates[-1] / raws[-1]:.2f}x; in CPU time {cpu_ratios[-1]:.2f}x)")
    finally:
        store.close()
    # Each round's ratio is of two runs side by side; the row is the round of the median ratio
    # (maxima of different rounds would compare different moments of a loaded machine).
    rounds = sorted(zip(rates, raws), key=lambda rw: rw[0] / rw[1])
    rate, raw = rounds[len(rounds) // 2]
    log(f"sqlite postmortem: market replay at full speed: {rate:,.0f} bars/s ({n:,} bars; raw read + decode "
        f"{raw:,.0f} rows/s; median round {rate / raw:.2f}x, rounds {rounds[0][0] / rounds[0][1]:.2f}.."
        f"{rounds[-1][0] / rounds[-1][1]:.2f}x; in CPU time, which the machine's load moves less: median "
        f"{sorted(cpu_ratios)[len(cpu_ratios) // 2]:.2f}x)")
    return [result("postmortem_market_replay", "sqlite", rate, "bars/s", "raw_select_orjson", raw)]


def run(ctx: BenchContext) -> list[Result]:
    """Measure; return the rows."""
    samples = 40 if ctx.quick else 100
    scans = 3
    results: list[Result] = []
    n = ctx.sizes.replay_events
    if "sqlite" in ctx.backends:
        log(f"sqlite postmortem: {n:,} events")
        path = ctx.logs.sqlite_copy(n, "postmortem")  # checkpoints are written: a copy of the shared log
        results += _state_at("sqlite", f"sqlite:///{path}", ctx.sizes, samples)
        results += _trace("sqlite", f"sqlite:///{path}", ctx.sizes, samples, scans)
        ctx.logs.discard(n, "sqlite", path)
        results += _market(ctx.workdir, ctx.quick)
    if ctx.pg is not None and "postgresql" in ctx.backends:
        log(f"postgresql postmortem: {n:,} events")
        schema = ctx.logs.pg_copy(n, "pm")  # checkpoints are written: a copy of the shared log
        results += _state_at("postgresql", ctx.pg.url_for(schema), ctx.sizes, samples)
        results += _trace("postgresql", ctx.pg.url_for(schema), ctx.sizes, samples, scans)
        ctx.logs.discard(n, "postgresql", schema)
    return results


def targets(results: list[Result]) -> list[tuple[bool, str]]:
    """(met, line) for each target of this group found in results."""
    out = []
    for r in results:
        if r.metric == "postmortem_state_at_p99_ms":
            out.append((r.value <= TARGET_STATE_AT_P99_MS,
                        f"state_at p99 ({r.backend}): {r.value:.1f} ms at random instants, "
                        f"{r.value / TARGET_STATE_AT_P99_MS:.2f}x the target (<= {TARGET_STATE_AT_P99_MS:g} ms; "
                        f"a fold from zero: {r.baseline_value:,.0f} ms)"))
        elif r.metric == "postmortem_trace_p99_ms":
            out.append((r.value <= TARGET_TRACE_P99_MS,
                        f"trace p99 ({r.backend}): {r.value:.1f} ms for a random order, "
                        f"{r.value / TARGET_TRACE_P99_MS:.2f}x the target (<= {TARGET_TRACE_P99_MS:g} ms; "
                        f"without the index: {r.baseline_value:,.0f} ms)"))
        elif r.metric == "postmortem_market_replay":
            ratio = r.value / r.baseline_value if r.baseline_value else float("nan")
            out.append((ratio >= TARGET_MARKET_RAW,
                        f"market replay ({r.backend}): {ratio:.2f}x raw read + decode "
                        f"(target >= {TARGET_MARKET_RAW:g}x)"))
    return out
