"""The operator console: a web page served by ``tradestate serve`` at ``/console``.

Server-rendered HTML (Jinja2 templates beside this file) with htmx (vendored in ``static/``, so
nothing is fetched from elsewhere at run time). The page polls one fragment
(``/console/fragments/live``) every two seconds: health, engines and leases, per-account risk
state and limit usage, positions, open orders, pending gates, discrepancies and the recent
timeline. The controls (the operator actions of ``tradestate.controls``) post to
``/console/control/<action>`` and are recorded exactly as ``POST /control/...`` records them: one
event each, with the operator named by the token and the reason typed in. Actions that let
trading go on or change what it may do ask for a confirmation first (``controls.PROTECTIVE`` ones,
the emergency brakes, do not).

What the console shows is the server's own fold of the log (the client that records the operator
actions, caught up at every poll), so it is current without a projector; the health panel reports
the read models' lag as ``/health`` does.

Authentication: the API's tokens. A browser cannot send a bearer header, so the login form takes
the token once and opens a session: a random id in an HttpOnly, SameSite=Strict cookie (the token
itself is never stored in the browser), kept in this process's memory (a restart logs everyone
out). Every POST of a session must carry the session's CSRF token (``X-CSRF-Token`` header, or
a ``csrf`` form field), and a POST whose ``Origin`` is another site is refused (login included).
A request with ``Authorization: Bearer`` is accepted too (no cookie, so no CSRF token is needed).
Without any token configured, the console is read-only (and served only on loopback, as the
server is). ``HostCheck`` applies to every console path.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ...domain.errors import AppendFailed, InvalidInput, TradestateError

PREFIX = "/console"
COOKIE = "tradestate_console"
SESSION_SECONDS = 12 * 3600
TIMELINE_EVENTS = 30
MAX_ROWS = 200  # positions and open orders shown per poll (the count says how many more)
MAX_FORM_BYTES = 16_384
HERE = Path(__file__).parent
STATIC = {
    "htmx.min.js": ("application/javascript; charset=utf-8", HERE / "static" / "htmx.min.js"),
    "htmx.LICENSE.txt": ("text/plain; charset=utf-8", HERE / "static" / "htmx.LICENSE.txt"),
}
LIMIT_NAMES = ("max_order_qty", "max_order_notional", "max_position_qty", "max_open_orders", "max_daily_trades",
               "max_daily_loss")


# ------------------------------------------------------------------------------ sessions
@dataclass(frozen=True)
class Session:
    """A logged-in browser: the operator its token names, and the CSRF token its POSTs carry."""

    sid: str
    operator: str
    csrf: str
    expires: float


class Sessions:
    """The console's sessions, in memory (a restart logs every browser out). Thread-safe."""

    def __init__(self, seconds: float = SESSION_SECONDS):
        self.seconds = seconds
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, operator: str) -> Session:
        """A new session for ``operator`` (expired ones are dropped on the way)."""
        now = time.monotonic()
        session = Session(secrets.token_urlsafe(32), operator, secrets.token_urlsafe(32), now + self.seconds)
        with self._lock:
            for sid in [s for s, v in self._by_id.items() if v.expires <= now]:
                del self._by_id[sid]
            self._by_id[session.sid] = session
        return session

    def get(self, sid: str | None) -> Session | None:
        """The live session of cookie value ``sid``, or None."""
        if not sid:
            return None
        with self._lock:
            session = self._by_id.get(sid)
            if session is not None and session.expires <= time.monotonic():
                del self._by_id[sid]
                return None
            return session

    def close(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)


@dataclass(frozen=True)
class Viewer:
    """Who is looking: ``operator`` (None on a server without tokens: read-only), and the session
    (None when the request carried a bearer header, or no token is configured)."""

    operator: str | None
    session: Session | None


def viewer(request: Request) -> Viewer | None:
    """The request's viewer, or None when it must log in first."""
    tokens = request.app.state.tokens
    if not tokens:
        return Viewer(None, None)
    operator = tokens.operator(request.headers)
    if operator is not None:
        return Viewer(operator, None)
    session = request.app.state.console_sessions.get(request.cookies.get(COOKIE))
    return Viewer(session.operator, session) if session is not None else None


async def form_of(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as a dict (first value of each name); no
    multipart parser needed. A body over ``MAX_FORM_BYTES`` or not UTF-8 is ``InvalidInput``."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise InvalidInput("form too large")
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise InvalidInput("the form is not UTF-8") from None
    return {name: values[0] for name, values in parsed.items()}


# ------------------------------------------------------------------------------ templates
def _templates() -> Any:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                             autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined)
    env.filters["num"] = _num
    env.filters["when"] = _when
    env.filters["pct"] = _pct
    return env


def _num(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, Decimal):
        text = f"{value.normalize():f}"
        return "0" if text in ("-0", "") else text
    return str(value)


def _when(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    return "–" if value is None else str(value)


def _pct(row: dict[str, Any]) -> str:
    """A limit's usage in percent of its effective value ("" when it has no usage measure)."""
    used, effective = row.get("used"), row.get("effective")
    if used is None or effective is None:
        return ""
    try:
        if Decimal(effective) == 0:
            return "100" if Decimal(used) > 0 else "0"
        return f"{(Decimal(used) * 100 / Decimal(effective)).quantize(Decimal(1))}"
    except (InvalidOperation, TypeError):
        return ""


_ENV: Any = None
_ENV_LOCK = threading.Lock()


def templates() -> Any:
    """The console's Jinja2 environment (built once; autoescaping on)."""
    global _ENV
    with _ENV_LOCK:
        if _ENV is None:
            _ENV = _templates()
        return _ENV


def render(name: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any) -> HTMLResponse:
    html = templates().get_template(name).render(prefix=PREFIX, **context)
    response = HTMLResponse(html, status_code=status, headers=headers)
    response.headers["Cache-Control"] = "no-store"
    # Nothing but this origin's scripts and styles; no framing (clickjacking of the controls).
    response.headers["Content-Security-Policy"] = ("default-src 'self'; style-src 'self' 'unsafe-inline'; "
                                                   "img-src 'self' data:; frame-ancestors 'none'")
    response.headers["X-Frame-Options"] = "DENY"
    return response


# ------------------------------------------------------------------------------ what is shown
def _health(request: Request) -> dict[str, Any]:
    from .. import queries
    from .routes import _lag_status

    settings = request.app.state.settings
    try:
        with request.app.state.reader.read() as tx:
            snap = queries.lag(tx)
    except queries.DatabaseUnavailable as e:
        return {"status": "unavailable", "detail": str(e).splitlines()[0] if str(e) else type(e).__name__}
    status = _lag_status(snap, settings)
    return {"status": status, "detail": "", "log_head": snap["log_head"],
            "projection_position": snap["projection_position"], "lag_events": snap["lag_events"],
            "lag_seconds": snap["lag_seconds"]}


def _engines(request: Request) -> tuple[list[dict[str, Any]], str]:
    try:
        return request.app.state.engines.rows(), ""
    except Exception as e:  # noqa: BLE001 - shown on the page, the rest still renders
        return [], f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _timeline(store: Any, head: int) -> list[dict[str, Any]]:
    from ...domain.state import VOID_TYPE
    from ...replay.log import LoggedEvent, describe

    rows = list(store.trading.iter_rows(max(0, head - TIMELINE_EVENTS), head))
    events = []
    for row in reversed(rows):
        if row[3] == VOID_TYPE:
            continue
        e = LoggedEvent.from_row(row)
        events.append({"position": e.position, "type": e.type, "at": e.recorded_at, "summary": describe(e)})
    return events


def snapshot(request: Request) -> dict[str, Any]:
    """Everything the live fragment shows, read in one go from the server's fold (caught up
    first) under the writer's lock, so the panels agree with each other."""
    from ...domain.risk import limit_usage

    health = _health(request)
    engines, engines_error = _engines(request)
    client = request.app.state.controls.client()
    with client.writer.lock:
        client.catch_up()
        state = client.state
        now = client.writer.now()
        accounts = []
        for name in sorted(state.accounts):
            risk = client.risk_state(name)
            risk["usage"] = limit_usage(state, name, now)
            accounts.append(risk)
        positions = [p for p in client.positions() if p["qty"] != 0 or p["realized_pnl"] != 0]
        open_orders = sorted(client.open_orders(), key=lambda o: (o["account"], o["client_order_id"]))
        pending = getattr(state, "pending_gates", None)  # the safety gates (issue 15 item 1), when present
        gates = list(pending()) if callable(pending) else []
        position = state.position
        timeline = _timeline(client.store, position)
    discrepancies = [a for a in accounts if a.get("unresolved_discrepancies")]
    return {"health": health, "engines": engines, "engines_error": engines_error, "accounts": accounts,
            "positions": positions[:MAX_ROWS], "positions_total": len(positions),
            "open_orders": open_orders[:MAX_ROWS], "open_orders_total": len(open_orders), "gates": gates,
            "discrepancies": discrepancies, "timeline": timeline, "position": position,
            "now": datetime.now(timezone.utc)}


# ------------------------------------------------------------------------------ the routes
router = APIRouter(prefix=PREFIX, include_in_schema=False)


def _cross_site(request: Request) -> Response | None:
    """403 for a POST sent by a page of another origin (its ``Origin`` names another host than the
    request's ``Host``): a form on another site cannot sign a browser in, out, or act. Browsers
    send ``Origin`` with every POST; a client without one (curl) is not a browser."""
    origin = request.headers.get("origin")
    if origin is None:
        return None
    from urllib.parse import urlsplit

    host = request.headers.get("host", "").lower()
    if origin == "null" or urlsplit(origin).netloc.lower() != host:
        return render("console_result.html", status=403, ok=False,
                      message="Refused: this form was sent from another site.")
    return None


def _login_page(request: Request, error: str = "", status: int = 200) -> HTMLResponse:
    return render("console_login.html", status=status, error=error)


def _needs_login(request: Request) -> Response:
    if request.headers.get("hx-request"):
        # htmx follows HX-Redirect: a page whose session ended goes back to the login form.
        return Response(status_code=401, headers={"HX-Redirect": f"{PREFIX}/login",
                                                  "WWW-Authenticate": "Bearer"})
    return RedirectResponse(f"{PREFIX}/login", status_code=303)


@router.get("/static/{name}")
def static(name: str) -> Response:
    """The vendored front-end files (public: nothing in them is secret)."""
    if name not in STATIC:
        return Response("not found", status_code=404, media_type="text/plain")
    media_type, path = STATIC[name]
    return Response(path.read_bytes(), media_type=media_type, headers={"Cache-Control": "max-age=3600"})


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> Response:
    if not request.app.state.tokens:
        return RedirectResponse(PREFIX, status_code=303)
    return _login_page(request)


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the token typed in; open a session (cookie) and go to the console, or say no (401)."""
    tokens = request.app.state.tokens
    if not tokens:
        return RedirectResponse(PREFIX, status_code=303)
    refusal = _cross_site(request)
    if refusal is not None:
        return refusal
    try:
        form = await form_of(request)
    except InvalidInput as e:
        return _login_page(request, str(e), 400)
    operator = tokens.operator({"authorization": f"Bearer {form.get('token', '').strip()}"})
    if operator is None:
        return _login_page(request, "That token is not one this server accepts.", 401)
    session = request.app.state.console_sessions.open(operator)
    response = RedirectResponse(PREFIX, status_code=303)
    response.set_cookie(COOKIE, session.sid, max_age=SESSION_SECONDS, path=PREFIX, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    refusal = _cross_site(request)
    if refusal is not None:
        return refusal
    who = viewer(request)
    if who is not None and who.session is not None:
        refusal = _csrf_refusal(request, who, await _safe_form(request))
        if refusal is not None:
            return refusal
        request.app.state.console_sessions.close(who.session.sid)
    response = RedirectResponse(f"{PREFIX}/login" if request.app.state.tokens else PREFIX, status_code=303)
    response.delete_cookie(COOKIE, path=PREFIX)
    return response


@router.get("", response_class=HTMLResponse)
def page(request: Request) -> Response:
    """The console page (the live panels load at once and every two seconds)."""
    who = viewer(request)
    if who is None:
        return _needs_login(request)
    return render("console.html", operator=who.operator, csrf=who.session.csrf if who.session else "",
                  can_act=who.operator is not None, limit_names=LIMIT_NAMES)


@router.get("/fragments/live", response_class=HTMLResponse)
def live(request: Request) -> Response:
    """The live panels (HTML fragment)."""
    who = viewer(request)
    if who is None:
        return _needs_login(request)
    try:
        data = snapshot(request)
    except (TradestateError, OSError) as e:
        return render("console_unavailable.html", status=503, error=f"{type(e).__name__}: {e}")
    except Exception as e:  # noqa: BLE001 - e.g. the database's own errors: a message, not a 500 page
        return render("console_unavailable.html", status=503, error=f"{type(e).__name__}: {str(e).splitlines()[0]}")
    return render("console_live.html", **data)


async def _safe_form(request: Request) -> dict[str, str]:
    try:
        return await form_of(request)
    except InvalidInput:
        return {}


def _csrf_refusal(request: Request, who: Viewer, form: dict[str, str]) -> Response | None:
    """403 for a session's POST without its CSRF token (a bearer request has none to carry)."""
    if who.session is None:
        return None
    given = request.headers.get("x-csrf-token") or form.get("csrf", "")
    if not hmac.compare_digest(given.encode(), who.session.csrf.encode()):
        return render("console_result.html", status=403, ok=False,
                      message="Refused: the form did not carry this session's CSRF token (reload the page).")
    return None


def _params(action: str, form: dict[str, str]) -> dict[str, Any]:
    """The ``controls.perform`` keywords of ``action`` from the form (blank fields are absent)."""
    def field(name: str) -> str | None:
        value = form.get(name, "").strip()
        return value or None

    params: dict[str, Any] = {"reason": form.get("reason", ""), "account": field("account")}
    if action == "resume":
        ramp = field("ramp_pct")
        if ramp is None or not ramp.isdigit():
            raise InvalidInput("resume: choose the ramp level (50, 75 or 100)")
        params["ramp_pct"] = int(ramp)
    elif action == "limit":
        params["limit"] = field("limit")
        params["value"] = field("value")  # blank: remove the limit
        params["symbol"] = field("symbol")
    elif action == "approve":
        params["gate_id"] = field("gate_id")
    return params


@router.post("/control/{action}", response_class=HTMLResponse)
async def act(action: str, request: Request) -> Response:
    """Record operator ``action`` (one of ``controls.ACTIONS``) from the console's form; answers a
    one-line fragment and triggers a refresh of the live panels."""
    from ...controls import ACTIONS, perform

    refusal = _cross_site(request)
    if refusal is not None:
        return refusal
    who = viewer(request)
    if who is None:
        return _needs_login(request)
    try:
        form = await form_of(request)
    except InvalidInput as e:
        return render("console_result.html", status=400, ok=False, message=str(e))
    refusal = _csrf_refusal(request, who, form)
    if refusal is not None:
        return refusal
    if who.operator is None:
        return render("console_result.html", status=403, ok=False,
                      message="Controls need a token and this server has none: serve with $TRADESTATE_API_TOKEN "
                              "or $TRADESTATE_API_TOKENS.")
    if action not in ACTIONS:
        return render("console_result.html", status=404, ok=False, message=f"unknown control {action!r}")

    def run() -> Any:
        return perform(request.app.state.controls.client(), action, operator=who.operator or "",
                       **_params(action, form))

    from starlette.concurrency import run_in_threadpool

    try:
        result = await run_in_threadpool(run)
    except InvalidInput as e:
        return render("console_result.html", status=422, ok=False, message=str(e))
    except AppendFailed as e:
        return render("console_result.html", status=503, ok=False, message=f"not recorded, retry: {e}")
    except TradestateError as e:
        return render("console_result.html", status=409, ok=False, message=str(e))
    what = result.account or result.gate_id or ""
    message = (f"{result.event_type} {'was already on record' if result.duplicate else 'recorded'} "
               f"at position {result.position} ({what}) by {result.operator}")
    return render("console_result.html", ok=True, message=message, headers={"HX-Trigger": "refresh"})
