"""Engine leases across a PostgreSQL failover, on throwaway clusters started by the test.

With a synchronous standby the lease row is replicated like the log: the active engine carries
on after promotion with the same epoch, and no standby takes over. With an asynchronous one, a
takeover committed on the old primary can be lost with it: the engine that took over there must
not write on the new primary, and neither may the engine it deposed once its lease ran out —
the epoch check is in the same transaction as the append, on whichever server is primary.
"""

from __future__ import annotations

import time
import uuid

import pytest

import tradestate
from tests.support import pg_cluster
from tradestate.adapters.store import new_event, open_store
from tradestate.adapters.store.lease import Leases
from tradestate.engines import Standby

pytestmark = pytest.mark.postgres


def _multi_host(cluster: pg_cluster.PgCluster, schema: str) -> str:
    hosts = ",".join(f"127.0.0.1:{n.port}" for n in cluster.nodes)
    return f"postgresql://postgres@{hosts}/test?target_session_attrs=read-write&schema={schema}&connect_timeout=2"


def _until_accepted(call, seconds: float = 20.0):
    """Retry a call that fails while there is no primary (AppendFailed is safe to retry)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except tradestate.AppendFailed:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def sync_cluster():
    yield from pg_cluster.started_cluster(standbys=2, synchronous=True, num_sync=1)


@pytest.fixture
def async_cluster():
    yield from pg_cluster.started_cluster(standbys=1, synchronous=False)


def test_a_synchronous_failover_keeps_the_active_engine_and_its_epoch(sync_cluster):
    url = _multi_host(sync_cluster, "lease_" + uuid.uuid4().hex[:8])
    active = tradestate.connect(url, engine_id="e1", lease_seconds=8, venue="sim")
    standby = Standby(url, "e1", lease_seconds=8, venue="sim")
    try:
        active.engine_started("e1")
        acked = [active.record_intent("acct", f"o{i}", "AAPL", "buy", "1", reference_price="10") for i in range(3)]
        sync_cluster.failover()
        acked += [_until_accepted(lambda i=i: active.record_intent("acct", f"p{i}", "AAPL", "buy", "1",
                                                                   reference_price="10")) for i in range(3)]
        assert all(r.accepted for r in acked)
        assert standby.wait(timeout=1.0) is None  # the lease lived on: no takeover
        with open_store(url) as store:
            lease = Leases.of(store).get("e1")
            assert (lease.epoch, lease.holder, lease.state) == (1, active.lease.holder, "active")
            stored = {r.position for r in (store.trading.read(0, 10_000))}
        assert {r.position for r in acked} <= stored
    finally:
        active.close()
        standby.close()


def test_a_takeover_lost_in_an_asynchronous_failover_cannot_write_and_neither_can_the_deposed_engine(async_cluster):
    cluster = async_cluster
    url = _multi_host(cluster, "lease_" + uuid.uuid4().hex[:8])
    active = tradestate.connect(url, engine_id="e1", lease_seconds=1.0, venue="sim")
    active.engine_started("e1")
    assert active.record_intent("acct", "o1", "AAPL", "buy", "1", reference_price="10").accepted
    cluster.wait_replayed()
    standby = Standby(url, "e1", lease_seconds=30, venue="sim")
    try:
        cluster.standby.stop("fast")  # from here on the primary's commits do not reach the standby
        active.lease.stop()  # the active engine hangs: its lease runs out on the primary
        takeover = standby.wait(timeout=10)
        assert takeover is not None and takeover.lease.epoch == 2
        new = takeover.client
        assert new.record_intent("acct", "o2", "AAPL", "buy", "1", reference_price="10").accepted
        # The primary dies before any of that reached the standby, which is promoted.
        cluster.primary.kill()
        cluster.standby.start()
        cluster.standby.promote()
        # The engine that took over on the lost timeline: its epoch is not on the new primary.
        with pytest.raises((tradestate.NotLeader, tradestate.LogRewound)):
            _until_accepted(lambda: new.record_intent("acct", "o3", "AAPL", "buy", "1", reference_price="10"))
        # The deposed engine wakes up: its lease (as the new primary knows it) ran out long ago.
        with pytest.raises(tradestate.NotLeader, match="expired"):
            _until_accepted(lambda: active.record_intent("acct", "o4", "AAPL", "buy", "1", reference_price="10"))
        with open_store(url) as store:
            intents = [e for e in store.trading.read(0, 10_000) if e.topic == "OrderIntentRecorded"]
            assert [e.position for e in intents] == [intents[0].position]  # only o1 survived; o3, o4 refused
            # A fresh engine can take the lease on the new timeline (epoch 2 again, another holder).
            fresh = tradestate.connect(url, engine_id="e1", lease_seconds=5, venue="sim")
            try:
                assert fresh.lease.lease.epoch == 2 and fresh.lease.holder != takeover.lease.holder
                assert fresh.record_intent("acct", "o5", "AAPL", "buy", "1", reference_price="10").accepted
                # The lost holder of "epoch 2" stays refused at the store: the holder is part of the fence.
                lost_fence = standby.lease.fence
                assert lost_fence.epoch == 2
                with pytest.raises(tradestate.NotLeader, match="held by"):
                    store.trading.append([new_event("s", 1, "Note", b"{}")], fence=lost_fence)
            finally:
                fresh.close()
    finally:
        active.close()
        standby.close()
