"""Checkpoints over a store clock that stepped back: a checkpoint's position, not its wall time,
decides which one a time query starts from; one written before the step back is not refused as
"written in the future"; one ahead of the log's own time at its position still is. On SQLite and
PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import tradestate
from tradestate.adapters.store import checkpoints as cp
from tradestate.adapters.store import open_store
from tradestate.domain.state import TradingState
from tradestate.loading import fold_tail, load_checkpoint
from tradestate.replay.state import state_at_time

from tests.support.clock_log import B, S, stepped_back_log
from tests.support.projector_worker import Clock


def fold(store, stop=None) -> TradingState:
    state = TradingState()
    fold_tail(store, state, stop)
    return state


def test_a_time_query_starts_from_the_newest_checkpoint_at_or_before_its_position(db_url):
    stepped_back_log(db_url)
    with open_store(db_url, create=False) as store:
        cp.write(store, fold(store, 20))  # just before the store's clock stepped back
        cp.write(store, fold(store, 25))  # inside the stepped-back run (stamped half an hour earlier)
        cases = {
            B + 10 * S: (10, None),  # earlier than both checkpoints' log time (B+20s): neither
            B + 20 * S - timedelta(microseconds=1): (19, None),
            B + 20 * S: (30, 25),  # the run's log time: both qualify, the newer is taken
            B + 95 * S: (35, 25),
        }
        for at, (position, checkpoint) in cases.items():
            got = state_at_time(store, at)
            assert got.position == position, at
            loaded = load_checkpoint(store, at_or_before=position)
            assert not loaded.rejected
            assert (loaded.checkpoint.position if loaded.checkpoint else None) == checkpoint, at
            assert got.state.summary() == fold(store, position).summary()
            assert got.state.signals == fold(store, position).signals


def test_a_checkpoint_written_before_the_store_clock_stepped_back_is_not_from_the_future(db_url):
    # the old server's clock was two hours ahead: rows 1..20 and the engine's decisions (which
    # never run behind the log) are stamped then; after the failover the clock is right
    ahead = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=2)
    stepped_back_log(db_url, base=ahead, clock=Clock(ahead))
    with open_store(db_url, create=False) as store:
        cp.write(store, fold(store, 20), now=ahead + 20 * S)
        loaded = load_checkpoint(store, at_or_before=30)
        assert not loaded.rejected and loaded.checkpoint.position == 20
        assert cp.reference_time(store, loaded.checkpoint, None, datetime.now(timezone.utc)) == ahead + 20 * S
    with tradestate.connect(db_url, clock=Clock(), venue="sim") as client:
        assert client.loaded.checkpoint is not None and client.loaded.checkpoint.position == 20
        assert not client.loaded.rejected
        with open_store(db_url, create=False) as store:
            assert client.state.summary() == fold(store).summary()


def test_a_checkpoint_ahead_of_the_log_time_at_its_position_is_still_refused(db_url):
    ahead = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=2)
    stepped_back_log(db_url, base=ahead, clock=Clock(ahead))
    with open_store(db_url, create=False) as store:
        # the log's time is ahead+10s at 10 and ahead+20s at 20: a checkpoint written at ahead+20s
        # plus the allowed skew less a second is valid at 20 and from the future at 10
        written = ahead + 20 * S + cp.MAX_CLOCK_SKEW - S
        at_10 = cp.write(store, fold(store, 10), now=written)
        at_20 = cp.write(store, fold(store, 20), now=written)
        loaded = load_checkpoint(store, at_or_before=19)
        assert loaded.checkpoint is None
        assert [r.checkpoint.id for r in loaded.rejected] == [at_10.id]
        assert any("written in the future" in reason for reason in loaded.rejected[0].reasons)
        loaded = load_checkpoint(store, at_or_before=30)
        assert loaded.checkpoint.id == at_20.id and not loaded.rejected
        # later than the latest stamp anywhere in the log: refused wherever it is
        cp.write(store, fold(store, 40), now=ahead + timedelta(hours=1))
        loaded = load_checkpoint(store)
        assert loaded.checkpoint.id == at_20.id
        assert any("written in the future" in reason for r in loaded.rejected for reason in r.reasons)
