"""An amendment's result is an intent's result with its ``replace_id`` (one shape, both names
exported): code that handles an ``IntentResult`` (accepted, refusal, duplicate) handles both."""

from __future__ import annotations

import dataclasses

import tradestate
from tradestate import IntentResult, ReplaceResult
from tests.support.projector_worker import Clock


def test_a_replace_result_is_an_intent_result_with_its_replace_id(sqlite_url):
    assert issubclass(ReplaceResult, IntentResult)
    assert [f.name for f in dataclasses.fields(ReplaceResult)] == [
        *(f.name for f in dataclasses.fields(IntentResult)), "replace_id"]
    with tradestate.connect(sqlite_url, clock=Clock()) as client:
        client.set_risk_limit("a", "max_position_qty", 15)
        client.record_intent("a", "o1", "AAPL", "buy", 10, order_type="limit", limit_price="60", venue="IB")
        client.record_submitted("a", "o1")
        client.record_ack("a", "o1", "P1")
        refused = client.request_replace("a", "o1", qty=20, replace_id="r1")
        assert isinstance(refused, IntentResult) and not refused.accepted and refused.replace_id == "r1"
        assert refused.refusal.reasons == ["max_position_qty"]
        again = client.request_replace("a", "o1", qty=20, replace_id="r1")
        assert (again.duplicate, again.position, again.replace_id, again.refusal) == (
            True, refused.position, "r1", refused.refusal)
        accepted = client.request_replace("a", "o1", qty=12)
        assert accepted.accepted and accepted.replace_id and accepted.order_stream == refused.order_stream
