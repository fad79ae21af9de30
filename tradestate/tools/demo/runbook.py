"""The demo's runbook act: an engine in a crash loop, the safety gate that stops automatic
resumption, the operator's approval, the ramp stepping up by itself, and the alerts a local
webhook listener receives.

``python -m tradestate.tools.demo.runbook engine DB_URL`` is one run of the crash-looping engine
``flaky-engine``: it records its start, prints ``STARTED <position> <1 if its previous run never
stopped>`` and waits to be killed (the demo SIGKILLs it, as a bad deployment would, again and again).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from uuid import uuid4

from rich.console import Console
from rich.table import Table

from ...adapters.store import open_store

ENGINE = "flaky-engine"
CRASHES = 4  # one more than the gate's default of 3 in 5 minutes
DEMO_SECRET = "demo-webhook-secret"  # the listener and the alerter share it; a demo value, never a real one
RAMP_INTERVAL = 1.0  # seconds healthy at each level: short for the demo (the default is 300 s)
RAMP_POLL = 0.1
PROJECTOR_LAG = 30.0  # seconds the read models may trail: room for a slow machine, the act lasts ~3 s
OPERATOR = "ops-alice"
APPROVAL_REASON = "crash loop traced to a bad config push, rolled back; positions checked"


# --------------------------------------------------------------------------- the listener


class WebhookListener:
    """A tiny webhook receiver on 127.0.0.1 (``http.server`` in a daemon thread), as an operator's
    chat bridge or pager would run one: it checks each POST's ``X-Tradestate-Signature`` (HMAC-SHA256
    of the raw body with ``secret``) itself, answers 204 when it holds and 401 when not, and keeps
    what it received in ``received`` (dicts: id, kind, severity, summary, signature, verified, path),
    each alert once: a re-delivery of an alert id it already holds is answered and counted in
    ``duplicates``, as the alerts' contract asks of a receiver (delivery is at least once)."""

    def __init__(self, secret: str):
        self.secret = secret.encode()
        self.received: list[dict[str, Any]] = []
        self.duplicates = 0
        self.arrived = threading.Condition()
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                signature = self.headers.get("X-Tradestate-Signature") or ""
                expected = "sha256=" + hmac.new(listener.secret, body, hashlib.sha256).hexdigest()
                verified = hmac.compare_digest(expected, signature)
                try:
                    alert = json.loads(body)
                except ValueError:
                    alert = {}
                alert_id = self.headers.get("X-Tradestate-Alert-Id") or alert.get("id")
                # kept before the answer: the sender posts the next alert once answered, and that
                # one's handler thread must not append first
                with listener.arrived:
                    if verified and any(a["id"] == alert_id and a["verified"] for a in listener.received):
                        listener.duplicates += 1
                    else:
                        listener.received.append({"id": alert_id, "kind": alert.get("kind"),
                                                  "severity": alert.get("severity"),
                                                  "summary": alert.get("summary", ""), "signature": signature,
                                                  "verified": verified, "path": self.path})
                        listener.arrived.notify_all()
                self.send_response(204 if verified else 401)
                self.end_headers()

            def log_message(self, *args: Any) -> None:  # quiet: the demo prints what it received
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts/{uuid4().hex[:8]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="demo-webhook-listener", daemon=True)

    def __enter__(self) -> WebhookListener:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, kind: str, timeout: float) -> dict[str, Any] | None:
        """The first alert of ``kind`` received, waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                got = next((a for a in self.received if a["kind"] == kind), None)
                remaining = deadline - time.monotonic()
                if got is not None or remaining <= 0:
                    return got
                self.arrived.wait(remaining)


# ------------------------------------------------------------------------------- the act


def show_runbook(url: str, console: Console) -> bool:
    """Act six: ``flaky-engine`` crashes ``CRASHES`` times in seconds (each run SIGKILLed); recovery
    evaluates the safety gates and the repeated-crashes gate leaves it NOT READY, waiting for an
    operator; an intent is refused (``gate_pending``); a local listener receives the signed
    "gate waiting for approval" alert; the operator approves through the control path; the ramp
    runner (started before the approval, in a thread) steps every resumed account 50 -> 75 -> 100 %
    by itself; the listener shows every alert it received. True when each of those held."""
    from ...alerts import AlertService

    act_started = time.perf_counter()
    console.print("\n[bold]The runbook, operable: an engine in a crash loop, a safety gate, an approval, the ramp "
                  "and the alerts:[/]")
    with WebhookListener(DEMO_SECRET) as listener:
        alert_store = open_store(url)
        alerts = AlertService(alert_store, [listener.url], DEMO_SECRET, stall_seconds=None, every=0.1,
                              backoff=(0.1, 1.0), timeout=5.0)
        try:
            alerts.alerters[0].tick()  # the alerter's cursor starts at today's head: only this act alerts
            alerts.start()
            console.print(f"  a webhook listener on {listener.url} (http.server in a thread); the alerter "
                          f"(what `tradestate alerts --follow` runs) POSTs to it, signed with the demo secret",
                          highlight=False)
            ok = _act(url, console, listener)
            drained = alerts.alerters[0].drain(10)
        finally:
            alerts.stop()
            alert_store.close()
        received = list(listener.received)
    table = Table(title=f"The webhook listener received {len(received)} alert(s)", title_justify="left")
    for column in ("#", "kind", "severity", "signature", "summary"):
        table.add_column(column)
    for n, a in enumerate(received, 1):
        table.add_row(str(n), a["kind"], a["severity"], ("verified " if a["verified"] else "BAD ") + a["signature"][:19]
                      + "…", a["summary"])
    console.print(table)
    kinds = [a["kind"] for a in received]
    expected = ["crash_detected"] * (CRASHES - 1) + ["gate_waiting_approval", "recovery_completed"]
    # At least once, not in order: an alert whose POST is retried arrives after later ones.
    got_all = drained and sorted(kinds) == sorted(expected) and all(a["verified"] for a in received)
    console.print(f"  every signature verified with the demo secret: {all(a['verified'] for a in received)}"
                  + (f"; {listener.duplicates} re-delivery(ies) dropped by alert id" if listener.duplicates else "")
                  + f"; the act took {time.perf_counter() - act_started:.1f} s", highlight=False)
    return ok and got_all


def _act(url: str, console: Console, listener: WebhookListener) -> bool:
    """The act up to the ramp at 100 % (``show_runbook`` around it runs the listener and alerter)."""
    from ...controls import perform
    from ...gates import GateConfig
    from ...projections.projector import Projector
    from ...ramp import RampRunner, projector_check, venue_check
    from ...recovery import recover
    from ...render import render_report
    from .session import ACCOUNT as account
    from .session import _line_starting as line_starting
    from .session import _lines_of as lines_of

    # 1. the crash loop: a supervisor restarts the engine, something kills it each time
    console.print(f"  [bold]{ENGINE}[/] in a crash loop: its supervisor restarts it and each run is SIGKILLed "
                  "moments after it starts")
    loop_started = time.perf_counter()
    for run in range(1, CRASHES + 1):
        process = subprocess.Popen([sys.executable, "-m", "tradestate.tools.demo.runbook", "engine", url],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            line = line_starting(lines_of(process), "STARTED", 60,
                                 lambda text, pid=process.pid: console.print(f"  [dim]engine {pid}:[/] {text}",
                                                                             highlight=False))
            if line is None:
                console.print(f"[red]run {run} of {ENGINE} did not start[/]")
                return False
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        _, position, crashed_before = line.split()
        console.print(f"  run {run}: engine {process.pid} started (log position {position})"
                      + (", its previous run never stopped" if crashed_before == "1" else "")
                      + " → [bold red]SIGKILL[/]", highlight=False)
    console.print(f"  {CRASHES} crashes in {time.perf_counter() - loop_started:.1f} s", highlight=False)

    # 2. recovery: the gates say an operator must look first
    config = GateConfig()
    console.print(f"\n[bold]tradestate recover --engine-id {ENGINE}[/] (safety gates at their defaults: more than "
                  f"{config.max_crashes} crashes in {config.crash_window.total_seconds() / 60:g} minutes need an "
                  "operator's approval):", highlight=False)
    store = open_store(url)
    runner_store = open_store(url)
    runner: Any = None
    stop = threading.Event()
    thread: threading.Thread | None = None
    try:
        report, client = recover(store, engine_id=ENGINE, gates=config)
        render_report(report, console)
        gate = next((g for g in report.gates if g["gate"] == "repeated_crashes"), None)
        if gate is None or gate["passed"] or not report.awaiting_approval or report.ready:
            console.print("[red]the repeated-crashes gate did not stop the engine[/]")
            return False
        gate_id = gate["gate_id"]
        by_engine = ", ".join(f"{e} {n}" for e, n in gate["values"].get("by_engine", {}).items())
        console.print(f"  the gate saw {gate['values']['crashes_in_window']} crashes in the window (by engine: "
                      f"{by_engine}: every engine's crashes count)",
                      highlight=False)
        refused = client.record_intent(account, "o-9", "MSFT", "buy", 10, venue="sim", reference_price="412.45")
        reasons = list(refused.refusal.reasons) if refused.refusal else []
        console.print(f"  intent o-9 buy 10 MSFT → "
                      + (f"[bold red]refused[/]: {', '.join(reasons)} ({refused.refusal.detail})" if reasons
                         else "[bold red]accepted (the gate did not hold it)[/]"), highlight=False)

        # 3. the alert of the waiting gate, as the listener got it
        alert = listener.wait_for("gate_waiting_approval", 10)
        if alert is None:
            console.print("[red]the listener received no gate alert[/]")
            return False
        console.print(f"  [bold]listener[/] received POST {alert['path']}: {alert['kind']} ({alert['severity']}) — "
                      f"{alert['summary']}", highlight=False)
        console.print(f"  X-Tradestate-Signature {alert['signature']} → "
                      + ("[bold green]verified[/] (HMAC-SHA256 of the body with the demo secret)" if alert["verified"]
                         else "[bold red]does NOT verify[/]"), highlight=False)

        # 4. the ramp runner is already running when the operator approves
        reached = Projector(store).catch_up()  # the runner checks that the read models keep up
        resumed = sorted(a.account for a in client.state.accounts.values() if a.ramp_since is not None
                         and a.ramp_pct < 100)
        console.print(f"\n[bold]The ramp runner[/] (what `tradestate ramp --follow --interval {RAMP_INTERVAL:g}` runs; "
                      f"[bold]a {RAMP_INTERVAL:g} s healthy interval[/] to keep the demo short — the default is 300 s) "
                      f"starts on {', '.join(resumed)} at 50 %; read models caught up to position {reached}",
                      highlight=False)
        held, started = threading.Event(), time.perf_counter()

        def show(tick: Any) -> None:
            groups: dict[tuple[str, int, int | None], list[Any]] = {}
            for d in tick.decisions:
                if d.kind in ("step", "hold", "healthy"):
                    groups.setdefault((d.kind, d.from_pct, d.to_pct), []).append(d)
            for (kind, from_pct, to_pct), ds in groups.items():
                names = ", ".join(d.account for d in ds)
                when = f"  [dim]+{time.perf_counter() - started:4.1f} s[/] ramp runner:"
                if kind == "hold":
                    console.print(f"{when} {names} [bold yellow]HELD[/] at {from_pct} % — {ds[0].reason}",
                                  highlight=False)
                    held.set()
                elif kind == "healthy":
                    console.print(f"{when} {names} healthy again at {from_pct} % (the interval starts over)",
                                  highlight=False)
                else:
                    passed = ", ".join(n + (" (not checked)" if "not checked" in c["detail"] else "")
                                       for n, c in ds[0].checks.items() if c["ok"] and n != "healthy_seconds")
                    console.print(f"{when} {names} [bold green]stepped {from_pct} → {to_pct} %[/] "
                                  f"({ds[0].reason}; checks passed: {passed})", highlight=False)

        runner = RampRunner(runner_store, interval=timedelta(seconds=RAMP_INTERVAL),
                            live={"projector_caught_up": projector_check(url, PROJECTOR_LAG),
                                  "venue_reachable": venue_check([])},
                            gates=config, on_tick=show)

        def at_full() -> bool:
            accounts = runner.client.state.accounts
            return all(accounts[name].ramp_pct >= 100 for name in resumed)

        failure: list[BaseException] = []

        def run() -> None:
            try:
                runner.run(RAMP_POLL, stop=stop, until=at_full, max_errors=3)
            except BaseException as e:  # noqa: BLE001 - reported by the act, not lost in a thread
                failure.append(e)

        thread = threading.Thread(target=run, name="demo-ramp-runner", daemon=True)
        thread.start()
        if not held.wait(10):
            console.print("[red]the ramp runner did not hold for the waiting gate[/]")
            return False

        # 5. the operator approves, through the control path, with who and why
        result = perform(client, "approve", operator=OPERATOR, reason=APPROVAL_REASON, gate_id=gate_id)
        console.print(f"  [dim]+{time.perf_counter() - started:4.1f} s[/] the operator approves through the control "
                      f"path ([bold]tradestate control approve {gate_id} --operator {OPERATOR} --reason "
                      f"\"{APPROVAL_REASON}\"[/] does the same) → recorded {result.event_type} at position "
                      f"{result.position}, by {result.operator}", highlight=False)
        thread.join(30)
        if thread.is_alive() or failure or not at_full():
            console.print(f"[red]the ramp did not reach 100 %[/] {failure[0] if failure else ''}")
            return False
        console.print(f"  every resumed account at 100 % {time.perf_counter() - started:.1f} s after the runner "
                      "started, nobody touching it; the runner stops", highlight=False)
        return bool(reasons == ["gate_pending"] and alert["verified"])
    finally:
        stop.set()
        if thread is not None:
            thread.join(5)  # a round under way finishes before its store closes
        if runner is not None:
            runner.close()
        else:
            runner_store.close()
        store.close()  # the recovered client's store


# ------------------------------------------------------------------------ the engine process


def engine(url: str) -> int:
    """One run of ``flaky-engine`` (see the module docstring); never returns: it waits to be killed."""
    from ...client import connect

    client = connect(url)
    client.engine_started(ENGINE, version="0.2.0")
    print(f"STARTED {client.position} {int(client.previous_run_crashed(ENGINE))}", flush=True)
    while True:  # about to trade, until it is killed
        time.sleep(0.1)


if __name__ == "__main__":
    if sys.argv[1:2] != ["engine"] or len(sys.argv) != 3:
        sys.exit("usage: python -m tradestate.tools.demo.runbook engine DB_URL")
    sys.exit(engine(sys.argv[2]))
