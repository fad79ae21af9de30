"""Operator controls through the real client on both databases: every action is one event that
says who and why, takes effect on the next decision, and bad input appends nothing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from tradestate.adapters.store import open_store
from tradestate.adapters.store.checkpoints import write as write_checkpoint
from tradestate.controls import ACTIONS, EVENT_OF, PROTECTIVE, default_operator, perform
from tradestate.domain.errors import InvalidInput

import tradestate
from tests.support.gates import waiting_gate
from tests.support.controls import control_events, head


def test_every_control_is_recorded_with_operator_and_reason(db_url):
    until = datetime.now(timezone.utc) + timedelta(hours=1)
    with tradestate.connect(db_url, venue="sim") as client:
        assert client.record_intent("a1", "o1", "AAPL", "buy", "5").accepted
        waiting_gate(client, "crash-loop-e1", account="a1")
        start = client.position
        steps = [
            ("kill-switch.engage", {"account": "a1"}),
            ("kill-switch.release", {"account": "a1"}),
            ("breaker.trip", {"account": "a1", "until": until}),
            ("breaker.reset", {"account": "a1"}),
            ("resume", {"account": "a1", "ramp_pct": 75}),
            ("limit", {"account": "a1", "limit": "max_order_qty", "value": "100"}),
            ("ack", {"account": "a1"}),
            ("approve", {"gate_id": "crash-loop-e1", "account": "a1"}),
        ]
        assert [a for a, _ in steps] == list(ACTIONS)
        results = [perform(client, action, operator=f"op-{i}", reason=f"why {i}", **params)
                   for i, (action, params) in enumerate(steps)]
        assert [r.position for r in results] == list(range(start + 1, start + 9))
        risk = client.risk_state("a1")
        assert risk["ramp_pct"] == 75 and risk["limits"] == {"max_order_qty": 100}
        assert not risk["kill_switch"] and not risk["breaker_tripped"]
        assert client.state.gate_approvals["crash-loop-e1"]["operator"] == "op-7"
    recorded = [(p, t, d) for p, t, d in control_events(db_url) if p > start]
    assert [t for _, t, _ in recorded] == [EVENT_OF[a] for a in ACTIONS]
    for i, (position, type_name, d) in enumerate(recorded):
        assert position == results[i].position
        who = d["by"] if type_name == "DiscrepancyAcknowledged" else d["operator"]
        why = d["decision"] if type_name == "DiscrepancyAcknowledged" else d["reason"]
        assert (who, why) == (f"op-{i}", f"why {i}"), type_name
    assert recorded[0][2]["by"] == "operator" and recorded[2][2]["until"] is not None


def test_kill_switch_engaged_by_an_operator_refuses_the_next_intent(db_url):
    with tradestate.connect(db_url, venue="sim") as engine, tradestate.connect(db_url) as desk:
        perform(desk, "kill-switch.engage", account="a1", operator="alice", reason="runaway strategy")
        refused = engine.record_intent("a1", "o1", "AAPL", "buy", "5")
        assert refused.refusal is not None and "kill_switch" in refused.refusal.reasons
        perform(desk, "kill-switch.release", account="a1", operator="alice", reason="fixed")
        assert engine.record_intent("a1", "o2", "AAPL", "buy", "5").accepted


@pytest.mark.parametrize("action, params, message", [
    ("resume", {"account": "a1", "ramp_pct": 60}, "ramp_pct"),
    ("resume", {"account": "a1"}, "ramp level"),
    ("limit", {"account": "a1", "limit": "max_order_qty", "value": "-1"}, "negative"),
    ("limit", {"account": "a1", "limit": "max_leverage", "value": "1"}, "limit"),
    ("limit", {"account": "a1", "limit": "max_order_qty", "value": "1", "symbol": "AAPL"}, "per symbol"),
    ("kill-switch.engage", {"account": ""}, "account"),
    ("breaker.trip", {"account": "a1", "until": datetime(2026, 1, 1)}, "time zone"),
    ("approve", {}, "gate"),
    ("approve", {"gate_id": "x" * 65}, "64"),
    ("shutdown-everything", {"account": "a1"}, "unknown control"),
])
def test_bad_input_is_refused_and_appends_nothing(db_url, action, params, message):
    with tradestate.connect(db_url) as client:
        client.set_risk_limit("a1", "max_order_qty", 10)
        before = head(db_url)
        with pytest.raises(InvalidInput, match=message):
            perform(client, action, operator="alice", reason="because", **params)
    assert head(db_url) == before


@pytest.mark.parametrize("who", [{"operator": " ", "reason": "why"}, {"operator": "alice", "reason": ""}])
def test_an_action_without_who_or_why_is_refused(sqlite_url, who):
    with tradestate.connect(sqlite_url) as client:
        client.set_risk_limit("a1", "max_order_qty", 10)
        with pytest.raises(InvalidInput):
            perform(client, "kill-switch.engage", account="a1", **who)
    assert head(sqlite_url) == 1


def test_gate_approval_survives_a_checkpoint_and_a_restart(db_url):
    with tradestate.connect(db_url) as client:
        waiting_gate(client, "volatility-AAPL")
        perform(client, "approve", gate_id="volatility-AAPL", operator="bob", reason="news, expected")
        store = open_store(db_url)
        try:
            write_checkpoint(store, client.state)
        finally:
            store.close()
    with tradestate.connect(db_url) as again:
        assert again.loaded is not None and again.loaded.checkpoint is not None  # from the checkpoint
        approval = again.state.gate_approvals["volatility-AAPL"]
        assert (approval["operator"], approval["reason"], approval["account"]) == ("bob", "news, expected", None)


def test_default_operator(monkeypatch):
    monkeypatch.setenv("TRADESTATE_OPERATOR", "carol")
    assert default_operator() == "carol"
    monkeypatch.delenv("TRADESTATE_OPERATOR")
    assert "@" in default_operator()
    assert PROTECTIVE == {"kill-switch.engage", "breaker.trip"}


def test_approving_a_gate_no_recovery_left_waiting_is_refused_and_appends_nothing(db_url):
    with tradestate.connect(db_url) as client:
        waiting_gate(client, "g-waiting")
        before = client.position
        with pytest.raises(InvalidInput, match="no gate 'g-nope' waits for approval.*g-waiting"):
            perform(client, "approve", gate_id="g-nope", operator="bob", reason="typo")
        assert client.catch_up() == before
        first = perform(client, "approve", gate_id="g-waiting", operator="bob", reason="checked")
        again = perform(client, "approve", gate_id="g-waiting", operator="carol", reason="again")
        assert again.duplicate and again.position == first.position
