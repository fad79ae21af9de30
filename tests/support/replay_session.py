"""A recorded trading session for the replay tests (Python API, CLI and report)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import tradestate

T0 = datetime(2026, 11, 20, 14, 30, tzinfo=timezone.utc)
A = "acct-a"


class Clock:
    def __init__(self) -> None:
        self.now = T0 + timedelta(seconds=1)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Session:
    url: str
    mid: datetime  # a recorded instant just after o-1 filled
    mid_position: int  # the last position recorded before ``mid``
    head: int


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def build_session(url: str) -> Session:
    """~40 events: fills, a cancel, a breaker trip and a refusal, a kill switch, an overfill
    (discrepancy), a second account using the same client order id, and 4 AAPL bars."""
    clock = Clock()
    with tradestate.connect(url, clock=clock, venue="sim") as c:
        c.engine_started("eng-1")
        c.set_risk_limit(A, "max_position_qty", 1000)
        for minute, (o, h, lo, cl) in enumerate([("187.10", "187.60", "187.00", "187.55"),
                                                 ("187.55", "187.90", "187.40", "187.80"),
                                                 ("187.80", "189.20", "187.70", "189.10"),
                                                 ("189.10", "189.30", "188.50", "188.60")]):
            c.record_bar("sim", "AAPL", "1m", T0 + timedelta(minutes=minute), o, h, lo, cl, 1000 + minute)
        c.record_signal("sma", "AAPL", "buy", value="1.5", occurred_at=at(29))
        c.record_intent(A, "o-1", "AAPL", "buy", 100, order_type="limit", limit_price="187.50", strategy_id="sma",
                        occurred_at=at(30))
        c.record_submitted(A, "o-1", occurred_at=at(31))
        c.record_ack(A, "o-1", "V-1", occurred_at=at(32))
        c.record_fill(A, "o-1", "X-1", 40, "187.45", fee="0.20", occurred_at=at(40))
        c.record_fill(A, "o-1", "X-2", 60, "187.48", fee="0.30", occurred_at=at(45))
        mid_position = c.position
        time.sleep(0.01)
        mid = datetime.now(timezone.utc)
        time.sleep(0.01)
        c.record_intent(A, "o-2", "AAPL", "sell", 50, order_type="limit", limit_price="189.00", occurred_at=at(70))
        c.record_submitted(A, "o-2", occurred_at=at(71))
        c.record_ack(A, "o-2", "V-2", occurred_at=at(72))
        c.request_cancel(A, "o-2", "signal faded", occurred_at=at(80))
        c.record_cancelled(A, "o-2", "cancelled at venue", occurred_at=at(81))
        clock.now = at(100)
        c.trip_breaker(A, "volatility spike")
        r = c.record_intent(A, "o-3", "AAPL", "buy", 10, reference_price="188", occurred_at=at(110))
        assert not r.accepted
        clock.now = at(120)
        c.reset_breaker(A, "calm again")
        clock.now = at(130)
        c.engage_kill_switch(A, "operator test")
        clock.now = at(135)
        c.release_kill_switch(A, "done")
        c.record_intent(A, "o-4", "AAPL", "buy", 10, reference_price="188", occurred_at=at(150))
        c.record_submitted(A, "o-4", occurred_at=at(151))
        c.record_ack(A, "o-4", "V-4", occurred_at=at(152))
        c.record_fill(A, "o-4", "X-4", 10, "188.10", occurred_at=at(160))
        c.record_fill(A, "o-4", "X-5", 5, "188.20", occurred_at=at(161))  # overfill: a discrepancy
        c.record_intent("acct-b", "o-1", "AAPL", "sell", 5, reference_price="188", occurred_at=at(170))
        clock.now = at(200)
        c.engine_stopped("eng-1")
        head = c.position
    return Session(url, mid, mid_position, head)
