"""Multi-event appends (``append`` of many events, ``insert_in`` of many events), on a real SQLite
file and a real PostgreSQL: a batch lands whole, at contiguous positions in its own order, or not
at all (a taken stream version anywhere in it, or a deposed fence); large batches work."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.store.store_contract import assert_no_holes, ev, real, rows_of
from tradestate.adapters.store import VOID_TYPE, new_event
from tradestate.adapters.store.base import Appended, appended_at
from tradestate.adapters.store.lease import Fence, Leases
from tradestate.domain.errors import ConcurrencyConflict, NotLeader


def _batch(prefix: str, n: int, streams: int = 7, first_version: int = 1) -> list:
    """``n`` events over ``streams`` streams, round robin: each stream's versions rise in the batch."""
    return [ev(f"{prefix}-{i % streams}", first_version + i // streams, data=f'{{"i":{i}}}'.encode())
            for i in range(n)]


def _assert_landed_in_order(log, batch, appended, head_before: int) -> None:
    """The batch sits at head_before+1..head_before+len(batch), in its order, as append returned."""
    n = len(batch)
    assert [a.position for a in appended] == list(range(head_before + 1, head_before + n + 1))
    assert len({a.recorded_at for a in appended}) == 1, "one transaction, one clock reading"
    rows = rows_of(log, head_before, head_before + n)
    assert [(r[1], r[2], bytes(r[4])) for r in rows] == [(e.originator_id, e.originator_version, e.state)
                                                          for e in batch]
    assert [r[0] for r in rows] == [a.position for a in appended]
    assert all(r[5] == appended[0].recorded_at for r in rows)


def test_appended_at_equals_the_dataclass():
    at = datetime.now(timezone.utc)
    built = appended_at(range(5, 8), at)
    assert built == [Appended(5, at), Appended(6, at), Appended(7, at)]
    assert {hash(a) for a in built} == {hash(Appended(p, at)) for p in (5, 6, 7)}
    with pytest.raises(AttributeError):
        built[0].position = 1  # still frozen


def test_a_batch_lands_at_contiguous_positions_in_its_order(store):
    log = store.trading
    log.append([ev("before", 1)])
    batch = _batch("c", 100)
    appended = log.append(batch)
    _assert_landed_in_order(log, batch, appended, 1)
    assert log.head() == 101


def test_a_batch_across_several_streams_keeps_each_streams_versions(store):
    log = store.trading
    log.append([ev("s-1", 1), ev("s-2", 1)])
    # s-1 and s-2 continue at version 2, s-3 is new; interleaved in one batch
    batch = [ev("s-1", 2), ev("s-3", 1), ev("s-2", 2), ev("s-1", 3), ev("s-3", 2), ev("s-2", 3)]
    appended = log.append(batch)
    _assert_landed_in_order(log, batch, appended, 2)
    for stream, versions in (("s-1", [1, 2, 3]), ("s-2", [1, 2, 3]), ("s-3", [1, 2])):
        assert [e.originator_version for e in log.read_stream(stream)] == versions


@pytest.mark.parametrize("conflict_at", [0, 1, 49, 99])
def test_a_taken_version_anywhere_in_a_batch_fails_all_of_it(store, conflict_at):
    log = store.trading
    log.append([ev("taken", 1)])
    before = real(rows_of(log))
    batch = _batch("x", 99)
    batch.insert(conflict_at, ev("taken", 1, data=b'{"again":true}'))
    with pytest.raises(ConcurrencyConflict, match="taken@1"):
        log.append(batch)
    assert real(rows_of(log)) == before, "part of a conflicting batch was written"
    assert all(log.read_stream(f"x-{s}") == [] for s in range(7))
    assert_no_holes(log)  # PostgreSQL: the positions it drew are $void rows now; SQLite: it drew none
    # without the conflict, the same batch lands whole
    del batch[conflict_at]
    head = log.head()
    _assert_landed_in_order(log, batch, log.append(batch), head)


def test_a_version_taken_twice_inside_the_batch_fails_all_of_it(store):
    log = store.trading
    batch = _batch("d", 20)
    batch.append(ev("d-3", 1, data=b"{}"))  # d-3@1 is also the batch's fourth event
    with pytest.raises(ConcurrencyConflict):
        log.append(batch)
    assert real(rows_of(log)) == []
    assert_no_holes(log)


def test_a_fenced_batch_after_a_takeover_writes_nothing(store):
    log = store.trading
    leases = Leases.of(store)

    def event(kind):
        return lambda previous, epoch: (kind, b'{"epoch": %d}' % epoch)

    leases.acquire("e1", "a", 0.3, stream="engine-e1", event=event("LeaseAcquired"))
    landed = log.append(_batch("f", 30), fence=Fence("e1", 1, "a"))
    assert len(landed) == 30
    time.sleep(0.4)
    leases.acquire("e1", "b", 5.0, stream="engine-e1", event=event("LeaseAcquired"))
    head = log.head()
    with pytest.raises(NotLeader):
        log.append(_batch("f", 30, first_version=10), fence=Fence("e1", 1, "a"))
    assert [r[3] for r in log.iter_rows(head)] in ([], [VOID_TYPE] * 30), "a deposed batch wrote events"
    assert sum(len(log.read_stream(f"f-{s}")) for s in range(7)) == 30
    assert_no_holes(log)
    # the new holder's fenced batch lands
    assert len(log.append(_batch("f", 30, first_version=10), fence=Fence("e1", 2, "b"))) == 30


def test_a_batch_of_ten_thousand_events(store):
    log = store.trading
    log.append([ev("first", 1)])
    batch = [new_event(f"big-{i}", 1, "OrderFilled", b'{"q":"1"}' * 40) for i in range(10_000)]
    appended = log.append(batch)
    assert [a.position for a in appended] == list(range(2, 10_002))
    rows = rows_of(log, 1)
    assert [r[0] for r in rows] == list(range(2, 10_002))
    assert [r[1] for r in rows] == [e.originator_id for e in batch]
    assert log.head() == 10_001
    # and a conflict at its very end still writes none of it
    batch2 = [new_event(f"big2-{i}", 1, "T", b"{}") for i in range(9_999)] + [new_event("big-0", 1, "T", b"{}")]
    with pytest.raises(ConcurrencyConflict):
        log.append(batch2)
    assert log.read_stream("big2-0") == [] and log.read_stream("big2-9998") == []
    assert len(real(rows_of(log))) == 10_001


def test_insert_in_several_events_returns_their_positions_in_order(store):
    log = store.trading
    log.append([ev("a", 1)])
    batch = _batch("i", 12)
    with log.bounded_write() as cur:
        appended = log.insert_in(cur, batch)
        more = log.insert_in(cur, [ev("j", 1)])
    head = appended[0].position - 1
    _assert_landed_in_order(log, batch, appended, head)
    assert more[0].position == appended[-1].position + 1
    assert_no_holes(log)


def test_insert_in_of_no_events_inserts_nothing(store):
    log = store.trading
    log.append([ev("a", 1)])
    with log.bounded_write() as cur:
        assert log.insert_in(cur, []) == []
    assert log.head() == 1


def test_insert_in_a_taken_version_fails_the_callers_transaction(store):
    log = store.trading
    log.append([ev("taken", 1)])
    before = real(rows_of(log))
    with pytest.raises(ConcurrencyConflict, match="taken@1"):
        with log.bounded_write() as cur:
            log.insert_in(cur, [ev("k", 1), ev("taken", 1), ev("k", 2)])
    assert real(rows_of(log)) == before
    assert log.read_stream("k") == []


# A batch: (stream index, version offset) pairs; offsets below 0 reuse a version already taken.
_batches = st.lists(st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=1, max_size=25),
                    min_size=1, max_size=6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=_batches)
def test_every_batch_lands_whole_and_contiguous_or_not_at_all(store, batches):
    """Against a model of each stream's next version: a batch with no taken version lands at the
    positions right after the head, in order; one that reuses a taken version raises and changes
    nothing real; in both cases the log stays gap-free."""
    log = store.trading
    prefix = uuid.uuid4().hex[:8]  # examples share the store: their own streams
    next_version: dict[str, int] = {}
    for spec in batches:
        planned = dict(next_version)
        batch, conflicts = [], False
        for stream_no, reuse in spec:
            stream = f"{prefix}-{stream_no}"
            taken = planned.get(stream, 1) - 1
            if reuse and taken >= 1:
                batch.append(ev(stream, taken))
                conflicts = True
            else:
                version = planned.get(stream, 1)
                batch.append(ev(stream, version))
                planned[stream] = version + 1
        head = log.head()
        before = len(real(rows_of(log)))
        if conflicts:
            with pytest.raises(ConcurrencyConflict):
                log.append(batch)
            assert len(real(rows_of(log))) == before
        else:
            _assert_landed_in_order(log, batch, log.append(batch), head)
            next_version = planned
    assert_no_holes(log)


def test_sqlite_connections_checkpoint_every_ten_thousand_wal_pages(sqlite_url):
    from tradestate.adapters.store import open_store
    from tradestate.adapters.store.sqlite import WAL_AUTOCHECKPOINT_PAGES

    assert WAL_AUTOCHECKPOINT_PAGES == 10_000
    with open_store(sqlite_url) as s:
        ds = s.trading.datastore
        with ds.get_connection(commit=True) as w, ds.get_connection(commit=False) as r:
            for conn in (w, r):
                assert conn._sqlite_conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 10_000
                assert conn._sqlite_conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL, unchanged


@pytest.mark.postgres
def test_postgres_a_fenced_batch_racing_a_takeover_draws_no_position_when_the_takeover_commits_first(pg_url):
    """The batch's lease check and its insert are one statement: one that started while a takeover
    held the lease row waits, re-checks the row the takeover committed, and neither inserts nor
    draws a position (so it leaves no hole to void)."""
    import threading

    import psycopg

    from tradestate.adapters.store import open_store
    from tradestate.adapters.store.sql import PgUrl

    with open_store(pg_url) as store:
        Leases.of(store).acquire("e1", "a", 60, stream="engine-e1",
                                 event=lambda previous, epoch: ("LeaseAcquired", b"{}"))
        table = store.dialect.name("ts_leases")
    with open_store(pg_url) as store, psycopg.connect(PgUrl.parse(pg_url).conninfo(), autocommit=True) as takeover:
        head = store.trading.head()
        takeover.execute("BEGIN")
        takeover.execute(f"SELECT epoch FROM {table} WHERE engine_id = 'e1' FOR UPDATE")
        outcome: list[object] = []

        def append() -> None:
            try:
                outcome.append(store.trading.append(_batch("r", 50), fence=Fence("e1", 1, "a")))
            except Exception as e:  # noqa: BLE001 - the outcome is what the test inspects
                outcome.append(e)

        appender = threading.Thread(target=append)
        appender.start()
        time.sleep(0.3)
        assert appender.is_alive(), "the fenced batch must wait for the takeover holding the lease row"
        takeover.execute(f"UPDATE {table} SET epoch = 2, holder = 'b' WHERE engine_id = 'e1'")
        takeover.execute("COMMIT")
        appender.join(5)
        assert isinstance(outcome[0], NotLeader), outcome
        assert store.trading.head() == head and list(store.trading.iter_rows(head)) == []
        with psycopg.connect(PgUrl.parse(pg_url).conninfo()) as conn:
            schema = PgUrl.parse(pg_url).schema
            drawn = conn.execute(f'SELECT last_value FROM "{schema}".ts_events_position_seq').fetchone()[0]
        assert drawn == head, "a refused fenced batch drew positions"


def test_concurrent_batches_each_land_whole_and_in_order(store):
    """Three threads appending 40-event batches at once, with single-event appends beside them:
    every batch lands whole with increasing positions and the log stays gap-free. On SQLite a
    batch's positions are also contiguous (taken under the file's write lock); on PostgreSQL a
    concurrent append may draw a position between two of a batch's (one nextval per event)."""
    import threading

    log = store.trading
    landed: list[list[int]] = []
    errors: list[BaseException] = []

    def batches(tag: str) -> None:
        try:
            for i in range(15):
                landed.append([a.position for a in log.append(_batch(f"{tag}{i}", 40, streams=40))])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def singles() -> None:
        try:
            for i in range(150):
                log.append([ev(f"single-{i}", 1)])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=batches, args=(t,)) for t in "abc"] + [threading.Thread(target=singles)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(landed) == 45
    for positions in landed:
        assert positions == sorted(positions) and len(set(positions)) == 40
        if store.kind == "sqlite":
            assert positions == list(range(positions[0], positions[0] + 40))
    rows = assert_no_holes(log)
    assert len(real(rows)) == 45 * 40 + 150
    assert sorted(p for ps in landed for p in ps) == sorted(r[0] for r in real(rows) if not r[1].startswith("single"))


_texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)


@pytest.mark.postgres
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(_texts, st.integers(-(2**63), 2**63 - 1), _texts, st.binary(max_size=300)),
                     min_size=1, max_size=30))
def test_postgres_packed_batch_columns_reach_the_server_as_the_arrays_they_pack(pg_url, rows):
    """A batch's four columns go to PostgreSQL already in the binary array format (psycopg's list
    dumper costs half an append's client CPU): the server reads back exactly the values, any
    text (non-ASCII, empty), any 64-bit version, any bytes."""
    import psycopg

    from tradestate.adapters.store.postgres import _columns, _PackedArray

    events = [new_event(s, v, t, d) for s, v, t, d in rows]
    with psycopg.connect(pg_url.split("?")[0]) as conn:
        columns = _columns(events, conn)
        assert all(isinstance(c, _PackedArray) for c in columns)
        got = conn.execute("SELECT %b::text[], %b::bigint[], %b::text[], %b::bytea[]", columns).fetchone()
    assert [list(c) for c in got] == [[r[i] for r in rows] for i in range(4)]


def test_a_batch_with_non_ascii_stream_ids_and_types_reads_back_as_written(store):
    batch = [new_event(f"ordre-é-{i}", 1, "OrderFilled" if i % 2 else "Überweisung", f'{{"i":"ü{i}"}}'.encode())
             for i in range(20)]
    appended = store.trading.append(batch)
    _assert_landed_in_order(store.trading, batch, appended, 0)
