"""The operator console (``/console``): end to end in headless Chromium (Debian's ``chromium``,
driven over the DevTools protocol) against a real uvicorn server on a real SQLite file and a real
PostgreSQL schema, and over plain HTTP for its authentication (token login, session cookie, CSRF,
the Host check)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from typing import Any

import httpx
import pytest
from tradestate.projections.http.auth import load_tokens
from tradestate.projections.http.console import COOKIE
from tradestate.projections.http.server import background_server

import tradestate
from tests.support.cdp import CHROMIUM, headless_chromium
from tests.support.controls import control_events, head
from tests.support.gates import waiting_gate

ALICE = "alice-console-token-0123456789"
TOKENS = load_tokens(None, f"alice:{ALICE},bob:bob-console-token-9876543210")
A, VENUE, SYMBOL = "acct-1", "sim", "AAPL"


def operator_events(url: str) -> list[tuple[int, str, dict[str, Any]]]:
    """The control events an operator took (the setup's own limits have none)."""
    return [(pos, t, d) for pos, t, d in control_events(url) if d.get("operator")]


def _pixel_stats(png: bytes) -> tuple[float, int]:
    import io

    from PIL import Image, ImageStat

    image = Image.open(io.BytesIO(png)).convert("L")
    return ImageStat.Stat(image).var[0], sum(1 for count in image.histogram() if count)


def make_log(url: str) -> None:
    """An account with limits, a working order partly filled (4 AAPL held)."""
    with tradestate.connect(url, venue=VENUE) as client:
        client.set_risk_limit(A, "max_order_qty", 100)
        client.set_risk_limit(A, "max_position_qty", 50)
        assert client.record_intent(A, "o1", SYMBOL, "buy", "10", order_type="limit", limit_price="100").accepted
        client.record_submitted(A, "o1")
        client.record_ack(A, "o1", "v-1")
        client.record_fill(A, "o1", "x-1", "4", "100")


@contextmanager
def serving(url: str, **options: Any) -> Iterator[str]:
    options.setdefault("watch_engines", False)
    with background_server(url, **options) as base_url:
        yield base_url


def login(http: httpx.Client, token: str = ALICE) -> str:
    """Sign in; returns the page's CSRF token."""
    r = http.post("/console/login", data={"token": token})
    assert r.status_code == 303 and r.headers["location"] == "/console", r.text
    page = http.get("/console")
    assert page.status_code == 200
    return re.search(r'"X-CSRF-Token": "([^"]+)"', page.text).group(1)  # type: ignore[union-attr]


# ------------------------------------------------------------------------------ the browser
QTY = f"(document.querySelector('tr.position[data-key=\"{A}/{VENUE}/{SYMBOL}\"] .qty') || {{}}).textContent"
KILL = f"(document.querySelector('tr[data-account=\"{A}\"] .kill-switch') || {{dataset: {{}}}}).dataset.engaged"
RESULT = "(document.querySelector('#result span') || {textContent: ''}).textContent"


def _click(page: Any, selector: str) -> None:
    page.evaluate(f"document.querySelector({selector!r}).click(), true")


def _fill(page: Any, selector: str, value: str) -> None:
    page.evaluate(f"(e => {{ e.value = {value!r}; return true; }})(document.querySelector({selector!r}))")


def test_console_live_updates_and_kill_switch_in_headless_chromium(db_url, tmp_path):
    """Load the console (signing in with a token), see a position; a fill appended by the engine
    shows within seconds; the kill switch engaged through the page refuses the engine's next
    intent and the page shows it engaged; releasing it asks for a confirmation (dismissed: nothing
    recorded; accepted: recorded under the token's operator). The screenshot is not blank."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: apt-get install -y chromium (./dev test installs it as root)")
    make_log(db_url)
    with serving(db_url, tokens=TOKENS) as base, headless_chromium() as page, \
            tradestate.connect(db_url, venue=VENUE, engine_id="eng-1", lease_seconds=5) as engine:
        page.navigate(f"{base}/console")
        assert page.evaluate("location.pathname") == "/console/login"  # no session yet
        _fill(page, "#token", ALICE)
        page.evaluate("document.querySelector('#login').submit(), true")
        page.wait_for("location.pathname === '/console' && !!document.querySelector('#positions')", timeout=15)
        assert page.evaluate("document.querySelector('#operator').textContent") == "alice"
        assert page.wait_for(f"{QTY} === '4' && {QTY}") == "4"
        assert page.evaluate(f"{KILL}") == "false"
        engines = page.evaluate("document.querySelector('#engines').innerText")
        assert "eng-1" in engines and "active" in engines, engines  # the engine holding the lease

        # live update: the engine appends a fill; the page shows it without a reload
        started = time.monotonic()
        engine.record_fill(A, "o1", "x-2", "6", "101")
        page.wait_for(f"{QTY} === '10'", timeout=10)
        assert time.monotonic() - started < 10
        assert page.evaluate("document.querySelectorAll('tr.event[data-type=\"OrderFilled\"]').length") == 2
        usage = page.evaluate(f"document.querySelector('tr.limit[data-limit=\"{A}/max_position_qty\"]').innerText")
        assert "20 %" in usage, usage  # 10 held of 50

        # the kill switch, engaged through the page (a protective action: no confirmation)
        _fill(page, "#account", A)
        _fill(page, "#reason", "console test: stop everything")
        _click(page, "#engage-kill-switch")
        page.wait_for(f"{RESULT}.includes('KillSwitchEngaged recorded')", timeout=10)
        page.wait_for(f"{KILL} === 'true'", timeout=10)
        assert page.dialogs == []
        refused = engine.record_intent(A, "o2", SYMBOL, "buy", "1")
        assert not refused.accepted and "kill_switch" in refused.refusal.reasons  # type: ignore[union-attr]
        page.wait_for("!!document.querySelector('tr.event[data-type=\"IntentRejectedByRisk\"]')", timeout=10)
        engaged = [(t, d) for _, t, d in operator_events(db_url)]
        assert engaged == [("KillSwitchEngaged", engaged[0][1])]
        assert engaged[0][1]["operator"] == "alice" and engaged[0][1]["reason"] == "console test: stop everything"

        shot = page.screenshot(str(tmp_path / "console.png"))
        assert shot.startswith(b"\x89PNG")
        variance, colours = _pixel_stats(shot)
        assert variance > 100 and colours > 20, (variance, colours)  # a blank page is one colour

        # releasing asks first: dismissed, nothing is recorded
        page.dismiss_dialogs = True
        before = head(db_url)
        _click(page, "#release-kill-switch")
        deadline = time.monotonic() + 5
        while not page.dialogs and time.monotonic() < deadline:
            time.sleep(0.05)
        assert page.dialogs and "Release the kill switch" in page.dialogs[0]
        time.sleep(1.0)
        assert head(db_url) == before and page.evaluate(f"{KILL}") == "true"
        # accepted: recorded, shown
        page.dismiss_dialogs = False
        _click(page, "#release-kill-switch")
        page.wait_for(f"{RESULT}.includes('KillSwitchReleased recorded')", timeout=10)
        page.wait_for(f"{KILL} === 'false'", timeout=10)
        assert len(page.dialogs) == 2
        assert [t for _, t, _ in operator_events(db_url)] == ["KillSwitchEngaged", "KillSwitchReleased"]
        assert operator_events(db_url)[-1][2]["operator"] == "alice"
        assert engine.record_intent(A, "o3", SYMBOL, "buy", "1").accepted

        # a safety gate left waiting by a recovery shows up, and is approved from the page
        waiting_gate(db_url, "gate-crashes-1", account=A, engine_id="eng-1")
        page.wait_for("!!document.querySelector('tr.gate[data-gate=\"gate-crashes-1\"]')", timeout=10)
        _fill(page, "#gate_id", "gate-crashes-1")
        _fill(page, "#reason", "looked at the crashes")
        _click(page, "#approve")
        page.wait_for(f"{RESULT}.includes('GateApproved recorded')", timeout=10)
        page.wait_for("!!document.querySelector('#no-gates')", timeout=10)
        assert "Approve this safety gate" in page.dialogs[-1]
        approved = operator_events(db_url)[-1]
        assert approved[1] == "GateApproved" and approved[2]["operator"] == "alice"
        assert approved[2]["gate_id"] == "gate-crashes-1"


def test_a_blank_screenshot_fails_the_check():
    """The non-blank check above can fail: a white PNG has no variance and one colour."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (200, 100), "white").save(out, format="PNG")
    variance, colours = _pixel_stats(out.getvalue())
    assert variance == 0 and colours == 1


# ------------------------------------------------------------------------------ plain HTTP
def test_the_console_needs_a_token_and_keeps_it_out_of_the_browser(sqlite_url):
    make_log(sqlite_url)
    with serving(sqlite_url, tokens=TOKENS, open_reads=True) as base, \
            httpx.Client(base_url=base, timeout=10) as http:
        # no session: the page sends to the login form; the fragment says 401 (htmx redirects)
        before = head(sqlite_url)
        r = http.get("/console")
        assert r.status_code == 303 and r.headers["location"] == "/console/login"
        r = http.get("/console/fragments/live", headers={"HX-Request": "true"})
        assert r.status_code == 401 and r.headers["HX-Redirect"] == "/console/login"
        assert "acct-1" not in r.text
        r = http.post("/console/control/kill-switch.engage", data={"account": A, "reason": "x"})
        assert r.status_code == 303 and head(sqlite_url) == before  # nothing appended
        # a wrong token: 401, no cookie
        r = http.post("/console/login", data={"token": "not-a-token"})
        assert r.status_code == 401 and COOKIE not in r.headers.get("set-cookie", "")
        # the right one: a session cookie, HttpOnly and SameSite=Strict, that is not the token
        r = http.post("/console/login", data={"token": ALICE})
        cookie = r.headers["set-cookie"]
        assert r.status_code == 303 and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert "Path=/console" in cookie and ALICE not in cookie
        page = http.get("/console")
        assert page.status_code == 200 and "alice" in page.text
        assert page.headers["X-Frame-Options"] == "DENY" and "frame-ancestors 'none'" in page.headers[
            "Content-Security-Policy"]
        assert not re.search(r"(src|href)=\"https?://", page.text)  # nothing fetched from elsewhere
        live = http.get("/console/fragments/live")
        assert live.status_code == 200 and 'data-key="acct-1/sim/AAPL"' in live.text
        # the session is the console's only: the API still wants a bearer token for a control
        assert http.post("/control/kill-switch.engage", json={"account": A, "reason": "x"}).status_code == 401
        js = http.get("/console/static/htmx.min.js")
        assert js.status_code == 200 and js.text.startswith("/*! htmx 2.0.4") and len(js.content) > 40_000
        assert "javascript" in js.headers["content-type"]
        assert http.get("/console/static/../app.py").status_code == 404


def test_a_forged_post_without_the_csrf_token_is_refused(sqlite_url):
    """A session's POST must carry its CSRF token (header or form field): without it, or with
    another, 403 and nothing appended; with it, the action is recorded under the token's name. A
    bearer-header request needs none (nothing a browser would send by itself)."""
    make_log(sqlite_url)
    with serving(sqlite_url, tokens=TOKENS) as base, httpx.Client(base_url=base, timeout=10) as http:
        csrf = login(http)
        before = head(sqlite_url)
        body = {"account": A, "reason": "forged"}
        for headers, data in (({}, body), ({"X-CSRF-Token": "guess"}, body), ({}, {**body, "csrf": "guess"})):
            r = http.post("/console/control/kill-switch.engage", data=data, headers=headers)
            assert r.status_code == 403 and "CSRF" in r.text, r.text
        assert head(sqlite_url) == before
        r = http.post("/console/control/kill-switch.engage", data={**body, "reason": "real"},
                      headers={"X-CSRF-Token": csrf, "HX-Request": "true"})
        assert r.status_code == 200 and "KillSwitchEngaged recorded" in r.text and r.headers["HX-Trigger"] == "refresh"
        r = http.post("/console/control/breaker.trip", data={"account": A, "reason": "form field", "csrf": csrf})
        assert r.status_code == 200 and "CircuitBreakerTripped recorded" in r.text
        # bad input: a readable 422, nothing appended
        at = head(sqlite_url)
        r = http.post("/console/control/resume", data={"account": A, "reason": "x", "ramp_pct": "60"},
                      headers={"X-CSRF-Token": csrf})
        assert r.status_code == 422 and "ramp" in r.text.lower()
        r = http.post("/console/control/limit", data={"account": A, "reason": " ", "limit": "max_order_qty",
                                                     "value": "5"}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 422 and head(sqlite_url) == at
        assert http.post("/console/control/nope", data=body, headers={"X-CSRF-Token": csrf}).status_code == 404
        # another client, bearer header: no cookie, no CSRF token needed; its own operator
    with serving(sqlite_url, tokens=TOKENS) as base, httpx.Client(base_url=base, timeout=10) as bob:
        r = bob.post("/console/control/kill-switch.release", data={"account": A, "reason": "by bob"},
                     headers={"Authorization": "Bearer bob-console-token-9876543210"})
        assert r.status_code == 200 and "KillSwitchReleased recorded" in r.text
    recorded = [(t, d["operator"], d["reason"]) for _, t, d in operator_events(sqlite_url)]
    assert recorded == [("KillSwitchEngaged", "alice", "real"), ("CircuitBreakerTripped", "alice", "form field"),
                        ("KillSwitchReleased", "bob", "by bob")]


def test_the_host_check_covers_the_console(sqlite_url):
    make_log(sqlite_url)
    with serving(sqlite_url, tokens=TOKENS) as base, httpx.Client(base_url=base, timeout=10) as http:
        csrf = login(http)
        for path in ("/console", "/console/login", "/console/fragments/live", "/console/static/htmx.min.js"):
            r = http.get(path, headers={"Host": "evil.example"})
            assert r.status_code == 421, path
        r = http.post("/console/control/kill-switch.engage", data={"account": A, "reason": "x"},
                      headers={"Host": "evil.example", "X-CSRF-Token": csrf})
        assert r.status_code == 421 and [t for _, t, _ in operator_events(sqlite_url)] == []
        r = http.post("/console/login", data={"token": ALICE}, headers={"Host": "evil.example"})
        assert r.status_code == 421 and "set-cookie" not in r.headers
        # a form on another site, posted to this server (its Host is right, its Origin is not)
        for origin in ("http://evil.example", "null", "http://127.0.0.1:1"):
            r = http.post("/console/control/kill-switch.engage", data={"account": A, "reason": "x", "csrf": csrf},
                          headers={"Origin": origin})
            assert r.status_code == 403 and "another site" in r.text, origin
            r = http.post("/console/login", data={"token": ALICE}, headers={"Origin": origin})
            assert r.status_code == 403 and "set-cookie" not in r.headers
        assert operator_events(sqlite_url) == []
        same = str(http.base_url).rstrip("/")
        r = http.post("/console/control/kill-switch.engage", data={"account": A, "reason": "same site", "csrf": csrf},
                      headers={"Origin": same})
        assert r.status_code == 200 and [t for _, t, _ in operator_events(sqlite_url)] == ["KillSwitchEngaged"]


def test_without_a_token_the_console_is_read_only(sqlite_url):
    make_log(sqlite_url)
    with serving(sqlite_url) as base, httpx.Client(base_url=base, timeout=10) as http:
        page = http.get("/console")
        assert page.status_code == 200 and "read-only" in page.text and "engage-kill-switch" not in page.text
        assert 'data-key="acct-1/sim/AAPL"' in http.get("/console/fragments/live").text
        before = head(sqlite_url)
        r = http.post("/console/control/kill-switch.engage", data={"account": A, "reason": "x"})
        assert r.status_code == 403 and "need a token" in r.text and head(sqlite_url) == before
        assert http.get("/console/login").status_code == 303


def test_the_templates_and_htmx_are_package_data():
    """``pip install .`` carries them (pyproject's package-data): the plain-install demo and a
    user's server need them."""
    here = files("tradestate.projections.http")
    for name in ("templates/console.html", "templates/console_live.html", "templates/console_login.html",
                 "static/htmx.min.js", "static/htmx.LICENSE.txt"):
        assert here.joinpath(name).is_file(), name
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    data = pyproject["tool"]["setuptools"]["package-data"]["tradestate.projections.http"]
    assert {"templates/*.html", "static/*.js", "static/*.txt"} <= set(data)


def test_pending_gates_and_discrepancies_are_shown():
    """The gates panel renders what the fold's ``pending_gates()`` gives (the safety gates of issue
    15 item 1), and the accounts with unresolved discrepancies; an empty one says so."""
    from datetime import datetime, timezone

    from tradestate.projections.http.console import templates

    at = datetime(2026, 12, 1, 14, 30, tzinfo=timezone.utc)
    base = {"health": {"status": "ok", "detail": "", "log_head": 9, "projection_position": 9, "lag_events": 0,
                       "lag_seconds": 0.0},
            "engines": [], "engines_error": "", "accounts": [], "positions": [], "open_orders": [],
            "positions_total": 0, "open_orders_total": 0,
            "timeline": [], "position": 9, "now": at, "prefix": "/console"}
    gate = {"gate_id": "g-crash-1", "gate": "repeated_crashes", "engine_id": "e1", "account": None,
            "detail": "4 crashes in 5 minutes <b>", "at": at}
    html = templates().get_template("console_live.html").render(
        **base, gates=[gate], discrepancies=[{"account": "acct-9", "unresolved_discrepancies": 2}])
    assert 'data-gate="g-crash-1"' in html and "repeated_crashes" in html and "every account" in html
    assert "&lt;b&gt;" in html and "<b>" not in html  # escaped
    assert '<option value="g-crash-1">' in html and "acct-9" in html
    empty = templates().get_template("console_live.html").render(**base, gates=[], discrepancies=[])
    assert "No gate waits for an approval." in empty and "No unresolved discrepancy." in empty


def test_a_log_that_cannot_be_read_is_said_on_the_page(tmp_path):
    """No log at the URL (yet): the page loads, the live panels say why they are empty (503,
    swapped in by htmx), and come back by themselves once it can be read."""
    url = f"sqlite:///{tmp_path}/later.db"
    with serving(url) as base, httpx.Client(base_url=base, timeout=10) as http:
        assert http.get("/console").status_code == 200
        r = http.get("/console/fragments/live")
        assert r.status_code == 503 and "cannot be read" in r.text
        make_log(url)
        r = http.get("/console/fragments/live")
        assert r.status_code == 200 and 'data-key="acct-1/sim/AAPL"' in r.text


def test_an_open_order_shows_its_pending_amendment_and_fees_to_come(sqlite_url):
    """From the client's own order pictures, as the live panel gets them (``open_orders``)."""
    from datetime import datetime, timezone

    from tests.support.projector_worker import Clock
    from tradestate.projections.http.console import templates

    with tradestate.connect(sqlite_url, clock=Clock()) as c:
        c.record_intent("a", "o1", "XYZ", "buy", 100, order_type="limit", limit_price="50", venue="IB")
        c.record_ack("a", "o1", "P1")
        c.record_fill("a", "o1", "X.01", 10, "50", fee_pending=True)
        c.request_replace("a", "o1", qty=120, replace_id="R1")
        orders = c.open_orders()
    at = datetime(2026, 12, 1, 14, 30, tzinfo=timezone.utc)
    html = templates().get_template("console_live.html").render(
        health={"status": "ok", "detail": "", "log_head": 9, "projection_position": 9, "lag_events": 0,
                "lag_seconds": 0.0},
        engines=[], engines_error="", accounts=[], positions=[], open_orders=orders, positions_total=0,
        open_orders_total=len(orders), timeline=[], position=9, now=at, prefix="/console", gates=[],
        discrepancies=[])
    assert "amendment R1 waits for the venue" in html and "fee to come for X.01" in html
