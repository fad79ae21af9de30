"""Read-only SQL over the read-model tables: the readers, the row decoding and one function per query.

Both read paths use this module: the HTTP API (``projections/http``) and the Python
``ReadModel`` (``projections/reader.py``). It imports no web framework.

A reader (``open_reader(url)``) hands out read transactions: ``with reader.read() as tx:`` gives
a ``Tx`` whose queries all see one consistent snapshot of the tables (a SQLite read transaction
on a fresh ``query_only`` connection; a PostgreSQL ``REPEATABLE READ`` transaction on a pooled
connection opened with ``default_transaction_read_only=on``). Nothing here writes.

Database failures surface as ``DatabaseUnavailable`` (``NotProjected`` when the read-model tables
were never built), with a one-line message; never a driver exception.

Decoded rows follow ``projections/tables.py``: decimals are exact strings (``"187.48"``), times
aware UTC ``datetime``, booleans ``bool``, JSON columns parsed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import orjson

from ..adapters.store import TRADING_TABLE, sqlite_path
from ..adapters.store.sql import POSTGRESQL, SQLITE, url_kind
from ..domain.events import DRILL_STREAM
from ..domain.ids import order_stream_id
from .projector import PROJECTION
from .tables import OPEN_ORDERS_VIEW, TABLES, TRACKING_TABLE, Dialect

# The equity curve's time column (its points are filtered and ordered by it)
EQUITY_TIME = next(c for c, k in TABLES["ts_equity_curve"][0] if k == "time")

NOT_PROJECTED = ("the read-model tables are not in this database yet: run `tradestate project --db URL` "
                 "against it first")


# ================================================================================= errors
class DatabaseUnavailable(Exception):
    """The database could not be read (unreachable, not a database, a failed query). The
    message is one line, fit to show a user; the HTTP API answers it with 503."""


class NotProjected(DatabaseUnavailable):
    """The database holds no read-model tables yet (``tradestate project`` never ran on it)."""


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ============================================================================ transactions
class Tx:
    """One read transaction: ``rows``/``one`` run SQL in the reader's dialect (parameters with
    ``dialect.param``); every query in it sees the same snapshot."""

    def __init__(self, cursor: Any, reader: Reader):
        self._cursor = cursor
        self.reader = reader
        self.dialect: Dialect = reader.dialect

    def rows(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row ``sql`` returns, as tuples."""
        self._cursor.execute(sql, params)
        return list(self._cursor.fetchall())

    def one(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> tuple[Any, ...] | None:
        """The first row ``sql`` returns, or None."""
        rows = self.rows(sql, params)
        return rows[0] if rows else None

    def exists(self, name: str) -> bool:
        """Whether a table or view of that (unqualified) name exists."""
        return self.reader.exists(self, name)

    def when(self, t: datetime) -> Any:
        """A query parameter for a time column (ISO-8601 text on SQLite)."""
        return t.astimezone(timezone.utc).isoformat() if self.dialect.kind == SQLITE else t


class Reader(Protocol):
    """What the query functions need of a database: its dialect and read transactions."""

    kind: str
    dialect: Dialect

    def read(self) -> Any:
        """A context manager yielding a ``Tx``: one read-only transaction, one snapshot. Raises
        ``NotProjected`` when the read-model tables are missing and ``DatabaseUnavailable`` when the
        database cannot be read."""

    def exists(self, tx: Tx, name: str) -> bool:
        """Whether a table or view named ``name`` exists, as seen by ``tx``."""

    def close(self) -> None:
        """Release the reader's connections; ``read`` fails afterwards."""


class SQLiteReader:
    """A fresh read-only connection per transaction (``PRAGMA query_only``); never creates the file."""

    kind = SQLITE

    def __init__(self, url: str):
        path = Path(sqlite_path(url)).absolute()
        self.uri = path.as_uri() + "?mode=rw"  # never creates the file; PRAGMA query_only stops writes
        self.dialect = Dialect(SQLITE)

    @contextmanager
    def read(self) -> Iterator[Tx]:
        """One read-only transaction on a new connection (one WAL snapshot), closed on exit. Raises
        ``NotProjected`` for missing tables and ``DatabaseUnavailable`` for any other SQLite error."""
        try:
            conn = sqlite3.connect(self.uri, uri=True, timeout=5, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise DatabaseUnavailable(f"cannot open the SQLite database: {_first_line(e)}") from None
        try:
            conn.execute("PRAGMA query_only = 1")
            conn.execute("BEGIN")  # one snapshot for the whole transaction (WAL)
            yield Tx(conn.cursor(), self)
        except sqlite3.Error as e:
            if "no such table" in str(e):
                raise NotProjected(NOT_PROJECTED) from None
            raise DatabaseUnavailable(f"SQLite error: {_first_line(e)}") from None
        finally:
            conn.close()  # rolls the read transaction back

    def exists(self, tx: Tx, name: str) -> bool:
        """Whether a table or view named ``name`` is in the file."""
        return tx.one("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)) is not None

    def close(self) -> None:
        """Nothing to release: every transaction has its own connection."""
        pass


def postgres_connect_args(url: str) -> tuple[dict[str, Any], str, str]:
    """psycopg connection keyword arguments, the schema and a printable ``host:port/db`` for a
    ``postgresql://`` URL, parsed by the store's one URL parser (every libpq parameter of the URL
    kept); sessions are read-only, in UTC, named ``tradestate-api`` unless the URL names them."""
    from ..adapters.store.sql import PgUrl

    pg = PgUrl.parse(url)
    statement_ms = int(pg.statement_timeout * 1000)
    params = pg.kwargs(options=f"-c default_transaction_read_only=on -c statement_timeout={statement_ms} "
                               "-c TimeZone=UTC")
    if "application_name" not in urlparse(url).query:
        params["application_name"] = "tradestate-api"
    return params, pg.schema, pg.where


class PostgresReader:
    """Read transactions on a ``psycopg_pool.ConnectionPool`` of read-only connections.

    At most ``max_connections`` are open; a transaction waits up to the URL's ``connect_timeout``
    for one, then raises ``DatabaseUnavailable`` naming the cause (found by one direct connection
    attempt, itself bounded by ``connect_timeout``). Each connection is checked on checkout: a dead
    one is replaced, never handed out. Tables are named with the URL's schema (``?schema=``)."""

    kind = POSTGRESQL

    def __init__(self, url: str, *, max_connections: int = 8, max_idle_seconds: float = 60.0):
        import psycopg
        from psycopg_pool import ConnectionPool

        self._psycopg = psycopg
        self.params, self.schema, self.where = postgres_connect_args(url)
        self.dialect = Dialect(POSTGRESQL, self.schema)
        self._wait = float(self.params["connect_timeout"])
        self._pool = ConnectionPool(
            kwargs=self.params, min_size=0, max_size=max_connections, max_idle=max_idle_seconds,
            timeout=self._wait, check=ConnectionPool.check_connection, configure=self._configure,
            name="tradestate-api", open=True,
        )

    def _configure(self, conn: Any) -> None:
        conn.read_only = True
        conn.isolation_level = self._psycopg.IsolationLevel.REPEATABLE_READ  # one snapshot per transaction

    def _unavailable(self) -> DatabaseUnavailable:
        """Why no connection came from the pool: the server's own refusal when a direct attempt
        fails too, otherwise every connection was busy."""
        try:
            self._psycopg.connect(**self.params).close()
        except self._psycopg.Error as e:
            return DatabaseUnavailable(f"cannot connect to PostgreSQL at {self.where}: {_first_line(e)}")
        return DatabaseUnavailable("too many concurrent requests on the database; retry")

    @contextmanager
    def read(self) -> Iterator[Tx]:
        """One read-only transaction on a pooled connection, ended on exit. Raises ``NotProjected`` for
        missing tables or schema, ``DatabaseUnavailable`` when no connection comes within the wait,
        the reader is closed, or PostgreSQL fails."""
        from psycopg_pool import PoolClosed, PoolTimeout

        psycopg = self._psycopg
        try:
            # On leaving, the pool ends the transaction (commit of a read-only one, or rollback)
            # and discards a broken connection.
            with self._pool.connection(timeout=self._wait) as conn:
                yield Tx(conn.cursor(), self)
        except PoolTimeout:  # (a psycopg.OperationalError too)
            raise self._unavailable() from None
        except PoolClosed:
            raise DatabaseUnavailable("the reader is closed") from None
        except psycopg.Error as e:
            if isinstance(e, (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName)):
                raise NotProjected(NOT_PROJECTED) from None
            raise DatabaseUnavailable(f"PostgreSQL error: {_first_line(e)}") from None

    def exists(self, tx: Tx, name: str) -> bool:
        """Whether a table or view named ``name`` is in the reader's schema."""
        row = tx.one("SELECT to_regclass(%s) IS NOT NULL", (self.dialect.name(name),))
        return bool(row and row[0])

    def close(self) -> None:
        """Close the connection pool; ``read`` raises ``DatabaseUnavailable`` afterwards."""
        self._pool.close()


def open_reader(url: str) -> SQLiteReader | PostgresReader:
    """A reader for a ``sqlite:///`` or ``postgresql://`` URL; nothing is read until ``read()``.
    Raises ``InvalidInput`` for another scheme."""
    return SQLiteReader(url) if url_kind(url) == SQLITE else PostgresReader(url)


# ============================================================================ row decoding
def _num(value: Any) -> str | None:
    """Exact decimal text without exponent. Text (SQLite TEXT columns) and ``Decimal``
    (PostgreSQL numeric) keep their value; ``int``/``float`` (SQLite NUMERIC affinity) become the
    shortest text that reads back as the same number (92.4 -> "92.4")."""
    if value is None:
        return None
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, float):
        d = Decimal(repr(value))  # repr: the shortest round-trip text, not the binary expansion
    else:
        d = Decimal(str(value))
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


# ================================================================================= queries
def select(tx: Tx, table: str, source: str | None = None) -> str:
    """``SELECT <the table's columns> FROM <source or table>`` (qualified for the dialect)."""
    return f"SELECT {', '.join(c for c, _ in _columns(table))} FROM {tx.dialect.name(source or table)}"


def where(filters: list[tuple[str, Any]]) -> tuple[str, list[Any]]:
    """`` WHERE`` of the clauses whose value is not None, and their parameters."""
    present = [(clause, value) for clause, value in filters if value is not None]
    if not present:
        return "", []
    return " WHERE " + " AND ".join(c for c, _ in present), [v for _, v in present]


def table_rows(tx: Tx, table: str, equal: dict[str, Any], order: str, source: str | None = None
               ) -> list[tuple[Any, ...]]:
    """Raw rows of ``table`` (read from ``source``, e.g. a view) whose columns equal ``equal``."""
    p = tx.dialect.param
    clause, params = where([(f"{c} = {p}", v) for c, v in equal.items()])
    return tx.rows(select(tx, table, source) + clause + f" ORDER BY {order}", params)


@dataclass(frozen=True)
class Freshness:
    """Where the tables stand: they include the log up to ``projection_position``; the log's last
    position is ``log_head`` (0 for an empty or missing log)."""

    projection_position: int
    log_head: int

    @property
    def behind(self) -> bool:
        """True when the log holds events the tables do not include yet."""
        return self.log_head > self.projection_position


def projection_position(tx: Tx) -> int:
    """The last log position the tables include (0 before the first projection)."""
    if not tx.exists(TRACKING_TABLE):
        return 0
    row = tx.one(f"SELECT position FROM {tx.dialect.name(TRACKING_TABLE)} WHERE projection = {tx.dialect.param}",
                 (PROJECTION,))
    return int(row[0]) if row else 0


def log_head(tx: Tx) -> int:
    """The trading log's last position (0 when it is empty or absent)."""
    if not tx.exists(TRADING_TABLE):
        return 0
    row = tx.one(f"SELECT coalesce(max(position), 0) FROM {tx.dialect.name(TRADING_TABLE)}")
    return int(row[0]) if row else 0


def freshness(tx: Tx) -> Freshness:
    """The tables' projection position and the log's head, both read in ``tx``."""
    return Freshness(projection_position(tx), log_head(tx))


def positions(tx: Tx, *, account: str | None = None, symbol: str | None = None) -> list[dict[str, Any]]:
    """Position rows ordered by account, venue, symbol; ``account``/``symbol`` filter by equality."""
    p = tx.dialect.param
    clause, params = where([(f"account = {p}", account), (f"symbol = {p}", symbol)])
    rows = tx.rows(select(tx, "ts_positions") + clause + " ORDER BY account, venue, symbol", params)
    return [_decode("ts_positions", r) for r in rows]


def _order_out(row: tuple[Any, ...]) -> dict[str, Any]:
    out = _decode("ts_orders", row)
    out["refusal"] = out["refusal"].split(",") if out["refusal"] else None
    return out


def orders(tx: Tx, *, status: str | None = None, symbol: str | None = None, account: str | None = None,
           since: datetime | None = None, until: datetime | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Orders updated in [since, until), most recently updated first, at most ``limit``."""
    p = tx.dialect.param
    clause, params = where([
        (f"status = {p}", status), (f"symbol = {p}", symbol), (f"account = {p}", account),
        (f"updated_at >= {p}", tx.when(since) if since else None),
        (f"updated_at < {p}", tx.when(until) if until else None),
    ])
    sql = select(tx, "ts_orders") + clause + f" ORDER BY updated_at DESC, last_position DESC LIMIT {p}"
    return [_order_out(r) for r in tx.rows(sql, [*params, limit])]


def open_orders(tx: Tx, *, account: str | None = None) -> list[dict[str, Any]]:
    """Open orders (new, submitted, acknowledged, partially filled), oldest first."""
    clause, params = where([(f"account = {tx.dialect.param}", account)])
    sql = select(tx, "ts_orders", OPEN_ORDERS_VIEW) + clause + " ORDER BY created_at, last_position"
    return [_order_out(r) for r in tx.rows(sql, params)]


def order(tx: Tx, account: str, client_order_id: str) -> dict[str, Any] | None:
    """One order, or None when the tables do not hold it."""
    p = tx.dialect.param
    sql = select(tx, "ts_orders") + f" WHERE stream_id = {p} AND account = {p} AND client_order_id = {p}"
    row = tx.one(sql, (order_stream_id(account, client_order_id), account, client_order_id))
    return None if row is None else _order_out(row)


def risk(tx: Tx, *, account: str | None = None) -> list[dict[str, Any]]:
    """Risk state per account with its limits; ``breaker_active``: tripped and not expired now."""
    clause, params = where([(f"account = {tx.dialect.param}", account)])
    states = tx.rows(select(tx, "ts_risk_state") + clause + " ORDER BY account", params)
    usage = tx.rows(select(tx, "ts_risk_usage") + clause + " ORDER BY account, limit_name, symbol", params)
    limits: dict[str, list[dict[str, Any]]] = {}
    for row in usage:
        u = _decode("ts_risk_usage", row)
        u["symbol"] = u.get("symbol") or None  # '' in the table's key stands for every symbol
        limits.setdefault(u.pop("account"), []).append(u)
    now = datetime.now(timezone.utc)
    out = []
    for row in states:
        r = _decode("ts_risk_state", row)
        _breaker(r, now)
        r["limits"] = limits.get(r["account"], [])
        out.append(r)
    return out


def _breaker(state: dict[str, Any], now: datetime) -> None:
    state["breaker_tripped"] = bool(state["breaker_tripped"])
    state["kill_switch"] = bool(state["kill_switch"])
    state["breaker_active"] = state["breaker_tripped"] and (state["breaker_until"] is None
                                                            or state["breaker_until"] > now)


def daily_stats(tx: Tx, *, account: str | None = None, day: str | None = None) -> list[dict[str, Any]]:
    """Statistics per account and trading day (``day``: YYYY-MM-DD)."""
    p = tx.dialect.param
    clause, params = where([(f"account = {p}", account), (f"trading_day = {p}", day)])
    out = []
    for row in tx.rows(select(tx, "ts_daily_stats") + clause + " ORDER BY account, trading_day", params):
        r = _decode("ts_daily_stats", row)
        r["breaches"] = [b for b in (r["breaches"] or "").split(",") if b]
        out.append(r)
    return out


def equity(tx: Tx, *, account: str | None = None, since: datetime | None = None, until: datetime | None = None,
           limit: int = 1000) -> list[dict[str, Any]]:
    """The latest ``limit`` equity points in [since, until), oldest first."""
    p = tx.dialect.param
    clause, params = where([
        (f"account = {p}", account),
        (f"{EQUITY_TIME} >= {p}", tx.when(since) if since else None),
        (f"{EQUITY_TIME} < {p}", tx.when(until) if until else None),
    ])
    sql = select(tx, "ts_equity_curve") + clause + f" ORDER BY {EQUITY_TIME} DESC, account DESC LIMIT {p}"
    return [_decode("ts_equity_curve", r) for r in reversed(tx.rows(sql, [*params, limit]))]


def signals(tx: Tx, *, strategy_id: str | None = None, symbol: str | None = None) -> list[dict[str, Any]]:
    """The last signal per strategy and symbol, ordered by strategy, symbol; ``strategy_id``/``symbol``
    filter by equality."""
    p = tx.dialect.param
    clause, params = where([(f"strategy_id = {p}", strategy_id), (f"symbol = {p}", symbol)])
    return [_decode("ts_signals", r)
            for r in tx.rows(select(tx, "ts_signals") + clause + " ORDER BY strategy_id, symbol", params)]


def _listed(tx: Tx, table: str, order: str, **equal: Any) -> list[dict[str, Any]]:
    """Decoded rows of ``table`` whose columns equal the given values (None: any), in ``order``."""
    return [_decode(table, r) for r in table_rows(tx, table, equal, order)]


def fees_pending(tx: Tx, *, account: str | None = None, client_order_id: str | None = None) -> list[dict[str, Any]]:
    """Executions whose fee the venue has not reported yet, oldest first (``FeeCharged`` removes one)."""
    return _listed(tx, "ts_fees_pending", "account, last_position, exec_id", account=account,
                   client_order_id=client_order_id)


def instruments(tx: Tx, *, symbol: str | None = None, asset_class: str | None = None) -> list[dict[str, Any]]:
    """The instrument registry (each symbol's last definition), ordered by symbol."""
    return _listed(tx, "ts_instruments", "symbol", symbol=symbol, asset_class=asset_class)


def cash(tx: Tx, *, account: str | None = None, venue: str | None = None,
         currency: str | None = None) -> list[dict[str, Any]]:
    """Cash per account, venue and currency (the venue's last reported balance, moved by our fills,
    fees and settlements since), ordered by account, venue, currency."""
    return _listed(tx, "ts_cash", "account, venue, currency", account=account, venue=venue, currency=currency)


def fx_rates(tx: Tx, *, base: str | None = None, quote: str | None = None) -> list[dict[str, Any]]:
    """The last recorded rate of each currency pair (one ``base`` is worth ``rate`` ``quote``)."""
    return _listed(tx, "ts_fx_rates", "base, quote", base=base, quote=quote)


def corporate_actions(tx: Tx, *, symbol: str | None = None) -> list[dict[str, Any]]:
    """Corporate actions recorded, by effective time (then symbol, action)."""
    return _listed(tx, "ts_corporate_actions", "effective_at, symbol, action", symbol=symbol)


def operations(tx: Tx) -> dict[str, Any]:
    """What the alerting rules watch, for ``/metrics``: ``positions`` (account, venue, symbol, qty,
    realized_pnl, unrealized_pnl as strings), ``limits`` (account, limit_name, symbol, effective,
    used) and ``open_discrepancies`` (account -> discrepancies recorded on orders still open, e.g. a
    ``missing_at_venue`` kept pending) and ``fees_pending`` (account -> (fills whose fee is still to
    come, the time of the oldest)). Empty when the read models are not there yet."""
    out: dict[str, Any] = {"positions": [], "limits": [], "open_discrepancies": {}, "fees_pending": {}}
    d = tx.dialect
    if tx.exists("ts_positions"):
        out["positions"] = [
            {"account": a, "venue": v, "symbol": s_, "qty": _num(q), "realized_pnl": _num(r), "unrealized_pnl": _num(u)}
            for a, v, s_, q, r, u in tx.rows(f"SELECT account, venue, symbol, qty, realized_pnl, unrealized_pnl "
                                            f"FROM {d.name('ts_positions')} ORDER BY account, venue, symbol")]
    if tx.exists("ts_risk_usage"):
        out["limits"] = [
            {"account": a, "limit_name": n, "symbol": s_ or "", "effective": _num(e), "used": _num(u)}
            for a, n, s_, e, u in tx.rows(f"SELECT account, limit_name, symbol, effective, used "
                                         f"FROM {d.name('ts_risk_usage')} ORDER BY account, limit_name, symbol")]
    if tx.exists("ts_fees_pending"):
        out["fees_pending"] = {a: (int(n), _time(oldest)) for a, n, oldest in tx.rows(
            f"SELECT account, count(*), min(at) FROM {d.name('ts_fees_pending')} GROUP BY account")}
    if tx.exists("ts_orders"):
        out["open_discrepancies"] = {
            a: int(n or 0) for a, n in tx.rows(f"SELECT account, sum(discrepancies) FROM {d.name('ts_orders')} "
                                               "WHERE is_open GROUP BY account")}
    return out


def last_drill(tx: Tx) -> dict[str, Any] | None:
    """The last restore drill on record (``DrillCompleted``, the newest event of the ``drill``
    stream, found through the log's (stream_id, stream_version) index: no fold, no read model), or
    None. Keys: position, outcome, reason, chain_id, finished_at (aware UTC), rto_seconds,
    rpo_seconds (floats or None), events_behind."""
    d, p = tx.dialect, tx.dialect.param
    if not tx.exists(TRADING_TABLE):
        return None
    row = tx.one(f"SELECT position, data FROM {d.name(TRADING_TABLE)} WHERE stream_id = {p} "
                 "ORDER BY stream_version DESC LIMIT 1", (DRILL_STREAM,))
    if row is None:
        return None
    data = orjson.loads(bytes(row[1]))

    def num(key: str) -> float | None:
        return float(data[key]) if data.get(key) is not None else None

    return {"position": int(row[0]), "outcome": data.get("outcome"), "reason": data.get("reason") or "",
            "chain_id": data.get("chain_id") or "", "finished_at": _time(data.get("finished_at")),
            "rto_seconds": num("rto_seconds"), "rpo_seconds": num("rpo_seconds"),
            "events_behind": data.get("events_behind")}


def lag(tx: Tx, *, with_orders: bool = False) -> dict[str, Any]:
    """The projection's lag behind the log, with each account's kill switch and breaker (and,
    ``with_orders``, order counts by status). Raises ``DatabaseUnavailable`` when there is no log.

    Keys: log_head, projection_position, lag_events, lag_seconds (age of the oldest unprojected
    event; 0 when caught up), last_event_at, projection_updated_at, accounts, orders_by_status."""
    d, p = tx.dialect, tx.dialect.param
    events = d.name(TRADING_TABLE)
    if not tx.exists(TRADING_TABLE):
        raise DatabaseUnavailable("no tradestate log in this database (nothing was ever recorded)")
    head = tx.one(f"SELECT coalesce(max(position), 0) FROM {events}")[0]  # type: ignore[index]
    last = tx.one(f"SELECT recorded_at FROM {events} WHERE position = {p}", (head,)) if head else None
    tracked, projected_at, accounts, by_status = 0, None, [], {}
    if tx.exists(TRACKING_TABLE):
        row = tx.one(f"SELECT position, updated_at FROM {d.name(TRACKING_TABLE)} WHERE projection = {p}",
                     (PROJECTION,))
        if row:
            tracked, projected_at = row[0], _time(row[1])
    oldest = None
    if head > tracked:
        row = tx.one(f"SELECT recorded_at FROM {events} WHERE position > {p} ORDER BY position LIMIT 1", (tracked,))
        oldest = _time(row[0]) if row else None
    if tx.exists("ts_risk_state"):
        accounts = [_decode("ts_risk_state", r) for r in tx.rows(select(tx, "ts_risk_state") + " ORDER BY account")]
    if with_orders and tx.exists("ts_orders"):
        by_status = {s: int(n) for s, n in tx.rows(f"SELECT status, count(*) FROM {d.name('ts_orders')} GROUP BY status")}
    now = datetime.now(timezone.utc)
    lag_events = max(0, head - tracked)
    lag_seconds = max(0.0, (now - oldest).total_seconds()) if (lag_events and oldest) else 0.0
    for a in accounts:
        _breaker(a, now)
    return {
        "log_head": head, "projection_position": tracked, "lag_events": lag_events,
        "lag_seconds": lag_seconds, "last_event_at": _time(last[0]) if last else None,
        "projection_updated_at": projected_at, "accounts": accounts, "orders_by_status": by_status,
    }
