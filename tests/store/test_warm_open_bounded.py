"""A warm open costs the open state, not the history: loading the newest checkpoint reads the
same whatever the length of the log behind it (the check of an unauthenticated checkpoint's risk
state against the log finds the log's risk events through their own index, not by a scan)."""

from __future__ import annotations

import sqlite3

from tradestate.adapters.store import checkpoints, open_store
from tradestate.loading import state_at
from tradestate.tools.bench.logs import load_sqlite_log


def _vm_steps_of_a_checkpoint_load(path: str) -> int:
    """SQLite virtual-machine steps (in thousands) spent by ``checkpoints.load`` on the log at ``path``."""
    with open_store(f"sqlite:///{path}", create=False) as store:
        checkpoints.write(store, state_at(store))
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        with store.trading.transaction(write=False) as cur:
            conn = cur.connection
        assert isinstance(conn, sqlite3.Connection)
        conn.set_progress_handler(count, 1_000)
        try:
            loaded = checkpoints.load(store)
        finally:
            conn.set_progress_handler(None, 0)
        assert loaded.state is not None and loaded.state.position == store.trading.head()
        return steps[0]


def test_loading_a_checkpoint_reads_as_much_after_a_long_history_as_after_a_short_one(tmp_path, monkeypatch):
    monkeypatch.delenv("TRADESTATE_CHECKPOINT_KEY", raising=False)
    monkeypatch.delenv("TRADESTATE_CHECKPOINT_KEY_FILE", raising=False)  # unauthenticated: the risk check runs
    short, long = str(tmp_path / "short.db"), str(tmp_path / "long.db")
    load_sqlite_log(short, 3_000)
    load_sqlite_log(long, 60_000)
    steps_short = _vm_steps_of_a_checkpoint_load(short)
    steps_long = _vm_steps_of_a_checkpoint_load(long)
    # 20x the history; a scan of the log would be >= 20x the steps (60k rows). Nothing of the
    # history is in the checkpoint (snapshot version 3 counts the finished orders, keeps no id).
    assert steps_long <= 3 * max(steps_short, 10), (steps_short, steps_long)


def test_the_risk_events_index_is_created_with_the_checkpoints_table(tmp_path):
    path = str(tmp_path / "log.db")
    load_sqlite_log(path, 1_000)
    with open_store(f"sqlite:///{path}", create=False) as store:
        checkpoints.write(store, state_at(store))
    conn = sqlite3.connect(path)
    names = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    conn.close()
    assert checkpoints.RISK_INDEX in names


def _tail_verify_peak(path: str) -> int:
    """Peak bytes Python allocates while ``digest.verify`` checks the last range of the sealed log
    at ``path`` (ranges of 500 events), as a warm recovery does after its checkpoint."""
    import tracemalloc

    from tradestate.adapters.store import digest

    with open_store(f"sqlite:///{path}", create=False) as store:
        digest.seal(store, max_range=500)
        head = store.trading.head()
        tracemalloc.start()
        try:
            result = digest.verify(store, after=head - 100)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert result.ok and result.checked_events == 500
    return peak


def test_verifying_the_tail_holds_the_tail_not_the_history(tmp_path):
    """The chain of a long log carries fingerprints for every event (12 bytes each); checking the
    ranges after a checkpoint must read only theirs, whatever the history behind them."""
    short, long = str(tmp_path / "short.db"), str(tmp_path / "long.db")
    load_sqlite_log(short, 3_000)
    load_sqlite_log(long, 90_000)
    peak_short, peak_long = _tail_verify_peak(short), _tail_verify_peak(long)
    # 87k more events of history: their fingerprints alone would be 1 MB more
    assert peak_long < peak_short + 300_000, (peak_short, peak_long)


def _vm_steps_of_a_tail_verify(path: str) -> tuple[int, int]:
    """(SQLite virtual-machine steps in thousands, events re-hashed) of ``digest.verify`` of the
    ranges after a checkpoint 1,000 events behind the head of the sealed log at ``path``."""
    from tradestate.adapters.store import digest

    with open_store(f"sqlite:///{path}", create=False) as store:
        digest.seal(store, max_range=500)
        head = store.trading.head()
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        with store.trading.transaction(write=False) as cur:
            conn = cur.connection
        conn.set_progress_handler(count, 1_000)
        try:
            result = digest.verify(store, after=head - 1_000)
        finally:
            conn.set_progress_handler(None, 0)
    assert result.ok
    return steps[0], result.checked_events


def test_verifying_the_tail_reads_as_much_after_a_long_history_as_after_a_short_one(tmp_path):
    """A warm recovery re-hashes the sealed ranges after its checkpoint: the same events whatever
    the history behind them (the chain's links are read without their fingerprints, 12 bytes an
    event: reading those was 0.5-1 s of a warm start at ten million events)."""
    short, long = str(tmp_path / "short.db"), str(tmp_path / "long.db")
    load_sqlite_log(short, 3_000)
    load_sqlite_log(long, 60_000)
    steps_short, checked_short = _vm_steps_of_a_tail_verify(short)
    steps_long, checked_long = _vm_steps_of_a_tail_verify(long)
    assert checked_short == checked_long == 1_000
    # 20x the history: reading its fingerprints (or scanning its rows) would be >= 20x the steps
    assert steps_long <= 2 * max(steps_short, 10), (steps_short, steps_long)
