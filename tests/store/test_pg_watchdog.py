"""The append watchdog (``adapters/store/postgres._Watchdog``) on the real server: deadlines cancel
statements on time, a shorter deadline armed while the thread sleeps towards a longer one is still
met, appends never wake the thread (it sleeps until the earliest deadline; it used to poll every
50 ms in every writer process), and a forked child starts without its parent's watch."""

from __future__ import annotations

import os
import time
import uuid

import psycopg
import pytest
from psycopg import errors as pg_errors

from tradestate.adapters.store import new_event, open_store
from tradestate.adapters.store import postgres
from tradestate.adapters.store.postgres import _Watchdog

pytestmark = pytest.mark.postgres


@pytest.fixture
def conns(pg_server):
    opened = [psycopg.connect(pg_server, autocommit=True) for _ in range(2)]
    yield opened
    for conn in opened:
        conn.close()


def _cancelled_after(conn: psycopg.Connection, statement: str) -> float:
    started = time.monotonic()
    with pytest.raises(pg_errors.QueryCanceled):
        conn.execute(statement)
    return time.monotonic() - started


def test_a_deadline_cancels_the_running_statement_on_time(conns):
    watchdog = _Watchdog()
    key = watchdog.arm(conns[0], 0.3)
    elapsed = _cancelled_after(conns[0], "SELECT pg_sleep(10)")
    assert watchdog.disarm(key) is True
    assert 0.25 <= elapsed < 2.0, elapsed
    # the connection is usable again, and an append that ends in time is not reported as cancelled
    key = watchdog.arm(conns[0], 5.0)
    assert conns[0].execute("SELECT 1").fetchone() == (1,)
    assert watchdog.disarm(key) is False


def test_a_shorter_deadline_armed_while_the_thread_sleeps_towards_a_longer_one_is_met(conns):
    watchdog = _Watchdog()
    long_key = watchdog.arm(conns[0], 30.0)
    time.sleep(0.2)  # the thread is asleep until the 30 s deadline
    short_key = watchdog.arm(conns[1], 0.3)
    elapsed = _cancelled_after(conns[1], "SELECT pg_sleep(10)")
    assert watchdog.disarm(short_key) is True
    assert watchdog.disarm(long_key) is False
    assert 0.25 <= elapsed < 2.0, elapsed


def test_back_to_back_appends_do_not_wake_the_watchdog(pg_url):
    store = open_store(pg_url)
    try:
        store.trading.append([new_event("warm", 1, "SignalRecorded", b"{}")])
        before = postgres._WATCHDOG.wakeups
        started = time.monotonic()
        appended = 0
        while time.monotonic() - started < 1.0:
            store.trading.append([new_event(f"s-{uuid.uuid4()}", 1, "SignalRecorded", b"{}")])
            appended += 1
        woke = postgres._WATCHDOG.wakeups - before
    finally:
        store.close()
    # at most one wake-up for a deadline set before this test; a 50 ms poll would give ~20
    assert woke <= 2, f"the watchdog woke {woke} times during {appended} appends in 1 s"


def test_a_forked_child_has_no_watch_of_its_parents_statements(conns):
    key = postgres._WATCHDOG.arm(conns[0], 30.0)
    try:
        pid = os.fork()
        if pid == 0:  # the child: nothing armed, no thread, and arming starts its own thread
            ok = not postgres._WATCHDOG._armed and postgres._WATCHDOG._thread is None
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        assert postgres._WATCHDOG.disarm(key) is False
