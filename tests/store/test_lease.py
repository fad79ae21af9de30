"""Engine leases in the store, on a real SQLite file and a real PostgreSQL: an append carrying a
fence is refused, atomically with it, once its epoch is no longer current or its lease ran out;
every change of holder is an event in the same transaction as the lease row."""

from __future__ import annotations

import threading
import time

import orjson
import pytest

from tradestate.adapters.store import new_event, open_store
from tradestate.adapters.store.lease import Fence, Leases
from tradestate.domain.errors import LeaseHeld, NotLeader


def _event(kind: str):
    def build(previous, epoch):
        return kind, orjson.dumps({"epoch": epoch, "previous": previous.holder if previous else None})
    return build


def _append(store, stream: str, version: int, fence: Fence | None = None):
    return store.trading.append([new_event(stream, version, "Note", b'{"n": 1}')], fence=fence)


def _acquire(leases: Leases, holder: str, seconds: float = 5.0):
    return leases.acquire("e1", holder, seconds, stream="engine-e1", event=_event("LeaseAcquired"))


def test_the_first_acquire_records_epoch_1_and_fenced_appends_land(store):
    leases = Leases.of(store)
    lease = _acquire(leases, "a")
    assert (lease.epoch, lease.holder, lease.state) == (1, "a", "active")
    (appended,) = _append(store, "s", 1, Fence("e1", 1, "a"))
    rows = store.trading.read_stream("engine-e1")
    assert [r.topic for r in rows] == ["LeaseAcquired"]
    assert orjson.loads(rows[0].state) == {"epoch": 1, "previous": None}
    assert appended.position > rows[0].position


def test_a_live_lease_is_not_taken_by_another_holder(store):
    leases = Leases.of(store)
    _acquire(leases, "a")
    with pytest.raises(LeaseHeld) as refused:
        _acquire(leases, "b")
    assert refused.value.holder == "a" and refused.value.epoch == 1
    assert [r.topic for r in store.trading.read_stream("engine-e1")] == ["LeaseAcquired"]  # nothing appended


def test_a_deposed_epoch_cannot_append_once_another_holder_took_over(store):
    leases = Leases.of(store)
    _acquire(leases, "a", seconds=0.3)
    time.sleep(0.4)
    lease = _acquire(leases, "b")
    assert lease.epoch == 2
    head = store.trading.head()
    with pytest.raises(NotLeader) as refused:
        _append(store, "s", 1, Fence("e1", 1, "a"))
    assert "epoch 2 is current, held by 'b'" in str(refused.value)
    # Nothing was appended: on PostgreSQL a drawn position is voided, never a half-written row.
    assert [r[3] for r in store.trading.iter_rows(head)] in ([], ["$void"])
    assert store.trading.read_stream("s") == []
    _append(store, "s", 1, Fence("e1", 2, "b"))
    with pytest.raises(NotLeader):  # the refusal is not a one-off: that epoch stays deposed
        _append(store, "s", 2, Fence("e1", 1, "a"))


def test_an_expired_lease_refuses_appends_and_renewals_even_when_no_one_took_over(store):
    leases = Leases.of(store)
    _acquire(leases, "a", seconds=0.3)
    time.sleep(0.4)
    with pytest.raises(NotLeader, match="expired"):
        _append(store, "s", 1, Fence("e1", 1, "a"))
    with pytest.raises(NotLeader, match="expired"):
        leases.renew(Fence("e1", 1, "a"), 5.0)


def test_several_events_are_fenced_as_one_transaction(store):
    leases = Leases.of(store)
    _acquire(leases, "a", seconds=0.3)
    batch = [new_event("s", v, "Note", b"{}") for v in (1, 2, 3)]
    assert len(store.trading.append(batch, fence=Fence("e1", 1, "a"))) == 3
    time.sleep(0.4)
    _acquire(leases, "b")
    with pytest.raises(NotLeader):
        store.trading.append([new_event("s", v, "Note", b"{}") for v in (4, 5)], fence=Fence("e1", 1, "a"))
    assert [r.originator_version for r in store.trading.read_stream("s")] == [1, 2, 3]


def test_renewal_keeps_a_lease_alive_past_its_duration(store):
    leases = Leases.of(store)
    _acquire(leases, "a", seconds=0.5)
    for _ in range(4):
        time.sleep(0.2)
        leases.renew(Fence("e1", 1, "a"), 0.5)
    _append(store, "s", 1, Fence("e1", 1, "a"))
    with pytest.raises(LeaseHeld):
        _acquire(leases, "b")


def test_release_hands_over_at_once_and_is_an_event(store):
    leases = Leases.of(store)
    _acquire(leases, "a", seconds=60)
    assert leases.release(Fence("e1", 1, "a"), stream="engine-e1", event=_event("LeaseReleased"))
    assert not leases.release(Fence("e1", 1, "a"), stream="engine-e1", event=_event("LeaseReleased"))  # once
    lease = _acquire(leases, "b")
    assert lease.epoch == 2
    topics = [r.topic for r in store.trading.read_stream("engine-e1")]
    assert topics == ["LeaseAcquired", "LeaseReleased", "LeaseAcquired"]


def test_an_expiry_is_recorded_once_whoever_notices(store):
    leases = Leases.of(store)
    _acquire(leases, "a", seconds=0.2)
    assert leases.record_expiry("e1", stream="engine-e1", event=_event("LeaseExpired")) is None  # still live
    time.sleep(0.3)
    first = leases.record_expiry("e1", stream="engine-e1", event=_event("LeaseExpired"))
    again = leases.record_expiry("e1", stream="engine-e1", event=_event("LeaseExpired"))
    assert first is not None and first.epoch == 1 and again is None
    assert [r.topic for r in store.trading.read_stream("engine-e1")] == ["LeaseAcquired", "LeaseExpired"]
    assert leases.get("e1").expiry_recorded


def test_racing_acquirers_of_a_new_engine_get_distinct_epochs_and_one_wins(db_url):
    """Four processes' worth of threads (own stores) race for a lease that was never held."""
    results: list[object] = []

    def race(name: str) -> None:
        with open_store(db_url) as store:
            try:
                results.append(_acquire(Leases.of(store), name).epoch)
            except LeaseHeld as e:
                results.append(e)

    with open_store(db_url):
        pass  # the log exists before the race
    threads = [threading.Thread(target=race, args=(f"h{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    epochs = [r for r in results if isinstance(r, int)]
    assert epochs == [1], results
    assert sum(isinstance(r, LeaseHeld) for r in results) == 3


def test_no_lease_table_means_no_fenced_append(store):
    with pytest.raises(NotLeader, match="no lease was ever taken"):
        _append(store, "s", 1, Fence("e1", 1, "a"))
    assert Leases.of(store).all() == [] and Leases.of(store).get("e1") is None


@pytest.mark.postgres
def test_postgres_a_fenced_append_racing_a_takeover_is_refused_when_the_takeover_commits_first(pg_url):
    """The append's lease check is re-evaluated on the row the takeover committed (FOR SHARE under
    READ COMMITTED): an append that started while the takeover held the row inserts nothing."""
    import psycopg

    with open_store(pg_url) as store:
        _acquire(Leases.of(store), "a", seconds=60)
        table = store.dialect.name("ts_leases")
    with open_store(pg_url) as store, psycopg.connect(_conninfo(pg_url), autocommit=True) as takeover:
        takeover.execute("BEGIN")
        takeover.execute(f"SELECT epoch FROM {table} WHERE engine_id = 'e1' FOR UPDATE")
        outcome: list[object] = []
        appender = threading.Thread(target=lambda: outcome.append(_try(lambda: _append(store, "s", 1, Fence("e1", 1, "a")))))
        appender.start()
        time.sleep(0.3)
        assert appender.is_alive(), "the fenced append must wait for the takeover holding the lease row"
        takeover.execute(f"UPDATE {table} SET epoch = 2, holder = 'b' WHERE engine_id = 'e1'")
        takeover.execute("COMMIT")
        appender.join(5)
        assert isinstance(outcome[0], NotLeader), outcome
        assert store.trading.read_stream("s") == []


@pytest.mark.postgres
def test_postgres_a_takeover_waits_for_a_fenced_append_under_way_and_lands_after_it(pg_url):
    import psycopg

    with open_store(pg_url) as store:
        leases = Leases.of(store)
        _acquire(leases, "a", seconds=0.5)
        table = store.dialect.name("ts_leases")
        with psycopg.connect(_conninfo(pg_url), autocommit=True) as appending:
            # An append of epoch 1 under way: it holds the lease row FOR SHARE until it commits.
            appending.execute("BEGIN")
            appending.execute(f"SELECT 1 FROM {table} WHERE engine_id = 'e1' AND epoch = 1 FOR SHARE")
            time.sleep(0.6)  # the lease runs out meanwhile
            outcome: list[object] = []
            taker = threading.Thread(target=lambda: outcome.append(_try(lambda: _acquire(Leases.of(store), "b"))))
            taker.start()
            time.sleep(0.3)
            assert taker.is_alive(), "a takeover must wait for the fenced append under way"
            appending.execute("COMMIT")
            taker.join(5)
        assert getattr(outcome[0], "epoch", None) == 2, outcome


def _try(fn):
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the outcome is what the test inspects
        return e


def _conninfo(url: str) -> str:
    from tradestate.adapters.store.sql import PgUrl

    return PgUrl.parse(url).conninfo()


def test_the_same_epoch_number_under_another_holder_is_refused(store):
    """After an asynchronous failover lost a takeover, the new primary can hand the same epoch
    number to someone else: the holder is part of the fence, so the lost holder stays refused."""
    leases = Leases.of(store)
    _acquire(leases, "a")
    with pytest.raises(NotLeader, match="held by 'a'"):
        _append(store, "s", 1, Fence("e1", 1, "ghost"))
    with pytest.raises(NotLeader):
        leases.renew(Fence("e1", 1, "ghost"), 5.0)
    assert not leases.release(Fence("e1", 1, "ghost"), stream="engine-e1", event=_event("LeaseReleased"))
