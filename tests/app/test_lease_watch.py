"""``LeaseWatcher``: the live crash detector run from other processes' main loops: throttled,
records each expiry once, and a failing look is kept and retried, never raised."""

from __future__ import annotations

import sqlite3
import time

import tradestate
from tradestate.adapters.store import open_store, sqlite_path
from tradestate.engines import LeaseWatcher


def test_the_watcher_records_an_expiry_once_and_looks_at_most_every_interval(db_url):
    crashed = tradestate.connect(db_url, engine_id="e1", lease_seconds=0.3, venue="sim")
    crashed.close()  # no clean stop: the lease runs out
    store = open_store(db_url, create=False)
    seen = []
    try:
        watcher = LeaseWatcher(store, detected_by="test watcher", every=60, on_recorded=seen.append)
        assert watcher.tick() == [] and watcher.checks == 1  # the lease is still live
        assert watcher.tick() == [] and watcher.checks == 1  # throttled: no second look within `every`
        time.sleep(0.5)
        [recorded] = watcher.tick(force=True)
        assert recorded.engine_id == "e1" and seen == [recorded] and watcher.last_error is None
        assert watcher.tick(force=True) == []  # recorded once, whoever looks again
        topics = [e.topic for e in store.trading.read_stream("engine-e1")]
        assert topics.count("LeaseExpired") == 1
    finally:
        store.close()


def test_a_failing_look_is_kept_and_retried_never_raised(sqlite_url):
    tradestate.connect(sqlite_url, venue="sim").close()
    with sqlite3.connect(sqlite_path(sqlite_url)) as conn:  # a lease table the code cannot read
        conn.execute("CREATE TABLE ts_leases (engine_id text PRIMARY KEY)")
    store = open_store(sqlite_url, create=False)
    errors = []
    try:
        watcher = LeaseWatcher(store, detected_by="test watcher", every=0.01, on_error=errors.append)
        assert watcher.tick() == []
        assert watcher.errors == 1 and len(errors) == 1 and "no such column" in (watcher.last_error or "")
        with sqlite3.connect(sqlite_path(sqlite_url)) as conn:
            conn.execute("DROP TABLE ts_leases")
        assert watcher.tick(force=True) == []
        assert watcher.errors == 1 and watcher.last_error is None
    finally:
        store.close()
