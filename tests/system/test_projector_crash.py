"""The projector process SIGKILLed at random moments while a writer keeps appending.

The projector runs as the real command (``python -m tradestate.cli project --db URL``, every
fifth start with ``--rebuild``) following a log that a writer thread (the real client) keeps
appending to. After it has loaded, the test waits a random 5-200 ms (so the kill lands while it
catches up on what was appended while it was dead, inside a page's transaction, a commit, or
the wait between pages) and sends SIGKILL. After every kill, before the restart:

* the tracking position P never goes back and never passes the log's head, and no row of any
  table carries a position beyond P (cheap, every kill);
* for a few kills: the tables equal a one-page rebuild of the log up to P, built in a second
  database (a new SQLite file / PostgreSQL schema) from a byte-for-byte copy of rows 1..P.

At the end (writer stopped, projector restarted, caught up, stopped with SIGTERM: exit 0) the
tracking position equals the log head and every table equals a one-page rebuild.

``TRADESTATE_PROJECTOR_KILLS`` (default 20 per database) and ``TRADESTATE_PROJECTOR_KILL_CHECKS``
(default 4) make it run longer by hand; ``TRADESTATE_PROJECTOR_KILL_SEED`` replays a run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.projector_worker import (
    Clock,
    ScratchDatabases,
    Writer,
    diff,
    prefix_snapshot,
    rebuild_snapshot,
    snapshot,
    write_session,
)
from tradestate.adapters.store import open_store
from tradestate.projections.projector import wait_for
from tradestate.projections.tables import TABLES

import tradestate

# alone (./dev test's serial phase): kills 5-200 ms after a start must find the projector working,
# which it is not while other tests load the machine
pytestmark = [pytest.mark.slow, pytest.mark.serial]

KILLS = int(os.environ.get("TRADESTATE_PROJECTOR_KILLS", "20"))
CHECKS = int(os.environ.get("TRADESTATE_PROJECTOR_KILL_CHECKS", "4"))
SEED = int(os.environ.get("TRADESTATE_PROJECTOR_KILL_SEED", str(random.randrange(1 << 30))))

# where each table records the last log position a row reflects
_LAST = {table: [c for c, _ in cols].index("last_position") for table, (cols, _key) in TABLES.items()
         if "last_position" in [c for c, _ in cols]}


def start(db_url: str, out: Path, *extra: str) -> subprocess.Popen:
    """Start the projector command; return once it has loaded (its first line is printed)."""
    out.write_text("")
    proc = subprocess.Popen([sys.executable, "-m", "tradestate.cli", "project", "--db", db_url, *extra],
                            stdout=out.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        text = out.read_text()
        if "following" in text or "rebuilding" in text:
            return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"the projector did not start (exit {proc.returncode}):\n{text}")
        time.sleep(0.005)


def check_consistent(store, tracked: int, tables: dict[str, list[tuple]]) -> None:
    """No row reflects an event beyond the tracking position."""
    head = store.trading.head()
    assert 0 <= tracked <= head, (tracked, head)
    assert set(_LAST) == set(TABLES), "a table without last_position: check it another way"
    for table, rows in tables.items():
        index = _LAST[table]
        beyond = [r for r in rows if r[index] > tracked]
        assert not beyond, f"{table} has rows from beyond the tracked position {tracked}: {beyond[:3]}"


def test_projector_killed_at_random_moments_never_loses_or_doubles_an_event(db_url, tmp_path):
    try:
        _kill_and_check(db_url, tmp_path)
    except AssertionError as e:
        raise AssertionError(f"{e}\n(replay with TRADESTATE_PROJECTOR_KILL_SEED={SEED})") from None


def _kill_and_check(db_url: str, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    print(f"\nseed {SEED} (TRADESTATE_PROJECTOR_KILL_SEED), {KILLS} kills, {CHECKS} full checks")
    started = time.monotonic()
    with tradestate.connect(db_url, clock=Clock()) as client:
        write_session(client, 200, seed=21)  # something to catch up on at the first start
    out = tmp_path / "projector.out"
    checked_kills = set(rng.sample(range(KILLS), min(CHECKS, KILLS)))
    writer = Writer(db_url, seed=SEED, pause=0.001)
    history: list[tuple[int, int, str]] = []  # (tracked after the kill, head at the kill, mode)
    with open_store(db_url) as store, ScratchDatabases(db_url, str(tmp_path)) as scratch:
        writer.start()
        try:
            last = 0
            for k in range(KILLS):
                mode = "--rebuild" if k % 5 == 2 else "follow"
                proc = start(db_url, out, *([mode] if mode == "--rebuild" else []))
                time.sleep(rng.uniform(0.005, 0.2))
                head_at_kill = store.trading.head()
                proc.send_signal(signal.SIGKILL)
                assert proc.wait(10) == -signal.SIGKILL, out.read_text()
                assert "Traceback" not in out.read_text(), out.read_text()
                tracked, tables = snapshot(store)
                check_consistent(store, tracked, tables)
                if mode != "--rebuild":
                    assert tracked >= last, f"kill {k}: the tracking position went back from {last} to {tracked}"
                last = tracked
                history.append((tracked, head_at_kill, mode))
                if k in checked_kills and tracked:
                    expected = prefix_snapshot(store, tracked, scratch.new())
                    assert tables == expected, (
                        f"kill {k} ({mode}): the tables at tracked position {tracked} differ from a rebuild "
                        f"of the log up to there:\n{diff(tables, expected)}")
        finally:
            writer.stop.set()
            writer.join(30)
        assert writer.error is None, writer.error
        assert writer.commands > 100

        # the last start: catches up with everything, stops cleanly on SIGTERM
        proc = start(db_url, out)
        try:
            head = store.trading.head()
            assert wait_for(store, head, timeout=60), f"stuck at {snapshot(store)[0]} of {head}"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0, out.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert "stopped: position" in out.read_text()
        tracked, tables = snapshot(store)
        assert tracked == store.trading.head() == head
        rebuilt_at, rebuilt = rebuild_snapshot(store)
        assert rebuilt_at == head
        assert tables == rebuilt, f"after {KILLS} kills the tables differ from a rebuild:\n{diff(tables, rebuilt)}"

    behind = sum(1 for tracked, head_at, _ in history if tracked < head_at)
    moved = len({tracked for tracked, _, _ in history})
    print(f"{store.kind}: {KILLS} kills in {time.monotonic() - started:.1f} s, log head {head:,} "
          f"({writer.commands:,} client commands); {behind} kills caught it behind the head, "
          f"{moved} distinct tracked positions; tracked after each kill: {[t for t, _, _ in history]}")
    assert moved > KILLS // 3, "the projector hardly moved between kills: the kills tested little"
