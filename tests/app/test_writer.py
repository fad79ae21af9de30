"""The unit of work (``tradestate.writer``) and the user edges of the client built on it.

A decision reads only the state it is given: finished orders of a restored state stay packed ids
until the writer loads the ones a command names, before the decision runs. Intents need a venue.
A re-recorded bar appends nothing, on PostgreSQL too (where a refused insert leaves a void).
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from tests.support.projector_worker import Clock

import tradestate
from tradestate.adapters.store import checkpoints as cp
from tradestate.domain import events as ev
from tradestate.domain import orders as rules
from tradestate.domain.ids import account_stream_id, order_stream_id
from tradestate.domain.state import TradingState
from tradestate.loading import LazyOrders, deciding, fold_tail
from tradestate.writer import Decided, Writer, build_event

ACCT = "acct"


def _finished_session(url: str) -> None:
    """Two finished orders (one filled, one cancelled) and one open order."""
    with tradestate.connect(url, clock=Clock(), venue="sim") as c:
        c.record_intent(ACCT, "done", "AAPL", "buy", "5", reference_price="100")
        c.record_ack(ACCT, "done", "V-1")
        c.record_fill(ACCT, "done", "X-1", "5", "100")
        c.record_intent(ACCT, "gone", "AAPL", "buy", "3", order_type="limit", limit_price="99")
        c.record_ack(ACCT, "gone", "V-2")
        c.record_cancelled(ACCT, "gone", "no longer wanted")
        c.record_intent(ACCT, "open", "MSFT", "buy", "2", order_type="limit", limit_price="400")


def _warm_client(url: str, store) -> tuple[tradestate.TradestateClient, list[tuple[str, bool]]]:
    """A client started from a checkpoint (finished orders packed), its order loader refusing to
    run while a decision runs; returns the client and the loader's calls (stream, sealed)."""
    state = TradingState()
    fold_tail(store, state)
    cp.write(store, state)
    client = tradestate.connect(url, clock=Clock(), venue="sim")
    orders = client.state.orders
    assert isinstance(orders, LazyOrders) and orders.unloaded == 2
    calls: list[tuple[str, bool]] = []
    real = orders.loader

    def loader(sid, upto):
        calls.append((sid, orders.sealed))
        if orders.sealed:
            raise AssertionError(f"a decision read the log ({sid})")
        return real(sid, upto)

    orders.loader = loader
    return client, calls


def test_a_decision_on_packed_finished_orders_reads_nothing_yet_resends_and_late_fills_are_answered(db_url, store):
    _finished_session(db_url)
    client, calls = _warm_client(db_url, store)
    done, gone = order_stream_id(ACCT, "done"), order_stream_id(ACCT, "gone")
    with client:
        # inside a decision the mapping is what is in memory: a finished order is simply absent
        with deciding(client.state) as state:
            assert state.orders.get(done) is None and done not in state.orders
        assert calls == []
        head = store.trading.head()
        again = client.record_intent(ACCT, "done", "AAPL", "buy", "5", reference_price="100")
        assert again.duplicate and again.accepted and store.trading.head() == head
        assert client.record_fill(ACCT, "done", "X-1", "5", "100").duplicate  # the same execution again
        late = client.record_fill(ACCT, "gone", "X-9", "1", "99")  # a fill after the cancel
        assert late.discrepancy is not None and late.position == head + 1
        assert [sid for sid, _ in calls] == [done, gone]
        assert not any(sealed for _, sealed in calls)  # loaded by the writer, before deciding
        assert client.order(ACCT, "done")["status"] == "filled"
        assert gone in dict.keys(client.state.orders)


def test_a_decision_that_names_no_order_sees_none_and_reads_nothing(sqlite_url, tmp_path):
    _finished_session(sqlite_url)
    with tradestate.adapters.store.open_store(sqlite_url) as store:
        client, calls = _warm_client(sqlite_url, store)
    done = order_stream_id(ACCT, "done")
    seen = []

    def decide(state: TradingState) -> Decided[str]:
        seen.append(state.orders.get(done))
        return Decided(rules.AlreadyRecorded(0), "looked")

    with client:
        written = client.writer.record(decide)
        assert written.duplicate and written.value == "looked" and seen == [None] and calls == []
        written = client.writer.record(decide, orders=[done])
        assert seen[-1] is not None and seen[-1].status == "filled" and calls == [(done, False)]


def test_the_writer_carries_a_decisions_value_back(sqlite_url):
    with tradestate.connect(sqlite_url, clock=Clock(), venue="sim") as client:
        writer: Writer = client.writer

        def decide(state: TradingState) -> Decided[int]:
            e = build_event(ev.KillSwitchEngaged, **writer.envelope(), account=ACCT, reason="test", by="ops")
            return Decided(rules.Append([(account_stream_id(ACCT), e)]), state.position)

        before = client.position
        written = writer.record(decide)
        assert written.value == before and written.positions == [before + 1] and not written.duplicate
        assert client.risk_state(ACCT)["kill_switch"]


# ------------------------------------------------------------------------------ venue


def test_an_intent_without_a_venue_is_refused_and_nothing_is_appended(sqlite_url):
    with tradestate.connect(sqlite_url, clock=Clock()) as client:
        head = client.position
        with pytest.raises(tradestate.InvalidInput, match="venue"):
            client.record_intent(ACCT, "o1", "AAPL", "buy", "1", reference_price="10")
        assert client.store.trading.head() == head
        assert client.record_intent(ACCT, "o1", "AAPL", "buy", "1", reference_price="10", venue="ib").accepted
        client.record_fill(ACCT, "o1", "X-1", "1", "10")
        assert [(p["venue"], p["qty"]) for p in client.positions(ACCT)] == [("ib", 1)]


def test_the_clients_venue_books_intents_that_name_none(sqlite_url):
    with tradestate.connect(sqlite_url, clock=Clock(), venue="alpaca") as client:
        client.record_intent(ACCT, "o1", "AAPL", "buy", "2", reference_price="10")
        client.record_fill(ACCT, "o1", "X-1", "2", "10")
        client.record_intent(ACCT, "o2", "AAPL", "buy", "1", reference_price="10", venue="ib")
        client.record_fill(ACCT, "o2", "X-2", "1", "10")
        assert sorted((p["venue"], p["qty"]) for p in client.positions(ACCT)) == [("alpaca", 2), ("ib", 1)]
        assert client.order(ACCT, "o1")["venue"] == "alpaca"


# ------------------------------------------------------------------------------ bars


@pytest.mark.postgres
def test_a_rerecorded_bar_appends_nothing_on_postgresql(pg_url):
    start = datetime(2024, 1, 2, 14, 30, tzinfo=timezone.utc)
    with tradestate.connect(pg_url, clock=Clock(), venue="sim") as client:
        first = client.record_bar("sim", "AAPL", "1m", start, "10", "11", "9.5", "10.5", "1000")
        head = client.store.market.head()
        for _ in range(3):
            again = client.record_bar("sim", "AAPL", "1m", start, "10", "11", "9.5", "10.5", "1000")
            assert again.duplicate and again.position == first.position
        assert client.store.market.head() == head  # no void row left behind
        with pytest.raises(tradestate.IdempotencyConflict):
            client.record_bar("sim", "AAPL", "1m", start, "10", "11", "9.5", "10.6", "1000")
        nxt = client.record_bar("sim", "AAPL", "1m", start.replace(minute=31), "10.5", "11", "10", "10.8", "900")
        assert nxt.position == head + 1
