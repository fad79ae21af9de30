"""Time travel: the trading state as it was at a log position or an instant, and diffs of it.

``state_at_position`` starts from the newest valid checkpoint at or before the position
(``tradestate.loading.state_at``) and folds the tail, so it is fast anywhere in a long
log. ``state_at_time`` maps the instant to a position on the ``recorded`` axis (the last
position whose log time — the latest ``recorded_at`` up to it — is at or before the instant; see
``replay.log``) or folds by ``occurred_at``. Where the store's clock stepped back, the answer
names the runs of later positions stamped at or before the instant that it leaves out
(``StateAt.stepped_back``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..adapters.store import Store, gc_paused
from ..loading import state_at
from ..domain.state import VOID_TYPE, OrderState, TradingState
from .log import (Axis, LoggedEvent, ReplayError, SteppedBack, bounds, check_axis, check_within, iso, iter_events,
                  log_times, parse_time, position_at)


@dataclass
class StateAt:
    """The state at one point of the log, with how that point was chosen."""

    state: TradingState
    position: int
    at: datetime  # the instant asked for, or the log's time at the position
    axis: Axis
    included: set[int] | None = None  # occurred axis: the positions folded (None: the whole prefix)
    # recorded axis: runs after ``position`` stamped at or before ``at`` by a store clock that had
    # stepped back (left out: the log's time had passed ``at`` before them)
    stepped_back: list[SteppedBack] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        """The state as JSON-ready values (``state_view``) at this point, with ``stepped_back``
        (the runs above, as JSON) when there are any."""
        view = state_view(self.state, self.at, position=self.position, axis=self.axis)
        if self.stepped_back:
            view["stepped_back"] = [r.to_json() for r in self.stepped_back]
        return view


def state_at_position(store: Store, position: int, *, exchange_tz: str = "America/New_York") -> StateAt:
    """The state after the event at ``position`` (from the nearest checkpoint). Raises ``ReplayError``
    for a position below 1 or past the head, or an empty log."""
    b = bounds(store)
    if not isinstance(position, int) or position < 1:
        raise ReplayError(f"position must be a whole number >= 1, got {position!r}")
    if position > b.last:
        raise ReplayError(f"position {position} is after the log ends (head is {b.last})")
    state = state_at(store, position, exchange_tz=exchange_tz)
    return StateAt(state, position, log_times(store).time_at(position), "recorded")


def state_at_time(store: Store, at: datetime | str, *, axis: Axis = "recorded",
                  exchange_tz: str = "America/New_York",
                  progress: Callable[[int, int], None] | None = None) -> StateAt:
    """The state at ``at``: on ``recorded``, the log up to the last position whose log time (the
    latest ``recorded_at`` up to it) is at or before ``at`` — it holds no event stamped after
    ``at``; ``stepped_back`` names the later runs stamped at or before ``at`` after the store's
    clock stepped back, which it leaves out. On ``occurred``, the causal fold described in
    ``replay.log`` (a full scan, reported through ``progress``). Raises ``ReplayError`` for a bad
    time or axis, a time outside the log (``recorded``: before its first stamp or after its
    latest), or an empty log."""
    at = parse_time(at, "--at")
    check_axis(axis)
    b = bounds(store)
    if axis == "recorded":
        check_within(at, b)
        position = position_at(store, at, b=b, check=False)
        state = state_at(store, position, exchange_tz=exchange_tz) if position else TradingState(exchange_tz)
        return StateAt(state, position, at, axis, stepped_back=log_times(store).covering(at, position))
    return _fold_occurred(store, at, b.last, exchange_tz, progress)


def _fold_occurred(store: Store, at: datetime, head: int, exchange_tz: str,
                   progress: Callable[[int, int], None] | None) -> StateAt:
    state = TradingState(exchange_tz)
    excluded: set[str] = set()
    included: set[int] = set()
    earliest: datetime | None = None
    latest: datetime | None = None
    with gc_paused():
        for row in store.trading.iter_rows(0, head):
            pos, stream, version, type_name, data, recorded_at = row
            if progress is not None and pos % 4096 == 0:
                progress(pos, head)
            if type_name == VOID_TYPE:
                continue
            payload = orjson.loads(data)
            text = payload.get("occurred_at")
            when = parse_time(text) if text else (recorded_at if recorded_at.tzinfo else recorded_at.replace(tzinfo=at.tzinfo))
            earliest = when if earliest is None or when < earliest else earliest
            latest = when if latest is None or when > latest else latest
            if stream in excluded:
                continue
            if when > at:
                excluded.add(stream)
                continue
            state.apply(pos, stream, version, type_name, payload, recorded_at)
            included.add(pos)
    if earliest is None or at < earliest:
        raise ReplayError(f"--at {iso(at)} is before the log starts (earliest occurred_at {iso(earliest)})")
    if latest is not None and at > latest:
        raise ReplayError(f"--at {iso(at)} is after the log ends (latest occurred_at {iso(latest)})")
    return StateAt(state, state.position, at, "occurred", included)


# --------------------------------------------------------------------------------- views


def _order_view(o: OrderState) -> dict[str, Any]:
    d = o.as_dict()
    d["intent_position"] = o.positions.get("intent")
    return d


def state_view(state: TradingState, at: datetime, *, position: int | None = None, axis: str = "recorded") -> dict[str, Any]:
    """A plain, deterministic picture: positions, open orders, risk per account (JSON-able)."""
    day = state.trading_day(at)
    accounts = {}
    for name, a in sorted(state.accounts.items()):
        stats = a.daily.get(day)
        accounts[name] = {
            "kill_switch": a.kill_switch,
            "kill_switch_reason": a.kill_switch_reason,
            "breaker_tripped": a.breaker_tripped,
            "breaker_active": a.breaker_active(at),
            "breaker_reason": a.breaker_reason,
            "breaker_until": a.breaker_until,
            "ramp_pct": a.ramp_pct,
            "blocked": a.blocked,
            "blocked_reason": a.blocked_reason,
            "limits": dict(sorted(a.limits.items())),
            "symbol_position_limits": dict(sorted(a.symbol_position_limits.items())),
            "open_orders": len(a.open_orders),
            "discrepancies": a.discrepancies,
            "cash": dict(sorted(a.cash.items())),
            "trading_day": day,
            "trades_today": stats.trades if stats else 0,
            "fills_today": stats.fills if stats else 0,
            "net_pnl_today": stats.net_pnl if stats else Decimal(0),
            "breaches_today": sorted(stats.breaches) if stats else [],
            # what a log without instruments, venues' balances or late fees never had: only when there
            **({"cash_by_venue": {v: dict(sorted(c.items())) for v, c in sorted(a.venue_cash.items())}}
               if a.venue_cash else {}),
            **({"fees_pending": sorted(a.fees_pending)} if a.fees_pending else {}),
        }
    open_orders = sorted((o for a in state.accounts.values() for o in a.open_orders.values()),
                         key=lambda o: (o.account, o.positions.get("intent", 0), o.stream_id))
    return {
        "position": position if position is not None else state.position,
        "at": iso(at),
        "axis": axis,
        "positions": [p.as_dict() for _, p in sorted(state.positions.items())],
        "open_orders": [_order_view(o) for o in open_orders],
        "accounts": accounts,
        **({"instruments": {s: spec.as_dict() for s, spec in sorted(state.instruments.items())}}
           if state.instruments else {}),
        **({"fx_rates": {f"{b}/{q}": rate for (b, q), rate in sorted(state.fx_rates.items())}}
           if state.fx_rates else {}),
    }


def _f(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, Decimal):
        return f"{value.normalize():f}" if value == value.to_integral_value() or abs(value.as_tuple().exponent) <= 6 \
            else f"{round(value, 6).normalize():f}"
    if isinstance(value, datetime):
        return iso(value) or "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_f(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(_f(v) for v in value) or "-"
    return str(value)


def render_state(view: dict[str, Any], title: str | None = None) -> Group:
    """Rich tables of a ``state_view``."""
    head = Text(title or f"State at {view['at']} ({view['axis']} axis), log position {view['position']}", style="bold")
    positions = Table(title="Positions", title_justify="left")
    for c in ("account", "venue", "symbol", "qty", "avg cost", "realised P&L", "unrealised P&L", "fees", "last"):
        positions.add_column(c, justify="left" if c in ("account", "venue", "symbol") else "right")
    for p in view["positions"]:
        positions.add_row(p["account"], p["venue"], p["symbol"], _f(p["qty"]), _f(round(p["avg_cost"], 4)),
                          _f(p["realized_pnl"]), _f(p["unrealized_pnl"]), _f(p["fees"]), _f(p["last_price"]))
    orders = Table(title="Open orders", title_justify="left")
    for c in ("account", "client order id", "symbol", "side", "qty", "filled", "limit", "status", "venue id"):
        orders.add_column(c)
    for o in view["open_orders"]:
        orders.add_row(o["account"], o["client_order_id"], o["symbol"], o["side"], _f(o["qty"]), _f(o["filled_qty"]),
                       _f(o["limit_price"]), o["status"] + (" (cancel requested)" if o["cancel_requested"] else "")
                       + (f" (amendment {o['replace_pending']} waits for the venue)" if o.get("replace_pending") else "")
                       + (f" (fee to come: {', '.join(o['fees_pending'])})" if o.get("fees_pending") else ""),
                       _f(o["venue_order_id"]))
    risk = Table(title="Risk state", title_justify="left")
    for c in ("account", "kill switch", "circuit breaker", "blocked", "ramp", "open orders", "trades today",
              "net P&L today", "discrepancies", "limits"):
        risk.add_column(c)
    for name, a in view["accounts"].items():
        limits = ", ".join(f"{k}={_f(v)}" for k, v in a["limits"].items())
        risk.add_row(
            name,
            f"[bold red]ENGAGED[/]: {a['kill_switch_reason']}" if a["kill_switch"] else "off",
            f"[bold yellow]TRIPPED[/]: {a['breaker_reason']}" if a["breaker_active"] else "ok",
            f"[bold red]yes[/]: {a['blocked_reason']}" if a["blocked"] else "no",
            f"{a['ramp_pct']}%", str(a["open_orders"]), str(a["trades_today"]), _f(a["net_pnl_today"]),
            str(a["discrepancies"]), limits or "-",
        )
    notes = [Text(f"Note: the store's clock stepped back: positions {r['first']}..{r['last']} are stamped "
                  f"{r['earliest']} .. {r['latest']}, after the log's time had reached {r['log_time']}; "
                  "those stamped at or before this instant are not in this state (replay by --position "
                  "to see them)", style="yellow") for r in view.get("stepped_back", [])]
    extra = []
    cash = [(name, venue, currency, balance) for name, a in view["accounts"].items()
            for venue, books in a.get("cash_by_venue", {}).items() for currency, balance in books.items()]
    if cash:
        table = Table(title="Cash by venue", title_justify="left")
        for c in ("account", "venue", "currency", "balance"):
            table.add_column(c)
        for name, venue, currency, balance in cash:
            table.add_row(name, venue, currency, _f(balance))
        extra.append(table)
    if view.get("instruments") or view.get("fx_rates"):
        extra.append(Text("Instruments: " + (", ".join(
            f"{s} ({i['asset_class']} x{_f(i['multiplier'])} {i['quote_currency']})"
            for s, i in view.get("instruments", {}).items()) or "-")
            + "; FX rates: " + (", ".join(f"{k} {_f(v)}" for k, v in view.get("fx_rates", {}).items()) or "-")))
    return Group(head, *notes, positions, orders, risk, *extra)


# ---------------------------------------------------------------------------------- diff


def _changed(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, list[Any]]:
    keys = sorted(set(before or {}) | set(after or {}))
    out = {}
    for k in keys:
        b = (before or {}).get(k)
        a = (after or {}).get(k)
        if b != a:
            out[k] = [b, a]
    return out


def diff(store: Store, t1: datetime | str, t2: datetime | str, *, axis: Axis = "recorded",
         exchange_tz: str = "America/New_York") -> dict[str, Any]:
    """What changed between two instants (positions, orders, risk) and which events changed it."""
    t1 = parse_time(t1, "--from")
    t2 = parse_time(t2, "--to")
    if t2 < t1:
        raise ReplayError(f"--to {iso(t2)} is before --from {iso(t1)}")
    s1 = state_at_time(store, t1, axis=axis, exchange_tz=exchange_tz)
    s2 = state_at_time(store, t2, axis=axis, exchange_tz=exchange_tz)
    return diff_states(store, s1, s2)


def diff_positions(store: Store, p1: int, p2: int, *, exchange_tz: str = "America/New_York") -> dict[str, Any]:
    """``diff_states`` between the states after positions ``p1`` and ``p2``; ``ReplayError`` if ``p2 <
    p1``."""
    if p2 < p1:
        raise ReplayError(f"position {p2} is before {p1}")
    return diff_states(store, state_at_position(store, p1, exchange_tz=exchange_tz),
                       state_at_position(store, p2, exchange_tz=exchange_tz))


def _stepped_back(s: StateAt) -> dict[str, Any]:
    return {"stepped_back": [r.to_json() for r in s.stepped_back]} if s.stepped_back else {}


def diff_states(store: Store, s1: StateAt, s2: StateAt) -> dict[str, Any]:
    """What changed from ``s1`` to ``s2``: positions, orders and accounts that differ, each with the
    positions of the events that changed it, and every event in between."""
    if s1.included is None:
        events = list(iter_events(store, s1.position, s2.position))
    else:
        wanted = (s2.included or set()) - s1.included
        events = [e for e in iter_events(store, 0, s2.position) if e.position in wanted]
    v1, v2 = s1.view(), s2.view()
    # which events touched what
    by_order: dict[str, list[int]] = {}
    by_account: dict[str, list[int]] = {}
    by_position: dict[str, list[int]] = {}
    reference: list[int] = []  # instruments, FX rates, corporate actions: no account's own
    for e in events:
        d = e.payload
        if e.kind == "order":
            by_order.setdefault(e.stream_id, []).append(e.position)
            if e.type in ("OrderFilled", "FillCorrected", "FeeCharged"):
                o = s2.state.orders.get(e.stream_id)
                if o is not None:
                    by_position.setdefault("|".join(o.position_key), []).append(e.position)
        elif e.kind == "account":
            by_account.setdefault(d.get("account", e.stream_id[8:]), []).append(e.position)
            if e.type in ("PositionCorrected", "FeeCharged", "OptionSettled", "VariationMarginSettled") \
                    and d.get("symbol"):
                by_position.setdefault(f"{d['account']}|{d['venue']}|{d['symbol']}", []).append(e.position)
            if e.type == "OptionSettled":  # the underlying's leg moves too
                spec = s2.state.instruments.get(d["symbol"])
                if spec is not None and spec.underlying:
                    by_position.setdefault(f"{d['account']}|{d['venue']}|{spec.underlying}", []).append(e.position)
        elif e.type in ("InstrumentDefined", "FxRateRecorded", "CorporateActionRecorded"):
            reference.append(e.position)
            if e.type != "FxRateRecorded":  # every position in the symbol (and a new symbol's)
                for key in s2.state.positions:
                    if key[2] in (d["symbol"], d.get("new_symbol")):
                        by_position.setdefault("|".join(key), []).append(e.position)
    pos1 = {f"{p['account']}|{p['venue']}|{p['symbol']}": p for p in v1["positions"]}
    pos2 = {f"{p['account']}|{p['venue']}|{p['symbol']}": p for p in v2["positions"]}
    positions = []
    for key in sorted(set(pos1) | set(pos2)):
        changes = _changed(pos1.get(key), pos2.get(key))
        if changes:
            positions.append({"key": key, "changes": changes, "events": by_order_positions(by_position, key)})
    orders = []
    for sid, positions_of in sorted(by_order.items(), key=lambda kv: kv[1][0]):
        after = s2.state.orders.get(sid)
        before = s1.state.orders.get(sid)
        b = _order_brief(before)
        a = _order_brief(after)
        orders.append({
            "stream_id": sid,
            "account": (after or before).account if (after or before) else None,
            "client_order_id": (after or before).client_order_id if (after or before) else None,
            "changes": _changed(b, a),
            "events": positions_of,
        })
    accounts = []
    for name in sorted(set(v1["accounts"]) | set(v2["accounts"])):
        changes = _changed(v1["accounts"].get(name), v2["accounts"].get(name))
        if changes:
            accounts.append({"account": name, "changes": changes, "events": by_account.get(name, [])})
    return {
        "from": {"position": s1.position, "at": iso(s1.at), "axis": s1.axis, **_stepped_back(s1)},
        "to": {"position": s2.position, "at": iso(s2.at), "axis": s2.axis, **_stepped_back(s2)},
        "event_count": len(events),
        "positions": positions,
        "orders": orders,
        "accounts": accounts,
        **({"reference": _reference_changes(v1, v2, reference)} if reference else {}),
        "events": [{**e.envelope(), "summary": _summary(e)} for e in events],
    }


def _reference_changes(v1: dict[str, Any], v2: dict[str, Any], events: list[int]) -> list[dict[str, Any]]:
    """Instruments and FX rates that changed between two views, each with the reference events between."""
    out = []
    for section, label in (("instruments", "instrument"), ("fx_rates", "FX rate")):
        before, after = v1.get(section, {}), v2.get(section, {})
        for key in sorted(set(before) | set(after)):
            b, a = before.get(key), after.get(key)
            if b != a:
                changes = _changed(b, a) if isinstance(a if a is not None else b, dict) else {"rate": [b, a]}
                out.append({"what": f"{label} {key}", "changes": changes, "events": events})
    return out


def by_order_positions(index: dict[str, list[int]], key: str) -> list[int]:
    """The event positions ``index`` holds for ``key`` (empty when none)."""
    return index.get(key, [])


def _summary(e: LoggedEvent) -> str:
    from .log import describe

    return describe(e)


def _order_brief(o: OrderState | None) -> dict[str, Any] | None:
    if o is None:
        return None
    return {"status": o.status, "qty": o.qty, "filled_qty": o.filled_qty, "avg_fill_price": o.avg_fill_price,
            "limit_price": o.limit_price, "venue_order_id": o.venue_order_id, "cancel_requested": o.cancel_requested,
            "discrepancies": o.discrepancies, "fees": o.fees,
            # an amendment the venue has not answered; fills whose fee is still to come
            "replace_pending": o.replace_pending,
            "fees_pending": sum(1 for e in o.executions if o.account_state is not None
                                and e in o.account_state.fees_pending)}


def render_diff(d: dict[str, Any], limit: int = 200) -> Group:
    """A rich rendering of a ``diff`` result, at most ``limit`` events listed."""
    parts: list[Any] = [Text(f"Diff from {d['from']['at']} (position {d['from']['position']}) to {d['to']['at']} "
                             f"(position {d['to']['position']}), {d['to']['axis']} axis: {d['event_count']} events",
                             style="bold")]

    def table(title: str, rows: list[dict[str, Any]], key: Callable[[dict[str, Any]], str]) -> Table:
        t = Table(title=title, title_justify="left")
        for c in ("what", "field", "before", "after", "changed by (positions)"):
            t.add_column(c)
        for row in rows:
            first = True
            for field, (b, a) in row["changes"].items():
                ev = ", ".join(str(p) for p in row["events"][:12]) + (" ..." if len(row["events"]) > 12 else "")
                t.add_row(key(row) if first else "", field, _f(b), _f(a), ev if first else "")
                first = False
        return t

    parts.append(table("Positions", d["positions"], lambda r: r["key"]))
    parts.append(table("Orders", d["orders"], lambda r: f"{r['account']}/{r['client_order_id']}"))
    parts.append(table("Risk", d["accounts"], lambda r: r["account"]))
    if d.get("reference"):
        parts.append(table("Instruments and FX rates", d["reference"], lambda r: r["what"]))
    events = Table(title="Events", title_justify="left")
    for c in ("position", "recorded_at", "type", "what"):
        events.add_column(c)
    for e in d["events"][:limit]:
        events.add_row(str(e["position"]), e["recorded_at"], e["type"], e["summary"])
    if len(d["events"]) > limit:
        events.caption = f"{len(d['events']) - limit} more events (use --json for all)"
    parts.append(events)
    return Group(*parts)
