"""Parquet archives of a partitioned PostgreSQL log (adapters/store/archive.py): sealed months
exported with chained manifests and recorded in ts_archives, then detached and dropped; the log's
and the digest chain's readers read across archived and live data; a month restored as a read-only
partition; damage and missing files are named."""

from __future__ import annotations

import hashlib
import json

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.store.store_contract import ev, real, rows_of
from tests.support.partitioned import partitioned
from tradestate.adapters.store import digest, open_store
from tradestate.adapters.store import archive as A
from tradestate.adapters.store import partitions as P
from tradestate.adapters.store.sql import write_cursor
from tradestate.domain.errors import ConcurrencyConflict

pytestmark = pytest.mark.postgres
MONTHS = ("2020-01", "2020-02", "2020-03")


@pytest.fixture
def months(pg_url):
    """A partitioned log of three closed months of 25 events (stream ``a``) and an open one."""
    s = open_store(partitioned(pg_url))
    P.create_history(s, "ts_events", ["2019-12"], [1])  # the first partition: a month before the others
    version = 0
    for month in MONTHS:
        for _ in range(5):
            s.trading.append([ev("a", version + i + 1) for i in range(5)])
            version += 5
        P.roll(s, "ts_events", month=month)
    s.trading.append([ev("b", 1)])
    try:
        yield s
    finally:
        s.close()


def test_sealed_months_are_archived_with_chained_manifests_then_dropped(months, tmp_path):
    before = rows_of(months.trading)
    assert A.archive(months, tmp_path, before="2020-03") == []  # nothing sealed yet: nothing archived
    digest.seal(months)
    done = A.archive(months, tmp_path, before="2020-03")
    assert [(a.month, a.first_position, a.last_position, a.rows) for a in done] == [
        ("2019-12", 1, 25, 25), ("2020-01", 26, 50, 25), ("2020-02", 51, 75, 25)]
    assert [p.month for p in P.partitions(months, "ts_events")] == ["2020-03"]  # detached and dropped
    manifests = [json.loads((tmp_path / (a.file + ".manifest.json")).read_bytes()) for a in done]
    assert manifests[0]["previous_manifest_sha256"] == ""
    for earlier, later, a in zip(done, manifests[1:], done[1:]):
        assert later["previous_manifest_sha256"] == earlier.manifest_sha256 == a.previous_manifest_sha256
    assert manifests[2]["sha256"] == hashlib.sha256((tmp_path / done[2].file).read_bytes()).hexdigest()
    assert manifests[2]["chain"]["range_start"] <= 75 <= manifests[2]["chain"]["range_end"]
    assert A.check(months).ok
    assert A.archive(months, tmp_path, before="2020-03") == []  # done once
    # readers across archived and live data
    assert rows_of(months.trading) == before
    assert rows_of(months.trading, 20, 60) == before[20:60]
    result = digest.verify(months)
    assert result.ok and result.checked_events == len(before), result.detail
    # a stream read (an aggregate's load) gets its archived events from the files
    assert [e.originator_version for e in months.trading.read_stream("a")] == list(range(1, 76))
    assert [e.originator_version for e in months.trading.read_stream("a", 60)] == list(range(61, 76))
    # where writers read a stream's current version (coalescer, leases, engine ids): archives included
    from tradestate.adapters.store.sql import read_cursor

    with read_cursor(months) as cur:
        cur.execute(f"SELECT max(stream_version) FROM {months.trading.versions_relation} WHERE stream_id = 'a'")
        assert cur.fetchone()[0] == 75
    # the concurrency check still knows the archived versions
    with pytest.raises(ConcurrencyConflict):
        months.trading.append([ev("a", 3)])
    # ts_archives is append-only
    with pytest.raises(psycopg.errors.InsufficientPrivilege), write_cursor(months) as cur:
        cur.execute(f'DELETE FROM "{months.trading.schema}".ts_archives')


def test_an_edited_archive_is_named_by_check_and_by_verify(months, tmp_path):
    digest.seal(months)
    done = A.archive(months, tmp_path, before="2020-02")
    path = tmp_path / done[1].file
    table = pq.read_table(path)
    data = table.column("data").to_pylist()
    data[3] = b'{"forged": true}'
    pq.write_table(table.set_column(table.schema.get_field_index("data"), "data", pa.array(data, pa.binary())), path)
    check = A.check(months)
    assert not check.ok and done[1].file in check.detail and "sha256" in check.detail
    result = digest.verify(months)
    assert not result.ok and result.first_bad_position == done[1].first_position + 3 and result.problem == "edited"


def test_a_missing_archive_is_named_not_read_as_a_hole(months, tmp_path):
    digest.seal(months)
    done = A.archive(months, tmp_path, before="2020-02")
    (tmp_path / done[0].file).unlink()
    assert not A.check(months).ok
    with pytest.raises(A.ArchiveError, match=done[0].file):
        rows_of(months.trading)
    with pytest.raises(A.ArchiveError, match=done[0].file):
        digest.verify(months)
    assert months.trading.head() == 76  # nothing was voided over the archived range


def test_the_archive_directory_of_the_url_is_where_readers_look(months, tmp_path, pg_url):
    digest.seal(months)
    done = A.archive(months, tmp_path / "first", before="2020-02")
    (tmp_path / "first").rename(tmp_path / "moved")
    with open_store(partitioned(pg_url) + f"&archive={tmp_path / 'moved'}", create=False) as s:
        assert len(real(rows_of(s.trading))) == 76
        assert digest.verify(s).ok and A.check(s).ok
    assert done


def test_a_restored_month_is_a_read_only_partition_and_can_go_again(months, tmp_path):
    before = rows_of(months.trading)
    digest.seal(months)
    A.archive(months, tmp_path, before="2020-03")
    (restored,) = A.restore(months, "2020-01")
    assert restored.attached and [p.month for p in P.partitions(months, "ts_events")] == ["2020-01", "2020-03"]
    with pytest.raises(psycopg.errors.InsufficientPrivilege), write_cursor(months) as cur:
        cur.execute(f'UPDATE "{months.trading.schema}"."{restored.partition}" SET type = %s', ("x",))
    assert rows_of(months.trading) == before and digest.verify(months).ok and A.check(months).ok
    # archiving again drops the restored month (its file is the archive)
    assert A.archive(months, tmp_path, before="2020-03") == []
    assert [p.month for p in P.partitions(months, "ts_events")] == ["2020-03"]
    assert rows_of(months.trading) == before


def test_the_commands(months, tmp_path):
    from typer.testing import CliRunner

    from tradestate.cli.main import app

    runner = CliRunner()
    db = ["--db", months.url]

    def run(*args: str) -> dict:
        result = runner.invoke(app, [*args, *db, "--json"], catch_exceptions=False)
        assert result.exit_code == 0, (args, result.output)
        return json.loads(result.stdout)

    assert [p["month"] for p in run("partitions", "list", "--log", "trading")["ts_events"]] == [
        "2019-12", *MONTHS]
    assert run("partitions", "roll", "--log", "trading", "--month", "2020-04")["ts_events"]["end"] == 77
    digest.seal(months)
    done = run("archive", "--to", str(tmp_path), "--before", "2020-02", "--log", "trading")["archived"]
    assert [a["month"] for a in done] == ["2019-12", "2020-01"]
    assert [a["attached"] for a in run("archive", "list")] == [False, False]
    assert run("archive", "check")["ok"]
    assert run("archive", "restore", "--month", "2020-01")["restored"][0]["attached"]
    (tmp_path / done[0]["file"]).write_bytes(b"not parquet")
    result = runner.invoke(app, ["archive", "check", *db])
    assert result.exit_code == 1 and done[0]["file"] in result.output


def test_a_backup_of_an_archived_log_restores_with_its_archives(months, tmp_path, pg_url):
    from tradestate.adapters.store import backup as bk

    before = rows_of(months.trading)
    digest.seal(months)
    A.archive(months, tmp_path / "archive", before="2020-03")
    bk.backup(months, tmp_path / "log.tsb")
    target = partitioned(pg_url.replace(months.trading.schema, months.trading.schema + "_r"))
    try:
        result = bk.restore(target, tmp_path / "log.tsb")
        assert result.ok
        with open_store(target, create=False) as s:
            assert rows_of(s.trading) == before and digest.verify(s).ok
            assert [a.month for a in A.archived(s, "ts_events")] == ["2019-12", "2020-01", "2020-02"]
            assert P.partitions(s, "ts_events")  # partitioned again
            with pytest.raises(ConcurrencyConflict):
                s.trading.append([ev("a", 3)])  # an archived version is still taken
            assert [e.originator_version for e in s.trading.read_stream("a")] == list(range(1, 76))
    finally:
        with psycopg.connect(pg_url.split("?")[0], autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{months.trading.schema}_r" CASCADE')


def test_a_log_that_asked_before_the_archive_reads_across_it(months, tmp_path, pg_url):
    with open_store(partitioned(pg_url), create=False) as other:  # another process's view, asked before
        assert other.trading.read_stream("nobody") == [] and other.trading.archived_upto() == 0
        digest.seal(months)
        A.archive(months, tmp_path, before="2020-02")
        assert months.trading.archived_upto() == 50  # the archiving process knows at once
        # the other asks again once the hole the archive left outlasts an append in flight, not a
        # minute later (and never voids it)
        import time

        deadline = time.monotonic() + 5
        while len(real(rows := rows_of(other.trading))) < 76 and time.monotonic() < deadline:
            time.sleep(other.trading.hole_probe_after)
        assert len(real(rows)) == 76 and rows == rows_of(months.trading)


def test_a_log_with_archived_months_is_not_migrated_and_an_increment_after_an_archive_run_is_refused(
        months, tmp_path):
    from tradestate.adapters.store import backup as bk
    from tradestate.adapters.store import migrate as mg

    digest.seal(months)
    bk.backup(months, tmp_path / "full.tsb")  # before the archive run
    A.archive(months, tmp_path / "archive", before="2020-03")
    target = f"sqlite:///{tmp_path / 'moved.db'}"
    with pytest.raises(mg.MigrateRefused, match="archived to Parquet"):
        mg.migrate(months.url, target)
    assert not (tmp_path / "moved.db").exists() or open_store(target).trading.head() == 0
    # the archived prefix moved since the full backup: its increment would not restore
    with pytest.raises(bk.IncrementRefused, match="take a full backup"):
        bk.backup(months, tmp_path / "inc.tsb", previous=tmp_path / "full.tsb")
    bk.backup(months, tmp_path / "full2.tsb")  # a new full backup carries the archive record
    bk.backup(months, tmp_path / "inc2.tsb", previous=tmp_path / "full2.tsb")


def test_the_order_reference_reads_take_only_the_archived_rows_they_need(months, tmp_path, monkeypatch):
    """``order_refs.rows_at`` / ``rows_after`` (a trace's reads of an account stream) read from the
    archive files only the positions asked for, not the whole stream's archived history."""
    from tradestate.adapters.store import order_refs

    digest.seal(months)
    A.archive(months, tmp_path, before="2020-03")  # stream a (positions 1-75) is archived in three files
    live = {r[0]: r for r in rows_of(months.trading)}
    read: list[int] = []
    real_read_pages = A.read_pages

    def counted(*args, **kwargs):
        for page in real_read_pages(*args, **kwargs):
            read.extend(r[0] for r in page)
            yield page

    monkeypatch.setattr(A, "read_pages", counted)
    got = order_refs.rows_at(months, "a", [30, 31, 74, 76])
    assert [r[0] for r in got] == [30, 31, 74]  # 76 is b's
    assert [(r[1], r[2], r[4]) for r in got] == [(live[p][1], live[p][2], bytes(live[p][4])) for p in (30, 31, 74)]
    assert sorted(read) == [30, 31, 74]
    read.clear()
    assert [r[0] for r in order_refs.rows_after(months, "a", 70)] == [71, 72, 73, 74, 75]
    assert sorted(read) == [71, 72, 73, 74, 75]
