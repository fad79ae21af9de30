"""Partitioned PostgreSQL logs (adapters/store/partitions.py): the log's whole contract on the
partitioned layout, the optimistic-concurrency check across partitions, append-only partitions,
the monthly roll and converting a plain log in place."""

from __future__ import annotations

import threading

import psycopg
import pytest

from tests.store.store_contract import assert_no_holes, ev, real, rows_of
from tests.store import test_store
from tests.store.test_store import streams_from  # noqa: F401 - a fixture of the inherited tests
from tests.support.partitioned import partitioned
from tradestate.adapters.store import open_store
from tradestate.adapters.store import partitions as P
from tradestate.adapters.store.sql import read_cursor, write_cursor
from tradestate.domain.errors import ConcurrencyConflict, InvalidInput

pytestmark = pytest.mark.postgres


class TestPartitionedPostgresEventLog(test_store.TestPostgresEventLog):
    """Every contract and PostgreSQL-specific log test, on a log created with ``?partitions=month``
    and laid out so that positions 1-4 go to a closed partition and the rest to the open one."""

    @pytest.fixture
    def url(self, pg_url):
        url = partitioned(pg_url)
        with open_store(url) as s:
            for table in ("ts_events", "ts_market_events"):
                P.create_history(s, table, ["2000-01", "2000-02"], [1, 5])
        return url


@pytest.fixture
def rolled(pg_url):
    """A partitioned store with a@1 in a closed partition and appends going to the open one."""
    s = open_store(partitioned(pg_url))
    s.trading.append([ev("a", 1), ev("b", 1)])
    closed = P.roll(s, "ts_events", month="2000-01")
    assert closed is not None and closed.end == 3
    try:
        yield s
    finally:
        s.close()


def test_a_new_log_is_partitioned_only_when_asked(pg_url):
    with open_store(pg_url) as plain:
        assert P.partitions(plain, "ts_events") == []
    # an existing plain log keeps its layout whatever the URL asks
    with open_store(partitioned(pg_url)) as again:
        assert P.partitions(again, "ts_events") == []
        with pytest.raises(P.PartitionError):
            P.roll(again, "ts_events")


def test_a_bad_layout_is_refused(pg_url):
    with pytest.raises(InvalidInput, match="partitions"):
        open_store(pg_url + "&partitions=weekly")


def test_a_stale_version_whose_event_is_in_an_older_partition_is_refused(rolled):
    log = rolled.trading
    head = log.head()
    with pytest.raises(ConcurrencyConflict):
        log.append([ev("a", 1)])  # single-event path
    with pytest.raises(ConcurrencyConflict):
        log.append([ev("c", 1), ev("b", 1)])  # batch path: nothing of it is appended
    with pytest.raises(ConcurrencyConflict), log.bounded_write() as cur:
        log.insert_in(cur, [ev("a", 1)])
    rows = assert_no_holes(log)
    assert [(r[1], r[2]) for r in real(rows)] == [("a", 1), ("b", 1)]
    assert log.head() > head  # the refused appends' positions were voided, not left as holes
    assert [p.end for p in P.partitions(rolled, "ts_events")] == [3, None]
    # the next version is fine, and lands in the open partition
    (appended,) = log.append([ev("a", 2)])
    assert appended.position >= 3


def test_the_recorder_interface_still_raises_integrity_error(rolled):
    from eventsourcing.persistence import IntegrityError

    with pytest.raises(IntegrityError):
        rolled.trading.insert_events([ev("b", 1)])


def test_racing_writers_of_one_version_across_a_roll_only_one_wins(rolled):
    wins, losses = [], []

    def write(i: int) -> None:
        try:
            rolled.trading.append([ev("race", 1, data=f'{{"i":{i}}}'.encode())])
            wins.append(i)
        except ConcurrencyConflict:
            losses.append(i)
        finally:
            rolled.trading.release_connection()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(wins) == 1 and len(losses) == 5
    P.roll(rolled, "ts_events", month="2000-02")
    with pytest.raises(ConcurrencyConflict):
        rolled.trading.append([ev("race", 1)])
    assert len(P.partitions(rolled, "ts_events")) == 3


@pytest.mark.parametrize("statement", [
    "UPDATE {t} SET type = 'x'", "DELETE FROM {t}", "TRUNCATE {t}",
])
@pytest.mark.parametrize("target", ["parent", "closed", "open"])
def test_every_partition_is_append_only(rolled, statement, target):
    parts = P.partitions(rolled, "ts_events")
    table = {"parent": "ts_events", "closed": parts[0].name, "open": parts[-1].name}[target]
    rolled.trading.append([ev("a", 2)])
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"), write_cursor(rolled) as cur:
        cur.execute(statement.format(t=f'"{rolled.trading.schema}"."{table}"'))
    assert len(real(rows_of(rolled.trading))) == 3


def test_roll_closes_at_the_head_and_refuses_nothing_twice(rolled):
    assert P.roll(rolled, "ts_events", month="2000-02") is None  # the open partition is empty
    rolled.trading.append([ev("a", 2)])
    assert P.roll(rolled, "ts_events", month="2000-01") is None  # that month's partition exists
    closed = P.roll(rolled, "ts_events", month="2000-02")
    assert closed.first == 3 and closed.end == rolled.trading.head() + 1
    parts = P.partitions(rolled, "ts_events")
    assert [p.month for p in parts][1:] == ["2000-01", "2000-02"]
    assert [(p.first, p.end) for p in parts] == [(1, 3), (3, closed.end), (closed.end, None)]


def test_convert_turns_a_plain_log_into_partitions_in_place(pg_url):
    with open_store(pg_url) as s:
        s.trading.append([ev("a", 1), ev("b", 1)])
        s.trading.append([ev("a", 2)])
        before = rows_of(s.trading)
        closed = P.convert(s, "ts_events")
        assert closed is not None and closed.first == 1 and closed.end == 4
        assert P.convert(s, "ts_events") is None  # already partitioned
        assert rows_of(s.trading) == before
        with pytest.raises(ConcurrencyConflict):
            s.trading.append([ev("a", 2)])  # claimed from the converted history
        s.trading.append([ev("a", 3)])
        assert [(r[1], r[2]) for r in real(rows_of(s.trading))][-1] == ("a", 3)
        from tradestate.adapters.store.digest import is_protected

        assert is_protected(s)
        with pytest.raises(psycopg.errors.InsufficientPrivilege), write_cursor(s) as cur:
            cur.execute(f'DELETE FROM "{s.trading.schema}"."{closed.name}"')
        with read_cursor(s) as cur:  # the payload view reads the new parent, every partition
            cur.execute(f'SELECT count(*) FROM "{s.trading.schema}".ts_events_json')
            assert cur.fetchone()[0] == len(rows_of(s.trading))
    with open_store(pg_url) as again:  # reopens without DDL trouble
        assert len(real(rows_of(again.trading))) == 4


def test_a_roll_under_concurrent_appends_loses_nothing_and_leaves_no_hole(rolled):
    import time

    stop = threading.Event()
    appended: list[int] = []
    errors: list[BaseException] = []

    def write(w: int) -> None:
        version = 0
        try:
            while not stop.is_set():
                version += 1
                batch = [ev(f"w{w}", version)] if w % 2 else [ev(f"w{w}", version), ev(f"w{w}", version + 1)]
                version += len(batch) - 1
                appended.extend(a.position for a in rolled.trading.append(batch))
        except BaseException as e:  # noqa: BLE001 - a writer's death fails the test, below
            errors.append(e)
        finally:
            rolled.trading.release_connection()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    try:
        for month in ("2000-02", "2000-03", "2000-04"):
            seen, deadline = len(appended), time.monotonic() + 10
            time.sleep(0.1)
            while len(appended) <= seen and time.monotonic() < deadline:  # appends into this month first
                time.sleep(0.01)
            assert len(appended) > seen, f"no append went through before rolling to {month}"
            assert P.roll(rolled, "ts_events", month=month) is not None
        seen, deadline = len(appended), time.monotonic() + 10
        while len(appended) <= seen and time.monotonic() < deadline:  # and appends go on after the last roll
            time.sleep(0.01)
        assert len(appended) > seen
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors
    rows = assert_no_holes(rolled.trading)
    assert sorted(r[0] for r in real(rows) if r[1].startswith("w")) == sorted(appended)
    parts = P.partitions(rolled, "ts_events")
    assert [p.month for p in parts][-4:] == ["2000-01", "2000-02", "2000-03", "2000-04"]
    assert all(a.end == b.first for a, b in zip(parts, parts[1:]))


def test_the_create_statements_run_again_change_no_existing_layout(pg_url):
    """They run again when an upgrade changes the append function: a plain log must stay plain,
    a partitioned one must keep its partitions (no second open partition for a later month)."""
    from tradestate.adapters.store.sql import read_cursor

    def rerun(s):
        with write_cursor(s) as cur:
            for statement in s.trading.sql_create_statements:
                cur.execute(statement if isinstance(statement, str) else statement.as_string(None))

    with open_store(pg_url) as plain:
        plain.trading.append([ev("a", 1)])
    with open_store(partitioned(pg_url)) as s:
        rerun(s)
        assert P.partitions(s, "ts_events") == []
        with read_cursor(s) as cur:
            cur.execute("SELECT to_regclass(%s)", (f'"{s.trading.schema}".ts_events_versions',))
            assert cur.fetchone()[0] is None
        s.trading.append([ev("a", 2)])
    with open_store(partitioned(pg_url).replace("schema=", "schema=p")) as s:
        try:
            s.trading.append([ev("a", 1)])
            P.roll(s, "ts_events", month="2000-01")
            before = P.partitions(s, "ts_events")
            rerun(s)
            assert P.partitions(s, "ts_events") == before
            with pytest.raises(ConcurrencyConflict):
                s.trading.append([ev("a", 1)])
        finally:
            with write_cursor(s) as cur:
                cur.execute(f'DROP SCHEMA "{s.trading.schema}" CASCADE')


def test_convert_under_concurrent_appends_loses_no_acknowledged_event(pg_url):
    import time

    from tradestate.domain.errors import AppendFailed

    s = open_store(pg_url)
    stop = threading.Event()
    appended: list[int] = []
    failed: list[str] = []
    errors: list[BaseException] = []

    def write(w: int) -> None:
        version = 0
        try:
            while not stop.is_set():
                version += 1
                try:
                    appended.extend(a.position for a in s.trading.append([ev(f"w{w}", version)]))
                except AppendFailed as e:  # one already waiting on the old table: nothing appended
                    failed.append(str(e))
                    version -= 1
        except BaseException as e:  # noqa: BLE001 - a writer's death fails the test, below
            errors.append(e)
        finally:
            s.trading.release_connection()

    threads = [threading.Thread(target=write, args=(w,)) for w in range(3)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.2)
        assert P.convert(s, "ts_events", month="2000-01") is not None
        seen, deadline = len(appended), time.monotonic() + 10
        while len(appended) <= seen and time.monotonic() < deadline:  # appends go on into the new layout
            time.sleep(0.01)
        assert len(appended) > seen
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors
    try:
        rows = assert_no_holes(s.trading)
        assert sorted(r[0] for r in real(rows)) == sorted(appended)
        assert len(failed) <= 3, failed
        for w in range(3):  # every stream's versions are contiguous
            versions = [r[2] for r in real(rows) if r[1] == f"w{w}"]
            assert versions == list(range(1, len(versions) + 1))
    finally:
        s.close()


# ------------------------------------------------------------------ another process changes the layout


def _lease_event(previous, epoch):
    import orjson

    return "LeaseAcquired", orjson.dumps({"epoch": epoch})


def test_a_writer_that_outlives_a_restore_reads_versions_from_the_restored_log(pg_url, tmp_path):
    """A restore (another process) swaps a plain log in for a partitioned one: a writer opened
    before, whose log had already looked at the layout, finds its streams' versions in the restored
    log (its versions table went with the old log), and reads across no archive it no longer has."""
    from tradestate.adapters.store import backup as bk
    from tradestate.adapters.store.lease import Leases
    from tradestate.recovery import engine_ids

    url = partitioned(pg_url)
    with open_store(url) as writer:
        Leases.of(writer).acquire("e1", "w", 30, stream="engine-e1", event=_lease_event)
        assert engine_ids(writer) == ["e1"]
        writer.trading._archived_upto = (7, 1e18)  # it had seen archived positions (and will not ask again)
        bk.backup(writer, tmp_path / "log.tsb")
        writer.trading.append([ev("x", 1)])
        bk.restore(url, tmp_path / "log.tsb", force=True, keep_previous=False)  # as another process would
        with read_cursor(writer) as cur:
            assert not P.is_partitioned(cur, writer.trading.schema, "ts_events")  # restored as a plain log
        assert engine_ids(writer) == ["e1"]
        lease = Leases.of(writer).acquire("e2", "w", 30, stream="engine-e2", event=_lease_event)
        assert lease.epoch == 1
        writer.trading.append([ev("x", 1)])  # x@1 was appended after the backup: free again
        assert writer.trading.read_stream("nobody") == []


def test_a_writer_that_outlives_a_convert_and_an_archive_run_sees_the_archived_versions(pg_url, tmp_path):
    """Another process converts the plain log to partitions and archives its first month: a
    writer whose log had looked at the layout before sees the archived versions at once (the
    engine's stream lives only in the archive now), not a minute later."""
    from tradestate.adapters.store import archive as A
    from tradestate.adapters.store import digest
    from tradestate.adapters.store.lease import Leases
    from tradestate.domain.errors import LeaseHeld
    from tradestate.recovery import engine_ids

    with open_store(pg_url) as writer, open_store(pg_url, create=False) as other:
        Leases.of(writer).acquire("e1", "w", 30, stream="engine-e1", event=_lease_event)
        assert engine_ids(writer) == ["e1"]  # asked on the plain layout
        other.trading.append([ev("a", 1)])
        P.convert(other, "ts_events", month="2000-01")  # the old table becomes a closed partition
        other.trading.append([ev("a", 2)])
        digest.seal(other)
        assert [a.rows for a in A.archive(other, tmp_path, before="9999-12")] == [2]
        assert engine_ids(writer) == ["e1"]
        with pytest.raises(LeaseHeld):  # the archived lease event's version is known: the lease is the holder's
            Leases.of(writer).acquire("e1", "v", 30, stream="engine-e1", event=_lease_event)
        assert Leases.of(writer).acquire("e1", "w", 30, stream="engine-e1", event=_lease_event).epoch == 2
        assert [e.originator_version for e in writer.trading.read_stream("engine-e1")] == [1, 2]


_ENGINE = """
import sys

import tradestate
from tradestate.recovery import engine_ids

client = tradestate.connect(sys.argv[1], engine_id="e1", lease_seconds=30)  # its lease event: the layout asked
print("ready", flush=True)
sys.stdin.readline()  # the parent restores the log meanwhile
client.engine_stopped("e1")  # the clean stop, and the lease handed back (LeaseReleased)
print(",".join(engine_ids(client.store)), flush=True)
client.close()
"""


def test_an_engine_process_that_outlives_a_restore_stops_cleanly(pg_url, tmp_path):
    """Two processes: an engine holds its lease on a partitioned log, the operator restores a
    backup (taken meanwhile) over it from another process; the engine's clean stop records its
    events and hands the lease back in the restored log."""
    import subprocess
    import sys

    import orjson

    from tradestate.adapters.store import backup as bk

    url = partitioned(pg_url)
    open_store(url).close()
    engine = subprocess.Popen([sys.executable, "-c", _ENGINE, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert engine.stdout.readline().strip() == "ready", engine.stderr.read()
        with open_store(url, create=False) as operator:
            bk.backup(operator, tmp_path / "log.tsb")
        bk.restore(url, tmp_path / "log.tsb", force=True, keep_previous=False)
        out, err = engine.communicate("restored\n", timeout=60)
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait()
    assert engine.returncode == 0, err
    assert out.strip() == "e1"
    with open_store(url, create=False) as restored:
        with read_cursor(restored) as cur:
            assert not P.is_partitioned(cur, restored.trading.schema, "ts_events")  # a plain log now
        events = restored.trading.read_stream("engine-e1")
        assert [e.topic for e in events][-2:] == ["EngineStopped", "LeaseReleased"]
        assert orjson.loads(events[-1].state)["epoch"] == 1
