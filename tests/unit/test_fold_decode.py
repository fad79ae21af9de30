"""The cold fold's partial decoding (``domain.fold.decode_for_fold``): for an intent, a risk check
and a fill it decodes only the keys the fold reads; in each of those keys it must give exactly
what ``orjson.loads`` gives (same presence, value and type), for any payload orjson decodes;
anything it cannot type as the stored form writes it (numbers, nulls, nesting, non-ASCII text)
is decoded whole by orjson."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradestate.domain.events import SCHEMA_KEY
from tradestate.domain.fold import _PARTIAL, decode_for_fold

READ = {  # the keys each partial decode keeps: what the fold reads of that type
    "OrderFilled": ("qty", "price", "fee", "exec_id", "occurred_at", "fee_currency", SCHEMA_KEY),
    "OrderIntentRecorded": ("account", "venue", "symbol", "side", "qty", SCHEMA_KEY),
    "RiskCheckPassed": ("account", "trading_day", SCHEMA_KEY),
    "InstrumentDefined": ("symbol", "asset_class", "multiplier", "quote_currency", "settlement_currency", "tick_size",
                          "lot_size", "fractional", "expiry", "underlying", "strike", "right", SCHEMA_KEY),
}

# text with what JSON must escape or may carry: quotes, backslashes, control characters, key-like
# fragments, non-ASCII
_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(['', '"', '\\', '","qty":"9', '\n', 'é', '\u2028', '{"qty":"1"}', 'null', '1e9']),
)
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1),
                    st.floats(allow_nan=False, allow_infinity=False), _text)
_value = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(_text, inner, max_size=3)), max_leaves=6)
_keys = st.sampled_from(sorted({k for keys in READ.values() for k in keys} | {"event_id", "account", "notes"}))


def _same_in_read_keys(type_name: str, fast: Any, whole: Any) -> None:
    if not isinstance(whole, dict):
        assert fast == whole and type(fast) is type(whole)
        return
    for key in READ[type_name]:
        assert (key in fast) == (key in whole), key
        if key in whole:
            assert fast[key] == whole[key] and type(fast[key]) is type(whole[key]), key


@settings(max_examples=400, deadline=None)
@given(type_name=st.sampled_from(sorted(READ)),
       fields=st.lists(st.tuples(_keys, _value), max_size=10),
       typed=st.dictionaries(_keys, _text, max_size=7))
def test_the_keys_the_fold_reads_decode_as_orjson_decodes_them(type_name, fields, typed):
    # ``typed``: mostly text values, as stored payloads are; ``fields`` (after them, so they may
    # repeat a key: the last one counts) any JSON at all
    payload = orjson.dumps(dict(typed)) [:-1]
    extra = b",".join(orjson.dumps(k) + b":" + orjson.dumps(v) for k, v in fields)
    data = payload + (b"," if typed and fields else b"") + extra + b"}"
    whole = orjson.loads(data)
    _same_in_read_keys(type_name, decode_for_fold(type_name, data), whole)
    _same_in_read_keys(type_name, decode_for_fold(type_name, data.decode()), whole)  # a payload stored as text


@pytest.mark.parametrize("data", [
    b'{"qty":10,"price":"1","fee":"0","exec_id":"x","_v":2}',  # a number where text is written
    b'{"qty":"10","price":"1","fee":null,"exec_id":"x","_v":2}',
    b'{"qty":"10","price":"1","fee":"0","exec_id":"x","_v":2.0}',
    b'{"qty":"10","price":"1","fee":"0","exec_id":"x","_v":true}',
    '{"qty":"10","price":"1","fee":"0","exec_id":"x","note":"d\u00e9j\u00e0","_v":2}'.encode(),  # not ASCII
    b'[1,2]',
    b'"text"',
])
def test_what_the_partial_decode_cannot_type_is_decoded_whole(data):
    assert decode_for_fold("OrderFilled", data) == orjson.loads(data)


def test_a_payload_that_is_not_json_is_refused_as_orjson_refuses_it():
    for bad in (b'{"qty":"1"', b'{"qty":"1",}', b'{"x":"\\ud800","qty":"1"}', b''):
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(bad)
        with pytest.raises(orjson.JSONDecodeError):
            decode_for_fold("OrderFilled", bad)


def test_only_what_the_fold_reads_is_kept():
    data = orjson.dumps({"event_id": "e", "account": "a", "client_order_id": "c", "exec_id": "x", "qty": "1",
                         "price": "2", "fee": "0", "fee_currency": "USD", "liquidity": "maker",
                         "venue_order_id": None, SCHEMA_KEY: 2})
    assert decode_for_fold("OrderFilled", data) == {"exec_id": "x", "qty": "1", "price": "2", "fee": "0",
                                                    "fee_currency": "USD", SCHEMA_KEY: 2}
    assert set(_PARTIAL) == set(READ)
    assert decode_for_fold("OrderSubmitted", data) == orjson.loads(data)  # any other type: whole
