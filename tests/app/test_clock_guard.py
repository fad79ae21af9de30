"""Time that cannot run backwards: the trading day and every time-based rule follow the later of
the engine's clock and the log's last recorded time, never a clock that stepped back; the
engine's clock is measured against the store's, a skew beyond the threshold is recorded once per
episode, and intents are refused beyond the maximum skew."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import orjson
import pytest
from prometheus_client import REGISTRY

import tradestate
from tradestate.adapters.store import checkpoints as cp
from tradestate.adapters.store import open_store
from tradestate.domain import events as ev
from tradestate.domain.state import TradingState
from tradestate.loading import fold_tail

ACCT = "acct"
NY = ZoneInfo("America/New_York")


class SteppingClock:
    """A clock the test sets and steps (backwards too); each reading moves it 1 ms on."""

    def __init__(self, start: datetime):
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self.now += timedelta(milliseconds=1)
            return self.now


class OffsetClock:
    """The wall clock plus an offset the test sets: an engine clock that is skewed."""

    def __init__(self, offset: float = 0.0):
        self.offset = timedelta(seconds=offset)

    def __call__(self) -> datetime:
        return datetime.now(timezone.utc) + self.offset


def _types(url: str, type_name: str) -> list[dict]:
    with open_store(url, create=False) as store:
        return [orjson.loads(r[4]) for r in store.trading.iter_rows(0) if r[3] == type_name]


def _five_intents_across_a_step_back(url: str, *, clock_guard: bool) -> list[list[str] | None]:
    # 00:10 in New York on 2 January: three trades today, then the clock steps back one hour,
    # to 23:10 on 1 January, and two more intents come.
    clock = SteppingClock(datetime(2030, 1, 2, 0, 10, tzinfo=NY).astimezone(timezone.utc))
    refusals = []
    with tradestate.connect(url, clock=clock, venue="sim", clock_guard=clock_guard,
                            clock_skew_threshold=None, max_clock_skew=None) as client:
        client.set_risk_limit(ACCT, "max_daily_trades", 3)
        for i in range(5):
            if i == 3:
                clock.now -= timedelta(hours=1)
            r = client.record_intent(ACCT, f"o{i}", "AAPL", "buy", 1, reference_price=10)
            refusals.append(r.refusal.reasons if r.refusal else None)
    return refusals


def test_a_clock_stepped_back_across_midnight_does_not_reset_the_daily_trade_count(db_url, tmp_path):
    assert _five_intents_across_a_step_back(db_url, clock_guard=True) == [
        None, None, None, ["max_daily_trades"], ["max_daily_trades"]]
    days = [p["trading_day"] for p in _types(db_url, "RiskCheckPassed")]
    assert days == ["2030-01-02"] * 3
    # without the guard, the day moved back with the clock and five intents passed a limit of three
    other = f"sqlite:///{tmp_path}/unguarded.db"
    assert _five_intents_across_a_step_back(other, clock_guard=False) == [None] * 5


def test_an_engine_clock_behind_the_log_decides_with_the_logs_time(db_url):
    """The venue's day moved on (a fill there breached the day's loss limit, recorded at the
    store's time); an engine whose clock is a day behind must not trade on yesterday's budget."""
    behind = SteppingClock(datetime.now(timezone.utc) - timedelta(days=1))
    with tradestate.connect(db_url, venue="sim", clock_skew_threshold=None, max_clock_skew=None) as live:
        live.set_risk_limit(ACCT, "max_daily_loss", 100)
        live.record_intent(ACCT, "buy", "AAPL", "buy", 10, reference_price=100)
        live.record_fill(ACCT, "buy", "X-1", 10, 100, occurred_at=datetime.now(timezone.utc))
        live.record_intent(ACCT, "sell", "AAPL", "sell", 10, reference_price=100)
        live.record_fill(ACCT, "sell", "X-2", 10, 80, occurred_at=datetime.now(timezone.utc))
        breaches = _types(db_url, "DailyLimitBreached")
        assert [b["limit"] for b in breaches] == ["max_daily_loss"]
        with open_store(db_url, create=False) as store:
            last_recorded = list(store.trading.iter_rows(store.trading.head() - 1))[0][5]

    with tradestate.connect(db_url, clock=behind, venue="sim", clock_guard=True, clock_skew_threshold=None,
                            max_clock_skew=None) as guarded:
        assert guarded.writer.now() >= last_recorded > behind.now
        assert guarded.risk_state(ACCT)["trading_day"] == breaches[0]["trading_day"]
        r = guarded.record_intent(ACCT, "late", "AAPL", "buy", 1, reference_price=100)
        assert r.refusal is not None and r.refusal.reasons == ["max_daily_loss"]
        intent = _types(db_url, "OrderIntentRecorded")[-1]
        assert datetime.fromisoformat(intent["occurred_at"]) >= last_recorded  # its time is the log's too

    # the same engine clock without the guard: yesterday's budget, and the intent passes
    with tradestate.connect(db_url, clock=behind, venue="sim", clock_guard=False) as unguarded:
        assert unguarded.record_intent(ACCT, "late2", "AAPL", "buy", 1, reference_price=100).accepted


def test_skew_beyond_the_threshold_is_recorded_once_per_episode(db_url):
    clock = OffsetClock(0.5)
    with tradestate.connect(db_url, clock=clock, venue="sim", clock_guard=True, clock_check_seconds=0,
                            max_clock_skew=None, clock_source="engine-1") as client:
        # measured at connect: the episode starts
        records = _types(db_url, "ClockSkewRecorded")
        assert len(records) == 1
        first = records[0]
        assert (first["source"], first["within_threshold"], first["threshold_ms"]) == ("engine-1", False, "50")
        assert float(first["uncertainty_ms"]) >= 0
        assert abs(float(first["skew_ms"]) - 500) <= float(first["uncertainty_ms"]) + 20
        exported = REGISTRY.get_sample_value("tradestate_clock_skew_seconds")
        assert exported == client.clock_reading.skew.total_seconds() > 0
        for i in range(5):  # measured again on every call (interval 0): still one record
            client.record_signal("s", "AAPL", f"x{i}")
        assert len(_types(db_url, "ClockSkewRecorded")) == 1

        clock.offset = timedelta(0)  # back in sync: the episode ends, once
        for i in range(3):
            client.record_signal("s", "AAPL", f"y{i}")
        records = _types(db_url, "ClockSkewRecorded")
        assert [r["within_threshold"] for r in records] == [False, True]
        assert abs(float(records[1]["skew_ms"])) <= 50 + float(records[1]["uncertainty_ms"])

        clock.offset = -timedelta(seconds=0.3)  # behind this time: a new episode
        client.record_signal("s", "AAPL", "z")
        client.record_signal("s", "AAPL", "z2")
        records = _types(db_url, "ClockSkewRecorded")
        assert [r["within_threshold"] for r in records] == [False, True, False]
        assert abs(float(records[2]["skew_ms"]) + 300) <= float(records[2]["uncertainty_ms"]) + 20
        assert client.state.clock_skews["engine-1"]["within_threshold"] is False

    # a restarted engine still skewed continues the episode on record: nothing new
    with tradestate.connect(db_url, clock=clock, venue="sim", clock_guard=True, max_clock_skew=None,
                            clock_source="engine-1"):
        assert len(_types(db_url, "ClockSkewRecorded")) == 3
    # so does one started from a checkpoint (which does not keep clock records)
    with open_store(db_url, create=False) as store:
        state = TradingState()
        fold_tail(store, state)
        cp.write(store, state)
    with tradestate.connect(db_url, clock=clock, venue="sim", clock_guard=True, max_clock_skew=None,
                            clock_source="engine-1", clock_check_seconds=0) as warm:
        assert warm.loaded.state is not None and warm.state.clock_skews == {}
        warm.record_signal("s", "AAPL", "warm")
        assert len(_types(db_url, "ClockSkewRecorded")) == 3
        clock.offset = timedelta(0)
        warm.record_signal("s", "AAPL", "synced")
        assert [r["within_threshold"] for r in _types(db_url, "ClockSkewRecorded")] == [False, True, False, True]


def test_the_clock_is_measured_at_connect_and_then_periodically_not_per_call(sqlite_url):
    clock = OffsetClock(0.0)
    with tradestate.connect(sqlite_url, clock=clock, venue="sim", clock_guard=True, clock_check_seconds=3600,
                            max_clock_skew=None) as client:
        reading = client.writer.clock_reading
        assert reading is not None and abs(reading.skew) < timedelta(seconds=0.05)
        clock.offset = timedelta(seconds=5)
        client.record_signal("s", "AAPL", "a")
        assert client.writer.clock_reading is reading  # not due yet
        assert _types(sqlite_url, "ClockSkewRecorded") == []
        client.writer.clock_check_seconds = 0
        client.record_signal("s", "AAPL", "b")
        assert client.writer.clock_reading is not reading
        assert len(_types(sqlite_url, "ClockSkewRecorded")) == 1


def test_the_wall_clock_is_guarded_by_default_and_an_injected_clock_is_not(sqlite_url):
    with tradestate.connect(sqlite_url, venue="sim") as client:
        assert client.writer.clock_guard
        assert abs(client.writer.clock_reading.excess) < timedelta(seconds=0.05)
        assert client.record_intent(ACCT, "o", "AAPL", "buy", 1, reference_price=1).accepted
    assert _types(sqlite_url, "ClockSkewRecorded") == []
    injected = SteppingClock(datetime(2024, 3, 5, tzinfo=timezone.utc))
    with tradestate.connect(sqlite_url, venue="sim", clock=injected) as c:
        assert not c.writer.clock_guard and c.writer.clock_reading is None
        assert c.writer.now() < datetime(2024, 3, 6, tzinfo=timezone.utc)


def test_skew_beyond_the_maximum_refuses_intents_with_reason_clock_skew(db_url):
    clock = OffsetClock(-3.0)
    with tradestate.connect(db_url, clock=clock, venue="sim", clock_guard=True, clock_check_seconds=0,
                            max_clock_skew=1.0) as client:
        # behind: decisions take the log's time, but the clock itself is off
        r = client.record_intent(ACCT, "o1", "AAPL", "buy", 1, reference_price=10)
        assert r.refusal is not None and r.refusal.reasons == ["clock_skew"]
        assert "engine clock -" in r.refusal.detail and "1000.0 ms allowed" in r.refusal.detail
        assert client.order(ACCT, "o1")["status"] == "refused"
        refused = _types(db_url, "IntentRejectedByRisk")
        assert [x["reasons"] for x in refused] == [["clock_skew"]]
        # other facts are still recorded: only intents are refused
        assert not client.record_signal("s", "AAPL", "up").duplicate

        clock.offset = timedelta(0)  # back in sync: trading goes on
        assert client.record_intent(ACCT, "o2", "AAPL", "buy", 1, reference_price=10).accepted

        clock.offset = timedelta(seconds=2)  # ahead counts the same
        r = client.record_intent(ACCT, "o3", "AAPL", "buy", 1, reference_price=10)
        assert r.refusal is not None and r.refusal.reasons == ["clock_skew"]
        assert "engine clock +" in r.refusal.detail


def _skew_payload(**extra) -> dict:
    payload = {
        "event_id": "0b4f6a0e-7d7e-4b7b-9b53-2f3f4d6b2c11", "occurred_at": "2026-01-05T14:30:00Z",
        "correlation_id": None, "causation_id": None, "source": "host-a",
        "engine_time": "2026-01-05T14:30:00Z", "store_time": "2026-01-05T14:29:59.900000Z",
        "skew_ms": "100", "uncertainty_ms": "0.4", "threshold_ms": "50", "within_threshold": False,
    }
    payload.update(extra)
    return payload


def test_a_stored_clock_skew_event_loads_and_folds_and_a_newer_schema_is_refused():
    at = datetime(2026, 1, 5, 14, 30, tzinfo=timezone.utc)
    for stored in (_skew_payload(), _skew_payload(_v=1)):  # a payload from before markers, and v1
        e = ev.decode("ClockSkewRecorded", stored)
        assert isinstance(e, ev.ClockSkewRecorded) and str(e.skew_ms) == "100" and e.within_threshold is False
        state = TradingState()
        state.apply(1, ev.CLOCK_STREAM, 1, "ClockSkewRecorded", dict(stored), at)
        assert state.clock_skews["host-a"]["within_threshold"] is False
        assert state.clock_skews["host-a"]["position"] == 1
    assert ev.ClockSkewRecorded.schema_version == 1
    fresh = ev.ClockSkewRecorded.model_validate({k: v for k, v in _skew_payload().items()})
    assert fresh.to_payload()["_v"] == 1
    with pytest.raises(ValueError, match="newer than this code"):
        ev.decode("ClockSkewRecorded", _skew_payload(_v=2))


def test_a_clock_that_jumped_ahead_and_came_back_keeps_refusing_until_the_engine_reopens(sqlite_url):
    """Time never runs backwards, so after a jump ahead the client holds to the later time; the
    skew check measures that time, so intents stay refused instead of trading on a future day."""
    clock = OffsetClock(0.0)
    options = dict(clock=clock, venue="sim", clock_guard=True, clock_check_seconds=0, max_clock_skew=1.0)
    with tradestate.connect(sqlite_url, **options) as client:
        assert client.record_intent(ACCT, "o1", "AAPL", "buy", 1, reference_price=10).accepted
        clock.offset = timedelta(hours=1)
        r = client.record_intent(ACCT, "o2", "AAPL", "buy", 1, reference_price=10)
        assert r.refusal is not None and r.refusal.reasons == ["clock_skew"]
        clock.offset = timedelta(0)  # corrected, but an hour was already handed out
        assert client.writer.now() > datetime.now(timezone.utc) + timedelta(minutes=59)
        r = client.record_intent(ACCT, "o3", "AAPL", "buy", 1, reference_price=10)
        assert r.refusal is not None and r.refusal.reasons == ["clock_skew"]
    with tradestate.connect(sqlite_url, **options) as client:
        assert client.record_intent(ACCT, "o4", "AAPL", "buy", 1, reference_price=10).accepted
