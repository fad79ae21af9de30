"""Replay over a store clock that stepped back: ``recorded_at`` no longer follows log order, and
the log's time at a position is the latest stamp up to it (it never runs backwards). ``state
--at T`` is the log up to the last position whose log time is at or before T; windows and diffs
use the same positions; the stepped-back runs left out are named. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import tempfile
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tradestate
from tradestate import replay
from tradestate.adapters.store import open_store
from tradestate.cli.main import app
from tradestate.replay.log import LogTimes, ReplayError, log_times, window_events
from tradestate.replay.state import diff, render_state, state_at_position, state_at_time
from tradestate.replay.timeline import timeline

from tests.support.clock_log import B, S
from tests.support.clock_log import signals as _signals
from tests.support.clock_log import stepped_back_log as _stepped_back_log
from tests.support.db import restamp, tamper
from tests.support.projector_worker import Clock

def _last_signal(st) -> str | None:
    signal = st.state.signals.get(("s", "AAPL"))
    return signal["signal"] if signal else None


def test_state_at_an_instant_is_the_log_up_to_the_last_position_whose_log_time_is_at_or_before_it(db_url):
    stamps = _stepped_back_log(db_url)
    with open_store(db_url, create=False) as store:
        times = log_times(store)
        [run] = times.runs
        assert (run.first, run.last, run.log_time) == (21, 30, B + 20 * S)
        assert (run.earliest, run.latest) == (stamps[21], stamps[30])
        assert [times.time_at(p) for p in (20, 21, 30, 31)] == [B + 20 * S, B + 20 * S, B + 20 * S, B + 91 * S]
        cases = {
            B + 10 * S: 10,  # before the step back: 21..30, stamped earlier, are left out and named
            B + 20 * S: 30,  # at the log's time of the run: the run is in
            B + 25 * S: 30,  # between the run and the clock catching up
            B + 91 * S - timedelta(microseconds=1): 30,
            B + 91 * S: 31,
            B + 95 * S: 35,
            B + 100 * S: 40,  # the latest stamp: the head
        }
        for at, position in cases.items():
            got = state_at_time(store, at)
            assert got.position == position, at
            assert _last_signal(got) == f"x{position - 1}"
            # never an event stamped after the instant; every left-out one stamped at or before it is named
            assert all(stamps[p] <= at for p in range(1, position + 1))
            left_out = {p for p in range(position + 1, 41) if stamps[p] <= at}
            named = {p for r in got.stepped_back for p in range(r.first, r.last + 1)}
            assert left_out <= named
            assert bool(got.stepped_back) == bool(left_out)
        view = state_at_time(store, B + 10 * S).view()
        assert view["stepped_back"] == [{"first": 21, "last": 30, "log_time": "2026-03-02T15:00:20Z",
                                         "earliest": "2026-03-02T14:30:21Z", "latest": "2026-03-02T14:30:30Z"}]
        assert "stepped_back" not in state_at_time(store, B + 25 * S).view()
        # the log's time at a position is what a position query reports
        assert state_at_position(store, 25).at == B + 20 * S
        with pytest.raises(ReplayError, match="after the log ends"):
            state_at_time(store, B + 100 * S + timedelta(microseconds=1))
        with pytest.raises(ReplayError, match="before the log starts"):
            state_at_time(store, stamps[21])  # stamped, but before the log's first time


def test_a_step_back_that_ends_the_log_does_not_shorten_it(db_url):
    _signals(db_url, 20)
    stamps = {p: B + p * S for p in range(1, 11)}
    stamps.update({p: B - timedelta(hours=1) + p * S for p in range(11, 21)})
    with open_store(db_url, create=False) as store:
        restamp(store, stamps)
        got = state_at_time(store, B + 10 * S)  # the latest stamp: the whole log
        assert got.position == 20 and not got.stepped_back
        got = state_at_time(store, B + 5 * S)
        assert got.position == 5 and [(r.first, r.last) for r in got.stepped_back] == [(11, 20)]
        with pytest.raises(ReplayError, match="after the log ends"):
            state_at_time(store, B + 11 * S)


def test_windows_diffs_and_timelines_take_the_same_positions(db_url):
    stamps = _stepped_back_log(db_url)
    with open_store(db_url, create=False) as store:
        events = window_events(store, B + 15 * S, B + 25 * S)
        assert [e.position for e in events] == list(range(15, 31))
        inside = [e for e in events if e.position > 20]
        assert all(e.recorded_at == stamps[e.position] and e.time("recorded") == B + 20 * S for e in inside)
        assert all(e.envelope()["log_time"] == "2026-03-02T15:00:20Z" for e in inside)
        assert "log_time" not in events[0].envelope()
        # before the run's log time: the window ends at 20 although 21..30 are stamped earlier
        assert [e.position for e in window_events(store, B - timedelta(hours=1), B + 19 * S)] == list(range(1, 20))
        # the state at the end is the state before the start plus the window's events
        d = diff(store, B + 10 * S, B + 25 * S)
        assert (d["from"]["position"], d["to"]["position"], d["event_count"]) == (10, 30, 20)
        assert [r["first"] for r in d["from"]["stepped_back"]] == [21] and "stepped_back" not in d["to"]
        tl = timeline(store, B + 20 * S, "5s")
        assert [e.position for e in tl.events] == list(range(15, 31))
        out = tl.to_json()
        assert [r["first"] for r in out["stepped_back"]] == [21]
        assert {e["time"] for e in out["events"] if e["position"] > 20} == {"2026-03-02T15:00:20Z"}
        exported = replay.frame(store, "events", start=B + 15 * S, end=B + 25 * S)
        assert exported.column("position").to_pylist() == list(range(15, 31))


def test_the_cli_says_when_the_instant_was_stamped_again_after_a_step_back(db_url):
    from typer.testing import CliRunner

    _stepped_back_log(db_url)
    result = CliRunner().invoke(app, ["replay", "state", "--db", db_url, "--at", "2026-03-02T15:00:10Z", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["position"] == 10 and out["stepped_back"][0]["first"] == 21
    with open_store(db_url, create=False) as store:
        text = _rendered(render_state(state_at_time(store, B + 10 * S).view()))
        assert "stepped back: positions 21..30" in text


def _rendered(renderable) -> str:
    from rich.console import Console

    console = Console(width=400, record=True, file=open("/dev/null", "w"))  # noqa: SIM115 - closed with the console
    console.print(renderable)
    return console.export_text()


def test_the_log_times_follow_appends_and_notice_a_replaced_log(db_url):
    _signals(db_url, 10)
    with open_store(db_url, create=False) as store:
        restamp(store, {p: B + p * S for p in range(1, 11)})
        times = log_times(store)
        assert (times.upto, times.runs) == (10, [])
        assert state_at_time(store, B + 10 * S).position == 10
    _signals(db_url, 5)  # 11..15, stamped now: later than B
    with open_store(db_url, create=False) as store:
        restamp(store, {12: B + 5 * S, 13: B + 6 * S})
        times = log_times(store)
        kept = store.__dict__["_log_times"]["trading"]
        assert times is kept
        assert [(r.first, r.last, r.log_time) for r in times.runs] == [(12, 13, times.time_at(11))]
        assert state_at_time(store, B + 7 * S).stepped_back[0].first == 12
        # appended since: only the new rows are scanned, and the answer is the one of a fresh index
        restamp(store, {p: B + (p + 100) * S for p in (14, 15)})
        _append_more(store)
        fresh = LogTimes(store).refresh()
        again = log_times(store)
        assert again is kept
        assert (again.upto, again.high, again.runs) == (fresh.upto, fresh.high, fresh.runs)


def _append_more(store) -> None:
    with tradestate.connect(store.url, clock=Clock(), venue="sim") as client:
        client.record_signal("s", "AAPL", "late")
    restamp(store, {16: B + 3 * S})  # the store's clock stepped back again


# ----------------------------------------------------------------------------- property


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offsets=st.lists(st.integers(min_value=-30, max_value=30), min_size=1, max_size=12),
       probes=st.lists(st.integers(min_value=-40, max_value=40), min_size=1, max_size=6))
def test_state_at_and_windows_follow_exactly_the_running_maximum_of_the_stamps(offsets, probes):
    """For any stamps: state at T is the fold of the events whose log time (running max) <= T,
    and a window [start, end] holds the events whose log time is in it."""
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/log.db"
        _signals(url, len(offsets))
        stamps = {p: B + offset * S for p, offset in enumerate(offsets, 1)}
        with open_store(url, create=False) as store:
            restamp(store, stamps)
            first, latest = stamps[1], max(stamps.values())
            for probe in probes + offsets:
                at = B + probe * S
                if at < first or at > latest:
                    with pytest.raises(ReplayError):
                        state_at_time(store, at)
                    continue
                running, want = None, 0
                for p in range(1, len(offsets) + 1):
                    running = stamps[p] if running is None or stamps[p] > running else running
                    if running <= at:
                        want = p
                got = state_at_time(store, at)
                assert got.position == want
                assert _last_signal(got) == (f"x{want - 1}" if want else None)
            # a window is exactly the events whose log time is in it
            running, log_time = None, {}
            for p in range(1, len(offsets) + 1):
                running = stamps[p] if running is None or stamps[p] > running else running
                log_time[p] = running
            for lo, hi in zip(sorted(probes), sorted(probes)[1:]):
                start, end = B + lo * S, B + hi * S
                assert [e.position for e in window_events(store, start, end)] == \
                    [p for p, t in log_time.items() if start <= t <= end]


def test_a_voided_hole_does_not_move_the_log_time(db_url):
    """A ``$void`` row (a hole a reader gave up waiting for) is stamped when it was voided, later
    than the events after it that were committed already: not an event, so not the log's time."""
    _signals(db_url, 20)
    with open_store(db_url, create=False) as store:
        restamp(store, {p: B + p * S for p in range(1, 21)})
        tamper(store, ("UPDATE ts_events SET stream_id = %s, stream_version = position, type = %s, data = %s,"
                       " recorded_at = %s WHERE position = 10",
                       ("$void", "$void", b"{}", (B + 15.5 * S).isoformat() if store.kind == "sqlite" else B + 15.5 * S)))
        times = log_times(store)
        assert times.runs == []
        assert [times.time_at(p) for p in (9, 10, 11)] == [B + 9 * S, B + 9 * S, B + 11 * S]
        assert times.position_at(B + 12 * S) == 12 and times.position_at(B + 9.5 * S) == 10
        events = window_events(store, B + 11 * S, B + 15 * S)
        assert [e.position for e in events] == [11, 12, 13, 14, 15]
        assert all(e.log_time is None for e in events)
