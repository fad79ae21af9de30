"""Worker functions for the multi-process tests.

They live in an importable module (not in a test file) because ``multiprocessing`` with the
``spawn`` start method pickles a worker by its module and name and re-imports it in the child.
Each worker opens its own connection (``tradestate.connect`` / ``open_store``) inside the child,
waits on a shared barrier so that all of them start racing at the same moment, and reports back
through a queue: ``("ok", worker, payload)`` or ``("error", worker, traceback)``.
"""

from __future__ import annotations

import faulthandler
import traceback
from typing import Any

BARRIER_TIMEOUT = 60
# A worker still running after this long prints every thread's stack to stderr (which pytest
# shows with the failure), so a hang says where it waits.
HANG_DUMP_AFTER = 45


def _report(queue: Any, worker: int, fn: Any, *args: Any) -> None:
    faulthandler.dump_traceback_later(HANG_DUMP_AFTER)
    try:
        queue.put(("ok", worker, fn(*args)))
    except BaseException:  # noqa: BLE001 - the parent must see every failure
        queue.put(("error", worker, traceback.format_exc()))
        # The others must not wait out the barrier's timeout for a worker that is gone.
        barrier = next((a for a in args if hasattr(a, "abort")), None)
        if barrier is not None:
            barrier.abort()
    finally:
        faulthandler.cancel_dump_traceback_later()


# ------------------------------------------------------------- (0) opening a new file at once


def open_worker(urls: list[str], worker: int, barrier: Any, queue: Any) -> None:
    _report(queue, worker, _opens, urls, barrier)


def _opens(urls: list[str], barrier: Any) -> int:
    from tradestate.adapters.store import open_store

    for url in urls:
        barrier.wait(BARRIER_TIMEOUT)  # all processes open the same new file at the same moment
        with open_store(url) as store:
            store.trading.head()
    return len(urls)


# ------------------------------------------------------------------ (a) a limit shared by engines


def intent_worker(url: str, account: str, worker: int, count: int, barrier: Any, queue: Any) -> None:
    _report(queue, worker, _intents, url, account, worker, count, barrier)


def _intents(url: str, account: str, worker: int, count: int, barrier: Any) -> dict[str, Any]:
    import tradestate

    results = []
    gave_up = 0
    with tradestate.connect(url, venue="sim") as client:
        barrier.wait(BARRIER_TIMEOUT)
        for i in range(count):
            coid = f"w{worker}-o{i}"
            for _attempt in range(50):
                try:
                    r = client.record_intent(account, coid, "AAPL", "buy", "1", reference_price="100")
                    break
                except (tradestate.ConcurrencyConflict, tradestate.AppendFailed):
                    # The client gave up after its bounded retries; repeating the same call is
                    # documented as safe (idempotent), so an engine would do exactly this.
                    gave_up += 1
            else:
                raise RuntimeError(f"{coid}: could not record the intent in 50 calls")
            results.append(
                {
                    "coid": coid,
                    "accepted": r.accepted,
                    "position": r.position,
                    "duplicate": r.duplicate,
                    "reasons": list(r.refusal.reasons) if r.refusal else [],
                }
            )
        stats = client.stats
        return {"results": results, "gave_up": gave_up, "conflicts": stats.conflicts, "retries": stats.retries}


# ---------------------------------------------------------------- (b) writers under a follower


def append_worker(url: str, worker: int, count: int, barrier: Any, queue: Any) -> None:
    _report(queue, worker, _appends, url, worker, count, barrier)


def _appends(url: str, worker: int, count: int, barrier: Any) -> dict[str, Any]:
    from tradestate.adapters.store import new_event, open_store
    from tradestate.domain.errors import ConcurrencyConflict

    committed: list[tuple[str, int, bytes]] = []
    conflicts = 0
    with open_store(url) as store:
        log = store.trading
        barrier.wait(BARRIER_TIMEOUT)
        for k in range(count):
            stream = f"w{worker}-s{k}"
            data = f'{{"w":{worker},"k":{k}}}'.encode()
            if k % 50 == 25 and committed:
                # A failed multi-event append: a new stream plus a version that is taken. Nothing
                # of it may appear; on PostgreSQL its positions become $void rows.
                taken = committed[0][0]
                try:
                    log.append([new_event(stream + "-x", 1, "T", data), new_event(taken, 1, "T", data)])
                except ConcurrencyConflict:
                    conflicts += 1
                else:
                    raise AssertionError("an append reusing a taken stream version succeeded")
            if k % 10 == 9:
                # Two streams in one transaction (positions may interleave with other writers).
                events = [new_event(stream + "a", 1, "T", data), new_event(stream + "b", 1, "T", data)]
            else:
                events = [new_event(stream, 1, "T", data)]
            appended = log.append(events)
            assert len(appended) == len(events)
            committed.extend((e.originator_id, e.originator_version, e.state) for e in events)
    return {"committed": committed, "conflicts": conflicts}


# ------------------------------------------------------ (c) the same intent from two processes


def same_intent_worker(url: str, account: str, worker: int, count: int, barrier: Any, queue: Any) -> None:
    _report(queue, worker, _same_intents, url, account, worker, count, barrier)


def _same_intents(url: str, account: str, worker: int, count: int, barrier: Any) -> list[dict[str, Any]]:
    import tradestate

    out = []
    with tradestate.connect(url, venue="sim") as client:
        for i in range(count):
            barrier.wait(BARRIER_TIMEOUT)  # both processes send intent i at the same moment
            r = client.record_intent(account, f"dup-{i}", "MSFT", "sell", "3", order_type="limit", limit_price="410.5")
            out.append(
                {
                    "coid": f"dup-{i}",
                    "position": r.position,
                    "duplicate": r.duplicate,
                    "accepted": r.accepted,
                    "event_id": str(r.event_id),
                }
            )
    return out
