"""Event stores: one URL picks the database (``sqlite:///path`` or ``postgresql://...``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlparse, urlunparse

from ...domain.errors import InvalidInput
from .base import VOID_STREAM, VOID_TYPE, Appended, EventLog, RecordedEvent, Row, as_time, gc_paused, new_event

DEFAULT_URL = "sqlite:///tradestate.db"
TRADING_TABLE = "ts_events"
MARKET_TABLE = "ts_market_events"  # bars and quotes: their own log, joined to trading by time


@dataclass
class Store:
    """The trading log and the market-data log of one database."""

    url: str
    kind: str  # "sqlite" | "postgresql"
    trading: EventLog
    market: EventLog

    def close(self) -> None:
        # Both logs share one datastore (one pool): closing it once closes both.
        self.trading.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def display_url(self) -> str:
        return redact(self.url)


def redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@")
        return urlunparse(parsed._replace(netloc=netloc))
    return url


def resolve_url(url: str | None = None) -> str:
    return url or os.environ.get("TRADESTATE_DB") or DEFAULT_URL


def sqlite_path(url: str) -> str:
    if not url.startswith("sqlite:///"):
        raise InvalidInput(f"not a SQLite URL: {url!r} (use sqlite:///relative.db or sqlite:////abs/path.db)")
    path = url[len("sqlite:///") :]
    if not path or path.startswith(":memory:"):
        raise InvalidInput("an in-memory database is not durable; give a file path")
    return path


def open_store(url: str | None = None, *, create: bool = True) -> Store:
    """Open (and by default create) the logs named by ``url``, ``$TRADESTATE_DB`` or the default."""
    url = resolve_url(url)
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
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
        kind = "sqlite"
    elif scheme in ("postgresql", "postgres"):
        from .postgres import PostgresEventLog, TradestatePostgresDatastore

        datastore = TradestatePostgresDatastore(url)
        trading = PostgresEventLog(datastore, TRADING_TABLE)
        market = PostgresEventLog(datastore, MARKET_TABLE)
        kind = "postgresql"
    else:
        raise InvalidInput(f"unsupported database URL {redact(url)!r}: use sqlite:///path or postgresql://...")
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
]
