"""A rebuild from zero: fold the whole log first, write each table's final rows once into fresh
tables, and swap them in atomically.

The paged path (``Projector.catch_up``) rewrites every row a page touched, in a transaction per
page: a busy order is written four or five times, the positions and statistics once per page.
From zero that is wasted: only the rows at the log's end matter. So the rebuild

* folds the log with the domain's own ``TradingState.apply`` and the paged path's own ``_Dirty``
  bookkeeping (the rows cannot differ in arithmetic or in the positions they carry);
* writes an order's row once, when it finishes, and forgets the order (a later event on it brings
  it back from its own stream); the rows still open at the end are written with the rest;
* writes into fresh tables (``<table>__rb<token>``) that no reader knows of, in chunks of their
  own transactions (the SQLite write lock is held a chunk at a time, never for the whole rebuild);
* swaps them in with one transaction that drops the old tables, renames the fresh ones and sets
  the tracking position: readers see the old tables until that commit and the new ones after it.
  Any failure before it (an exception, a kill) leaves the old tables and the tracking row as they
  were; fresh tables a killed rebuild left behind are dropped by the next one.

Memory is bounded by the open state, not by the history: finished orders leave memory as their
rows are written, equity points are flushed in chunks, and the fold's indexes that only the
engine needs (stream versions, execution ids) are not kept. Held: open orders, positions,
accounts with their trading days, signals, and the equity book's fill count per account-minute.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import orjson

from ..adapters.store import gc_paused
from ..adapters.store.sql import release, write_cursor
from ..domain.state import OPEN_STATUSES, OrderState, TradingState
from .tables import OPEN_ORDERS_VIEW, TABLES, TRACKING_TABLE, Dialect

if TYPE_CHECKING:
    from .projector import Projector

# Finished orders written per chunk (one transaction each), and equity points held before a flush.
ORDER_CHUNK = 20_000
EQUITY_CHUNK = 20_000
READ_PAGE = 20_000  # log rows read at a time (a projector's page may be "everything")
FRESH_MARK = "__rb"  # fresh tables are named <table>__rb<token> until the swap


class _Sink(dict):  # type: ignore[type-arg]
    """A mapping that keeps nothing: the fold's engine-only indexes (stream versions, execution
    ids and their days) are written by ``apply`` and read only by the engine's decisions, never
    by the fold itself or the read models."""

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def __getitem__(self, key: Any) -> Any:
        return _Sink()

    def __contains__(self, key: object) -> bool:
        return False

    def __delitem__(self, key: Any) -> None:
        pass


class _FinishedOrdersLeave(dict):  # type: ignore[type-arg]
    """``state.orders`` during a rebuild: finished orders are taken out (their rows already
    written); an event on one of them later folds it again from its own stream, up to the
    position the state has reached, exactly as ``apply`` had built it (an order's fields depend
    on its own stream only)."""

    def __init__(self, state: TradingState, read_stream: Callable[[str], list[Any]]):
        super().__init__()
        self.state = state
        self.read_stream = read_stream
        self.brought_back = 0

    def __missing__(self, sid: str) -> OrderState:
        reached = self.state.position
        events = [e for e in self.read_stream(sid) if e.position <= reached]
        if not events:
            raise KeyError(sid)  # never had an intent: ``apply`` quarantines the stream as before
        scratch = TradingState(self.state.exchange_tz)
        for e in events:
            scratch.position = e.position - 1  # one stream's rows: positions are not contiguous
            scratch.apply(e.position, sid, e.originator_version, e.topic, orjson.loads(e.state), e.recorded_at)
        order = scratch.orders[sid]
        order.account_state = self.state.account(order.account)  # closed: not among its open orders
        self[sid] = order
        self.brought_back += 1
        return order


def fresh_name(table: str, token: str) -> str:
    """The name of ``table``'s fresh copy during the rebuild marked ``token``."""
    return f"{table}{FRESH_MARK}{token}"


class FreshTables:
    """The fresh tables of one rebuild: created empty, filled in chunks, then swapped in."""

    def __init__(self, projector: Projector, token: str | None = None):
        self.projector = projector
        self.store = projector.store
        self.dialect: Dialect = projector.dialect
        self.token = token or secrets.token_hex(4)
        self.names = {table: fresh_name(table, self.token) for table in TABLES}

    # ---------------------------------------------------------------------------- DDL
    def _leftovers(self, cur: Any) -> list[str]:
        """Fresh tables of earlier rebuilds (killed before their swap, or failed)."""
        pattern = "ts\\_%" + FRESH_MARK.replace("_", "\\_") + "%"
        if self.dialect.is_postgres:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename LIKE %s",
                        (self.dialect.schema, pattern))
        else:
            cur.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ? ESCAPE '\\'",
                        (pattern,))
        return [row[0] for row in cur.fetchall()]

    def create(self) -> None:
        """Drop any leftover fresh tables, then create this rebuild's, empty. PostgreSQL's have no
        key yet (built once at the end, faster than row by row); SQLite's have theirs (its
        inserts replace a row written twice)."""
        d = self.dialect
        with write_cursor(self.store) as cur:
            d.ddl_lock(cur, "tradestate-projection-ddl")
            for name in self._leftovers(cur):
                cur.execute(f"DROP TABLE IF EXISTS {d.name(name)}")
            for table, name in self.names.items():
                columns, key = TABLES[table]
                cols = ", ".join(f"{c} {d.type(k)}" + (" NOT NULL" if c in key else "") for c, k in columns)
                if not d.is_postgres:
                    cols += f", PRIMARY KEY ({', '.join(key)})"
                cur.execute(f"CREATE TABLE {d.name(name)} ({cols})")

    def drop(self) -> None:
        """Drop this rebuild's fresh tables (after a failure; best effort)."""
        with write_cursor(self.store) as cur:
            for name in self.names.values():
                cur.execute(f"DROP TABLE IF EXISTS {self.dialect.name(name)}")

    # ---------------------------------------------------------------------------- rows
    def write(self, tables: list[tuple[str, list[Any]]], *, text: bool = False) -> None:
        """Write encoded rows (``Projector._encode`` form; ``text``: its text form, as a writer
        process receives them) into the fresh tables, one transaction. A row written again (an
        order brought back, an equity minute flushed twice) replaces the earlier one: SQLite by
        its key now, PostgreSQL when the keys are built (``finish``)."""
        from .projector import _PG_COPY_TYPES

        d = self.dialect
        with write_cursor(self.store) as cur:
            for table, rows in tables:
                if not rows:
                    continue
                name = d.name(self.names[table])
                columns = TABLES[table][0]
                if d.is_postgres and text:  # decimals and times as text, booleans 0/1: the server parses them
                    with cur.copy(f"COPY {name} ({', '.join(c for c, _ in columns)}) FROM STDIN") as cp:
                        for row in rows:
                            cp.write_row(row)
                elif d.is_postgres:
                    with cur.copy(f"COPY {name} ({', '.join(c for c, _ in columns)}) FROM STDIN (FORMAT BINARY)") as cp:
                        cp.set_types([_PG_COPY_TYPES[k] for _, k in columns])
                        for row in rows:
                            cp.write_row(row)
                else:
                    key = TABLES[table][1]
                    names = [c for c, _ in columns]
                    updates = ", ".join(f"{c} = excluded.{c}" for c in names if c not in key)
                    cur.executemany(
                        f"INSERT INTO {name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
                        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}", rows)

    def finish(self) -> None:
        """PostgreSQL: give each fresh table its key (under a name of its own until the swap),
        keeping the row written last where one was written twice. The later row has the higher
        ``last_position`` (an order's grows with its facts, an equity point's is its last fill),
        or the same one and the higher ctid. Physical order alone cannot say which is later: COPY
        may place rows in free space the table's earlier pages still have."""
        d = self.dialect
        if not d.is_postgres:
            return
        with write_cursor(self.store) as cur:
            for table, name in self.names.items():
                key = TABLES[table][1]
                cur.execute(f"SELECT 1 FROM {d.name(name)} GROUP BY {', '.join(key)} HAVING count(*) > 1 LIMIT 1")
                if cur.fetchone() is not None:
                    same = " AND ".join(f"a.{c} = b.{c}" for c in key)
                    cur.execute(f"DELETE FROM {d.name(name)} a USING {d.name(name)} b WHERE {same} AND "
                                "(a.last_position < b.last_position OR a.last_position = b.last_position AND a.ctid < b.ctid)")
                cur.execute(f'ALTER TABLE {d.name(name)} ADD CONSTRAINT "{name}_pkey" PRIMARY KEY ({", ".join(key)})')

    def swap(self, position: int) -> None:
        """One transaction: drop the old tables, rename the fresh ones in, recreate the indexes
        and the open-orders view, and set the tracking row to ``position``."""
        from .projector import PROJECTION, _time

        d = self.dialect
        p = d.param
        with write_cursor(self.store) as cur:
            d.ddl_lock(cur, "tradestate-projection-ddl")
            for name in self.names.values():  # a later rebuild may have dropped ours meanwhile
                if not d.table_exists(cur, name):
                    raise RuntimeError(f"the fresh table {name} is gone (another rebuild started): nothing swapped")
            cur.execute(f"DROP VIEW IF EXISTS {d.name(OPEN_ORDERS_VIEW)}")
            for table, name in self.names.items():
                cur.execute(f"DROP TABLE IF EXISTS {d.name(table)}")
                cur.execute(f"ALTER TABLE {d.name(name)} RENAME TO {d.name(table) if not d.is_postgres else _quote(table)}")
                if d.is_postgres:
                    cur.execute(f'ALTER INDEX {_quote(d.schema)}."{name}_pkey" RENAME TO "{table}_pkey"')
            for statement in d.create_statements():  # indexes, the view (the tracking table exists)
                cur.execute(statement)
            now = _time(datetime.now(timezone.utc), d.kind)
            cur.execute(
                f"INSERT INTO {d.name(TRACKING_TABLE)} (projection, position, updated_at) VALUES ({p}, {p}, {p}) "
                "ON CONFLICT (projection) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
                (PROJECTION, position, now),
            )


class _WriterProcess:
    """Writes chunks into the fresh tables in a child process, so that binding rows and the
    database's own work (SQLite's is in-process) do not compete with the fold for this
    process's GIL. Chunks go as orjson (rows in the text form), one answer per chunk; one chunk is
    in flight while the next is folded. A plain ``python -c`` child, not ``multiprocessing``
    (which would re-import the caller's main module)."""

    def __init__(self, url: str, token: str):
        import subprocess
        import sys

        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from tradestate.projections.rebuild import _write_fresh; _write_fresh()",
             url, token],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        self._pending = False

    def _died(self, error: BaseException | None = None) -> RuntimeError:
        try:
            code = self._proc.wait(2)
        except Exception:  # noqa: BLE001
            code = None
        failure = RuntimeError(f"the rebuild's writer process ended unexpectedly (exit code {code})")
        failure.__cause__ = error
        return failure

    def submit(self, tables: list[tuple[str, list[Any]]]) -> None:
        """Wait for the chunk sent before (raising its error), then send ``tables``."""
        self.result()
        data = orjson.dumps(tables)
        try:
            self._proc.stdin.write(len(data).to_bytes(8, "big"))  # type: ignore[union-attr]
            self._proc.stdin.write(data)  # type: ignore[union-attr]
            self._proc.stdin.flush()  # type: ignore[union-attr]
        except OSError as e:
            raise self._died(e) from e
        self._pending = True

    def result(self) -> None:
        """Wait for the chunk in flight, if any: return once written, else raise its error."""
        from .projector import _receive

        if not self._pending:
            return
        self._pending = False
        try:
            kind, value = _receive(self._proc.stdout)
        except (EOFError, OSError) as e:
            raise self._died(e) from e
        if kind == "error":
            raise value

    def close(self, *, kill: bool = False) -> None:
        """End the child: close its input and wait (``kill``: at once, after a failure)."""
        if kill:
            self._proc.kill()
        try:
            self._proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            self._proc.wait(10)
        except Exception:  # noqa: BLE001
            self._proc.kill()
            self._proc.wait(5)
        self._proc.stdout.close()  # type: ignore[union-attr]


def _write_fresh() -> None:
    """The writer process (argv: url, fresh-table token): write each chunk received on stdin into
    the fresh tables and answer on stdout, until stdin ends."""
    import sys

    from ..adapters.store import open_store
    from .projector import Projector, serve_requests

    url, token = sys.argv[1], sys.argv[2]
    store = open_store(url, create=False)
    fresh = FreshTables(Projector(store), token)
    try:
        serve_requests(lambda chunk: fresh.write([(table, rows) for table, rows in chunk], text=True), _receive_chunk)
    finally:
        store.close()


def _receive_chunk(source: Any) -> Any:
    """One chunk as ``_WriterProcess.submit`` sends it: 8 bytes of length, then orjson."""
    head = source.read(8)
    if len(head) < 8:
        raise EOFError("pipe closed")
    size = int.from_bytes(head, "big")
    data = source.read(size)
    if len(data) < size:
        raise EOFError("pipe closed mid-message")
    return orjson.loads(data)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def rebuild_state(projector: Projector, *, keep_state: bool = False) -> TradingState:
    """The empty state a rebuild folds into: unless ``keep_state``, finished orders leave it (and
    come back from their stream if an event names them again) and what no table shows (stream
    versions, execution-id windows) is not kept."""
    state = TradingState(projector.exchange_tz)
    if not keep_state:
        state.orders = _FinishedOrdersLeave(state, projector.store.trading.read_stream)
        state.stream_versions = _Sink()
        state.exec_ids = _Sink()
        state.exec_days = _Sink()
    return state


def fold_as_rebuilt(projector: Projector) -> int:
    """The fold ``rebuild_from_zero`` runs, alone: the same pages, decoding and state (finished
    orders leaving it), without noting rows or writing any table; returns the events folded. The
    ceiling of a rebuild's speed (``tradestate bench``)."""
    state = rebuild_state(projector)
    orders, still_open = state.orders, OPEN_STATUSES.__contains__
    folded = 0
    with gc_paused():
        loads, apply, fromiso = orjson.loads, state.apply, datetime.fromisoformat
        for rows in _pages(projector, projector.store.trading.head()):
            folded += len(rows)
            for position, stream, version, type_name, data, at in rows:
                if at.__class__ is not datetime:
                    at = fromiso(at)
                apply(position, stream, version, type_name, loads(data), at)
                if stream[0] == "o":
                    order = dict.get(orders, stream)
                    if order is not None and not still_open(order.status):
                        del orders[stream]
    return folded


def rebuild_from_zero(projector: Projector, progress: Callable[[int, int], None] | None = None,
                      *, keep_state: bool = False, writer_process: bool | None = None) -> int:
    """Fold the whole log of ``projector.store``, write every table's final rows into fresh
    tables and swap them in (see the module docstring); returns the position the tables now
    include. ``keep_state``: keep the full ``TradingState`` (every order) in ``projector.state``
    for the paged path to carry on from; otherwise finished orders leave memory as they are
    written and the projector loads its state again before its next page. ``writer_process``:
    write the chunks from a child process (default: for a log of ``PROCESS_WRITER_EVENTS`` or
    more, unless ``TRADESTATE_PROJECTOR_PROCESS=0``)."""
    from .projector import _ROW_ENCODERS, PROCESS_WRITER_EVENTS, _Dirty, _EquityBook, _order_row

    store = projector.store
    projector.create_tables()
    head = store.trading.head()
    state = rebuild_state(projector, keep_state=keep_state)
    projector.state = state
    projector.equity = book = _EquityBook()
    projector._loaded = False  # until the swap has committed, memory is ahead of the tables
    dirty = _Dirty(book)
    if writer_process is None:
        writer_process = head >= PROCESS_WRITER_EVENTS and os.environ.get("TRADESTATE_PROJECTOR_PROCESS", "1") != "0"
    text = "text" if writer_process else None
    encode = _ROW_ENCODERS[text or projector.dialect.kind]
    encode_order = encode["ts_orders"]
    fresh = FreshTables(projector)
    fresh.create()
    # A long log: chunks are written by a child process while the fold goes on. Otherwise, on
    # PostgreSQL, by a thread (the server does the work, the thread mostly waits on it); on
    # SQLite in line, between pages: its inserts are this process's own CPU, and a thread binding
    # rows only fights the fold for the GIL (at 1M events: ~8% more CPU, and no shorter).
    child = _WriterProcess(projector.store.url, fresh.token) if writer_process else None
    writer = projector._writer_thread() if child is None and projector.dialect.is_postgres else None
    pending: Any = None
    finished: list[tuple[Any, ...]] = []

    def submit(tables: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        nonlocal pending
        if child is not None:
            child.submit(tables)
            return
        if pending is not None:
            pending.result()
        if writer is None:
            fresh.write(tables)
            return
        pending = writer.submit(fresh.write, tables)

    try:
        with gc_paused():
            orders = state.orders
            still_open = OPEN_STATUSES.__contains__
            evict = not keep_state
            loads, apply, note, fromiso = orjson.loads, state.apply, dirty.note, datetime.fromisoformat
            for rows in _pages(projector, head):
                for position, stream, version, type_name, data, at in rows:
                    if at.__class__ is not datetime:  # SQLite's pages keep recorded_at as its text
                        at = fromiso(at)
                    payload = loads(data)
                    if type_name == "FillCorrected" or type_name == "FeeCharged":  # as the projector's pages
                        dirty.before_fold(state, stream, type_name, payload, position)
                    apply(position, stream, version, type_name, payload, at)
                    note(state, stream, type_name, payload, position, at)
                    if stream[0] == "o":  # a finished order's row is final (unless a late event comes)
                        order = dict.get(orders, stream)
                        if order is not None and not still_open(order.status):
                            finished.append(encode_order(_order_row(order)))
                            if evict:
                                del orders[stream]
                dirty.orders.clear()  # orders are written as they finish, or at the end
                if len(finished) >= ORDER_CHUNK or len(dirty.equity) >= EQUITY_CHUNK:
                    tables = [("ts_orders", finished)]
                    finished = []
                    if len(dirty.equity) >= EQUITY_CHUNK:
                        tables.append(("ts_equity_curve", [encode["ts_equity_curve"](r) for r in dirty.equity.values()]))
                        dirty.equity = {}
                    submit(tables)
                if progress:
                    progress(state.position, max(head, state.position))
            # what is left: the orders still open (and any other still in memory), and every
            # other table's final rows
            for stream, order in dict.items(state.orders):
                if evict or still_open(order.status):
                    dirty.orders[stream] = None
            tables = projector._encode(dirty, text)
            for i, (table, rows) in enumerate(tables):
                if table == "ts_orders":
                    tables[i] = (table, finished + rows)
                    break
            else:
                tables.append(("ts_orders", finished))
            finished = []
            submit(tables)
            if pending is not None:
                pending.result()
            pending = None
            if child is not None:
                child.result()
                child.close()
                child = None
        fresh.finish()
        fresh.swap(state.position)
    except BaseException:
        if child is not None:
            child.close(kill=True)
        if pending is not None:
            try:
                pending.result()
            except BaseException:  # noqa: BLE001 - the first error is the one to raise
                pass
        try:
            fresh.drop()
        except Exception:  # noqa: BLE001 - a leftover is dropped by the next rebuild
            pass
        projector.state = TradingState(projector.exchange_tz)
        raise
    finally:
        if writer is not None:
            writer.submit(release, store).result()  # the writer thread's connection
    projector.applied_pages += 1
    projector._loaded = keep_state
    if progress:
        progress(state.position, max(head, state.position))
    return state.position


def _pages(projector: Projector, head: int) -> Iterator[list[Any]]:
    """The log up to ``head`` in pages. PostgreSQL: one streamed read. SQLite: a read per page, so
    that no read snapshot holds back the WAL checkpoints of the chunks being written."""
    log = projector.store.trading
    batch = min(projector.page, READ_PAGE)
    if projector.dialect.is_postgres:
        with closing(log.iter_pages(0, head, batch=batch)) as pages:
            yield from pages
        return
    after = 0
    while after < head:
        with closing(log.iter_pages(after, min(head, after + batch), batch=batch)) as pages:
            rows = next(pages, None)
        if not rows:
            return
        yield rows
        after = rows[-1][0]
