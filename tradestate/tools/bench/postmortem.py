"""``tradestate bench`` group ``postmortem``: post-mortem queries, state-at-T and market-data replay.

* ``postmortem_state_at_ms`` (p50 and p99): ``replay.state_at_time`` (instant -> position by binary
  search, newest checkpoint at or before it restored, tail folded, the state view built) at random
  instants of a generated log of ``sizes.replay_events`` events (1M; quick: 100k), with a
  checkpoint every ``CHECKPOINT_EVERY`` events written through ``checkpoints.write`` (all kept).
  Baseline: one fold of the whole log from zero (what state-at-T costs without checkpoints at
  the head). Target: p99 < 250 ms.
* ``postmortem_market_replay`` (bars/s): ``replay_market(..., speed=max)`` over a generated
  market log (read, decode, sort by time, deliver to a callback). Baseline: the raw read of the
  same rows plus ``orjson.loads``.
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

TARGET_STATE_AT_P99_MS = 250.0
CHECKPOINT_EVERY = 2_000


def _write_checkpoints(store: Any, every: int) -> tuple[int, float]:
    from ...adapters.store import checkpoints as cp
    from ...adapters.store import gc_paused
    from ...domain.state import TradingState

    state = TradingState()
    written = 0
    t0 = time.perf_counter()
    with gc_paused():
        apply, loads = state.apply, orjson.loads
        for pos, stream, version, type_name, data, at in store.trading.iter_rows(0):
            apply(pos, stream, version, type_name, loads(data), at)
            if pos % every == 0:
                cp.write(store, state, keep=0)
                written += 1
    return written, time.perf_counter() - t0


def _fold_from_zero_ms(store: Any) -> float:
    from ...domain.state import TradingState
    from ...loading import fold_tail

    t0 = time.perf_counter()
    fold_tail(store, TradingState())
    return (time.perf_counter() - t0) * 1000


def _state_at_samples(store: Any, samples: int, seed: int = 6) -> list[float]:
    from ... import replay
    from ...replay.log import bounds

    b = bounds(store)
    rnd = random.Random(seed)
    span = (b.last_at - b.first_at).total_seconds()
    out = []
    for _ in range(samples):
        t = b.first_at + timedelta(seconds=rnd.uniform(0, span))
        t0 = time.perf_counter()
        st = replay.state_at_time(store, t)
        st.view()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _state_at(backend: str, url: str, sizes: Sizes, samples: int) -> list[Result]:
    from ...adapters.store import open_store

    store = open_store(url, create=False)
    try:
        written, seconds = _write_checkpoints(store, CHECKPOINT_EVERY)
        log(f"{backend} postmortem: {written} checkpoints written in {seconds:.1f} s (one every {CHECKPOINT_EVERY:,})")
        baseline = _fold_from_zero_ms(store)
        _state_at_samples(store, 3)  # warm-up: connections, caches
        lat = _state_at_samples(store, samples)
    finally:
        store.close()
    lat.sort()
    p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
    log(f"{backend} postmortem: state at a random instant of {sizes.replay_events:,} events: p50 {p50:.1f} ms, "
        f"p99 {p99:.1f} ms over {samples} instants (fold from zero: {baseline:.0f} ms)")
    return [
        result("postmortem_state_at_p50_ms", backend, p50, "ms", "fold_from_zero_ms", baseline),
        result("postmortem_state_at_p99_ms", backend, p99, "ms", "fold_from_zero_ms", baseline),
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
    try:
        t0 = time.perf_counter()
        count = 0
        for row in store.market.iter_rows(0):
            orjson.loads(row[4])
            count += 1
        raw = count / (time.perf_counter() - t0)
        got = []
        start = datetime(2026, 11, 16, tzinfo=timezone.utc)
        t0 = time.perf_counter()
        stats = replay_market(store, start, start + timedelta(days=30), None, got.append, trading=False).run()
        rate = stats.bars / (time.perf_counter() - t0)
    finally:
        store.close()
    if stats.bars != n:
        raise RuntimeError(f"market replay delivered {stats.bars} of {n} bars")
    log(f"sqlite postmortem: market replay at full speed: {rate:,.0f} bars/s ({n:,} bars; raw read + decode "
        f"{raw:,.0f} rows/s)")
    return [result("postmortem_market_replay", "sqlite", rate, "bars/s", "raw_select_orjson", raw)]


def run(ctx: BenchContext) -> list[Result]:
    """Measure; return the rows."""
    samples = 40 if ctx.quick else 100
    results: list[Result] = []
    n = ctx.sizes.replay_events
    if "sqlite" in ctx.backends:
        log(f"sqlite postmortem: {n:,} events")
        path = ctx.logs.sqlite_copy(n, "postmortem")  # checkpoints are written: a copy of the shared log
        results += _state_at("sqlite", f"sqlite:///{path}", ctx.sizes, samples)
        ctx.logs.discard(n, "sqlite", path)
        results += _market(ctx.workdir, ctx.quick)
    if ctx.pg is not None and "postgresql" in ctx.backends:
        log(f"postgresql postmortem: {n:,} events")
        schema = ctx.logs.pg_copy(n, "pm")  # checkpoints are written: a copy of the shared log
        results += _state_at("postgresql", ctx.pg.url_for(schema), ctx.sizes, samples)
        ctx.logs.discard(n, "postgresql", schema)
    return results


def targets(results: list[Result]) -> list[tuple[bool, str]]:
    """(met, line) for each target of this group found in results."""
    out = []
    for r in results:
        if r.metric == "postmortem_state_at_p99_ms":
            out.append((r.value < TARGET_STATE_AT_P99_MS,
                        f"postmortem_state_at_p99 ({r.backend}): {r.value:.1f} ms at random instants "
                        f"(target < {TARGET_STATE_AT_P99_MS:g} ms)"))
    return out
