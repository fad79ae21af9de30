"""A safety gate left waiting for an operator's approval, as a recovery leaves one."""

from __future__ import annotations

from typing import Any

from tradestate.domain import events as ev
from tradestate.domain.ids import engine_stream_id
from tradestate.writer import build_event


def waiting_gate(target: Any, gate_id: str, *, account: str | None = None, engine_id: str = "e1") -> None:
    """Record a ``GateEvaluated`` that requires approval (``target``: a client or a database URL)."""
    import tradestate

    client = target if hasattr(target, "writer") else tradestate.connect(target)
    try:
        e = build_event(ev.GateEvaluated, **client.writer.envelope(), engine_id=engine_id, gate_id=gate_id,
                        gate="repeated_crashes", passed=False, action="approval", requires_approval=True,
                        account=account, values={"crashes": 4}, detail="test: 4 crashes in 5 minutes")
        client.writer.record_event(engine_stream_id(engine_id), e)
    finally:
        if client is not target:
            client.close()
