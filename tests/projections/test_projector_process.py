"""The projector's writer process (a long catch-up commits its pages in a child process, so the
fold and the database writes use two cores): same tables, same exactly-once, clear failures."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import timezone

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.support.projector_worker import Clock, assert_equals_rebuild, dump_tables, write_session
from tradestate.projections import projector as projector_module
from tradestate.projections.projector import ProjectionConflict, Projector

import tradestate


def test_a_writer_process_commits_exactly_what_the_writer_thread_commits(store, session):
    projector = Projector(store, page=13)
    assert projector.rebuild_in_pages(writer_process=True) == session
    assert projector.applied_pages == -(-session // 13)
    assert projector.tracked_position() == session
    tables = dump_tables(store)
    assert tables["ts_orders"] and tables["ts_positions"] and tables["ts_equity_curve"] and tables["ts_risk_usage"]
    assert_equals_rebuild(store)  # == a one-page rebuild through the thread


def test_a_conflict_in_the_writer_process_is_raised_and_the_projector_reloads(store, session):
    stale = Projector(store, page=20)
    assert stale.load() == 0  # the tables are empty...
    Projector(store, page=7).catch_up(writer_process=False)  # ...until another projector fills them
    with pytest.raises(ProjectionConflict):  # the child refuses the stale projector's first page
        stale.catch_up(writer_process=True)
    assert stale.state.position == session  # reloaded: where the tables are
    assert stale.catch_up(writer_process=True) == session
    assert_equals_rebuild(store)


def test_a_writer_process_that_dies_is_a_clear_error_and_nothing_is_half_written(store, session, monkeypatch):
    original = projector_module._ProcessWriter.submit
    sent = []

    def submit(self, commit, page):
        sent.append(page.start)
        if len(sent) == 4:  # the child dies with three pages committed
            self.result()
            self._proc.kill()
            self._proc.wait()
        return original(self, commit, page)

    monkeypatch.setattr(projector_module._ProcessWriter, "submit", submit)
    projector = Projector(store, page=17)
    with pytest.raises(RuntimeError, match="writer process ended unexpectedly"):
        projector.rebuild_in_pages(writer_process=True)
    tracked = projector.tracked_position()
    assert tracked == 3 * 17  # whole pages only
    assert projector.state.position == tracked  # memory reloaded to what landed
    monkeypatch.setattr(projector_module._ProcessWriter, "submit", original)
    assert projector.catch_up(writer_process=True) == session
    assert_equals_rebuild(store)


def test_a_script_without_a_main_guard_can_rebuild_through_a_writer_process(sqlite_url, tmp_path):
    with tradestate.connect(sqlite_url, clock=Clock()) as client:
        head = write_session(client, 120, seed=3)
    script = tmp_path / "rebuild.py"
    script.write_text(textwrap.dedent(f"""
        from tradestate.adapters.store import open_store
        from tradestate.projections.projector import Projector
        with open_store({sqlite_url!r}) as store:
            print(Projector(store, page=10).rebuild_in_pages(writer_process=True))
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(head)]


@given(st.datetimes(timezones=st.just(timezone.utc)))
def test_orjson_writes_a_utc_time_exactly_as_isoformat(moment):
    # the writer process's pages leave UTC times to orjson; the tables hold isoformat() text
    assert orjson.loads(orjson.dumps(moment)) == moment.isoformat()
