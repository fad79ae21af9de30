"""The active engine and its standby through the public client, on both databases: the lease is
taken at connect, renewed in the background, every append fenced; a standby follows and takes
over once the lease expires or is released, recovering before it trades; the deposed engine
can never append again."""

from __future__ import annotations

import time

import pytest

import tradestate
from tradestate.adapters.store import open_store
from tradestate.engines import Standby, engines, watch_leases
from tradestate.recovery import detect


def _intent(client, coid: str):
    return client.record_intent("acct", coid, "AAPL", "buy", "1", reference_price="10")


def test_an_engine_with_an_id_holds_its_lease_and_renews_it_past_its_duration(db_url):
    client = tradestate.connect(db_url, engine_id="e1", lease_seconds=0.6, venue="sim")
    try:
        assert client.lease.lease.epoch == 1
        time.sleep(1.5)  # more than twice the lease: only renewals keep it
        assert _intent(client, "o1").accepted
        with pytest.raises(tradestate.LeaseHeld):
            tradestate.connect(db_url, engine_id="e1", venue="sim")
    finally:
        client.close()


def test_a_standby_takes_over_an_engine_that_stopped_renewing_and_the_old_one_is_deposed(db_url):
    active = tradestate.connect(db_url, engine_id="e1", lease_seconds=0.8, venue="sim")
    active.engine_started("e1")
    assert _intent(active, "o1").accepted
    standby = Standby(db_url, "e1", lease_seconds=0.8, venue="sim")
    try:
        active.lease.stop()  # hung: no more renewals
        started = time.monotonic()
        takeover = standby.wait(timeout=10)
        assert takeover is not None and time.monotonic() - started < 3
        assert takeover.lease.epoch == 2 and takeover.report.crashed and takeover.report.ready
        assert takeover.previous.holder == active.lease.holder
        new = takeover.client
        # The dead engine's intent is recognised when re-sent; new intents are accepted.
        assert _intent(new, "o1").duplicate
        assert _intent(new, "o2").accepted
        # The deposed engine wakes up: refused, atomically, and on every call after.
        head = new.store.trading.head()
        for coid in ("o3", "o4"):
            with pytest.raises(tradestate.NotLeader, match="epoch 2 is current"):
                _intent(active, coid)
        assert new.store.trading.head() in (head, head + 1)  # at most a voided position
        topics = [e.topic for e in new.store.trading.read_stream("engine-e1")]
        assert topics[:4] == ["LeaseAcquired", "EngineStarted", "LeaseExpired", "LeaseAcquired"]
        assert "RecoveryCompleted" in topics
        # Ramp as after a crash.
        assert new.risk_state("acct")["ramp_pct"] == 50
    finally:
        active.close()
        standby.close()


def test_a_clean_stop_hands_the_lease_over_at_once(db_url):
    active = tradestate.connect(db_url, engine_id="e1", lease_seconds=30, venue="sim")
    active.engine_started("e1")
    standby = Standby(db_url, "e1", lease_seconds=30, venue="sim")
    try:
        assert standby.wait(timeout=0.3) is None  # a live lease: the standby only follows
        active.engine_stopped("e1")
        started = time.monotonic()
        takeover = standby.wait(timeout=5)
        assert takeover is not None and time.monotonic() - started < 1
        assert not takeover.report.crashed
        acquired = [e for e in takeover.client.store.trading.read_stream("engine-e1") if e.topic == "LeaseAcquired"]
        assert b'"reason":"released"' in acquired[-1].state
    finally:
        active.close()
        standby.close()


def test_a_dead_engine_is_detected_and_recorded_once_without_any_standby(db_url):
    active = tradestate.connect(db_url, engine_id="e1", lease_seconds=0.3, venue="sim")
    active.engine_started("e1")
    active.close()  # no stop recorded, no renewals: dead
    with open_store(db_url) as store:
        assert watch_leases(store, detected_by="test") == []  # not expired yet
        time.sleep(0.4)
        recorded = watch_leases(store, detected_by="test")
        assert [lease.engine_id for lease in recorded] == ["e1"]
        assert watch_leases(store, detected_by="another watcher") == []
        (view,) = engines(store)
        assert view["state"] == "dead" and view["epoch"] == 1 and view["expiry_recorded"]
        crashed, why = detect(store, "e1")
        assert crashed and "lease expired" in why


def test_bad_lease_settings_are_refused_before_anything_is_written(sqlite_url):
    with pytest.raises(tradestate.InvalidInput):
        tradestate.connect(sqlite_url, engine_id="e1", lease_seconds=1, renew_seconds=2)
    with pytest.raises(tradestate.InvalidInput):
        tradestate.connect(sqlite_url, lease_seconds=1)  # a lease needs an engine id
    with pytest.raises(tradestate.InvalidInput):
        tradestate.connect(sqlite_url, engine_id="x" * 65)  # longer than an identifier
    with open_store(sqlite_url) as store:
        assert store.trading.head() == 0


def test_the_standby_follows_but_cannot_write(db_url):
    active = tradestate.connect(db_url, engine_id="e1", lease_seconds=30, venue="sim")
    standby = Standby(db_url, "e1", lease_seconds=30, venue="sim")
    try:
        assert _intent(active, "o1").accepted
        assert standby.wait(timeout=0.2) is None
        assert standby.follower.order("acct", "o1")["client_order_id"] == "o1"  # it follows the log
        with pytest.raises(tradestate.NotLeader):
            _intent(standby.follower, "o2")
        assert _intent(active, "o2").accepted  # the refusal cost the active engine nothing
    finally:
        active.close()
        standby.close()


def test_a_standby_whose_takeover_the_database_refuses_for_now_keeps_following_and_takes_over(sqlite_url, monkeypatch):
    """A writer paused while it holds SQLite's write lock (SIGSTOP in a transaction) makes the
    takeover's writes time out: the standby must keep following and take over once the lock is
    gone, not die with the database error."""
    import sqlite3

    from tradestate.adapters.store import sqlite as sqlite_store

    plain = sqlite_store.DurableSQLiteDatastore.__init__

    def one_second_lock_timeout(self, db_name, **options):  # so the test need not wait 10 s per attempt
        plain(self, db_name, **{**options, "lock_timeout": 1})

    monkeypatch.setattr(sqlite_store.DurableSQLiteDatastore, "__init__", one_second_lock_timeout)
    active = tradestate.connect(sqlite_url, engine_id="e1", lease_seconds=0.4, venue="sim")
    assert _intent(active, "o1").accepted
    standby = Standby(sqlite_url, "e1", lease_seconds=0.4, venue="sim")
    paused_writer = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        paused_writer.execute("BEGIN IMMEDIATE")  # the paused engine's open write transaction
        active.lease.stop()  # ... and it renews no more
        assert standby.wait(timeout=2.5) is None  # the lease expired, but every takeover attempt timed out
        assert standby.last_error is not None and "locked" in standby.last_error
        paused_writer.execute("ROLLBACK")  # it resumes (and its transaction ends)
        takeover = standby.wait(timeout=10)
        assert takeover is not None and takeover.lease.epoch == 2
        assert _intent(takeover.client, "o1").duplicate and _intent(takeover.client, "o2").accepted
        with pytest.raises(tradestate.NotLeader):
            _intent(active, "o3")
    finally:
        paused_writer.close()
        active.close()
        standby.close()


def test_connecting_after_a_crashed_engine_records_its_expiry_and_says_it_took_over(db_url):
    dead = tradestate.connect(db_url, engine_id="e1", lease_seconds=0.3, venue="sim")
    dead.engine_started("e1")
    dead.close()  # no stop, no renewals: it crashed
    time.sleep(0.4)
    again = tradestate.connect(db_url, engine_id="e1", venue="sim")
    try:
        assert again.lease.took_over and again.lease.lease.epoch == 2
        topics = [e.topic for e in again.store.trading.read_stream("engine-e1")]
        assert topics == ["LeaseAcquired", "EngineStarted", "LeaseExpired", "LeaseAcquired"]
        assert detect(again.store, "e1")[0]  # the recovery is still to run
    finally:
        again.close()
    clean = tradestate.connect(db_url, engine_id="e2", venue="sim")
    clean.engine_stopped("e2")
    clean.close()
    after_stop = tradestate.connect(db_url, engine_id="e2", venue="sim")
    try:
        assert not after_stop.lease.took_over and after_stop.lease.reason == "released"
    finally:
        after_stop.close()
