"""HTTP API for risk tools: the read-model tables over JSON, with /health and /metrics.

``create_app(url)`` serves the projection tables (``projections/tables.py``) of one database with
plain, read-only SQL: a fresh SQLite connection per request (``query_only``), or a small set of
PostgreSQL connections opened with ``default_transaction_read_only=on``. Each request reads in one
transaction, so what it returns is one consistent snapshot of the tables. The API never folds the
log and never writes: ``tradestate project`` keeps the tables up to date, and ``/health`` says how
far behind the log they are.

Values: decimals are exact strings (``"187.48"``), times ISO-8601 UTC. Bad input (unknown or
repeated query parameters, malformed or naive times, out-of-range limits, unknown statuses) is a
422 with a readable ``detail``; a database that cannot be read is a 503, never a traceback.

``run_server`` binds 127.0.0.1 unless told otherwise, and refuses any other address unless a
bearer token is configured; with a token, every path but ``/health`` needs
``Authorization: Bearer <token>`` (``/health`` then leaves out the per-account details).
"""

import hmac
import ipaddress
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, unquote, urlparse

import orjson
from fastapi import (
    APIRouter,
    FastAPI,
    HTTPException,
    Query,
    Request,
    Response,
    Security,
)
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, BeforeValidator, Field, create_model
from starlette.datastructures import Headers

from ..adapters.store import TRADING_TABLE, open_store, redact, resolve_url, sqlite_path
from ..domain.errors import InvalidInput
from ..domain.ids import order_stream_id
from ..domain.state import OPEN_STATUSES, TERMINAL_STATUSES
from .metrics import MetricsSnapshot, exposition, make_registry
from .projector import PROJECTION
from .tables import OPEN_ORDERS_VIEW, TABLES, TRACKING_TABLE, Dialect

# The statuses the domain knows, in lifecycle order where it has one.
_STATUS_ORDER = ("new", "submitted", "acknowledged", "partially_filled", "filled", "cancelled", "rejected",
                 "expired", "refused")
OrderStatus = Literal[tuple(sorted(OPEN_STATUSES | TERMINAL_STATUSES,  # type: ignore[valid-type]
                                   key=lambda s: (_STATUS_ORDER + (s,)).index(s)))]

MAX_LIMIT = 1000
MAX_EQUITY_LIMIT = 10_000
# The equity curve's time column (its points are filtered and ordered by it)
_EQUITY_TIME = next(c for c, k in TABLES["ts_equity_curve"][0] if k == "time")
PUBLIC_PATHS = frozenset({"/health"})  # reachable without the bearer token (with less detail)
_TEXT = r"^[^\x00-\x1f\x7f]+$"  # ids and symbols: no control characters (NUL breaks PostgreSQL)


# ================================================================================ responses
# The row models follow the tables (``projections/tables.py``): a column added there shows up
# here, typed by its kind. Decimals are strings (exact), times are UTC datetimes.
_KIND_TYPES: dict[str, Any] = {"text": str, "num": str, "int": int, "bool": bool, "time": datetime, "date": str,
                               "json": dict[str, Any]}

_DESCRIPTIONS: dict[str, str] = {
    "account": "Account id",
    "venue": "Venue",
    "symbol": "Symbol",
    "qty": "Quantity",
    "avg_cost": "Average cost of the open quantity (0 when flat)",
    "realized_pnl": "Realised P&L before fees",
    "unrealized_pnl": "Unrealised P&L at the last fill price",
    "fees": "Fees paid",
    "last_price": "Last fill price",
    "updated_at": "Time of the last event that changed the row",
    "last_position": "Log position of the last event that changed the row",
    "stream_id": "The order's stream in the log",
    "client_order_id": "Client order id (the engine's idempotency key)",
    "side": "buy or sell",
    "order_type": "market, limit, stop or stop_limit",
    "limit_price": "Limit price",
    "stop_price": "Stop price",
    "time_in_force": "Time in force",
    "strategy_id": "Strategy that sent the order",
    "status": "Lifecycle status",
    "is_open": "new, submitted, acknowledged or partially filled",
    "filled_qty": "Quantity filled",
    "remaining_qty": "Quantity still to fill",
    "avg_fill_price": "Average fill price",
    "venue_order_id": "The venue's order id",
    "cancel_requested": "A cancel was requested",
    "discrepancies": "Venue facts that contradicted our state (recorded for reconciliation, not applied)",
    "refusal": "Risk checks that refused the intent",
    "created_at": "When the intent was recorded",
    "trading_day": "Trading day, YYYY-MM-DD in the exchange time zone",
    "trades": "Intents that passed the pre-trade check that day",
    "fills": "Fills",
    "volume": "Quantity filled",
    "net_pnl": "Realised P&L net of fees",
    "breaches": "Daily limits breached",
    "kill_switch": "Kill switch engaged",
    "kill_switch_reason": "Why the kill switch was engaged",
    "breaker_tripped": "The recorded breaker flag, whatever breaker_until says (see breaker_active)",
    "breaker_reason": "Why the circuit breaker was tripped",
    "breaker_until": "When a tripped breaker expires (null: until reset)",
    "ramp_pct": "Recovery ramp: numeric limits are scaled to this percentage",
    "open_orders": "Open orders",
    "limit_name": "max_order_qty, max_order_notional, max_position_qty, max_open_orders, max_daily_trades "
                  "or max_daily_loss",
    "configured": "The configured value",
    "effective": "The value in force (after the recovery ramp)",
    "used": "What is used of it (null for per-order limits)",
    "signal": "The signal",
    "value": "The signal's value",
    "attributes": "The signal's attributes",
    "at": "When it happened",
    "minute": "The minute (UTC) this point closes",
    "position": "Log position",
    "equity": "realized_pnl + unrealized_pnl - fees",
}
_TABLE_DESCRIPTIONS: dict[tuple[str, str], str] = {
    ("ts_positions", "qty"): "Signed quantity held; negative is short",
    ("ts_orders", "qty"): "Ordered quantity (after replaces)",
    ("ts_orders", "fees"): "Fees paid on the order's fills",
    ("ts_orders", "updated_at"): "Time of the order's last event",
    ("ts_equity_curve", "fills"): "Fills of the account in this minute",
    ("ts_equity_curve", "last_position"): "Log position of the last fill in this point",
    ("ts_risk_usage", "symbol"): "Per-symbol override (max_position_qty); null: every symbol",
    ("ts_risk_usage", "trading_day"): "Trading day the daily usage refers to",
    ("ts_signals", "at"): "When the signal was recorded",
}
# Columns the projector always fills (the others may be null).
_REQUIRED: dict[str, set[str]] = {
    "ts_positions": {"qty", "avg_cost", "realized_pnl", "unrealized_pnl", "fees", "last_position"},
    "ts_orders": {"client_order_id", "account", "venue", "symbol", "side", "order_type", "qty", "status",
                  "is_open", "filled_qty", "remaining_qty", "fees", "cancel_requested", "discrepancies",
                  "last_position"},
    "ts_daily_stats": {"trades", "fills", "volume", "realized_pnl", "fees", "net_pnl", "breaches",
                       "last_position"},
    "ts_risk_state": {"kill_switch", "breaker_tripped", "open_orders", "discrepancies", "last_position"},
    "ts_risk_usage": {"last_position"},
    "ts_signals": {"signal", "attributes", "last_position"},
    "ts_equity_curve": {"realized_pnl", "unrealized_pnl", "fees", "equity"},
}


def _table_model(name: str, table: str, doc: str, *, drop: tuple[str, ...] = (), nullable: tuple[str, ...] = (),
                 types: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> type[BaseModel]:
    columns, key = TABLES[table]
    required = (set(key) | _REQUIRED.get(table, set())) - set(nullable)
    fields: dict[str, Any] = {}
    for column, kind in columns:
        if column in drop:
            continue
        described = _TABLE_DESCRIPTIONS.get((table, column)) or _DESCRIPTIONS.get(column, column.replace("_", " "))
        typ = (types or {}).get(column, _KIND_TYPES[kind])
        if kind == "num":
            described += " (exact decimal, as a string)"
        elif kind == "time":
            described += " (ISO-8601, UTC)"
        if column in required:
            fields[column] = (typ, Field(description=described))
        else:
            fields[column] = (typ | None, Field(default=None, description=described))
    fields.update(extra or {})
    return create_model(name, __doc__=doc, **fields)


class ErrorBody(BaseModel):
    detail: str = Field(description="What went wrong, for a human")
    errors: list[dict[str, Any]] | None = Field(default=None, description="Each invalid input (422 only)")


PositionOut = _table_model("Position", "ts_positions", "A position per account, venue and symbol (average cost).")
OrderOut = _table_model("Order", "ts_orders", "An order and its lifecycle state.",
                        types={"status": OrderStatus, "refusal": list[str]})
DailyStatsOut = _table_model("DailyStats", "ts_daily_stats",
                             "Trading statistics of an account for one trading day (exchange time zone).",
                             types={"breaches": list[str]})
EquityPointOut = _table_model("EquityPoint", "ts_equity_curve", "The account's P&L after its fills.")
SignalOut = _table_model("Signal", "ts_signals", "The last signal of a strategy for a symbol.")
LimitUsageOut = _table_model("LimitUsage", "ts_risk_usage", "One risk limit of an account and its usage.",
                             drop=("account",), nullable=("symbol",))
RiskOut = _table_model(
    "RiskState", "ts_risk_state", "Risk state of an account: kill switch, circuit breaker, ramp, limit usage.",
    extra={
        "breaker_active": (bool, Field(description="Breaker tripped and not expired "
                                                   "(breaker_until null or in the future)")),
        "limits": (list[LimitUsageOut], Field(description="Each limit: configured, effective and used")),  # type: ignore[valid-type]
    },
)


class AccountHealthOut(BaseModel):
    account: str
    kill_switch: bool
    kill_switch_reason: str | None = None
    breaker_active: bool
    breaker_reason: str | None = None
    breaker_until: datetime | None = None


class HealthOut(BaseModel):
    """How far the read models are behind the log (503 when behind or stalled)."""

    status: Literal["ok", "behind", "stalled"] = Field(
        description="ok; behind: more unprojected events than the threshold; "
                    "stalled: unprojected events older than the seconds threshold")
    log_head: int = Field(description="Last position of the trading log")
    projection_position: int = Field(description="Last log position the tables include")
    lag_events: int = Field(description="log_head - projection_position")
    lag_seconds: float = Field(description="Seconds since the oldest unprojected event was recorded; 0 when caught up")
    last_event_at: datetime | None = Field(default=None, description="When the last event was recorded (UTC)")
    projection_updated_at: datetime | None = Field(default=None, description="When the projector last wrote (UTC)")
    lag_threshold_events: int
    lag_threshold_seconds: float
    accounts: list[AccountHealthOut] | None = Field(
        default=None, description="Kill switch and breaker per account (null without the token when one is configured)")


# ================================================================================= database
class DatabaseUnavailable(Exception):
    """The database could not be read: answered with 503."""


class NotProjected(DatabaseUnavailable):
    pass


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class _Tx:
    def __init__(self, cursor: Any):
        self._cursor = cursor

    def rows(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        self._cursor.execute(sql, params)
        return list(self._cursor.fetchall())

    def one(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> tuple[Any, ...] | None:
        rows = self.rows(sql, params)
        return rows[0] if rows else None


class _SQLiteReader:
    kind = "sqlite"

    def __init__(self, url: str):
        path = Path(sqlite_path(url)).absolute()
        self.uri = path.as_uri() + "?mode=rw"  # never creates the file; PRAGMA query_only stops writes
        self.dialect = Dialect("sqlite")

    @contextmanager
    def read(self) -> Iterator[_Tx]:
        try:
            conn = sqlite3.connect(self.uri, uri=True, timeout=5, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise DatabaseUnavailable(f"cannot open the SQLite database: {_first_line(e)}") from None
        try:
            conn.execute("PRAGMA query_only = 1")
            conn.execute("BEGIN")  # one snapshot for the whole request (WAL)
            yield _Tx(conn.cursor())
        except sqlite3.Error as e:
            if "no such table" in str(e):
                raise NotProjected(_NOT_PROJECTED) from None
            raise DatabaseUnavailable(f"SQLite error: {_first_line(e)}") from None
        finally:
            conn.close()  # rolls the read transaction back

    def exists(self, tx: _Tx, name: str) -> bool:
        return tx.one("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)) is not None

    def close(self) -> None:
        pass


class _PostgresReader:
    """A few read-only connections, opened on demand and kept for reuse."""

    kind = "postgresql"

    def __init__(self, url: str, *, max_connections: int = 8, max_idle: int = 4):
        import psycopg

        self._psycopg = psycopg
        # The URL means what it means to the log (TradestatePostgresDatastore): same defaults.
        parsed = urlparse(url)
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        self.schema = query.pop("schema", "public")
        statement_ms = int(float(query.pop("statement_timeout", "30")) * 1000)
        self.params: dict[str, Any] = {
            "dbname": unquote(parsed.path.lstrip("/")) or "postgres",
            "host": parsed.hostname or "127.0.0.1",
            "port": parsed.port or 5432,
            "user": unquote(parsed.username or "postgres"),
            "connect_timeout": max(1, int(float(query.pop("connect_timeout", "5")))),
            "application_name": "tradestate-api",
            "options": f"-c default_transaction_read_only=on -c statement_timeout={statement_ms} -c TimeZone=UTC",
        }
        if parsed.password:
            self.params["password"] = unquote(parsed.password)
        self.where = f"{self.params['host']}:{self.params['port']}/{self.params['dbname']}"
        self.dialect = Dialect("postgresql", self.schema)
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._max_idle = max_idle
        self._closed = False

    def _connect(self) -> Any:
        psycopg = self._psycopg
        try:
            conn = psycopg.connect(**self.params)
        except psycopg.Error as e:
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL at {self.where}: {_first_line(e)}") from None
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ  # one snapshot per request
        return conn

    def _checkout(self) -> tuple[Any, bool]:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed and not conn.broken:
                    return conn, True
        return self._connect(), False

    def _release(self, conn: Any) -> None:
        """End the read transaction and keep the connection for the next request, if it is sound."""
        if conn.closed or conn.broken:
            conn.close()
            return
        try:
            conn.rollback()  # read-only: nothing to keep
        except self._psycopg.Error:
            conn.close()
            return
        self._checkin(conn)

    def _checkin(self, conn: Any) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle and not conn.closed and not conn.broken:
                self._idle.append(conn)
                return
        conn.close()

    @contextmanager
    def read(self) -> Iterator[_Tx]:
        psycopg = self._psycopg
        if not self._slots.acquire(timeout=5):
            raise DatabaseUnavailable("too many concurrent requests on the database; retry")
        try:
            conn, reused = self._checkout()
            try:
                try:
                    conn.execute("SELECT 1")  # opens the transaction; proves a reused connection alive
                except psycopg.OperationalError:
                    if not reused:
                        raise
                    conn.close()  # the server went away meanwhile: one fresh try
                    conn = self._connect()
                    conn.execute("SELECT 1")
                yield _Tx(conn.cursor())
            except psycopg.Error as e:
                conn.close()
                if isinstance(e, (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)):
                    raise NotProjected(_NOT_PROJECTED) from None
                raise DatabaseUnavailable(f"PostgreSQL error: {_first_line(e)}") from None
            except BaseException:
                self._release(conn)  # not the database's fault (e.g. a 404 raised in the block)
                raise
            else:
                self._release(conn)
        finally:
            self._slots.release()

    def exists(self, tx: _Tx, name: str) -> bool:
        row = tx.one("SELECT to_regclass(%s) IS NOT NULL", (self.dialect.name(name),))
        return bool(row and row[0])

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


_NOT_PROJECTED = ("the read-model tables are not in this database yet: run `tradestate project --db URL` "
                  "against it first")


def _reader(url: str) -> _SQLiteReader | _PostgresReader:
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        return _SQLiteReader(url)
    if scheme in ("postgresql", "postgres"):
        return _PostgresReader(url)
    raise InvalidInput(f"unsupported database URL {redact(url)!r}: use sqlite:///path or postgresql://...")


# ============================================================================ row decoding
def _num(value: Any) -> str | None:
    if value is None:
        return None
    d = value if isinstance(value, Decimal) else Decimal(str(value))
    return format(d, "f")  # the same text on both backends (no exponents)


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    t = datetime.fromisoformat(value) if isinstance(value, str) else value
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.astimezone(timezone.utc)


def _json(value: Any) -> Any:
    if value is None:
        return {}
    if isinstance(value, (str, bytes)):
        return orjson.loads(value)
    return value


_DECODE: dict[str, Callable[[Any], Any]] = {
    "text": lambda v: v,
    "num": _num,
    "int": lambda v: None if v is None else int(v),
    "bool": lambda v: None if v is None else bool(v),
    "time": _time,
    "date": lambda v: None if v is None else (v.isoformat() if isinstance(v, date) else v),
    "json": _json,
}


def _columns(table: str) -> list[tuple[str, str]]:
    return TABLES[table][0]


def _decode(table: str, row: tuple[Any, ...]) -> dict[str, Any]:
    return {name: _DECODE[kind](value) for (name, kind), value in zip(_columns(table), row)}


# ================================================================================ the app
@dataclass
class _Settings:
    url: str
    token: str | None
    lag_threshold_events: int
    lag_threshold_seconds: float


class _StrictRoute(APIRoute):
    """Rejects query parameters the route does not declare, and declared ones given twice
    (FastAPI would silently ignore the first or take the last)."""

    def get_route_handler(self) -> Callable[[Request], Any]:
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
                return _error(422, f"unknown query parameter(s): {', '.join(unknown)} (this endpoint takes: {known})")
            repeated = sorted(k for k in set(params.keys()) if len(params.getlist(k)) > 1)
            if repeated:
                return _error(422, f"query parameter(s) given more than once: {', '.join(repeated)}")
            return await handler(request)

        return strict


def _error(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail, **extra})


def _authorized(headers: Headers, token: str | None) -> bool:
    if token is None:
        return True
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


class _BearerAuth:
    """Every path but /health needs the token (also /docs, /openapi.json and unknown paths)."""

    def __init__(self, app: Any, token: str):
        self.app = app
        self.token = token

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") not in PUBLIC_PATHS:
            if not _authorized(Headers(scope=scope), self.token):
                response = _error(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token (when one is configured)"},
    422: {"model": ErrorBody, "description": "Invalid or unknown query parameters"},
    503: {"model": ErrorBody, "description": "The database cannot be read (or the tables are not built yet)"},
}

Account = Annotated[str | None, Query(description="Account id", min_length=1, max_length=64, pattern=_TEXT)]
Symbol = Annotated[str | None, Query(description="Symbol", min_length=1, max_length=32, pattern=_TEXT)]


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


IsoTime = Annotated[datetime, BeforeValidator(_iso_time)]
Since = Annotated[IsoTime | None, Query(description="From this time, inclusive (ISO-8601 with a time zone)")]
Until = Annotated[IsoTime | None, Query(description="Before this time, exclusive (ISO-8601 with a time zone)")]


def create_app(
    url: str | None,
    *,
    token: str | None = None,
    lag_threshold_events: int = 1000,
    lag_threshold_seconds: float = 5.0,
) -> FastAPI:
    """The API over the read models of the database at ``url`` (``$TRADESTATE_DB`` or the default
    when None). Nothing is read until the first request: a database that is not reachable yet is
    a 503, not a failure to start."""
    url = resolve_url(url)
    if lag_threshold_events < 0 or lag_threshold_seconds <= 0:
        raise InvalidInput("lag thresholds: events must be >= 0 and seconds > 0")
    token = token or None
    settings = _Settings(url, token, lag_threshold_events, lag_threshold_seconds)
    db = _reader(url)
    d = db.dialect
    p = d.param

    def select(table: str, source: str | None = None) -> str:
        return f"SELECT {', '.join(c for c, _ in _columns(table))} FROM {d.name(source or table)}"

    def when(t: datetime) -> Any:
        return t.astimezone(timezone.utc).isoformat() if db.kind == "sqlite" else t

    def where(filters: list[tuple[str, Any]]) -> tuple[str, list[Any]]:
        present = [(clause, value) for clause, value in filters if value is not None]
        if not present:
            return "", []
        return " WHERE " + " AND ".join(c for c, _ in present), [v for _, v in present]

    def check_range(since: datetime | None, until: datetime | None) -> None:
        if since is not None and until is not None and since > until:
            raise HTTPException(422, "since is after until")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            db.close()

    from .. import __version__

    app = FastAPI(
        title="tradestate read models",
        version=__version__,
        description=(
            "Positions, orders, risk state, daily statistics, equity curve and signals of a tradestate "
            "log, read from the SQL read models kept by `tradestate project`. Decimals are exact "
            "strings; times are ISO-8601 UTC. Unknown query parameters are rejected (422). "
            "`/health` reports the projection lag (503 when behind or stalled); `/metrics` is Prometheus."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings

    dependencies = []
    if token is not None:
        # Enforced by the middleware below; declared here so the OpenAPI schema says so.
        bearer = HTTPBearer(auto_error=False, description="The token given to `tradestate serve --token`")

        def bearer_documented(_: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]) -> None:
            return None

        dependencies.append(Security(bearer_documented))
    api = APIRouter(route_class=_StrictRoute, responses=_ERRORS, dependencies=dependencies)
    public = APIRouter(route_class=_StrictRoute, responses={k: v for k, v in _ERRORS.items() if k != 401})

    # ------------------------------------------------------------------------ positions
    @api.get("/positions", response_model=list[PositionOut], tags=["positions"],
             summary="Positions by account, venue and symbol")
    def positions(account: Account = None, symbol: Symbol = None) -> list[dict[str, Any]]:
        clause, params = where([(f"account = {p}", account), (f"symbol = {p}", symbol)])
        with db.read() as tx:
            rows = tx.rows(select("ts_positions") + clause + " ORDER BY account, venue, symbol", params)
        return [_decode("ts_positions", r) for r in rows]

    # --------------------------------------------------------------------------- orders
    def order_out(row: tuple[Any, ...]) -> dict[str, Any]:
        out = _decode("ts_orders", row)
        out["refusal"] = out["refusal"].split(",") if out["refusal"] else None
        return out

    @api.get("/orders", response_model=list[OrderOut], tags=["orders"],
             summary="Orders, most recently updated first")
    def orders(
        status: Annotated[OrderStatus | None, Query(description="Only orders in this status")] = None,
        symbol: Symbol = None,
        account: Account = None,
        since: Since = None,
        until: Until = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"At most this many orders (1-{MAX_LIMIT})")] = 100,
    ) -> list[dict[str, Any]]:
        check_range(since, until)
        clause, params = where([
            (f"status = {p}", status), (f"symbol = {p}", symbol), (f"account = {p}", account),
            (f"updated_at >= {p}", when(since) if since else None),
            (f"updated_at < {p}", when(until) if until else None),
        ])
        sql = select("ts_orders") + clause + f" ORDER BY updated_at DESC, last_position DESC LIMIT {p}"
        with db.read() as tx:
            rows = tx.rows(sql, [*params, limit])
        return [order_out(r) for r in rows]

    @api.get("/orders/open", response_model=list[OrderOut], tags=["orders"],
             summary="Open orders (new, submitted, acknowledged, partially filled), oldest first")
    def open_orders(account: Account = None) -> list[dict[str, Any]]:
        clause, params = where([(f"account = {p}", account)])
        sql = select("ts_orders", OPEN_ORDERS_VIEW) + clause + " ORDER BY created_at, last_position"
        with db.read() as tx:
            rows = tx.rows(sql, params)
        return [order_out(r) for r in rows]

    @api.get("/orders/{account}/{client_order_id:path}", response_model=OrderOut, tags=["orders"],
             summary="One order by account and client order id",
             responses={404: {"model": ErrorBody, "description": "No such order in the read model"}})
    def order(
        account: Annotated[str, PathParam(description="Account id", max_length=64, pattern=_TEXT)],
        client_order_id: Annotated[str, PathParam(description="Client order id", max_length=64, pattern=_TEXT)],
    ) -> dict[str, Any]:
        sql = select("ts_orders") + f" WHERE stream_id = {p} AND account = {p} AND client_order_id = {p}"
        with db.read() as tx:
            row = tx.one(sql, (order_stream_id(account, client_order_id), account, client_order_id))
        if row is None:
            raise HTTPException(404, f"unknown order: account={account!r} client_order_id={client_order_id!r}")
        return order_out(row)

    # ----------------------------------------------------------------------------- risk
    def risk_rows(account: str | None) -> list[dict[str, Any]]:
        clause, params = where([(f"account = {p}", account)])
        with db.read() as tx:
            states = tx.rows(select("ts_risk_state") + clause + " ORDER BY account", params)
            usage = tx.rows(select("ts_risk_usage") + clause + " ORDER BY account, limit_name, symbol", params)
        limits: dict[str, list[dict[str, Any]]] = {}
        for row in usage:
            u = _decode("ts_risk_usage", row)
            u["symbol"] = u.get("symbol") or None  # '' in the table's key stands for every symbol
            limits.setdefault(u.pop("account"), []).append(u)
        now = datetime.now(timezone.utc)
        out = []
        for row in states:
            r = _decode("ts_risk_state", row)
            r["breaker_tripped"] = bool(r["breaker_tripped"])
            r["kill_switch"] = bool(r["kill_switch"])
            r["breaker_active"] = r["breaker_tripped"] and (r["breaker_until"] is None or r["breaker_until"] > now)
            r["limits"] = limits.get(r["account"], [])
            out.append(r)
        return out

    @api.get("/risk", response_model=list[RiskOut], tags=["risk"], summary="Risk state of every account")
    def risk() -> list[dict[str, Any]]:
        return risk_rows(None)

    @api.get("/risk/{account:path}", response_model=RiskOut, tags=["risk"], summary="Risk state of one account",
             responses={404: {"model": ErrorBody, "description": "No risk state for this account"}})
    def risk_of(account: Annotated[str, PathParam(description="Account id", max_length=64, pattern=_TEXT)]) -> dict[str, Any]:
        rows = risk_rows(account)
        if not rows:
            raise HTTPException(404, f"no risk state for account {account!r}")
        return rows[0]

    # --------------------------------------------------------------------- daily, equity
    @api.get("/stats/daily", response_model=list[DailyStatsOut], tags=["statistics"],
             summary="Daily trading statistics per account and trading day")
    def daily_stats(
        account: Account = None,
        day: Annotated[date | None, Query(description="Trading day, YYYY-MM-DD (exchange time zone)")] = None,
    ) -> list[dict[str, Any]]:
        clause, params = where([(f"account = {p}", account),
                                (f"trading_day = {p}", day.isoformat() if day else None)])
        with db.read() as tx:
            rows = tx.rows(select("ts_daily_stats") + clause + " ORDER BY account, trading_day", params)
        out = []
        for row in rows:
            r = _decode("ts_daily_stats", row)
            r["breaches"] = [b for b in (r["breaches"] or "").split(",") if b]
            out.append(r)
        return out

    @api.get("/equity", response_model=list[EquityPointOut], tags=["statistics"],
             summary="Equity curve of each account, oldest first (the most recent `limit` points)")
    def equity(
        account: Account = None,
        since: Since = None,
        until: Until = None,
        limit: Annotated[int, Query(ge=1, le=MAX_EQUITY_LIMIT,
                                    description=f"At most this many points, the latest (1-{MAX_EQUITY_LIMIT})")] = 1000,
    ) -> list[dict[str, Any]]:
        check_range(since, until)
        clause, params = where([
            (f"account = {p}", account),
            (f"{_EQUITY_TIME} >= {p}", when(since) if since else None),
            (f"{_EQUITY_TIME} < {p}", when(until) if until else None),
        ])
        sql = select("ts_equity_curve") + clause + f" ORDER BY {_EQUITY_TIME} DESC, account DESC LIMIT {p}"
        with db.read() as tx:
            rows = tx.rows(sql, [*params, limit])
        return [_decode("ts_equity_curve", r) for r in reversed(rows)]

    # -------------------------------------------------------------------------- signals
    @api.get("/signals", response_model=list[SignalOut], tags=["signals"],
             summary="The last signal per strategy and symbol")
    def signals(
        strategy_id: Annotated[str | None, Query(description="Strategy id", min_length=1, max_length=64,
                                                 pattern=_TEXT)] = None,
        symbol: Symbol = None,
    ) -> list[dict[str, Any]]:
        clause, params = where([(f"strategy_id = {p}", strategy_id), (f"symbol = {p}", symbol)])
        with db.read() as tx:
            rows = tx.rows(select("ts_signals") + clause + " ORDER BY strategy_id, symbol", params)
        return [_decode("ts_signals", r) for r in rows]

    # ------------------------------------------------------------------ health, metrics
    def lag_snapshot(with_orders: bool) -> dict[str, Any]:
        events = d.name(TRADING_TABLE)
        with db.read() as tx:
            if not db.exists(tx, TRADING_TABLE):
                raise DatabaseUnavailable("no tradestate log in this database (nothing was ever recorded)")
            head = tx.one(f"SELECT coalesce(max(position), 0) FROM {events}")[0]  # type: ignore[index]
            last = tx.one(f"SELECT recorded_at FROM {events} WHERE position = {p}", (head,)) if head else None
            tracked, projected_at, accounts, by_status = 0, None, [], {}
            if db.exists(tx, TRACKING_TABLE):
                row = tx.one(f"SELECT position, updated_at FROM {d.name(TRACKING_TABLE)} WHERE projection = {p}",
                             (PROJECTION,))
                if row:
                    tracked, projected_at = row[0], _time(row[1])
            oldest = None
            if head > tracked:
                row = tx.one(f"SELECT recorded_at FROM {events} WHERE position > {p} ORDER BY position LIMIT 1",
                             (tracked,))
                oldest = _time(row[0]) if row else None
            if db.exists(tx, "ts_risk_state"):
                accounts = [_decode("ts_risk_state", r)
                            for r in tx.rows(select("ts_risk_state") + " ORDER BY account")]
            if with_orders and db.exists(tx, "ts_orders"):
                by_status = {s: int(n) for s, n in
                             tx.rows(f"SELECT status, count(*) FROM {d.name('ts_orders')} GROUP BY status")}
        now = datetime.now(timezone.utc)
        lag_events = max(0, head - tracked)
        lag_seconds = max(0.0, (now - oldest).total_seconds()) if (lag_events and oldest) else 0.0
        for a in accounts:
            a["breaker_active"] = bool(a["breaker_tripped"]) and (a["breaker_until"] is None or a["breaker_until"] > now)
            a["kill_switch"] = bool(a["kill_switch"])
        return {
            "log_head": head, "projection_position": tracked, "lag_events": lag_events,
            "lag_seconds": lag_seconds, "last_event_at": _time(last[0]) if last else None,
            "projection_updated_at": projected_at, "accounts": accounts, "orders_by_status": by_status,
        }

    @public.get("/health", response_model=HealthOut, tags=["operations"],
                summary="Projection lag and per-account breaker and kill-switch state",
                responses={503: {"model": HealthOut | ErrorBody,
                                 "description": "Behind or stalled (a HealthOut), or the database cannot be read"}})
    def health(request: Request, response: Response) -> dict[str, Any]:
        snap = lag_snapshot(False)
        stalled = snap["lag_events"] > 0 and snap["lag_seconds"] > settings.lag_threshold_seconds
        behind = snap["lag_events"] > settings.lag_threshold_events
        snap["status"] = "stalled" if stalled else "behind" if behind else "ok"
        if stalled or behind:
            response.status_code = 503
        snap["lag_threshold_events"] = settings.lag_threshold_events
        snap["lag_threshold_seconds"] = settings.lag_threshold_seconds
        if not _authorized(request.headers, settings.token):
            snap["accounts"] = None
        del snap["orders_by_status"]
        return snap

    def metrics_snapshot() -> MetricsSnapshot:
        snap = lag_snapshot(True)
        return MetricsSnapshot(
            log_head=snap["log_head"], projection_position=snap["projection_position"],
            lag_events=snap["lag_events"], lag_seconds=snap["lag_seconds"],
            orders_by_status=snap["orders_by_status"],
            kill_switch={a["account"]: a["kill_switch"] for a in snap["accounts"]},
            breaker_active={a["account"]: a["breaker_active"] for a in snap["accounts"]},
        )

    registry = make_registry(metrics_snapshot)

    @api.get("/metrics", tags=["operations"], response_class=Response,
             summary="Prometheus metrics: projection lag, orders by status, refusals, breakers; "
                     "plus the process's default registry",
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
    def metrics() -> Response:
        return Response(exposition(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(api)
    app.include_router(public)

    # ------------------------------------------------------------------------- errors
    @app.exception_handler(DatabaseUnavailable)
    async def unavailable(_: Request, exc: DatabaseUnavailable) -> JSONResponse:
        response = _error(503, str(exc))
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
        return _error(422, "; ".join(parts) or "invalid request", errors=safe)

    @app.exception_handler(Exception)
    async def crashed(_: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    if token is not None:
        app.add_middleware(_BearerAuth, token=token)
    return app


# ============================================================================= the server
def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another name, "" or "*": may mean any interface


def run_server(
    db: str | None,
    host: str = "127.0.0.1",
    port: int = 8321,
    token: str | None = None,
    *,
    lag_threshold_events: int = 1000,
    lag_threshold_seconds: float = 5.0,
    log_level: str = "info",
) -> int:
    """Serve the API with uvicorn until interrupted; returns the process exit code.

    Refuses (2, nothing bound) a non-loopback address without a token. Raises the store's
    ``TradestateError`` when there is no log at ``db``."""
    token = token or None
    if not is_loopback(host) and token is None:
        print(f"error: refusing to serve on {host!r} without a bearer token: anyone who can reach it could read "
              "every position and order. Bind 127.0.0.1, or set --token / $TRADESTATE_API_TOKEN.", file=sys.stderr)
        return 2
    if not 0 <= port <= 65535:
        print(f"error: port {port} is not a TCP port (0-65535)", file=sys.stderr)
        return 2
    url = resolve_url(db)
    open_store(url, create=False).close()  # a clear error when there is no log, before binding anything
    app = create_app(url, token=token, lag_threshold_events=lag_threshold_events,
                     lag_threshold_seconds=lag_threshold_seconds)
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           server_header=False, proxy_headers=False))
    try:
        server.run()
    except SystemExit as e:  # uvicorn exits when it cannot bind or start
        print(f"error: the server could not start on {host}:{port} (see the log above)", file=sys.stderr)
        return e.code if isinstance(e.code, int) and e.code else 1
    except KeyboardInterrupt:
        return 0
    return 0 if server.started else 1


@contextmanager
def background_server(url: str, **options: Any) -> Iterator[str]:
    """Serve the API for ``url`` on a free 127.0.0.1 port in a background thread; yields its base
    URL and stops the server on exit (the demo and the tests use it)."""
    import socket
    import threading
    import time

    import uvicorn

    app = create_app(url, **options)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Handed a socket, uvicorn leaves Nagle on: without this, each keep-alive request waits 40 ms
    # for a delayed ACK (accepted sockets inherit the option on Linux).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the API server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
