"""The projector: folds the log into the SQL read models, exactly once.

It keeps the domain's ``TradingState`` in memory (the same fold the client uses, so tables and
client can never disagree on arithmetic), applies a page of log rows to it, and writes every row
that page touched together with the tracking row, in one transaction. A crash at any point
leaves the tables at the last committed page; a restart folds the log up to the tracked position
(the state the tables hold) and carries on from there. The tracking row is checked inside the
transaction, so two projectors racing on the same tables cannot apply a page twice.
"""

from __future__ import annotations

import gc
import os
import pickle
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

import orjson

from ..adapters.store import Store, gc_paused
from ..adapters.store.sql import POSTGRESQL, SQLITE, read_cursor, release, write_cursor
from ..domain.instruments import ACCOUNT_CURRENCY, InstrumentSpec, instrument_rate
from ..domain.risk import limit_usage
from ..domain.state import ZERO, OrderState, PositionState, TradingState
from .tables import SCHEMA_FINGERPRINT, SCHEMA_ROW, TABLES, TRACKING_TABLE, Dialect

PROJECTION = "trading"
# A backlog at least this long is committed by a writer *process*: the fold and the database
# writes then use two cores (a writer thread shares the GIL with the fold; the page's rows cross
# a pipe already encoded). TRADESTATE_PROJECTOR_PROCESS=0 keeps every commit in-process.
PROCESS_WRITER_EVENTS = 200_000

Progress = Callable[[int, int], None]  # (position reached, log head)


class ProjectionConflict(RuntimeError):
    """Another projector advanced the tables meanwhile; reload and carry on."""


class Projector:
    """Folds the trading log of ``store`` into the read-model tables, a page (``page`` rows) at a time,
    each page's rows and the tracking position committed in one transaction: exactly once, even with
    several projectors on the same tables (the loser of a race gets ``ProjectionConflict``). Trading
    days are cut in ``exchange_tz``."""

    # Rows of one table above which a PostgreSQL page goes in by COPY; a live follower raises it
    # out of reach for its small pages, which it sends pipelined (COPY cannot run in a pipeline).
    copy_above = 20

    def __init__(self, store: Store, *, exchange_tz: str = "America/New_York", page: int = 20_000):
        self.store = store
        self.dialect = Dialect(store.kind, store.trading.schema)
        self.exchange_tz = exchange_tz
        self.page = page
        self.state = TradingState(exchange_tz)
        self.applied_pages = 0
        self.equity = _EquityBook()
        # staging tables created, per database session (PostgreSQL temp tables live and die with
        # their connection: after a reconnect they must be created again)
        self._staged: set[tuple[int, int, str]] = set()
        self._loaded = False  # load() folds the log up to the tables' position before any page
        self._writer: ThreadPoolExecutor | None = None  # commits pages while the next one is folded
        self._text_pages = False  # pages for a writer process: rows in text form, sent as JSON
        # During a catch-up on PostgreSQL: one read of the log for all its pages (a long one
        # streams: the server sends ahead while pages are folded). SQLite reads page by page, so
        # that no read snapshot holds back the WAL checkpoints of the pages being written.
        self._pages: Iterator[list[Any]] | None = None
        self._page_transaction: Callable[[], AbstractContextManager[Any]] | None = None  # see pages_in

    # ------------------------------------------------------------------------ database
    def _transaction(self) -> AbstractContextManager[Any]:
        """A cursor in one write transaction (SQLite: BEGIN IMMEDIATE; PostgreSQL: the log's
        pinned connection), or the one ``pages_in`` set."""
        if self._page_transaction is not None:
            return self._page_transaction()
        return write_cursor(self.store)

    @contextmanager
    def pages_in(self, transaction: Callable[[], AbstractContextManager[Any]], *,
                 copy_above: int | None = None) -> Iterator[None]:
        """Within the block, each page is written inside ``transaction()`` (a context manager giving
        a cursor in one write transaction that commits on a clean exit and leaves nothing on an
        error) instead of the store's own write transaction, and with ``copy_above`` (if given) as
        the rows of one table above which a PostgreSQL page goes in by COPY. The page's rows and
        tracking position still commit together; how durably is the transaction's business."""
        previous = (self._page_transaction, self.copy_above)
        self._page_transaction = transaction
        if copy_above is not None:
            self.copy_above = copy_above
        try:
            yield
        finally:
            self._page_transaction, self.copy_above = previous

    def create_tables(self) -> None:
        """Create the tables; tables of another shape (an older version) are dropped first, and
        the tracking with them, so the projector rebuilds them from the log."""
        p = self.dialect.param
        with self._transaction() as cur:
            self.dialect.ddl_lock(cur, "tradestate-projection-ddl")
            statements = self.dialect.create_statements()
            cur.execute(_tracking_ddl(self.dialect))
            cur.execute(f"SELECT position FROM {self.dialect.name(TRACKING_TABLE)} WHERE projection = {p}",
                        (SCHEMA_ROW,))
            row = cur.fetchone()
            if row is not None and row[0] != SCHEMA_FINGERPRINT or row is None and self._has_tables(cur):
                for statement in self.dialect.drop_statements():
                    cur.execute(statement)
            for statement in statements:
                cur.execute(statement)
            cur.execute(
                f"INSERT INTO {self.dialect.name(TRACKING_TABLE)} (projection, position) VALUES ({p}, {p}) "
                "ON CONFLICT (projection) DO UPDATE SET position = excluded.position",
                (SCHEMA_ROW, SCHEMA_FINGERPRINT),
            )

    def _has_tables(self, cur: Any) -> bool:
        return self.dialect.table_exists(cur, "ts_orders")

    def tracked_position(self) -> int:
        """The last log position the tables include (a plain read: no write lock)."""
        sql = (f"SELECT position FROM {self.dialect.name(TRACKING_TABLE)} "
               f"WHERE projection = {self.dialect.param}")
        try:
            with read_cursor(self.store) as cur:
                row = cur.execute(sql, (PROJECTION,)).fetchone()
        except Exception as e:  # noqa: BLE001 - no tables yet means nothing projected yet
            if "no such table" in str(e) or "does not exist" in str(e):
                return 0
            raise
        return row[0] if row else 0

    def _tracked(self, cur: Any) -> int:
        p = self.dialect.param
        lock = " FOR UPDATE" if self.dialect.is_postgres else ""
        if self.dialect.is_postgres:
            # FOR UPDATE locks nothing while the row is missing (a first page, or after a
            # rebuild deleted it): two projectors would both read 0 and both apply the page.
            # Create it first: a concurrent creator makes this insert wait for its commit, and
            # the SELECT below then sees the position it committed.
            cur.execute(
                f"INSERT INTO {self.dialect.name(TRACKING_TABLE)} (projection, position, updated_at) "
                f"VALUES ({p}, 0, now()) ON CONFLICT (projection) DO NOTHING",
                (PROJECTION,),
            )
        cur.execute(f"SELECT position FROM {self.dialect.name(TRACKING_TABLE)} WHERE projection = {p}{lock}",
                    (PROJECTION,))
        row = cur.fetchone()
        return row[0] if row else 0

    # ----------------------------------------------------------------------------- run
    def load(self) -> int:
        """Fold the log up to the tracked position: the state the tables hold."""
        self.create_tables()
        target = self.tracked_position()
        self.state = TradingState(self.exchange_tz)
        # The equity book is replayed fill by fill, as the pages built it: its running totals
        # (kept by difference) and per-minute fill counts then do not depend on where the log
        # was split into pages or where a restart happened (a book rebuilt from the positions
        # would restart the counts at 0 and round the totals differently).
        self.equity = book = _EquityBook()
        with gc_paused():
            state = self.state
            apply, loads = state.apply, orjson.loads
            for position, stream, version, type_name, data, at in self.store.trading.iter_rows(0, target):
                payload = loads(data)
                apply(position, stream, version, type_name, payload, at)
                if type_name == "OrderFilled" and stream not in state.quarantined_streams:
                    order = state.orders[stream]
                    book.after_fill(state, (order.account, order.venue, order.symbol),
                                    _fill_minute(payload, at), position)
                elif (type_name == "FeeCharged" or type_name == "FillCorrected") \
                        and stream not in state.quarantined_streams:
                    book.after_venue_change(state, stream, payload)
        if self.state.position != target:
            raise RuntimeError(f"the log ends at {self.state.position}, the tables claim {target}")
        self._loaded = True
        return target

    def run_once(self, limit: int | None = None) -> int:
        """Apply one page of new events; returns how many log rows it covered."""
        page = self._next_page(limit)
        if page is None:
            return 0
        self._commit_or_reload(page)
        return page.rows

    def _next_page(self, limit: int | None = None) -> _Page | None:
        """Read a page of the log, fold it, and encode the rows it touched (the tables are not
        written yet)."""
        if not self._loaded:
            self.load()
        start = self.state.position
        rows = None
        if self._pages is not None and limit is None:
            rows = next(self._pages, None)
            if rows is None:  # the backlog is read: what came since, page by page
                self._pages.close()
                self._pages = None
            elif rows[0][0] != start + 1:  # never: the read continues where the state is
                raise RuntimeError(f"the log read continued at {rows[0][0]}, the state is at {start}")
        if rows is None:
            size = limit or self.page
            with closing(self.store.trading.iter_pages(start, start + size, batch=size)) as pages:
                rows = next(pages, None)
        if not rows:
            return None
        dirty = _Dirty(self.equity)
        state = self.state
        with gc_paused():
            loads, apply, note, fromiso = orjson.loads, state.apply, dirty.note, datetime.fromisoformat
            for position, stream, version, type_name, data, at in rows:
                if at.__class__ is not datetime:  # SQLite's pages keep recorded_at as its text
                    at = fromiso(at)
                payload = loads(data)
                if type_name == "FillCorrected" or type_name == "FeeCharged":  # what the fold is about to drop
                    dirty.before_fold(state, stream, type_name, payload, position)
                apply(position, stream, version, type_name, payload, at)
                note(state, stream, type_name, payload, position, at)
        text = self._text_pages
        return _Page(start, state.position, len(rows), self._encode(dirty, "text" if text else None),
                     list(dirty.accounts), text, dirty.deletes())

    def _commit(self, page: _Page) -> None:
        """Write a page's rows and move the tracking row, in one transaction."""
        with self._transaction() as cur:
            if self._tracked(cur) != page.start:
                raise ProjectionConflict(f"tables moved past {page.start} under us")
            if page.accounts:
                p = self.dialect.param
                for account in page.accounts:
                    cur.execute(f"DELETE FROM {self.dialect.name('ts_risk_usage')} WHERE account = {p}", (account,))
            for table, keys in page.deletes:
                cur.executemany(self.dialect.delete(table), keys)
            for table, rows in page.tables:
                self._upsert(cur, table, rows, text=page.text)
            self._track(cur, page.end)
        self.applied_pages += 1

    def _commit_or_reload(self, page: _Page) -> None:
        try:
            self._commit(page)
        except BaseException:
            # The page did not land: forget it in memory too (the fold cannot be undone).
            self.load()
            raise

    def catch_up(self, progress: Progress | None = None, *, writer_process: bool | None = None) -> int:
        """Apply pages until the log's contiguous end; returns the position reached.

        Pipelined: while one page commits on a writer thread, the next is read and folded here
        (the drivers release the GIL while the database works). A long backlog (at least
        ``PROCESS_WRITER_EVENTS``, or ``writer_process=True``) is committed by a writer process
        instead, so that binding and writing rows do not compete with the fold for the GIL.
        Pages still commit one at a time and in order, each checking the tracking row it starts
        from, in one transaction with its rows."""
        if not self._loaded:
            self.load()
        head = self.store.trading.head()
        start = self.state.position
        if writer_process is None:
            writer_process = (head - start >= PROCESS_WRITER_EVENTS
                              and os.environ.get("TRADESTATE_PROJECTOR_PROCESS", "1") != "0")
        # The whole catch-up without the cyclic collector: between pages it would otherwise
        # rescan the ever larger state (a full collection per few pages at a million events).
        if writer_process:
            writer: Any = _ProcessWriter(self.store.url, self.exchange_tz)
            self._text_pages = True
        else:
            writer = self._writer_thread()
        if self.dialect.is_postgres and head - start > 2 * self.page:
            self._pages = self.store.trading.iter_pages(start, head, batch=self.page)
        with gc_paused():
            pending: Any = None
            try:
                while (page := self._next_page()) is not None:
                    if pending is not None:
                        pending.result()
                        if progress:
                            progress(page.start, max(head, page.start))
                    pending = writer.submit(self._commit, page)
                if pending is not None:
                    pending.result()
            except BaseException:
                if pending is not None:
                    pending.cancel()
                    try:
                        pending.result()
                    except BaseException:  # noqa: BLE001 - the first error is the one to raise
                        pass
                self.load()  # memory may be ahead of the tables: fold again up to what landed
                raise
            finally:
                if self._pages is not None:
                    self._pages.close()  # a read left early (an error): psycopg cancels it
                    self._pages = None
                if writer_process:
                    self._text_pages = False
                    writer.close()
                    self.applied_pages += writer.pages  # committed by the child's _commit
                else:
                    writer.submit(release, self.store).result()  # the writer thread's connection
            if self.state.position - start > 10_000:
                # The state is long-lived: keep it out of future collections. Frozen before the
                # collector is back, or its first pass walks the whole state (0.7 s at 1M events).
                gc.freeze()
        if progress:
            progress(self.state.position, max(head, self.state.position))
        return self.state.position

    def rebuild(self, progress: Progress | None = None, *, keep_state: bool = False,
                writer_process: bool | None = None) -> int:
        """Rebuild every table from zero: fold the whole log, write each table's final rows once
        into fresh tables and swap them in atomically with the tracking position
        (``projections.rebuild``). Readers see the old tables until the swap commits; a failure
        (or ``progress`` raising) before it leaves the old tables and tracking row unchanged.
        ``keep_state``: keep the whole folded state for the paged path to carry on from (else
        finished orders leave memory as they are written, and the next page loads the state).
        ``writer_process``: the fresh tables are written by a child process (default: for a log
        of ``PROCESS_WRITER_EVENTS`` or more)."""
        from .rebuild import rebuild_from_zero

        return rebuild_from_zero(self, progress, keep_state=keep_state, writer_process=writer_process)

    def rebuild_in_pages(self, progress: Progress | None = None, *, writer_process: bool | None = None) -> int:
        """Empty every table and fold the whole log into them again through the paged path, a
        page per transaction (the reference the fast ``rebuild`` is tested against)."""
        self.create_tables()
        with self._transaction() as cur:
            for table in TABLES:
                cur.execute(f"DELETE FROM {self.dialect.name(table)}")
            cur.execute(f"DELETE FROM {self.dialect.name(TRACKING_TABLE)} WHERE projection = {self.dialect.param}",
                        (PROJECTION,))
        self.state = TradingState(self.exchange_tz)
        self.equity = _EquityBook()
        self._loaded = True
        return self.catch_up(progress, writer_process=writer_process)

    def _writer_thread(self) -> ThreadPoolExecutor:
        """The projector's one writer thread (on PostgreSQL each thread keeps its own connection,
        so a thread per catch-up would leak one per call)."""
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="projector-writer")
        return self._writer

    def lag(self) -> tuple[int, int]:
        """(log head, tracked position)."""
        return self.store.trading.head(), self.tracked_position()

    # --------------------------------------------------------------------------- writing
    def _track(self, cur: Any, position: int) -> None:
        p = self.dialect.param
        now = _time(datetime.now(timezone.utc), self.dialect.kind)
        cur.execute(
            f"INSERT INTO {self.dialect.name(TRACKING_TABLE)} (projection, position, updated_at) VALUES ({p}, {p}, {p}) "
            "ON CONFLICT (projection) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
            (PROJECTION, position, now),
        )

    def _upsert(self, cur: Any, table: str, rows: list[tuple[Any, ...]], *, text: bool = False) -> None:
        if not rows:
            return
        if text and self.dialect.is_postgres:
            # Rows in their text form (decimals and times as strings, booleans 0/1: what a
            # writer process receives): a text COPY lets the server parse them.
            staging = self._staging(cur, table)
            columns = [c for c, _ in TABLES[table][0]]
            with cur.copy(f"COPY {staging} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cur.execute(self.dialect.upsert_from(table, staging))
            return
        if self.dialect.is_postgres and len(rows) > self.copy_above:
            # A page's rows go in by binary COPY into a session-private staging table, then one
            # INSERT ... SELECT ... ON CONFLICT: far cheaper than a statement (or array) per row.
            staging = self._staging(cur, table)
            columns = [c for c, _ in TABLES[table][0]]
            with cur.copy(f"COPY {staging} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types([_PG_COPY_TYPES[k] for _, k in TABLES[table][0]])
                for row in rows:
                    copy.write_row(row)
            cur.execute(self.dialect.upsert_from(table, staging))
        else:
            cur.executemany(self.dialect.upsert(table), rows)

    def _staging(self, cur: Any, table: str) -> str:
        """The session-private staging table of ``table`` (PostgreSQL), created once per connection."""
        staging = f"ts_staging_{table}"
        session = (id(cur.connection), cur.connection.info.backend_pid, table)
        if session not in self._staged:
            cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {staging} "
                        f"(LIKE {self.dialect.name(table)}) ON COMMIT DELETE ROWS")
            self._staged.add(session)
        return staging

    def _encode(self, dirty: _Dirty, kind: str | None = None) -> list[tuple[str, list[tuple[Any, ...]]]]:
        """The rows a page touched, from the state at the page's end, ready for the driver
        (``kind`` "sqlite": the text form, which a PostgreSQL text COPY takes too)."""
        state = self.state
        conv = _ROW_ENCODERS[kind or self.dialect.kind]
        tables: list[tuple[str, list[tuple[Any, ...]]]] = []
        if dirty.orders:
            tables.append(("ts_orders", [conv["ts_orders"](_order_row(state.orders[s])) for s in dirty.orders]))
        if dirty.positions:
            tables.append(("ts_positions", [conv["ts_positions"](_position_row(state.positions[k], pos))
                                            for k, pos in dirty.positions.items()]))
        if dirty.days:
            tables.append(("ts_daily_stats", [conv["ts_daily_stats"](_day_row(state, a, d, pos))
                                              for (a, d), pos in dirty.days.items()]))
        if dirty.accounts:
            # Time-dependent values are taken at the account's own last event, so the rows do not
            # depend on how the log was split into pages. (_commit deletes the accounts' usage rows
            # first: a removed limit must disappear.)
            tables.append(("ts_risk_state", [conv["ts_risk_state"](_risk_row(state, a, pos))
                                             for a, (pos, _o, _at) in dirty.accounts.items()]))
            tables.append(("ts_risk_usage", [
                conv["ts_risk_usage"](r) for a, (pos, occurred, at) in dirty.accounts.items()
                for r in _usage_rows(state, a, pos, datetime.fromisoformat(occurred) if occurred else at)]))
        if dirty.signals:
            tables.append(("ts_signals", [conv["ts_signals"](_signal_row(state.signals[k])) for k in dirty.signals]))
        if dirty.equity:
            tables.append(("ts_equity_curve", [conv["ts_equity_curve"](r) for r in dirty.equity.values()]))
        if dirty.accounts:
            tables.append(("ts_cash", [conv["ts_cash"](r) for a, (pos, _o, _at) in dirty.accounts.items()
                                       for r in _cash_rows(state, a, pos)]))
        fees = [conv["ts_fees_pending"](r) for r in dirty.fees.values() if r is not None]
        if fees:
            tables.append(("ts_fees_pending", fees))
        if dirty.instruments:
            tables.append(("ts_instruments", [conv["ts_instruments"](_instrument_row(state.instruments[s]))
                                              for s in dirty.instruments if s in state.instruments]))
        if dirty.fx:
            tables.append(("ts_fx_rates", [conv["ts_fx_rates"](r) for r in dirty.fx.values()]))
        if dirty.corporate:
            tables.append(("ts_corporate_actions", [conv["ts_corporate_actions"](r) for r in dirty.corporate.values()]))
        return tables


class _ProcessWriter:
    """Commits pages in a child process, in order, one transaction each (``Projector._commit``
    there: the same tracking check). Its interface is the writer thread's: ``submit`` returns a
    handle whose ``result()`` waits for that page and raises what the commit raised.

    The child is a plain ``python -c`` subprocess talking length-prefixed pickles over its
    stdin/stdout, not ``multiprocessing``: that would re-import the caller's main module, which a
    script without an ``if __name__ == "__main__"`` guard cannot survive."""

    def __init__(self, url: str, exchange_tz: str):
        import subprocess
        import sys

        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from tradestate.projections.projector import _commit_pages; _commit_pages()",
             url, exchange_tz],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        self._pending = False
        self.pages = 0

    def _died(self, error: BaseException | None = None) -> RuntimeError:
        try:
            code = self._proc.wait(2)
        except Exception:  # noqa: BLE001
            code = None
        failure = RuntimeError(f"the projector's writer process ended unexpectedly (exit code {code})")
        failure.__cause__ = error
        return failure

    def submit(self, _commit: Any, page: _Page) -> _ProcessWriter:
        """Send ``page`` to the writer process; its outcome comes from ``result``. Raises
        ``RuntimeError`` when the process has died."""
        try:
            _send_page_json(self._proc.stdin, page)  # rows in text form: JSON beats pickle
        except OSError as e:
            raise self._died(e) from e
        self._pending = True
        return self

    def result(self) -> None:
        """Wait for the outcome of the page sent last: return once committed, re-raise the child's
        error, ``RuntimeError`` when the process has died. No-op with nothing pending."""
        if not self._pending:
            return
        self._pending = False
        try:
            kind, value = _receive(self._proc.stdout)
        except (EOFError, OSError) as e:
            raise self._died(e) from e
        if kind == "error":
            raise value
        self.pages += 1

    def cancel(self) -> bool:
        """Always False: a page sent is committed or refused by the child, and ``result`` says which."""
        return False  # a page sent is committed or refused by the child; result() says which

    def close(self) -> None:
        """Close the child's input and wait for it to exit (killed after 10 s)."""
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


_LENGTH = 8


def _send(stream: Any, value: Any) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(len(data).to_bytes(_LENGTH, "big"))
    stream.write(data)
    stream.flush()


_JSON_PAGE = 1 << 63  # a length with this bit set announces an orjson-encoded _Page


def _send_page_json(stream: Any, page: _Page) -> None:
    data = orjson.dumps((page.start, page.end, page.rows, page.tables, page.accounts, page.text, page.deletes))
    stream.write((len(data) | _JSON_PAGE).to_bytes(_LENGTH, "big"))
    stream.write(data)
    stream.flush()


def _receive(stream: Any) -> Any:
    head = stream.read(_LENGTH)
    if len(head) < _LENGTH:
        raise EOFError("pipe closed")
    size = int.from_bytes(head, "big")
    json_page = bool(size & _JSON_PAGE)
    size &= ~_JSON_PAGE
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("pipe closed mid-message")
    if json_page:
        start, end, rows, tables, accounts, text, deletes = orjson.loads(data)
        return _Page(start, end, rows, [(name, table_rows) for name, table_rows in tables], accounts, text,
                     [(name, keys) for name, keys in deletes])
    return pickle.loads(data)


def _commit_pages() -> None:
    """The writer process (argv: url, exchange time zone): commit each page received on stdin and
    answer on stdout, until stdin ends (the parent closed it, exited or was killed: a page already
    received is committed or not, atomically)."""
    import sys

    from ..adapters.store import open_store

    url, exchange_tz = sys.argv[1], sys.argv[2]
    store = open_store(url, create=False)
    projector = Projector(store, exchange_tz=exchange_tz)
    try:
        serve_requests(projector._commit, _receive)
    finally:
        store.close()


def serve_requests(handle: Callable[[Any], None], receive: Callable[[Any], Any]) -> None:
    """A writer process's loop: ``handle`` each message ``receive`` reads from stdin and answer
    ``("ok", None)`` or ``("error", exception)`` on stdout, until stdin ends (``receive`` raises
    EOFError: the parent closed it, exited or was killed) or stdout is gone. Messages are
    short-lived acyclic rows: the cyclic collector stays off."""
    import sys

    source, sink = sys.stdin.buffer, sys.stdout.buffer
    gc.disable()
    while True:
        try:
            message = receive(source)
        except EOFError:
            return
        try:
            handle(message)
            reply: tuple[str, Any] = ("ok", None)
        except BaseException as e:  # noqa: BLE001 - sent back and raised in the parent
            reply = ("error", _picklable(e))
        try:
            _send(sink, reply)
        except OSError:
            return


def _picklable(error: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(error).__name__}: {error}")


@dataclass(frozen=True)
class _Page:
    start: int  # tracked position the page applies on top of
    end: int  # position after it
    rows: int  # log rows it covered
    tables: list[tuple[str, list[tuple[Any, ...]]]]
    accounts: list[str]  # accounts whose usage rows are rewritten
    text: bool = False  # rows in text form (the SQLite encoding), for a writer process
    deletes: list[tuple[str, list[tuple[Any, ...]]]] = field(default_factory=list)  # (table, keys) rows that went


def _tracking_ddl(dialect: Dialect) -> str:
    return next(s for s in dialect.create_statements() if TRACKING_TABLE in s and "CREATE TABLE" in s)


class _Dirty:
    """What a page touched: the rows to rewrite (dicts keep first-touched order)."""

    def __init__(self, equity: _EquityBook) -> None:
        self.equity_book = equity
        self.orders: dict[str, None] = {}
        self.positions: dict[tuple[str, str, str], int] = {}
        self.days: dict[tuple[str, str], int] = {}
        # account -> its last event (position, occurred_at as stored, recorded_at): parsed once, at write
        self.accounts: dict[str, tuple[int, str | None, datetime]] = {}
        self.signals: dict[tuple[str, str], None] = {}
        self.equity: dict[tuple[str, str], tuple[Any, ...]] = {}  # (account, minute) -> row
        # (account, exec id) -> the pending fee's row, or None: the row goes (its fee came)
        self.fees: dict[tuple[str, str], tuple[Any, ...] | None] = {}
        self.instruments: dict[str, None] = {}
        self.fx: dict[tuple[str, str], tuple[Any, ...]] = {}  # (base, quote) -> row
        self.corporate: dict[tuple[str, str, str], tuple[Any, ...]] = {}  # (symbol, action, effective_at) -> row
        # set by ``before_fold``, read by ``note`` for the same event: the executions whose fee
        # was pending before it, (account, exec id, order stream)
        self._was_pending: list[tuple[str, str, str]] = []

    def deletes(self) -> list[tuple[str, list[tuple[Any, ...]]]]:
        """The rows to delete, as (table, keys): pending fees that came, of rows an earlier page
        wrote (one written and settled within the same page is never written)."""
        gone = [key for key, row in self.fees.items() if row is None]
        return [("ts_fees_pending", gone)] if gone else []

    def _equity_change(self, state: TradingState, key: tuple[str, str, str], d: dict[str, Any], position: int,
                       at: datetime) -> None:
        if key in state.positions:
            book = self.equity_book
            minute_key, minute = book.minute(d.get("occurred_at"), at)
            self.equity[(key[0], minute_key)] = book.after_change(state, key, minute, position)

    def before_fold(self, state: TradingState, stream: str, type_name: str, d: dict[str, Any],
                    position: int) -> None:
        """Before a ``FillCorrected`` or ``FeeCharged`` is folded, what the fold is about to drop:
        the day of the fill a correction corrects (a bust takes that fill out of the position's
        journal, where ``note`` looks afterwards, but changes its day), and the execution whose
        pending fee the event may settle (``note`` then sees whether it did)."""
        # (a rebuild may have let the order leave memory: the account's index names it)
        exec_id = d.get("exec_id") if type_name == "FeeCharged" else d["corrected_exec_id"]
        acct = state.accounts.get(d["account"])
        owner = acct.fees_pending.get(exec_id) if exec_id and acct is not None else None
        self._was_pending = [(d["account"], exec_id, owner)] if owner is not None else []  # type: ignore[list-item]
        order = state.orders.get(stream) if type_name == "FillCorrected" else None
        if order is None:
            return
        old = exec_id
        held = state.positions.get(order.position_key)
        for e in (held.journal or ()) if held is not None else ():
            if e[0] == old:
                self.days[(order.account, e[5])] = position

    def _fees_settled(self, state: TradingState) -> None:
        """After the event ``before_fold`` saw: each execution no longer pending loses its row, and
        its order's row (its count of pending fees) is rewritten."""
        for account, exec_id, owner in self._was_pending:
            if exec_id in state.account(account).fees_pending:
                continue
            if self.fees.pop((account, exec_id), None) is None:  # written by an earlier page: delete it
                self.fees[(account, exec_id)] = None
            if owner not in state.quarantined_streams:
                state.orders[owner]  # noqa: B018 - a rebuild brings a finished order back for its row
                self.orders[owner] = None
        self._was_pending = []

    def _fee_pending(self, order: OrderState, d: dict[str, Any], position: int, at: datetime) -> None:
        """The row of a fill (or correction) whose fee is still to come."""
        exec_id = d["exec_id"]
        if exec_id in order.account_state.fees_pending:  # type: ignore[union-attr]
            self.fees[(order.account, exec_id)] = (order.account, exec_id, order.stream_id, order.client_order_id,
                                                   order.venue, order.symbol, Decimal(d["qty"]), Decimal(d["price"]),
                                                   _event_time(d, at), position)

    def note(self, state: TradingState, stream: str, type_name: str, d: dict[str, Any], position: int,
             at: datetime) -> None:
        """Record which read-model rows the event at ``position`` (already folded into ``state``)
        touches."""
        first = stream[0]  # streams are order-..., account-..., strategy-..., engine-..., $void
        if first == "o":
            if stream in state.quarantined_streams:  # not folded: the read models keep what they had
                return
            order = state.orders[stream]
            self.orders[stream] = None
            self.accounts[order.account] = (position, d.get("occurred_at"), at)
            if type_name == "OrderFilled":
                key = order.position_key
                self.positions[key] = position
                occurred = d.get("occurred_at")
                self.days[(order.account, state._trading_day_of(occurred, at))] = position
                book = self.equity_book
                minute_key, minute = book.minute(occurred, at)
                self.equity[(order.account, minute_key)] = book.after_fill(state, key, minute, position)
                if "fee_pending" in d and d["fee_pending"]:
                    self._fee_pending(order, d, position, at)
            elif type_name == "FeeCharged":
                if self._was_pending:
                    self._fees_settled(state)
                self.positions[order.position_key] = position
                self.days[(order.account, state._trading_day_of(d.get("occurred_at"), at))] = position
                self._equity_change(state, order.position_key, d, position, at)
            elif type_name == "FillCorrected":  # the position, and the days of the fills it replayed
                if self._was_pending:
                    self._fees_settled(state)
                if Decimal(d["qty"]):
                    self._fee_pending(order, d, position, at)
                key = order.position_key
                self.positions[key] = position
                self._equity_change(state, key, d, position, at)
                held = state.positions.get(key)
                days = {e[5] for e in (held.journal or ())} if held is not None else set()
                days.add(state._trading_day_of(d.get("occurred_at"), at))
                for day in days:
                    self.days[(order.account, day)] = position
        elif first == "a":
            account = d["account"]
            self.accounts[account] = (position, d.get("occurred_at"), at)
            if type_name == "RiskCheckPassed" or type_name == "DailyLimitBreached":
                self.days[(account, d["trading_day"])] = position
            elif type_name == "PositionCorrected":
                self.positions[(account, d["venue"], d["symbol"])] = position
            elif type_name == "FeeCharged":
                if self._was_pending:
                    self._fees_settled(state)
                if d.get("symbol"):
                    self.positions[(account, d["venue"], d["symbol"])] = position
                    self._equity_change(state, (account, d["venue"], d["symbol"]), d, position, at)
                self.days[(account, state._trading_day_of(d.get("occurred_at"), at))] = position
            elif type_name == "OptionSettled":  # both legs, and the day's realised P&L
                spec = state.instruments.get(d["symbol"])
                for symbol in (d["symbol"], spec.underlying if spec is not None else None):
                    if (account, d["venue"], symbol) in state.positions:
                        self.positions[(account, d["venue"], symbol)] = position  # type: ignore[index]
                self.days[(account, state._trading_day_of(d.get("occurred_at"), at))] = position
            elif type_name == "VariationMarginSettled":  # the re-based position, its business day's P&L
                key = (account, d["venue"], d["symbol"])
                self.positions[key] = position
                self.days[(account, d["business_date"])] = position
                self._equity_change(state, key, d, position, at)
        elif type_name == "SignalRecorded":
            self.signals[(d["strategy_id"], d["symbol"])] = None
        elif type_name == "FxRateRecorded":
            self.fx[(d["base"], d["quote"])] = (d["base"], d["quote"], Decimal(d["rate"]), d.get("source") or None,
                                                _event_time(d, at), position)
        elif type_name == "InstrumentDefined" or type_name == "CorporateActionRecorded":
            # rare: the symbol's positions show a new multiplier, split quantity or symbol
            symbols = (d["symbol"], d.get("new_symbol"))
            for key in state.positions:
                if key[2] in symbols:
                    self.positions[key] = position
            for symbol in symbols:  # a symbol change carries the definition over to the new symbol
                if symbol is not None:
                    self.instruments[symbol] = None
            if type_name == "CorporateActionRecorded":
                effective = datetime.fromisoformat(d["effective_at"])
                self.corporate[(d["symbol"], d["action"], d["effective_at"])] = (
                    d["symbol"], d["action"], effective, _dec_or_none(d.get("ratio_from")),
                    _dec_or_none(d.get("ratio_to")), d.get("new_symbol"), d.get("source") or "operator",
                    d.get("reason") or None, _event_time(d, at), position)


# ------------------------------------------------------------------------------ row shapes


def _fill_minute(d: dict[str, Any], at: datetime) -> datetime:
    """The equity curve's point for a fill: its minute (of ``occurred_at``, else the store's clock)."""
    occurred = d.get("occurred_at")
    return (datetime.fromisoformat(occurred) if occurred else at).replace(second=0, microsecond=0)


def _event_time(d: dict[str, Any], at: datetime) -> datetime:
    occurred = d.get("occurred_at")
    return datetime.fromisoformat(occurred) if occurred else at


def _order_row(o: OrderState) -> tuple[Any, ...]:
    pending = o.account_state.fees_pending if o.account_state is not None else None
    fees_pending = sum(1 for e in o.executions if e in pending) if pending else 0
    asked = o.replaces[o.replace_pending]["request"] if o.replace_pending is not None else None  # type: ignore[index]
    return (o.stream_id, o.account, o.client_order_id, o.venue, o.symbol, o.side, o.order_type, o.qty,
            o.limit_price, o.stop_price, o.time_in_force, o.strategy_id, o.status, o.is_open, o.filled_qty,
            o.remaining, o.avg_fill_price, o.fees, o.venue_order_id, o.cancel_requested, o.discrepancies,
            ",".join(o.refusal) if o.refusal else None, o.created_at, o.updated_at, _last(o), fees_pending,
            o.replace_pending,
            *((Decimal(asked["qty"]), _dec_or_none(asked.get("limit_price")), _dec_or_none(asked.get("stop_price")))
              if asked is not None else (None, None, None)))


def _dec_or_none(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


def _last(o: OrderState) -> int:
    return max(o.positions.values())


def _position_row(p: PositionState, position: int) -> tuple[Any, ...]:
    return (p.account, p.venue, p.symbol, p.qty, p.avg_cost, p.realized_pnl, p.unrealized_pnl, p.fees,
            p.last_price, p.updated_at, position, p.multiplier, p.currency)


def _day_row(state: TradingState, account: str, day: str, position: int) -> tuple[Any, ...]:
    s = state.accounts[account].day(day)
    return (account, day, s.trades, s.fills, s.volume, s.realized_pnl, s.fees, s.net_pnl,
            ",".join(sorted(s.breaches)), position)


def _risk_row(state: TradingState, account: str, position: int) -> tuple[Any, ...]:
    # breaker_tripped is the recorded flag; with breaker_until set, readers compare it to now.
    a = state.account(account)
    last = a.last_reconciliation or {}
    return (account, a.kill_switch, a.kill_switch_reason, a.breaker_tripped, a.breaker_reason,
            a.breaker_until, a.ramp_pct, len(a.open_orders), a.discrepancies, a.blocked, a.blocked_reason, position,
            last.get("at"), last.get("status"))


def _usage_rows(state: TradingState, account: str, position: int, now: datetime) -> list[tuple[Any, ...]]:
    day = state.trading_day(now)
    return [(account, u["limit"], u["symbol"] or "", u["value"], u["effective"], u["used"], day, position)
            for u in limit_usage(state, account, now)]


def _cash_rows(state: TradingState, account: str, position: int) -> list[tuple[Any, ...]]:
    """The account's cash at each venue in each currency (rows as of its last event, ``position``)."""
    return [(account, venue, currency, balance, position)
            for venue, books in state.accounts[account].venue_cash.items() for currency, balance in books.items()]


def _instrument_row(spec: InstrumentSpec) -> tuple[Any, ...]:
    return (spec.symbol, spec.asset_class, spec.multiplier, spec.quote_currency, spec.settlement_currency,
            spec.tick_size, spec.lot_size, spec.fractional, spec.expiry, spec.underlying, spec.strike, spec.right,
            spec.position)


def _signal_row(s: dict[str, Any]) -> tuple[Any, ...]:
    return (s["strategy_id"], s["symbol"], s["signal"], s["value"], s["attributes"], s["at"], s["position"])


class _EquityBook:
    """Running realised, unrealised and fee totals per account, kept by difference so that a
    fill costs O(1) however many symbols the account holds."""

    def __init__(self) -> None:
        self._minutes: dict[str, datetime] = {}  # "YYYY-MM-DDTHH:MM" (UTC) -> that minute
        self.contribution: dict[tuple[str, str, str], tuple[Decimal, Decimal, Decimal]] = {}
        self.totals: dict[str, list[Decimal]] = {}
        self.fills: dict[tuple[str, datetime], int] = {}  # fills per (account, minute)

    def minute(self, occurred: str | None, at: datetime) -> tuple[str, datetime]:
        """A fill's equity-curve point: (its UTC minute as text, the minute as a time). A stored
        UTC time ("...Z") is cut to its minute as text, and parsed once per minute."""
        if occurred and occurred[-1] == "Z" and len(occurred) >= 17 and occurred[16] == ":" and occurred[10] == "T":
            key = occurred[:16]
            minute = self._minutes.get(key)
            if minute is None:
                if len(self._minutes) > 100_000:
                    self._minutes.clear()
                minute = self._minutes[key] = _fill_minute({"occurred_at": occurred}, at)
            return key, minute
        minute = _fill_minute({"occurred_at": occurred}, at)
        return minute.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M"), minute

    def _update(self, key: tuple[str, str, str], held: PositionState, state: TradingState) -> list[Decimal]:
        new = (held.realized_pnl, held.unrealized_pnl, held.fees)
        currency = held.currency
        if currency is not None and currency != ACCOUNT_CURRENCY:  # in the account's currency, at the last rate
            rate = instrument_rate(state.fx_rates, held.spec)
            if rate is not None:
                new = (new[0] * rate, new[1] * rate, new[2])
        old = self.contribution.get(key, (ZERO, ZERO, ZERO))
        self.contribution[key] = new
        totals = self.totals.setdefault(key[0], [ZERO, ZERO, ZERO])
        for i in range(3):
            totals[i] += new[i] - old[i]
        return totals

    def after_fill(self, state: TradingState, key: tuple[str, str, str], minute: datetime,
                   position: int) -> tuple[Any, ...]:
        """The equity-curve row of ``key``'s account for ``minute`` after a fill at ``position``, with
        the account's totals updated by the position's change."""
        realized, unrealized, fees = self._update(key, state.positions[key], state)
        count = self.fills[(key[0], minute)] = self.fills.get((key[0], minute), 0) + 1
        return (key[0], minute, realized, unrealized, fees, realized + unrealized - fees, count, position)

    def after_venue_change(self, state: TradingState, stream: str, d: dict[str, Any]) -> None:
        """Replaying the log (``Projector.load``): the totals after a ``FeeCharged`` or
        ``FillCorrected`` already folded into ``state``, as the page that wrote it moved them
        (``_Dirty.note``)."""
        if stream[0] == "o":
            key = state.orders[stream].position_key
        elif d.get("symbol"):
            key = (d["account"], d["venue"], d["symbol"])
        else:
            return
        if key in state.positions:
            self._update(key, state.positions[key], state)

    def after_change(self, state: TradingState, key: tuple[str, str, str], minute: datetime,
                     position: int) -> tuple[Any, ...]:
        """``after_fill`` for a change that is not a new fill (a venue's correction, a fee posted
        apart): the totals move by the position's change, the minute's fill count does not."""
        realized, unrealized, fees = self._update(key, state.positions[key], state)
        count = self.fills.get((key[0], minute), 0)
        return (key[0], minute, realized, unrealized, fees, realized + unrealized - fees, count, position)


# ------------------------------------------------------------------------ value encoding


def _time(value: datetime | None, kind: str) -> Any:
    if value is None or kind == POSTGRESQL:
        return value
    return value.astimezone(timezone.utc).isoformat()


def _iso(value: datetime) -> str:
    if value.tzinfo is timezone.utc:  # what the log's times parse to: no conversion needed
        return value.isoformat()
    return value.astimezone(timezone.utc).isoformat()


def _json_text(value: dict[str, Any]) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


_PG_COPY_TYPES = {"text": "text", "num": "numeric", "int": "int8", "bool": "bool", "time": "timestamptz",
                  "date": "date", "json": "jsonb"}


def _row_encoder(kind: str, table: str) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """A compiled function turning one row of ``table`` into what the driver stores: on SQLite
    decimals become strings, times ISO-8601 UTC text, booleans 0/1, JSON text; on PostgreSQL only
    JSON needs wrapping and a trading day (``YYYY-MM-DD``) becomes a date. Compiled once per table, it costs a tuple display per row rather than
    a function call per value (rows are the projector's hottest output)."""
    forms = {
        SQLITE: {"num": "str({v})", "time": "_iso({v})", "bool": "(1 if {v} else 0)", "json": "_json_text({v})"},
        POSTGRESQL: {"json": "_Jsonb({v})", "date": "_date({v})"},
        # pages for a writer process: as SQLite's, but a UTC time is left to orjson, which writes
        # it in C exactly as isoformat() would (a third of the encoding time was isoformat)
        "text": {"num": "str({v})", "time": "({v} if {v}.tzinfo is _UTC else _iso({v}))",
                 "bool": "(1 if {v} else 0)", "json": "_json_text({v})"},
    }[kind]
    parts = []
    for i, (_column, column_kind) in enumerate(TABLES[table][0]):
        value = f"r[{i}]"
        form = forms.get(column_kind)
        parts.append(value if form is None else f"(None if {value} is None else {form.format(v=value)})")
    namespace: dict[str, Any] = {"_iso": _iso, "_json_text": _json_text, "_UTC": timezone.utc,
                                 "_date": date.fromisoformat}
    if kind == POSTGRESQL:
        from psycopg.types.json import Jsonb

        namespace["_Jsonb"] = Jsonb
    return eval(f"lambda r: ({', '.join(parts)},)", namespace)  # noqa: S307 - built from our own column table


_ROW_ENCODERS = {kind: {table: _row_encoder(kind, table) for table in TABLES}
                 for kind in (SQLITE, POSTGRESQL, "text")}


def wait_for(store: Store, position: int, timeout: float = 5.0, projector: Projector | None = None) -> bool:
    """Read-your-writes: wait until the tables include ``position`` (True) or time out (False)."""
    projector = projector or Projector(store)
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        if projector.tracked_position() >= position:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
