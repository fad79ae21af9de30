"""Plain SQL beside the log (checkpoints, the digest chain): one way to get a cursor on either
database, so every module takes the same locks and the same connections as the log."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def read_cursor(store: Any) -> Iterator[Any]:
    """A cursor for reads (tuple rows). PostgreSQL: the thread's pinned, autocommit connection."""
    if store.kind == "postgresql":
        from psycopg.rows import tuple_row

        with store.trading._connection() as conn:
            yield conn.cursor(row_factory=tuple_row)
    else:
        with store.trading.datastore.get_connection(commit=False) as connection:
            yield connection._sqlite_conn.cursor()


@contextmanager
def write_cursor(store: Any) -> Iterator[Any]:
    """A cursor in one write transaction (SQLite: BEGIN IMMEDIATE, the log's own write lock)."""
    if store.kind == "postgresql":
        from psycopg.rows import tuple_row

        with store.trading._connection() as conn, conn.transaction():
            yield conn.cursor(row_factory=tuple_row)
    else:
        with store.trading.datastore.get_connection(commit=True) as connection:
            raw = connection._sqlite_conn
            raw.execute("BEGIN IMMEDIATE")
            try:
                yield raw.cursor()
                raw.execute("COMMIT")
            except BaseException:
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
                raise
