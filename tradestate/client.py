"""The Python client a trading engine appends through.

Every call follows the same path: catch up with the log, let the domain decide against that
state, append the decided events in one durable transaction with optimistic concurrency on each
stream they touch, and only then return. A conflict (another engine wrote to the same stream)
re-runs the decision on fresh state, a bounded number of times. An ambiguous failure (the
connection dropped during commit) does the same: re-deciding on the re-read log finds our own
events if they landed, and the call returns them instead of writing twice.
"""

from __future__ import annotations

import gc
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import orjson
from prometheus_client import Counter, Histogram
from pydantic import ValidationError

from .adapters.store import Store, gc_paused, new_event, open_store
from .domain import events as ev
from .domain import orders as rules
from .domain.errors import (
    AppendFailed,
    TradestateError,
    ConcurrencyConflict,
    IdempotencyConflict,
    InvalidInput,
    UnknownOrder,
)
from .domain.ids import (
    account_stream_id,
    bar_stream_id,
    engine_stream_id,
    order_stream_id,
    strategy_stream_id,
)
from .domain.state import AccountState, TradingState

# Process-wide metrics (the default Prometheus registry): `tradestate serve` includes them when it
# runs in the engine's process, and engines can expose them with prometheus_client themselves.
APPENDS = Counter("tradestate_appends_total", "Append transactions by outcome", ["outcome"])
EVENTS_APPENDED = Counter("tradestate_events_appended_total", "Events made durable by this process")
APPEND_SECONDS = Histogram(
    "tradestate_append_seconds", "Durable append latency (commit included)",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
REFUSALS = Counter("tradestate_intent_refusals_total", "Intents refused by the pre-trade check", ["reason"])


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Recorded:
    """Where a fact now stands in the log."""

    position: int  # global position of the recorded event
    event_id: UUID | None = None
    duplicate: bool = False  # True: it was recorded before; nothing new was appended
    discrepancy: str | None = None  # set when a venue fact contradicted us and was recorded as such


@dataclass(frozen=True)
class RiskRefusal:
    reasons: list[str]
    detail: str


@dataclass(frozen=True)
class IntentResult:
    position: int  # global position of the intent
    order_stream: str
    refusal: RiskRefusal | None = None
    duplicate: bool = False
    event_id: UUID | None = None

    @property
    def accepted(self) -> bool:
        return self.refusal is None


@dataclass
class ClientStats:
    appends: int = 0
    conflicts: int = 0
    retries: int = 0
    refusals: int = 0
    checkpoint_failures: int = 0


def _build(cls: type[ev.Event], **fields: Any) -> Any:
    """Validate input at the edge: a clear, typed error and nothing appended."""
    try:
        return cls(**fields)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'input'}: {err['msg']}" for err in e.errors()
        )
        raise InvalidInput(f"{cls.__name__}: {problems}") from None
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"{cls.__name__}: {e}") from None


class TradestateClient:
    def __init__(
        self,
        store: Store,
        *,
        clock: Callable[[], datetime] = _utc_now,
        new_id: Callable[[], UUID] = uuid4,
        exchange_tz: str = "America/New_York",
        max_attempts: int = 8,
        max_failures: int = 3,
        use_checkpoints: bool = True,
        checkpoint_every: int | None = None,
        checkpoint_seconds: float = 60.0,
        initial_state: TradingState | None = None,
    ):
        """``use_checkpoints``: start from the newest valid checkpoint and fold only the tail
        (``self.loaded`` says which was used and which were refused). ``checkpoint_every``:
        write a checkpoint every that many events (or ``checkpoint_seconds``) after an append."""
        self.store = store
        self.clock = clock
        self.new_id = new_id
        self.max_attempts = max_attempts  # conflicts with other writers: decide again
        self.max_failures = max_failures  # database failures: re-read, decide again, then give up
        self.state = TradingState(exchange_tz)
        self.stats = ClientStats()
        self._lock = threading.RLock()
        self._attempt: list[tuple[str, int, str, dict[str, Any], bytes]] = []
        self.loaded = None
        if initial_state is not None:  # recovery folded it already (checkpoint + tail)
            self.state = initial_state
        elif use_checkpoints:
            from .adapters.store import checkpoints

            self.loaded = checkpoints.load(store)
            if self.loaded.state is not None and self.loaded.state.exchange_tz == exchange_tz:
                self.state = self.loaded.state
        self.catch_up()
        self.checkpointer = None
        if checkpoint_every is not None:
            from .adapters.store.checkpoints import Checkpointer

            self.checkpointer = Checkpointer(store, every_events=checkpoint_every, every_seconds=checkpoint_seconds)

    # ------------------------------------------------------------------------ log plumbing
    def catch_up(self) -> int:
        """Fold every event appended since our last look; returns the position reached."""
        with self._lock, gc_paused():
            apply = self.state.apply
            loads = orjson.loads
            start = self.state.position
            for position, stream, version, type_name, data, recorded_at in self.store.trading.iter_rows(start):
                apply(position, stream, version, type_name, loads(data), recorded_at)
            if self.state.position - start > 10_000:
                # A big fold leaves a big, long-lived state: keep the collector from rescanning
                # it on every full collection while the engine trades.
                gc.freeze()
            return self.state.position

    def _wait_past_holes(self, budget: float = 3.0) -> None:  # noqa: C901
        """After a conflict: if our fold is held below the head by a hole (an append in flight,
        or positions a crashed server skipped, voided by readers after ``gap_timeout``), wait for
        it to clear rather than spend the retries deciding on a state we know is behind."""
        deadline = time.monotonic() + budget
        try:
            while self.catch_up() < self.store.trading.head() and time.monotonic() < deadline:
                time.sleep(0.05)
        except Exception:  # noqa: BLE001 - the retry's own catch-up reports database errors
            return

    def _catch_up_to_record(self) -> None:
        """``catch_up`` before deciding a call: a log that cannot be read means nothing can be
        recorded, said with the documented error (not the driver's OperationalError/PoolTimeout)."""
        try:
            self.catch_up()
        except TradestateError:
            raise
        except Exception as e:  # noqa: BLE001 - psycopg, psycopg_pool, sqlite3, eventsourcing errors
            APPENDS.labels("failed").inc()
            raise AppendFailed(
                f"the log cannot be read ({type(e).__name__}: {e}); nothing was appended by this call "
                "(retrying the same call is safe)"
            ) from e

    def _now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None:
            raise InvalidInput("the client's clock returned a naive datetime")
        return now.astimezone(timezone.utc)

    def _append(self, decision: rules.Append) -> list[int]:
        """Append decided events (each at its stream's next version) and fold them."""
        versions: dict[str, int] = {}
        attempt = []
        for stream, event in decision.events:
            version = versions.get(stream, self.state.stream_versions.get(stream, 0)) + 1
            versions[stream] = version
            payload = event.to_payload()
            attempt.append((stream, version, event.type_name(), payload, orjson.dumps(payload)))
        self._attempt = attempt
        stored = [new_event(stream, version, type_name, data) for stream, version, type_name, _, data in attempt]
        started = time.perf_counter()
        try:
            appended = self.store.trading.append(stored)
        except ConcurrencyConflict:
            APPENDS.labels("conflict").inc()
            raise
        except AppendFailed:
            APPENDS.labels("failed").inc()
            raise
        elapsed = time.perf_counter() - started
        APPEND_SECONDS.observe(elapsed)
        APPENDS.labels("ok").inc()
        EVENTS_APPENDED.inc(len(stored))
        self.stats.appends += 1
        if appended[0].position == self.state.position + 1:
            # Nobody wrote in between: fold what we wrote without reading it back.
            for (stream, version, type_name, payload, _), a in zip(attempt, appended, strict=True):
                if a.position == self.state.position + 1:
                    self.state.apply(a.position, stream, version, type_name, payload, a.recorded_at)
        return [a.position for a in appended]

    def _landed(self, attempt: list[tuple[str, int, str, dict[str, Any], bytes]]) -> list[int] | None:
        """After an ambiguous failure: the positions of our events if the commit did happen
        (same stream version, same bytes), else None. One transaction: all landed or none."""
        try:
            positions = []
            for stream, version, _type, _payload, data in attempt:
                rows = self.store.trading.read_stream(stream, version - 1)
                if not rows or rows[0].originator_version != version or bytes(rows[0].state) != data:
                    return None
                positions.append(rows[0].position)
            self.catch_up()
            return positions
        except Exception:  # noqa: BLE001 - the database is still unreachable: we cannot know yet
            return None

    def _record(self, decide: Callable[[], rules.Decision]) -> tuple[rules.Decision, list[int]]:
        """Catch up, decide, append; on conflict or an ambiguous failure, decide again."""
        last_error: Exception | None = None
        failures = 0
        for attempt in range(self.max_attempts):
            if attempt:
                self.stats.retries += 1
                time.sleep(min(0.05, 0.001 * 2**attempt) * random.random())
            with self._lock:
                self._catch_up_to_record()
                decision = decide()
                if isinstance(decision, rules.AlreadyRecorded):
                    return decision, [decision.position]
                try:
                    positions = self._append(decision)
                    if self.checkpointer is not None:
                        self._checkpoint()
                    return decision, positions
                except ConcurrencyConflict as e:
                    self.stats.conflicts += 1
                    last_error = e
                    self._wait_past_holes()
                except AppendFailed as e:
                    last_error = e
                    failures += 1
                    landed = self._landed(self._attempt)
                    if landed is not None:
                        return decision, landed
                    if failures >= self.max_failures:
                        break
        if isinstance(last_error, ConcurrencyConflict):
            raise ConcurrencyConflict(
                f"gave up after {self.max_attempts} attempts: other writers keep appending to the "
                f"same streams ({last_error})"
            )
        raise AppendFailed(
            f"could not record after {attempt + 1} attempts; nothing was appended by this call "
            f"unless the log shows it (retrying the same call is safe): {last_error}"
        ) from last_error

    def _checkpoint(self) -> None:
        # A checkpoint is a cache: failing to write one must never fail the append that is done.
        try:
            self.checkpointer.maybe(self.state)  # type: ignore[union-attr]
        except Exception as e:  # noqa: BLE001
            self.stats.checkpoint_failures += 1
            self.last_checkpoint_error = f"{type(e).__name__}: {e}"

    def _fact(self, decide: Callable[[], rules.Decision], event: ev.Event) -> Recorded:
        decision, positions = self._record(decide)
        if isinstance(decision, rules.AlreadyRecorded):
            return Recorded(decision.position, None, duplicate=True)
        first = decision.events[0][1]
        kind = first.kind if isinstance(first, ev.DiscrepancyRecorded) else None
        return Recorded(positions[0], first.event_id, discrepancy=kind)

    def _envelope(self, occurred_at: datetime | None, correlation_id: UUID | None, causation_id: UUID | None) -> dict[str, Any]:
        return {
            "event_id": self.new_id(),
            "occurred_at": occurred_at if occurred_at is not None else self._now(),
            "correlation_id": correlation_id,
            "causation_id": causation_id,
        }

    def _order_envelope(self, account: str, client_order_id: str, occurred_at: datetime | None,
                        causation_id: UUID | None = None) -> dict[str, Any]:
        """Envelope for a later order event: correlated with the order's intent."""
        self._catch_up_to_record()  # the intent may have been recorded by another engine
        try:  # unvalidated input: a bad id simply has no intent to correlate with
            stream = order_stream_id(account, client_order_id)
            order = self.state.orders.get(stream)
            if order is None:  # our fold may be held below a hole that hides the intent
                self._wait_past_holes()
                order = self.state.orders.get(stream)
        except (TypeError, UnicodeError):
            order = None
        correlation = UUID(order.intent_event_id) if order is not None else None
        return {**self._envelope(occurred_at, correlation, causation_id), "account": account, "client_order_id": client_order_id}

    # ---------------------------------------------------------------------- order lifecycle
    def record_intent(
        self,
        account: str,
        client_order_id: str,
        symbol: str,
        side: str,
        qty: Decimal | int | str,
        *,
        order_type: str = "market",
        limit_price: Decimal | int | str | None = None,
        stop_price: Decimal | int | str | None = None,
        time_in_force: str = "day",
        venue: str = "sim",
        strategy_id: str | None = None,
        reference_price: Decimal | int | str | None = None,
        occurred_at: datetime | None = None,
        causation_id: UUID | None = None,
    ) -> IntentResult:
        """Record an order intent and its pre-trade risk decision, before anything is sent.

        Same client order id and same content: the first result again. Same id, other content:
        ``IdempotencyConflict``. A refusal is recorded and returned (``result.refusal``)."""
        envelope = self._envelope(occurred_at, None, causation_id)
        envelope["correlation_id"] = envelope["event_id"]  # an order's events all carry its intent's id
        intent = _build(
            ev.OrderIntentRecorded,
            **envelope,
            account=account,
            client_order_id=client_order_id,
            venue=venue,
            symbol=symbol,
            side=side,
            order_type=order_type,
            qty=qty,
            limit_price=limit_price,
            stop_price=stop_price,
            time_in_force=time_in_force,
            strategy_id=strategy_id,
            reference_price=reference_price,
        )
        decision, positions = self._record(lambda: rules.decide_intent(self.state, intent, self._now()))
        stream = order_stream_id(intent.account, intent.client_order_id)
        order = self.state.orders.get(stream)
        if isinstance(decision, rules.AlreadyRecorded):
            refusal = None
            if order is not None and order.refusal:
                refusal = RiskRefusal(order.refusal, order.refusal_detail)
            return IntentResult(decision.position, stream, refusal, duplicate=True,
                                event_id=UUID(order.intent_event_id) if order else None)
        second = decision.events[1][1]
        if isinstance(second, ev.IntentRejectedByRisk):
            self.stats.refusals += 1
            for reason in second.reasons:
                REFUSALS.labels(reason).inc()
            return IntentResult(positions[0], stream, RiskRefusal(list(second.reasons), second.detail), event_id=intent.event_id)
        return IntentResult(positions[0], stream, None, event_id=intent.event_id)

    def record_submitted(self, account: str, client_order_id: str, *, occurred_at: datetime | None = None) -> Recorded:
        e = _build(ev.OrderSubmitted, **self._order_envelope(account, client_order_id, occurred_at))
        return self._fact(lambda: rules.decide_submitted(self.state, e), e)

    def record_ack(self, account: str, client_order_id: str, venue_order_id: str, *,
                   occurred_at: datetime | None = None) -> Recorded:
        e = _build(ev.OrderAcknowledged, **self._order_envelope(account, client_order_id, occurred_at),
                   venue_order_id=venue_order_id)
        return self._fact(lambda: rules.decide_ack(self.state, e), e)

    def record_reject(self, account: str, client_order_id: str, reason: str = "", *,
                      occurred_at: datetime | None = None) -> Recorded:
        e = _build(ev.OrderRejected, **self._order_envelope(account, client_order_id, occurred_at), reason=reason)
        return self._fact(lambda: rules.decide_reject(self.state, e), e)

    def record_fill(
        self,
        account: str,
        client_order_id: str,
        exec_id: str,
        qty: Decimal | int | str,
        price: Decimal | int | str,
        *,
        fee: Decimal | int | str = 0,
        fee_currency: str = "USD",
        liquidity: str = "unknown",
        venue_order_id: str | None = None,
        occurred_at: datetime | None = None,
    ) -> Recorded:
        """Record one venue execution (partial or full). Deduplicated by ``exec_id``."""
        e = _build(
            ev.OrderFilled,
            **self._order_envelope(account, client_order_id, occurred_at),
            exec_id=exec_id,
            qty=qty,
            price=price,
            fee=fee,
            fee_currency=fee_currency,
            liquidity=liquidity,
            venue_order_id=venue_order_id,
        )
        return self._fact(lambda: rules.decide_fill(self.state, e, self._now()), e)

    def request_cancel(self, account: str, client_order_id: str, reason: str = "", *,
                       occurred_at: datetime | None = None) -> Recorded:
        e = _build(ev.OrderCancelRequested, **self._order_envelope(account, client_order_id, occurred_at), reason=reason)
        return self._fact(lambda: rules.decide_cancel_request(self.state, e), e)

    def record_cancelled(self, account: str, client_order_id: str, reason: str = "", *,
                         occurred_at: datetime | None = None) -> Recorded:
        e = _build(ev.OrderCancelled, **self._order_envelope(account, client_order_id, occurred_at), reason=reason)
        return self._fact(lambda: rules.decide_cancelled(self.state, e), e)

    def record_replaced(self, account: str, client_order_id: str, qty: Decimal | int | str, *,
                        limit_price: Decimal | int | str | None = None, stop_price: Decimal | int | str | None = None,
                        venue_order_id: str | None = None, occurred_at: datetime | None = None) -> Recorded:
        e = _build(ev.OrderReplaced, **self._order_envelope(account, client_order_id, occurred_at), qty=qty,
                   limit_price=limit_price, stop_price=stop_price, venue_order_id=venue_order_id)
        return self._fact(lambda: rules.decide_replaced(self.state, e), e)

    def record_expired(self, account: str, client_order_id: str, *, occurred_at: datetime | None = None) -> Recorded:
        e = _build(ev.OrderExpired, **self._order_envelope(account, client_order_id, occurred_at))
        return self._fact(lambda: rules.decide_expired(self.state, e), e)

    # --------------------------------------------------------------------------- risk state
    def _account_fact(self, cls: type[ev.AccountEvent], account: str, occurred_at: datetime | None = None,
                      **fields: Any) -> Recorded:
        e = _build(cls, **self._envelope(occurred_at, None, None), account=account, **fields)
        return self._fact(lambda: rules.Append([(account_stream_id(e.account), e)]), e)

    def set_risk_limit(self, account: str, limit: str, value: Decimal | int | str | None, *,
                       symbol: str | None = None, reason: str = "") -> Recorded:
        if symbol is not None and limit != "max_position_qty":
            raise InvalidInput("only max_position_qty can be set per symbol")
        return self._account_fact(ev.RiskLimitChanged, account, limit=limit, value=value, symbol=symbol, reason=reason)

    def trip_breaker(self, account: str, reason: str, *, until: datetime | None = None) -> Recorded:
        return self._account_fact(ev.CircuitBreakerTripped, account, reason=reason, until=until)

    def reset_breaker(self, account: str, reason: str = "") -> Recorded:
        return self._account_fact(ev.CircuitBreakerReset, account, reason=reason)

    def engage_kill_switch(self, account: str, reason: str, *, by: str = "engine") -> Recorded:
        return self._account_fact(ev.KillSwitchEngaged, account, reason=reason, by=by)

    def release_kill_switch(self, account: str, reason: str = "", *, by: str = "operator") -> Recorded:
        return self._account_fact(ev.KillSwitchReleased, account, reason=reason, by=by)

    def record_daily_limit_breach(self, account: str, limit: str, value: Decimal | int | str,
                                  threshold: Decimal | int | str, *, trading_day: str | None = None) -> Recorded:
        day = trading_day or self.state.trading_day(self._now())
        return self._account_fact(ev.DailyLimitBreached, account, limit=limit, trading_day=day,
                                  value=value, threshold=threshold)

    def resume_trading(self, account: str, ramp_pct: int, reason: str = "") -> Recorded:
        return self._account_fact(ev.TradingResumed, account, ramp_pct=ramp_pct, reason=reason)

    # --------------------------------------------------------------- signals, engine, market
    def record_signal(self, strategy_id: str, symbol: str, signal: str, *, value: Decimal | int | str | None = None,
                      attributes: dict[str, str] | None = None, occurred_at: datetime | None = None) -> Recorded:
        e = _build(ev.SignalRecorded, **self._envelope(occurred_at, None, None), strategy_id=strategy_id,
                   symbol=symbol, signal=signal, value=value, attributes=attributes or {})
        return self._fact(lambda: rules.Append([(strategy_stream_id(e.strategy_id), e)]), e)

    def engine_started(self, engine_id: str, *, version: str = "", config_hash: str = "") -> Recorded:
        e = _build(ev.EngineStarted, **self._envelope(None, None, None), engine_id=engine_id,
                   version=version, config_hash=config_hash)
        return self._fact(lambda: rules.Append([(engine_stream_id(e.engine_id), e)]), e)

    def previous_run_crashed(self, engine_id: str) -> bool:
        """After ``engine_started``: whether the run before it never recorded a clean stop (then
        run ``tradestate recover`` before trading)."""
        engine = self.state.engines.get(engine_id)
        return bool(engine and engine.get("previous_run_crashed"))

    def engine_stopped(self, engine_id: str, reason: str = "clean shutdown") -> Recorded:
        e = _build(ev.EngineStopped, **self._envelope(None, None, None), engine_id=engine_id, reason=reason)
        return self._fact(lambda: rules.Append([(engine_stream_id(e.engine_id), e)]), e)

    def record_recovery(self, engine_id: str, *, ready: bool, steps: list[dict[str, Any]], strict: bool = False,
                        crashed: bool = False, checkpoint_position: int | None = None, head: int = 0,
                        replayed: int = 0, discrepancies: int = 0, corrective_events: int = 0) -> Recorded:
        """Record the report of a recovery run on the engine's stream."""
        e = _build(ev.RecoveryCompleted, **self._envelope(None, None, None), engine_id=engine_id, ready=ready,
                   strict=strict, crashed=crashed, checkpoint_position=checkpoint_position, head=head,
                   replayed=replayed, discrepancies=discrepancies, corrective_events=corrective_events, steps=steps)
        return self._fact(lambda: rules.Append([(engine_stream_id(e.engine_id), e)]), e)

    def record_bar(self, venue: str, symbol: str, timeframe: str, start: datetime,
                   open: Decimal | int | str, high: Decimal | int | str, low: Decimal | int | str,
                   close: Decimal | int | str, volume: Decimal | int | str) -> Recorded:
        """Append a bar to the market-data log. A bar is recorded once: the same bar again returns
        its position, a different bar for the same start is an ``IdempotencyConflict``."""
        e = _build(ev.BarRecorded, **self._envelope(None, None, None), venue=venue, symbol=symbol,
                   timeframe=timeframe, start=start, open=open, high=high, low=low, close=close, volume=volume)
        stream = bar_stream_id(e.venue, e.symbol, e.timeframe)
        # The bar's start (epoch seconds) is its version in the market log: one row per bar.
        version = int(e.start.timestamp())
        payload = e.to_payload()
        try:
            (appended,) = self.store.market.append([new_event(stream, version, "BarRecorded", orjson.dumps(payload))])
        except ConcurrencyConflict:
            existing = self.store.market.read_stream(stream, version - 1)
            if not existing or existing[0].originator_version != version:
                raise
            old = orjson.loads(existing[0].state)
            if not rules.same_content(old, e):
                raise IdempotencyConflict(
                    f"a different {e.timeframe} bar for {e.symbol} at {e.start.isoformat()} is already recorded"
                ) from None
            return Recorded(existing[0].position, None, duplicate=True)
        return Recorded(appended.position, e.event_id)

    # ---------------------------------------------------------------------------- queries
    def order(self, account: str, client_order_id: str) -> dict[str, Any]:
        self.catch_up()
        order = self.state.orders.get(order_stream_id(account, client_order_id))
        if order is None:
            raise UnknownOrder(account, client_order_id)
        return order.as_dict()

    def open_orders(self, account: str | None = None) -> list[dict[str, Any]]:
        self.catch_up()
        accounts = [self.state.accounts[account]] if account in self.state.accounts else (
            [] if account is not None else list(self.state.accounts.values()))
        return [o.as_dict() for a in accounts for o in a.open_orders.values()]

    def positions(self, account: str | None = None) -> list[dict[str, Any]]:
        self.catch_up()
        return [p.as_dict() for key, p in sorted(self.state.positions.items())
                if account is None or key[0] == account]

    def risk_state(self, account: str) -> dict[str, Any]:
        self.catch_up()
        from .domain.risk import effective_limit

        a = self.state.accounts.get(account) or AccountState(account)  # a query never adds state
        now = self._now()
        today = a.daily.get(self.state.trading_day(now))
        return {
            "account": account,
            "kill_switch": a.kill_switch,
            "kill_switch_reason": a.kill_switch_reason,
            "breaker_tripped": a.breaker_active(now),
            "breaker_reason": a.breaker_reason,
            "breaker_until": a.breaker_until,
            "ramp_pct": a.ramp_pct,
            "limits": dict(a.limits),
            "effective_limits": {name: effective_limit(a, name) for name in a.limits},
            "symbol_position_limits": dict(a.symbol_position_limits),
            "open_orders": len(a.open_orders),
            "trading_day": self.state.trading_day(now),
            "trades_today": today.trades if today else 0,
            "realized_pnl_today": today.realized_pnl if today else Decimal(0),
            "fees_today": today.fees if today else Decimal(0),
            "breaches_today": sorted(today.breaches) if today else [],
            "unresolved_discrepancies": a.discrepancies,
        }

    def read_model(self, *, consistent: bool = True, timeout: float = 5.0) -> Any:
        """The SQL read models (what risk tools see). With ``consistent``, first wait until they
        include everything this client has recorded or folded (read-your-writes); a projector
        (`tradestate project`) must be running. For decisions, the client's own fold above is
        always current and needs no projector."""
        from .projections.reader import ReadModel

        model = ReadModel(self.store.url)
        if consistent:
            try:
                model.wait_for(self.state.position, timeout)
            except BaseException:
                model.close()
                raise
        return model

    @property
    def position(self) -> int:
        """The last log position this client has folded."""
        return self.state.position

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> TradestateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(url: str | None = None, **options: Any) -> TradestateClient:
    """Open the database named by ``url`` (or ``$TRADESTATE_DB``, or ``sqlite:///tradestate.db``)
    and return a client whose state is caught up with the log."""
    return TradestateClient(open_store(url), **options)
