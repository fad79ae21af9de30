"""Event stores: one URL picks the database (``sqlite:///path`` or ``postgresql://...``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ...domain.errors import InvalidInput
from .base import VOID_STREAM, VOID_TYPE, Appended, EventLog, RecordedEvent, Row, as_time, gc_paused, new_event
from .sql import DEFAULT_URL, POSTGRESQL, SQLITE, Dialect, PgUrl, redact, resolve_url, sqlite_path, url_kind

TRADING_TABLE = "ts_events"
MARKET_TABLE = "ts_market_events"  # bars and quotes: their own log, joined to trading by time


@dataclass
class Store:
    """The trading log and the market-data log of one database. ``kind`` is ``"sqlite"`` or
    ``"postgresql"``; SQL beside the logs goes through ``dialect`` and ``sql.read_cursor`` /
    ``sql.write_cursor``."""

    url: str
    kind: str
    trading: EventLog
    market: EventLog

    def close(self) -> None:
        """Close both logs and their connections (they share one datastore)."""
        self.trading.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def display_url(self) -> str:
        """The URL with any password redacted."""
        return redact(self.url)

    @property
    def dialect(self) -> Dialect:
        """The SQL dialect (and PostgreSQL schema) of this store's database."""
        return Dialect(self.kind, self.trading.schema)


def open_store(url: str | None = None, *, create: bool = True) -> Store:
    """Open (and by default create) the logs named by ``url``, ``$TRADESTATE_DB`` or the default.

    Raises ``InvalidInput`` for a URL of another scheme, a missing directory, or (``create=False``)
    a database without a log; ``StoreUnreachable`` (within the URL's ``connect_timeout``, 5 s by
    default) for a PostgreSQL server that cannot be reached or refuses the connection;
    ``ReadOnlyStore`` (``create=True``) for a server that accepts reads only (a hot standby).
    ``create=False`` writes nothing on open, so it works on a hot standby; opening an existing
    log with ``create=True`` makes no catalog write either."""
    url = resolve_url(url)
    kind = url_kind(url)
    if kind == SQLITE:
        from .sqlite import DurableSQLiteDatastore, SQLiteEventLog

        path = sqlite_path(url)
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise InvalidInput(f"directory {parent!r} does not exist")
        if not create and not os.path.exists(path):
            raise InvalidInput(f"no tradestate log at {url!r} (the file does not exist)")
        datastore = DurableSQLiteDatastore(path)
        trading = SQLiteEventLog(datastore, TRADING_TABLE)
        market = SQLiteEventLog(datastore, MARKET_TABLE)
    else:
        from .postgres import PostgresEventLog, TradestatePostgresDatastore

        pg = TradestatePostgresDatastore(url)
        pg.check_reachable(write=create)
        trading = PostgresEventLog(pg, TRADING_TABLE)
        market = PostgresEventLog(pg, MARKET_TABLE)
    if create:
        trading.create_table()
        market.create_table()
    elif not trading.exists():
        trading.close()
        raise InvalidInput(f"no tradestate log in {redact(url)} (run something that records first)")
    store = Store(url=url, kind=kind, trading=trading, market=market)
    if create:
        from .digest import protect_log

        # The logs are append-only for the service: UPDATE, DELETE and TRUNCATE are refused by
        # triggers (no DDL when already in place; REVOKE too when $TRADESTATE_SERVICE_ROLE is set).
        protect_log(store, service_role=os.environ.get("TRADESTATE_SERVICE_ROLE"))
    return store


__all__ = [
    "DEFAULT_URL",
    "Dialect",
    "POSTGRESQL",
    "PgUrl",
    "SQLITE",
    "Appended",
    "EventLog",
    "RecordedEvent",
    "Row",
    "Store",
    "VOID_STREAM",
    "VOID_TYPE",
    "gc_paused",
    "new_event",
    "open_store",
    "redact",
    "resolve_url",
    "sqlite_path",
]
