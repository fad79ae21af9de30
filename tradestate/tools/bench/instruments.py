"""``tradestate bench`` group ``instruments``: the cold fold and the reconciliation plan with
10,000 instruments of mixed classes, against the same log without them, in the same run.

The trading log is the ``reconcile`` group's (10,000 filled orders, one position each, and 10,000
open orders: 50,000 events, stored as the client stores them). "With instruments" puts before it
10,000 ``InstrumentDefined`` events, one per traded symbol, of every class (equities, ETFs,
futures with multipliers, options with 100, FX, fractional crypto; a sixth of them quoted in EUR)
and an ``FxRateRecorded``, so that every fill is booked through the instrument path (multiplier,
quote currency, conversion).

``instruments_fold``   trading rows folded per CPU second by ``fold_cold`` with the registry on
                       record: the fold of the whole log less the fold of its definitions alone
                       (their one-off cost, a few µs each, is printed apart, with the whole log's
                       rate); best of the repeats. Baseline: the same trading rows without it.
``instruments_plan``   ``plan_reconciliation`` of 10,000 positions and 10,000 open orders with
                       the registry, as plans per CPU second. Baseline: the same plan without it.

Both are single-threaded and in memory: their cost is the process's CPU time (a wall clock on a
machine shared with other work measures the others' load too, and moves the ratio by more than
the 10 % it is to show).

Target: both within 10 % of their baseline (ratio >= 0.9x; the figures are rates, higher is better).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any
from uuid import UUID, uuid5

import orjson

from .common import EVENTS_PER_S, BenchContext, Result, log, ratio_checks, result
from .reconcile import N, NS, T0, _best, _events, _fold, _snapshot

MINIMUM = 0.9
CLASSES = ("equity", "etf", "future", "option", "fx", "crypto")
EXPIRY = datetime(2030, 12, 20, 14, 30, tzinfo=timezone.utc)


def _definitions() -> list[tuple[str, str, dict[str, Any]]]:
    """(stream, type, payload) of N instruments of mixed classes, one per traded symbol, and a rate."""
    from ...domain import events as ev
    from ...domain.ids import fx_stream_id, instrument_stream_id

    out = []
    for i in range(N):
        symbol, kind = f"S{i}", CLASSES[i % len(CLASSES)]
        fields: dict[str, Any] = {"tick_size": "0.01", "lot_size": "1"}
        if kind == "future":
            fields.update(multiplier=50, expiry=EXPIRY, tick_size="0.25")
        elif kind == "option":
            fields.update(multiplier=100, expiry=EXPIRY, underlying=f"U{i}", strike="50", right="call")
        elif kind in ("fx", "crypto"):
            fields.update(fractional=True, lot_size="0.0001")
        if i % 6 == 1:
            fields["quote_currency"] = "EUR"
        e = ev.InstrumentDefined(event_id=uuid5(NS, f"instrument-{symbol}"), symbol=symbol, asset_class=kind, **fields)
        out.append((instrument_stream_id(symbol), e.type_name(), e.to_payload()))
    rate = ev.FxRateRecorded(event_id=uuid5(NS, "fx"), base="EUR", quote="USD", rate="1.08")
    out.append((fx_stream_id("EUR", "USD"), rate.type_name(), rate.to_payload()))
    return out


def _rows(events: list[tuple[str, str, dict[str, Any]]]) -> list[tuple[int, str, int, str, bytes, datetime]]:
    """The rows a store would hold: each payload's schema marker last, as ``Event.to_payload``
    writes it (the fold's fast path checks it there)."""
    from ...domain.events import SCHEMA_KEY

    versions: dict[str, int] = {}
    rows = []
    for position, (stream, type_name, payload) in enumerate(events, 1):
        versions[stream] = versions.get(stream, 0) + 1
        stored = {k: v for k, v in payload.items() if k != SCHEMA_KEY}
        stored[SCHEMA_KEY] = payload.get(SCHEMA_KEY, 1)
        rows.append((position, stream, versions[stream], type_name, orjson.dumps(stored), T0))
    return rows


def run(ctx: BenchContext) -> list[Result]:
    """Measure; return the rows."""
    from ...adapters.store import gc_paused
    from ...domain.fold import fold_cold
    from ...domain.reconcile import plan_reconciliation

    trading = _events()
    definitions = _definitions()
    plain_rows, with_rows, definition_rows = _rows(trading), _rows(definitions + trading), _rows(definitions)
    cpu = time.process_time
    repeats = max(5, ctx.sizes.repeats)  # interleaved best-of: the machine's noise is larger than 10 %
    results: list[Result] = []

    def fold(rows: list[Any]) -> Any:  # as recovery folds a log (``loading.fold_cold``): no cyclic collector
        with gc_paused():
            return fold_cold([rows[i:i + 10_000] for i in range(0, len(rows), 10_000)])[0]

    # interleaved, best of each: the two sides see the same machine load
    plain_s = with_s = definitions_s = float("inf")
    state = None
    for _ in range(repeats):
        seconds, _plain = _best(lambda: fold(plain_rows), 1, cpu)
        plain_s = min(plain_s, seconds)
        seconds, state = _best(lambda: fold(with_rows), 1, cpu)
        with_s = min(with_s, seconds)
        seconds, _registry = _best(lambda: fold(definition_rows), 1, cpu)
        definitions_s = min(definitions_s, seconds)
    assert state is not None and len(state.instruments) == N
    futures = sum(1 for p in state.positions.values() if p.multiplier == 50)
    # the trading rows' fold with the registry on record: the whole log's less its definitions'
    # (a desk defines its instruments once; its fills are what the fold's rate is made of)
    trading_s = max(with_s - definitions_s, 1e-9)
    log(f"instruments: cold fold of {len(plain_rows):,} trading rows: {len(plain_rows) / plain_s:,.0f} rows/s "
        f"without, {len(plain_rows) / trading_s:,.0f} rows/s with {N:,} instruments on record "
        f"({futures:,} positions on futures); the {N:,} definitions cost {definitions_s / N * 1e6:.1f} µs each; "
        f"the whole log with them {len(with_rows) / with_s:,.0f} rows/s; the same trading rows behind their "
        f"definitions {plain_s / with_s:.2f}x the plain fold's rate")
    results.append(result("instruments_fold", "memory", len(plain_rows) / trading_s, EVENTS_PER_S,
                          "fold_without_instruments", len(plain_rows) / plain_s))

    snapshot = _snapshot()
    now = snapshot.taken_at
    plain_state = _fold(trading)
    with_state = _fold(definitions + trading)
    reconciliation_id = UUID(int=NS.int)
    plain_plan_s = with_plan_s = float("inf")
    for _ in range(repeats):
        seconds, plain_plan = _best(lambda: plan_reconciliation(plain_state, snapshot, reconciliation_id=reconciliation_id,
                                                                now=now), 1, cpu)
        plain_plan_s = min(plain_plan_s, seconds)
        seconds, with_plan = _best(lambda: plan_reconciliation(with_state, snapshot, reconciliation_id=reconciliation_id,
                                                               now=now), 1, cpu)
        with_plan_s = min(with_plan_s, seconds)
    if len(with_plan.events) != len(plain_plan.events):
        raise RuntimeError(f"bench instruments: the plans differ ({len(with_plan.events)} vs "
                           f"{len(plain_plan.events)} corrective events)")
    log(f"instruments: reconciliation plan {plain_plan_s * 1000:.0f} ms without, {with_plan_s * 1000:.0f} ms with "
        f"{N:,} instruments ({len(with_plan.events)} corrections)")
    results.append(result("instruments_plan", "memory", 1 / with_plan_s, "plans/s", "plan_without_instruments",
                          1 / plain_plan_s))
    return results


def targets(results: list[Result]) -> list[tuple[bool, str]]:
    """(met, line) for each target of this group found in results."""
    return (ratio_checks(results, "instruments_fold", "memory", "fold_without_instruments", MINIMUM,
                         f"the cold fold's rate with {N:,} instruments of mixed classes vs without")
            + ratio_checks(results, "instruments_plan", "memory", "plan_without_instruments", MINIMUM,
                           f"the reconciliation plan's rate with {N:,} instruments vs without"))
