"""PostgreSQL logs partitioned by position range, one partition per month (opt-in).

Layout of a partitioned log ``T`` (``ts_events`` or ``ts_market_events``):

* ``T`` is ``PARTITION BY RANGE (position)``. Its partitions are ``T_pYYYY_MM``: closed ones hold
  ``first <= position < end``; the newest is open-ended (``end`` = MAXVALUE) and takes every append.
  The month in a name is the month the partition was opened for (``roll`` closes it at the head).
* ``T_versions (stream_id, stream_version, position)``, primary key ``T_stream_version_key``: the
  optimistic-concurrency check. A unique key on a partitioned table must contain the partition
  key, so ``UNIQUE (stream_id, stream_version)`` cannot live on ``T`` itself, and a per-partition
  key would let a stale version through whose earlier event sits in an older partition. A
  ``BEFORE INSERT`` row trigger on ``T`` (cloned to every partition) claims each event's
  (stream, version) here in the append's own statement, so a taken version raises the same
  ``unique_violation`` as before and the append function's void path and the recorder's
  ``IntegrityError`` are unchanged. ``$void`` rows are not claimed (their version is their
  position, unique by the primary key). The table is kept when partitions are archived, so the
  check stays right for streams whose events are only in archives.
* ``T (stream_id, stream_version)`` is a plain partitioned index for stream reads.
* Append-only: the parent keeps ``protect_log``'s statement triggers; statement triggers do not
  reach partitions, so each partition gets its own (UPDATE, DELETE, TRUNCATE refused) when it is
  created or attached.

Why position ranges and not ``recorded_at`` months: appends only ever touch the open partition;
a reader by position (every follower, verify, replay) prunes to the partitions it needs; the
gap-free position is untouched (one sequence, as before). ``recorded_at`` partitions would need
``recorded_at`` in every unique key (position included), and a clock that steps back (which the
log tolerates) could put a row into a month already sealed or archived.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg.sql import Literal

from ...domain.errors import InvalidInput, TradestateError
from .base import VOID_STREAM
from .sql import quote, write_cursor, read_cursor

MONTHLY = "month"
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_NAME = re.compile(r"_p(\d{4})_(\d{2})(?:_\d+)?$")
_BOUND = re.compile(r"FROM \((MINVALUE|'?(-?\d+)'?)\) TO \((MAXVALUE|'?(-?\d+)'?)\)")


class PartitionError(TradestateError):
    """A partition operation cannot be done (not partitioned, lock not taken in time, ...)."""


@dataclass(frozen=True)
class Partition:
    """One attached partition: positions ``first <= p < end`` (``end`` None: the open one)."""

    name: str
    month: str  # YYYY-MM the partition was opened for
    first: int
    end: int | None
    from_min: bool = False  # the first partition is bounded below by MINVALUE (so it is written so)

    @property
    def lower(self) -> str:
        """The lower bound as written in SQL."""
        return "MINVALUE" if self.from_min else str(int(self.first))

    @property
    def is_open(self) -> bool:
        return self.end is None

    @property
    def last(self) -> int | None:
        """The highest position it can hold (None: open)."""
        return None if self.end is None else self.end - 1


def month_label(value: str | datetime | None = None) -> str:
    """``YYYY-MM`` of ``value`` (a datetime, or a ``YYYY-MM`` string checked), now by default."""
    if value is None:
        value = datetime.now(UTC)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m")
    m = _MONTH.match(value.strip())
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise InvalidInput(f"bad month {value!r}: use YYYY-MM")
    return value.strip()


def partition_name(table: str, month: str) -> str:
    return f"{table}_p{month.replace('-', '_')}"


def versions_table(table: str) -> str:
    return f"{table}_versions"


def _refuse_function(schema: str) -> str:
    return f"{quote(schema)}.ts_refuse_partition_change"


def create_statements(schema: str, table: str, month: str | None = None) -> list[str]:
    """DDL of a new partitioned log ``table`` in ``schema`` with one open partition for ``month``
    (the sequence and the append function are the log's own, created beside these). Safe to run
    again: the table and its first partition are created only when the table is not there (an
    existing log, plain or partitioned, keeps its layout and partitions), and the versions table
    and its trigger only on a partitioned table."""
    month = month_label(month)
    t = Literal(f"{quote(schema)}.{quote(table)}").as_string(None)
    new = [*_parent_statements(schema, table),
           *_partition_statements(schema, table, partition_name(table, month), None, None)]
    claims = _versions_statements(schema, table)
    return [
        *_refuse_statements(schema),
        "DO $do$ BEGIN IF to_regclass(" + t + ") IS NULL THEN "
        + " ".join(f"EXECUTE $q${statement}$q$;" for statement in new) + " END IF; END $do$",
        "DO $do$ BEGIN IF (SELECT relkind FROM pg_class WHERE oid = to_regclass(" + t + ")) = 'p' THEN "
        + " ".join(f"EXECUTE $q${statement}$q$;" for statement in claims) + " END IF; END $do$",
    ]


def _parent_statements(schema: str, table: str) -> list[str]:
    t = f"{quote(schema)}.{quote(table)}"
    return [
        f"CREATE TABLE IF NOT EXISTS {t} ("
        " position bigint NOT NULL,"
        " stream_id text NOT NULL,"
        " stream_version bigint NOT NULL,"
        " type text NOT NULL,"
        " data bytea NOT NULL,"
        " recorded_at timestamptz NOT NULL DEFAULT now(),"
        f" CONSTRAINT {quote(table + '_pkey')} PRIMARY KEY (position)) PARTITION BY RANGE (position)",
        f"CREATE INDEX IF NOT EXISTS {quote(table + '_stream_idx')} ON {t} (stream_id, stream_version)",
    ]


def _versions_statements(schema: str, table: str) -> list[str]:
    t = f"{quote(schema)}.{quote(table)}"
    v = f"{quote(schema)}.{quote(versions_table(table))}"
    func = f"{quote(schema)}.{quote(table + '_claim_version')}"
    return [
        f"CREATE TABLE IF NOT EXISTS {v} (stream_id text NOT NULL, stream_version bigint NOT NULL,"
        f" position bigint NOT NULL, CONSTRAINT {quote(table + '_stream_version_key')}"
        " PRIMARY KEY (stream_id, stream_version))",
        f"CREATE OR REPLACE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql AS $body$"
        " BEGIN"
        f"  IF NEW.stream_id <> {Literal(VOID_STREAM).as_string(None)} THEN"
        f"   INSERT INTO {v} (stream_id, stream_version, position)"
        "    VALUES (NEW.stream_id, NEW.stream_version, NEW.position);"
        "  END IF;"
        "  RETURN NEW;"
        " END $body$",
        f"CREATE OR REPLACE TRIGGER {quote(table + '_claim_version')} BEFORE INSERT ON {t}"
        f" FOR EACH ROW EXECUTE FUNCTION {func}()",
    ]


def _refuse_statements(schema: str) -> list[str]:
    from .digest import REFUSAL

    return [
        f"CREATE OR REPLACE FUNCTION {_refuse_function(schema)}() RETURNS trigger LANGUAGE plpgsql AS $body$"
        " BEGIN"
        f"  RAISE EXCEPTION '% on %.% refused: the table {REFUSAL}', TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME"
        "   USING ERRCODE = 'insufficient_privilege',"
        "   HINT = 'fix a mistake by appending a corrective event; see tradestate verify';"
        " END $body$"
    ]


def _protect_partition(schema: str, name: str) -> str:
    return (f"CREATE OR REPLACE TRIGGER {quote(name + '_append_only')} BEFORE UPDATE OR DELETE OR TRUNCATE"
            f" ON {quote(schema)}.{quote(name)} FOR EACH STATEMENT EXECUTE FUNCTION {_refuse_function(schema)}()")


def _partition_statements(schema: str, table: str, name: str, first: int | None, end: int | None) -> list[str]:
    lo = "MINVALUE" if first is None else str(int(first))
    hi = "MAXVALUE" if end is None else str(int(end))
    return [
        f"CREATE TABLE IF NOT EXISTS {quote(schema)}.{quote(name)} PARTITION OF {quote(schema)}.{quote(table)}"
        f" FOR VALUES FROM ({lo}) TO ({hi})",
        _protect_partition(schema, name),
    ]


# ------------------------------------------------------------------------------ reading the layout


def is_partitioned(cur: Any, schema: str, table: str) -> bool:
    """Whether ``schema.table`` is a partitioned table (asked on a PostgreSQL cursor)."""
    cur.execute("SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass(%s)", (f"{quote(schema)}.{quote(table)}",))
    row = cur.fetchone()
    return bool(row and row[0])


def list_partitions(cur: Any, schema: str, table: str) -> list[Partition]:
    """The attached partitions of ``schema.table`` in position order ([] if not partitioned)."""
    cur.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = to_regclass(%s)", (f"{quote(schema)}.{quote(table)}",))
    out = []
    for name, bound in cur.fetchall():
        m = _BOUND.search(bound or "")
        if m is None:
            continue
        first = 1 if m.group(1) == "MINVALUE" else int(m.group(2))
        end = None if m.group(3) == "MAXVALUE" else int(m.group(4))
        nm = _NAME.search(name)
        out.append(Partition(name, f"{nm.group(1)}-{nm.group(2)}" if nm else "", first, end,
                             m.group(1) == "MINVALUE"))
    return sorted(out, key=lambda p: p.first)


def companions(cur: Any, schema: str, table: str) -> list[str]:
    """The tables that belong to the partitioned log ``schema.table`` besides itself (its attached
    partitions, its versions table): what must move or go with it ([] for a plain table)."""
    if not is_partitioned(cur, schema, table):
        return []
    out = [p.name for p in list_partitions(cur, schema, table)]
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{quote(schema)}.{quote(versions_table(table))}",))
    return out + ([versions_table(table)] if cur.fetchone()[0] else [])


def _pg(store: Any) -> None:
    if store.kind != "postgresql":
        raise InvalidInput("partitions are a PostgreSQL layout: this store is " + store.kind)


def partitions(store: Any, table: str) -> list[Partition]:
    """The attached partitions of the store's log ``table`` ([] when it is one plain table)."""
    _pg(store)
    with read_cursor(store) as cur:
        return list_partitions(cur, store.trading.schema, table)


# ------------------------------------------------------------------------------ changing the layout


def _lock(cur: Any, schema: str, table: str, lock_timeout: float) -> None:
    cur.execute(f"SET LOCAL lock_timeout = {int(lock_timeout * 1000)}")
    cur.execute("SELECT pg_advisory_xact_lock(hashtext('tradestate-ddl'))")
    cur.execute(f"LOCK TABLE {quote(schema)}.{quote(table)} IN ACCESS EXCLUSIVE MODE")


def _next_bound(cur: Any, schema: str, table: str, head: int) -> int:
    """The first position of a new open partition: above the head and above every position the
    sequence has handed out (a drawn, not yet inserted one must land in the partition below)."""
    cur.execute(f"SELECT last_value, is_called FROM {quote(schema)}.{quote(table + '_position_seq')}")
    last, called = cur.fetchone()
    return max(head, int(last) if called else 0) + 1


def roll(store: Any, table: str, *, month: str | None = None, lock_timeout: float = 5.0) -> Partition | None:
    """Close the open partition of ``table`` at the log's head and open ``month``'s (default: this
    month). Returns the partition closed, None when there is nothing to close (the open partition
    is empty) or ``month``'s partition exists already.

    Under one transaction holding ``ACCESS EXCLUSIVE`` on the log (appends wait, at most
    ``lock_timeout`` for the lock): detach the open partition, give it a CHECK for its new range,
    re-attach it with that upper bound (the CHECK spares ATTACH its scan; adding the CHECK scans
    the month once, the one cost under the lock), and create the new open-ended partition."""
    _pg(store)
    month = month_label(month)
    schema = store.trading.schema
    t = f"{quote(schema)}.{quote(table)}"
    with write_cursor(store) as cur:
        if not is_partitioned(cur, schema, table):
            raise PartitionError(f"{table} is not partitioned (run `tradestate partitions convert` first)")
        _lock(cur, schema, table, lock_timeout)
        parts = list_partitions(cur, schema, table)
        current = parts[-1]
        if not current.is_open:
            raise PartitionError(f"{table} has no open partition")
        name = partition_name(table, month)
        if any(p.name == name for p in parts):
            return None
        p = f"{quote(schema)}.{quote(current.name)}"
        cur.execute(f"SELECT max(position) FROM {p}")
        head = cur.fetchone()[0]
        if head is None:
            return None
        end = _next_bound(cur, schema, table, int(head))
        check = quote(current.name + "_bounds")
        cur.execute(f"ALTER TABLE {t} DETACH PARTITION {p}")
        low = "" if current.from_min else f"position >= {current.first} AND "
        cur.execute(f"ALTER TABLE {p} ADD CONSTRAINT {check} CHECK ({low}position < {end})")
        cur.execute(f"ALTER TABLE {t} ATTACH PARTITION {p} FOR VALUES FROM ({current.lower}) TO ({end})")
        for statement in _partition_statements(schema, table, name, end, None):
            cur.execute(statement)
    return Partition(current.name, current.month, current.first, end, current.from_min)


def create_history(store: Any, table: str, months: list[str], bounds: list[int], *, lock_timeout: float = 5.0) -> None:
    """Lay out an *empty* partitioned ``table`` as closed partitions ``months[i]`` holding
    ``bounds[i] <= position < bounds[i+1]`` and an open one for the last month (``len(bounds) ==
    len(months)``; ``bounds[0]`` must be 1). For loading a history (migration, benchmarks)."""
    _pg(store)
    schema = store.trading.schema
    if len(bounds) != len(months) or not bounds or bounds[0] != 1 or bounds != sorted(set(bounds)):
        raise InvalidInput("bounds must start at 1, increase, and match the months")
    with write_cursor(store) as cur:
        _lock(cur, schema, table, lock_timeout)
        parts = list_partitions(cur, schema, table)
        cur.execute(f"SELECT count(*) FROM {quote(schema)}.{quote(table)}")
        if cur.fetchone()[0]:
            raise PartitionError(f"{table} is not empty")
        for p in parts:
            cur.execute(f"DROP TABLE {quote(schema)}.{quote(p.name)}")
        ends: list[int | None] = [*bounds[1:], None]
        firsts: list[int | None] = [None, *bounds[1:]]
        for month, first, end in zip(months, firsts, ends, strict=True):
            for statement in _partition_statements(schema, table, partition_name(table, month_label(month)), first,
                                                   end):
                cur.execute(statement)


def convert(store: Any, table: str, *, month: str | None = None, lock_timeout: float = 5.0) -> Partition | None:
    """Turn the plain log ``table`` into a partitioned one, in place and in one transaction: the
    existing table becomes the first (closed) partition as it is (no copy: a CHECK of its range is
    added, one scan, then it is attached), every (stream, version) it holds is claimed in the
    versions table, and a new open partition for ``month`` (default: this month) takes the appends.
    Appends wait for it (``ACCESS EXCLUSIVE``). Returns the closed partition, or None if ``table``
    was partitioned already. The sequence, the append function and the positions are unchanged."""
    _pg(store)
    month = month_label(month)
    schema = store.trading.schema
    s = quote(schema)
    t = f"{s}.{quote(table)}"
    from .postgres import JSON_VIEW_SUFFIX, json_view_statement

    with write_cursor(store) as cur:
        if is_partitioned(cur, schema, table):
            return None
        _lock(cur, schema, table, lock_timeout)
        cur.execute(f"SELECT min(recorded_at), max(position) FROM {t}")
        first_at, head = cur.fetchone()
        old_month = month_label(first_at) if first_at is not None else month
        old_month = min(old_month, month)
        # the history began in the month the new open partition is for: both carry that month
        old_name = partition_name(table, old_month) + ("_0" if old_month == month else "")
        end = _next_bound(cur, schema, table, int(head or 0))
        old = f"{s}.{quote(old_name)}"
        # claims left by an earlier partitioned layout of this schema belong to no log now
        cur.execute(f"DROP TABLE IF EXISTS {s}.{quote(versions_table(table))}")
        # the payload view follows the renamed table: made again below, on the new parent
        cur.execute(f"DROP VIEW IF EXISTS {s}.{quote(table + JSON_VIEW_SUFFIX)}")
        cur.execute(f"ALTER TABLE {t} RENAME TO {quote(old_name)}")
        for suffix in ("_pkey", "_stream_version_key"):
            cur.execute(f"ALTER TABLE {old} RENAME CONSTRAINT {quote(table + suffix)} TO {quote(old_name + suffix)}")
        cur.execute(f"DROP TRIGGER IF EXISTS {quote(table + '_append_only')} ON {old}")
        for statement in [*_parent_statements(schema, table), *_versions_statements(schema, table),
                          *_refuse_statements(schema), _protect_partition(schema, old_name)]:
            cur.execute(statement)
        cur.execute(f"INSERT INTO {s}.{quote(versions_table(table))} (stream_id, stream_version, position)"
                    f" SELECT stream_id, stream_version, position FROM {old} WHERE stream_id <> %s",
                    (VOID_STREAM,))
        cur.execute(f"ALTER TABLE {old} ADD CONSTRAINT {quote(old_name + '_bounds')}"
                    f" CHECK (position < {end})")
        cur.execute(f"ALTER TABLE {t} ATTACH PARTITION {old} FOR VALUES FROM (MINVALUE) TO ({end})")
        for statement in _partition_statements(schema, table, partition_name(table, month), end, None):
            cur.execute(statement)
        cur.execute(json_view_statement(schema, table))
    from .digest import protect_log

    protect_log(store)  # the parent's own statement triggers (the renamed table took the old ones)
    return Partition(old_name, old_month, 1, end, True)


def detach(cur: Any, schema: str, table: str, name: str) -> None:
    """Detach partition ``name`` from ``table`` (the caller holds the lock; used by archive)."""
    cur.execute(f"ALTER TABLE {quote(schema)}.{quote(table)} DETACH PARTITION {quote(schema)}.{quote(name)}")


def attach(cur: Any, schema: str, table: str, part: Partition) -> None:
    """Attach table ``part.name`` back as the closed partition it was (its ``_bounds`` CHECK, kept
    from the roll, spares the scan) and protect it."""
    cur.execute(f"ALTER TABLE {quote(schema)}.{quote(table)} ATTACH PARTITION {quote(schema)}.{quote(part.name)}"
                f" FOR VALUES FROM ({part.lower}) TO ({int(part.end)})")
    cur.execute(_protect_partition(schema, part.name))


__all__ = [
    "MONTHLY",
    "Partition",
    "PartitionError",
    "attach",
    "convert",
    "create_history",
    "create_statements",
    "detach",
    "is_partitioned",
    "list_partitions",
    "month_label",
    "partition_name",
    "partitions",
    "roll",
    "versions_table",
]
