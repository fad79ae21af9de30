"""A store clock that stepped back (a failover to a server whose clock is behind): what
checkpoints and ``replay state --at`` do with ``recorded_at`` that no longer follows log order
(more in tests/replay/test_replay_clock_stepped_back.py and tests/store/test_checkpoint_clock.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from tests.support.projector_worker import Clock
from tests.support.db import tamper

import tradestate
from tradestate.adapters.store import checkpoints as cp
from tradestate.adapters.store import open_store
from tradestate.domain.state import TradingState
from tradestate.loading import fold_tail
from tradestate.replay.state import state_at_position, state_at_time


def _restamp(store, after: int, upto: int, by: timedelta) -> None:
    """Move the stamps of the rows after ``after`` up to ``upto`` by ``by``, as a server whose
    clock is off would have stamped them."""
    rows = list(store.trading.iter_rows(after, upto))
    value = (lambda at: (at + by).isoformat()) if store.kind == "sqlite" else (lambda at: at + by)
    tamper(store, *[("UPDATE ts_events SET recorded_at = %s WHERE position = %s", (value(r[5]), r[0]))
                    for r in rows])


def test_replay_at_a_time_across_a_step_back_takes_the_log_up_to_that_time_and_names_what_it_leaves_out(db_url):
    with tradestate.connect(db_url, clock=Clock(), venue="sim") as client:
        for i in range(40):
            client.record_signal("s", "AAPL", f"x{i}")
    with open_store(db_url, create=False) as store:
        stamps = {r[0]: r[5] for r in store.trading.iter_rows(0)}
        _restamp(store, 20, 40, -timedelta(hours=1))  # after position 20 the store's clock is an hour behind
        # the step back ends the log: the log's time stays at its latest stamp, so all of it is there
        at_end = state_at_time(store, stamps[20])
        assert at_end.position == 40 and not at_end.stepped_back
        _restamp(store, 30, 40, timedelta(hours=2))  # the log went on, an hour later
        # Asked at the time position 10 was recorded: the log up to 10 (never an event stamped
        # after it); 21..30, stamped before it after the step back, are named, not folded.
        at = state_at_time(store, stamps[10])
        assert at.position == 10
        assert at.state.signals[("s", "AAPL")]["signal"] == "x9"
        assert [(r.first, r.last) for r in at.stepped_back] == [(21, 30)]
        # by position, the state is the log's own
        by_position = state_at_position(store, 10)
        assert by_position.position == 10
        assert by_position.state.signals[("s", "AAPL")]["signal"] == "x9"


def test_a_checkpoint_stamped_ahead_of_a_clock_that_stepped_back_is_refused_and_the_state_is_the_same(db_url):
    with tradestate.connect(db_url, clock=Clock(), venue="sim") as client:
        client.set_risk_limit("acct", "max_order_qty", 10)
        client.record_intent("acct", "o1", "AAPL", "buy", 5, reference_price=100)
        client.record_fill("acct", "o1", "X-1", 5, 100)
    with open_store(db_url, create=False) as store:
        state = TradingState()
        fold_tail(store, state)
        # written an hour ago by a host whose clock has since stepped back an hour
        cp.write(store, state, now=datetime.now(timezone.utc) + timedelta(hours=1))
    with tradestate.connect(db_url, clock=Clock(), venue="sim") as client:
        assert client.loaded.state is None
        assert any("written in the future" in r for rej in client.loaded.rejected for r in rej.reasons)
        assert client.state.summary() == state.summary()
