"""The order-reference index: account-stream events by the ids they name, so a trace of one order
reads its events without scanning its account's stream.

An order's trace (``replay.trace``) is its own stream (read by its deterministic id, indexed) and
the account-stream events linked to it: caused by one of its events, correlated with its intent,
a risk decision naming its client order id, a reconciliation run that names it or corrected it,
and the account events of such a run. On a busy desk the account stream is a fifth of the log
(a ``RiskCheckPassed`` per order), so finding those by reading the stream is a scan of hundreds
of thousands of rows at ten million events.

``ts_order_refs`` holds (ref, position) for every account-stream event and every id it names:
its ``correlation_id``, ``causation_id``, ``client_order_id`` and ``reconciliation_id``, and for a
``ReconciliationCompleted`` each discrepancy's ``client_order_id`` and ``detail`` and each
``corrective_event_ids`` entry, and a ``FeeCharged``'s ``exec_id`` (a fee the venue reported by
execution only: the trace links it to the order that has that execution). ``ref`` is a 64-bit
hash of the id's text: a collision only adds a candidate, which the trace then tests against its
own rules like any other, so the index narrows the rows read and never decides what is linked.

It is derived data beside the log, like checkpoints: the log is never touched, deleting the two
tables loses nothing, and it is kept up to ``ts_order_refs_upto.upto`` by ``catch_up``, which
reads only the rows after that (by position range, only the account-stream ones' payloads),
never past a hole (an append still in flight on PostgreSQL), in chunks of ``CHUNK`` positions,
each in its own short write transaction. On an existing log the first ``catch_up`` indexes it
all (``tradestate replay index``; about 1.9 million account events at ten million events). A
trace catches the index up itself when it is at most ``AUTO_CATCH_UP`` positions behind and the
database takes writes; rows after ``upto`` are read by position range, so they cost what they
are; a log replaced or rewound under the index (its row at ``upto`` changed) is indexed again.

``ts_order_refs_upto.format`` says which ids the rows up to ``upto`` were indexed with (``FORMAT``;
1: before fees' exec ids). ``catch_up`` brings an older index to ``FORMAT`` first by indexing only
what it lacks (the account stream's ``FeeCharged`` rows up to ``upto``: one pass over the log's
types, not a rebuild), so ``tradestate replay index`` and a trace's own catch-up both upgrade it;
a trace that cannot (a database that takes no writes) reads the account's stream instead.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from . import TRADING_TABLE, Store, as_time
from .sql import read_cursor, write_cursor

TABLE = "ts_order_refs"
STATE_TABLE = "ts_order_refs_upto"
ACCOUNT_PREFIX = "account-"
CHUNK = 200_000  # positions per catch-up transaction
AUTO_CATCH_UP = 100_000  # a trace catches the index up itself when it is at most this far behind
_QUERY_CHUNK = 500  # ids or positions per IN (...) list
FORMAT = 2  # what the index names: 1 before a FeeCharged's exec_id; 2 with it
EXEC_REF_TYPES = ("FeeCharged",)  # account events whose exec_id is a reference (FORMAT 2)

_blake2b = hashlib.blake2b


def ref_hash(text: str) -> int:
    """The signed 64-bit hash of one id's text, as stored in ``ts_order_refs.ref``."""
    return int.from_bytes(_blake2b(text.encode(), digest_size=8).digest(), "big", signed=True)


def refs_of(type_name: str, payload: dict[str, Any]) -> set[str]:
    """The ids an account-stream event names (see the module's docstring)."""
    out = set()
    for key in ("correlation_id", "causation_id", "client_order_id", "reconciliation_id"):
        value = payload.get(key)
        if value is not None:
            out.add(str(value))
    if type_name == "ReconciliationCompleted":
        for x in payload.get("discrepancies") or ():
            if isinstance(x, dict):
                for key in ("client_order_id", "detail"):
                    if x.get(key) is not None:
                        out.add(str(x[key]))
        for value in payload.get("corrective_event_ids") or ():
            out.add(str(value))
    elif type_name in EXEC_REF_TYPES and payload.get("exec_id") is not None:
        out.add(str(payload["exec_id"]))
    return out


@dataclass(frozen=True)
class IndexState:
    """How far the index goes: every account-stream event at positions up to ``upto`` is in it,
    and ``event_id`` is the event id at ``upto`` (to notice a log replaced under it); ``format``:
    which ids those events were indexed by (``FORMAT`` when current)."""

    upto: int
    event_id: str
    format: int = FORMAT


@dataclass(frozen=True)
class CatchUp:
    """What ``catch_up`` did: the index's position before and after, account events indexed,
    refs written and seconds taken; ``upgraded``: an index of an older format was brought to
    ``FORMAT`` (its added events and refs are counted in ``events`` and ``refs``)."""

    before: int
    upto: int
    events: int
    refs: int
    seconds: float
    upgraded: bool = False


def _names(store: Store) -> tuple[str, str, str]:
    d = store.dialect
    return d.name(TABLE), d.name(STATE_TABLE), d.name(TRADING_TABLE)


def exists(store: Store) -> bool:
    """Whether the index's tables are there."""
    with read_cursor(store) as cur:
        return store.dialect.table_exists(cur, STATE_TABLE)


def create(store: Store) -> None:
    """Create the index's tables if they are not there (empty: ``upto`` 0)."""
    d = store.dialect
    refs, state, _ = _names(store)
    without_rowid = " WITHOUT ROWID" if d.is_sqlite else ""
    with write_cursor(store) as cur:
        d.ddl_lock(cur)
        cur.execute(f"CREATE TABLE IF NOT EXISTS {refs} (ref bigint NOT NULL, position bigint NOT NULL,"
                    f" PRIMARY KEY (ref, position)){without_rowid}")
        cur.execute(f"CREATE TABLE IF NOT EXISTS {state} (id integer PRIMARY KEY, upto bigint NOT NULL,"
                    " event_id text NOT NULL, format integer NOT NULL DEFAULT 1)")
        if not _has_format(store, cur):  # an index made before ``format`` existed: of format 1
            cur.execute(f"ALTER TABLE {state} ADD COLUMN format integer NOT NULL DEFAULT 1")


def _has_format(store: Store, cur: Any) -> bool:
    """Whether the state table has its ``format`` column (asked first: on PostgreSQL an ALTER
    locks the table even when it changes nothing)."""
    d = store.dialect
    if d.is_postgres:
        cur.execute("SELECT count(*) FROM information_schema.columns WHERE table_schema = %s"
                    " AND table_name = %s AND column_name = 'format'", (d.schema, STATE_TABLE))
    else:
        cur.execute(f"SELECT count(*) FROM pragma_table_info('{STATE_TABLE}') WHERE name = 'format'")
    return bool(cur.fetchone()[0])


def state(store: Store) -> IndexState | None:
    """How far the index goes (None: no index in this database)."""
    if not exists(store):
        return None
    with read_cursor(store) as cur:
        has_format = _has_format(store, cur)  # not yet: an index made before it (format 1)
        cur.execute(f"SELECT upto, event_id{', format' if has_format else ''} FROM {_names(store)[1]} WHERE id = 1")
        row = cur.fetchone()
    if row is None:
        return IndexState(0, "")
    return IndexState(int(row[0]), row[1], int(row[2]) if has_format else 1)


def _event_id_at(store: Store, position: int) -> str | None:
    """The event id of the row at ``position`` ("" for position 0; None: no row there)."""
    if position == 0:
        return ""
    p = store.dialect.param
    with read_cursor(store) as cur:
        cur.execute(f"SELECT type, data FROM {_names(store)[2]} WHERE position = {p}", (position,))
        row = cur.fetchone()
    if row is None:
        return None
    if row[0] == "$void":
        return "$void"
    return str(orjson.loads(bytes(row[1])).get("event_id", ""))


def _contiguous_end(store: Store, after: int, hi: int) -> int:
    """The last position of ``after+1..hi`` before the first hole (PostgreSQL: an append still in
    flight holds a position it has not written yet); SQLite has one writer at a time, no holes."""
    if store.dialect.is_sqlite or hi <= after:
        return hi
    p = store.dialect.param
    table = _names(store)[2]
    with read_cursor(store) as cur:
        cur.execute(f"SELECT count(*) FROM {table} WHERE position > {p} AND position <= {p}", (after, hi))
        if int(cur.fetchone()[0]) == hi - after:
            return hi
        cur.execute(f"SELECT position FROM {table} WHERE position > {p} AND position <= {p} ORDER BY position",
                    (after, hi))
        expected = after + 1
        for (position,) in cur.fetchall():
            if position != expected:
                break
            expected += 1
    return expected - 1


def _account_rows(store: Store, after: int, hi: int) -> list[tuple[int, str, bytes]]:
    """(position, type, payload) of the account-stream rows with ``after < position <= hi``."""
    p = store.dialect.param
    table = _names(store)[2]
    with read_cursor(store) as cur:
        cur.execute(f"SELECT position, type, data FROM {table} WHERE position > {p} AND position <= {p}"
                    f" AND substr(stream_id, 1, {len(ACCOUNT_PREFIX)}) = '{ACCOUNT_PREFIX}' ORDER BY position",
                    (after, hi))
        return [(int(r[0]), r[1], bytes(r[2])) for r in cur.fetchall()]


def catch_up(store: Store, *, limit: int | None = None, progress: Any = None) -> CatchUp:
    """Index the account-stream events after the index's ``upto`` (creating the index first if it
    is not there, and starting again from zero if the log was replaced under it), up to the head,
    or ``limit`` positions further when given; returns what it did. ``progress(upto, head)`` is
    called after each chunk. Raises the database's error where the database takes no writes."""
    started = time.perf_counter()
    create(store)
    current = state(store) or IndexState(0, "")
    head = store.trading.head()
    if current.upto > head or _event_id_at(store, current.upto) != current.event_id:
        _reset(store)
        current = IndexState(0, "")
    events = refs = 0
    upgraded = current.format < FORMAT
    while current.format < FORMAT:  # an older index: add what it lacks up to its ``upto`` first
        added = _upgrade(store, current)
        if added is not None:
            events, refs = added
            current = IndexState(current.upto, current.event_id, FORMAT)
        else:  # another catch-up moved it meanwhile: again from where it is
            current = state(store) or IndexState(0, "")
    before, upto = current.upto, current.upto
    stop = head if limit is None else min(head, upto + limit)
    while upto < stop:
        hi = _contiguous_end(store, upto, min(stop, upto + CHUNK))
        if hi <= upto:
            break  # a hole right after ``upto``: the rest waits for that append
        rows = _account_rows(store, upto, hi)
        pairs = _pairs(rows)
        event_id = _event_id_at(store, hi) or ""
        if not _write(store, upto, hi, event_id, pairs):
            current = state(store) or IndexState(0, "")  # another catch-up moved it: go on from there
            upto = max(upto, current.upto)
            continue
        events += len(rows)
        refs += len(pairs)
        upto = hi
        if progress is not None:
            progress(upto, stop)
    return CatchUp(before, upto, events, refs, time.perf_counter() - started, upgraded)


def _upgrade(store: Store, current: IndexState) -> tuple[int, int] | None:
    """Bring an index of an older format to ``FORMAT``: index the ``EXEC_REF_TYPES`` account
    events up to its ``upto`` (read by type: the only rows format 1 lacks refs for) and mark it
    current, in one transaction; (events, refs) added, or None (nothing written) if another
    catch-up moved it meanwhile."""
    d = store.dialect
    p = d.param
    table = _names(store)[2]
    types = ", ".join(f"'{t}'" for t in EXEC_REF_TYPES)
    with read_cursor(store) as cur:
        cur.execute(f"SELECT position, type, data FROM {table} WHERE position <= {p} AND type IN ({types})"
                    f" AND substr(stream_id, 1, {len(ACCOUNT_PREFIX)}) = '{ACCOUNT_PREFIX}'", (current.upto,))
        rows = [(int(r[0]), r[1], bytes(r[2])) for r in cur.fetchall()]
    pairs = _pairs(rows)
    if not _write(store, current.upto, current.upto, current.event_id, pairs, expected_format=current.format):
        return None
    return len(rows), len(pairs)


def _pairs(rows: list[tuple[int, str, bytes]]) -> list[tuple[int, int]]:
    """The (ref hash, position) pairs of account-stream rows (position, type, payload)."""
    return sorted({(ref_hash(ref), position) for position, type_name, data in rows
                   for ref in refs_of(type_name, orjson.loads(data))})


def _write(store: Store, expected: int, upto: int, event_id: str, pairs: list[tuple[int, int]], *,
           expected_format: int = FORMAT) -> bool:
    """Insert ``pairs`` and move the index from ``expected`` (of ``expected_format``) to ``upto``
    (of ``FORMAT``), in one transaction; False (nothing written) if another catch-up moved it
    meanwhile."""
    d = store.dialect
    p = d.param
    refs, state_table, _ = _names(store)
    lock = " FOR UPDATE" if d.is_postgres else ""
    with write_cursor(store) as cur:
        cur.execute(f"SELECT upto, format FROM {state_table} WHERE id = 1{lock}")
        row = cur.fetchone()
        if (int(row[0]) if row else 0) != expected or (row is not None and int(row[1]) != expected_format):
            return False
        if pairs:
            insert = (f"INSERT OR IGNORE INTO {refs} (ref, position) VALUES ({p}, {p})" if d.is_sqlite else
                      f"INSERT INTO {refs} (ref, position) VALUES ({p}, {p}) ON CONFLICT DO NOTHING")
            cur.executemany(insert, pairs)
        if row is None:
            cur.execute(f"INSERT INTO {state_table} (id, upto, event_id, format) VALUES (1, {p}, {p}, {p})",
                        (upto, event_id, FORMAT))
        else:
            cur.execute(f"UPDATE {state_table} SET upto = {p}, event_id = {p}, format = {p} WHERE id = 1",
                        (upto, event_id, FORMAT))
    return True


def _reset(store: Store) -> None:
    refs, state_table, _ = _names(store)
    with write_cursor(store) as cur:
        cur.execute(f"DELETE FROM {refs}")
        cur.execute(f"DELETE FROM {state_table}")


def positions(store: Store, ids: Iterable[str], *, after: int = 0, upto: int) -> set[int]:
    """Positions in ``after < position <= upto`` of the indexed account-stream events naming any
    of ``ids`` (a superset: a hash collision adds a position)."""
    hashes = sorted({ref_hash(i) for i in ids})
    p = store.dialect.param
    table = _names(store)[0]
    out: set[int] = set()
    with read_cursor(store) as cur:
        for k in range(0, len(hashes), _QUERY_CHUNK):
            part = hashes[k:k + _QUERY_CHUNK]
            cur.execute(f"SELECT position FROM {table} WHERE ref IN ({', '.join([p] * len(part))})"
                        f" AND position > {p} AND position <= {p}", (*part, after, upto))
            out.update(int(r[0]) for r in cur.fetchall())
    return out


def rows_at(store: Store, stream_id: str, wanted: Iterable[int]) -> list[tuple[Any, ...]]:
    """The rows (position, stream, version, type, data, recorded_at as a datetime) of ``stream_id``
    at the ``wanted`` positions, in position order."""
    wanted = sorted(set(wanted))
    p = store.dialect.param
    table = _names(store)[2]
    out = []
    with read_cursor(store) as cur:
        for k in range(0, len(wanted), _QUERY_CHUNK):
            part = wanted[k:k + _QUERY_CHUNK]
            cur.execute(f"SELECT position, stream_id, stream_version, type, data, recorded_at FROM {table}"
                        f" WHERE position IN ({', '.join([p] * len(part))}) AND stream_id = {p}", (*part, stream_id))
            out.extend(cur.fetchall())
    if len(out) < len(wanted) and _archived_upto(store):  # archived events: only those rows, from the files
        missing = set(wanted) - {r[0] for r in out}
        out += [r for r in store.trading.archived_rows(missing) if r[1] == stream_id]
    return [(r[0], r[1], r[2], r[3], bytes(r[4]), as_time(r[5])) for r in sorted(out, key=lambda r: r[0])]


def _archived_upto(store: Store) -> int:
    """The last archived position of the trading log (0: none, and always on SQLite)."""
    return getattr(store.trading, "archived_upto", lambda: 0)()


def rows_after(store: Store, stream_id: str, after: int) -> list[tuple[Any, ...]]:
    """The rows of ``stream_id`` after position ``after`` (the part the index does not hold yet),
    read by position range: they cost what they are."""
    d = store.dialect
    p = d.param
    table = _names(store)[2]
    # SQLite would take the (stream_id, stream_version) index and walk the whole stream; a unary
    # plus keeps it on the position range. PostgreSQL weighs both by its statistics.
    stream = "+stream_id" if d.is_sqlite else "stream_id"
    with read_cursor(store) as cur:
        cur.execute(f"SELECT position, stream_id, stream_version, type, data, recorded_at FROM {table}"
                    f" WHERE position > {p} AND {stream} = {p} ORDER BY position", (after, stream_id))
        rows = cur.fetchall()
    if after < _archived_upto(store):  # part of the range is archived: only the stream's rows there, from the files
        seen = {r[0] for r in rows}
        rows = sorted(rows + [r for r in store.trading.archived_stream(stream_id, after_position=after)
                              if r[0] not in seen], key=lambda r: r[0])
    return [(r[0], r[1], r[2], r[3], bytes(r[4]), as_time(r[5])) for r in rows]
