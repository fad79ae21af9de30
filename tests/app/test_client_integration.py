"""The client end to end on a real database (``db_url``: SQLite and PostgreSQL).

Every check reads the log back (types, counts, head) as well as the client's answers, so a
wrong answer and a wrong log are both caught.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from uuid import UUID

import orjson
import pytest

import tradestate
from tradestate import (
    IdempotencyConflict,
    InvalidInput,
    InvalidTransition,
    UnknownOrder,
)
from tradestate.adapters.store import VOID_TYPE
from tradestate.domain.ids import order_stream_id

ACCT = "acct-1"


@pytest.fixture
def client(db_url):
    c = tradestate.connect(db_url, venue="sim")
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def other(db_url, client):
    """A second client on the same database (another engine, or a risk tool)."""
    c = tradestate.connect(db_url, venue="sim")
    try:
        yield c
    finally:
        c.close()


def log_rows(client, market: bool = False) -> list[tuple]:
    log = client.store.market if market else client.store.trading
    rows = list(log.iter_rows())
    assert [r[0] for r in rows] == list(range(1, log.head() + 1)), "hole in the log"
    return [r for r in rows if r[3] != VOID_TYPE]


def types(client) -> list[str]:
    return [r[3] for r in log_rows(client)]


def payloads(client, type_name: str) -> list[dict]:
    return [orjson.loads(r[4]) for r in log_rows(client) if r[3] == type_name]


def heads(client) -> tuple[int, int]:
    return client.store.trading.head(), client.store.market.head()


# ------------------------------------------------------------------------------ the lifecycle


def test_full_order_lifecycle(client):
    intent = client.record_intent(ACCT, "o-1", "AAPL", "buy", "10", order_type="limit", limit_price="187.50",
                                  strategy_id="sma")
    assert intent.accepted and intent.refusal is None and not intent.duplicate
    assert intent.position == 1
    assert intent.order_stream == order_stream_id(ACCT, "o-1")
    assert types(client) == ["OrderIntentRecorded", "RiskCheckPassed"]
    order = client.order(ACCT, "o-1")
    assert order["status"] == "new" and order["qty"] == Decimal("10") and order["limit_price"] == Decimal("187.50")
    assert [o["client_order_id"] for o in client.open_orders(ACCT)] == ["o-1"]

    sub = client.record_submitted(ACCT, "o-1")
    assert sub.position == 3 and not sub.duplicate
    assert client.order(ACCT, "o-1")["status"] == "submitted"
    ack = client.record_ack(ACCT, "o-1", "V-9")
    assert client.order(ACCT, "o-1")["status"] == "acknowledged"
    assert client.order(ACCT, "o-1")["venue_order_id"] == "V-9"

    f1 = client.record_fill(ACCT, "o-1", "X-1", "4", "187.40", fee="0.10")
    assert f1.discrepancy is None
    o = client.order(ACCT, "o-1")
    assert o["status"] == "partially_filled" and o["filled_qty"] == 4 and o["remaining_qty"] == 6
    assert [(p["symbol"], p["qty"]) for p in client.positions(ACCT)] == [("AAPL", Decimal(4))]
    f2 = client.record_fill(ACCT, "o-1", "X-2", "6", "187.50", fee="0.15")
    o = client.order(ACCT, "o-1")
    assert o["status"] == "filled" and o["filled_qty"] == 10 and o["remaining_qty"] == 0
    assert o["avg_fill_price"] == (Decimal("4") * Decimal("187.40") + Decimal("6") * Decimal("187.50")) / 10
    assert o["fees"] == Decimal("0.25")
    assert client.open_orders(ACCT) == []
    (pos,) = client.positions(ACCT)
    assert pos["qty"] == 10 and pos["avg_cost"] == o["avg_fill_price"] and pos["realized_pnl"] == 0

    # sell half at a profit: realised P&L, a second trade today
    client.record_intent(ACCT, "o-2", "AAPL", "sell", "5", reference_price="190")
    client.record_submitted(ACCT, "o-2")
    client.record_ack(ACCT, "o-2", "V-10")
    client.record_fill(ACCT, "o-2", "X-3", "5", "190")
    (pos,) = client.positions(ACCT)
    assert pos["qty"] == 5
    assert pos["realized_pnl"] == (Decimal("190") - o["avg_fill_price"]) * 5
    risk = client.risk_state(ACCT)
    assert risk["trades_today"] == 2 and risk["open_orders"] == 0
    assert risk["fees_today"] == Decimal("0.25")

    assert [ack.position, f1.position, f2.position] == [4, 5, 6]
    assert types(client) == [
        "OrderIntentRecorded", "RiskCheckPassed", "OrderSubmitted", "OrderAcknowledged", "OrderFilled", "OrderFilled",
        "OrderIntentRecorded", "RiskCheckPassed", "OrderSubmitted", "OrderAcknowledged", "OrderFilled",
    ]
    # every event of an order carries its intent's id as correlation id
    for r in log_rows(client):
        if r[1] == order_stream_id(ACCT, "o-1"):
            assert orjson.loads(r[4])["correlation_id"] == str(intent.event_id)


def test_cancel_replace_expire_and_reject_lifecycles(client):
    client.record_intent(ACCT, "c-1", "MSFT", "buy", "3", order_type="limit", limit_price="400")
    client.record_submitted(ACCT, "c-1")
    client.record_ack(ACCT, "c-1", "V-1")
    client.record_replaced(ACCT, "c-1", "5", limit_price="401")
    o = client.order(ACCT, "c-1")
    assert o["qty"] == 5 and o["limit_price"] == Decimal("401") and o["status"] == "acknowledged"
    req = client.request_cancel(ACCT, "c-1", "flat")
    assert client.order(ACCT, "c-1")["cancel_requested"] is True
    assert client.request_cancel(ACCT, "c-1", "flat") == tradestate.Recorded(req.position, None, duplicate=True)
    done = client.record_cancelled(ACCT, "c-1")
    assert client.order(ACCT, "c-1")["status"] == "cancelled"
    assert client.record_cancelled(ACCT, "c-1").position == done.position
    with pytest.raises(InvalidTransition):
        client.record_replaced(ACCT, "c-1", "6", limit_price="401")

    client.record_intent(ACCT, "e-1", "MSFT", "buy", "1")
    client.record_expired(ACCT, "e-1")
    assert client.order(ACCT, "e-1")["status"] == "expired"

    client.record_intent(ACCT, "r-1", "MSFT", "buy", "1")
    client.record_submitted(ACCT, "r-1")
    client.record_reject(ACCT, "r-1", "no liquidity")
    assert client.order(ACCT, "r-1")["status"] == "rejected"
    assert client.open_orders(ACCT) == []
    assert client.positions(ACCT) == []


# ------------------------------------------------------------------------------- idempotency


def test_same_intent_twice_is_one_intent(client):
    first = client.record_intent(ACCT, "i-1", "AAPL", "buy", "10", order_type="limit", limit_price="100")
    head = heads(client)
    again = client.record_intent(ACCT, "i-1", "AAPL", "buy", "10", order_type="limit", limit_price="100",
                                 occurred_at=datetime.now(timezone.utc) + timedelta(seconds=5))
    assert again.duplicate and again.accepted
    assert again.position == first.position and again.event_id == first.event_id
    assert heads(client) == head
    # a new client (a restarted engine) gets the same answer from the log
    with tradestate.connect(client.store.url, venue="sim") as restarted:
        third = restarted.record_intent(ACCT, "i-1", "AAPL", "buy", "10", order_type="limit", limit_price="100")
        assert third.duplicate and third.position == first.position and third.event_id == first.event_id
    assert heads(client) == head
    assert types(client) == ["OrderIntentRecorded", "RiskCheckPassed"]


@pytest.mark.parametrize(
    "change",
    [
        {"qty": "11"},
        {"side": "sell"},
        {"symbol": "MSFT"},
        {"limit_price": "100.01"},
        {"time_in_force": "gtc"},
        {"venue": "other"},
        {"strategy_id": "s2"},
    ],
)
def test_same_client_order_id_other_content_is_a_conflict(client, change):
    base = dict(symbol="AAPL", side="buy", qty="10", order_type="limit", limit_price="100")
    client.record_intent(ACCT, "i-1", **base)
    head = heads(client)
    with pytest.raises(IdempotencyConflict):
        client.record_intent(ACCT, "i-1", **{**base, **change})
    assert heads(client) == head
    assert client.order(ACCT, "i-1")["qty"] == 10
    # the same id on another account is another order
    assert not client.record_intent("acct-2", "i-1", **{**base, **change}).duplicate


def test_fills_are_deduplicated_by_exec_id(client):
    client.record_intent(ACCT, "f-1", "AAPL", "buy", "10", reference_price="100")
    fill = client.record_fill(ACCT, "f-1", "X-1", "4", "100.5")
    head = heads(client)
    again = client.record_fill(ACCT, "f-1", "X-1", "4", "100.5")
    assert again.duplicate and again.position == fill.position
    assert client.record_fill(ACCT, "f-1", "X-1", Decimal("4.0"), "100.50").position == fill.position
    assert heads(client) == head
    assert client.order(ACCT, "f-1")["filled_qty"] == 4
    assert client.positions(ACCT)[0]["qty"] == 4
    assert types(client).count("OrderFilled") == 1
    # an exec id is unique per venue: on another order it is a discrepancy, not a second fill
    client.record_intent(ACCT, "f-2", "AAPL", "buy", "10", reference_price="100")
    assert not client.record_fill(ACCT, "f-2", "X-1", "4", "100.5").duplicate
    assert client.positions(ACCT)[0]["qty"] == 4
    assert client.order(ACCT, "f-2")["discrepancies"] == 1


# ------------------------------------------------------------------------------- bad input


NAIVE = datetime(2024, 3, 1, 15, 30)


def _intent(**over):
    args = dict(account=ACCT, client_order_id="new-1", symbol="AAPL", side="buy", qty="1")
    args.update(over)
    return lambda c: c.record_intent(**args)


BAD_INPUT = {
    "negative qty": (_intent(qty="-1"), InvalidInput),
    "zero qty": (_intent(qty="0"), InvalidInput),
    "NaN qty string": (_intent(qty="NaN"), InvalidInput),
    "NaN qty decimal": (_intent(qty=Decimal("NaN")), InvalidInput),
    "sNaN qty": (_intent(qty=Decimal("sNaN")), InvalidInput),
    "inf qty": (_intent(qty="inf"), InvalidInput),
    "-Infinity qty": (_intent(qty=Decimal("-Infinity")), InvalidInput),
    "float nan qty": (_intent(qty=float("nan")), InvalidInput),
    "float inf qty": (_intent(qty=float("inf")), InvalidInput),
    "float qty": (_intent(qty=1.5), InvalidInput),
    "bool qty": (_intent(qty=True), InvalidInput),
    "absurd qty": (_intent(qty="1e20"), InvalidInput),
    "garbage qty": (_intent(qty="ten"), InvalidInput),
    "NaN limit price": (_intent(order_type="limit", limit_price="NaN"), InvalidInput),
    "negative reference price": (_intent(reference_price="-5"), InvalidInput),
    "unknown side": (_intent(side="hold"), InvalidInput),
    "side with padding": (_intent(side="buy "), InvalidInput),
    "unknown order type": (_intent(order_type="iceberg"), InvalidInput),
    "limit without price": (_intent(order_type="limit"), InvalidInput),
    "market with price": (_intent(limit_price="10"), InvalidInput),
    "naive occurred_at": (_intent(occurred_at=NAIVE), InvalidInput),
    "100-char client order id": (_intent(client_order_id="x" * 100), InvalidInput),
    "empty client order id": (_intent(client_order_id=""), InvalidInput),
    "control chars in id": (_intent(client_order_id="a\nb"), InvalidInput),
    "100-char account": (_intent(account="a" * 100), InvalidInput),
    "non-string account": (_intent(account=7), InvalidInput),
    "unknown order fill": (lambda c: c.record_fill(ACCT, "ghost", "X-9", "1", "1"), UnknownOrder),
    "unknown order submitted": (lambda c: c.record_submitted(ACCT, "ghost"), UnknownOrder),
    "unknown order ack": (lambda c: c.record_ack(ACCT, "ghost", "V"), UnknownOrder),
    "unknown order cancel": (lambda c: c.request_cancel(ACCT, "ghost"), UnknownOrder),
    "unknown order cancelled": (lambda c: c.record_cancelled(ACCT, "ghost"), UnknownOrder),
    "unknown order query": (lambda c: c.order(ACCT, "ghost"), UnknownOrder),
    "unknown order on other account": (lambda c: c.record_fill("acct-2", "o-1", "X-9", "1", "1"), UnknownOrder),
    "duplicate exec id other qty": (lambda c: c.record_fill(ACCT, "o-1", "X-1", "3", "100"), IdempotencyConflict),
    "duplicate exec id other price": (lambda c: c.record_fill(ACCT, "o-1", "X-1", "2", "101"), IdempotencyConflict),
    "NaN fill price": (lambda c: c.record_fill(ACCT, "o-1", "X-2", "1", "NaN"), InvalidInput),
    "negative fill qty": (lambda c: c.record_fill(ACCT, "o-1", "X-2", "-1", "100"), InvalidInput),
    "inf fill fee": (lambda c: c.record_fill(ACCT, "o-1", "X-2", "1", "100", fee="inf"), InvalidInput),
    "naive fill time": (lambda c: c.record_fill(ACCT, "o-1", "X-2", "1", "100", occurred_at=NAIVE), InvalidInput),
    "100-char exec id": (lambda c: c.record_fill(ACCT, "o-1", "X" * 100, "1", "100"), InvalidInput),
    "unknown liquidity": (lambda c: c.record_fill(ACCT, "o-1", "X-2", "1", "100", liquidity="dark"), InvalidInput),
    "replace below filled": (lambda c: c.record_replaced(ACCT, "o-1", "1"), InvalidTransition),
    "submit a partially filled order": (lambda c: c.record_submitted(ACCT, "o-1"), InvalidTransition),
    "replace an unknown order": (lambda c: c.record_replaced(ACCT, "ghost", "1"), UnknownOrder),
    "naive breaker until": (lambda c: c.trip_breaker(ACCT, "x", until=NAIVE), InvalidInput),
    "unknown limit name": (lambda c: c.set_risk_limit(ACCT, "max_fun", 1), InvalidInput),
    "negative limit": (lambda c: c.set_risk_limit(ACCT, "max_order_qty", -1), InvalidInput),
    "NaN limit": (lambda c: c.set_risk_limit(ACCT, "max_order_qty", "NaN"), InvalidInput),
    "bad ramp": (lambda c: c.resume_trading(ACCT, 60), InvalidInput),
    "naive bar start": (lambda c: c.record_bar("sim", "AAPL", "1m", NAIVE, 1, 2, 1, 2, 10), InvalidInput),
    "inconsistent bar": (
        lambda c: c.record_bar("sim", "AAPL", "1m", datetime(2024, 1, 2, tzinfo=timezone.utc), 1, 2, "1.5", 2, 10),
        InvalidInput,
    ),
    "bar with NaN": (
        lambda c: c.record_bar("sim", "AAPL", "1m", datetime(2024, 1, 2, tzinfo=timezone.utc), 1, 2, 1, "NaN", 10),
        InvalidInput,
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_raises_a_typed_error_and_appends_nothing(client, case):
    call, error = BAD_INPUT[case]
    client.record_intent(ACCT, "o-1", "AAPL", "buy", "10", reference_price="100")
    client.record_fill(ACCT, "o-1", "X-1", "2", "100")
    client.record_intent(ACCT, "o-2", "AAPL", "buy", "1")
    client.record_submitted(ACCT, "o-2")
    client.record_ack(ACCT, "o-2", "V-2")
    client.record_bar("sim", "AAPL", "1m", datetime(2024, 1, 2, tzinfo=timezone.utc), 1, 2, 1, 2, 10)
    before = heads(client)
    summary = client.state.summary()

    with pytest.raises(error) as info:
        call(client)
    assert isinstance(info.value, tradestate.TradestateError)

    assert heads(client) == before, "something was appended for bad input"
    assert client.catch_up() == before[0]
    assert client.state.summary() == summary


# ----------------------------------------------------------------- venue facts that contradict us


def test_overfill_is_recorded_as_a_discrepancy_and_does_not_move_the_position(client):
    client.record_intent(ACCT, "o-1", "AAPL", "buy", "10", reference_price="100")
    client.record_fill(ACCT, "o-1", "X-1", "8", "100")
    over = client.record_fill(ACCT, "o-1", "X-2", "5", "100")
    assert over.discrepancy == "overfill" and not over.duplicate
    assert types(client)[-1] == "DiscrepancyRecorded"
    (d,) = payloads(client, "DiscrepancyRecorded")
    assert d["kind"] == "overfill" and d["exec_id"] == "X-2" and Decimal(d["qty"]) == 5
    o = client.order(ACCT, "o-1")
    assert o["filled_qty"] == 8 and o["status"] == "partially_filled" and o["discrepancies"] == 1
    assert client.positions(ACCT)[0]["qty"] == 8
    assert client.risk_state(ACCT)["unresolved_discrepancies"] == 1
    # the venue resends it: recorded once
    head = heads(client)
    again = client.record_fill(ACCT, "o-1", "X-2", "5", "100")
    assert again.duplicate and again.position == over.position
    assert heads(client) == head
    with pytest.raises(IdempotencyConflict):
        client.record_fill(ACCT, "o-1", "X-2", "4", "100")
    # the rest of the order still fills normally
    client.record_fill(ACCT, "o-1", "X-3", "2", "100")
    assert client.order(ACCT, "o-1")["status"] == "filled"
    assert client.positions(ACCT)[0]["qty"] == 10


def test_fill_on_a_cancelled_order_is_a_discrepancy(client):
    client.record_intent(ACCT, "o-1", "AAPL", "buy", "10", reference_price="100")
    client.record_submitted(ACCT, "o-1")
    client.record_cancelled(ACCT, "o-1", "user")
    late = client.record_fill(ACCT, "o-1", "X-1", "3", "100")
    assert late.discrepancy == "fill_on_terminal"
    assert types(client)[-1] == "DiscrepancyRecorded"
    o = client.order(ACCT, "o-1")
    assert o["status"] == "cancelled" and o["filled_qty"] == 0 and o["discrepancies"] == 1
    assert client.positions(ACCT) == []
    assert client.record_fill(ACCT, "o-1", "X-1", "3", "100").duplicate
    # cancel after fill: also a discrepancy, the order stays filled
    client.record_intent(ACCT, "o-2", "AAPL", "buy", "1", reference_price="100")
    client.record_fill(ACCT, "o-2", "X-2", "1", "100")
    assert client.record_cancelled(ACCT, "o-2").discrepancy == "cancel_after_fill"
    assert client.order(ACCT, "o-2")["status"] == "filled"
    assert client.positions(ACCT)[0]["qty"] == 1


# -------------------------------------------------------------------------------- refusals


def test_refusal_is_returned_and_recorded(client):
    client.set_risk_limit(ACCT, "max_order_qty", 5)
    refused = client.record_intent(ACCT, "big", "AAPL", "buy", "10", reference_price="100")
    assert not refused.accepted
    assert refused.refusal.reasons == ["max_order_qty"] and "10" in refused.refusal.detail
    assert types(client)[-2:] == ["OrderIntentRecorded", "IntentRejectedByRisk"]
    (rej,) = payloads(client, "IntentRejectedByRisk")
    assert rej["reasons"] == ["max_order_qty"] and rej["client_order_id"] == "big"
    o = client.order(ACCT, "big")
    assert o["status"] == "refused" and o["refusal"] == ["max_order_qty"]
    assert client.open_orders(ACCT) == [] and client.risk_state(ACCT)["trades_today"] == 0
    with pytest.raises(InvalidTransition):
        client.record_submitted(ACCT, "big")

    # the same refused intent again: the same refusal, nothing appended
    head = heads(client)
    again = client.record_intent(ACCT, "big", "AAPL", "buy", "10", reference_price="100")
    assert again.duplicate and again.position == refused.position and again.refusal.reasons == ["max_order_qty"]
    assert heads(client) == head

    # several reasons at once
    client.engage_kill_switch(ACCT, "test")
    client.set_risk_limit(ACCT, "max_order_notional", 500)
    r = client.record_intent(ACCT, "big-2", "AAPL", "buy", "10", reference_price="100")
    assert sorted(r.refusal.reasons) == ["kill_switch", "max_order_notional", "max_order_qty"]
    client.release_kill_switch(ACCT)
    r = client.record_intent(ACCT, "ok", "AAPL", "buy", "5", reference_price="100")
    assert r.accepted


def test_shared_limit_counts_other_clients_orders(client, other):
    client.set_risk_limit(ACCT, "max_open_orders", 2)
    assert client.record_intent(ACCT, "a", "AAPL", "buy", "1").accepted
    assert other.record_intent(ACCT, "b", "AAPL", "buy", "1").accepted
    r = client.record_intent(ACCT, "c", "AAPL", "buy", "1")
    assert r.refusal is not None and r.refusal.reasons == ["max_open_orders"]
    other.record_cancelled(ACCT, "a")
    assert client.record_intent(ACCT, "d", "AAPL", "buy", "1").accepted


# ------------------------------------------------------------------------------------ bars


def test_bars_are_recorded_once(client):
    start = datetime(2024, 5, 1, 13, 30, tzinfo=timezone.utc)
    first = client.record_bar("sim", "AAPL", "1m", start, "10", "11", "9.5", "10.5", "1000")
    assert not first.duplicate and first.position == 1
    again = client.record_bar("sim", "AAPL", "1m", start, "10", "11", "9.5", "10.5", "1000")
    assert again.duplicate and again.position == first.position
    # same instant given in another zone is the same bar
    ny = start.astimezone(timezone(timedelta(hours=-4)))
    assert client.record_bar("sim", "AAPL", "1m", ny, "10.0", "11", "9.5", "10.5", "1000").position == first.position
    head = heads(client)
    with pytest.raises(IdempotencyConflict):
        client.record_bar("sim", "AAPL", "1m", start, "10", "11", "9.5", "10.6", "1000")
    if client.store.kind == "sqlite":
        assert heads(client) == head
    else:  # PostgreSQL gives up the failed append's position with a $void row, nothing else
        added = list(client.store.market.iter_rows(head[1]))
        assert [r[3] for r in added] == [VOID_TYPE] * len(added) and len(added) <= 1
    bars = log_rows(client, market=True)
    assert len(bars) == 1 and orjson.loads(bars[0][4])["close"] == "10.5"
    nxt = client.record_bar("sim", "AAPL", "1m", start + timedelta(minutes=1), "10.5", "11", "10", "10.8", "900")
    assert nxt.position == client.store.market.head() and not nxt.duplicate
    other_tf = client.record_bar("sim", "AAPL", "5m", start, "10", "11", "9.5", "10.5", "1000")
    assert not other_tf.duplicate
    assert len(log_rows(client, market=True)) == 3
    assert client.store.trading.head() == 0  # bars never touch the trading log


# ------------------------------------------------------------- several clients, one database


def _session(c) -> None:
    c.engine_started("eng-1", version="1.0")
    c.set_risk_limit(ACCT, "max_position_qty", 100)
    c.set_risk_limit(ACCT, "max_position_qty", 20, symbol="TSLA")
    c.set_risk_limit("acct-2", "max_daily_loss", "50")
    c.record_signal("sma", "AAPL", "buy", value="1.5", attributes={"fast": "10"})
    c.record_intent(ACCT, "s-1", "AAPL", "buy", "10", order_type="limit", limit_price="100")
    c.record_submitted(ACCT, "s-1")
    c.record_ack(ACCT, "s-1", "V-1")
    c.record_fill(ACCT, "s-1", "X-1", "4", "99.5", fee="0.01")
    c.record_fill(ACCT, "s-1", "X-2", "7", "99.6")  # overfill
    c.record_intent(ACCT, "s-2", "TSLA", "buy", "50", reference_price="200")  # refused
    c.record_intent("acct-2", "s-3", "AAPL", "buy", "5", reference_price="100")
    c.record_fill("acct-2", "s-3", "X-3", "5", "100")
    c.record_intent("acct-2", "s-4", "AAPL", "sell", "5", reference_price="100")
    c.record_fill("acct-2", "s-4", "X-4", "5", "80")  # a 100 loss: daily loss breach
    c.trip_breaker(ACCT, "vol", until=datetime.now(timezone.utc) + timedelta(hours=1))
    c.engage_kill_switch("acct-2", "loss")
    c.resume_trading(ACCT, 50)
    c.record_daily_limit_breach(ACCT, "max_daily_trades", 3, 3)
    c.record_intent(ACCT, "s-5", "AAPL", "sell", "1", reference_price="100")  # refused: breaker
    c.record_bar("sim", "AAPL", "1m", datetime(2024, 5, 1, tzinfo=timezone.utc), 1, 2, 1, 2, 3)
    c.engine_stopped("eng-1")


def test_a_second_client_folds_to_the_same_state(client, db_url):
    _session(client)
    assert "DailyLimitBreached" in types(client)
    expected = client.state.summary()
    with tradestate.connect(db_url, venue="sim") as fresh:
        assert fresh.position == client.position == client.store.trading.head()
        assert fresh.state.summary() == expected
        assert fresh.positions() == client.positions()
        assert fresh.open_orders() == client.open_orders()
        assert fresh.risk_state(ACCT)["breaker_tripped"] is True
        assert fresh.risk_state("acct-2")["kill_switch"] is True


def test_queries_do_not_change_the_folded_state(client, db_url):
    """Queries are reads: asking about an account the log has never mentioned must not make the
    state differ from a plain fold of the log."""
    _session(client)
    with tradestate.connect(db_url, venue="sim") as reader:
        reader.positions("ghost")
        reader.open_orders("ghost")
        reader.risk_state(ACCT)
        reader.risk_state("ghost")
        with pytest.raises(UnknownOrder):
            reader.order("ghost", "x")
        with tradestate.connect(db_url, venue="sim") as fresh:
            assert reader.state.summary() == fresh.state.summary()


def test_queries_catch_up_with_another_clients_writes(client, other):
    assert other.open_orders() == [] and other.positions() == []
    assert other.risk_state(ACCT)["open_orders"] == 0

    client.set_risk_limit(ACCT, "max_open_orders", 3)
    client.record_intent(ACCT, "q-1", "AAPL", "buy", "10", reference_price="100")
    client.record_intent(ACCT, "q-2", "MSFT", "sell", "2", reference_price="400")
    assert {o["client_order_id"] for o in other.open_orders(ACCT)} == {"q-1", "q-2"}
    assert other.order(ACCT, "q-1")["status"] == "new"
    risk = other.risk_state(ACCT)
    assert risk["limits"] == {"max_open_orders": Decimal(3)} and risk["open_orders"] == 2
    assert risk["trades_today"] == 2

    client.record_fill(ACCT, "q-1", "X-1", "10", "101")
    assert other.order(ACCT, "q-1")["status"] == "filled"
    assert [(p["symbol"], p["qty"]) for p in other.positions(ACCT)] == [("AAPL", Decimal(10))]
    assert [o["client_order_id"] for o in other.open_orders(ACCT)] == ["q-2"]

    client.engage_kill_switch(ACCT, "halt")
    assert other.risk_state(ACCT)["kill_switch"] is True
    # and the other client decides on what it caught up with
    r = other.record_intent(ACCT, "q-3", "AAPL", "buy", "1")
    assert r.refusal is not None and r.refusal.reasons == ["kill_switch"]
    assert client.order(ACCT, "q-3")["status"] == "refused"
    assert other.position == client.store.trading.head()
    assert isinstance(r.event_id, UUID)


# --------------------------------------------------------- ambiguous failures (commit unknown)


class CommitThenFail:
    """The trading log, except that the next ``failures`` appends commit and *then* report
    ``AppendFailed`` (the connection dropped while the commit was being acknowledged)."""

    def __init__(self, log, failures: int = 1):
        self._log = log
        self.failures = failures

    def append(self, events):
        appended = self._log.append(events)
        if self.failures:
            self.failures -= 1
            raise tradestate.AppendFailed("connection lost during COMMIT (simulated): the commit may or may not have happened")
        return appended

    def __getattr__(self, name):
        return getattr(self._log, name)


AMBIGUOUS = {
    "intent": (lambda c: c.record_intent(ACCT, "n-1", "AAPL", "buy", "1"), "OrderIntentRecorded"),
    "submitted": (lambda c: c.record_submitted(ACCT, "o-1"), "OrderSubmitted"),
    "fill": (lambda c: c.record_fill(ACCT, "o-1", "X-9", "1", "100"), "OrderFilled"),
    "cancel request": (lambda c: c.request_cancel(ACCT, "o-1"), "OrderCancelRequested"),
    "replace": (lambda c: c.record_replaced(ACCT, "o-1", "7"), "OrderReplaced"),
    "risk limit": (lambda c: c.set_risk_limit(ACCT, "max_order_qty", 50), "RiskLimitChanged"),
    "kill switch": (lambda c: c.engage_kill_switch(ACCT, "halt"), "KillSwitchEngaged"),
    "breaker": (lambda c: c.trip_breaker(ACCT, "vol"), "CircuitBreakerTripped"),
    "signal": (lambda c: c.record_signal("sma", "AAPL", "buy"), "SignalRecorded"),
    "engine started": (lambda c: c.engine_started("eng-9"), "EngineStarted"),
}


@pytest.mark.parametrize("case", list(AMBIGUOUS))
def test_a_commit_reported_as_failed_is_not_written_twice(client, db_url, case):
    """The client's contract: after an ambiguous failure it re-reads the log, finds its own
    events if they landed, and returns them instead of writing twice."""
    call, type_name = AMBIGUOUS[case]
    client.record_intent(ACCT, "o-1", "AAPL", "buy", "5", reference_price="100")
    before = types(client).count(type_name)
    real_log = client.store.trading
    client.store.trading = CommitThenFail(real_log)
    try:
        result = call(client)
    finally:
        client.store.trading = real_log
    rows = log_rows(client)
    written = [r for r in rows if r[3] == type_name]
    assert len(written) == before + 1, f"{type_name} written {len(written) - before} times for one call"
    ids = [orjson.loads(r[4])["event_id"] for r in rows]
    assert len(ids) == len(set(ids)), "the same event id is in the log twice"
    assert result.position == written[-1][0]
    with tradestate.connect(db_url, venue="sim") as fresh:
        assert fresh.state.summary() == client.state.summary()
        if case == "engine started":
            assert fresh.state.engines["eng-9"]["previous_run_crashed"] is False


def test_a_bar_whose_commit_was_reported_failed_can_be_recorded_again(client):
    start = datetime(2024, 5, 1, 13, 30, tzinfo=timezone.utc)
    real_log = client.store.market
    client.store.market = CommitThenFail(real_log)
    try:
        with pytest.raises(tradestate.AppendFailed):
            client.record_bar("sim", "AAPL", "1m", start, "10", "11", "9", "10", "5")
    finally:
        client.store.market = real_log
    again = client.record_bar("sim", "AAPL", "1m", start, "10", "11", "9", "10", "5")
    assert again.duplicate
    assert len(log_rows(client, market=True)) == 1


def test_events_recorded_by_another_client_carry_the_intents_correlation_id(client, other):
    """"An order's events all carry its intent's id" — also when the engine that records the
    fill is not the one that recorded the intent (and has not queried since)."""
    intent = client.record_intent(ACCT, "k-1", "AAPL", "buy", "5", reference_price="100")
    other.record_submitted(ACCT, "k-1")
    client.record_ack(ACCT, "k-1", "V-1")
    other.record_fill(ACCT, "k-1", "X-1", "2", "100")
    client.record_fill(ACCT, "k-1", "X-2", "2", "100")
    other.record_fill(ACCT, "k-1", "X-3", "9", "100")  # an overfill: a discrepancy
    rows = [r for r in log_rows(client) if r[1] == order_stream_id(ACCT, "k-1")]
    assert [r[3] for r in rows] == [
        "OrderIntentRecorded", "OrderSubmitted", "OrderAcknowledged", "OrderFilled", "OrderFilled", "DiscrepancyRecorded"
    ]
    missing = [r[3] for r in rows if orjson.loads(r[4])["correlation_id"] != str(intent.event_id)]
    assert missing == [], f"events without the intent's correlation id: {missing}"
