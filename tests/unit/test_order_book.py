"""The finished orders a restored or cold-folded state leaves in the log (``snapshot.OrderBook``):
after a cold fold or a version 1-2 checkpoint, by their ids (one packed, sorted bytes object,
searched in place: 16 bytes per finished order, not a Python object per order of the history);
after a version 3 checkpoint, by their number alone (any order stream not in memory may be one,
the log answers), so neither the checkpoint nor a warm open grows with the history."""

from __future__ import annotations

import random
import tracemalloc
from datetime import datetime, timezone
from uuid import UUID

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradestate.domain import snapshot
from tradestate.domain.snapshot import ORDER_PREFIX, OrderBook, merge_ids
from tradestate.domain.state import TradingState

ids16 = st.binary(min_size=16, max_size=16)


def _sid(key: bytes) -> str:
    return ORDER_PREFIX + str(UUID(bytes=key))


@settings(max_examples=200, deadline=None)
@given(st.lists(ids16, unique=True, max_size=60), st.lists(ids16, max_size=20), st.data())
def test_the_book_answers_as_the_set_of_its_ids_would(finished, others, data):
    ordered = data.draw(st.booleans())
    blob_ids = sorted(finished) if ordered else finished
    book = OrderBook(b"".join(blob_ids), ordered=ordered)
    brought_back = data.draw(st.lists(st.sampled_from(finished), unique=True) if finished else st.just([]))
    for key in brought_back:
        book.put(_sid(key), object())  # type: ignore[arg-type]
    left = set(finished) - set(brought_back)
    for key in finished + others:
        assert book.is_unloaded(_sid(key)) == (key in left)
    assert book.unloaded == len(left)
    assert {UUID(s[len(ORDER_PREFIX):]).bytes for s in book.unloaded_streams()} == left
    packed = book.packed_unloaded()
    assert sorted(packed[i:i + 16] for i in range(0, len(packed), 16)) == sorted(left)
    # every finished order, in memory or not, once and sorted: what a snapshot keeps
    every = book.packed_finished(brought_back + others[:3])
    assert [every[i:i + 16] for i in range(0, len(every), 16)] == sorted(set(finished) | set(others[:3]))


@settings(max_examples=200, deadline=None)
@given(st.lists(ids16, unique=True, max_size=50), st.lists(ids16, max_size=50))
def test_merge_ids_is_the_sorted_union(ordered, keys):
    merged = merge_ids(b"".join(sorted(ordered)), keys)
    assert [merged[i:i + 16] for i in range(0, len(merged), 16)] == sorted(set(ordered) | set(keys))


def test_lookups_in_a_long_history_allocate_nothing_per_finished_order():
    """200k finished orders (a year of a busy desk has millions): looking orders up, new ones and
    finished ones, and bringing some back must not build a structure per finished order (a set
    of 200k ids would be >= 10 MB beside the 3.2 MB of packed ids)."""
    rnd = random.Random(5)
    keys = sorted(rnd.randbytes(16) for _ in range(200_000))
    book = OrderBook(b"".join(keys), ordered=True)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key in keys[::2_000]:
            assert book.is_unloaded(_sid(key))
        for _ in range(100):
            assert not book.is_unloaded(_sid(rnd.randbytes(16)))
        for key in keys[:10]:
            book.put(_sid(key), object())  # type: ignore[arg-type]
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert book.unloaded == 200_000 - 10
    assert grown < 64 * 1024, f"{grown:,} bytes allocated by lookups in a book of 200k finished orders"


def _state_with_finished_orders(n: int) -> TradingState:
    from tradestate.tools.bench.logs import generate_trading_rows

    state = TradingState()
    for position, stream, version, type_name, data, at in generate_trading_rows(n):
        state.apply(position, stream, version, type_name, orjson.loads(data), at)
    return state


def _version_2(state: TradingState) -> tuple[dict, bytes]:
    """The document and finished-order ids a version 2 snapshot of ``state`` was (what
    ``take`` wrote before version 3): the same document with the ids of every finished order,
    packed, sorted."""
    doc, _ = snapshot.take(state)
    keys = sorted(UUID(sid[len(ORDER_PREFIX):]).bytes for sid, o in state.orders.items() if not o.is_open)
    return {**doc, "snapshot_version": 2, "finished_sorted": True, "finished_orders": len(keys)}, b"".join(keys)


def test_a_snapshot_keeps_no_finished_ids_only_their_number_and_a_restore_asks_the_log_for_any_other_order():
    state = _state_with_finished_orders(3_000)
    doc, finished = snapshot.take(state)
    finished_sids = [sid for sid, o in state.orders.items() if not o.is_open]
    assert finished == b"" and doc["snapshot_version"] >= 3 and doc["finished_orders"] == len(finished_sids) > 100
    restored = snapshot.restore(orjson.loads(orjson.dumps(doc)), finished)
    book = restored.orders
    assert book.open_ended and book.unloaded == len(finished_sids)
    # any order stream not in memory may be a finished order: the log says (an indexed read)
    assert all(book.is_unloaded(sid) for sid in finished_sids)
    assert book.is_unloaded(_sid(bytes(16)))
    assert not any(book.is_unloaded(sid) for sid, o in state.orders.items() if o.is_open)
    assert not book.is_unloaded("account-acct-alpha") and not book.is_unloaded("order-not-a-uuid")
    # the log had no such stream: not asked again
    book.absent(_sid(bytes(16)))
    assert not book.is_unloaded(_sid(bytes(16)))
    # a snapshot taken from the restored state (one order brought back meanwhile) counts each once
    back = finished_sids[7]
    book.put(back, state.orders[back])
    assert book.unloaded == len(finished_sids) - 1 and not book.is_unloaded(back)
    doc2, finished2 = snapshot.take(restored)
    assert finished2 == b"" and doc2["finished_orders"] == len(finished_sids)


def test_a_snapshot_without_finished_orders_restores_a_book_that_reads_nothing():
    state = TradingState()
    doc, finished = snapshot.take(state)
    book = snapshot.restore(orjson.loads(orjson.dumps(doc)), finished).orders
    assert book.open_ended and book.unloaded == 0 and not book.is_unloaded(_sid(bytes(16)))


def test_a_version_3_snapshot_that_comes_with_ids_is_refused():
    doc, _ = snapshot.take(_state_with_finished_orders(1_000))
    with pytest.raises(ValueError, match="keeps no finished-order ids"):
        snapshot.restore(doc, bytes(16))
    assert snapshot.problems({**doc, "finished_orders": -1}, position=doc["position"], head=doc["position"],
                             now=datetime.now(timezone.utc)) == ["finished_orders is not a count: -1"]


def test_a_version_2_snapshot_with_its_finished_ids_still_loads_and_searches_them():
    state = _state_with_finished_orders(3_000)
    doc, finished = _version_2(state)
    assert snapshot.problems(doc, position=doc["position"], head=doc["position"], now=datetime.now(timezone.utc)) == []
    restored = snapshot.restore(orjson.loads(orjson.dumps(doc)), finished)
    book = restored.orders
    assert not book.open_ended and book.ordered and book.unloaded == doc["finished_orders"]
    assert all(book.is_unloaded(sid) for sid, o in state.orders.items() if not o.is_open)
    assert not book.is_unloaded(_sid(bytes(16)))  # the ids are every finished order: no read needed
    # its next snapshot is a current one (3 on: no ids), counting the same orders
    again, ids = snapshot.take(restored)
    assert again["snapshot_version"] == snapshot.SNAPSHOT_VERSION and ids == b"" and again["finished_orders"] == doc["finished_orders"]


def test_a_snapshot_written_before_the_ids_were_sorted_is_still_searched_right():
    state = _state_with_finished_orders(3_000)
    doc, finished = _version_2(state)
    keys = [finished[i:i + 16] for i in range(0, len(finished), 16)]
    random.Random(1).shuffle(keys)
    old = {k: v for k, v in doc.items() if k != "finished_sorted"}
    restored = snapshot.restore(old, b"".join(keys))
    assert not restored.orders.ordered
    assert all(restored.orders.is_unloaded(sid) for sid, o in state.orders.items() if not o.is_open)
    assert not restored.orders.is_unloaded(_sid(bytes(16)))


@settings(max_examples=200, deadline=None)
@given(st.lists(ids16, unique=True, max_size=40), st.lists(ids16, max_size=20), st.data())
def test_an_open_ended_book_answers_as_the_log_it_counts_would(finished, others, data):
    """An open-ended book (version 3) knows only how many finished orders the log holds: a stream
    not in memory may be one until the log was asked (brought back: ``put``; not there:
    ``absent``)."""
    book = OrderBook(in_log=len(finished))
    brought_back = data.draw(st.lists(st.sampled_from(finished), unique=True) if finished else st.just([]))
    for key in brought_back:
        book.put(_sid(key), object())  # type: ignore[arg-type]
    asked = [k for k in others if k not in finished]
    for key in asked:
        book.absent(_sid(key))
    assert book.unloaded == len(finished) - len(brought_back)
    for key in finished:
        assert book.is_unloaded(_sid(key)) == (key not in brought_back)
    for key in asked:
        assert not book.is_unloaded(_sid(key))
    if finished:  # a stream never asked about may be one
        unknown = next(k for k in (bytes(16), b"\xff" * 16, b"\x01" * 16) if k not in finished and k not in others)
        assert book.is_unloaded(_sid(unknown))
    with pytest.raises(ValueError):
        book.unloaded_streams()
    book.complete()
    assert not book.open_ended and book.unloaded == 0 and not any(book.is_unloaded(_sid(k)) for k in finished + others)
