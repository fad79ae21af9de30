"""Market-data replay: recorded bars in time order at a chosen speed, interleaved with the trading
events of the same window, into a callback, an iterator or the terminal.

Time is the market's: a bar is placed at its close (start + timeframe, the instant it became
known) and a trading event at its ``occurred_at`` (``axis="occurred"``, the default); with
``axis="recorded"`` both are placed at the store's commit clock. Ties: bars first, then trading
events in log order. Pacing sleeps so that item k is delivered (t_k - t_0) / speed after the
start; ``speed=None`` is as fast as possible.

Warm start (the SMA bot): ``recorded_bars(store, symbol=..., end=T, last=N)`` gives the N bars a
strategy had seen at T.
"""

from __future__ import annotations

import heapq
import time
from contextlib import closing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import orjson

from ..adapters.store import Store, gc_paused
from ..adapters.store.sql import read_cursor
from .log import (
    TIMEFRAMES,
    UTC,
    Axis,
    LoggedEvent,
    ReplayError,
    bar_close,
    check_axis,
    iso,
    iter_events,
    parse_speed,
    parse_time,
    window_events,
)


class Bar(msgspec.Struct, frozen=True, gc=False):
    """One recorded bar, Decimal prices; ``end`` is its close (start + timeframe), ``position`` its
    place in the market log. Immutable; equal, hashable and shown like a frozen dataclass.

    A ``msgspec.Struct`` with ``gc=False``, not a dataclass: built in one C call and never tracked by
    the cyclic collector (it holds only strings, datetimes, Decimals and an int, so it cannot be in
    a cycle). A replay builds one per bar; as dataclass instances they also cost a collector pass
    over every one of them once the collector was switched back on (0.5 us a bar, 8% of the replay).
    ``msgspec.structs.replace``/``asdict`` stand for the ``dataclasses`` ones."""

    venue: str
    symbol: str
    timeframe: str
    start: datetime
    end: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    position: int  # in the market log

    @classmethod
    def from_payload(cls, d: dict[str, Any], position: int) -> Bar:
        """The bar of a ``BarRecorded`` payload at market-log ``position``."""
        return cls(d["venue"], d["symbol"], d["timeframe"], parse_time(d["start"]), bar_close(d),
                   Decimal(d["open"]), Decimal(d["high"]), Decimal(d["low"]), Decimal(d["close"]),
                   Decimal(d["volume"]), position)

    def to_json(self) -> dict[str, Any]:
        """The bar as JSON-ready values (times ISO-8601 UTC, Decimals kept)."""
        return {"venue": self.venue, "symbol": self.symbol, "timeframe": self.timeframe, "start": iso(self.start),
                "end": iso(self.end), "open": self.open, "high": self.high, "low": self.low, "close": self.close,
                "volume": self.volume, "position": self.position}


class _BarFields(msgspec.Struct, gc=False):
    """The keys of a ``BarRecorded`` payload a bar is made of, as the payload writes them (text);
    decoding into it skips the others (event id, occurred_at, ...) without building them."""

    venue: str
    symbol: str
    timeframe: str
    start: str
    open: str
    high: str
    low: str
    close: str
    volume: str


_decode_bar_fields = msgspec.json.Decoder(_BarFields).decode
_BAD_JSON = (msgspec.ValidationError, msgspec.DecodeError)
_NO_TIME = timedelta(0)  # bar_close's span for an unknown timeframe


class BarDecoder:
    """``Bar.from_payload`` for a whole replay, at a fraction of the cost and with the same result.

    Every bar parsed its start twice (start, and close = start + timeframe), and ``Decimal(text)``
    costs three dict lookups; a replay's bars share a few thousand starts across many symbols, and
    their prices repeat (a tick size). So the start and close are parsed once per distinct (start
    text, timeframe), and each price or volume text becomes a Decimal once (Decimals are
    immutable: a shared one is the same value, digit for digit; at most ``DECIMALS_KEPT`` are
    kept): an equal ``Bar``, with the same errors for a bad payload. ``from_json`` reads the
    payload's bytes straight into the bar's fields (``_BarFields``)."""

    __slots__ = ("_times", "_decimals")
    DECIMALS_KEPT = 65_536

    def __init__(self) -> None:
        self._times: dict[str, dict[str, tuple[datetime, datetime]]] = {}  # timeframe -> start text -> times
        self._decimals: dict[Any, Decimal] = {}

    def _decimal(self, value: Any) -> Decimal:
        number = Decimal(value)
        if len(self._decimals) >= self.DECIMALS_KEPT:
            self._decimals.clear()
        self._decimals[value] = number
        return number

    def _start_and_close(self, start: Any, timeframe: Any) -> tuple[datetime, datetime]:
        """The bar's start and close (``bar_close``), parsed once per (start text, timeframe)."""
        cacheable = isinstance(start, str) and isinstance(timeframe, str)
        by_start = self._times.get(timeframe) if cacheable else None
        times = by_start.get(start) if by_start is not None else None
        if times is None:
            opened = parse_time(start)
            times = (opened, opened + TIMEFRAMES.get(timeframe, _NO_TIME))
            if cacheable:
                self._times.setdefault(timeframe, {})[start] = times
        return times

    def __call__(self, d: dict[str, Any], position: int) -> Bar:
        """The bar of payload ``d`` at market-log ``position`` (``== Bar.from_payload(d, position)``)."""
        try:
            venue, symbol, timeframe = d["venue"], d["symbol"], d["timeframe"]
            start, close = self._start_and_close(d["start"], timeframe)
            known, fresh = self._decimals.get, self._decimal
            o, h, lo, c, v = d["open"], d["high"], d["low"], d["close"], d["volume"]
            return Bar(venue, symbol, timeframe, start, close, known(o) or fresh(o), known(h) or fresh(h),
                       known(lo) or fresh(lo), known(c) or fresh(c), known(v) or fresh(v), position)
        except Exception:  # noqa: BLE001 - a bad payload: the reference raises its own error
            return Bar.from_payload(d, position)

    def from_json(self, data: bytes, position: int, symbols: set[str] | None = None) -> Bar | None:
        """The bar of the JSON payload ``data`` (``== Bar.from_payload(orjson.loads(data), position)``),
        or None when ``symbols`` is given and the bar's symbol is not in it. A payload the fast
        decoder does not take as it is (a number for a price, a key missing, bad JSON) goes the
        ``orjson.loads`` way: the same bar, or the same error."""
        try:
            f = _decode_bar_fields(data)
        except _BAD_JSON:
            d = orjson.loads(data)
            if symbols is not None and d["symbol"] not in symbols:
                return None
            return self(d, position)
        if symbols is not None and f.symbol not in symbols:
            return None
        timeframe = f.timeframe
        by_start = self._times.get(timeframe)
        times = by_start.get(f.start) if by_start is not None else None
        known, fresh = self._decimals.get, self._decimal
        o, h, lo, c, v = f.open, f.high, f.low, f.close, f.volume
        try:
            if times is None:
                times = self._start_and_close(f.start, timeframe)
            return Bar(f.venue, f.symbol, timeframe, times[0], times[1], known(o) or fresh(o),
                       known(h) or fresh(h), known(lo) or fresh(lo), known(c) or fresh(c), known(v) or fresh(v),
                       position)
        except Exception:  # noqa: BLE001 - a bad time or number: the reference raises its own error
            return Bar.from_payload(orjson.loads(data), position)


class MarketItem(msgspec.Struct, frozen=True, gc=False):
    """One replayed item: a bar, or a trading event of the same window. (A ``msgspec.Struct`` like
    ``Bar``, for the same reason: one per bar.)"""

    kind: str  # "bar" | "event"
    time: datetime
    bar: Bar | None = None
    event: LoggedEvent | None = None

    def to_json(self) -> dict[str, Any]:
        """The item as JSON-ready values: the bar's fields, or the event's envelope and summary."""
        from .log import describe

        if self.bar is not None:
            return {"kind": "bar", "time": iso(self.time), **self.bar.to_json()}
        assert self.event is not None
        return {"kind": "event", "time": iso(self.time), **self.event.envelope(), "summary": describe(self.event)}


@dataclass
class ReplayStats:
    """What a replay has delivered so far: bars, trading events and elapsed seconds."""

    bars: int = 0
    events: int = 0
    seconds: float = 0.0

    @property
    def bars_per_second(self) -> float:
        """Bars delivered per second (infinite before any time has passed)."""
        return self.bars / self.seconds if self.seconds > 0 else float("inf")


def _bars_in(store: Store, start: datetime, end: datetime, axis: Axis, symbols: set[str] | None) -> list[Bar]:
    out: list[Bar] = []
    decode = BarDecoder()
    if axis == "recorded":
        for e in window_events(store, start, end, axis="recorded", log="market"):
            d = e.payload
            if symbols is not None and d["symbol"] not in symbols:
                continue
            bar = decode(d, e.position)
            if start <= e.recorded_at <= end:
                out.append(bar)
        return out
    # The occurred axis needs only the bars' positions and payloads: pages straight from the
    # cursor (no per-row generator step, no ``recorded_at`` parsed), only ``BarRecorded`` decoded,
    # and of each payload only the bar's keys.
    from_json = decode.from_json
    append = out.append
    for page in _bar_pages(store):
        for position, data in page:
            bar = from_json(data, position, symbols)
            if bar is not None and start <= bar.end <= end:
                append(bar)
    return out


def _bar_pages(store: Store, batch: int = 10_000) -> Iterator[list[tuple[int, bytes]]]:
    """(position, payload) of every ``BarRecorded`` row of the market log in position order, a page
    at a time. SQLite (one writer, no holes): only those two columns of those rows are read.
    PostgreSQL: the log's own pages, which stop at the first hole (an append in flight)."""
    if store.dialect.is_sqlite:
        table = store.dialect.name(store.market.table)
        with read_cursor(store) as cur:
            cur.execute(f"SELECT position, data FROM {table} WHERE type = 'BarRecorded' ORDER BY position")
            while rows := cur.fetchmany(batch):
                yield rows
        return
    with closing(store.market.iter_pages(0, batch=batch)) as pages:
        for page in pages:
            yield [(row[0], row[4]) for row in page if row[3] == "BarRecorded"]


def _bar_key(b: Bar) -> tuple[datetime, str, str, int]:
    return b.end, b.symbol, b.timeframe, b.position


def recorded_bars(store: Store, *, symbol: str | None = None, timeframe: str | None = None,
                  start: datetime | str | None = None, end: datetime | str | None = None,
                  last: int | None = None) -> list[Bar]:
    """Recorded bars closed in [start, end], in time order (``last``: only the last N) — what a
    strategy restarting at ``end`` warms up from."""
    lo = parse_time(start, "start") if start is not None else datetime.min.replace(tzinfo=UTC)
    hi = parse_time(end, "end") if end is not None else datetime.max.replace(tzinfo=UTC)
    bars = [b for b in _bars_in(store, lo, hi, "occurred", {symbol} if symbol else None)
            if timeframe is None or b.timeframe == timeframe]
    bars.sort(key=lambda b: (b.end, b.symbol, b.position))
    return bars[-last:] if last else bars


class MarketReplay:
    """Iterable replay of one window; each item also goes to ``callback`` when given."""

    def __init__(self, store: Store, start: datetime | str, end: datetime | str, speed: str | float | None = None,
                 callback: Callable[[MarketItem], Any] | None = None, *, symbols: set[str] | list[str] | None = None,
                 trading: bool = True, axis: Axis = "occurred", sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.start = parse_time(start, "start")
        self.end = parse_time(end, "end")
        if self.end < self.start:
            raise ReplayError(f"end {iso(self.end)} is before start {iso(self.start)}")
        self.speed = parse_speed(speed)
        self.callback = callback
        self.symbols = set(symbols) if symbols else None
        self.trading = trading
        self.axis = check_axis(axis)
        self.sleep = sleep
        self.clock = clock
        self.stats = ReplayStats()

    def items(self) -> list[MarketItem]:
        """Every item of the window in time order, bars before events on ties (events only with
        ``trading``). Raises ``ReplayError`` when the market log is empty or the window holds
        nothing."""
        with gc_paused():  # the decoder's caches and the lists grow: collections would only walk them again
            bars = _bars_in(self.store, self.start, self.end, self.axis, self.symbols)
            bars.sort(key=_bar_key)
            bar_items = [MarketItem("bar", b.end, b) for b in bars]
        if not bars and self.store.market.head() == 0:
            raise ReplayError(f"the market-data log in {self.store.display_url} holds no bars")
        events = []
        if self.trading and self.store.trading.head():
            events = window_events(self.store, self.start, self.end, axis=self.axis)
        if not bar_items and not events:
            lo, hi = market_span(self.store)
            raise ReplayError(f"nothing recorded between {iso(self.start)} and {iso(self.end)} "
                              f"(the market log spans {iso(lo)} .. {iso(hi)})")
        if not self.trading:
            return bar_items
        event_items = sorted((MarketItem("event", e.time(self.axis), None, e) for e in events),
                             key=lambda i: (i.time, i.event.position))  # type: ignore[union-attr]
        # merge: bars first on ties
        return list(heapq.merge(bar_items, event_items, key=lambda i: (i.time, 0 if i.kind == "bar" else 1)))

    def __iter__(self) -> Iterator[MarketItem]:
        items = self.items()
        started = self.clock()
        t0 = items[0].time if items else self.start
        stats, speed, callback = self.stats, self.speed, self.callback
        for item in items:
            if speed is not None:
                due = (item.time - t0).total_seconds() / speed
                wait = due - (self.clock() - started)
                if wait > 0:
                    self.sleep(wait)
            if item.kind == "bar":
                stats.bars += 1
            else:
                stats.events += 1
            if callback is not None:
                callback(item)
            yield item
        stats.seconds = self.clock() - started

    def run(self) -> ReplayStats:
        """Replay everything (into the callback); returns counts and the wall time taken."""
        for _ in self:
            pass
        return self.stats


def replay_market(store: Store, start: datetime | str, end: datetime | str, speed: str | float | None = None,
                  callback: Callable[[MarketItem], Any] | None = None, **options: Any) -> MarketReplay:
    """``for item in replay_market(store, t1, t2, "10x", cb): ...`` or ``replay_market(...).run()``."""
    return MarketReplay(store, start, end, speed, callback, **options)


def market_span(store: Store) -> tuple[datetime, datetime]:
    """Earliest bar start and latest bar close in the market log."""
    decode = BarDecoder()
    bars = [decode(e.payload, e.position) for e in iter_events(store, log="market") if e.type == "BarRecorded"]
    if not bars:
        raise ReplayError(f"the market-data log in {store.display_url} holds no bars")
    return min(b.start for b in bars), max(b.end for b in bars)


def window_of(around: datetime | str | None, window: str | timedelta | None, start: str | None, end: str | None,
              store: Store) -> tuple[datetime, datetime]:
    """Resolve --around/--window or --start/--end (default: the whole market log)."""
    from .log import parse_duration

    if around is not None:
        t = parse_time(around, "--around")
        w = parse_duration(window or "60s")
        return t - w, t + w
    if start is None or end is None:
        lo, hi = market_span(store)
        return (parse_time(start, "--start") if start else lo), (parse_time(end, "--end") if end else hi)
    return parse_time(start, "--start"), parse_time(end, "--end")


