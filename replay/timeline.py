"""The timeline around an instant: every event of every stream in a window, in log order, with
market bars optionally interleaved by time, filtered by account, symbol, strategy or type.
On the ``recorded`` axis the window is the positions whose log time (``replay.log``) is in it;
an event stamped before that time by a store clock that stepped back shows the log's time and
carries its own stamp as ``recorded_at`` (and ``log_time`` in JSON)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from rich.table import Table

from ..adapters.store import Store
from .log import (
    Axis,
    LoggedEvent,
    ReplayError,
    SteppedBack,
    bounds,
    check_axis,
    check_within,
    describe,
    iso,
    log_times,
    order_symbols,
    parse_duration,
    parse_time,
    window_events,
)


@dataclass
class Timeline:
    """The events of a window around ``around`` on ``axis`` that passed ``filters``, in log order (bars
    interleaved by time when asked)."""

    around: datetime
    start: datetime
    end: datetime
    axis: Axis
    events: list[LoggedEvent]  # trading events in log order, bars interleaved by time when asked
    filters: dict[str, Any]
    # recorded axis: runs of the window's positions stamped before the log's time
    stepped_back: list[SteppedBack] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The timeline as JSON-ready values, each event with its time on the axis and a summary."""
        return {
            "around": iso(self.around),
            "start": iso(self.start),
            "end": iso(self.end),
            "axis": self.axis,
            "filters": self.filters,
            "count": len(self.events),
            "events": [{**e.envelope(), "time": iso(e.time(self.axis)), "summary": describe(e)} for e in self.events],
            **({"stepped_back": [r.to_json() for r in self.stepped_back]} if self.stepped_back else {}),
        }


def _split(value: str | Iterable[str] | None) -> set[str] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    out = {i.strip() for i in items if i.strip()}
    return out or None


def window_bounds(around: datetime | str, window: str | timedelta) -> tuple[datetime, datetime, datetime]:
    """``--around T --window W``: [T - W, T + W] (a window before and after)."""
    t = parse_time(around, "--around")
    w = parse_duration(window)
    return t, t - w, t + w


def interleave(trading: list[LoggedEvent], bars: list[LoggedEvent], axis: Axis) -> list[LoggedEvent]:
    """Trading events stay in log order; each bar goes before the first trading event later than it."""
    bars = sorted(bars, key=lambda b: (b.time(axis), b.payload.get("symbol", ""), b.position))
    out: list[LoggedEvent] = []
    i = 0
    for e in trading:
        t = e.time(axis)
        while i < len(bars) and bars[i].time(axis) <= t:
            out.append(bars[i])
            i += 1
        out.append(e)
    out.extend(bars[i:])
    return out


def timeline(store: Store, around: datetime | str, window: str | timedelta = "60s", *, axis: Axis = "recorded",
             market: bool = False, account: str | None = None, symbol: str | Iterable[str] | None = None,
             strategy: str | None = None, types: str | Iterable[str] | None = None,
             progress: Callable[[int, int], None] | None = None) -> Timeline:
    """The trading events within ``window`` either side of ``around`` on ``axis``, filtered by account,
    symbols, strategy and event types (all matched exactly), with the market log's bars interleaved
    when ``market``. Read only. Raises ``ReplayError`` for a bad time, window, axis or type name, a
    time outside the log (``recorded``), or an empty window (``occurred``)."""
    check_axis(axis)
    t, start, end = window_bounds(around, window)
    b = bounds(store)
    if axis == "recorded":
        check_within(t, b, "--around")
    events = window_events(store, start, end, axis=axis, progress=progress)
    if axis == "occurred" and not events and not store.trading.head() == 0:
        # on this axis the log's span is only known by scanning; an empty window far away is an error
        raise ReplayError(f"no event occurred between {iso(start)} and {iso(end)} (--around {iso(t)})")
    symbols = _split(symbol)
    wanted_types = _split(types)
    if wanted_types:
        from ..domain.events import EVENT_TYPES

        unknown = sorted(wanted_types - set(EVENT_TYPES))
        if unknown:
            raise ReplayError(f"unknown event type(s): {', '.join(unknown)}")
    orders = order_symbols(store, events) if (symbols or strategy or account) else {}

    def keep(e: LoggedEvent) -> bool:
        d = e.payload
        info = orders.get(e.stream_id, {})
        if wanted_types and e.type not in wanted_types:
            return False
        if account is not None:
            owner = d.get("account") or info.get("account")
            if owner != account:
                return False
        if symbols is not None:
            sym = d.get("symbol") or info.get("symbol")
            if sym not in symbols:
                return False
        if strategy is not None:
            strat = d.get("strategy_id") or info.get("strategy_id")
            if strat != strategy:
                return False
        return True

    kept = [e for e in events if keep(e)]
    if market:
        bars = [e for e in window_events(store, start, end, axis=axis, log="market")
                if (symbols is None or e.payload.get("symbol") in symbols)
                and (not wanted_types or "BarRecorded" in wanted_types)]
        kept = interleave(kept, bars, axis)
    filters = {"account": account, "symbol": sorted(symbols) if symbols else None, "strategy": strategy,
               "types": sorted(wanted_types) if wanted_types else None, "market": market}
    stepped_back = []
    if axis == "recorded" and events:
        stepped_back = log_times(store).within(events[0].position, events[-1].position)
    return Timeline(t, start, end, axis, kept, filters, stepped_back)


def timeline_table(tl: Timeline, limit: int | None = None, title: str | None = None) -> Table:
    """A rich table of ``tl``'s events, the first ``limit`` when given."""
    table = Table(title=title or (f"Timeline {iso(tl.start)} .. {iso(tl.end)} ({tl.axis} axis): "
                                  f"{len(tl.events)} events"), title_justify="left")
    for c in ("log pos", "time", "stream", "type", "what"):
        table.add_column(c, overflow="fold")
    shown = tl.events if limit is None else tl.events[:limit]
    for e in shown:
        pos = str(e.position) if e.log == "trading" else f"m{e.position}"
        stream = e.stream_id if len(e.stream_id) <= 24 else e.stream_id[:21] + "..."
        style = "dim" if e.log == "market" else ("bold" if e.time(tl.axis) == tl.around else None)
        table.add_row(pos, iso(e.time(tl.axis)), stream, e.type, describe(e), style=style)
    captions = []
    if limit is not None and len(tl.events) > limit:
        captions.append(f"{len(tl.events) - limit} more (use --json for all)")
    for r in tl.stepped_back:
        captions.append(f"the store's clock stepped back: positions {r.first}..{r.last} are stamped "
                        f"{iso(r.earliest)} .. {iso(r.latest)}, shown at the log's time {iso(r.log_time)}")
    if captions:
        table.caption = "; ".join(captions)
    return table
