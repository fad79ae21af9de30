"""A coalescing client (``connect(url, coalesce=True)``), on SQLite and PostgreSQL: calls from many
threads or asyncio order flows share commits, and each still returns once its own events are
durable, with the same answers and the same log as one call at a time would give; two intents
still cannot both pass the same limit; a takeover deposes every call."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import tradestate
from tradestate.adapters.store import VOID_TYPE
from tradestate.domain.errors import NotLeader
from tradestate.loading import load_state

ACCT = "acct-1"


def _log(client) -> list[tuple]:
    log = client.store.trading
    rows = list(log.iter_rows())
    assert [r[0] for r in rows] == list(range(1, log.head() + 1)), "hole in the log"
    return [r for r in rows if r[3] != VOID_TYPE]


def _flow(client, account: str, name: str) -> list[int]:
    """One order's life: intent, submitted, ack, two fills; the positions recorded."""
    intent = client.record_intent(account, name, "AAPL", "buy", "4", reference_price="10")
    assert intent.accepted, intent.refusal
    out = [intent.position]
    out.append(client.record_submitted(account, name).position)
    out.append(client.record_ack(account, name, f"v-{name}").position)
    out.append(client.record_fill(account, name, f"{name}-e1", "1", "10").position)
    out.append(client.record_fill(account, name, f"{name}-e2", "3", "10").position)
    return out


def test_threads_share_commits_and_every_answer_is_durable_and_folded(db_url):
    client = tradestate.connect(db_url, venue="sim", coalesce=True)
    try:
        results: dict[str, list[int]] = {}
        errors: list[BaseException] = []

        def run(i: int) -> None:
            try:
                for k in range(4):
                    name = f"o{i}-{k}"
                    results[name] = _flow(client, f"acct-{i % 3}", name)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
            finally:
                client.store.trading.release_connection()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        rows = _log(client)
        by_position = {r[0]: r for r in rows}
        for name, positions in results.items():
            assert [by_position[p][3] for p in positions] == [
                "OrderIntentRecorded", "OrderSubmitted", "OrderAcknowledged", "OrderFilled", "OrderFilled"]
        assert client.coalescer.stats.largest > 1  # commits were shared
        # The client's fold equals a fresh fold of the log.
        client.catch_up()
        fresh = load_state(client.store, use_checkpoints=False).state
        assert fresh.position == client.state.position
        for account in ("acct-0", "acct-1", "acct-2"):
            assert client.positions(account) == tradestate.connect(db_url, venue="sim").positions(account)
            assert sum(p["qty"] for p in client.positions(account)) == 4 * 4 * 2
        assert fresh.stream_versions == client.state.stream_versions
    finally:
        client.close()


def test_two_intents_cannot_both_pass_the_same_limit(db_url):
    client = tradestate.connect(db_url, venue="sim", coalesce=True)
    try:
        client.set_risk_limit(ACCT, "max_open_orders", 5)
        accepted: list[str] = []
        lock = threading.Lock()

        def run(i: int) -> None:
            try:
                for k in range(3):
                    r = client.record_intent(ACCT, f"l{i}-{k}", "AAPL", "buy", "1", reference_price="10")
                    if r.accepted:
                        with lock:
                            accepted.append(f"l{i}-{k}")
            finally:
                client.store.trading.release_connection()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(accepted) == 5
        assert len(client.open_orders(ACCT)) == 5
        assert sum(1 for r in _log(client) if r[3] == "RiskCheckPassed") == 5
    finally:
        client.close()


def test_async_order_flows_share_commits(db_url):
    async def main():
        client = await tradestate.connect_async(db_url, venue="sim", coalesce=True)
        async with client:
            async def flow(i: int) -> list[int]:
                name = f"a{i}"
                intent = await client.record_intent(f"acct-{i % 8}", name, "MSFT", "sell", "2", reference_price="5")
                assert intent.accepted
                sub = await client.record_submitted(f"acct-{i % 8}", name)
                fill = await client.record_fill(f"acct-{i % 8}", name, f"{name}-x", "2", "5")
                return [intent.position, sub.position, fill.position]

            results = await asyncio.gather(*[flow(i) for i in range(64)])
            stats = client.sync.coalescer.stats
            positions = [p for r in results for p in r]
            assert len(set(positions)) == len(positions)
            assert stats.largest > 1 and stats.batches < stats.callers
            return client.sync

    sync = asyncio.run(main())
    with tradestate.connect(db_url, venue="sim") as again:
        for i in range(8):
            assert [p["qty"] for p in again.positions(f"acct-{i}")] == [-16]


def test_each_call_sees_what_was_committed_before_it_called(db_url):
    """Catch-up reads are shared between concurrent calls, never reused from before a call."""
    client = tradestate.connect(db_url, venue="sim", coalesce=True)
    other = tradestate.connect(db_url, venue="sim")
    try:
        errors: list[BaseException] = []

        def run(i: int) -> None:
            try:
                for k in range(5):
                    name = f"x{i}-{k}"
                    other.record_intent(ACCT, name, "AAPL", "buy", "1", reference_price="10")
                    client.record_submitted(ACCT, name)  # an UnknownOrder here: a stale read was reused
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
            finally:
                client.store.trading.release_connection()
                other.store.trading.release_connection()

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert sum(1 for r in _log(client) if r[3] == "OrderSubmitted") == 20
    finally:
        other.close()
        client.close()


def test_a_lone_call_through_the_coalescer_commits_inline(db_url):
    with tradestate.connect(db_url, venue="sim", coalesce=True) as client:
        _flow(client, ACCT, "solo")
        assert client.coalescer._thread is None  # no hand-off: it led its own commits
        assert client.coalescer.stats.batches == 5


def test_a_takeover_deposes_every_coalesced_call(db_url):
    client = tradestate.connect(db_url, venue="sim", coalesce=True, engine_id="eng", lease_seconds=0.5)
    try:
        client.record_intent(ACCT, "before", "AAPL", "buy", "1", reference_price="10")
        client.lease.stop()  # an engine that stopped renewing (hung, cut off)
        time.sleep(0.7)
        standby = tradestate.connect(db_url, venue="sim", engine_id="eng", lease_seconds=5)
        try:
            outcomes: list[BaseException | None] = []

            def run(i: int) -> None:
                try:
                    client.record_intent(ACCT, f"after-{i}", "AAPL", "buy", "1", reference_price="10")
                    outcomes.append(None)
                except NotLeader as e:
                    outcomes.append(e)
                finally:
                    client.store.trading.release_connection()

            threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert len(outcomes) == 6 and all(isinstance(o, NotLeader) for o in outcomes)
            with pytest.raises(NotLeader):
                client.record_intent(ACCT, "later", "AAPL", "buy", "1", reference_price="10")
            for i in range(6):
                with pytest.raises(tradestate.UnknownOrder):
                    standby.order(ACCT, f"after-{i}")
        finally:
            standby.close()
    finally:
        client.close()


def test_a_shared_catch_up_returns_only_after_a_read_that_started_after_the_call(sqlite_url):
    client = tradestate.connect(sqlite_url, venue="sim", coalesce=True)
    try:
        writer = client.writer
        starts: list[float] = []
        ends: dict[int, float] = {}

        def slow_read() -> None:
            index = len(starts)
            starts.append(time.monotonic())
            time.sleep(0.02)
            ends[index] = time.monotonic()

        writer._refresh_now = slow_read
        calls: list[tuple[float, float]] = []

        def call() -> None:
            called = time.monotonic()
            writer.refresh()
            calls.append((called, time.monotonic()))

        threads = []
        for _ in range(12):
            threads.append(threading.Thread(target=call))
            threads[-1].start()
            time.sleep(0.003)
        for t in threads:
            t.join(10)
        assert len(calls) == 12
        for called, returned in calls:
            assert any(start >= called and ends[i] <= returned for i, start in enumerate(starts))
        assert len(starts) < len(calls)  # reads were shared
    finally:
        client.close()


def test_conflicts_with_another_engine_are_decided_again_per_call(db_url):
    client = tradestate.connect(db_url, venue="sim", coalesce=True)
    other = tradestate.connect(db_url, venue="sim")
    try:
        client.record_intent(ACCT, "shared", "AAPL", "buy", "1000", reference_price="10")
        client.record_submitted(ACCT, "shared")
        errors: list[BaseException] = []

        def fills(who, prefix: str) -> None:
            try:
                for k in range(15):
                    who.record_fill(ACCT, "shared", f"{prefix}-{k}", "1", "10")
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
            finally:
                who.store.trading.release_connection()

        threads = [threading.Thread(target=fills, args=(client, f"c{i}")) for i in range(4)]
        threads.append(threading.Thread(target=fills, args=(other, "o")))
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert other.order(ACCT, "shared")["filled_qty"] == 75
        assert sum(1 for r in _log(client) if r[3] == "OrderFilled") == 75
    finally:
        other.close()
        client.close()
