"""Alerts: webhooks derived from the log (the log is the source of truth, alerts are a view of it).

An ``Alerter`` follows the trading log from where its delivery got to (a row per webhook in
``ts_alert_cursor`` beside the log), turns the events an operator must hear about into alerts
(``alert_for``) and hands them to a ``WebhookTarget``: a background thread with a bounded queue
that POSTs each alert as JSON, signed with HMAC-SHA256, retried with exponential backoff.

- Never blocking an append: the alerter only reads the log and writes its own cursor row (at
  most once a second, a one-row transaction); the writer never waits on it. A dead or hanging
  receiver fills the queue, and then the alerter stops reading until it drains: the backlog is
  the log itself.
- At least once: the cursor moves past an alert only once it was delivered (or dropped after
  ``max_attempts``, logged and counted), so a restart re-sends at most what was in flight. The
  event id is the alert's ``id`` and ``idempotency_key`` (also the ``X-Tradestate-Alert-Id``
  header): a receiver drops what it already has.
- Signature: ``X-Tradestate-Signature: sha256=<hex HMAC-SHA256 of the raw body with the shared
  secret>`` (no header without a secret). The body of an alert is the same bytes at every
  attempt; ``X-Tradestate-Delivery-Attempt`` counts the attempts.
- A first start begins at the log's head (history is not re-sent), unless ``start="beginning"``.

What alerts (``kind``): ``crash_detected`` (``LeaseExpired``; an ``EngineStarted`` whose previous
run never stopped), ``recovery_completed``, ``gate_waiting_approval`` (a ``GateEvaluated`` with
``requires_approval``), ``discrepancy`` (``DiscrepancyRecorded``), ``reconciliation_problem`` (a
``ReconciliationCompleted`` with status ``discrepancies`` or ``unknown``), ``trading_blocked``,
``breaker_tripped`` / ``breaker_reset``, ``kill_switch_engaged`` / ``kill_switch_released``,
``daily_limit_breached``, and ``projector_stalled`` (read models behind the log for more than
``stall_seconds``: not an event, checked at each tick; once per stall).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import queue
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from uuid import NAMESPACE_URL, uuid5

import orjson

from .adapters.store import Store, as_time
from .adapters.store.sql import read_cursor, redact, write_cursor
from .domain.errors import InvalidInput

log = logging.getLogger("tradestate.alerts")

CURSOR_TABLE = "ts_alert_cursor"
SIGNATURE_HEADER = "X-Tradestate-Signature"
ALERT_ID_HEADER = "X-Tradestate-Alert-Id"
ATTEMPT_HEADER = "X-Tradestate-Delivery-Attempt"
SEVERITIES = ("info", "warning", "critical")
ALERT_KINDS = ("crash_detected", "recovery_completed", "gate_waiting_approval", "discrepancy",
               "reconciliation_problem", "trading_blocked", "breaker_tripped", "breaker_reset",
               "kill_switch_engaged", "kill_switch_released", "daily_limit_breached", "projector_stalled")
_WATCHED = frozenset({"LeaseExpired", "EngineStarted", "RecoveryCompleted", "GateEvaluated", "DiscrepancyRecorded",
                      "ReconciliationCompleted", "TradingBlocked", "CircuitBreakerTripped", "CircuitBreakerReset",
                      "KillSwitchEngaged", "KillSwitchReleased", "DailyLimitBreached"})


# ------------------------------------------------------------------------------ what alerts


@dataclass(frozen=True)
class Alert:
    """One alert: ``id`` is the event id it came from (a uuid5 for a projector stall), ``position``
    the event's log position (0 for a stall)."""

    id: str
    kind: str
    severity: str
    summary: str
    position: int
    event: dict[str, Any] = field(default_factory=dict)

    def body(self, source: str = "") -> bytes:
        """The JSON body POSTed (the same bytes at every attempt, keys sorted)."""
        return orjson.dumps({
            "id": self.id, "idempotency_key": self.id, "kind": self.kind, "severity": self.severity,
            "summary": self.summary, "position": self.position, "source": source, "event": self.event,
        }, option=orjson.OPT_SORT_KEYS)


def sign(secret: str | bytes, body: bytes) -> str:
    """The ``X-Tradestate-Signature`` value of ``body``: ``sha256=`` and the hex HMAC-SHA256."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify(secret: str | bytes, body: bytes, signature: str | None) -> bool:
    """Whether ``signature`` (the header's value) signs ``body`` with ``secret`` (constant time)."""
    return bool(signature) and hmac.compare_digest(sign(secret, body), signature or "")


def alert_for(row: Sequence[Any], *, crashed_before: Callable[[str, int], bool] | None = None) -> Alert | None:
    """The alert of one log row ``(position, stream_id, version, type, data, recorded_at)``, or None.
    ``crashed_before(engine_id, position)`` tells whether the engine's previous run, before an
    ``EngineStarted`` at ``position``, never stopped (None: such starts do not alert)."""
    position, stream, _version, type_name, data, recorded_at = row[:6]
    if type_name not in _WATCHED:
        return None
    try:
        d = orjson.loads(bytes(data))
    except orjson.JSONDecodeError:
        return None
    if not isinstance(d, dict):
        return None
    account = d.get("account") or ""
    engine = d.get("engine_id") or ""
    got = _classify(type_name, d, account, engine, position, crashed_before)
    if got is None:
        return None
    kind, severity, summary = got
    event = {"type": type_name, "position": position, "stream": stream,
             "recorded_at": as_time(recorded_at).astimezone(timezone.utc).isoformat(), "data": d}
    event_id = str(d.get("event_id") or uuid5(NAMESPACE_URL, f"tradestate-event:{stream}:{position}"))
    return Alert(event_id, kind, severity, summary, position, event)


def _classify(type_name: str, d: dict[str, Any], account: str, engine: str, position: int,
              crashed_before: Callable[[str, int], bool] | None) -> tuple[str, str, str] | None:
    if type_name == "LeaseExpired":
        return ("crash_detected", "critical", f"engine {engine} is dead: its lease (epoch {d.get('epoch')}, holder "
                f"{d.get('holder')}) expired unrenewed; detected by {d.get('detected_by')}")
    if type_name == "EngineStarted":
        if crashed_before is not None and engine and crashed_before(engine, position):
            return ("crash_detected", "critical", f"engine {engine} started again without a clean stop of its "
                                                  "previous run: it crashed")
        return None
    if type_name == "RecoveryCompleted":
        ready = bool(d.get("ready"))
        return ("recovery_completed", "info" if ready else "critical",
                f"recovery of engine {engine} {'completed: ready to trade' if ready else 'completed: NOT ready'}"
                f"{' after a crash' if d.get('crashed') else ''} ({d.get('discrepancies', 0)} discrepancies, "
                f"{d.get('corrective_events', 0)} corrective events)")
    if type_name == "GateEvaluated":
        # Another part of tradestate records gates; read defensively by key, never by schema.
        if not d.get("requires_approval"):
            return None
        gate = d.get("gate") or "?"
        where = f" for {account}" if account else (f" for engine {engine}" if engine else "")
        return ("gate_waiting_approval", "critical", f"safety gate {gate}{where} waits for an operator's approval"
                f"{': ' + str(d['reason']) if d.get('reason') else ''}")
    if type_name == "DiscrepancyRecorded":
        return ("discrepancy", "warning", f"discrepancy {d.get('kind')} on order {d.get('client_order_id')} of "
                f"{account} ({d.get('symbol')}): {d.get('detail') or ''}".rstrip(": "))
    if type_name == "ReconciliationCompleted":
        status = d.get("status")
        if status not in ("discrepancies", "unknown"):
            return None
        n = len(d.get("discrepancies") or ())
        errors = d.get("errors") or []
        return ("reconciliation_problem", "warning", f"reconciliation of {account} with {d.get('broker')} "
                f"{d.get('venue')}: {status} ({n} discrepancies{'; ' + str(errors[0]) if errors else ''})")
    if type_name == "TradingBlocked":
        return ("trading_blocked", "critical", f"trading of {account} is blocked: {d.get('reason')}")
    if type_name == "CircuitBreakerTripped":
        return ("breaker_tripped", "critical", f"circuit breaker of {account} tripped: {d.get('reason')}"
                + (f" (until {d['until']})" if d.get("until") else ""))
    if type_name == "CircuitBreakerReset":
        return ("breaker_reset", "info", f"circuit breaker of {account} reset" +
                (f": {d['reason']}" if d.get("reason") else ""))
    if type_name == "KillSwitchEngaged":
        return ("kill_switch_engaged", "critical", f"kill switch of {account} engaged by {d.get('by')}: "
                f"{d.get('reason')}")
    if type_name == "KillSwitchReleased":
        return ("kill_switch_released", "info", f"kill switch of {account} released by {d.get('by')}" +
                (f": {d['reason']}" if d.get("reason") else ""))
    if type_name == "DailyLimitBreached":
        return ("daily_limit_breached", "critical", f"{account} breached {d.get('limit')} on {d.get('trading_day')}: "
                f"{d.get('value')} against {d.get('threshold')}")
    return None


def previous_run_crashed(store: Store, engine_id: str, position: int) -> bool:
    """Whether the engine's last run before ``position`` started and never stopped, lost its lease
    or was recovered: the ``EngineStarted`` at ``position`` follows a crash."""
    from .domain.ids import engine_stream_id

    running = False
    for e in store.trading.read_stream(engine_stream_id(engine_id)):
        if e.position >= position:
            break
        if e.topic == "EngineStarted":
            running = True
        elif e.topic in ("EngineStopped", "LeaseReleased", "LeaseExpired", "RecoveryCompleted"):
            running = False  # a stop, or a crash already alerted (LeaseExpired) or recovered
    return running


# ------------------------------------------------------------------------------ delivery


class WebhookTarget:
    """POSTs alerts to one URL from a daemon thread, in order, each retried with exponential
    backoff (``backoff[0]`` doubling up to ``backoff[1]`` seconds) up to ``max_attempts`` times,
    each attempt bounded by ``timeout`` seconds. ``offer`` never waits: False when the queue
    (``queue_size`` alerts) is full. Counters: ``delivered``, ``dropped``, ``attempts``,
    ``failures``; ``last_error``. ``delivered_position``: the log position of the last alert
    done with (delivered or dropped)."""

    def __init__(self, url: str, secret: str | None = None, *, timeout: float = 5.0, max_attempts: int = 10,
                 backoff: tuple[float, float] = (0.5, 60.0), queue_size: int = 1000, source: str = ""):
        if not url.startswith(("http://", "https://")):
            raise InvalidInput(f"alert URL {redact(url)!r} is not http:// or https://")
        if timeout <= 0 or max_attempts < 1 or not (0 < backoff[0] <= backoff[1]) or queue_size < 1:
            raise InvalidInput("alert delivery: timeout > 0, max_attempts >= 1, 0 < backoff first <= cap, "
                               "queue_size >= 1")
        self.url = url
        self.secret = secret or None
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.source = source
        self.name = "webhook:" + hashlib.sha256(url.encode()).hexdigest()[:16]  # the cursor's key
        self.queue: queue.Queue[Alert] = queue.Queue(maxsize=queue_size)
        self.delivered = self.dropped = self.attempts = self.failures = 0
        self.delivered_position = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def offer(self, alert: Alert) -> bool:
        """Queue ``alert`` for delivery; False (nothing queued) when the queue is full."""
        try:
            self.queue.put_nowait(alert)
        except queue.Full:
            return False
        return True

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being delivered."""
        return self.queue.unfinished_tasks == 0

    def start(self) -> None:
        """Start the delivery thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tradestate-alert-delivery", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop delivering (an alert mid-retry is abandoned: it stays before the cursor and is sent
        again at the next start)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                alert = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.deliver(alert)
                if not self._stop.is_set():  # delivered or dropped: done with it
                    self.delivered_position = max(self.delivered_position, alert.position)
            finally:
                self.queue.task_done()
            if self._stop.is_set():
                return

    def deliver(self, alert: Alert) -> bool:
        """POST ``alert`` until a 2xx answer, retrying with backoff; True when delivered, False when
        dropped after ``max_attempts`` (or stopped)."""
        body = alert.body(self.source)
        wait = self.backoff[0]
        for attempt in range(1, self.max_attempts + 1):
            if self._stop.is_set():
                return False
            self.attempts += 1
            try:
                self._post(body, alert, attempt)
            except Exception as e:  # noqa: BLE001 - any failure is retried, then dropped
                self.failures += 1
                self.last_error = f"{type(e).__name__}: {e}"[:500]
                if attempt == self.max_attempts:
                    break
                self._stop.wait(wait)
                wait = min(wait * 2, self.backoff[1])
                continue
            self.delivered += 1
            self.last_error = None
            return True
        if not self._stop.is_set():
            self.dropped += 1
            log.error("alert %s (%s) to %s dropped after %d attempts: %s", alert.id, alert.kind, redact(self.url),
                      self.max_attempts, self.last_error)
        return False

    def _post(self, body: bytes, alert: Alert, attempt: int) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": "tradestate-alerts",
                   ALERT_ID_HEADER: alert.id, ATTEMPT_HEADER: str(attempt)}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - http(s) checked
            response.read(65536)
            if not 200 <= response.status < 300:
                raise RuntimeError(f"HTTP {response.status}")


# ------------------------------------------------------------------------------ following


def ensure_cursor_table(store: Store) -> None:
    """Create ``ts_alert_cursor`` (one row per webhook: the log position delivery got to, and the
    projection position of the last stall alerted) if it is not there."""
    d = store.dialect
    with read_cursor(store) as cur:
        if d.table_exists(cur, CURSOR_TABLE):
            return
    with write_cursor(store) as cur:
        d.ddl_lock(cur)
        cur.execute(f"CREATE TABLE IF NOT EXISTS {d.name(CURSOR_TABLE)} (sink text PRIMARY KEY, "
                    f"position bigint NOT NULL, stall_position bigint NOT NULL, url text NOT NULL, "
                    f"updated_at {d.type('time')})")


def read_cursor_position(store: Store, sink: str) -> tuple[int, int] | None:
    """(position, stall position) recorded for ``sink``, or None when it never delivered."""
    d = store.dialect
    with read_cursor(store) as cur:
        if not d.table_exists(cur, CURSOR_TABLE):
            return None
        cur.execute(f"SELECT position, stall_position FROM {d.name(CURSOR_TABLE)} WHERE sink = {d.param}", (sink,))
        row = cur.fetchone()
    return None if row is None else (int(row[0]), int(row[1]))


def _save_cursor(store: Store, sink: str, url: str, position: int, stall_position: int) -> None:
    d, p = store.dialect, store.dialect.param
    now = datetime.now(timezone.utc)
    with write_cursor(store) as cur:
        cur.execute(f"INSERT INTO {d.name(CURSOR_TABLE)} (sink, position, stall_position, url, updated_at) "
                    f"VALUES ({p}, {p}, {p}, {p}, {p}) ON CONFLICT (sink) DO UPDATE SET "
                    "position = excluded.position, stall_position = excluded.stall_position, "
                    "updated_at = excluded.updated_at",
                    (sink, position, stall_position, redact(url), d.time_value(now)))


def projection_lag(store: Store) -> tuple[int, int, float]:
    """(log head, projected position, seconds the oldest unprojected event has waited; 0 when
    caught up or when no projector ever ran)."""
    from .projections.projector import PROJECTION
    from .projections.tables import TRACKING_TABLE

    d, p = store.dialect, store.dialect.param
    events = d.name(store.trading.table)
    with read_cursor(store) as cur:
        cur.execute(f"SELECT coalesce(max(position), 0) FROM {events}")
        head = int(cur.fetchone()[0])
        if not d.table_exists(cur, TRACKING_TABLE):
            return head, head, 0.0  # no read models here: nothing can stall
        cur.execute(f"SELECT position FROM {d.name(TRACKING_TABLE)} WHERE projection = {p}", (PROJECTION,))
        row = cur.fetchone()
        tracked = int(row[0]) if row else 0
        if head <= tracked:
            return head, tracked, 0.0
        cur.execute(f"SELECT recorded_at FROM {events} WHERE position > {p} ORDER BY position LIMIT 1", (tracked,))
        row = cur.fetchone()
    oldest = as_time(row[0]) if row else None
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=timezone.utc)
    waited = (datetime.now(timezone.utc) - oldest).total_seconds() if oldest else 0.0
    return head, tracked, max(0.0, waited)


class Alerter:
    """Follows the log of ``store`` for one ``WebhookTarget``; ``tick()`` does one round (read up
    to ``page`` rows after the read position, queue their alerts, check the projector, save the
    cursor). ``start()`` runs ticks every ``every`` seconds in a daemon thread; errors (the
    database away) are counted and retried at the next tick, never raised from the thread.

    ``stall_seconds``: alert ``projector_stalled`` when the oldest unprojected event has waited
    longer (None: no stall check)."""

    def __init__(self, store: Store, target: WebhookTarget, *, every: float = 0.5, page: int = 2000,
                 stall_seconds: float | None = 60.0, start: str = "head", cursor_every: float = 1.0):
        if every <= 0 or page < 1 or (stall_seconds is not None and stall_seconds <= 0):
            raise InvalidInput("alerts: every > 0, page >= 1, stall_seconds > 0")
        if start not in ("head", "beginning"):
            raise InvalidInput("alerts: start must be 'head' or 'beginning'")
        self.store = store
        self.target = target
        self.every = every
        self.page = page
        self.stall_seconds = stall_seconds
        self.start_at = start
        self.cursor_every = cursor_every
        self.read_position: int | None = None  # None: not loaded yet
        self.saved_position = -1
        self.stall_position = -1  # the projected position of the last stall alerted
        self.ticks = self.errors = self.queued = 0
        self.last_error: str | None = None
        self._held: Alert | None = None  # read but not queued (the queue was full)
        self._saved_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _load(self) -> None:
        ensure_cursor_table(self.store)
        got = read_cursor_position(self.store, self.target.name)
        if got is None:
            position = self.store.trading.head() if self.start_at == "head" else 0
            _save_cursor(self.store, self.target.name, self.target.url, position, -1)
            got = (position, -1)
        self.read_position, self.stall_position = got
        self.saved_position = got[0]
        self.target.delivered_position = got[0]

    def tick(self) -> int:
        """One round; returns the alerts queued. Raises on a database error (``start``'s thread
        catches it)."""
        with self._lock:
            self.ticks += 1
            if self.read_position is None:
                self._load()
            assert self.read_position is not None
            queued = 0
            if self._held is not None:
                if not self.target.offer(self._held):
                    self._save()
                    return 0
                self.read_position, self._held, queued = self._held.position, None, 1
            if self.stall_seconds is not None:
                queued += self._check_stall()
            for n, row in enumerate(self.store.trading.iter_rows(self.read_position, batch=self.page)):
                if n >= self.page:
                    break  # bounded rounds: the rest at the next tick
                position = row[0]
                alert = alert_for(row, crashed_before=lambda e, p: previous_run_crashed(self.store, e, p))
                if alert is not None:
                    if not self.target.offer(alert):
                        self._held = alert  # back-pressure: read no further until the queue drains
                        break
                    queued += 1
                self.read_position = position
            self.queued += queued
            self._save()
            return queued

    def _check_stall(self) -> int:
        head, tracked, waited = projection_lag(self.store)
        if waited <= (self.stall_seconds or 0) or tracked == self.stall_position:
            return 0
        alert = Alert(str(uuid5(NAMESPACE_URL, f"tradestate-projector-stalled:{self.store.display_url}:{tracked}")),
                      "projector_stalled", "critical",
                      f"the read models are stalled at position {tracked} of {head}: the oldest unprojected "
                      f"event has waited {waited:.0f} s (threshold {self.stall_seconds:g} s)", 0,
                      {"type": "ProjectorStalled", "head": head, "projection_position": tracked,
                       "lag_events": head - tracked, "lag_seconds": round(waited, 3)})
        if not self.target.offer(alert):
            return 0  # tried again next tick
        self.stall_position = tracked
        return 1

    def _save(self, *, force: bool = False) -> None:
        # Delivery is in order on one thread: when it is idle every alert read was handled, else
        # it got as far as the last alert it finished.
        assert self.read_position is not None
        done = self.read_position if self.target.idle and self._held is None else \
            max(self.saved_position, min(self.target.delivered_position, self.read_position))
        now = time.monotonic()
        if done == self.saved_position and not force:
            return
        if not force and now - self._saved_at < self.cursor_every:
            return
        _save_cursor(self.store, self.target.name, self.target.url, done, self.stall_position)
        self.saved_position, self._saved_at = done, now

    # ---------------------------------------------------------------------------- running
    def start(self) -> None:
        """Start delivering and following (daemon threads); idempotent."""
        self.target.start()
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tradestate-alerter", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last_logged = 0.0
        while not self._stop.is_set():
            try:
                self.tick()
                self.last_error = None
            except Exception as e:  # noqa: BLE001 - a side duty: retried at the next tick
                self.errors += 1
                self.last_error = f"{type(e).__name__}: {e}"[:500]
                if time.monotonic() - last_logged >= 60.0:
                    last_logged = time.monotonic()
                    log.warning("alerts (retrying every %g s): %s", self.every, self.last_error)
            self._stop.wait(self.every)

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait (at most ``timeout`` s) until the log as it is now was read and every alert in it
        delivered (or dropped); True if so. Needs ``start()`` (or ticks from another thread)."""
        deadline = time.monotonic() + timeout
        head = self.store.trading.head()
        while time.monotonic() < deadline:
            if (self.read_position or 0) >= head and self.target.idle and self._held is None:
                return True
            time.sleep(0.02)
        return False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop following and delivering, and save how far delivery got."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.target.stop(timeout)
        if self.read_position is not None:
            try:
                with self._lock:
                    self._save(force=True)
            except Exception as e:  # noqa: BLE001 - the next start re-sends from the last saved position
                log.warning("alerts: could not save the delivery position: %s", e)

    def status(self) -> dict[str, Any]:
        """Counters for an operator (and tests)."""
        t = self.target
        return {"url": redact(t.url), "read_position": self.read_position, "saved_position": self.saved_position,
                "queued": self.queued, "delivered": t.delivered, "dropped": t.dropped, "attempts": t.attempts,
                "failures": t.failures, "errors": self.errors, "last_error": self.last_error or t.last_error,
                "backlog": t.queue.qsize()}


class AlertService:
    """One ``Alerter`` per URL over one store (each with its own cursor: a dead receiver holds back
    only its own alerts). ``start``/``stop``/``status`` act on all of them."""

    def __init__(self, store: Store, urls: Sequence[str], secret: str | None = None, *, stall_seconds: float | None = 60.0,
                 every: float = 0.5, start: str = "head", **target_options: Any):
        if not urls:
            raise InvalidInput("alerts: no URL (set TRADESTATE_ALERT_URL or [alert] url)")
        source = store.display_url
        self.alerters = [Alerter(store, WebhookTarget(u, secret, source=source, **target_options), every=every,
                                 stall_seconds=stall_seconds, start=start) for u in dict.fromkeys(urls)]

    def start(self) -> None:
        """Start every alerter."""
        for a in self.alerters:
            a.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop every alerter (saving how far each got)."""
        for a in self.alerters:
            a.stop(timeout)

    def status(self) -> list[dict[str, Any]]:
        """Each alerter's counters."""
        return [a.status() for a in self.alerters]


def parse_urls(value: str | Sequence[str] | None) -> list[str]:
    """Alert URLs from a setting: a list, or one string separated by commas or whitespace."""
    if not value:
        return []
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    return [u.strip() for u in items if u and u.strip()]



class BackgroundAlerts:
    """An ``AlertService`` over the log at ``url`` for a process that must start whether or not
    the database is there yet (``tradestate serve``): a daemon thread opens the store (retrying
    every ``retry`` seconds, logging at most once a minute) and then runs the service."""

    def __init__(self, url: str, urls: Sequence[str], secret: str | None = None, *, retry: float = 5.0,
                 **options: Any):
        if not urls:
            raise InvalidInput("alerts: no URL (set TRADESTATE_ALERT_URL or [alert] url)")
        for u in urls:
            WebhookTarget(u)  # bad URLs fail now, not in the thread
        self.url, self.urls, self.secret, self.retry, self.options = url, list(urls), secret, retry, options
        self.service: AlertService | None = None
        self._store: Store | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start opening the store and then alerting (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tradestate-alerts-open", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from .adapters.store import open_store

        last_logged = 0.0
        while not self._stop.is_set():
            try:
                self._store = open_store(self.url, create=False)
            except Exception as e:  # noqa: BLE001 - retried: the database may come later
                if time.monotonic() - last_logged >= 60.0:
                    last_logged = time.monotonic()
                    log.warning("alerts: cannot open the log yet (retrying every %g s): %s", self.retry, e)
                self._stop.wait(self.retry)
                continue
            self.service = AlertService(self._store, self.urls, self.secret, **self.options)
            self.service.start()
            return

    def stop(self, timeout: float = 5.0) -> None:
        """Stop alerting (saving how far delivery got) and close the store."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.service is not None:
            self.service.stop(timeout)
        if self._store is not None:
            self._store.close()
            self._store = None

    def status(self) -> list[dict[str, Any]]:
        """Each alerter's counters (empty until the store was opened)."""
        return self.service.status() if self.service is not None else []


def service_options(settings: Any) -> dict[str, Any]:
    """``AlertService`` arguments from ``tradestate.settings.Settings``: urls, secret, stall_seconds."""
    secret = settings.alert_secret.get_secret_value() if settings.alert_secret is not None else None
    return {"urls": list(settings.alert_url), "secret": secret, "stall_seconds": settings.alert_stall_seconds}


__all__ = ["ALERT_KINDS", "Alert", "AlertService", "Alerter", "BackgroundAlerts", "WebhookTarget", "alert_for",
           "parse_urls", "projection_lag", "service_options", "sign", "verify"]
