"""``tradestate bench`` group ``memory``: peak memory beside time, each figure in a fresh process.

On a private copy of the run's trading log (``sizes.replay_events`` events, ending with its open
state: 1,000 open orders and 500 positions at full size), sealed like a real log:

``memory_recover_cold``      peak RSS of ``recover()`` with no checkpoint (the whole log folded)
``memory_recover_warm``      peak RSS of ``recover()`` from a checkpoint ``BEHIND`` events behind the head
``memory_client_warm_open``  peak RSS of ``tradestate.connect(url)`` from that checkpoint, with its
                             state caught up, and one new order's intent recorded (a new order is
                             looked up among the finished ones first): what an engine holds to trade
``memory_projector_rebuild`` peak RSS of ``Projector.rebuild()`` of every read-model table
``memory_recover_warm_s``    seconds of that warm ``recover()`` to ready (baseline: the cold one)

Each runs in its own freshly started interpreter (``spawn``) and reads its peak resident set
(``VmHWM`` in ``/proc/self/status``; ``ru_maxrss`` elsewhere), so no figure inherits another's
heap. Baseline of the MB rows: the same interpreter with tradestate imported and the store
opened, nothing loaded. The targets say the client's memory is the open state's, not the
history's: warm-open client RSS <= ``TARGET_CLIENT_MB`` at any log size, and warm recovery <=
``TARGET_WARM_S`` (constant in the log length).
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import resource
import sys
import time
import uuid
from typing import Any

from .common import BenchContext, Result, log, result

TARGET_CLIENT_MB = 300.0  # peak RSS of a client after a warm open, at any log size (issue 16)
TARGET_WARM_S = 0.25  # warm recovery, constant in the log length (issue 16)
BEHIND = 10_000  # the checkpoint is this many events behind the head, as in the recovery group
MB = "MB"
BARE = "interpreter_import_open_store"


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (VmHWM; ru_maxrss where there is no /proc)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)  # bytes on macOS, KB on Linux


# ------------------------------------------------------------------------- in the child


def _bare(url: str) -> dict[str, Any]:
    import tradestate  # noqa: F401 - what every other figure imports too
    from ...adapters.store import open_store
    from ...projections.projector import Projector  # noqa: F401
    from ...recovery import recover  # noqa: F401

    with open_store(url, create=False) as store:
        store.trading.head()
    return {}


def _client_warm_open(url: str) -> dict[str, Any]:
    import tradestate

    t0 = time.perf_counter()
    client = tradestate.connect(url, venue="sim")
    seconds = time.perf_counter() - t0
    # a client order id never used before: the intent is checked against the finished orders
    client.record_intent("acct-alpha", f"bench-{uuid.uuid4().hex[:16]}", "AAPL", "buy", "10", order_type="limit",
                         limit_price="150")
    state = client.state
    out = {"seconds": seconds, "position": state.position, "checkpoint": client.loaded is not None and
           getattr(client.loaded, "state", None) is not None,
           "open_orders": sum(1 for o in dict.values(state.orders) if o.is_open), "positions": len(state.positions)}
    gc.collect()
    client.close()
    return out


def _recover(url: str) -> dict[str, Any]:
    from ...adapters.store import open_store
    from ...recovery import recover

    gc.collect()
    started = time.perf_counter()
    store = open_store(url, create=False)
    try:
        report, client = recover(store, record=False)
        if not report.ready:
            raise RuntimeError(f"recovery not ready: {[s.detail for s in report.steps if s.status == 'failed']}")
        # to ready: what follows readiness in the report (its own bookkeeping) is not counted
        return {"seconds": time.perf_counter() - started - (report.seconds - report.ready_seconds)}
    finally:
        store.close()


def _rebuild(url: str) -> dict[str, Any]:
    from ...adapters.store import open_store
    from ...projections.projector import Projector

    with open_store(url) as store:
        t0 = time.perf_counter()
        reached = Projector(store).rebuild()
        return {"seconds": time.perf_counter() - t0, "position": reached}


_MEASURES = {"bare": _bare, "client_warm_open": _client_warm_open, "recover": _recover, "rebuild": _rebuild}


def _child(what: str, url: str, out: Any) -> None:
    try:
        doc = _MEASURES[what](url)
        doc["peak_mb"] = peak_rss_mb()
        out.send(doc)
    except BaseException as e:  # noqa: BLE001 - the parent reports it
        out.send({"error": f"{type(e).__name__}: {e}"})
    finally:
        out.close()


def measure_in_child(what: str, url: str, timeout: float = 3600.0) -> dict[str, Any]:
    """Run measure ``what`` on the log at ``url`` in a fresh interpreter; its result with
    ``peak_mb``, the child's peak RSS."""
    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(what, url, send), name=f"bench-memory-{what}")
    child.start()
    send.close()
    try:
        if not receive.poll(timeout):
            raise RuntimeError(f"memory {what}: no answer in {timeout:g} s")
        doc = receive.recv()
    except EOFError:
        doc = {"error": f"the child died (exit code {child.exitcode})"}
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
    if "error" in doc:
        raise RuntimeError(f"memory {what}: {doc['error']}")
    return doc


# ------------------------------------------------------------------------------ the group


def _seal(url: str) -> str:
    """Seal the log's digest chain (recovery verifies it, as of a real log)."""
    from ...adapters.store import digest, open_store

    with open_store(url, create=False) as store:
        sealed = digest.seal(store)
    return f"sealed {sealed.events:,} events in {sealed.seconds:.1f} s"


def _write_checkpoint(url: str, n: int) -> str:
    from ...adapters.store import checkpoints, open_store
    from ...loading import state_at

    behind = min(BEHIND, n // 2)
    with open_store(url, create=False) as store:
        state = state_at(store, n - behind)
        info = checkpoints.write(store, state)
        del state
    gc.collect()
    return (f"checkpoint at {info.position:,}: {info.size:,} bytes, {info.open_orders} open / "
            f"{info.finished_orders:,} finished orders")


def _measure(backend: str, url: str, n: int) -> list[Result]:
    log(f"  {backend}: {_seal(url)}")
    bare = measure_in_child("bare", url)["peak_mb"]
    cold = measure_in_child("recover", url)
    log(f"  {backend}: recover cold {cold['seconds']:.2f} s, peak {cold['peak_mb']:,.0f} MB "
        f"(bare interpreter + store {bare:,.0f} MB)")
    log(f"  {backend}: {_write_checkpoint(url, n)}")
    warm = measure_in_child("recover", url)
    log(f"  {backend}: recover warm {warm['seconds']:.3f} s, peak {warm['peak_mb']:,.0f} MB")
    client = measure_in_child("client_warm_open", url)
    log(f"  {backend}: client warm open {client['seconds']:.3f} s, peak {client['peak_mb']:,.0f} MB "
        f"({client['open_orders']:,} open orders, {client['positions']:,} positions at {client['position']:,})")
    rebuild = measure_in_child("rebuild", url)  # last: it writes the read-model tables
    log(f"  {backend}: projector rebuild {rebuild['seconds']:.1f} s, peak {rebuild['peak_mb']:,.0f} MB")
    return [
        result("memory_client_warm_open", backend, client["peak_mb"], MB, BARE, bare),
        result("memory_recover_warm", backend, warm["peak_mb"], MB, BARE, bare),
        result("memory_recover_cold", backend, cold["peak_mb"], MB, BARE, bare),
        result("memory_projector_rebuild", backend, rebuild["peak_mb"], MB, BARE, bare),
        result("memory_recover_warm_s", backend, warm["seconds"], "s", "memory_recover_cold_s", cold["seconds"]),
    ]


def run(ctx: BenchContext) -> list[Result]:
    """Measure on each backend asked for (each on its own copy of the run's log); return the rows."""
    n = ctx.sizes.replay_events
    results: list[Result] = []
    if "sqlite" in ctx.backends:
        log(f"sqlite memory: {n:,} events")
        path = ctx.logs.sqlite_copy(n, "memory")
        results += _measure("sqlite", f"sqlite:///{path}", n)
        ctx.logs.discard(n, "sqlite", path)
    if ctx.pg is not None:
        log(f"postgresql memory: {n:,} events")
        schema = ctx.logs.pg_copy(n, "mem")
        results += _measure("postgresql", ctx.pg.url_for(schema), n)
        ctx.logs.discard(n, "postgresql", schema)
    return results


def targets(results: list[Result]) -> list[tuple[bool, str]]:
    """(met, line) for each target of this group found in results, with value / target."""
    checks: list[tuple[bool, str]] = []
    for r in results:
        if r.metric == "memory_client_warm_open":
            checks.append((r.value <= TARGET_CLIENT_MB,
                           f"memory_client_warm_open ({r.backend}): {r.value:,.0f} MB peak RSS after a warm open, "
                           f"{r.value / TARGET_CLIENT_MB:.2f}x the target (target <= {TARGET_CLIENT_MB:g} MB)"))
        if r.metric == "memory_recover_warm_s":
            checks.append((r.value <= TARGET_WARM_S,
                           f"memory_recover_warm_s ({r.backend}): {r.value:.3f} s warm recovery, "
                           f"{r.value / TARGET_WARM_S:.2f}x the target (target <= {TARGET_WARM_S:g} s)"))
    return checks
