"""Graceful shutdown (``client.shutdown``, ``tradestate shutdown``): checks, the open-order policy,
the final checkpoint, the recorded stop, and the next start: warm, a clean stop, and a
reconciliation with the same (simulated) broker that finds nothing. Real SQLite and PostgreSQL, a
real simulated venue file."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from decimal import Decimal as D

import orjson
import pytest

import tradestate
from tradestate.adapters.brokers.sim import sim_venue
from tradestate.adapters.store import open_store
from tradestate.domain.errors import InvalidInput
from tradestate.domain.ids import engine_stream_id, order_stream_id
from tradestate.order_flow import OrderFlow
from tradestate.recovery import detect, recover

ACCOUNT = "acct-1"


@pytest.fixture
def venue():
    with sim_venue(ACCOUNT) as control:
        yield control


def _trading_engine(db_url, venue, lease_seconds=30.0):
    """An engine holding its lease, with a filled position in AAPL and a resting MSFT order at the
    simulated venue (both sent through the order flow)."""
    client = tradestate.connect(db_url, engine_id="e1", lease_seconds=lease_seconds, venue=venue.venue)
    client.engine_started("e1")
    broker = venue.adapter()
    broker.set_price("AAPL", D(100))
    flow = OrderFlow(client, broker)
    assert client.record_intent(ACCOUNT, "buy-1", "AAPL", "buy", 10, order_type="market",
                                reference_price=D(100)).accepted
    flow.forward(ACCOUNT, "buy-1")
    assert client.record_intent(ACCOUNT, "rest-1", "MSFT", "buy", 5, order_type="limit", limit_price=D(10)).accepted
    flow.forward(ACCOUNT, "rest-1")
    flow.pump()
    assert client.positions(ACCOUNT)[0]["qty"] == D(10)
    assert len(client.open_orders(ACCOUNT)) == 1
    return client, broker


def _engine_events(db_url):
    with open_store(db_url, create=False) as store:
        return [(e.topic, orjson.loads(e.state)) for e in store.trading.read_stream(engine_stream_id("e1"))]


def _recover_with(db_url, venue):
    store = open_store(db_url, create=False)
    adapter = venue.adapter()
    try:
        report, client = recover(store, engine_id="e1", adapters=[adapter])
        client.close()
        return report
    finally:
        adapter.close()


@pytest.mark.parametrize("policy", ["leave", "cancel", "flatten"])
def test_a_planned_shutdown_then_a_warm_start_without_surprises(db_url, venue, policy):
    client, broker = _trading_engine(db_url, venue)
    try:
        report = client.shutdown("e1", policy=policy, reason="maintenance", adapters=[broker])
    finally:
        broker.close()
        client.close()

    assert report.kind == "planned" and report.policy == policy
    names = {c.name: c.status for c in report.checks}
    assert names["lease"] == "ok" and names["open_orders"] == "warn" and names["checkpoint"] == "ok"
    assert names["reconcile"] == "ok"
    if policy == "leave":
        assert report.cancel_requested == [] and report.open_orders_left == 1 and report.positions_left == 1
    elif policy == "cancel":
        assert report.cancel_requested == ["rest-1"] and report.cancels_sent == 1
        assert report.open_orders_left == 0 and report.positions_left == 1
    else:
        assert report.cancel_requested == ["rest-1"] and len(report.flatten_intents) == 1
        assert report.open_orders_left == 0 and report.positions_left == 0
    topics = [t for t, _ in _engine_events(db_url)]
    assert topics[-3:] == ["ShutdownCompleted", "EngineStopped", "LeaseReleased"]
    summary = dict(_engine_events(db_url))["ShutdownCompleted"]
    assert summary["policy"] == policy and summary["checkpoint_position"] == report.checkpoint_position
    assert report.stopped_position == report.checkpoint_position + 1  # nothing between checkpoint and stop

    recovered = _recover_with(db_url, venue)

    assert not recovered.crashed and "stopped cleanly" in recovered.step("detect").detail
    assert recovered.checkpoint_position == report.checkpoint_position  # warm: the shutdown's checkpoint
    assert recovered.replayed == 3  # the summary, the stop, the lease handed back
    assert recovered.discrepancies == 0 and recovered.corrective_events == 0, recovered.reconciliations
    assert recovered.ready


def test_an_emergency_needs_a_reason_and_cancels_even_when_asked_to_leave(sqlite_url, venue):
    client, broker = _trading_engine(sqlite_url, venue)
    broker.close()
    try:
        head = client.store.trading.head()
        with pytest.raises(InvalidInput, match="reason"):
            client.shutdown("e1", kind="emergency")
        with pytest.raises(InvalidInput, match="policy"):
            client.shutdown("e1", policy="sell-everything")
        assert client.store.trading.head() == head

        report = client.shutdown("e1", kind="emergency", reason="venue halted", policy="leave")
    finally:
        client.close()

    assert report.policy == "cancel" and report.cancel_requested == ["rest-1"]
    statuses = {c.name: c.status for c in report.checks}
    assert statuses["projector"] == "skipped" and statuses["policy"] == "warn"
    summary = dict(_engine_events(sqlite_url))["ShutdownCompleted"]
    assert summary["kind"] == "emergency" and summary["reason"] == "venue halted"
    with open_store(sqlite_url, create=False) as store:
        assert detect(store, "e1")[0] is False  # a recorded stop, not a crash
        order = [e.topic for e in store.trading.read_stream(order_stream_id(ACCOUNT, "rest-1"))]
        assert order[-1] == "OrderCancelRequested"  # recorded; no broker here to send it


def test_a_refused_flattening_is_recorded_and_reported_not_forced(sqlite_url, venue):
    client, broker = _trading_engine(sqlite_url, venue)
    try:
        client.engage_kill_switch(ACCOUNT, "desk halt")
        report = client.shutdown("e1", policy="flatten", adapters=[broker])
    finally:
        broker.close()
        client.close()

    assert report.flatten_intents == [] and report.flatten_refused[0]["symbol"] == "AAPL"
    assert "kill_switch" in report.flatten_refused[0]["reasons"]
    assert report.positions_left == 1
    assert {c.name: c.status for c in report.checks}["flatten"] == "warn"


def test_cli_shutdown_takes_the_lease_and_refuses_a_crashed_engine(db_url, venue, tmp_path):
    client, broker = _trading_engine(db_url, venue, lease_seconds=0.6)
    base = [sys.executable, "-m", "tradestate.cli", "shutdown", "--db", db_url, "--engine-id", "e1"]
    head = client.store.trading.head()
    bad = subprocess.run([*base, "--kind", "emergency"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "reason" in bad.stderr
    assert client.store.trading.head() == head
    held = subprocess.run([*base, "--policy", "cancel"], capture_output=True, text=True, timeout=60)
    assert held.returncode == 2 and "e1" in held.stderr  # the engine is running: its lease is held
    client.lease.stop()  # the engine process dies: no stop recorded, the lease expires
    client.store.close()
    time.sleep(0.8)
    crashed = subprocess.run([*base, "--policy", "cancel"], capture_output=True, text=True, timeout=60)
    assert crashed.returncode == 1 and "recover" in crashed.stderr
    report = _recover_with(db_url, venue)
    assert report.crashed

    done = subprocess.run([*base, "--policy", "cancel", "--broker", "sim", "--sim-state", venue.state_path,
                           "--account", ACCOUNT, "--venue", venue.venue, "--json"],
                          capture_output=True, text=True, timeout=60)

    broker.close()
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["policy"] == "cancel" and result["cancel_requested"] == ["rest-1"]
    assert result["open_orders_left"] == 0
    assert _recover_with(db_url, venue).discrepancies == 0


def test_the_last_shutdown_is_folded_and_kept_by_a_checkpoint(sqlite_url, venue):
    from tradestate.domain import snapshot

    client, broker = _trading_engine(sqlite_url, venue)
    broker.close()
    try:
        report = client.shutdown("e1", policy="cancel")
        client.catch_up()
        folded = client.state.engines["e1"]
        doc, finished = snapshot.take(client.state)
        restored = snapshot.restore(orjson.loads(snapshot.encode(doc)), finished)
    finally:
        client.close()

    assert folded["last_shutdown"] == {"kind": "planned", "policy": "cancel", "position": report.stopped_position,
                                       "checkpoint_position": report.checkpoint_position}
    assert folded["running"] is False and folded["lease"] == "released"
    assert restored.engines["e1"]["last_shutdown"] == folded["last_shutdown"]


def test_a_planned_shutdown_checks_the_projector(db_url, venue):
    from tradestate.projections.projector import Projector

    client, broker = _trading_engine(db_url, venue)
    broker.close()
    try:
        Projector(client.store).catch_up(writer_process=False)
        client.record_signal("s1", "AAPL", "flat")  # the projector is now one event behind
        behind = client.shutdown("e1", policy="leave", projector_wait=0.2)
    finally:
        client.close()
    check = behind.check("projector")
    assert check.status == "warn" and "not yet" in check.detail

    with open_store(db_url, create=False) as store:  # the stop events project like any other
        assert Projector(store).catch_up(writer_process=False) > 0
    with tradestate.connect(db_url, engine_id="e1", lease_seconds=30) as again:
        again.engine_started("e1")
        Projector(again.store).catch_up(writer_process=False)
        caught_up = again.shutdown("e1", kind="planned", projector_wait=0.2)
    assert caught_up.check("projector").status == "ok"
