"""Toy sizes of ``tradestate bench`` for the tests (``run_bench(..., _sizes=TINY)``): every group
runs end to end in about a second; the figures mean nothing at this size."""

from __future__ import annotations

TINY = {
    "single_seconds": 0.3,
    "writers": 2,
    "warmup": 5,
    "batch_size": 10,
    "batches": 5,
    "replay_events": 3_000,
    "repeats": 1,
    "page": 500,
    "failover_rounds": 0,  # the failover group has its own test: it starts clusters, seconds per round
    "patroni_rounds": 0,
    "takeovers": 1,
}
