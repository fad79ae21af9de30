"""Alerts: webhooks derived from the log, delivered to a real local receiver (signed, retried,
at least once with an idempotency key, never holding up an append)."""

from __future__ import annotations

import time
from uuid import uuid4

import orjson
import pytest

from tradestate.adapters.store import new_event, open_store
from tradestate.alerts import (
    SIGNATURE_HEADER,
    Alerter,
    AlertService,
    WebhookTarget,
    alert_for,
    parse_urls,
    read_cursor_position,
    verify,
)
from tradestate.client import TradestateClient
from tradestate.domain.errors import InvalidInput
from tests.support.webhook import Receiver

SECRET = "s3cret-for-tests"


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


def _alerter(store, url, **kw):
    target = WebhookTarget(url, SECRET, timeout=kw.pop("timeout", 2.0), backoff=kw.pop("backoff", (0.05, 0.2)),
                           max_attempts=kw.pop("max_attempts", 10), queue_size=kw.pop("queue_size", 100))
    return Alerter(store, target, every=0.05, start=kw.pop("start", "beginning"), **kw)


def test_operator_events_arrive_signed_in_order_and_other_events_do_not(db_url, receiver):
    store = open_store(db_url)
    client = TradestateClient(store, venue="SIM")
    alerter = _alerter(store, receiver.url, stall_seconds=None)
    try:
        client.engage_kill_switch("acct", "runaway strategy", by="ops")
        client.record_signal("s1", "AAPL", "buy")  # not an alert
        client.trip_breaker("acct", "five rejects in a minute")
        client.reset_breaker("acct", "checked")
        client.release_kill_switch("acct", "fixed", by="ops")
        client.record_daily_limit_breach("acct", "max_daily_loss", "-1200", "1000", trading_day="2026-12-04")
        alerter.start()
        got = receiver.wait_for(5)
        assert [r.json["kind"] for r in got] == ["kill_switch_engaged", "breaker_tripped", "breaker_reset",
                                                 "kill_switch_released", "daily_limit_breached"]
        for r in got:
            assert verify(SECRET, r.body, r.headers[SIGNATURE_HEADER])
            assert r.json["idempotency_key"] == r.json["id"] == r.json["event"]["data"]["event_id"]
            assert r.headers["X-Tradestate-Alert-Id"] == r.json["id"]
        assert not verify("another secret", got[0].body, got[0].headers[SIGNATURE_HEADER])
        assert got[0].json["severity"] == "critical" and "runaway strategy" in got[0].json["summary"]
        assert got[4].json["event"]["data"]["limit"] == "max_daily_loss"
    finally:
        alerter.stop()
        client.close()
        store.close()


def test_a_failing_receiver_is_retried_with_backoff_then_delivered_once(sqlite_url, receiver):
    receiver.fail_first = 3
    store = open_store(sqlite_url)
    client = TradestateClient(store, venue="SIM")
    alerter = _alerter(store, receiver.url, stall_seconds=None)
    try:
        client.engage_kill_switch("acct", "test", by="ops")
        alerter.start()
        [got] = receiver.wait_for(1)
        time.sleep(0.3)
        assert receiver.requests == 4 and len(receiver.received) == 1  # three 500s, then one success
        assert got.headers["X-Tradestate-Delivery-Attempt"] == "4"
        assert alerter.target.failures == 3 and alerter.target.delivered == 1 and alerter.target.dropped == 0
    finally:
        alerter.stop()
        client.close()
        store.close()


def test_a_restarted_alerter_resumes_where_delivery_got_to(db_url, receiver):
    store = open_store(db_url)
    client = TradestateClient(store, venue="SIM")
    try:
        client.engage_kill_switch("acct", "one", by="ops")
        first = _alerter(store, receiver.url, stall_seconds=None)
        first.start()
        assert len(receiver.wait_for(1)) == 1
        assert first.drain(5)
        first.stop()
        assert read_cursor_position(store, first.target.name)[0] == store.trading.head()
        client.release_kill_switch("acct", "two", by="ops")
        second = _alerter(store, receiver.url, stall_seconds=None)  # a new process, same URL
        second.start()
        got = receiver.wait_for(2)
        assert second.drain(5)
        time.sleep(0.3)
        second.stop()
        assert [r.json["kind"] for r in receiver.received] == ["kill_switch_engaged", "kill_switch_released"]
        assert len({r.json["id"] for r in got}) == 2  # nothing sent twice
    finally:
        client.close()
        store.close()


def test_a_first_start_begins_at_the_head_not_the_history(sqlite_url, receiver):
    store = open_store(sqlite_url)
    client = TradestateClient(store, venue="SIM")
    alerter = _alerter(store, receiver.url, stall_seconds=None, start="head")
    try:
        client.engage_kill_switch("acct", "old news", by="ops")
        alerter.tick()
        client.trip_breaker("acct", "new")
        alerter.start()
        got = receiver.wait_for(1)
        time.sleep(0.3)
        assert [r.json["kind"] for r in got] == ["breaker_tripped"] and len(receiver.received) == 1
    finally:
        alerter.stop()
        client.close()
        store.close()


def test_a_hanging_receiver_never_holds_up_appends(sqlite_url, receiver):
    receiver.hang.set()  # accepts the connection, never answers
    store = open_store(sqlite_url)
    client = TradestateClient(store, venue="SIM")
    alerter = _alerter(store, receiver.url, stall_seconds=None, timeout=5.0, queue_size=3)
    alerter.start()
    try:
        times = []
        for n in range(40):
            started = time.perf_counter()
            (client.engage_kill_switch if n % 2 == 0 else client.release_kill_switch)("acct", f"flip {n}", by="ops")
            times.append(time.perf_counter() - started)
            time.sleep(0.01)
        assert max(times) < 0.5, times  # a hanging receiver costs an append nothing
        assert receiver.received == []
        assert alerter.target.queue.qsize() <= 3  # bounded: the rest waits in the log
        held = alerter.saved_position
        assert held < store.trading.head()
        receiver.hang.clear()  # the receiver comes back: everything arrives, in order
        got = receiver.wait_for(40, timeout=30)
        assert len({r.json["id"] for r in got}) == 40
        assert [r.json["event"]["position"] for r in got] == sorted(r.json["event"]["position"] for r in got)
    finally:
        alerter.stop()
        client.close()
        store.close()


def test_a_dead_receiver_drops_after_max_attempts_and_moves_on(sqlite_url):
    store = open_store(sqlite_url)
    client = TradestateClient(store, venue="SIM")
    # nothing listens on port 9 of loopback (discard): connection refused at once
    alerter = _alerter(store, "http://127.0.0.1:9/alerts", stall_seconds=None, max_attempts=3)
    try:
        client.engage_kill_switch("acct", "x", by="ops")
        alerter.start()
        assert alerter.drain(10)
        assert alerter.target.dropped == 1 and alerter.target.failures == 3
    finally:
        alerter.stop()
        client.close()
        store.close()


def test_crash_recovery_and_a_projector_stall(sqlite_url, receiver):
    store = open_store(sqlite_url)
    client = TradestateClient(store, venue="SIM")
    alerter = _alerter(store, receiver.url, stall_seconds=0.2)
    try:
        client.engine_started("e1")
        client.engine_started("e1")  # no stop in between: the first run crashed
        client.record_recovery("e1", ready=True, steps=[], crashed=True)
        client.engine_stopped("e1")
        client.engine_started("e1")  # after a clean stop: no alert
        from tradestate.projections.projector import Projector

        Projector(store).catch_up()  # read models exist and are caught up: no stall yet
        alerter.tick()
        client.trip_breaker("acct", "unprojected")  # the projector is not running: this waits
        time.sleep(0.4)
        alerter.start()
        got = receiver.wait_for(4)
        kinds = [r.json["kind"] for r in got]
        assert kinds[:2] == ["crash_detected", "recovery_completed"], kinds
        assert set(kinds[2:]) == {"breaker_tripped", "projector_stalled"}, kinds
        stall = next(r.json for r in got if r.json["kind"] == "projector_stalled")
        assert stall["event"]["lag_events"] >= 1
        time.sleep(0.4)
        assert receiver.kinds().count("projector_stalled") == 1  # once per stall
        assert receiver.kinds().count("crash_detected") == 1
    finally:
        alerter.stop()
        client.close()
        store.close()


def test_a_gate_waiting_for_approval_is_matched_by_type_name_and_keys(sqlite_url, receiver):
    # GateEvaluated is recorded by another part of tradestate: read by name and keys only (this
    # log is written raw and never folded here).
    store = open_store(sqlite_url)
    alerter = _alerter(store, receiver.url, stall_seconds=None)
    try:
        waiting = {"event_id": str(uuid4()), "gate": "repeated_crashes", "passed": False, "requires_approval": True,
                   "engine_id": "e1", "reason": "4 crashes in 5 minutes", "_v": 1}
        passed = {"event_id": str(uuid4()), "gate": "exposure", "passed": True, "requires_approval": False}
        store.trading.append([new_event("gate-e1", 1, "GateEvaluated", orjson.dumps(waiting)),
                              new_event("gate-e1", 2, "GateEvaluated", orjson.dumps(passed))])
        alerter.start()
        [got] = receiver.wait_for(1)
        assert alerter.drain(5)
        assert got.json["kind"] == "gate_waiting_approval" and "repeated_crashes" in got.json["summary"]
        assert got.json["id"] == waiting["event_id"] and len(receiver.received) == 1
    finally:
        alerter.stop()
        store.close()


def test_alert_for_ignores_what_an_operator_need_not_hear():
    row = (7, "account-a", 1, "ReconciliationCompleted",
           orjson.dumps({"event_id": str(uuid4()), "account": "a", "status": "clean"}), "2026-12-05T00:00:00+00:00")
    assert alert_for(row) is None
    row = row[:3] + ("GateEvaluated", orjson.dumps({"event_id": str(uuid4()), "gate": "g", "passed": True,
                                                     "requires_approval": False}), row[5])
    assert alert_for(row) is None
    row = row[:3] + ("GateEvaluated", b"not json", row[5])
    assert alert_for(row) is None


def test_settings_and_bad_options():
    assert parse_urls("http://a/x, http://b/y  http://c/z") == ["http://a/x", "http://b/y", "http://c/z"]
    with pytest.raises(InvalidInput):
        WebhookTarget("ftp://example/x")
    with pytest.raises(InvalidInput):
        WebhookTarget("http://127.0.0.1/x", max_attempts=0)


def test_several_urls_each_get_every_alert(sqlite_url, receiver):
    other = Receiver().start()
    store = open_store(sqlite_url)
    client = TradestateClient(store, venue="SIM")
    service = AlertService(store, [receiver.url, other.url], SECRET, stall_seconds=None, every=0.05,
                           start="beginning", backoff=(0.05, 0.1))
    try:
        client.engage_kill_switch("acct", "x", by="ops")
        service.start()
        assert len(receiver.wait_for(1)) == 1 and len(other.wait_for(1)) == 1
        assert [s["delivered"] for s in service.status()] == [1, 1]
    finally:
        service.stop()
        other.stop()
        client.close()
        store.close()


def test_a_reconciliation_discrepancy_alerts(sqlite_url, receiver, tmp_path):
    from tradestate.adapters.brokers.sim import SimulatedBroker
    from tradestate.reconcile import reconcile

    store = open_store(sqlite_url)
    client = TradestateClient(store, venue="SIM")
    alerter = _alerter(store, receiver.url, stall_seconds=None)
    try:
        client.record_intent("acct", "ghost", "AAPL", "buy", 1, order_type="limit", limit_price="10")
        client.record_submitted("acct", "ghost")
        reconcile(client, SimulatedBroker(account="acct", state_path=str(tmp_path / "venue.json")))
        alerter.start()
        got = receiver.wait_for(2)
        assert [r.json["kind"] for r in got] == ["discrepancy", "reconciliation_problem"]
        assert "missing_at_venue" in got[0].json["summary"] and "ghost" in got[0].json["summary"]
    finally:
        alerter.stop()
        client.close()
        store.close()


# ---------------------------------------------------------------------- where alerts run


def test_serve_with_alerts_delivers_from_its_background_thread(sqlite_url, receiver):
    from tradestate.projections.http.server import background_server

    store = open_store(sqlite_url)
    client = TradestateClient(store, venue="SIM")
    client.engage_kill_switch("acct", "before the server: history, not sent", by="ops")
    try:
        with background_server(sqlite_url, alerts={"urls": [receiver.url], "secret": SECRET, "stall_seconds": 60}
                               ) as base:
            import httpx

            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not read_cursor_position(store, WebhookTarget(receiver.url).name):
                time.sleep(0.05)  # the server's alerter took its starting point (the head)
            client.trip_breaker("acct", "while serving")
            [got] = receiver.wait_for(1)
            assert got.json["kind"] == "breaker_tripped" and verify(SECRET, got.body, got.headers[SIGNATURE_HEADER])
            assert httpx.get(base + "/livez", timeout=5).status_code == 200
        time.sleep(0.2)
        assert len(receiver.received) == 1
    finally:
        client.close()
        store.close()


def _cli(*args, env=None, **kw):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "tradestate.cli", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})}, **kw)


def test_cli_alerts_once_delivers_signed_and_resumes(sqlite_url, receiver):
    import json

    store = open_store(sqlite_url)
    client = TradestateClient(store, venue="SIM")
    env = {"TRADESTATE_ALERT_URL": receiver.url, "TRADESTATE_ALERT_SECRET": SECRET}
    try:
        client.engage_kill_switch("acct", "one", by="ops")
        done = _cli("alerts", "--db", sqlite_url, "--once", "--from-start", "--json", env=env)
        assert done.returncode == 0, done.stderr
        [status] = json.loads(done.stdout)["webhooks"]
        assert status["delivered"] == 1 and status["dropped"] == 0
        assert verify(SECRET, receiver.received[0].body, receiver.received[0].headers[SIGNATURE_HEADER])
        client.release_kill_switch("acct", "two", by="ops")
        again = _cli("alerts", "--db", sqlite_url, "--once", env=env)
        assert again.returncode == 0, again.stderr
        assert receiver.kinds() == ["kill_switch_engaged", "kill_switch_released"]
        missing = _cli("alerts", "--db", sqlite_url, "--once", env={"TRADESTATE_ALERT_URL": ""})
        assert missing.returncode == 2 and "no webhook" in missing.stdout + missing.stderr
    finally:
        client.close()
        store.close()


def test_project_follow_delivers_alerts(sqlite_url, receiver):
    import os
    import signal
    import subprocess
    import sys

    store = open_store(sqlite_url)
    client = TradestateClient(store, venue="SIM")
    env = {**os.environ, "TRADESTATE_ALERT_URL": receiver.url, "TRADESTATE_ALERT_SECRET": SECRET}
    proc = subprocess.Popen([sys.executable, "-m", "tradestate.cli", "project", "--db", sqlite_url], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not read_cursor_position(store, WebhookTarget(receiver.url).name):
            time.sleep(0.05)
        client.engage_kill_switch("acct", "from the engine", by="ops")
        [got] = receiver.wait_for(1, timeout=20)
        assert got.json["kind"] == "kill_switch_engaged"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        client.close()
        store.close()
    assert proc.returncode == 0, out
    assert "alerts: delivering to 1 webhook" in out
