"""The post-mortem report: one self-contained HTML file (plots embedded as base64 PNGs) for a
window around an incident — positions, realised/unrealised P&L and equity over the window, event
density, breaker / kill-switch / block changes marked, the state at both ends and the timeline.

P&L follows the fold: realised is before fees, unrealised is marked at the last fill price, equity
is realised + unrealised - fees, summed over the accounts shown.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from ..adapters.store import Store, gc_paused
from ..loading import state_at
from ..domain.state import TradingState
from .log import (
    Axis,
    LoggedEvent,
    ReplayError,
    bounds,
    check_axis,
    check_within,
    describe,
    iso,
    iter_events,
    position_at,
)
from .state import state_view
from .timeline import Timeline, timeline, window_bounds

MARKED = {
    "CircuitBreakerTripped": ("breaker tripped", "#d97706"),
    "CircuitBreakerReset": ("breaker reset", "#65a30d"),
    "KillSwitchEngaged": ("kill switch engaged", "#dc2626"),
    "KillSwitchReleased": ("kill switch released", "#16a34a"),
    "TradingBlocked": ("trading blocked", "#7c3aed"),
    "DiscrepancyAcknowledged": ("block acknowledged", "#2563eb"),
}
ZERO = Decimal(0)


@dataclass
class Series:
    times: list[datetime] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    qty: dict[str, list[Decimal]] = field(default_factory=dict)  # "account|venue|symbol" -> qty per sample
    realized: list[Decimal] = field(default_factory=list)
    unrealized: list[Decimal] = field(default_factory=list)
    fees: list[Decimal] = field(default_factory=list)
    equity: list[Decimal] = field(default_factory=list)
    marks: list[tuple[datetime, str, str, str]] = field(default_factory=list)  # time, label, color, account


def _totals(state: TradingState, account: str | None) -> tuple[Decimal, Decimal, Decimal]:
    r = u = f = ZERO
    for (acct, _v, _s), p in state.positions.items():
        if account is None or acct == account:
            r += p.realized_pnl
            u += p.unrealized_pnl
            f += p.fees
    return r, u, f


def series(store: Store, start: datetime, end: datetime, *, axis: Axis = "recorded", account: str | None = None,
           exchange_tz: str = "America/New_York") -> tuple[Series, TradingState, TradingState]:
    """Samples after every event of the window (and one at its start); the states at both ends."""
    out = Series()
    keys: set[str] = set()

    def sample(state: TradingState, t: datetime, pos: int) -> None:
        r, u, f = _totals(state, account)
        out.times.append(t)
        out.positions.append(pos)
        out.realized.append(r)
        out.unrealized.append(u)
        out.fees.append(f)
        out.equity.append(r + u - f)
        for k, p in state.positions.items():
            if account is None or k[0] == account:
                name = "|".join(k)
                if name not in keys:
                    keys.add(name)
                    out.qty[name] = [ZERO] * (len(out.times) - 1)
        for name in keys:
            acct, venue, symbol = name.split("|")
            p = state.positions.get((acct, venue, symbol))
            out.qty[name].append(p.qty if p is not None else ZERO)

    first: TradingState | None = None
    with gc_paused():
        if axis == "recorded":
            b = bounds(store)
            p0 = position_at(store, start - timedelta(microseconds=1), b=b, check=False) if start > b.first_at else 0
            state = state_at(store, p0, exchange_tz=exchange_tz) if p0 else TradingState(exchange_tz)
            stop = min(b.last, position_at(store, end, b=b, check=False))
            events: Any = iter_events(store, p0, stop)
            excluded = None
        else:
            state = TradingState(exchange_tz)
            events = iter_events(store)
            excluded = set()
        started = False
        for e in events:
            t = e.time(axis)
            if excluded is not None:
                if e.stream_id in excluded:
                    continue
                if t > end:
                    excluded.add(e.stream_id)
                    continue
            if not started and t >= start:
                first = _copy_summary(state)
                sample(state, start, state.position)
                started = True
            state.apply(e.position, e.stream_id, e.version, e.type, dict(e.payload), e.recorded_at)
            if started and start <= t <= end:
                sample(state, t, e.position)
                if e.type in MARKED and (account is None or e.payload.get("account") == account):
                    label, color = MARKED[e.type]
                    out.marks.append((t, label, color, e.payload.get("account", "")))
        if not started:
            first = _copy_summary(state)
            sample(state, start, state.position)
    sample(state, end, state.position)
    if axis == "occurred":
        # Venue clocks are not in log order (a limit set at 15:00 may be logged before a fill of
        # 14:31): plot the samples in time order, or the lines zigzag back and forth in time.
        # A sample shows the state after the latest-logged event among those stamped at or
        # before its time, so an early-logged event with a late stamp does not pull the lines
        # back to an older state.
        order = sorted(range(len(out.times)), key=out.times.__getitem__)
        latest, best = [], -1
        for i in order:
            if best < 0 or out.positions[i] >= out.positions[best]:
                best = i
            latest.append(best)
        times = [out.times[i] for i in order]
        order = latest
        out.times = times
        for name in ("positions", "realized", "unrealized", "fees", "equity"):
            values = getattr(out, name)
            setattr(out, name, [values[i] for i in order])
        out.qty = {k: [v[i] for i in order] for k, v in out.qty.items()}
    return out, first or state, state


def _copy_summary(state: TradingState) -> TradingState:
    """A frozen copy of what the report shows of the state at the window's start."""
    import copy

    snap = TradingState(state.exchange_tz)
    snap.position = state.position
    snap.positions = copy.deepcopy(state.positions)
    snap.accounts = {}
    for name, a in state.accounts.items():
        c = copy.copy(a)
        c.open_orders = {k: copy.copy(o) for k, o in a.open_orders.items()}
        c.daily = copy.deepcopy(a.daily)
        c.limits = dict(a.limits)
        snap.accounts[name] = c
    return snap


# ---------------------------------------------------------------------------------- plots


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _mark(ax: Any, s: Series) -> None:
    for t, label, color, _acct in s.marks:
        ax.axvline(t, color=color, linestyle="--", linewidth=1.2, label=label)


def _dedupe_legend(ax: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    seen: dict[str, Any] = {}
    for h, lbl in zip(handles, labels):
        seen.setdefault(lbl, h)
    if seen:
        ax.legend(list(seen.values()), list(seen), fontsize=8, loc="best")


def plots(s: Series, tl: Timeline, start: datetime, end: datetime) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    def axes(title: str) -> tuple[Any, Any]:
        fig, ax = plt.subplots(figsize=(10, 3.2))
        ax.set_title(title, fontsize=11)
        ax.set_xlim(start, end)
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        fig.autofmt_xdate()
        return fig, ax

    order = sorted(range(len(s.times)), key=lambda i: (s.times[i], i))  # occurred axis: not in log order
    times = [s.times[i] for i in order]
    out = {}
    fig, ax = axes("Position (qty) by account|venue|symbol")
    for name in sorted(s.qty):
        ax.step(times, [float(s.qty[name][i]) for i in order], where="post", label=name)
    if not s.qty:
        ax.text(0.5, 0.5, "no positions in this window", transform=ax.transAxes, ha="center")
    _mark(ax, s)
    _dedupe_legend(ax)
    out["position"] = _png(fig)

    fig, ax = axes("P&L: realised, unrealised (at last fill), equity (realised + unrealised - fees)")
    ax.step(times, [float(s.realized[i]) for i in order], where="post", label="realised", color="#2563eb")
    ax.step(times, [float(s.unrealized[i]) for i in order], where="post", label="unrealised", color="#f59e0b")
    ax.step(times, [float(s.equity[i]) for i in order], where="post", label="equity", color="#111827", linewidth=2)
    _mark(ax, s)
    _dedupe_legend(ax)
    out["pnl"] = _png(fig)

    fig, ax = axes("Event density (events per bin)")
    span = (end - start).total_seconds()
    bins = 60
    width = span / bins
    counts_t = [0] * bins
    counts_m = [0] * bins
    for e in tl.events:
        i = min(bins - 1, max(0, int((e.time(tl.axis) - start).total_seconds() / width))) if width > 0 else 0
        (counts_m if e.log == "market" else counts_t)[i] += 1
    lefts = [start + timedelta(seconds=width * i) for i in range(bins)]
    w_days = width / 86400
    ax.bar(lefts, counts_t, width=w_days, align="edge", color="#4f46e5", label="trading events")
    if any(counts_m):
        ax.bar(lefts, counts_m, width=w_days, align="edge", bottom=counts_t, color="#a3a3a3", label="market bars")
    _mark(ax, s)
    _dedupe_legend(ax)
    out["density"] = _png(fig)
    return out


# ----------------------------------------------------------------------------------- html

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#111827;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e5e7eb}
.meta{color:#4b5563;font-size:13px} img{max-width:100%;border:1px solid #e5e7eb;margin:6px 0}
table{border-collapse:collapse;font-size:12px;margin:6px 0} th,td{border:1px solid #e5e7eb;padding:3px 6px;text-align:left}
th{background:#f3f4f6} tr.market td{color:#6b7280} tr.mark td{background:#fef3c7;font-weight:600}
.cards{display:flex;gap:12px;flex-wrap:wrap} .card{border:1px solid #e5e7eb;border-radius:6px;padding:8px 12px}
.card b{display:block;font-size:18px}
"""


def _e(value: Any) -> str:
    if isinstance(value, Decimal):
        value = f"{value.normalize():f}"
    elif isinstance(value, datetime):
        value = iso(value)
    elif value is None:
        value = "-"
    return html.escape(str(value))


def _table(headers: list[str], rows: list[list[Any]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _state_html(view: dict[str, Any]) -> str:
    pos = _table(["account", "venue", "symbol", "qty", "avg cost", "realised", "unrealised", "fees"],
                 [[p["account"], p["venue"], p["symbol"], p["qty"], round(p["avg_cost"], 4), p["realized_pnl"],
                   p["unrealized_pnl"], p["fees"]] for p in view["positions"]])
    risk = _table(["account", "kill switch", "breaker", "blocked", "ramp", "open orders", "discrepancies"],
                  [[n, a["kill_switch_reason"] if a["kill_switch"] else "off",
                    a["breaker_reason"] if a["breaker_active"] else "ok",
                    a["blocked_reason"] if a["blocked"] else "no", f"{a['ramp_pct']}%", a["open_orders"],
                    a["discrepancies"]] for n, a in view["accounts"].items()])
    return pos + risk


def render_html(store: Store, tl: Timeline, s: Series, first: TradingState, last: TradingState,
                images: dict[str, str], limit: int = 5000) -> str:
    v0 = state_view(first, tl.start, axis=tl.axis)
    v1 = state_view(last, tl.end, axis=tl.axis)
    marks_rows = [[iso(t), label, acct] for t, label, _c, acct in s.marks]
    r0, r1 = s.equity[0] if s.equity else ZERO, s.equity[-1] if s.equity else ZERO
    trading = sum(1 for e in tl.events if e.log == "trading")
    cards = "".join(f'<div class="card">{_e(k)}<b>{_e(v)}</b></div>' for k, v in (
        ("events in window", trading), ("bars", len(tl.events) - trading),
        ("equity change", r1 - r0), ("equity at end", r1), ("breaker / kill / block changes", len(s.marks)),
    ))
    rows, classes = [], []
    for e in tl.events[:limit]:
        rows.append([e.position if e.log == "trading" else f"m{e.position}", iso(e.time(tl.axis)), e.stream_id,
                     e.type, describe(e)])
        classes.append("market" if e.log == "market" else ("mark" if e.type in MARKED else ""))
    more = f"<p class=meta>{len(tl.events) - limit} more events not shown.</p>" if len(tl.events) > limit else ""
    img = "".join(f'<h2>{_e(title)}</h2><img alt="{_e(title)}" src="data:image/png;base64,{images[key]}">'
                  for key, title in (("position", "Position"), ("pnl", "P&L and equity"),
                                     ("density", "Event density")))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Post-mortem {_e(iso(tl.around))}</title>
<style>{_CSS}</style></head><body>
<h1>Post-mortem around {_e(iso(tl.around))}</h1>
<p class="meta">Window {_e(iso(tl.start))} .. {_e(iso(tl.end))} on the {_e(tl.axis)} time axis; log {_e(store.display_url)};
positions {_e(v0['position'])} .. {_e(v1['position'])}. Filters: {_e({k: v for k, v in tl.filters.items() if v})}</p>
<div class="cards">{cards}</div>
{img}
<h2>Breaker, kill-switch and block changes</h2>
{_table(["time", "change", "account"], marks_rows) if marks_rows else "<p class=meta>none in this window</p>"}
<h2>State at the start of the window</h2>{_state_html(v0)}
<h2>State at the end of the window</h2>{_state_html(v1)}
<h2>Timeline ({len(tl.events)} events)</h2>
{_table(["pos", "time", "stream", "type", "what"], rows, classes)}{more}
</body></html>
"""


def write_report(store: Store, around: datetime | str, window: str | timedelta, path: str, *,
                 axis: Axis = "recorded", account: str | None = None, market: bool = True,
                 progress: Callable[[int, int], None] | None = None) -> str:
    """Write the post-mortem HTML for [around - window, around + window] to ``path``; returns it."""
    check_axis(axis)
    t, start, end = window_bounds(around, window)
    if axis == "recorded":
        check_within(t, bounds(store), "--around")
    tl = timeline(store, t, window, axis=axis, market=market, account=account, progress=progress)
    s, first, last = series(store, start, end, axis=axis, account=account)
    images = plots(s, tl, start, end)
    document = render_html(store, tl, s, first, last, images)
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(document)
    except OSError as e:
        raise ReplayError(f"cannot write the report to {path!r}: {e.strerror or e}") from None
    return path


__all__ = ["write_report", "series", "plots", "render_html", "ReplayError", "LoggedEvent"]
