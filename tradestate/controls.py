"""Operator controls: what an operator does to a running desk, each recorded as one event that
says who did it and why.

The same actions back ``tradestate control ...`` and the API's ``POST /control/...`` endpoints:
engage or release an account's kill switch, trip or reset its circuit breaker, resume trading at a
ramp level, change a pre-trade limit, acknowledge the discrepancies that blocked trading, approve
a safety gate. Contract of every action: ``operator`` and ``reason`` must be non-blank, other
input is validated by the event's schema; bad input is ``InvalidInput`` and nothing is appended.
The action returns once its event is durable (``ControlResult.position``).

``PROTECTIVE`` actions only stop trading (the emergency brake); every other action lets trading
go on or changes what it may do, and front ends confirm it first.
"""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from .domain.errors import InvalidInput

ACTIONS = ("kill-switch.engage", "kill-switch.release", "breaker.trip", "breaker.reset", "resume", "limit", "ack",
           "approve")
PROTECTIVE = frozenset({"kill-switch.engage", "breaker.trip"})
EVENT_OF = {
    "kill-switch.engage": "KillSwitchEngaged",
    "kill-switch.release": "KillSwitchReleased",
    "breaker.trip": "CircuitBreakerTripped",
    "breaker.reset": "CircuitBreakerReset",
    "resume": "TradingResumed",
    "limit": "RiskLimitChanged",
    "ack": "DiscrepancyAcknowledged",
    "approve": "GateApproved",
}


def default_operator() -> str:
    """Who is at the keyboard: ``$TRADESTATE_OPERATOR``, else the OS user at this host."""
    named = os.environ.get("TRADESTATE_OPERATOR", "").strip()
    if named:
        return named
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class ControlResult:
    """One operator action as recorded: its event type and log position (``duplicate``: it was
    already on record and nothing was appended), with who and why."""

    action: str
    event_type: str
    position: int
    event_id: UUID | None
    duplicate: bool
    operator: str
    reason: str
    account: str | None = None
    gate_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["event_id"] = str(self.event_id) if self.event_id is not None else None
        return d


def _said(operator: str, reason: str) -> tuple[str, str]:
    if not isinstance(operator, str) or not operator.strip():
        raise InvalidInput("operator: say who you are (--operator or $TRADESTATE_OPERATOR)")
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput("reason: say why (--reason); every operator action is recorded with its reason")
    return operator, reason


def perform(client: Any, action: str, *, operator: str, reason: str, account: str | None = None,
            gate_id: str | None = None, ramp_pct: int | None = None, limit: str | None = None,
            value: Decimal | int | str | None = None, symbol: str | None = None,
            until: datetime | None = None) -> ControlResult:
    """Record operator ``action`` (one of ``ACTIONS``) through ``client`` (a ``TradestateClient``).

    Takes what the action needs: ``account`` (every action but ``approve``, where it is
    optional), ``gate_id`` (approve), ``ramp_pct`` (resume: 50, 75 or 100), ``limit`` and
    ``value`` (limit; ``value`` None removes the limit; ``symbol`` for a per-symbol
    ``max_position_qty``), ``until`` (breaker.trip, optional)."""
    operator, reason = _said(operator, reason)
    if action not in ACTIONS:
        raise InvalidInput(f"unknown control {action!r}; one of {', '.join(ACTIONS)}")
    if action != "approve" and not account:
        raise InvalidInput(f"{action}: name the account")
    if action == "kill-switch.engage":
        recorded = client.engage_kill_switch(account, reason, by="operator", operator=operator)
    elif action == "kill-switch.release":
        recorded = client.release_kill_switch(account, reason, by="operator", operator=operator)
    elif action == "breaker.trip":
        recorded = client.trip_breaker(account, reason, until=until, operator=operator)
    elif action == "breaker.reset":
        recorded = client.reset_breaker(account, reason, operator=operator)
    elif action == "resume":
        if ramp_pct is None:
            raise InvalidInput("resume: give the ramp level (50, 75 or 100)")
        recorded = client.resume_trading(account, ramp_pct, reason, operator=operator)
    elif action == "limit":
        if not limit:
            raise InvalidInput("limit: name the limit")
        recorded = client.set_risk_limit(account, limit, value, symbol=symbol, reason=reason, operator=operator)
    elif action == "ack":
        from .reconcile import acknowledge

        recorded = acknowledge(client, account, by=operator, decision=reason)
    else:
        if not gate_id:
            raise InvalidInput("approve: name the gate")
        recorded = client.approve_gate(gate_id, operator=operator, reason=reason, account=account)
    return ControlResult(action, EVENT_OF[action], recorded.position, recorded.event_id, recorded.duplicate,
                         operator, reason, account, gate_id)


__all__ = ["ACTIONS", "EVENT_OF", "PROTECTIVE", "ControlResult", "default_operator", "perform"]
