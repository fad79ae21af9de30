"""The one SQL seam: database URLs, dialects, and cursors on the log's own connections.

Everything beside the log that speaks SQL (checkpoints, the digest chain, the read models,
backups, the chaos checker) goes through this module; only it and the two backends
(``sqlite.py``, ``postgres.py``) know which database is underneath, how a URL becomes a
connection, and how a transaction is taken.

* URLs: ``resolve_url``, ``redact``, ``url_kind``, ``sqlite_path`` and ``PgUrl`` (a PostgreSQL
  URL parsed by libpq's own rules, so every libpq parameter in it reaches libpq).
* ``Dialect``: table names, parameter markers and column types of one database kind.
* ``read_cursor`` / ``write_cursor`` / ``snapshot_cursor``: DB-API cursors that take the same
  connections and locks as the log's appends.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from urllib.parse import quote as url_quote

from ...domain.errors import InvalidInput

SQLITE = "sqlite"
POSTGRESQL = "postgresql"
KINDS = (SQLITE, POSTGRESQL)
DEFAULT_URL = "sqlite:///tradestate.db"
URL_ENV = "TRADESTATE_DB"

# ------------------------------------------------------------------------------ URLs


def resolve_url(url: str | None = None) -> str:
    """``url`` if given, else ``$TRADESTATE_DB``, else the default SQLite file in the working directory."""
    return url or os.environ.get(URL_ENV) or DEFAULT_URL


def redact(url: str) -> str:
    """``url`` with any password (in the user part or as a ``password=`` parameter) shown as ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        if ":" in userinfo:
            netloc = userinfo.split(":", 1)[0] + ":***@" + hosts
    query = parts.query
    if "password=" in query:
        query = re.sub(r"(^|&)password=[^&]*", r"\1password=***", query)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def url_kind(url: str) -> str:
    """``"sqlite"`` or ``"postgresql"`` for a URL of that scheme (``postgres://`` too); ``InvalidInput`` otherwise."""
    scheme = urlsplit(url).scheme
    if scheme == SQLITE:
        return SQLITE
    if scheme in (POSTGRESQL, "postgres"):
        return POSTGRESQL
    raise InvalidInput(f"unsupported database URL {redact(url)!r}: use sqlite:///path or postgresql://...")


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///path`` URL; ``InvalidInput`` for another URL or an in-memory database."""
    if not url.startswith("sqlite:///"):
        raise InvalidInput(f"not a SQLite URL: {url!r} (use sqlite:///relative.db or sqlite:////abs/path.db)")
    path = url[len("sqlite:///") :]
    if not path or path.startswith(":memory:"):
        raise InvalidInput("an in-memory database is not durable; give a file path")
    return path


# Query parameters that are tradestate's, not libpq's: taken out before libpq parses the URL.
_OWN_PARAMS = ("schema", "lock_timeout", "statement_timeout", "append_timeout", "synchronous_commit", "partitions",
               "archive")
# ``partitions=``: how a *new* log's tables are laid out (PostgreSQL; see adapters/store/partitions.py).
PARTITION_LAYOUTS = ("", "none", "month")
# tradestate's defaults, each applied only when neither the URL nor libpq's environment (the
# variables beside it, or a service file) gives the value: libpq's own defaults (a Unix socket,
# a database named after the user) are not what a trading service on TCP expects.
_DEFAULTS = {"host": "127.0.0.1", "dbname": "postgres", "user": "postgres", "connect_timeout": "5"}
_ENV = {"host": ("PGHOST", "PGHOSTADDR"), "dbname": ("PGDATABASE",), "user": ("PGUSER",),
        "connect_timeout": ("PGCONNECT_TIMEOUT",)}
# synchronous_commit levels from weakest to strongest. tradestate's floor is ``on`` (the commit is
# flushed locally and, with synchronous standbys, on them); a URL may ask for more, never less.
SYNC_LEVELS = ("off", "local", "remote_write", "on", "remote_apply")
SYNC_FLOOR = "on"


def _env(key: str) -> str | None:
    """The value libpq's environment gives parameter ``key``, if any."""
    for name in _ENV.get(key, ()):
        if os.environ.get(name):
            return os.environ[name]
    return None


@dataclass(frozen=True)
class PgUrl:
    """A ``postgresql://`` URL split into libpq connection parameters and tradestate's own.

    ``params`` are the libpq parameters exactly as libpq reads the URL (``conninfo_to_dict``), so
    ``sslmode``, ``target_session_attrs``, ``connect_timeout``, ``application_name`` and a
    multi-host list (``h1:5432,h2:5433``) all reach libpq. What the URL leaves out, libpq takes
    from its environment as usual (``PGHOST``, ``PGPORT``, ``PGUSER``, ``PGDATABASE``,
    ``PGPASSWORD``, ``PGSSLMODE``, ..., a password from ``.pgpass``/``PGPASSFILE``, a
    ``service``); only where neither gives host, database, user or ``connect_timeout`` do
    tradestate's defaults apply (127.0.0.1, postgres, postgres, 5 s). tradestate's own parameters
    are never sent to libpq: ``schema`` (default ``public``), ``lock_timeout``,
    ``statement_timeout`` and ``append_timeout`` (seconds: the longest an append waits for its
    commit, synchronous standbys included; default 5) and ``synchronous_commit`` (``on`` or
    ``remote_apply``: a level tradestate's sessions use at least; the server's own setting applies
    when it is stronger), ``partitions`` (``month``: a log created through this URL is partitioned
    by position range, one partition per month; an existing log keeps its layout) and ``archive``
    (the directory of the log's Parquet archives, see adapters/store/archive.py). A weaker ``synchronous_commit`` (``off``, ``local``, ``remote_write``)
    is ``InvalidInput``: an acknowledged append would not be durable."""

    url: str
    params: Mapping[str, str] = field(repr=False)
    schema: str = "public"
    lock_timeout: float = 5.0
    statement_timeout: float = 30.0
    append_timeout: float = 5.0
    synchronous_commit: str = SYNC_FLOOR
    partitions: str = ""
    archive: str = ""

    @classmethod
    def parse(cls, url: str) -> PgUrl:
        """Parse ``url``; ``InvalidInput`` (password redacted) if libpq would not accept it."""
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict

        if url_kind(url) != POSTGRESQL:
            raise InvalidInput(f"not a PostgreSQL URL: {redact(url)!r}")
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        own = {k: v for k, v in query if k in _OWN_PARAMS}
        # quote, not quote_plus: libpq reads "+" as a plus sign, never as a space
        libpq_query = urlencode([(k, v) for k, v in query if k not in _OWN_PARAMS], quote_via=url_quote)
        rest = f"{POSTGRESQL}://{parts.netloc}{parts.path}" + (f"?{libpq_query}" if libpq_query else "")
        try:
            params = {k: str(v) for k, v in conninfo_to_dict(rest).items()}
            lock_timeout = float(own.get("lock_timeout", "5"))
            statement_timeout = float(own.get("statement_timeout", "30"))
            append_timeout = float(own.get("append_timeout", "5"))
        except (ProgrammingError, ValueError) as e:
            raise InvalidInput(f"bad PostgreSQL URL {redact(url)!r}: {e}") from e
        if not append_timeout > 0:
            raise InvalidInput(f"bad PostgreSQL URL {redact(url)!r}: append_timeout must be a positive number "
                               "of seconds (an append must never wait without bound)")
        sync = (own.get("synchronous_commit") or SYNC_FLOOR).strip().lower()
        if sync not in SYNC_LEVELS:
            raise InvalidInput(f"bad PostgreSQL URL {redact(url)!r}: synchronous_commit={sync!r} is not one of "
                               f"{', '.join(SYNC_LEVELS)}")
        if SYNC_LEVELS.index(sync) < SYNC_LEVELS.index(SYNC_FLOOR):
            raise InvalidInput(f"bad PostgreSQL URL {redact(url)!r}: synchronous_commit={sync} would acknowledge "
                               "appends that are not durable; use on or remote_apply")
        partitions = (own.get("partitions") or "").strip().lower()
        if partitions not in PARTITION_LAYOUTS:
            raise InvalidInput(f"bad PostgreSQL URL {redact(url)!r}: partitions={partitions!r} is not one of "
                               "month, none")
        service = "service" in params or bool(os.environ.get("PGSERVICE"))
        for key, value in _DEFAULTS.items():
            if key in params:
                continue
            from_env = _env(key)
            if key == "connect_timeout":
                params[key] = from_env or value  # read by tradestate's own waits too
            elif from_env is None and not service:
                params[key] = value
        return cls(url=url, params=params, schema=own.get("schema") or "public", lock_timeout=lock_timeout,
                   statement_timeout=statement_timeout, append_timeout=append_timeout, synchronous_commit=sync,
                   partitions="" if partitions == "none" else partitions, archive=own.get("archive") or "")

    def effective(self, key: str) -> str:
        """The value libpq will use for ``key``: the URL's, else its environment's, else ''."""
        return self.params.get(key) or _env(key) or (os.environ.get("PGPORT", "") if key == "port" else "")

    @property
    def connect_timeout(self) -> float:
        """Seconds libpq waits for each host before giving up on it."""
        return float(self.params.get("connect_timeout", "5"))

    @property
    def where(self) -> str:
        """``host:port[,host:port]/dbname`` for messages (never the password)."""
        hosts = self.effective("host").split(",")
        ports = self.effective("port").split(",")
        if len(ports) == 1:
            ports = ports * len(hosts)
        pairs = ",".join(f"{h}:{p or 5432}" for h, p in zip(hosts, ports + [""] * len(hosts)))
        return f"{pairs}/{self.effective('dbname')}"

    def kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Connection keyword arguments for ``psycopg.connect`` (``overrides`` win)."""
        return dict(self.params) | overrides

    def conninfo(self, **overrides: Any) -> str:
        """A libpq conninfo string of these parameters (``overrides`` win)."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo("", **self.kwargs(**overrides))

    def without(self, *keys: str) -> str:
        """The same URL without the query parameters ``keys``."""
        parts = urlsplit(self.url)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in keys]
        return urlunsplit(parts._replace(query=urlencode(query)))

    def with_schema(self, schema: str) -> str:
        """The same URL naming another ``schema``."""
        return self.with_param("schema", schema)

    def with_param(self, key: str, value: str) -> str:
        """The same URL with query parameter ``key`` set to ``value`` (e.g. ``statement_timeout``)."""
        parts = urlsplit(self.url)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != key]
        return urlunsplit(parts._replace(query=urlencode(query + [(key, value)])))


# ------------------------------------------------------------------------------ dialects

# Column kinds -> SQL types. Money and quantities are exact: numeric on PostgreSQL, decimal
# strings on SQLite; times are timestamptz on PostgreSQL and ISO-8601 UTC text on SQLite.
_TYPES = {
    SQLITE: {"text": "TEXT", "num": "TEXT", "int": "INTEGER", "bool": "INTEGER", "time": "TEXT", "json": "TEXT",
             "blob": "BLOB", "smallint": "INTEGER", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    POSTGRESQL: {"text": "text", "num": "numeric", "int": "bigint", "bool": "boolean", "time": "timestamptz",
                 "json": "jsonb", "blob": "bytea", "smallint": "smallint",
                 "serial": "bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY"},
}


def quote(name: str) -> str:
    """``name`` as a double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Dialect:
    """The SQL spelling of one database kind (``"sqlite"`` or ``"postgresql"``) and, on PostgreSQL,
    the schema that holds the store's tables."""

    kind: str
    schema: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown database kind {self.kind!r}")
        if self.kind == POSTGRESQL and not self.schema:
            object.__setattr__(self, "schema", "public")

    @classmethod
    def of(cls, store: Any) -> Dialect:
        """The dialect of an open ``Store``."""
        return cls(store.kind, store.trading.schema)

    @property
    def is_postgres(self) -> bool:
        """Whether this is PostgreSQL."""
        return self.kind == POSTGRESQL

    @property
    def is_sqlite(self) -> bool:
        """Whether this is SQLite."""
        return self.kind == SQLITE

    def name(self, table: str) -> str:
        """``table`` as it is written in a statement: schema-qualified and quoted on PostgreSQL."""
        return f"{quote(self.schema)}.{quote(table)}" if self.is_postgres else table

    @property
    def param(self) -> str:
        """The DB-API parameter marker (``?`` or ``%s``)."""
        return "%s" if self.is_postgres else "?"

    def type(self, kind: str) -> str:
        """The SQL type for a column kind: text, num, int, smallint, bool, time, json, blob, serial."""
        return _TYPES[self.kind][kind]

    def byte_length(self, expr: str) -> str:
        """SQL for the length in bytes of a blob expression."""
        return f"octet_length({expr})" if self.is_postgres else f"length({expr})"

    def time_value(self, at: datetime) -> Any:
        """A tz-aware time as a parameter for a ``time`` column (ISO-8601 text on SQLite)."""
        return at if self.is_postgres else at.isoformat()

    def ddl_lock(self, cur: Any, key: str = "tradestate-ddl") -> None:
        """Serialise concurrent DDL on PostgreSQL for the rest of ``cur``'s transaction
        (``CREATE ... IF NOT EXISTS`` is not atomic there); SQLite's write lock already does."""
        if self.is_postgres:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))

    def table_exists(self, cur: Any, table: str) -> bool:
        """Whether ``table`` (or a view of that name) exists, asked on ``cur``."""
        if self.is_postgres:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (self.name(table),))
        else:
            cur.execute("SELECT count(*) FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?", (table,))
        row = cur.fetchone()
        return bool(row and row[0])


# ------------------------------------------------------------------------------ cursors


@contextmanager
def read_cursor(store: Any) -> Iterator[Any]:
    """A DB-API cursor (tuple rows) for reads, outside any explicit transaction: each statement
    sees the latest commits. PostgreSQL: the thread's pinned connection, autocommit."""
    with store.trading.transaction(write=False) as cur:
        yield cur


@contextmanager
def write_cursor(store: Any) -> Iterator[Any]:
    """A DB-API cursor in one write transaction, committed when the block ends and rolled back
    if it raises. SQLite: ``BEGIN IMMEDIATE``, the log's own write lock."""
    with store.trading.transaction(write=True) as cur:
        yield cur


@contextmanager
def snapshot_cursor(store: Any) -> Iterator[Any]:
    """A DB-API cursor whose statements all see one snapshot of the database (read only)."""
    with store.trading.transaction(write=False, snapshot=True) as cur:
        yield cur


def release(store: Any) -> None:
    """Give back the connection this thread holds on ``store`` (a worker thread that is done)."""
    store.trading.release_connection()


__all__ = [
    "DEFAULT_URL",
    "Dialect",
    "KINDS",
    "POSTGRESQL",
    "PgUrl",
    "SQLITE",
    "SYNC_LEVELS",
    "quote",
    "read_cursor",
    "redact",
    "release",
    "resolve_url",
    "snapshot_cursor",
    "sqlite_path",
    "url_kind",
    "write_cursor",
]
