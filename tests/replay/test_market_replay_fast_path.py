"""Market-data replay reads only the bars' positions and payloads and builds each bar once per
payload (``BarDecoder``): its items are exactly those of the straightforward path (decode every
row, ``Bar.from_payload``, sort, ``MarketItem``), on either time axis, with a symbol filter or
without, for any window — kept here as the reference."""

from __future__ import annotations

import tempfile
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradestate.adapters.store import open_store
from tradestate.domain.ids import bar_stream_id
from tradestate.replay import MarketItem, replay_market
from tradestate.replay.log import TIMEFRAMES, window_events
from tradestate.replay.market import Bar, BarDecoder

T0 = datetime(2026, 11, 16, 14, 30, tzinfo=timezone.utc)
SYMBOLS = ("AAPL", "MSFT", "NVDA")


def reference_items(store, start, end, axis, symbols):
    """The replay's bars as the straightforward path builds them (the code before the fast path)."""
    if axis == "recorded":
        pairs = [(e.payload, e.position, e.recorded_at)
                 for e in window_events(store, start, end, axis="recorded", log="market")]
    else:
        pairs = [(orjson.loads(row[4]), row[0], None) for row in store.market.iter_rows(0)
                 if row[3] == "BarRecorded"]
    bars = []
    for d, position, recorded in pairs:
        if symbols is not None and d["symbol"] not in symbols:
            continue
        bar = Bar.from_payload(d, position)
        t = recorded if recorded is not None else bar.end
        if start <= t <= end:
            bars.append(bar)
    bars.sort(key=lambda b: (b.end, b.symbol, b.timeframe, b.position))
    return [MarketItem("bar", b.end, bar=b) for b in bars]


price = st.decimals(min_value=Decimal("0.0001"), max_value=Decimal(100000), places=4, allow_nan=False,
                    allow_infinity=False)
bar = st.tuples(
    st.sampled_from(SYMBOLS),
    st.sampled_from(sorted(TIMEFRAMES)),
    st.integers(min_value=0, max_value=40),  # start minute: many bars share a start
    st.sampled_from(["Z", "+00:00", "+01:00"]),  # the same instant written differently
    st.lists(price, min_size=5, max_size=5),
    st.integers(min_value=0, max_value=600),  # seconds after the start it was recorded (not in order)
)


def _load(path, bars):
    open_store(f"sqlite:///{path}").close()
    store = open_store(f"sqlite:///{path}", create=False)
    rows = []
    versions: dict[str, int] = {}
    for i, (symbol, timeframe, minute, zone, prices, recorded_after) in enumerate(bars, 1):
        start = T0 + timedelta(minutes=minute)
        text = start.isoformat().replace("+00:00", "Z") if zone == "Z" else start.astimezone(
            timezone(timedelta(hours=1)) if zone == "+01:00" else timezone.utc).isoformat()
        o, h, lo, c, v = (str(p) for p in prices)
        payload = {"event_id": f"e{i}", "occurred_at": text, "venue": "sim", "symbol": symbol,
                   "timeframe": timeframe, "start": text, "open": o, "high": h, "low": lo, "close": c,
                   "volume": v}
        stream = bar_stream_id("sim", symbol, timeframe)
        versions[stream] = versions.get(stream, 0) + 1
        rows.append((i, stream, versions[stream], "BarRecorded", orjson.dumps(payload),
                     (T0 + timedelta(seconds=recorded_after)).isoformat()))
    with store.trading.transaction(write=True) as cur:
        cur.executemany("INSERT INTO ts_market_events (position, stream_id, stream_version, type, data, recorded_at)"
                        " VALUES (?,?,?,?,?,?)", rows)
    return store


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bars=st.lists(bar, min_size=1, max_size=60), axis=st.sampled_from(["occurred", "recorded"]),
       window=st.tuples(st.integers(min_value=-5, max_value=50), st.integers(min_value=0, max_value=60)),
       only=st.none() | st.sets(st.sampled_from(SYMBOLS), min_size=1))
def test_the_fast_path_delivers_exactly_the_reference_items(bars, axis, window, only):
    with tempfile.TemporaryDirectory() as tmp:
        store = _load(f"{tmp}/market.db", bars)
        try:
            start = T0 + timedelta(minutes=window[0])
            end = start + timedelta(minutes=window[1])
            want = reference_items(store, start, end, axis, only)
            got: list[MarketItem] = []
            replay = replay_market(store, start, end, None, got.append, trading=False, axis=axis, symbols=only)
            if want:
                items = list(replay)
            else:
                items = []
                try:
                    list(replay)
                except Exception as e:  # the reference has nothing: the replay says so
                    assert "nothing recorded" in str(e)
            assert items == want and got == want
            assert [repr(i) for i in items] == [repr(i) for i in want]  # the same Decimals, digit for digit
            assert [i.to_json() for i in items] == [i.to_json() for i in want]
            assert replay.stats.bars == len(want)
        finally:
            store.close()


def test_the_decoder_builds_the_bar_from_payload_builds():
    decode = BarDecoder()
    d = {"venue": "sim", "symbol": "AAPL", "timeframe": "5m", "start": "2026-11-16T14:30:00Z", "open": "1.10",
         "high": "1.2", "low": "1", "close": "1.15", "volume": "100"}
    first, again = decode(d, 7), decode(dict(d, close="1.16"), 8)  # the second start comes from the cache
    assert first == Bar.from_payload(d, 7) and again == Bar.from_payload(dict(d, close="1.16"), 8)
    assert repr(first) == repr(Bar.from_payload(d, 7))
    assert first.end == datetime(2026, 11, 16, 14, 35, tzinfo=timezone.utc)


def test_bars_and_items_are_not_tracked_by_the_cyclic_collector(tmp_path):
    """A replay builds one bar and one item per recorded bar and keeps them all: as tracked
    objects, the collector's first pass after the replay walks every one of them (the replay's
    third most expensive step). They hold no references back, so they are never tracked."""
    import gc

    store = _load(tmp_path / "market.db", [("AAPL", "1m", m, "Z", [Decimal(1)] * 5, 0) for m in range(5)])
    try:
        items = list(replay_market(store, T0, T0 + timedelta(hours=1), None, trading=False))
    finally:
        store.close()
    assert len(items) == 5
    assert not any(gc.is_tracked(i) or gc.is_tracked(i.bar) for i in items)


@given(price=st.one_of(st.integers(-5, 10**6), st.floats(0.01, 1e6), st.just("1.2500"), st.just(None)),
       missing=st.sampled_from([None, "venue", "volume", "start", "timeframe"]),
       start=st.sampled_from(["2026-11-16T14:30:00Z", "2026-11-16T15:30:00+01:00", "yesterday", 5]))
def test_json_payloads_decode_to_the_bar_of_the_parsed_payload_or_its_error(price, missing, start):
    """``BarDecoder.from_json`` reads the payload's bytes straight into the bar; a payload it does
    not take as text (numbers, null, a key missing, a bad time) gives the same bar or the same
    error as ``Bar.from_payload`` of the parsed payload."""
    d = {"event_id": "e1", "venue": "sim", "symbol": "AAPL", "timeframe": "5m", "start": start, "open": price,
         "high": "1.2", "low": "1", "close": "1.15", "volume": "100"}
    if missing:
        del d[missing]
    try:
        want: object = Bar.from_payload(d, 3)
    except Exception as e:  # noqa: BLE001 - the reference's error is the expected one
        want = (type(e), str(e))
    try:
        got: object = BarDecoder().from_json(orjson.dumps(d), 3)
    except Exception as e:  # noqa: BLE001
        got = (type(e), str(e))
    assert got == want and repr(got) == repr(want)
    assert BarDecoder().from_json(orjson.dumps(d | {"symbol": "MSFT"}), 3, {"AAPL"}) is None
