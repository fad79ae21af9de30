"""The cold fold (``domain/fold.py``): a whole log into a state whose finished orders load lazily.

Whatever the log, it must equal ``TradingState.apply`` of every row: the same positions, cash,
day statistics, account counters, open orders in full, and every finished order when it is asked
for. Logs here are random sequences over every order event (late facts on finished orders,
replaced quantities, imports, discrepancies, old-version fills, events without ``occurred_at``)
mixed with the account events that touch what fills touch (cash, corrected positions).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from uuid import uuid4

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.projector_worker import Clock, write_session
from tests.support.fold import Fold, fill_v1_payload

import tradestate
from tradestate.domain import events as ev
from tradestate.domain.events import VOID_TYPE
from tradestate.domain.ids import order_stream_id
from tradestate.domain.state import TradingState
from tradestate.loading import fold_pages as fold_cold
from tradestate import loading as cp

ACCOUNTS = ("acct", "other")
SYMBOLS = ("AAPL", "MSFT")


def _cold(f: Fold, *, page: int = 7, text_times: bool = False) -> tuple[TradingState, int]:
    """``fold_cold`` of the Fold's rows (pages of ``page`` rows); with ``text_times``, times as ISO
    text (as SQLite gives them) and every third payload as text (a row edited by hand is)."""
    rows = [(p, s, v, t, d.decode() if text_times and p % 3 == 0 else d, at.isoformat() if text_times else at)
            for p, s, v, t, d, at in f.rows]
    pages = [rows[i:i + page] for i in range(0, len(rows), page)]

    def loader(sid: str, upto: int):
        return [r for r in f.rows if r[1] == sid and r[0] <= upto]

    return fold_cold(pages, order_loader=loader, log_reader=lambda upto: [r for r in f.rows if r[0] <= upto])


def _random_log(rng: random.Random, n: int) -> Fold:
    f = Fold()
    coids: list[tuple[str, str]] = []  # (account, client order id)
    for i in range(n):
        f.now += timedelta(minutes=rng.choice([0, 1, 7, 300]))
        r = rng.random()
        account = rng.choice(ACCOUNTS)
        if r < 0.2 or not coids:
            coid = f"c{i}"
            if rng.random() < 0.05:  # an order found at the venue, not placed by us
                f.order_event(ev.OrderImported, coid, account=account, venue="sim", symbol=rng.choice(SYMBOLS),
                              side=rng.choice(["buy", "sell"]), order_type="market", qty=str(rng.randint(1, 20)),
                              venue_order_id=f"v{i}", venue_status="new")
            else:
                f.intent(coid, rng.choice(["buy", "sell"]), str(rng.randint(1, 20)), account=account,
                         symbol=rng.choice(SYMBOLS), order_type="limit", limit_price="100")
            coids.append((account, coid))
            continue
        account, coid = rng.choice(coids)
        if r < 0.3:
            f.order_event(rng.choice([ev.OrderSubmitted, ev.OrderCancelRequested]), coid, account=account)
        elif r < 0.38:
            f.order_event(ev.OrderAcknowledged, coid, account=account, venue_order_id=f"v-{coid}")
        elif r < 0.62:
            fields = {} if rng.random() < 0.8 else {"venue_order_id": f"v-{coid}"}
            if rng.random() < 0.1:  # a fill stored by older code (schema version 1)
                payload = {**fill_v1_payload(), "account": account, "client_order_id": coid,
                           "exec_id": f"x{i}", "qty": str(rng.randint(1, 12))}
                f.raw(order_stream_id(account, coid), "OrderFilled", payload)
            elif rng.random() < 0.1:  # no occurred_at: the recorded time counts
                payload = ev.OrderFilled(event_id=uuid4(), occurred_at=f.now, account=account, client_order_id=coid,
                                         exec_id=f"x{i}", qty=str(rng.randint(1, 12)), price="101",
                                         fee="0.1").to_payload()
                del payload["occurred_at"]
                f.raw(order_stream_id(account, coid), "OrderFilled", payload, f.now + timedelta(seconds=3))
            else:
                f.fill(coid, f"x{i}", str(rng.randint(1, 12)), rng.choice(["99", "100.5", "101.25"]),
                       fee=rng.choice(["0", "0.35"]), account=account, **fields)
        elif r < 0.7:
            cls = rng.choice([ev.OrderCancelled, ev.OrderRejected, ev.OrderExpired])
            f.order_event(cls, coid, account=account)
        elif r < 0.73:
            f.order_event(ev.IntentRejectedByRisk, coid, account=account, reasons=["max_order_qty"])
        elif r < 0.78:
            f.order_event(ev.OrderReplaced, coid, account=account, qty=str(rng.randint(1, 20)), limit_price="99")
        elif r < 0.82:
            f.order_event(ev.DiscrepancyRecorded, coid, account=account, kind="overfill", exec_id=f"d{i}",
                          qty="3", price="100")
        elif r < 0.86:
            f.account_event(ev.CashBalanceRecorded, account, venue="sim", balance=str(rng.randint(0, 10**6)))
        elif r < 0.89:
            f.account_event(ev.PositionCorrected, account, venue="sim", symbol=rng.choice(SYMBOLS), qty_before="0",
                            qty_after=str(rng.randint(-30, 30)), avg_cost=rng.choice([None, "100"]))
        elif r < 0.95:
            f.account_event(ev.RiskCheckPassed, account, client_order_id=coid, symbol="AAPL", side="buy", qty="1",
                            notional="100", trading_day="2024-03-05")
        elif r < 0.97:
            f.raw("$void", VOID_TYPE, {})
        else:
            f.limit("max_order_qty", str(rng.randint(1, 100)), account=account)
    return f


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), n=st.integers(1, 120), page=st.integers(1, 40), text_times=st.booleans())
def test_the_cold_fold_equals_applying_every_event(seed, n, page, text_times):
    f = _random_log(random.Random(seed), n)
    state, rows = _cold(f, page=page, text_times=text_times)
    assert rows == len(f.rows)
    assert (state.position, state.applied) == (f.state.position, f.state.applied)
    open_now = {sid: o.as_dict() for sid, o in f.state.orders.items() if o.is_open}
    # open orders are there in full before anything is asked for; finished ones are not built
    assert {sid: dict.__getitem__(state.orders, sid).as_dict() for sid in open_now} == open_now
    assert state.orders.unloaded == sum(1 for o in f.state.orders.values() if not o.is_open)
    assert state.summary() == f.state.summary()
    assert state.exec_ids == f.state.exec_ids  # the venue's execution ids index every booked fill


_READ = {"OrderFilled": ("qty", "price", "fee", "exec_id", "occurred_at", "fee_currency"),
         "OrderIntentRecorded": ("account", "venue", "symbol", "side", "qty"),
         "RiskCheckPassed": ("account", "trading_day")}


def _hand_made(rng: random.Random, rows: list) -> list:
    """``rows`` with some payloads of the types the fold decodes in part written as hand-made or
    foreign code could write them, all still foldable: a number where text is stored, a null
    time or fee currency, a repeated key, non-ASCII text, a nested value, an older fill."""
    out = []
    for p, s, v, t, d, at in rows:
        if t in _READ and rng.random() < 0.5:
            payload = orjson.loads(d)
            how = rng.randrange(6)
            amounts = [k for k in ("qty", "price", "fee") if k in payload and k in _READ[t]]
            if how == 0 and amounts:
                payload[rng.choice(amounts)] = rng.choice([7, 2.5, 10**15])
            elif how == 1 and t == "OrderFilled":
                payload[rng.choice(["occurred_at", "fee_currency"])] = None
            elif how == 2:
                payload["note"] = rng.choice(["d\u00e9j\u00e0 vu", "\u2028", "\"quoted\\"])
            elif how == 3:
                payload["extra"] = {"qty": "999", "account": ["x"], "_v": 9}
            elif how == 4 and t == "OrderFilled":
                payload["_v"] = 1  # stored by older code: upcast
            d = orjson.dumps(payload)
            if how == 5 and amounts:  # a key again, last: orjson keeps the last one
                d = d[:-1] + b"," + orjson.dumps(rng.choice(amounts)) + b':"3"}'
        out.append((p, s, v, t, d, at))
    return out


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), n=st.integers(1, 80), page=st.integers(1, 40))
def test_hand_made_payloads_fold_cold_as_apply_folds_them(seed, n, page):
    """The partial decode of intents, risk checks and fills falls back to the whole payload for
    anything it cannot type, so the cold fold still equals ``apply`` row by row."""
    rng = random.Random(seed)
    rows = _hand_made(rng, _random_log(rng, n).rows)
    expected = TradingState()
    for p, s, v, t, d, at in rows:
        expected.apply(p, s, v, t, orjson.loads(d), at)
    state, _ = fold_cold([rows[i:i + page] for i in range(0, len(rows), page)],
                         order_loader=lambda sid, upto: [r for r in rows if r[1] == sid and r[0] <= upto])
    assert (state.position, state.applied) == (expected.position, expected.applied)
    assert state.summary() == expected.summary()
    assert state.exec_ids == expected.exec_ids


def test_finished_orders_load_one_by_one_when_asked_for():
    f = Fold()
    f.intent("done", "buy", "5")
    f.fill("done", "x1", "5", "100")
    f.intent("open", "sell", "5")
    f.fill("open", "x2", "2", "101")
    state, _ = _cold(f)
    done = order_stream_id("acct", "done")
    assert state.orders.unloaded == 1 and done in state.orders and dict.get(state.orders, done) is None
    assert state.orders[done].as_dict() == f.state.orders[done].as_dict()
    assert state.orders.unloaded == 0
    assert list(state.accounts["acct"].open_orders) == [order_stream_id("acct", "open")]


@pytest.mark.parametrize("event", [
    ev.OrderSubmitted,  # a payload the fold does not read
    ev.OrderCancelled,
    lambda **kw: ev.OrderFilled(exec_id="x1", qty="1", price="10", fee="0", **kw),
])
def test_a_payload_from_newer_code_is_refused_as_apply_refuses_it(event):
    f = Fold()
    stream = f.intent("o1")
    e = event(event_id=uuid4(), occurred_at=f.now, account="acct", client_order_id="o1")
    f.rows.append((f.pos + 1, stream, 2, e.type_name(), orjson.dumps({**e.to_payload(), "_v": 9}), f.now))
    with pytest.raises(ValueError, match="newer than this code"):
        _cold(f)


def test_an_event_of_an_order_never_recorded_quarantines_its_stream_as_in_apply():
    at = datetime(2024, 3, 5, tzinfo=timezone.utc)
    payload = ev.OrderSubmitted(event_id=uuid4(), occurred_at=at, account="acct", client_order_id="o1").to_payload()
    sid = order_stream_id("acct", "o1")
    rows = [(1, sid, 1, "OrderSubmitted", orjson.dumps(payload), at)]
    warm = TradingState()
    warm.apply(*rows[0][:4], orjson.loads(rows[0][4]), at)
    cold, _ = fold_cold([rows], order_loader=None)
    for state in (warm, cold):
        assert state.position == 1 and sid not in state.orders
        position, reason = state.quarantined_streams[sid]
        assert position == 1 and "no intent or import before it" in reason
        assert state.quarantined_accounts["acct"][0] == 1
    assert warm.summary() == cold.summary()


def test_positions_must_increase():
    f = Fold()
    f.intent("o1")
    f.intent("o2")
    rows = [f.rows[1], f.rows[0]]
    with pytest.raises(ValueError, match="applied after"):
        fold_cold([rows], order_loader=None)


# ------------------------------------------------------------------------ on a real store


def test_the_cold_fold_of_a_stored_log_equals_the_fresh_fold(db_url, store):
    with tradestate.connect(db_url, clock=Clock()) as client:
        head = write_session(client, 400, seed=3)
    fresh = TradingState()
    cp.fold_tail(store, fresh)
    state, rows = cp.fold_cold(store)
    assert rows == head == state.position
    assert state.orders.unloaded > 0  # finished orders were not built
    assert state.summary() == fresh.summary()
    middle, _ = cp.fold_cold(store, stop=head // 2)
    prefix = TradingState()
    cp.fold_tail(store, prefix, head // 2)
    assert middle.summary() == prefix.summary()


def test_a_bad_row_on_a_finished_order_keeps_the_order_as_apply_keeps_it():
    """A row that cannot be read on an order that had already finished quarantines its stream and
    leaves the order as it was: still there, finished, loadable."""
    f = Fold()
    done = f.intent("done", "buy", "5")
    f.fill("done", "x1", "5", "100")
    f.raw(done, "OrderFilled", {"account": "acct", "client_order_id": "done", "exec_id": "x2", "qty": "five",
                                "price": "100", "fee": "0", "event_id": str(uuid4()), "occurred_at": f.now.isoformat()})
    assert done in f.state.quarantined_streams and done in f.state.orders
    state, _ = _cold(f)
    assert done in state.quarantined_streams
    assert done in state.orders
    assert state.orders[done].as_dict() == f.state.orders[done].as_dict()
    assert state.summary() == f.state.summary()


def test_an_unreadable_intent_opens_no_account_as_in_apply():
    f = Fold()
    f.intent("good", "buy", "5")
    f.raw(order_stream_id("newacct", "bad"), "OrderIntentRecorded",
          {"account": "newacct", "client_order_id": "bad", "venue": "sim", "symbol": "AAPL", "side": "buy",
           "order_type": "market", "qty": "lots", "event_id": str(uuid4()), "occurred_at": f.now.isoformat()})
    state, _ = _cold(f)
    assert sorted(state.accounts) == sorted(f.state.accounts)
    assert state.summary() == f.state.summary()
