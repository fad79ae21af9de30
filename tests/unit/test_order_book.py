"""The finished orders a restored or cold-folded state keeps as ids (``snapshot.OrderBook``): one
packed, sorted bytes object, searched in place, so memory after a warm open is the open state's
plus 16 bytes per finished order, not a Python object per order of the history."""

from __future__ import annotations

import random
import tracemalloc
from uuid import UUID

import orjson
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


def test_a_snapshot_keeps_its_finished_ids_sorted_and_a_restore_searches_them_as_they_are():
    state = _state_with_finished_orders(3_000)
    doc, finished = snapshot.take(state)
    keys = [finished[i:i + 16] for i in range(0, len(finished), 16)]
    assert keys == sorted(keys) and len(set(keys)) == len(keys) == doc["finished_orders"] > 100
    assert doc["finished_sorted"] is True
    restored = snapshot.restore(orjson.loads(orjson.dumps(doc)), finished)
    assert restored.orders.ordered
    finished_sids = [sid for sid, o in state.orders.items() if not o.is_open]
    assert all(restored.orders.is_unloaded(sid) for sid in finished_sids)
    assert not any(restored.orders.is_unloaded(sid) for sid, o in state.orders.items() if o.is_open)
    # a snapshot taken from the restored state (one order brought back meanwhile) keeps each id once
    back = finished_sids[7]
    restored.orders.put(back, state.orders[back])
    _doc2, finished2 = snapshot.take(restored)
    assert finished2 == finished


def test_a_snapshot_written_before_the_ids_were_sorted_is_still_searched_right():
    state = _state_with_finished_orders(3_000)
    doc, finished = snapshot.take(state)
    keys = [finished[i:i + 16] for i in range(0, len(finished), 16)]
    random.Random(1).shuffle(keys)
    old = {k: v for k, v in doc.items() if k != "finished_sorted"}
    restored = snapshot.restore(old, b"".join(keys))
    assert not restored.orders.ordered
    assert all(restored.orders.is_unloaded(sid) for sid, o in state.orders.items() if not o.is_open)
    assert not restored.orders.is_unloaded(_sid(bytes(16)))
