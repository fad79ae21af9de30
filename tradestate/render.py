"""Turning state into tables for humans and JSON for scripts (shared by the CLI and the demo)."""

from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
from rich.console import Console
from rich.table import Table

from .domain.risk import effective_limit, limit_usage
from .domain.state import TradingState


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, (tuple,)):
        return list(value)
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(type(value).__name__)


def to_json(value: Any, *, indent: bool = False) -> str:
    """Deterministic JSON (sorted keys; Decimal, UUID and sets as strings/lists) of ``value``."""
    option = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
    return orjson.dumps(value, default=_default, option=option).decode()


def state_digest(state: TradingState) -> str:
    """A short fingerprint of the whole folded state: equal digests, equal state."""
    return hashlib.sha256(to_json(state.summary()).encode()).hexdigest()[:16]


def fmt(value: Any) -> str:
    """One table cell: ``-`` for None, decimals without exponent, instants to the second."""
    if value is None:
        return "-"
    if isinstance(value, Decimal):
        return f"{value.normalize():f}"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


def positions_table(state: TradingState, title: str = "Positions") -> Table:
    """A table of every position (account, venue, symbol) with cost, P&L and fees."""
    table = Table(title=title, title_justify="left")
    for column in ("account", "venue", "symbol", "qty", "avg cost", "realised P&L", "unrealised P&L", "fees", "last"):
        table.add_column(column, justify="right" if column not in ("account", "venue", "symbol") else "left")
    for (account, venue, symbol), p in sorted(state.positions.items()):
        table.add_row(account, venue, symbol, fmt(p.qty), fmt(round(p.avg_cost, 4)), fmt(p.realized_pnl),
                      fmt(p.unrealized_pnl), fmt(p.fees), fmt(p.last_price))
    return table


def risk_table(state: TradingState, now: datetime, title: str = "Risk state") -> Table:
    """A table of each account at ``now``: kill switch, breaker, ramp, open orders, today's trades and
    net P&L, discrepancies."""
    table = Table(title=title, title_justify="left")
    for column in ("account", "kill switch", "circuit breaker", "ramp", "open orders", "trades today",
                   "net P&L today", "discrepancies"):
        table.add_column(column)
    day = state.trading_day(now)
    for name, a in sorted(state.accounts.items()):
        stats = a.daily.get(day)
        table.add_row(
            name,
            f"[bold red]ENGAGED[/]: {a.kill_switch_reason}" if a.kill_switch else "off",
            f"[bold yellow]TRIPPED[/]: {a.breaker_reason}" if a.breaker_active(now) else "ok",
            f"{a.ramp_pct}%",
            str(len(a.open_orders)),
            str(stats.trades if stats else 0),
            fmt(stats.net_pnl if stats else Decimal(0)),
            str(a.discrepancies),
        )
    return table


def limits_table(state: TradingState, now: datetime, title: str = "Risk limits") -> Table:
    """A table of each account's limits at ``now``: configured, effective and used."""
    table = Table(title=title, title_justify="left")
    for column in ("account", "limit", "symbol", "configured", "effective (ramp)", "used now"):
        table.add_column(column, justify="right" if column in ("configured", "effective (ramp)", "used now") else "left")
    for name in sorted(state.accounts):
        for row in limit_usage(state, name, now):
            table.add_row(name, row["limit"], row["symbol"] or "all", fmt(row["value"]), fmt(row["effective"]),
                          fmt(row["used"]) + (" (per-order)" if row["limit"] in ("max_order_qty", "max_order_notional") else ""))
    return table


def orders_table(state: TradingState, title: str = "Orders") -> Table:
    """A table of every order in intent order: quantities, fills, status, venue id and a note
    (refusal, cancel requested, discrepancies, an amendment pending, fees still to come)."""
    table = Table(title=title, title_justify="left")
    for column in ("client order id", "symbol", "side", "qty", "filled", "avg px", "status", "venue id", "note"):
        table.add_column(column)
    for o in sorted(state.orders.values(), key=lambda o: o.positions["intent"]):
        note = ", ".join(o.refusal) if o.refusal else ("cancel requested" if o.cancel_requested and o.is_open else "")
        if o.discrepancies:
            note = (note + "; " if note else "") + f"{o.discrepancies} discrepancy"
        if o.replace_pending is not None:  # the engine's amendment the venue has not answered
            asked = o.replaces[o.replace_pending]["request"]  # type: ignore[index]
            note = (note + "; " if note else "") + f"amendment to qty {asked['qty']} waits for the venue"
        pending = o.account_state.fees_pending if o.account_state is not None else {}
        to_come = sum(1 for e in o.executions if e in pending)
        if to_come:
            note = (note + "; " if note else "") + f"fee to come for {to_come} fill{'s' if to_come > 1 else ''}"
        avg = o.avg_fill_price
        table.add_row(o.client_order_id, o.symbol, o.side, fmt(o.qty), fmt(o.filled_qty),
                      fmt(round(avg, 4) if avg is not None else None), o.status, fmt(o.venue_order_id), note)
    return table


_ENGINE_STYLES = {"active": "green", "dead": "bold red", "stopped": "dim", "standby": "cyan",
                  "standby-lost": "yellow"}


def engines_table(rows: list[dict[str, Any]], title: str = "Engines") -> Table:
    """The operator view of ``tradestate.engines.engines``: one row per engine (and standby) with
    its state, lease holder, epoch and how long ago the lease was last renewed (a standby: how long
    ago it last checked in)."""
    table = Table(title=title, title_justify="left")
    for column in ("engine", "state", "holder", "epoch", "renewed / seen", "expires in", "expiry recorded"):
        table.add_column(column, justify="right" if column in ("epoch", "renewed / seen", "expires in") else "left")
    for row in rows:
        style = _ENGINE_STYLES.get(row["state"], "")
        age = row.get("renewal_age_seconds")
        expires = row.get("expires_in_seconds")
        recorded = row.get("expiry_recorded")
        table.add_row(
            row["engine_id"], f"[{style}]{row['state']}[/]" if style else row["state"], row.get("holder") or "-",
            fmt(row.get("epoch") or None), "-" if age is None else f"{age:.1f} s ago",
            "-" if expires is None or row.get("lease") != "active" else f"{expires:.1f} s",
            "-" if recorded is None or row.get("lease") != "expired" else ("yes" if recorded else "not yet"))
    return table


def state_json(state: TradingState, now: datetime) -> dict[str, Any]:
    """The folded state as a JSON-ready dict: log position, digest, positions, open orders and each
    account's risk state at ``now``."""
    return {
        "position": state.position,
        "digest": state_digest(state),
        "positions": [p.as_dict() for _, p in sorted(state.positions.items())],
        "open_orders": [o.as_dict() for a in state.accounts.values() for o in a.open_orders.values()],
        "accounts": {
            name: {
                "kill_switch": a.kill_switch,
                "breaker_tripped": a.breaker_active(now),
                "breaker_reason": a.breaker_reason,
                "ramp_pct": a.ramp_pct,
                "limits": a.limits,
                "effective_limits": {k: effective_limit(a, k) for k in a.limits},
                "open_orders": len(a.open_orders),
                "discrepancies": a.discrepancies,
            }
            for name, a in sorted(state.accounts.items())
        },
    }


def make_console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr) for tables and messages."""
    # Piped output (CI logs, files) gets a width the tables fit in, not the 80-column default.
    import shutil
    import sys

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else max(shutil.get_terminal_size((140, 40)).columns, 140)
    return Console(width=width, stderr=stderr)


console = make_console()
err_console = make_console(stderr=True)  # errors and diagnostics: never mixed into the data on stdout


STATUS_STYLE = {"ok": "green", "warn": "yellow", "failed": "bold red", "skipped": "dim"}


def render_report(report: Any, console: Any) -> None:
    """Print a recovery report (``tradestate.recovery.RecoveryReport``) as a table and a verdict."""
    from rich.table import Table

    table = Table(title=f"recovery of engine {report.engine_id!r}"
                        f" ({'crash' if report.crashed else 'clean stop'}; {'strict' if report.strict else 'lenient'})")
    for name, justify in (("step", "left"), ("status", "left"), ("ms", "right"), ("detail", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for s in report.steps:
        style = STATUS_STYLE.get(s.status, "")
        table.add_row(s.name, f"[{style}]{s.status}[/]", f"{s.seconds * 1000:,.1f}", s.detail)
    console.print(table)
    verdict = "[bold green]READY TO TRADE[/]" if report.ready else "[bold red]NOT READY[/]"
    if report.ready and getattr(report, "monitoring", None):
        verdict = "[bold yellow]READY (MONITORING MODE for some accounts: no new intents until their market opens)[/]"
    console.print(f"{verdict}: head {report.head:,}, checkpoint {report.checkpoint_position}, "
                  f"{report.replayed:,} events replayed, {report.discrepancies} discrepancies, "
                  f"{report.corrective_events} corrective events; ready in {report.ready_seconds * 1000:,.0f} ms"
                  + (f"; blocked: {', '.join(report.blocked_accounts)}" if report.blocked_accounts else ""),
                  highlight=False)
    for gate_id in getattr(report, "awaiting_approval", ()):
        console.print(f"[bold yellow]WAITING FOR APPROVAL[/] gate {gate_id}: intents are refused until "
                      f"`tradestate gates --approve {gate_id} --operator NAME --reason WHY`", highlight=False)
    for account, why in sorted(getattr(report, "monitoring", {}).items()):
        console.print(f"[bold yellow]MONITORING MODE[/] {account}: {why}", highlight=False)
