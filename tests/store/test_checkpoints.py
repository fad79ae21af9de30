"""Checkpoints: a restored snapshot plus the tail equals a fresh fold; a damaged or foreign
checkpoint is refused with its reason and an older one (or replay from zero) is used."""

from __future__ import annotations

import random
import tempfile
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.projector_worker import Clock, Orders, random_command, run_command, write_session
from tests.support.partitioned import db_url  # noqa: F401 - also on a partitioned PostgreSQL log

import tradestate
from tradestate.adapters.store import checkpoints as cp
from tradestate.adapters.store import open_store
from tradestate.domain import snapshot
from tradestate.domain.ids import order_stream_id
from tradestate.domain.state import TradingState
from tradestate.loading import fold_tail, load_checkpoint, state_at


def fresh_fold(store, stop=None) -> TradingState:
    state = TradingState()
    fold_tail(store, state, stop)
    return state


@pytest.fixture
def session(db_url, store):
    with tradestate.connect(db_url, clock=Clock()) as client:
        head = write_session(client, 300, seed=21)
    return head


def test_checkpoint_then_tail_equals_a_fresh_fold(db_url, store, session):
    middle = session // 2
    info = cp.write(store, fresh_fold(store, middle))
    assert info.position == middle and info.finished_orders > 0
    loaded = load_checkpoint(store)
    assert loaded.checkpoint is not None and loaded.checkpoint.id == info.id and not loaded.rejected
    assert loaded.state.position == middle
    fold_tail(store, loaded.state)
    assert loaded.state.summary() == fresh_fold(store).summary()


def test_state_at_any_position_equals_the_fold_of_the_prefix(store, session):
    cp.write(store, fresh_fold(store, 100))
    cp.write(store, fresh_fold(store, 200))
    for position in (50, 100, 150, 200, 250, session):
        assert state_at(store, position).summary() == fresh_fold(store, position).summary(), position


def test_a_restored_state_keeps_idempotency_and_late_facts_of_finished_orders(db_url, store, session):
    """Finished orders are not in the snapshot; the first touch brings them back from the log."""
    cp.write(store, fresh_fold(store))
    with tradestate.connect(db_url, clock=Clock()) as client:
        finished = [o for o in client.state.orders.values() if not o.is_open]
    assert finished
    loaded = load_checkpoint(store)
    orders = loaded.state.orders
    assert orders.unloaded == len(finished)
    sample = finished[0]
    assert sample.stream_id in orders and orders.get(sample.stream_id).status == sample.status
    assert orders.unloaded == len(finished) - 1
    assert orders.get("order-00000000-0000-0000-0000-000000000000") is None
    assert loaded.state.summary() == fresh_fold(store).summary()


def test_writing_keeps_only_the_newest_checkpoints(store, session):
    for position in range(10, 80, 10):
        cp.write(store, fresh_fold(store, position), keep=3)
    assert [c.position for c in cp.list_checkpoints(store)] == [70, 60, 50]


def test_checkpointer_writes_every_n_events(store, session):
    writer = cp.Checkpointer(store, every_events=100, every_seconds=3600)
    state = TradingState()
    for row in store.trading.iter_rows(0):
        state.apply(row[0], row[1], row[2], row[3], orjson.loads(row[4]), row[5])
        writer.maybe(state)
    assert [c.position for c in writer.written] == [100, 200, 300][: session // 100]
    with pytest.raises(ValueError):
        cp.Checkpointer(store, every_events=0)


# ------------------------------------------------------------------------ damaged checkpoints


def _raw(store, sql: str, params: tuple = ()) -> None:
    table = cp._table(store)
    sql = sql.replace("{t}", table)
    if store.kind == "postgresql":
        sql = sql.replace("?", "%s")
    with cp._cursor(store, write=True) as cur:
        cur.execute(sql, params)


def _resign(store, cid: int, mutate) -> None:
    """Change a checkpoint's document and fix its checksum, as a bug (not a disk) would."""
    with cp._cursor(store, write=False) as cur:
        cur.execute(f"SELECT document, finished FROM {cp._table(store)} WHERE id = {cid}")
        data, finished = (bytes(x) for x in cur.fetchone())
    doc = orjson.loads(data)
    mutate(doc)
    data = snapshot.encode(doc)
    _raw(store, "UPDATE {t} SET document = ?, checksum = ? WHERE id = ?",
         (data, snapshot.checksum(data, finished), cid))


def _future(doc):
    doc["positions"][0][8] = (datetime.now(timezone.utc) + timedelta(days=3)).isoformat()


def _absurd(doc):
    doc["positions"][0][3] = "1e18"


def _negative_price(doc):
    doc["positions"][0][7] = "-5"


def _version(doc):
    doc["snapshot_version"] = 99


DAMAGE = {
    "flipped byte": (lambda store, cid: _raw(store, "UPDATE {t} SET checksum = ? WHERE id = ?", ("0" * 64, cid)),
                     "checksum mismatch"),
    "future time": (lambda store, cid: _resign(store, cid, _future), "in the future"),
    "absurd quantity": (lambda store, cid: _resign(store, cid, _absurd), "absurd"),
    "negative price": (lambda store, cid: _resign(store, cid, _negative_price), "not a positive price"),
    "schema version": (lambda store, cid: _resign(store, cid, _version), "snapshot version"),
    "other log": (lambda store, cid: _raw(store, "UPDATE {t} SET event_id = ? WHERE id = ?", ("nope", cid)),
                  "another log"),
    "beyond head": (lambda store, cid: _raw(store, "UPDATE {t} SET position = position + 100000 WHERE id = ?",
                                            (cid,)), "beyond the log head"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_refused_and_an_older_one_used(store, session, damage):
    older = cp.write(store, fresh_fold(store, 100))
    newer = cp.write(store, fresh_fold(store, 200))
    corrupt, reason = DAMAGE[damage]
    corrupt(store, newer.id)
    loaded = load_checkpoint(store)
    assert loaded.checkpoint is not None and loaded.checkpoint.id == older.id
    assert [r.checkpoint.id for r in loaded.rejected] == [newer.id]
    assert any(reason in text for text in loaded.rejected[0].reasons), loaded.rejected[0].reasons
    fold_tail(store, loaded.state)
    assert loaded.state.summary() == fresh_fold(store).summary()


def test_with_every_checkpoint_damaged_recovery_replays_from_zero(store, session):
    info = cp.write(store, fresh_fold(store, 100))
    _raw(store, "UPDATE {t} SET checksum = ? WHERE id = ?", ("f" * 64, info.id))
    loaded = load_checkpoint(store)
    assert loaded.state is None and loaded.checkpoint is None and len(loaded.rejected) == 1
    assert state_at(store).summary() == fresh_fold(store).summary()


def test_a_truncated_document_is_refused(store, session):
    info = cp.write(store, fresh_fold(store, 100))
    _raw(store, "UPDATE {t} SET document = ? WHERE id = ?", (b'{"position": 100', info.id))
    loaded = load_checkpoint(store)
    assert loaded.state is None and "checksum mismatch" in loaded.rejected[0].reasons[0]


# ------------------------------------------------------------------------------ property


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n=st.integers(5, 80), cuts=st.lists(st.integers(1, 200), max_size=4))
def test_checkpoints_anywhere_then_tail_equal_a_fresh_fold(seed, n, cuts):
    """Any log, checkpoints at any positions (finished orders touched or not afterwards): the
    state from the newest checkpoint plus the tail is the fresh fold, at the head and before it."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="tradestate-cp-") as tmp:
        url = f"sqlite:///{tmp}/log.db"
        clock = Clock()
        with tradestate.connect(url, clock=clock) as client:
            orders = Orders()
            for _ in range(n):
                run_command(client, orders, clock, random_command(rng))
        with open_store(url) as store:
            head = store.trading.head()
            for cut in sorted(c % (head + 1) for c in cuts):
                if cut:
                    cp.write(store, fresh_fold(store, cut), keep=10)
            for stop in {head, max(1, head // 2)}:
                assert state_at(store, stop).summary() == fresh_fold(store, stop).summary()


def test_many_finished_orders_come_back_in_one_pass_over_the_log(db_url, store):
    with tradestate.connect(db_url, clock=Clock()) as client:
        write_session(client, 900, seed=5)
    cp.write(store, fresh_fold(store))
    loaded = load_checkpoint(store)
    assert loaded.state.orders.unloaded >= 64  # the one-pass path, not a read per order
    assert loaded.state.summary() == fresh_fold(store).summary()
    assert loaded.state.orders.unloaded == 0


# ------------------------------------------------------------------ finished orders in the log


def _finished_orders(client, prefix: str, n: int) -> None:
    """``n`` orders filled in full (intent, ack, fill), client order ids ``<prefix>-<i>``."""
    for i in range(n):
        coid = f"{prefix}-{i}"
        client.record_intent("acct", coid, "AAPL", "buy", "1", reference_price="100", venue="sim")
        client.record_ack("acct", coid, f"V-{prefix}-{i}")
        client.record_fill("acct", coid, f"X-{prefix}-{i}", "1", "100")


def _version_2_take(state):
    """``snapshot.take`` as version 2 wrote it: the same document, with the ids of every finished
    order, packed and sorted (in memory or still in the log)."""
    doc, _ = _TAKE(state)
    keys = [bytes.fromhex(sid[len(snapshot.ORDER_PREFIX):].replace("-", ""))
            for sid, o in dict.items(state.orders) if not o.is_open]
    ids = state.orders.packed_finished(keys) if isinstance(state.orders, snapshot.OrderBook) and \
        not state.orders.open_ended else b"".join(sorted(keys))
    return {**doc, "snapshot_version": 2, "finished_sorted": True, "finished_orders": len(ids) // 16}, ids


_TAKE = snapshot.take


@pytest.mark.parametrize("version", [snapshot.SNAPSHOT_VERSION, 2])
def test_a_client_order_id_finished_long_before_the_checkpoint_is_refused_after_a_warm_restart(
        db_url, store, version, monkeypatch):
    """The checkpoint keeps no finished order (version 3: not even its id); a re-sent intent of
    an order finished long before it, a changed one, and a late fill after a cancel are answered
    from the order's own stream after a warm restart, as before it. A version 2 checkpoint (the
    ids of every finished order) still loads and answers the same."""
    clock = Clock()
    with tradestate.connect(db_url, clock=clock, venue="sim") as client:
        client.record_intent("acct", "old", "AAPL", "buy", "5", reference_price="100")
        client.record_ack("acct", "old", "V-old")
        client.record_fill("acct", "old", "X-old", "5", "100")
        client.record_intent("acct", "gone", "MSFT", "buy", "3", order_type="limit", limit_price="99")
        client.record_cancelled("acct", "gone", "no longer wanted")
        _finished_orders(client, "mid", 40)
        if version == 2:
            monkeypatch.setattr(snapshot, "SNAPSHOT_VERSION", 2)
            monkeypatch.setattr(snapshot, "take", _version_2_take)
        info = cp.write(store, fresh_fold(store))
        monkeypatch.undo()
        client.record_intent("acct", "open", "MSFT", "buy", "2", order_type="limit", limit_price="400")
    assert info.snapshot_version == version and info.finished_orders == 42
    old, gone = order_stream_id("acct", "old"), order_stream_id("acct", "gone")
    with tradestate.connect(db_url, clock=clock, venue="sim") as client:
        orders = client.state.orders
        assert client.state.position == store.trading.head() and orders.open_ended == (version >= 3)
        assert dict.get(orders, old) is None and dict.get(orders, gone) is None  # only in the log
        head = store.trading.head()
        again = client.record_intent("acct", "old", "AAPL", "buy", "5", reference_price="100")
        assert again.duplicate and again.accepted and store.trading.head() == head
        with pytest.raises(tradestate.IdempotencyConflict):
            client.record_intent("acct", "old", "AAPL", "buy", "6", reference_price="100")
        with pytest.raises(tradestate.IdempotencyConflict):
            client.record_intent("acct", "mid-3", "AAPL", "sell", "1", reference_price="100")
        assert store.trading.head() == head
        late = client.record_fill("acct", "gone", "X-9", "1", "99")  # a fill after the cancel
        assert late.discrepancy is not None and late.position == head + 1
        assert client.order("acct", "old")["status"] == "filled"
        fresh = client.record_intent("acct", "new", "AAPL", "buy", "1", reference_price="100")
        assert fresh.accepted and not fresh.duplicate and fresh.position == head + 2
        assert client.state.summary() == fresh_fold(store).summary()


def test_a_checkpoint_does_not_grow_with_the_number_of_finished_orders(db_url, store, monkeypatch):
    """Ten times the finished orders, the same checkpoint (give or take the digits of its
    counters): the finished orders are counted, not listed, and the execution ids it keeps are
    a bounded recent window (``EXEC_ID_ORDERS``, made small here so that the test reaches it)."""
    monkeypatch.setattr(snapshot, "EXEC_ID_ORDERS", 10)
    sizes = []
    with tradestate.connect(db_url, clock=Clock(), venue="sim") as client:
        client.record_intent("acct", "open", "MSFT", "buy", "2", order_type="limit", limit_price="400")
        for prefix, n in (("a", 20), ("b", 180)):
            _finished_orders(client, prefix, n)
            info = cp.write(store, fresh_fold(store))
            with cp._cursor(store, write=False) as cur:
                cur.execute(f"SELECT finished FROM {cp._table(store)} WHERE id = {info.id}")
                assert bytes(cur.fetchone()[0]) == b""
            sizes.append((info.finished_orders, info.size))
    (few, small), (many, large) = sizes
    assert (few, many) == (20, 200)
    # 180 more finished orders: 2,880 bytes more as version 2 ids; here only a few digits
    assert large - small < 100, sizes
    loaded = load_checkpoint(store)
    assert loaded.state.orders.unloaded == 200 and loaded.state.summary() == fresh_fold(store).summary()
