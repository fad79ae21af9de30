"""``create_app``: the FastAPI application over the read models of one database.

It wires the parts: a reader (``projections/queries.py``), the routers (``routes.py``), bearer
authentication (``auth.py``), the Prometheus registry (``projections/metrics.py``) and the error
answers. Bad input (unknown or repeated query parameters, malformed or naive times, out-of-range
limits, unknown statuses) is a 422 with a readable ``detail``; a database that cannot be read is a
503 with ``Retry-After``; anything else a 500 without a traceback.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI, Request, Security
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ...adapters.store import resolve_url
from ...domain.errors import InvalidInput
from .. import queries
from ..metrics import MetricsSnapshot, make_registry
from ..queries import DatabaseUnavailable
from . import routes
from . import console, control
from .auth import BearerAuth, HostCheck, HostPolicy, Tokens, bearer_documented, load_tokens
from .engines import EngineMonitor
from .schemas import error_response


def _version() -> str:
    try:
        return version("tradestate")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


def create_app(
    url: str | None,
    *,
    token: str | None = None,
    tokens: Tokens | None = None,
    open_reads: bool = False,
    allowed_hosts: list[str] | tuple[str, ...] = (),
    lag_threshold_events: int = 1000,
    lag_threshold_seconds: float = 5.0,
    watch_engines: bool = True,
    engine_watch_seconds: float = 2.0,
    alerts: dict[str, Any] | None = None,
    drill_max_age_days: float = 35.0,
    drill_required: bool = False,
) -> FastAPI:
    """The API over the read models of the database at ``url`` (``$TRADESTATE_DB`` or the default
    when None). Nothing is read until the first request: a database that is not reachable yet is
    a 503, not a failure to start. With a ``token`` (empty means none; its operator is ``api``) or
    named ``tokens`` (``auth.load_tokens``), every path but the probes needs one of them, reads too
    unless ``open_reads``; the operator controls (``/control/...``) always need one. A request
    whose ``Host`` is not loopback, the address it arrived on, or one of ``allowed_hosts``
    (``name`` or ``name:port``) is a 421 (``auth.HostCheck``). ``/readyz`` and ``/health`` answer 503 when more than ``lag_threshold_events`` events
    are unprojected, or one has been for more than ``lag_threshold_seconds``. Raises
    ``InvalidInput`` for bad thresholds or an unsupported URL. ``watch_engines``: record the
    expiry of a dead engine's lease (``LeaseExpired``) within ``engine_watch_seconds`` of it, from a
    background thread (see ``engines.EngineMonitor``). ``alerts`` (``tradestate.alerts.service_options``
    with URLs): deliver the log's alerts to those webhooks from background threads while serving.
    ``drill_max_age_days``: ``/health`` is ``degraded`` when the last restore drill (``DrillCompleted``)
    failed or is older than this (35: monthly drills); ``drill_required``: also when none is on record."""
    url = resolve_url(url)
    if lag_threshold_events < 0 or lag_threshold_seconds <= 0:
        raise InvalidInput("lag thresholds: events must be >= 0 and seconds > 0")
    all_tokens = Tokens(load_tokens(token or None).pairs + (tokens.pairs if tokens else ()))
    read_tokens = all_tokens if all_tokens and not open_reads else None
    host_policy = HostPolicy.of(allowed_hosts)
    if engine_watch_seconds <= 0:
        raise InvalidInput("engine_watch_seconds must be > 0")
    if drill_max_age_days <= 0:
        raise InvalidInput("drill_max_age_days must be > 0")
    reader = queries.open_reader(url)
    monitor = EngineMonitor(url, watch=watch_engines, every=engine_watch_seconds)
    controls = control.ControlWriter(url)
    alerter = None
    if alerts and alerts.get("urls"):
        from ...alerts import BackgroundAlerts

        alerter = BackgroundAlerts(url, alerts["urls"], alerts.get("secret"),
                                   stall_seconds=alerts.get("stall_seconds", 60.0))

    def metrics_snapshot() -> MetricsSnapshot:
        with reader.read() as tx:
            snap = queries.lag(tx, with_orders=True)
            ops = queries.operations(tx)
            drill = queries.last_drill(tx)
        return MetricsSnapshot(
            accounts=snap["accounts"], positions=ops["positions"], limits=ops["limits"],
            open_discrepancies=ops["open_discrepancies"], fees_pending=ops["fees_pending"], now=time.time(),
            log_head=snap["log_head"], projection_position=snap["projection_position"],
            lag_events=snap["lag_events"], lag_seconds=snap["lag_seconds"],
            orders_by_status=snap["orders_by_status"],
            kill_switch={a["account"]: a["kill_switch"] for a in snap["accounts"]},
            breaker_active={a["account"]: a["breaker_active"] for a in snap["accounts"]},
            engines=monitor.rows(folded=False), drill=drill,
        )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        monitor.start()
        if alerter is not None:
            alerter.start()
        try:
            yield
        finally:
            if alerter is not None:
                alerter.stop()
            monitor.close()
            controls.close()
            reader.close()

    app = FastAPI(
        title="tradestate read models",
        version=_version(),
        description=(
            "Positions, orders, risk state, daily statistics, equity curve and signals of a tradestate "
            "log, read from the SQL read models kept by `tradestate project`. Decimals are exact "
            "strings; times are ISO-8601 UTC. Unknown query parameters are rejected (422).\n\n"
            "Freshness: every data response carries `X-Tradestate-Projection-Position` (projection_position: "
            "the log position the read models reflect) and `X-Tradestate-Log-Head` (the log's last position). "
            "An order or account that is missing while the read models lag the log answers 404 with a detail "
            "saying it may not be projected yet.\n\n"
            "Probes: `/livez` (liveness: 200 while the process serves, the database is not read), `/readyz` "
            "(readiness: 200 when the database answers and the projection lag is within the thresholds, "
            "503 otherwise), `/health` (the readiness detail, with the per-account breaker and kill switch, and "
            "the engines' leases: `degraded` when an engine is dead). `/metrics` is Prometheus. `/engines` lists "
            "the engines (active, dead, stopped), their lease holder, epoch and last renewal.\n\n"
            "Operator controls: `POST /control/...` (kill switch, breaker, resume, limit, ack, approve) record "
            "one event each, with the operator (the name of the bearer token used) and the reason. They always "
            "need a token, even on loopback. Every request must carry a `Host` the server answers for (loopback "
            "names, the address it listens on, or `--allowed-host`): anything else is a 421.\n\n"
            "Operator console: `/console` in a browser (sign in with a token; the same controls, with confirmations)."
        ),
        lifespan=lifespan,
    )
    app.state.settings = routes.Settings(url, read_tokens, lag_threshold_events, lag_threshold_seconds,
                                         drill_max_age_days, drill_required)
    app.state.tokens = all_tokens
    app.state.controls = controls
    app.state.reader = reader
    app.state.engines = monitor
    app.state.alerts = alerter
    app.state.registry = make_registry(metrics_snapshot)
    app.state.console_sessions = console.Sessions()

    # The bearer dependency only documents the scheme in OpenAPI: BearerAuth below enforces it.
    app.include_router(routes.data, dependencies=[Security(bearer_documented)] if read_tokens else [])
    app.include_router(routes.public)
    app.include_router(control.router, dependencies=[Security(bearer_documented)])
    app.include_router(console.router)  # authenticates its own requests (token or session cookie)

    @app.exception_handler(DatabaseUnavailable)
    async def unavailable(_: Request, exc: DatabaseUnavailable) -> JSONResponse:
        response = error_response(503, str(exc))
        response.headers["Retry-After"] = "5"
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        parts = []
        for e in errors:
            loc = [str(x) for x in e.get("loc", ())]
            where_ = f"{loc[0]} parameter {'.'.join(loc[1:])!r}" if len(loc) > 1 else (loc[0] if loc else "input")
            value = e.get("input")
            shown = f" (got {value!r})" if isinstance(value, (str, int, float)) else ""
            message = str(e.get("msg", "invalid")).removeprefix("Value error, ")
            parts.append(f"{where_}: {message}{shown}")
        safe = jsonable_encoder([{k: v for k, v in e.items() if k != "ctx"} for e in errors])
        return error_response(422, "; ".join(parts) or "invalid request", errors=safe)

    @app.exception_handler(Exception)
    async def crashed(_: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal error ({type(exc).__name__}); see the server log")

    # Always installed: the controls need a token even when reads do not. Added last, the Host
    # check is the outermost layer: a refused Host reaches nothing, authentication included.
    app.add_middleware(BearerAuth, tokens=all_tokens, open_reads=open_reads)
    app.add_middleware(HostCheck, policy=host_policy)
    return app
