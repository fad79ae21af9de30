"""Database helpers for tests: the PostgreSQL server under test, per-test schemas, raw tampering."""

from __future__ import annotations

import os
import sqlite3
from urllib.parse import parse_qs, parse_qsl, urlencode, urlparse, urlunparse

import psycopg

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


def pg_base_url() -> str:
    """The PostgreSQL server under test: ``TRADESTATE_TEST_PG``, else the local cluster."""
    return os.environ.get("TRADESTATE_TEST_PG", DEFAULT_PG)


def with_schema(url: str, schema: str) -> str:
    """``url`` with its ``schema`` query parameter set to ``schema``."""
    parsed = urlparse(url)
    query = dict(parse_qsl(parsed.query))
    query["schema"] = schema
    return urlunparse(parsed._replace(query=urlencode(query)))


def schema_of(url: str) -> str:
    """The schema a test URL names (``public`` when it names none)."""
    return parse_qs(urlparse(url).query).get("schema", ["public"])[0]


def tamper(store, *statements: tuple[str, tuple]) -> None:
    """Run raw SQL as the database owner, around the append-only protection."""
    if store.kind == "sqlite":
        conn = sqlite3.connect(store.url[len("sqlite:///"):], isolation_level=None)
        try:
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
                conn.execute(f'DROP TRIGGER "{name}"')
            conn.execute("BEGIN")
            for sql, params in statements:
                conn.execute(sql.replace("%s", "?"), params)
            conn.execute("COMMIT")
        finally:
            conn.close()
        return
    schema = schema_of(store.url)
    with psycopg.connect(pg_base_url(), autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        with conn.transaction():
            triggers = conn.execute(
                "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND NOT t.tgisinternal",
                (schema,)).fetchall()
            for table, name in triggers:
                conn.execute(f'ALTER TABLE "{table}" DISABLE TRIGGER "{name}"')
            for sql, params in statements:
                conn.execute(sql, params)
            for table, name in triggers:
                conn.execute(f'ALTER TABLE "{table}" ENABLE TRIGGER "{name}"')


def restamp(store, stamps: dict) -> None:
    """Set ``recorded_at`` of the log rows at the given positions (position -> aware datetime), as
    a store whose clock was off would have stamped them (around the append-only protection)."""
    from datetime import timezone

    def value(at):
        at = at.astimezone(timezone.utc)
        return at.isoformat() if store.kind == "sqlite" else at

    tamper(store, *[("UPDATE ts_events SET recorded_at = %s WHERE position = %s", (value(at), position))
                    for position, at in sorted(stamps.items())])
