"""The events of the operator controls: who and why on every control event, payloads of the
version before the operator was recorded still load and fold, and gate approvals are folded and
kept by checkpoints."""

from __future__ import annotations

from datetime import datetime, timezone
from uuid import uuid4

import orjson
import pytest
from pydantic import ValidationError
from tradestate.domain import events as ev
from tradestate.domain import snapshot
from tradestate.domain.ids import account_stream_id, gate_stream_id
from tradestate.domain.state import TradingState

AT = datetime(2026, 11, 20, 15, 0, tzinfo=timezone.utc)

# Payloads as version 1 stored them: no operator field, no "_v" marker or "_v": 1.
V1_PAYLOADS = {
    "RiskLimitChanged": {"account": "a1", "limit": "max_order_qty", "value": "10", "symbol": None, "reason": "r"},
    "CircuitBreakerTripped": {"account": "a1", "reason": "loss streak", "until": None},
    "CircuitBreakerReset": {"account": "a1", "reason": "ok"},
    "KillSwitchEngaged": {"account": "a1", "reason": "manual", "by": "engine"},
    "KillSwitchReleased": {"account": "a1", "reason": "", "by": "operator"},
    "TradingResumed": {"account": "a1", "ramp_pct": 50, "reason": "after recovery"},
}


def _envelope() -> dict:
    return {"event_id": str(uuid4()), "occurred_at": None, "correlation_id": None, "causation_id": None}


@pytest.mark.parametrize("type_name", sorted(V1_PAYLOADS))
@pytest.mark.parametrize("marker", [None, 1])
def test_version_1_payloads_of_control_events_still_load(type_name, marker):
    payload = {**_envelope(), **V1_PAYLOADS[type_name]}
    if marker is not None:
        payload[ev.SCHEMA_KEY] = marker
    assert ev.EVENT_TYPES[type_name].schema_version == 2
    event = ev.decode(type_name, payload)
    assert event.operator == ""  # recorded before anyone was named
    assert event.account == "a1"
    # and a v2 payload round-trips with its operator
    again = ev.EVENT_TYPES[type_name].model_validate({**event.model_dump(), "operator": "alice@desk"})
    stored = again.to_payload()
    assert stored[ev.SCHEMA_KEY] == 2 and stored["operator"] == "alice@desk"
    assert ev.decode(type_name, stored).operator == "alice@desk"


def test_version_1_control_events_fold_like_version_2():
    old, new = TradingState(), TradingState()
    position = 0
    for type_name in ("RiskLimitChanged", "CircuitBreakerTripped", "KillSwitchEngaged", "TradingResumed"):
        position += 1
        v1 = {**_envelope(), **V1_PAYLOADS[type_name], ev.SCHEMA_KEY: 1}
        v2 = {**v1, "operator": "bob", ev.SCHEMA_KEY: 2}
        old.apply(position, account_stream_id("a1"), position, type_name, orjson.loads(orjson.dumps(v1)), AT)
        new.apply(position, account_stream_id("a1"), position, type_name, orjson.loads(orjson.dumps(v2)), AT)
    a_old, a_new = old.accounts["a1"], new.accounts["a1"]
    assert a_old.limits == a_new.limits == {"max_order_qty": 10}
    assert a_old.kill_switch and a_new.kill_switch and a_old.breaker_tripped and a_new.breaker_tripped
    assert a_old.ramp_pct == a_new.ramp_pct == 50
    assert old.summary() == new.summary()


def test_gate_approved_says_who_and_why():
    e = ev.GateApproved(**_envelope(), gate_id="crash-loop-engine-1", operator="alice", reason="checked the logs")
    assert e.account is None and e.to_payload()[ev.SCHEMA_KEY] == 1
    for blank in ({"operator": " "}, {"reason": ""}):
        with pytest.raises(ValidationError):
            ev.GateApproved(**{**_envelope(), "gate_id": "g", "operator": "alice", "reason": "why", **blank})
    with pytest.raises(ValidationError):
        ev.GateApproved(**_envelope(), gate_id="g", reason="why")  # no operator at all


def test_gate_approvals_are_folded_and_kept_by_a_checkpoint():
    state = TradingState()
    e = ev.GateApproved(**_envelope(), gate_id="exposure-a1", operator="alice", reason="hedged", account="a1")
    state.apply(1, gate_stream_id(e.gate_id), 1, "GateApproved", orjson.loads(orjson.dumps(e.to_payload())), AT)
    assert state.gate_approvals == {"exposure-a1": {"gate_id": "exposure-a1", "operator": "alice",
                                                    "reason": "hedged", "account": "a1", "position": 1, "at": AT}}
    assert state.summary()["gate_approvals"]["exposure-a1"]["operator"] == "alice"
    doc, finished = snapshot.take(state)
    restored = snapshot.restore(orjson.loads(snapshot.encode(doc)), finished)
    assert restored.gate_approvals == state.gate_approvals
    assert restored.summary() == state.summary()
    # a checkpoint written before gates existed has no gate_approvals: read as none
    del doc["gate_approvals"]
    assert snapshot.restore(orjson.loads(snapshot.encode(doc)), finished).gate_approvals == {}
