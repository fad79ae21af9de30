"""The operator controls over HTTP: ``POST /control/...`` (``tradestate.controls`` behind them).

Every endpoint needs a bearer token, always (``auth.BearerAuth``): the operator recorded on the
event is the token's name. The body is validated first (a 422 naming the field; nothing is
appended), then the action is appended through the server's own writer (a ``TradestateClient`` on
the same database, opened at the first action, not fenced: an operator's action is not an
engine's), and the answer is the recorded event with its log position.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ...domain.errors import AppendFailed, InvalidInput, TradestateError
from ...domain.events import RampPct, RiskLimitName
from ...domain.values import Identifier, NonNegativeAmount, Symbol, Text, UtcDatetime
from .routes import StrictRoute
from .schemas import ErrorBody, error_response


def _stated(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty: every operator action is recorded with its reason")
    return value


Reason = Annotated[Text, AfterValidator(_stated), Field(description="Why (recorded on the event)",
                                                        examples=["reconciled by hand"])]
Account = Annotated[Identifier, Field(description="The account")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AccountActionIn(_In):
    """An action on one account, with its reason."""

    account: Account
    reason: Reason


class BreakerTripIn(AccountActionIn):
    """Trip the breaker, until a time or (none given) until reset."""

    until: UtcDatetime | None = Field(None, description="ISO-8601 time with a zone; none: until reset")


class ResumeIn(AccountActionIn):
    """Resume trading at a ramp level."""

    ramp_pct: RampPct = Field(description="Percent of the account's limits to trade at")


class LimitIn(AccountActionIn):
    """Set one pre-trade limit (``value`` null removes it)."""

    limit: RiskLimitName
    value: NonNegativeAmount | None = Field(description="A decimal string (or integer); null removes the limit")
    symbol: Symbol | None = Field(None, description="max_position_qty of this symbol only")


class ApproveIn(_In):
    """Approve a safety gate."""

    gate_id: Identifier
    account: Identifier | None = Field(None, description="The account the gate holds, if one")
    reason: Reason


class ControlOut(BaseModel):
    """The recorded operator action."""

    action: str = Field(description="kill-switch.engage, kill-switch.release, breaker.trip, breaker.reset, resume, "
                                    "limit, ack or approve")
    event_type: str = Field(description="The event recorded")
    position: int = Field(description="Its position in the log")
    event_id: str | None = None
    duplicate: bool = Field(description="Already on record: nothing appended")
    operator: str = Field(description="Who: the name of the bearer token used")
    reason: str
    account: str | None = None
    gate_id: str | None = None


class ControlWriter:
    """The server's writer for operator actions: one ``TradestateClient`` on ``url``, opened at the
    first action (a database not reachable yet is a 503 then, not a failure to start)."""

    def __init__(self, url: str):
        self.url = url
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                from ...adapters.store import open_store
                from ...client import TradestateClient

                store = open_store(self.url, create=False)
                try:
                    self._client = TradestateClient(store)
                except BaseException:
                    store.close()
                    raise
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def control_operator(request: Request) -> str:
    """The operator named by the request's token (``BearerAuth`` put it there; checked again)."""
    operator = getattr(request.state, "operator", None)
    if not operator or request.app.state.tokens.operator(request.headers) != operator:
        raise HTTPException(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                            headers={"WWW-Authenticate": "Bearer"})
    return operator


Operator = Annotated[str, Depends(control_operator)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token (a token is always required here)"},
    403: {"model": ErrorBody, "description": "The server has no token configured: controls are disabled"},
    409: {"model": ErrorBody, "description": "The log refused the action (e.g. concurrent writers kept conflicting)"},
    421: {"model": ErrorBody, "description": "The Host header is not one this server answers for"},
    422: {"model": ErrorBody, "description": "Invalid body: nothing was appended"},
    503: {"model": ErrorBody, "description": "The database cannot be written; retrying is safe"},
}
router = APIRouter(prefix="/control", tags=["controls"], route_class=StrictRoute, responses=_ERRORS)


def _perform(request: Request, action: str, operator: str, **params: Any) -> Any:
    from ...controls import perform

    try:
        client = request.app.state.controls.client()
        return perform(client, action, operator=operator, **params).as_dict()
    except InvalidInput as e:
        return error_response(422, str(e))
    except AppendFailed as e:
        response = error_response(503, str(e))
        response.headers["Retry-After"] = "5"
        return response
    except TradestateError as e:
        return error_response(409, str(e))


_OK = {"response_model": ControlOut}


@router.post("/kill-switch/engage", summary="Engage an account's kill switch (every new intent refused)", **_OK)
def engage_kill_switch(body: AccountActionIn, request: Request, operator: Operator) -> Any:
    return _perform(request, "kill-switch.engage", operator, account=body.account, reason=body.reason)


@router.post("/kill-switch/release", summary="Release an account's kill switch", **_OK)
def release_kill_switch(body: AccountActionIn, request: Request, operator: Operator) -> Any:
    return _perform(request, "kill-switch.release", operator, account=body.account, reason=body.reason)


@router.post("/breaker/trip", summary="Trip an account's circuit breaker", **_OK)
def trip_breaker(body: BreakerTripIn, request: Request, operator: Operator) -> Any:
    return _perform(request, "breaker.trip", operator, account=body.account, reason=body.reason, until=body.until)


@router.post("/breaker/reset", summary="Reset an account's circuit breaker", **_OK)
def reset_breaker(body: AccountActionIn, request: Request, operator: Operator) -> Any:
    return _perform(request, "breaker.reset", operator, account=body.account, reason=body.reason)


@router.post("/resume", summary="Resume trading at a ramp level (50, 75 or 100 % of the limits)", **_OK)
def resume(body: ResumeIn, request: Request, operator: Operator) -> Any:
    return _perform(request, "resume", operator, account=body.account, reason=body.reason, ramp_pct=body.ramp_pct)


@router.post("/limit", summary="Set or remove a pre-trade limit", **_OK)
def limit(body: LimitIn, request: Request, operator: Operator) -> Any:
    return _perform(request, "limit", operator, account=body.account, reason=body.reason, limit=body.limit,
                    value=body.value, symbol=body.symbol)


@router.post("/ack", summary="Acknowledge the discrepancies that blocked an account (unblocks it)", **_OK)
def ack(body: AccountActionIn, request: Request, operator: Operator) -> Any:
    return _perform(request, "ack", operator, account=body.account, reason=body.reason)


@router.post("/approve", summary="Approve a safety gate", **_OK)
def approve(body: ApproveIn, request: Request, operator: Operator) -> Any:
    return _perform(request, "approve", operator, gate_id=body.gate_id, account=body.account, reason=body.reason)
