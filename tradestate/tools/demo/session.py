"""The demo: a simulated trading session recorded through the client, then the same state read
back by a brand-new process from the log alone."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
from rich.console import Console
from rich.panel import Panel

from ...adapters.store import open_store, redact, sqlite_path
from ...client import TradestateClient
from ...domain.errors import InvalidInput
from ...render import limits_table, make_console, orders_table, positions_table, risk_table, state_digest

DEMO_URL = "sqlite:///demo-data/tradestate-demo.db"
ACCOUNT = "demo-acct"
# One-minute bars (open, high, low, close) from 14:30, the market the morning's fills happened in.
MORNING_BARS = {
    "AAPL": [("187.10", "187.60", "187.00", "187.55"), ("187.55", "189.05", "187.40", "188.90"),
             ("188.90", "189.20", "188.10", "188.40"), ("188.40", "188.60", "187.90", "188.05")],
    "MSFT": [("411.80", "412.30", "411.70", "412.10"), ("412.10", "412.40", "412.00", "412.30"),
             ("412.30", "412.50", "412.15", "412.35"), ("412.35", "412.45", "412.05", "412.20")],
}
# The bars of 15:05 and 15:06, while the engine process trades: the venue's prices it sees.
AFTERNOON_BARS = {
    "AAPL": [("187.55", "187.70", "187.50", "187.60"), ("187.60", "188.30", "187.60", "188.25")],
    "MSFT": [("412.30", "412.45", "412.25", "412.40"), ("412.40", "412.50", "412.35", "412.45")],
}


def _reset(url: str, reset: bool) -> None:
    if url.startswith("sqlite:///"):
        path = sqlite_path(url)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if url == DEMO_URL or reset:
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.remove(path + suffix)
            return
    store = open_store(url)
    try:
        if store.trading.head() == 0 and store.market.head() == 0:
            return
        if not reset:
            raise InvalidInput(
                f"{redact(url)} already holds a log; the demo needs an empty one (pass --reset to drop "
                "the tradestate tables there first)"
            )
    finally:
        store.close()
    if url.startswith("postgres"):
        import psycopg

        from ...adapters.store.postgres import TradestatePostgresDatastore

        ds = TradestatePostgresDatastore(url)
        with psycopg.connect(url.split("?")[0], autocommit=True) as conn:
            # Every tradestate table, not only the logs: read models, checkpoints, leases and the
            # alert cursor left behind would claim positions the new log has not reached.
            tables = [r[0] for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename LIKE 'ts\\_%%'", (ds.schema,))]
            for table in tables:
                conn.execute(f'DROP TABLE IF EXISTS "{ds.schema}"."{table}" CASCADE')
            for table in ("ts_events", "ts_market_events"):
                conn.execute(f'DROP SEQUENCE IF EXISTS "{ds.schema}"."{table}_position_seq"')
        ds.close()


def run_session(client: TradestateClient, console: Console) -> None:
    """Act one: a morning's session recorded through ``client`` on a simulated clock from 14:30 —
    limits, the bars of AAPL and MSFT, fills (one reported twice), a cancel, a refusal by a symbol
    limit, a breaker trip and a refusal by it — ending with a clean engine stop (33 trading events)."""
    t0 = datetime(2026, 11, 20, 14, 30, tzinfo=timezone.utc)  # 09:30 in New York
    step = iter(range(10_000))

    def at() -> datetime:
        return t0 + timedelta(seconds=7 * next(step))

    def say(text: str) -> None:
        console.print(f"  [dim]{client.position:>4}[/dim]  {text}")

    client.engine_started("demo-engine", version="0.1.0")
    say("engine started")
    for limit, value in (("max_order_qty", 500), ("max_order_notional", 100_000), ("max_position_qty", 300),
                         ("max_open_orders", 5), ("max_daily_trades", 50), ("max_daily_loss", 2_000)):
        client.set_risk_limit(ACCOUNT, limit, value, reason="start-of-day limits")
    say("risk limits set: order qty 500, notional 100k, position 300, open orders 5, daily loss 2k")

    for symbol, bars in MORNING_BARS.items():
        for minute, (o, h, low, c) in enumerate(bars):
            client.record_bar("sim", symbol, "1m", t0 + timedelta(minutes=minute), o, h, low, c, 12_000 + minute)
    client.record_signal("sma-cross", "AAPL", "buy", value="1.8", attributes={"fast": "10", "slow": "30"}, occurred_at=at())
    say(f"{sum(map(len, MORNING_BARS.values()))} one-minute bars (AAPL, MSFT) recorded in the market-data log; "
        "signal sma-cross AAPL buy")

    r = client.record_intent(ACCOUNT, "o-1", "AAPL", "buy", 100, order_type="limit", limit_price="187.50",
                             strategy_id="sma-cross", occurred_at=at())
    say(f"intent o-1 buy 100 AAPL @187.50 → {'accepted' if r.accepted else r.refusal}")
    client.record_submitted(ACCOUNT, "o-1", occurred_at=at())
    client.record_ack(ACCOUNT, "o-1", "SIM-1001", occurred_at=at())
    client.record_fill(ACCOUNT, "o-1", "X-1", 40, "187.45", fee="0.20", occurred_at=at())
    say("o-1 submitted, acknowledged (SIM-1001), partial fill 40 @187.45")
    client.record_fill(ACCOUNT, "o-1", "X-1", 40, "187.45", fee="0.20", occurred_at=at())
    say("the same execution X-1 reported again: deduplicated, nothing appended")
    client.record_fill(ACCOUNT, "o-1", "X-2", 60, "187.48", fee="0.30", occurred_at=at())
    say("o-1 filled: 60 @187.48")

    client.record_intent(ACCOUNT, "o-2", "MSFT", "buy", 50, reference_price="412.10", occurred_at=at())
    client.record_submitted(ACCOUNT, "o-2", occurred_at=at())
    client.record_ack(ACCOUNT, "o-2", "SIM-1002", occurred_at=at())
    client.record_fill(ACCOUNT, "o-2", "X-3", 50, "412.25", fee="0.25", occurred_at=at())
    say("o-2 market buy 50 MSFT: submitted, acknowledged, filled @412.25")

    client.record_intent(ACCOUNT, "o-3", "AAPL", "sell", 30, order_type="limit", limit_price="189.00", occurred_at=at())
    client.record_submitted(ACCOUNT, "o-3", occurred_at=at())
    client.record_ack(ACCOUNT, "o-3", "SIM-1003", occurred_at=at())
    client.record_fill(ACCOUNT, "o-3", "X-4", 10, "189.00", fee="0.05", occurred_at=at())
    client.request_cancel(ACCOUNT, "o-3", "signal faded", occurred_at=at())
    client.record_cancelled(ACCOUNT, "o-3", "cancelled at venue", occurred_at=at())
    say("o-3 sell 30 AAPL @189: partial 10, then cancel requested and confirmed")

    client.set_risk_limit(ACCOUNT, "max_position_qty", 150, symbol="AAPL", reason="earnings tomorrow")
    say("limit change: AAPL max position 150")
    r = client.record_intent(ACCOUNT, "o-4", "AAPL", "buy", 100, order_type="limit", limit_price="188.00", occurred_at=at())
    say(f"intent o-4 buy 100 AAPL → [bold red]refused[/]: {', '.join(r.refusal.reasons)} ({r.refusal.detail})")

    client.trip_breaker(ACCOUNT, "volatility spike: AAPL moved 3% in 60s")
    say("[bold yellow]circuit breaker tripped[/]: volatility spike")
    r = client.record_intent(ACCOUNT, "o-5", "MSFT", "buy", 10, reference_price="412.30", occurred_at=at())
    say(f"intent o-5 buy 10 MSFT → [bold red]refused[/]: {', '.join(r.refusal.reasons)}")
    client.engine_stopped("demo-engine")
    say("engine stopped cleanly")


def main(url: str | None = None, reset: bool = False, console: Console | None = None) -> int:
    """Run the whole demo against ``url`` (default ``DEMO_URL``, always started afresh): record the
    session, read it back in a new process, serve it over HTTP, kill an engine and recover, then
    kill an active engine with an order in flight and let its standby take over, then put an
    engine in a crash loop: a safety gate waits for an operator, the ramp steps up by itself after
    the approval, and a local webhook listener receives the alerts; then a backup chain (full, then
    an increment) and a restore drill of it, put on record; last, issue 18's instruments and venues
    (``instruments_act``). Another URL must hold an empty log unless ``reset`` (``InvalidInput`` otherwise). Returns 0 when
    every step agreed, 1 otherwise."""
    console = console or make_console()
    url = url or DEMO_URL
    _reset(url, reset)
    console.print(Panel.fit(f"tradestate demo — a simulated session recorded in {redact(url)}", style="bold"))
    client = TradestateClient(open_store(url), clock=lambda: datetime(2026, 11, 20, 15, 0, tzinfo=timezone.utc), venue="sim")
    console.print("[bold]Recording[/] (log position, then what happened):")
    started = time.perf_counter()
    run_session(client, console)
    elapsed = time.perf_counter() - started
    console.print(f"\n{client.position} events, each durable before the call returned ({elapsed * 1000:.0f} ms in all)\n")
    now = client.clock()
    console.print(positions_table(client.state))
    console.print(orders_table(client.state))
    console.print(risk_table(client.state, now))
    console.print(limits_table(client.state, now))
    digest = state_digest(client.state)
    client.close()

    console.print("\n[bold]A new process opens the same database and folds the log:[/]")
    child_started = time.perf_counter()
    child = subprocess.run(
        [sys.executable, "-m", "tradestate.cli", "state", "--db", url, "--json", "--at", now.isoformat()],
        capture_output=True, text=True, check=False,
    )
    child_ms = (time.perf_counter() - child_started) * 1000
    if child.returncode != 0:
        console.print(f"[red]the new process failed:[/] {child.stderr}")
        return 1
    report = json.loads(child.stdout)
    same = report["digest"] == digest
    console.print(
        f"  pid {report['pid']}: opened the database and replayed {report['position']} events in "
        f"[bold]{report['open_ms']:.1f} ms[/] ({child_ms:.0f} ms for the whole process, Python start-up included)"
    )
    reopened = TradestateClient(open_store(url), clock=lambda: now, venue="sim")
    console.print(positions_table(reopened.state, title="Positions (from the new process's replay)"))
    console.print(risk_table(reopened.state, now, title="Risk state (from the new process's replay)"))
    console.print(limits_table(reopened.state, now, title="Risk limits (from the new process's replay)"))
    reopened.close()
    verdict = "[bold green]same state[/]" if same else "[bold red]STATE DIFFERS[/]"
    console.print(f"  state digest {digest} here, {report['digest']} in the new process: {verdict}")
    served = show_http_api(url, console)
    recovered = show_crash_and_recovery(url, console)
    hot = show_hot_restart(url, console)
    from .runbook import show_runbook

    runbook = show_runbook(url, console)
    from .drill_act import show_backup_and_drill

    drilled = show_backup_and_drill(url, console)
    from .instruments_act import show_instruments

    instruments = show_instruments(url, console)
    checks = {"same state in a new process": same, "HTTP API": served, "crash and recovery": recovered,
              "hot restart": hot, "gates, ramp and alerts": runbook, "backup and restore drill": drilled,
              "instruments and venues": instruments}
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        console.print(f"[bold red]the demo's checks failed: {', '.join(failed)}[/]")
    return 1 if failed else 0


def show_crash_and_recovery(url: str, console: Console) -> bool:
    """Act three: the engine trades on in its own process and is killed with SIGKILL while the
    venue holds a fill the log never heard of; ``recover`` finds it, records it, and says so."""
    import signal
    import tempfile

    from ...adapters.brokers.sim import SimulatedBroker
    from ...render import render_report
    from .engine import ACCOUNT as ENGINE_ACCOUNT
    from .engine import ENGINE, LOST_FILL_ORDER, VENUE
    from ...domain.ids import order_stream_id
    from ...recovery import recover

    console.print("\n[bold]The engine trades on in its own process, then is killed with SIGKILL:[/]")
    if url.startswith("sqlite:///"):
        folder = os.path.dirname(os.path.abspath(sqlite_path(url)))
    else:
        folder = tempfile.mkdtemp(prefix="tradestate-demo-")
    sim_state = os.path.join(folder, "sim-venue.json")
    for leftover in (sim_state, sim_state + ".lock"):
        if os.path.exists(leftover):
            os.remove(leftover)
    engine = subprocess.Popen([sys.executable, "-m", "tradestate.tools.demo.engine", url, sim_state],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    ready = False
    assert engine.stdout is not None
    for line in engine.stdout:
        line = line.rstrip()
        if line.startswith("READY"):
            ready = True
            break
        console.print(f"  [dim]engine {engine.pid}:[/] {line}", highlight=False)
        if time.monotonic() > deadline:
            break
    if not ready:
        engine.kill()
        console.print(f"[red]the engine process did not get ready:[/] {engine.stdout.read()}")
        return False
    console.print(f"  [dim]engine {engine.pid}:[/] the market moves; the venue fills {LOST_FILL_ORDER} "
                  "[bold yellow]and the fill notification is lost[/] (the simulated venue's fault injection)",
                  highlight=False)
    os.kill(engine.pid, signal.SIGKILL)
    engine.wait()
    console.print(f"  [bold red]SIGKILL[/] → engine {engine.pid} gone mid-session (exit {engine.returncode}): "
                  "no clean stop on record", highlight=False)
    with TradestateClient(open_store(url)) as feed:
        for symbol, bars in AFTERNOON_BARS.items():
            for minute, (o, h, low, c) in enumerate(bars):
                feed.record_bar(VENUE, symbol, "1m", datetime(2026, 11, 20, 15, 5 + minute, tzinfo=timezone.utc),
                                o, h, low, c, 9_000 + minute)
    console.print("  the market-data feed, a writer of its own, recorded the 15:05 and 15:06 bars of AAPL and MSFT",
                  highlight=False)

    console.print("\n[bold]tradestate recover[/] (with the simulated broker configured):")
    broker = SimulatedBroker(account=ENGINE_ACCOUNT, venue=VENUE, seed=7, state_path=sim_state)
    store = open_store(url)
    try:
        report, client = recover(store, engine_id=ENGINE, adapters=[broker])
        render_report(report, console)
        order = client.state.orders.get(order_stream_id(ENGINE_ACCOUNT, LOST_FILL_ORDER))
        found = order is not None and order.status == "filled"
        console.print(f"  {LOST_FILL_ORDER} after recovery: {order.status if order else 'unknown'}, "
                      f"filled {order.filled_qty if order else 0} — "
                      + ("[bold green]the lost fill was found at the venue and recorded[/]" if found
                         else "[bold red]the lost fill was NOT recovered[/]"), highlight=False)
        console.print(positions_table(client.state, title="Positions after recovery"))
        postmortem_ok = show_postmortem(store, console, folder, report)
    finally:
        store.close()
    return report.ready and found and postmortem_ok


HOT_LEASE_SECONDS = 2.0  # short, to keep the demo short (the default lease is 3 s)


def show_hot_restart(url: str, console: Console) -> bool:
    """Act five: an active engine (``engine_id``, a lease) and a warm standby, each in its own
    process; the active one is SIGKILLed with an order in flight at the venue (intent and
    submission on record, the venue's ack and fill not). The standby notices the lease run out,
    records ``LeaseExpired``, takes the lease (``LeaseAcquired``, a new epoch) and recovers,
    reconciling with the venue: the in-flight order's ack and fill are recorded once. Its order
    loop re-sends the intent with the same client order id: a duplicate, not sent again. Prints
    the takeover time and the engine stream; True when every one of those held."""
    import signal
    import tempfile

    from ...domain.ids import engine_stream_id, order_stream_id
    from . import hot

    console.print("\n[bold]Hot restart: an active engine and a standby, each in its own process; the active "
                  "one is SIGKILLed with an order in flight:[/]")
    console.print(f"  (engine {hot.ENGINE!r}, account {hot.ACCOUNT}, a [bold]{HOT_LEASE_SECONDS:g} s lease[/] "
                  "to keep the demo short — the default is 3 s)", highlight=False)
    if url.startswith("sqlite:///"):
        folder = os.path.dirname(os.path.abspath(sqlite_path(url)))
    else:
        folder = tempfile.mkdtemp(prefix="tradestate-demo-")
    sim_state = os.path.join(folder, "sim-venue-hot.json")
    for leftover in (sim_state, sim_state + ".lock"):
        if os.path.exists(leftover):
            os.remove(leftover)
    coid = hot.IN_FLIGHT["client_order_id"]

    def start(role: str) -> tuple[subprocess.Popen[str], queue.Queue[str | None]]:
        process = subprocess.Popen([sys.executable, "-m", "tradestate.tools.demo.hot", role, url, sim_state,
                                    str(HOT_LEASE_SECONDS)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        return process, _lines_of(process)

    def say(who: str, process: subprocess.Popen[str]) -> Callable[[str], None]:
        return lambda line: console.print(f"  [dim]{who} {process.pid}:[/] {line}", highlight=False)

    engine, engine_lines = start("engine")
    standby: subprocess.Popen[str] | None = None
    try:
        if _line_starting(engine_lines, "IN FLIGHT", 60, say("engine", engine)) is None:
            console.print("[red]the engine process did not get its order out[/]")
            return False
        console.print(f"  [dim]engine {engine.pid}:[/] {coid}: intent and submission on record, sent; the venue "
                      "acknowledges and fills it [bold yellow]but the engine has not read that yet[/]",
                      highlight=False)
        standby, standby_lines = start("standby")
        following = _line_starting(standby_lines, "FOLLOWING", 60, say("standby", standby))
        if following is None:
            console.print("[red]the standby process did not start following[/]")
            return False
        console.print(f"  [dim]standby {standby.pid}:[/] follows the log (caught up at position "
                      f"{following.split()[1]}) and watches the lease", highlight=False)
        os.kill(engine.pid, signal.SIGKILL)
        killed_at = time.time()
        engine.wait(10)
        console.print(f"  [bold red]SIGKILL[/] → engine {engine.pid} gone with {coid} in flight", highlight=False)
        line = _line_starting(standby_lines, "TAKEOVER", 60, say("standby", standby))
        if line is None:
            console.print("[red]the standby did not take over[/]")
            return False
        took = json.loads(line.split(" ", 1)[1])
        takeover_seconds = took["ready_at"] - killed_at
        if takeover_seconds < 0:  # a stall of this machine outlasted the lease before the kill
            console.print("  [yellow]the engine's lease had already run out before the SIGKILL (its renewals "
                          "were stalled): the standby took over at once[/]")
        console.print(
            f"  [bold]takeover in {takeover_seconds:.2f} s[/] from the SIGKILL to a recovered engine fenced with "
            f"epoch {took['epoch']} (epoch {took['previous_epoch']} is deposed): up to {HOT_LEASE_SECONDS:g} s for "
            f"the lease to run out, then {took['seconds'] * 1000:.0f} ms to record the expiry, take the lease and "
            f"recover — reconciliation with the venue: {took['discrepancies']} discrepancies, "
            f"{took['corrective_events']} corrective events", highlight=False)
        line = _line_starting(standby_lines, "DONE", 60, say("standby", standby))
        if line is None:
            console.print("[red]the new engine did not finish[/]")
            return False
        done = json.loads(line.split(" ", 1)[1])
        try:
            standby.wait(30)
        except subprocess.TimeoutExpired:
            pass  # it said all it had to; killed below
    finally:
        for process in (engine, standby):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(10)

    from ...replay.log import iter_events

    store = open_store(url)
    try:
        engine_events = store.trading.read_stream(engine_stream_id(hot.ENGINE))
        order_events = store.trading.read_stream(order_stream_id(hot.ACCOUNT, coid))
        taken = next((e.position for e in engine_events if e.topic == "LeaseAcquired"
                      and orjson.loads(e.state)["epoch"] == took["epoch"]), None)
        recovered = next((e.position for e in engine_events if e.topic == "RecoveryCompleted"
                          and taken is not None and e.position > taken), None)
        recovery = [] if taken is None or recovered is None else list(iter_events(store, taken, recovered - 1))
    finally:
        store.close()
    console.print("  between taking the lease and recording its recovery the new engine appended: "
                  + ", ".join(_what(e) for e in recovery), highlight=False)
    console.print(_engine_stream_table(engine_events, f"Stream {engine_stream_id(hot.ENGINE)}"))
    kinds = [e.topic for e in order_events]
    console.print(f"  order {coid}: {' → '.join(kinds)}", highlight=False)
    once = all(kinds.count(kind) == 1 for kind in ("OrderIntentRecorded", "OrderSubmitted", "OrderAcknowledged",
                                                    "OrderFilled"))
    engine_kinds = [e.topic for e in engine_events]
    expired = "LeaseExpired" in engine_kinds and any(
        e.topic == "LeaseAcquired" and orjson.loads(e.state)["reason"] == "expired" for e in engine_events)
    ok = (once and expired and took["ready"] and done["duplicate"] and done["venue_orders"] == 1
          and done["late_appended"] == 0 and done["status"] == "filled")
    console.print(f"  {coid} sent to the venue {done['venue_orders']} time(s), its ack and fill recorded once each, "
                  f"now {done['status']} — " + ("[bold green]neither lost nor sent twice[/]" if ok
                                                  else "[bold red]the in-flight order was NOT handled once[/]"),
                  highlight=False)
    return ok


def _what(e: Any) -> str:
    """An event of the log in a few words: its type and the order (and execution) it is about."""
    p = e.payload
    about = " ".join(str(p[k]) for k in ("client_order_id", "exec_id") if p.get(k))
    if e.type == "TradingResumed":
        about = f"{p.get('account', '')} at {p.get('ramp_pct')} %"
    return f"{e.type} {about}".strip()


def _engine_stream_table(events: list[Any], title: str) -> Any:
    """The events of an engine's stream: position, type, epoch and what each says."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in ("position", "event", "epoch", "detail"):
        table.add_column(column)
    for e in events:
        data = orjson.loads(e.state)
        if e.topic == "LeaseAcquired":
            detail = f"by {_pid(data['holder'])}, reason {data['reason']}" + (
                f" (after epoch {data['previous_epoch']})" if data.get("previous_epoch") else "")
        elif e.topic == "LeaseExpired":
            detail = f"{_pid(data['holder'])} stopped renewing; detected by {_pid(data['detected_by'])}"
        elif e.topic == "LeaseReleased":
            detail = f"by {_pid(data['holder'])}: {data.get('reason', '')}"
        elif e.topic == "EngineStarted":
            detail = f"version {data.get('version', '')}"
        elif e.topic == "EngineStopped":
            detail = data.get("reason", "")
        elif e.topic == "RecoveryCompleted":
            detail = (f"ready {data.get('ready')}, crashed {data.get('crashed')}, {data.get('discrepancies', 0)} "
                      f"discrepancies, {data.get('corrective_events', 0)} corrective events")
        else:
            detail = ""
        table.add_row(str(e.position), e.topic, str(data.get("epoch", "")), detail)
    return table


def _pid(text: str) -> str:
    """``text`` with each lease holder (``host:pid:suffix``) shortened to ``pid N``."""
    return " ".join(f"pid {word.split(':')[1]}" if word.count(":") == 2 else word for word in text.split())


def _lines_of(process: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """The process's output lines as they come (None once it closed its output)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _line_starting(lines: queue.Queue[str | None], marker: str, timeout: float,
                   show: Callable[[str], None]) -> str | None:
    """The first line starting with ``marker`` within ``timeout`` seconds, showing the lines
    before it; None if the process ended or the time ran out first."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            return None
        if line is None:
            return None
        if line.startswith(marker):
            return line
        show(line)
    return None


def show_postmortem(store, console: Console, folder: str, report) -> bool:  # noqa: ANN001, ARG001
    """Act four: what an operator looks at afterwards — the lost-fill order's whole life, and the
    post-mortem report of the incident window."""
    from .engine import ACCOUNT as ENGINE_ACCOUNT
    from .engine import LOST_FILL_ORDER

    try:
        from ...replay.report import write_report
        from ...replay.trace import render_trace, trace
    except ImportError:
        console.print("  (replay is not available in this version)")
        return True
    console.print(f"\n[bold]tradestate replay trace {LOST_FILL_ORDER}[/] (the order whose fill notification was lost):")
    console.print(render_trace(trace(store, ENGINE_ACCOUNT, LOST_FILL_ORDER)))
    path = os.path.join(folder, "postmortem.html")
    # On the venue's clock (occurred_at) the session spans 14:30-15:07; on the store's clock the
    # whole demo took seconds.
    write_report(store, datetime(2026, 11, 20, 14, 50, tzinfo=timezone.utc), "20m", path, axis="occurred")
    console.print(f"\n[bold]tradestate replay report[/] → {path} (the incident summary: crash, recovery "
                  "steps and reconciliation corrections; prices with the fills on them; position, P&L and "
                  "equity, event density, breaker and kill-switch changes, and the timeline of the window)",
                  highlight=False)
    return os.path.getsize(path) > 0


def show_http_api(url: str, console: Console) -> bool:
    """Project the log into the SQL read models, serve them over HTTP, and read them back as a
    risk tool would."""
    from rich.table import Table

    from ...projections.http.server import background_server
    from ...projections.projector import Projector

    console.print("\n[bold]Risk tools read the SQL read models over HTTP:[/]")
    store = open_store(url)
    try:
        started = time.perf_counter()
        reached = Projector(store).catch_up()
        console.print(f"  projector: {reached} events into the read-model tables in "
                      f"{(time.perf_counter() - started) * 1000:.0f} ms (each page with its tracking row)")
    finally:
        store.close()
    with background_server(url) as base:
        health = _get_json(base, "/health")[1]
        console.print(f"  GET {base}/health → {health['status']}: log head {health['log_head']}, "
                      f"projected {health['projection_position']}, lag {health['lag_events']} events")
        positions = _get_json(base, "/positions")[1]
        table = Table(title=f"GET {base}/positions", title_justify="left")
        for column in ("account", "symbol", "qty", "avg_cost", "realized_pnl", "unrealized_pnl", "fees"):
            table.add_column(column)
        for p in positions:
            table.add_row(p["account"], p["symbol"], _short(p["qty"]), _short(p["avg_cost"]), _short(p["realized_pnl"]),
                          _short(p["unrealized_pnl"]), _short(p["fees"]))
        console.print(table)
        risk = _get_json(base, f"/risk/{ACCOUNT}")[1]
        table = Table(title=f"GET {base}/risk/{ACCOUNT}", title_justify="left")
        for column in ("limit", "symbol", "configured", "effective", "used"):
            table.add_column(column)
        for u in risk["limits"]:
            table.add_row(u["limit_name"], u["symbol"] or "all", _short(u["configured"]), _short(u["effective"]),
                          _short(u["used"]))
        console.print(table)
        breaker = "TRIPPED" if risk.get("breaker_active") else "ok"
        console.print(f"  breaker {breaker} ({risk.get('breaker_reason') or '-'}), kill switch "
                      f"{'ENGAGED' if risk.get('kill_switch') else 'off'}, ramp {risk.get('ramp_pct')}%, "
                      f"open orders {risk.get('open_orders')}")
        ok = _get_json(base, "/metrics", parse=False)[0] == 200 and bool(positions) and bool(risk["limits"])
    return ok


def _get_json(base: str, path: str, *, parse: bool = True) -> tuple[int, Any]:
    """GET ``base + path`` with the standard library (the demo runs from a plain install, without
    the test extra's HTTP client); returns the status and the decoded JSON body (the raw text when
    ``parse`` is false). An error status is returned, not raised: /health answers 503 with a body."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(base + path, timeout=10) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    text = body.decode("utf-8")
    return status, (json.loads(text) if parse else text)


def _short(value: str | None) -> str:
    if value is None:
        return "-"
    return f"{round(Decimal(value), 4).normalize():f}"

