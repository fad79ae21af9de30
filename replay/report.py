"""The post-mortem report: one self-contained HTML file (plots embedded as base64 PNGs) for a
window around an incident — an incident summary (crashes, recovery, reconciliation corrections,
risk refusals, discrepancies), a price chart with the fills and intents on it, positions,
realised/unrealised P&L and equity over the window, event density, breaker / kill-switch / block
changes marked, the state at both ends and the timeline.

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
    window_events,
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
    """The samples of a window for the report's plots (after every event): times, quantities per
    position, P&L totals, and the notable events."""

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


# ------------------------------------------------------------------------------- incident

# Events a recovery or reconciliation appends, and the operator's answers to them.
INCIDENT_TYPES = frozenset({
    "EngineStarted", "EngineStopped", "RecoveryCompleted", "ReconciliationCompleted", "CashBalanceRecorded",
    "PositionCorrected", "OrderImported", "DiscrepancyRecorded", "TradingBlocked", "DiscrepancyAcknowledged",
    "TradingResumed",
})
# How far past the window's last event the summary looks for the recovery that follows a crash.
FOLLOW_ON = 5000
VENUE_FACT_TYPES = frozenset({"FillCorrected", "OrderReplaceRefused", "OptionSettled", "CorporateActionRecorded",
                              "VariationMarginSettled"})


@dataclass
class Crash:
    """An engine run that never recorded a clean stop, and what found out."""

    engine_id: str
    started: LoggedEvent  # the EngineStarted of the run that crashed
    detected_by: list[str] = field(default_factory=list)


@dataclass
class Incident:
    """What went wrong around a report's window and what was done about it.

    ``events`` are the window's trading events followed by the incident events (``INCIDENT_TYPES``
    and whatever a reconciliation appended) logged after the window, up to and including the first
    ``RecoveryCompleted`` after it — a recovery is logged after the crash it repairs, often with a
    time outside the window. ``reconciled`` maps the id of every event a reconciliation appended to
    that reconciliation's id.
    """

    events: list[LoggedEvent] = field(default_factory=list)
    crashes: list[Crash] = field(default_factory=list)
    recoveries: list[LoggedEvent] = field(default_factory=list)
    reconciliations: list[LoggedEvent] = field(default_factory=list)
    refusals: list[LoggedEvent] = field(default_factory=list)
    discrepancies: list[LoggedEvent] = field(default_factory=list)
    controls: list[LoggedEvent] = field(default_factory=list)  # blocks, acknowledgements, resumptions
    # the venue's own facts beside the fills: corrections and busts, amendments refused, option
    # settlements, corporate actions (what changes positions or orders other than a fill)
    venue_facts: list[LoggedEvent] = field(default_factory=list)
    reconciled: dict[str, str] = field(default_factory=dict)
    by_id: dict[str, LoggedEvent] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """True when the window holds no crash, recovery, reconciliation, refusal, discrepancy or
        control event."""
        return not (self.crashes or self.recoveries or self.reconciliations or self.refusals
                    or self.discrepancies or self.controls)


def _stream_events(store: Store, stream_id: str) -> list[LoggedEvent]:
    return [LoggedEvent.from_row((r.position, r.originator_id, r.originator_version, r.topic, r.state, r.recorded_at))
            for r in store.trading.read_stream(stream_id)]


def incident(store: Store, tl: Timeline, account: str | None = None) -> Incident:
    """The incident summary of a timeline's window, on any time axis.

    Reads the window's trading events, then the log after the window's last one (at most
    ``FOLLOW_ON`` events, stopping after the first ``RecoveryCompleted``) for the recovery and
    reconciliation that followed, and each engine's own stream for its starts and stops. A crash
    is a run whose ``EngineStarted`` is followed by another start or by a ``RecoveryCompleted``
    reporting a crash, with no clean stop between. With ``account``, events of other accounts are
    left out (engine events have no account and stay). Reads only; appends nothing.
    """
    from ..domain.ids import engine_stream_id

    out = Incident()
    window = [e for e in tl.events if e.log == "trading"]
    seen = {e.position for e in window}
    later: list[LoggedEvent] = []
    if window:
        last = max(seen)
        head = store.trading.head()
        for e in iter_events(store, last, min(head, last + FOLLOW_ON)):
            later.append(e)
            if e.type == "RecoveryCompleted":
                break
    for e in window + later:
        if e.event_id:
            out.by_id[e.event_id] = e
        if e.type == "ReconciliationCompleted" and (account is None or e.payload.get("account") == account):
            for eid in e.payload.get("corrective_event_ids") or ():
                out.reconciled[str(eid)] = e.payload["reconciliation_id"]
    for e in window + later:
        rid = e.payload.get("reconciliation_id")
        if rid and e.type != "ReconciliationCompleted" and e.event_id:
            out.reconciled.setdefault(e.event_id, rid)

    def mine(e: LoggedEvent) -> bool:
        owner = e.payload.get("account")
        return account is None or owner is None or owner == account

    kept = window + [e for e in later if e.position not in seen and mine(e)
                     and (e.type in INCIDENT_TYPES or (e.event_id or "") in out.reconciled)]
    out.events = sorted(kept, key=lambda e: e.position)
    crashes: dict[int, Crash] = {}
    engines: dict[str, list[LoggedEvent]] = {}
    _LIFECYCLE = ("EngineStarted", "EngineStopped", "RecoveryCompleted")
    for e in out.events:
        t = e.type
        if t in ("EngineStarted", "RecoveryCompleted"):
            engine = e.payload["engine_id"]
            if engine not in engines:
                engines[engine] = _stream_events(store, engine_stream_id(engine))
            # Starts, stops and recoveries only: gates, leases and shutdown reports sit between them.
            before = [x for x in engines[engine] if x.position < e.position and x.type in _LIFECYCLE]
            previous = before[-1] if before else None
            if previous is not None and previous.type == "EngineStarted":
                if t == "EngineStarted":
                    how = f"the engine started again at position {e.position}"
                elif e.payload.get("crashed"):
                    how = f"recovery ran at position {e.position}"
                else:
                    how = ""
                if how:
                    crash = crashes.setdefault(previous.position, Crash(engine, previous))
                    crash.detected_by.append(how)
        if t == "RecoveryCompleted":
            out.recoveries.append(e)
        elif t == "ReconciliationCompleted":
            out.reconciliations.append(e)
        elif t == "IntentRejectedByRisk":
            out.refusals.append(e)
        elif t == "DiscrepancyRecorded":
            out.discrepancies.append(e)
        elif t in ("TradingBlocked", "DiscrepancyAcknowledged", "TradingResumed"):
            out.controls.append(e)
        elif t in VENUE_FACT_TYPES:
            out.venue_facts.append(e)
    out.crashes = [crashes[p] for p in sorted(crashes)]
    return out


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
    """The report's plots of ``s`` over ``start``..``end`` as base64 PNGs: ``position``, ``pnl`` and
    ``density``."""
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


MAX_PRICE_PANELS = 4


@dataclass
class PricePoint:
    """A fill or an intent placed on the price chart (venue clock)."""

    at: datetime
    symbol: str
    side: str
    price: Decimal
    label: str
    kind: str  # "fill", "reconciled fill", "corrected fill", "intent", "refused intent"


def _orders(store: Store, events: list[LoggedEvent]) -> dict[str, dict[str, Any]]:
    """For every order stream among ``events``: its intent's payload (read from the stream when
    the intent is outside ``events``)."""
    out: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.type in ("OrderIntentRecorded", "OrderImported"):
            out[e.stream_id] = e.payload
    for e in events:
        if e.kind == "order" and e.stream_id not in out:
            first = _stream_events(store, e.stream_id)[:1]
            out[e.stream_id] = first[0].payload if first else {}
    return out


def price_points(store: Store, tl: Timeline, inc: Incident) -> list[PricePoint]:
    """The window's fills and priced intents (limit, else reference price), on the occurred axis;
    a fill a reconciliation appended is a ``"reconciled fill"``."""
    events = [e for e in tl.events if e.log == "trading"]
    orders = _orders(store, events)
    refused = {e.stream_id for e in events if e.type == "IntentRejectedByRisk"}
    out = []
    for e in events:
        d = e.payload
        intent = orders.get(e.stream_id, {})
        symbol, side = intent.get("symbol"), intent.get("side")
        if not symbol or not side:
            continue
        who = d.get("client_order_id") or ""
        if e.type == "OrderFilled":
            kind = "reconciled fill" if (e.event_id or "") in inc.reconciled else "fill"
            out.append(PricePoint(e.time("occurred"), symbol, side, Decimal(str(d["price"])),
                                  f"{who} {_num(d['qty'])}", kind))
        elif e.type == "FillCorrected" and Decimal(str(d["qty"])):  # the venue's new price (a bust has none)
            out.append(PricePoint(e.time("occurred"), symbol, side, Decimal(str(d["price"])),
                                  f"{who} {_num(d['qty'])} (corrected)", "corrected fill"))
        elif e.type == "OrderIntentRecorded":
            price = d.get("limit_price") or d.get("reference_price")
            if price:
                kind = "refused intent" if e.stream_id in refused else "intent"
                out.append(PricePoint(e.time("occurred"), symbol, side, Decimal(str(price)), who, kind))
    return out


def _num(value: Any) -> str:
    return f"{Decimal(str(value)).normalize():f}"


def price_chart(store: Store, tl: Timeline, inc: Incident) -> str | None:
    """A base64 PNG: per symbol (at most ``MAX_PRICE_PANELS``, most traded first), the recorded bars
    as candles with the window's fills and intents marked, on the venue's clock (occurred axis,
    whatever the report's axis). On the occurred axis it spans the window; on the recorded axis
    it spans the fills and intents (a minute either side). None when there is nothing to draw."""
    from .log import bar_close

    points = price_points(store, tl, inc)
    bars_in_window = [e for e in tl.events if e.log == "market"]
    if tl.axis == "occurred":
        lo, hi = tl.start, tl.end
    else:
        times = [p.at for p in points] or [bar_close(e.payload) for e in bars_in_window]
        if not times:
            return None
        lo, hi = min(times) - timedelta(minutes=1), max(times) + timedelta(minutes=1)
    counts: dict[str, int] = {}
    for p in points:
        counts[p.symbol] = counts.get(p.symbol, 0) + 1
    for e in bars_in_window:
        counts.setdefault(e.payload["symbol"], 0)
    symbols = sorted(counts, key=lambda k: (-counts[k], k))[:MAX_PRICE_PANELS]
    if not symbols:
        return None
    bars: dict[str, list[LoggedEvent]] = {k: [] for k in symbols}
    for e in window_events(store, lo, hi, axis="occurred", log="market"):
        sym = e.payload.get("symbol")
        if sym in bars:
            bars[sym].append(e)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(len(symbols), 1, figsize=(10, 2.9 * len(symbols) + 0.4), sharex=True, squeeze=False)
    style = {
        ("fill", "buy"): dict(marker="^", color="#16a34a", edgecolors="#14532d", s=80, label="fill (buy)"),
        ("fill", "sell"): dict(marker="v", color="#dc2626", edgecolors="#7f1d1d", s=80, label="fill (sell)"),
        ("reconciled fill", "buy"): dict(marker="^", color="#f59e0b", edgecolors="#111827", s=130, linewidths=1.8,
                                         label="fill recorded by reconciliation"),
        ("reconciled fill", "sell"): dict(marker="v", color="#f59e0b", edgecolors="#111827", s=130, linewidths=1.8,
                                          label="fill recorded by reconciliation"),
        ("corrected fill", "buy"): dict(marker="^", facecolors="none", edgecolors="#0891b2", s=110, linewidths=1.8,
                                        label="fill price corrected by the venue"),
        ("corrected fill", "sell"): dict(marker="v", facecolors="none", edgecolors="#0891b2", s=110, linewidths=1.8,
                                         label="fill price corrected by the venue"),
        ("intent", "buy"): dict(marker="o", facecolors="none", edgecolors="#4b5563", s=55,
                                label="intent at its limit / reference price"),
        ("intent", "sell"): dict(marker="o", facecolors="none", edgecolors="#4b5563", s=55,
                                 label="intent at its limit / reference price"),
        ("refused intent", "buy"): dict(marker="x", color="#7c3aed", s=70, label="intent refused by risk"),
        ("refused intent", "sell"): dict(marker="x", color="#7c3aed", s=70, label="intent refused by risk"),
    }
    for ax, sym in zip(axes[:, 0], symbols):
        ax.set_title(f"{sym}: recorded bars, fills and intents (venue clock)", fontsize=11)
        for b in bars[sym]:
            d = b.payload
            o, h, low, c = (float(d[k]) for k in ("open", "high", "low", "close"))
            start = datetime.fromisoformat(str(d["start"]).replace("Z", "+00:00"))
            close_at = bar_close(d)
            width = (close_at - start) * 0.7
            mid = start + (close_at - start) / 2
            color = "#16a34a" if c >= o else "#dc2626"
            ax.vlines(mid, low, h, color="#4b5563", linewidth=1)
            x0 = mdates.date2num(mid - width / 2)
            ax.add_patch(Rectangle((x0, min(o, c)), mdates.date2num(mid + width / 2) - x0, max(abs(c - o), 1e-9),
                                   facecolor=color, edgecolor="#374151", alpha=0.55, label="bar (OHLC)"))
        mine = [p for p in points if p.symbol == sym]
        for key, kw in style.items():
            group = [p for p in mine if (p.kind, p.side) == key]
            if group:
                ax.scatter([p.at for p in group], [float(p.price) for p in group], zorder=3, **kw)
        labelled = [p for p in mine if p.kind != "intent"]
        for i, p in enumerate(sorted(labelled, key=lambda p: p.at)):
            ax.annotate(p.label, (mdates.date2num(p.at), float(p.price)), textcoords="offset points",
                        xytext=(6, 6 if i % 2 == 0 else -12), fontsize=7, color="#374151")
        if not bars[sym]:
            ax.text(0.01, 0.92, "no bars recorded for this symbol in the span", transform=ax.transAxes,
                    fontsize=8, color="#6b7280")
        ax.autoscale_view()
        ax.set_xlim(lo, hi)
        ax.grid(True, alpha=0.3)
        ax.set_ylabel("price")
        _dedupe_legend(ax)
    axes[-1, 0].xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    fig.autofmt_xdate()
    fig.tight_layout()
    return _png(fig)


# ----------------------------------------------------------------------------------- html

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#111827;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e5e7eb}
.meta{color:#4b5563;font-size:13px} img{max-width:100%;border:1px solid #e5e7eb;margin:6px 0}
table{border-collapse:collapse;font-size:12px;margin:6px 0} th,td{border:1px solid #e5e7eb;padding:3px 6px;text-align:left}
th{background:#f3f4f6} tr.market td{color:#6b7280} tr.mark td{background:#fef3c7;font-weight:600}
.cards{display:flex;gap:12px;flex-wrap:wrap} .card{border:1px solid #e5e7eb;border-radius:6px;padding:8px 12px}
.card b{display:block;font-size:18px}
tr.recon td{background:#ffedd5} .tag{background:#f59e0b;color:#111827;border-radius:3px;padding:0 4px;font-size:11px}
.incident{border:2px solid #f59e0b;border-radius:6px;padding:4px 14px 10px;margin:14px 0;background:#fffbeb}
.incident.quiet{border-color:#e5e7eb;background:#f9fafb} .incident h3{font-size:14px;margin:12px 0 4px}
.incident ul{margin:4px 0;padding-left:20px;font-size:13px} .incident p{font-size:13px;margin:6px 0}
.incident p.headline{font-size:15px} .ok{color:#15803d;font-weight:600}
.bad{color:#b91c1c;font-weight:600} .none{color:#6b7280;font-style:italic;font-size:13px;margin:4px 0}
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
    if not view["positions"] and not view["accounts"]:
        return '<p class="none">none: no positions, no account with risk state yet</p>'
    if not view["positions"]:
        pos = '<p class="none">Positions: none</p>'
    else:
        pos = _table(["account", "venue", "symbol", "qty", "avg cost", "realised", "unrealised", "fees"],
                     [[p["account"], p["venue"], p["symbol"], p["qty"], round(p["avg_cost"], 4), p["realized_pnl"],
                       p["unrealized_pnl"], p["fees"]] for p in view["positions"]])
    if not view["accounts"]:
        return pos + '<p class="none">Accounts: none</p>'
    risk = _table(["account", "kill switch", "breaker", "blocked", "ramp", "open orders", "discrepancies"],
                  [[n, a["kill_switch_reason"] if a["kill_switch"] else "off",
                    a["breaker_reason"] if a["breaker_active"] else "ok",
                    a["blocked_reason"] if a["blocked"] else "no", f"{a['ramp_pct']}%", a["open_orders"],
                    a["discrepancies"]] for n, a in view["accounts"].items()])
    return pos + risk


def filters_text(filters: dict[str, Any]) -> str:
    """The timeline's filters in words, e.g. ``account demo-acct; symbols AAPL, MSFT (market bars
    shown)`` or ``none (market bars shown)``."""
    parts = []
    if filters.get("account"):
        parts.append(f"account {filters['account']}")
    if filters.get("symbol"):
        parts.append(f"symbols {', '.join(filters['symbol'])}")
    if filters.get("strategy"):
        parts.append(f"strategy {filters['strategy']}")
    if filters.get("types"):
        parts.append(f"event types {', '.join(filters['types'])}")
    bars = "market bars shown" if filters.get("market") else "no market bars"
    return f"{'; '.join(parts) or 'none'} ({bars})"


def _when(e: LoggedEvent) -> str:
    occurred = e.payload.get("occurred_at")
    return f"position {e.position} (recorded {iso(e.recorded_at)}" + (f"; occurred {occurred})" if occurred else ")")


def _n_of(count: Any, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _li(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def incident_html(inc: Incident) -> str:
    """The summary at the top of the report: a headline, then crashes, recovery (steps and
    verdict), reconciliation (discrepancies and the events it appended), discrepancies and
    blocks, and risk refusals — each section saying "none" when there is nothing to show."""
    head = []
    if inc.crashes:
        head.append(f"{len(inc.crashes)} crash{'es' if len(inc.crashes) > 1 else ''} detected")
    for r in inc.recoveries:
        head.append(f"recovery {'ready' if r.payload.get('ready') else 'NOT ready'}")
    for r in inc.reconciliations:
        d = r.payload
        head.append(f"reconciliation {d.get('status')}: "
                    f"{_n_of(len(d.get('discrepancies') or []), 'discrepancy', 'discrepancies')}, "
                    f"{_n_of(len(d.get('corrective_event_ids') or []), 'corrective event', 'corrective events')}")
    if inc.discrepancies:
        head.append(_n_of(len(inc.discrepancies), "discrepancy recorded", "discrepancies recorded"))
    if inc.refusals:
        head.append(_n_of(len(inc.refusals), "intent refused by risk", "intents refused by risk"))
    headline = "; ".join(head) if head else "no crash, recovery, reconciliation, discrepancy or risk refusal"
    out = [f'<div class="incident{" quiet" if inc.empty else ""}"><h2>Incident summary</h2>',
           f'<p class="headline"><b>{_e(headline[0].upper() + headline[1:])}.</b></p>',
           '<p class="meta">Taken from the window and from the log after it up to the recovery that '
           "followed (recovery and reconciliation are logged after the crash, often with times outside "
           "the window).</p>"]

    out.append("<h3>Crashes</h3>")
    if inc.crashes:
        out.append(_li([f"engine <b>{_e(c.engine_id)}</b>: the run that started at {_e(_when(c.started))} "
                        f"never recorded a clean stop; detected when {_e('; '.join(c.detected_by))}"
                        for c in inc.crashes]))
    else:
        out.append('<p class="none">none</p>')

    out.append("<h3>Recovery</h3>")
    if inc.recoveries:
        for r in inc.recoveries:
            d = r.payload
            verdict = ('<span class="ok">ready</span>' if d.get("ready") else '<span class="bad">NOT ready</span>')
            out.append(f"<p>engine <b>{_e(d.get('engine_id'))}</b> at {_e(_when(r))}: {verdict}; "
                       f"{'after a crash' if d.get('crashed') else 'after a clean stop'}"
                       f"{', strict' if d.get('strict') else ''}; "
                       + (f"checkpoint at position {_e(d['checkpoint_position'])}"
                          if d.get("checkpoint_position") is not None else "no checkpoint")
                       + f", {_e(_n_of(d.get('replayed'), 'event', 'events'))} replayed, "
                       f"{_e(_n_of(d.get('discrepancies'), 'discrepancy', 'discrepancies'))}, "
                       f"{_e(_n_of(d.get('corrective_events'), 'corrective event', 'corrective events'))}</p>")
            steps = d.get("steps") or []
            if steps:
                out.append(_table(["step", "status", "what", "seconds"],
                                  [[x.get("name"), x.get("status"), x.get("detail"),
                                    f"{float(x.get('seconds') or 0):.3f}"] for x in steps]))
    else:
        out.append('<p class="none">none</p>')

    out.append("<h3>Reconciliation</h3>")
    if inc.reconciliations:
        for r in inc.reconciliations:
            d = r.payload
            counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted((d.get("counts") or {}).items()))
            out.append(f"<p>account <b>{_e(d.get('account'))}</b> against {_e(d.get('broker'))} at venue "
                       f"{_e(d.get('venue'))}, at {_e(_when(r))}: <b>{_e(d.get('status'))}</b>"
                       f"{'; ' + _e(counts) if counts else ''}</p>")
            found = d.get("discrepancies") or []
            if found:
                out.append(_table(["discrepancy", "order", "symbol", "detail", "resolution"],
                                  [[x.get("kind"), x.get("client_order_id"), x.get("symbol"), x.get("detail"),
                                    x.get("resolution")] for x in found if isinstance(x, dict)]))
            appended = []
            for eid in d.get("corrective_event_ids") or ():
                e = inc.by_id.get(str(eid))
                appended.append([e.position, e.type, describe(e)] if e is not None else ["-", "(not read)", str(eid)])
            if appended:
                out.append("<p>Events it appended:</p>" + _table(["pos", "type", "what"], appended))
            for err in d.get("errors") or ():
                out.append(f'<p class="bad">error: {_e(err)}</p>')
    else:
        out.append('<p class="none">none</p>')

    out.append("<h3>Discrepancies, blocks and resumptions</h3>")
    if inc.discrepancies or inc.controls:
        out.append(_table(["pos", "type", "what"],
                          [[e.position, e.type, describe(e)] for e in sorted(inc.discrepancies + inc.controls,
                                                                              key=lambda e: e.position)]))
    else:
        out.append('<p class="none">none</p>')

    out.append("<h3>Venue corrections, refused amendments, settlements and corporate actions</h3>")
    if inc.venue_facts:
        out.append(_table(["pos", "type", "what"], [[e.position, e.type, describe(e)] for e in inc.venue_facts]))
    else:
        out.append('<p class="none">none</p>')

    out.append("<h3>Risk refusals</h3>")
    if inc.refusals:
        out.append(_table(["pos", "order", "reasons", "detail"],
                          [[e.position, f"{e.payload.get('account')}/{e.payload.get('client_order_id')}",
                            ", ".join(e.payload.get("reasons") or []), e.payload.get("detail") or "-"]
                           for e in inc.refusals]))
    else:
        out.append('<p class="none">none</p>')
    out.append("</div>")
    return "\n".join(out)


def render_html(store: Store, tl: Timeline, s: Series, first: TradingState, last: TradingState,
                images: dict[str, str], limit: int = 5000, inc: Incident | None = None) -> str:
    """The report's HTML document. ``images`` maps "price" (optional), "position", "pnl" and
    "density" to base64 PNGs; ``inc`` (None: read with :func:`incident`) is the summary shown at
    the top, and marks in the timeline the events a reconciliation appended."""
    if inc is None:
        inc = incident(store, tl, tl.filters.get("account"))
    v0 = state_view(first, tl.start, axis=tl.axis)
    v1 = state_view(last, tl.end, axis=tl.axis)
    marks_rows = [[iso(t), label, acct] for t, label, _c, acct in s.marks]
    r0, r1 = s.equity[0] if s.equity else ZERO, s.equity[-1] if s.equity else ZERO
    trading = sum(1 for e in tl.events if e.log == "trading")
    cards = "".join(f'<div class="card">{_e(k)}<b>{_e(v)}</b></div>' for k, v in (
        ("events in window", trading), ("bars", len(tl.events) - trading),
        ("equity change", r1 - r0), ("equity at end", r1), ("breaker / kill / block changes", len(s.marks)),
        ("crashes", len(inc.crashes)), ("risk refusals", len(inc.refusals)),
    ))
    rows, classes = [], []
    for e in tl.events[:limit]:
        what = _e(describe(e))
        cls = "market" if e.log == "market" else ("mark" if e.type in MARKED else "")
        rid = inc.reconciled.get(e.event_id or "")
        if rid is not None:
            tag = "reconciled fill" if e.type == "OrderFilled" else "appended by reconciliation"
            what += f' <span class="tag">{_e(tag)} {_e(rid[:8])}</span>'
            cls = "recon"
        rows.append([_e(e.position if e.log == "trading" else f"m{e.position}"), _e(iso(e.time(tl.axis))),
                     _e(e.stream_id), _e(e.type), what])
        classes.append(cls)
    body = "".join((f'<tr class="{c}">' if c else "<tr>") + "".join(f"<td>{v}</td>" for v in r) + "</tr>"
                   for r, c in zip(rows, classes))
    head = "".join(f"<th>{h}</th>" for h in ("pos", "time", "stream", "type", "what"))
    timeline_table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    more = f"<p class=meta>{len(tl.events) - limit} more events not shown.</p>" if len(tl.events) > limit else ""
    titles = (("price", "Prices, fills and intents"), ("position", "Position"), ("pnl", "P&L and equity"),
              ("density", "Event density"))
    img = "".join(f'<h2>{_e(title)}</h2><img alt="{_e(title)}" src="data:image/png;base64,{images[key]}">'
                  for key, title in titles if images.get(key))
    order_note = (" Times on this axis are the venue's clocks: rows are in log order, so their times can go "
                  "back and forth." if tl.axis == "occurred" else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Post-mortem {_e(iso(tl.around))}</title>
<style>{_CSS}</style></head><body>
<h1>Post-mortem around {_e(iso(tl.around))}</h1>
<p class="meta">Window {_e(iso(tl.start))} .. {_e(iso(tl.end))} on the {_e(tl.axis)} time axis; log {_e(store.display_url)};
positions {_e(v0['position'])} .. {_e(v1['position'])}. Filters: {_e(filters_text(tl.filters))}.</p>
<div class="cards">{cards}</div>
{incident_html(inc)}
{img}
<h2>Breaker, kill-switch and block changes</h2>
{_table(["time", "change", "account"], marks_rows) if marks_rows else '<p class="none">none in this window</p>'}
<h2>State at the start of the window</h2>{_state_html(v0)}
<h2>State at the end of the window</h2>{_state_html(v1)}
<h2>Timeline ({len(tl.events)} events)</h2>
<p class="meta">Log order; bars interleaved by time.{order_note}</p>
{timeline_table}{more}
</body></html>
"""


def write_report(store: Store, around: datetime | str, window: str | timedelta, path: str, *,
                 axis: Axis = "recorded", account: str | None = None, market: bool = True,
                 progress: Callable[[int, int], None] | None = None) -> str:
    """Write the post-mortem HTML for [around - window, around + window] to ``path``; returns it.

    Bad input (an unknown axis, a time outside the log on the recorded axis, a path that cannot be
    written) raises :class:`ReplayError`; the log is only read."""
    check_axis(axis)
    t, start, end = window_bounds(around, window)
    if axis == "recorded":
        check_within(t, bounds(store), "--around")
    tl = timeline(store, t, window, axis=axis, market=market, account=account, progress=progress)
    s, first, last = series(store, start, end, axis=axis, account=account)
    inc = incident(store, tl, account)
    images = plots(s, tl, start, end)
    price = price_chart(store, tl, inc)
    if price is not None:
        images["price"] = price
    document = render_html(store, tl, s, first, last, images, inc=inc)
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(document)
    except OSError as e:
        raise ReplayError(f"cannot write the report to {path!r}: {e.strerror or e}") from None
    return path


__all__ = ["write_report", "series", "plots", "price_chart", "incident", "Incident", "render_html", "filters_text",
           "ReplayError", "LoggedEvent"]
