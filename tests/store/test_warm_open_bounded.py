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
    # 20x the history; a scan of the log would be >= 20x the steps (60k rows). The packed ids of
    # the finished orders (16 bytes each) are the only part that grows.
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
