"""The API's endpoints: module-level routers over the queries of ``projections/queries.py``.

``data`` holds the read-model endpoints (token-protected when a token is configured); ``public``
the probes (``/health``, ``/livez``, ``/readyz``). Each endpoint gets the app's reader and settings
through ``Depends`` providers (``create_app`` puts them on ``app.state``).

Every data response carries its freshness, read in the same snapshot as its rows:
``X-Tradestate-Projection-Position`` (the log position the read models reflect) and
``X-Tradestate-Log-Head`` (the log's last position). When the first is below the second, the
rows may miss the latest events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BeforeValidator

from .. import queries
from ..metrics import CombinedRegistry, exposition
from ..queries import Freshness, Reader, Tx
from .auth import authorized
from .schemas import (
    CashOut,
    CorporateActionOut,
    DailyStatsOut,
    EngineOut,
    EquityPointOut,
    ErrorBody,
    FeePendingOut,
    FxRateOut,
    HealthOut,
    InstrumentOut,
    LiveOut,
    OrderOut,
    OrderStatus,
    PositionOut,
    ReadyOut,
    RiskOut,
    SignalOut,
    error_response,
)

MAX_LIMIT = 1000
MAX_EQUITY_LIMIT = 10_000
_TEXT = r"^[^\x00-\x1f\x7f]+$"  # ids and symbols: no control characters (NUL breaks PostgreSQL)

POSITION_HEADER = "X-Tradestate-Projection-Position"
HEAD_HEADER = "X-Tradestate-Log-Head"
FRESHNESS_HEADERS: dict[str, Any] = {
    POSITION_HEADER: {"description": "projection_position: the last log position the read models (and so this "
                                     "response) include", "schema": {"type": "integer"}},
    HEAD_HEADER: {"description": "log_head: the trading log's last position when this response was read; above "
                                 "projection_position, the rows may miss the latest events",
                  "schema": {"type": "integer"}},
}


# ============================================================================ dependencies
@dataclass(frozen=True)
class Settings:
    """What ``create_app`` was given: the database URL, the bearer tokens reads need (None: open)
    and the lag thresholds of readiness."""

    url: str
    token: Any
    lag_threshold_events: int
    lag_threshold_seconds: float
    drill_max_age_days: float = 35.0  # the last restore drill is stale after this (monthly drills)
    drill_required: bool = False  # no drill on record turns /health degraded


def get_settings(request: Request) -> Settings:
    """The ``Settings`` that ``create_app`` put on ``app.state``."""
    return request.app.state.settings


def get_reader(request: Request) -> Reader:
    """The app's shared ``Reader`` (one per app, from ``app.state``)."""
    return request.app.state.reader


def get_engines(request: Request) -> Any:
    """The app's ``EngineMonitor`` (from ``app.state``)."""
    return request.app.state.engines


def get_registry(request: Request) -> CombinedRegistry:
    """The app's Prometheus ``CombinedRegistry`` (from ``app.state``)."""
    return request.app.state.registry


class Snapshot:
    """One read transaction of a data endpoint: ``read()`` yields the transaction and sets the
    freshness headers on the response (``freshness`` and ``headers`` hold them afterwards)."""

    def __init__(self, reader: Reader, response: Response):
        self._reader = reader
        self._response = response
        self.freshness = Freshness(0, 0)
        self.headers: dict[str, str] = {}

    @contextmanager
    def read(self) -> Iterator[Tx]:
        """Open one read transaction, set the freshness headers on the response from that same
        transaction, and yield it. Raises ``DatabaseUnavailable`` (served as 503) when the database
        cannot be read."""
        with self._reader.read() as tx:
            self.freshness = queries.freshness(tx)
            self.headers = {POSITION_HEADER: str(self.freshness.projection_position),
                            HEAD_HEADER: str(self.freshness.log_head)}
            self._response.headers.update(self.headers)
            yield tx


def get_snapshot(reader: Annotated[Reader, Depends(get_reader)], response: Response) -> Snapshot:
    """A fresh ``Snapshot`` per request over the app's reader, writing headers onto this request's
    response."""
    return Snapshot(reader, response)


ReaderDep = Annotated[Reader, Depends(get_reader)]
EnginesDep = Annotated[Any, Depends(get_engines)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
SnapshotDep = Annotated[Snapshot, Depends(get_snapshot)]


# ========================================================================= query parameters
def _iso_time(value: Any) -> Any:
    """Query times: ISO-8601 with a time zone, nothing else (no bare epoch numbers, no naive times)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if len(text) > 6 and text[-6] == " " and text[-5:-3].isdigit() and text[-2:].isdigit():
        text = text[:-6] + "+" + text[-5:]  # an unencoded '+' in a URL arrives as a space
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("not an ISO-8601 time (e.g. 2026-11-20T14:30:00Z)") from None
    if t.tzinfo is None:
        raise ValueError("an ISO-8601 time needs a time zone (e.g. 2026-11-20T14:30:00Z or +00:00)")
    try:
        return t.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("time out of range") from None


def _iso_day(value: Any) -> Any:
    """Query days: YYYY-MM-DD, nothing else (pydantic would read a number as days since 1970)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if len(text) != 10 or text[4] != "-" or text[7] != "-":
        raise ValueError("a trading day is YYYY-MM-DD (e.g. 2026-11-20)")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError("not a calendar day (YYYY-MM-DD)") from None


IsoTime = Annotated[datetime, BeforeValidator(_iso_time)]
IsoDay = Annotated[date, BeforeValidator(_iso_day)]
Account = Annotated[str | None, Query(description="Account id", min_length=1, max_length=64, pattern=_TEXT)]
Symbol = Annotated[str | None, Query(description="Symbol", min_length=1, max_length=32, pattern=_TEXT)]
Since = Annotated[IsoTime | None, Query(description="From this time, inclusive (ISO-8601 with a time zone); "
                                                    "not after `until` (422)")]
Until = Annotated[IsoTime | None, Query(description="Before this time, exclusive (ISO-8601 with a time zone)")]
AccountPath = Annotated[str, PathParam(description="Account id", max_length=64, pattern=_TEXT)]


def _check_range(since: datetime | None, until: datetime | None) -> None:
    if since is not None and until is not None and since > until:
        raise HTTPException(422, "since is after until")


# ================================================================================ routers
class StrictRoute(APIRoute):
    """Rejects query parameters the route does not declare, and declared ones given twice
    (FastAPI would silently ignore the first or take the last)."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        """The route's handler, wrapped to answer 422 (an ``ErrorBody``) for an undeclared query
        parameter or one given more than once, before the endpoint runs."""
        handler = super().get_route_handler()
        allowed: set[str] = set()
        pending = [self.dependant]
        while pending:
            dependant = pending.pop()
            allowed.update(f.alias for f in dependant.query_params)
            pending.extend(dependant.dependencies)

        async def strict(request: Request) -> Response:
            params = request.query_params
            unknown = sorted(set(params.keys()) - allowed)
            if unknown:
                known = ", ".join(sorted(allowed)) or "none"
                return error_response(
                    422, f"unknown query parameter(s): {', '.join(unknown)} (this endpoint takes: {known})")
            repeated = sorted(k for k in set(params.keys()) if len(params.getlist(k)) > 1)
            if repeated:
                return error_response(422, f"query parameter(s) given more than once: {', '.join(repeated)}")
            return await handler(request)

        return strict


_422 = {"model": ErrorBody, "description": "Invalid or unknown query parameters"}
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token (when one is configured)"},
    422: _422,
    503: {"model": ErrorBody, "description": "The database cannot be read (or the tables are not built yet)"},
}
_FRESH: dict[int | str, dict[str, Any]] = {200: {"headers": FRESHNESS_HEADERS}}
_RANGE: dict[int | str, dict[str, Any]] = {
    **_FRESH, 422: {**_422, "description": "Invalid or unknown query parameters, or `since` after `until`"}}

data = APIRouter(route_class=StrictRoute, responses=_ERRORS)
public = APIRouter(route_class=StrictRoute, responses={k: v for k, v in _ERRORS.items() if k != 401})


# ------------------------------------------------------------------------------ positions
@data.get("/positions", response_model=list[PositionOut], tags=["positions"], responses=_FRESH,
          summary="Positions by account, venue and symbol")
def positions(snap: SnapshotDep, account: Account = None, symbol: Symbol = None) -> list[dict[str, Any]]:
    """Every position in the read models as one row per account, venue and symbol, ordered by account,
    venue, symbol. Filter by `account` and/or `symbol` (exact match). Quantities and prices are exact
    decimal strings. The response carries `X-Tradestate-Projection-Position` and
    `X-Tradestate-Log-Head`; rows reflect the log up to the first. 503 when the database cannot be
    read."""
    with snap.read() as tx:
        return queries.positions(tx, account=account, symbol=symbol)


# --------------------------------------------------------------------------------- orders
@data.get("/orders", response_model=list[OrderOut], tags=["orders"], responses=_RANGE,
          summary="Orders, most recently updated first")
def orders(
    snap: SnapshotDep,
    status: Annotated[OrderStatus | None, Query(description="Only orders in this status")] = None,
    symbol: Symbol = None,
    account: Account = None,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"At most this many orders (1-{MAX_LIMIT})")] = 100,
) -> list[dict[str, Any]]:
    """Orders ordered by last update, most recent first, at most `limit` (default 100). Filter by
    `status`, `symbol`, `account`, and a time range on the last update: `since` inclusive, `until`
    exclusive (ISO-8601 with a time zone). 422 for `since` after `until`, a malformed time or an
    unknown parameter. Freshness headers as on every data endpoint."""
    _check_range(since, until)
    with snap.read() as tx:
        return queries.orders(tx, status=status, symbol=symbol, account=account, since=since, until=until,
                              limit=limit)


@data.get("/orders/open", response_model=list[OrderOut], tags=["orders"], responses=_FRESH,
          summary="Open orders (new, submitted, acknowledged, partially filled), oldest first")
def open_orders(snap: SnapshotDep, account: Account = None) -> list[dict[str, Any]]:
    """Orders still working at the venue (new, submitted, acknowledged, partially filled), oldest first,
    optionally for one `account`. Freshness headers as on every data endpoint."""
    with snap.read() as tx:
        return queries.open_orders(tx, account=account)


def _not_found(snap: Snapshot, what: str) -> HTTPException:
    """404 for ``what`` missing from the read models; when they lag the log, the detail says
    so (it may be recorded but not projected yet)."""
    fresh = snap.freshness
    if fresh.behind:
        detail = (f"{what} is not in the read models, which are behind the log (at position "
                  f"{fresh.projection_position} of head {fresh.log_head}): it may be recorded but not projected "
                  "yet; retry once the projection catches up (is `tradestate project` running?)")
    else:
        detail = f"{what} is not in the read models (they include the whole log, position {fresh.log_head})"
    return HTTPException(404, detail, headers=snap.headers)


def _the_one(snap: Snapshot, rows: list[dict[str, Any]], missing: str) -> dict[str, Any]:
    """The first of ``rows``; none: the 404 of ``_not_found`` saying ``missing``."""
    if not rows:
        raise _not_found(snap, missing)
    return rows[0]


_LAG_404 = ("Not in the read models. When they lag the log (X-Tradestate-Projection-Position below "
            "X-Tradestate-Log-Head) the detail says so: it may be recorded but not projected yet, retry later.")


@data.get("/orders/{account}/{client_order_id:path}", response_model=OrderOut, tags=["orders"],
          summary="One order by account and client order id",
          responses={**_FRESH, 404: {"model": ErrorBody, "description": f"No such order. {_LAG_404}"}})
def order(
    snap: SnapshotDep,
    account: AccountPath,
    client_order_id: Annotated[str, PathParam(description="Client order id", max_length=64, pattern=_TEXT)],
) -> dict[str, Any]:
    """One order by `account` and `client_order_id` (the id may contain slashes). 404 when the read
    models do not hold it; when they lag the log, the 404 detail says the order may be recorded but
    not projected yet. Freshness headers are set on the 200 and on the 404."""
    with snap.read() as tx:
        row = queries.order(tx, account, client_order_id)
    if row is None:
        raise _not_found(snap, f"unknown order: account={account!r} client_order_id={client_order_id!r}")
    return row


# ----------------------------------------------------------------------------------- risk
@data.get("/risk", response_model=list[RiskOut], tags=["risk"], responses=_FRESH,
          summary="Risk state of every account")
def risk(snap: SnapshotDep) -> list[dict[str, Any]]:
    """The risk state of every account, ordered by account: kill switch, circuit breaker
    (`breaker_active`: tripped and not yet expired at request time), recovery ramp and each limit's
    configured, effective and used value. Freshness headers as on every data endpoint."""
    with snap.read() as tx:
        return queries.risk(tx)


@data.get("/risk/{account:path}", response_model=RiskOut, tags=["risk"], summary="Risk state of one account",
          responses={**_FRESH, 404: {"model": ErrorBody, "description": f"No risk state for this account. {_LAG_404}"}})
def risk_of(snap: SnapshotDep, account: AccountPath) -> dict[str, Any]:
    """The risk state of one account. 404 when the read models hold none for it (the detail says when
    they lag the log). Freshness headers as on every data endpoint."""
    with snap.read() as tx:
        return _the_one(snap, queries.risk(tx, account=account), f"no risk state: account={account!r}")


# ---------------------------------------------------------------------------- daily, equity
@data.get("/stats/daily", response_model=list[DailyStatsOut], tags=["statistics"], responses=_FRESH,
          summary="Daily trading statistics per account and trading day")
def daily_stats(
    snap: SnapshotDep,
    account: Account = None,
    day: Annotated[IsoDay | None, Query(description="Trading day, YYYY-MM-DD (exchange time zone)")] = None,
) -> list[dict[str, Any]]:
    """Trading statistics per account and trading day (exchange time zone), ordered by account, day.
    Filter by `account` and/or `day` (YYYY-MM-DD; 422 otherwise). Freshness headers as on every data
    endpoint."""
    with snap.read() as tx:
        return queries.daily_stats(tx, account=account, day=day.isoformat() if day else None)


@data.get("/equity", response_model=list[EquityPointOut], tags=["statistics"], responses=_RANGE,
          summary="Equity curve of each account, oldest first (the most recent `limit` points)")
def equity(
    snap: SnapshotDep,
    account: Account = None,
    since: Since = None,
    until: Until = None,
    limit: Annotated[int, Query(ge=1, le=MAX_EQUITY_LIMIT,
                                description=f"At most this many points, the latest (1-{MAX_EQUITY_LIMIT})")] = 1000,
) -> list[dict[str, Any]]:
    """Equity points of each account, oldest first: the latest `limit` points (default 1000) in the
    range `since` (inclusive) to `until` (exclusive). 422 for `since` after `until` or a malformed
    time. Freshness headers as on every data endpoint."""
    _check_range(since, until)
    with snap.read() as tx:
        return queries.equity(tx, account=account, since=since, until=until, limit=limit)


# -------------------------------------------------------------------------------- signals
@data.get("/signals", response_model=list[SignalOut], tags=["signals"], responses=_FRESH,
          summary="The last signal per strategy and symbol")
def signals(
    snap: SnapshotDep,
    strategy_id: Annotated[str | None, Query(description="Strategy id", min_length=1, max_length=64,
                                             pattern=_TEXT)] = None,
    symbol: Symbol = None,
) -> list[dict[str, Any]]:
    """The last signal recorded per strategy and symbol, ordered by strategy, symbol; filter by
    `strategy_id` and/or `symbol`. Freshness headers as on every data endpoint."""
    with snap.read() as tx:
        return queries.signals(tx, strategy_id=strategy_id, symbol=symbol)


# ------------------------------------------------------------------- instruments, money, venue facts
Currency = Annotated[str | None, Query(description="Currency or asset code", min_length=2, max_length=10,
                                       pattern=r"^[A-Z0-9]+$")]


@data.get("/instruments", response_model=list[InstrumentOut], tags=["instruments"], responses=_FRESH,
          summary="The instrument registry, by symbol")
def instruments(
    snap: SnapshotDep,
    symbol: Symbol = None,
    asset_class: Annotated[Literal["equity", "etf", "future", "option", "fx", "crypto"] | None,
                           Query(description="Only instruments of this class")] = None,
) -> list[dict[str, Any]]:
    """Every instrument of the registry (its last `InstrumentDefined`): asset class, contract
    multiplier, quote and settlement currency, tick and lot size, whether fractional quantities are
    allowed, expiry, and an option's underlying, strike and right. A symbol not in it trades with
    multiplier 1 in the account's currency. Freshness headers as on every data endpoint."""
    with snap.read() as tx:
        return queries.instruments(tx, symbol=symbol, asset_class=asset_class)


@data.get("/instruments/{symbol:path}", response_model=InstrumentOut, tags=["instruments"],
          summary="One instrument of the registry",
          responses={**_FRESH, 404: {"model": ErrorBody, "description": f"Not in the registry. {_LAG_404}"}})
def instrument(snap: SnapshotDep,
               symbol: Annotated[str, PathParam(description="Symbol", max_length=32, pattern=_TEXT)]) -> dict[str, Any]:
    """One instrument by symbol. 404 when the registry does not hold it (the detail says when the read
    models lag the log). Freshness headers as on every data endpoint."""
    with snap.read() as tx:
        return _the_one(snap, queries.instruments(tx, symbol=symbol), f"no instrument {symbol!r} in the registry")


@data.get("/cash", response_model=list[CashOut], tags=["money"], responses=_FRESH,
          summary="Cash per account, venue and currency")
def cash(snap: SnapshotDep, account: Account = None,
         venue: Annotated[str | None, Query(description="Venue", min_length=1, max_length=64, pattern=_TEXT)] = None,
         currency: Currency = None) -> list[dict[str, Any]]:
    """Cash of each account at each venue in each currency: the venue's last reported balance
    (`CashBalanceRecorded`), moved by our fills, fees and settlements since. Ordered by account,
    venue, currency. Freshness headers as on every data endpoint."""
    with snap.read() as tx:
        return queries.cash(tx, account=account, venue=venue, currency=currency)


@data.get("/fx-rates", response_model=list[FxRateOut], tags=["money"], responses=_FRESH,
          summary="The last recorded FX rate of each currency pair")
def fx_rates(snap: SnapshotDep, base: Currency = None, quote: Currency = None) -> list[dict[str, Any]]:
    """The last rate recorded for each pair (`FxRateRecorded`: one `base` is worth `rate` `quote`);
    tradestate never fetches rates. Freshness headers as on every data endpoint."""
    with snap.read() as tx:
        return queries.fx_rates(tx, base=base, quote=quote)


@data.get("/corporate-actions", response_model=list[CorporateActionOut], tags=["instruments"], responses=_FRESH,
          summary="Corporate actions recorded, by effective time")
def corporate_actions(snap: SnapshotDep, symbol: Symbol = None) -> list[dict[str, Any]]:
    """Splits, reverse splits and symbol changes recorded (`CorporateActionRecorded`), by effective
    time; `symbol` filters by the symbol they act on. Freshness headers as on every data endpoint."""
    with snap.read() as tx:
        return queries.corporate_actions(tx, symbol=symbol)


@data.get("/fees/pending", response_model=list[FeePendingOut], tags=["money"], responses=_FRESH,
          summary="Executions whose fee the venue has not reported yet")
def fees_pending(
    snap: SnapshotDep,
    account: Account = None,
    client_order_id: Annotated[str | None, Query(description="Client order id", min_length=1, max_length=64,
                                                 pattern=_TEXT)] = None,
) -> list[dict[str, Any]]:
    """Fills recorded with their fee still to come (`fee_pending`, e.g. IB's commission report),
    oldest first; one goes when its fee is recorded (`FeeCharged`) or a correction replaces it. An
    order's count is its `fees_pending`. Freshness headers as on every data endpoint."""
    with snap.read() as tx:
        return queries.fees_pending(tx, account=account, client_order_id=client_order_id)


# -------------------------------------------------------------------------------- engines
@data.get("/engines", response_model=list[EngineOut], tags=["operations"],
          summary="Engines: state (active, dead, stopped...), lease holder, epoch, last renewal")
def engines(monitor: EnginesDep) -> list[dict[str, Any]]:
    """Every engine the log or the lease table knows, by engine id: its state (`active`, `dead`: the
    lease expired unrenewed, `stopped`: released cleanly...), the lease holder, epoch and the age of the
    last renewal by the database's clock; what `tradestate engines --json` lists. Read from the log and
    the lease table, not the read models (no freshness headers). 503 when the database cannot be read."""
    return monitor.rows()


# -------------------------------------------------------------------------------- metrics
@data.get("/metrics", tags=["operations"], response_class=Response,
          summary="Prometheus metrics: projection lag, orders by status, refusals, breakers; "
                  "plus the process's default registry",
          responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
def metrics(registry: Annotated[CombinedRegistry, Depends(get_registry)]) -> Response:
    """Prometheus text exposition: projection lag, orders by status, refusals and breakers read from the
    database at scrape time, followed by the process's default registry. Token-protected like the
    data endpoints."""
    return Response(exposition(registry), media_type=CONTENT_TYPE_LATEST)


# --------------------------------------------------------------------------------- probes
def _lag_status(snap: dict[str, Any], settings: Settings) -> str:
    """ok, behind (more unprojected events than the threshold) or stalled (an unprojected event
    older than the seconds threshold)."""
    if snap["lag_events"] > 0 and snap["lag_seconds"] > settings.lag_threshold_seconds:
        return "stalled"
    if snap["lag_events"] > settings.lag_threshold_events:
        return "behind"
    return "ok"


def _drill_status(drill: dict[str, Any] | None, settings: Settings, now: datetime) -> tuple[str, str | None]:
    """The last drill's status (ok, failed, stale, never) and, when it degrades /health, why."""
    if drill is None:
        return "never", ("no restore drill on record (run `tradestate drill`)" if settings.drill_required else None)
    if drill["outcome"] != "passed":
        return "failed", "the last restore drill failed (last_drill.reason says why)"
    at = drill["finished_at"]
    age_days = (now - at).total_seconds() / 86400 if at is not None else float("inf")
    if age_days > settings.drill_max_age_days:
        return "stale", (f"the last restore drill is {age_days:.1f} days old (more than "
                         f"{settings.drill_max_age_days:g})")
    return "ok", None


@public.get("/livez", response_model=LiveOut, tags=["operations"],
            summary="Liveness: 200 while the process serves requests (the database is not read)")
def livez() -> dict[str, Any]:
    """Always 200 `{"status": "alive"}` while the process serves requests; reads nothing, so it stays up
    when the database is down."""
    return {"status": "alive"}


@public.get("/readyz", response_model=ReadyOut, tags=["operations"],
            summary="Readiness: 200 when the database answers and the read models are within the lag thresholds",
            responses={503: {"model": ReadyOut | ErrorBody,
                             "description": "Behind or stalled (a ReadyOut with the lag), or the database cannot "
                                            "be read (an ErrorBody)"}})
def readyz(reader: ReaderDep, settings: SettingsDep, response: Response) -> dict[str, Any]:
    """200 with status `ready` when the database answers and the read models are within the lag
    thresholds; 503 with status `behind` (more unprojected events than the event threshold) or
    `stalled` (an unprojected event older than the seconds threshold), or an ErrorBody when the
    database cannot be read. Carries the freshness headers and the lag figures."""
    with reader.read() as tx:
        snap = queries.lag(tx)
    status = _lag_status(snap, settings)
    if status != "ok":
        response.status_code = 503
    response.headers.update({POSITION_HEADER: str(snap["projection_position"]), HEAD_HEADER: str(snap["log_head"])})
    return {"status": "ready" if status == "ok" else status,
            **{k: snap[k] for k in ("log_head", "projection_position", "lag_events", "lag_seconds")}}


@public.get("/health", response_model=HealthOut, tags=["operations"],
            summary="Readiness in detail: projection lag, thresholds, per-account breaker and kill switch",
            responses={503: {"model": HealthOut | ErrorBody,
                             "description": "Behind or stalled (a HealthOut), or the database cannot be read"}})
def health(request: Request, reader: ReaderDep, settings: SettingsDep, monitor: EnginesDep,
           response: Response) -> dict[str, Any]:
    """What `/readyz` reports (same status codes and freshness headers), plus the thresholds, the count
    of dead engines, the last restore drill and, when the request is authorized, each account's breaker
    and kill switch and each engine's lease (`accounts` and `engines` are null otherwise, so an open
    probe reveals no account ids). A dead engine (its lease expired unrenewed), a last drill that failed
    or is older than `drill_max_age_days` (and, when drills are required, none on record) turn an `ok`
    status into `degraded`, still 200, with the `reasons`: the read models are served as ever, the alert
    is for the operators."""
    with reader.read() as tx:
        snap = queries.lag(tx)
        drill = queries.last_drill(tx)
    engine_rows = monitor.rows(folded=False)
    now = datetime.now(timezone.utc)
    snap["status"] = _lag_status(snap, settings)
    snap["dead_engines"] = sum(1 for e in engine_rows if e["state"] == "dead")
    snap["engines"] = engine_rows
    snap["drill_status"], drill_reason = _drill_status(drill, settings, now)
    snap["drill_max_age_days"] = settings.drill_max_age_days
    snap["reasons"] = ([f"{snap['dead_engines']} engine(s) dead (lease expired unrenewed)"] if snap["dead_engines"]
                       else []) + ([drill_reason] if drill_reason else [])
    if drill is not None:
        at = drill["finished_at"]
        snap["last_drill"] = {**{k: drill[k] for k in ("outcome", "reason", "finished_at", "rto_seconds",
                                                       "rpo_seconds", "events_behind", "position")},
                              "age_seconds": (now - at).total_seconds() if at is not None else None}
    if snap["status"] != "ok":
        response.status_code = 503
    elif snap["reasons"]:
        snap["status"] = "degraded"
    response.headers.update({POSITION_HEADER: str(snap["projection_position"]), HEAD_HEADER: str(snap["log_head"])})
    snap["lag_threshold_events"] = settings.lag_threshold_events
    snap["lag_threshold_seconds"] = settings.lag_threshold_seconds
    if not authorized(request.headers, settings.token):
        snap["accounts"] = snap["engines"] = None
        if drill is not None:  # the figures are for alerting; the reason may name files
            snap["last_drill"]["reason"] = None
    del snap["orders_by_status"]
    return snap
