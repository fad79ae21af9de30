"""Alpaca's full vocabulary, reconciled: the fake Alpaca server (tests/support/fake_alpaca.py,
written from Alpaca's documentation) through the real alpaca-py client, our log on a SQLite file.

Order statuses (all 18), cancel/replace chains, bracket/OCO legs, crypto pairs, fractional and
notional orders, and a cash baseline taken while the fills were unknown.
"""

from __future__ import annotations

import time
from decimal import Decimal as D

import pytest

from tests.support import venues
from tests.support.fake_alpaca import FakeAlpaca
from tests.support.reconcile import kinds, types
from tradestate.adapters.brokers.base import OrderRequest
from tradestate.adapters.store import open_store
from tradestate.client import TradestateClient
from tradestate.domain.ids import order_stream_id
from tradestate.order_flow import record_update
from tradestate.reconcile import acknowledge, reconcile

ACCOUNT = venues.ACCOUNT
VENUE = "ALPACA"


@pytest.fixture
def fake():
    with FakeAlpaca() as server:
        yield server


@pytest.fixture
def client(tmp_path):
    with TradestateClient(open_store(f"sqlite:///{tmp_path}/alpaca.db")) as c:
        yield c


@pytest.fixture
def adapter(fake):
    a = fake.adapter()
    try:
        yield a
    finally:
        a.close()


def order_of(client, coid):
    return client.state.orders.get(order_stream_id(ACCOUNT, coid))


def ours(client, coid, symbol="AAPL", side="buy", qty="10", *, limit="100", tif="day", ack=None):
    client.record_intent(ACCOUNT, coid, symbol, side, qty, order_type="limit" if limit else "market",
                         limit_price=limit, time_in_force=tif, venue=VENUE)
    client.record_submitted(ACCOUNT, coid)
    if ack:
        client.record_ack(ACCOUNT, coid, ack)


def settle(client, adapter):
    """A first run records the cash baseline; the scenario starts from a clean second run."""
    reconcile(client, adapter)
    again = reconcile(client, adapter)
    assert again.status == "clean", again


def test_every_alpaca_status_reconciles_to_its_meaning(fake, client, adapter):
    settle(client, adapter)
    statuses = ["new", "partially_filled", "filled", "done_for_day", "canceled", "expired", "pending_cancel",
                "pending_replace", "pending_review", "accepted", "pending_new", "accepted_for_bidding", "stopped",
                "rejected", "suspended", "calculated", "held", "a_status_from_2031"]
    for status in statuses:
        coid = f"s-{status}"
        ours(client, coid, qty="4")
        order = fake.new_order(symbol="AAPL", side="buy", qty=D(4), limit_price=D(100), client_order_id=coid)
        if status in ("partially_filled", "filled", "calculated"):
            with fake.lock:
                fake._execute(order, D(4) if status != "partially_filled" else D(1), D(100), f"E-{status}", fake.now())
        with fake.lock:
            fake._set_status(order, status, fake.now())
    result = reconcile(client, adapter)
    got = {s: order_of(client, f"s-{s}").status for s in statuses}
    assert got["filled"] == got["calculated"] == "filled"
    assert (got["canceled"], got["expired"], got["rejected"]) == ("cancelled", "expired", "rejected")
    assert got["partially_filled"] == "partially_filled"
    # not terminal: done_for_day (a GTC resumes tomorrow), pending_*, held, suspended, stopped ...
    for status in ("new", "done_for_day", "pending_cancel", "pending_replace", "pending_review", "accepted",
                   "pending_new", "accepted_for_bidding", "stopped", "suspended", "held", "a_status_from_2031"):
        assert got[status] == "acknowledged", status
    # the status nobody knows is reported as unknown (never a crash, never a guess)
    assert result.status == "unknown"
    unknown = [d for d in result.discrepancies if d["kind"] == "unknown_venue_status"]
    assert [d["client_order_id"] for d in unknown] == ["s-a_status_from_2031"]
    assert "unknown_order" not in kinds(result)


def test_replaced_order_is_our_order_replaced_not_cancelled_and_imported(fake, client, adapter):
    settle(client, adapter)
    ours(client, "r1", qty="10", limit="100")
    first = fake.new_order(symbol="AAPL", side="buy", qty=D(10), limit_price=D(100), client_order_id="r1")
    fake.fill(first["id"], "3", "100", exec_id="E-a")
    # PATCH: the new order gets its own id and client order id and the old order's qty (Alpaca-API#165)
    second = fake.replace_order(first["id"], limit_price=D("100.5"))
    fake.fill(second["id"], "4", "100.5", exec_id="E-b")
    result = reconcile(client, adapter)
    order = order_of(client, "r1")
    assert types(result).count("OrderReplaced") == 1
    assert "OrderImported" not in types(result) and "OrderCancelled" not in types(result)
    assert order.status == "partially_filled" and order.venue_order_id == second["id"]
    assert order.qty == D(13) and order.limit_price == D("100.5")  # 3 filled before + the new order's 10
    assert order.filled_qty == D(7) and set(order.executions) == {"E-a", "E-b"}
    assert "missed_replace" in kinds(result) and "unknown_order" not in kinds(result)
    assert "position_mismatch" not in kinds(result) and "cash_drift" not in kinds(result)
    # the replacement fills the rest; replaced again on the way: one more OrderReplaced, then filled
    third = fake.replace_order(second["id"], qty=D(6), limit_price=D(101))
    fake.fill(third["id"], "6", "101", exec_id="E-c")
    result = reconcile(client, adapter)
    order = order_of(client, "r1")
    assert order.status == "filled" and order.qty == D(13) and order.filled_qty == D(13)
    assert types(result).count("OrderReplaced") == 1
    assert client.state.position_of(ACCOUNT, VENUE, "AAPL").qty == D(13)
    again = reconcile(client, adapter)
    assert again.status == "clean" and again.corrective_event_ids == [], again


@pytest.mark.parametrize("sibling_cancel_sent", [False, True])
def test_bracket_legs_are_linked_to_our_order_and_a_held_leg_cancel_is_inferred(
        fake, client, adapter, sibling_cancel_sent):
    settle(client, adapter)
    ours(client, "b1", qty="10", limit="100", tif="gtc")
    parent = fake.new_group("bracket", symbol="AAPL", side="buy", qty=D(10), limit_price=D(100),
                            take_profit=D(110), stop_loss=D(95), client_order_id="b1")
    take_profit, stop_loss = fake.legs[parent["id"]]
    fake.fill(parent["id"], "10", "100", exec_id="E-entry")
    fake.release_legs(parent["id"])
    result = reconcile(client, adapter)
    assert "unknown_order" not in kinds(result) and "OrderImported" in types(result)
    assert result.counts["legs_linked"] == 2
    tp = order_of(client, fake.orders[take_profit]["client_order_id"])
    sl = order_of(client, fake.orders[stop_loss]["client_order_id"])
    for leg in (tp, sl):
        assert leg.external is False and leg.intent["parent_client_order_id"] == "b1"
        assert leg.intent["correlation_id"] == order_of(client, "b1").intent_event_id
    assert (tp.status, sl.status) == ("acknowledged", "acknowledged")  # working and held
    # the take-profit fills; Alpaca cancels the held stop-loss but may not say so (alpaca-py#198)
    fake.fill(take_profit, "10", "110", exec_id="E-tp")
    if sibling_cancel_sent:
        fake.finish(stop_loss, "canceled")
    result = reconcile(client, adapter)
    assert order_of(client, tp.client_order_id).status == "filled"
    assert order_of(client, sl.client_order_id).status == "cancelled"
    assert result.counts.get("leg_cancels_inferred", 0) == (0 if sibling_cancel_sent else 1)
    assert client.state.position_of(ACCOUNT, VENUE, "AAPL").qty == 0
    assert "position_mismatch" not in kinds(result) and "unknown_order" not in kinds(result)
    again = reconcile(client, adapter)
    assert again.status == "clean" and again.corrective_event_ids == [], again


def test_oco_parent_filled_cancels_its_held_child_and_a_stranger_bracket_is_external(fake, client, adapter):
    settle(client, adapter)
    ours(client, "x1", side="sell", qty="5", limit="120", tif="gtc")
    with fake.lock:  # the position the OCO exits
        fake.positions["AAPL"] = {"qty": D(5), "avg": D(100)}
    client.record_intent(ACCOUNT, "x0", "AAPL", "buy", 5, order_type="limit", limit_price=100, venue=VENUE)
    client.record_submitted(ACCOUNT, "x0")
    entry = fake.new_order(symbol="AAPL", side="buy", qty=D(5), limit_price=D(100), client_order_id="x0")
    with fake.lock:
        fake._execute(entry, D(5), D(100), "E-x0", fake.now())
        fake.positions["AAPL"] = {"qty": D(5), "avg": D(100)}
    parent = fake.new_group("oco", symbol="AAPL", side="sell", qty=D(5), take_profit=D(120), stop_loss=D(90),
                            client_order_id="x1")
    (child,) = fake.legs[parent["id"]]
    fake.fill(parent["id"], "5", "120", exec_id="E-x1")
    # someone else's bracket at the venue: imported as external, its legs with it
    fake.new_group("bracket", symbol="MSFT", side="buy", qty=D(1), limit_price=D(50), take_profit=D(60),
                   stop_loss=D(40), client_order_id="not-ours")
    result = reconcile(client, adapter)
    assert order_of(client, "x1").status == "filled"
    held = order_of(client, fake.orders[child]["client_order_id"])
    assert held.status == "cancelled" and held.intent["parent_client_order_id"] == "x1"
    assert order_of(client, "not-ours").external is True
    assert kinds(result).count("unknown_order") == 3  # the stranger's parent and its two legs


def test_crypto_pair_is_one_symbol_and_its_fee_in_kind_is_expected_then_recorded(fake, client, adapter):
    settle(client, adapter)
    ours(client, "c1", symbol="BTC/USD", qty="0.5", limit="40000", tif="gtc")
    order = fake.new_order(symbol="BTC/USD", side="buy", qty=D("0.5"), limit_price=D(40000), client_order_id="c1",
                           time_in_force="gtc")
    fake.fill(order["id"], "0.5", "39999.5", exec_id="E-btc")
    (position,) = fake.adapter().positions()
    assert position.raw["symbol"] == "BTCUSD" and position.symbol == "BTC/USD"  # Alpaca's spelling, ours
    assert position.qty == D("0.49875")  # the 25 bps fee was taken in BTC at once, not posted yet
    result = reconcile(client, adapter)
    assert result.counts["fills_recorded"] == 1 and result.counts["positions_fees_unposted"] == 1
    assert "PositionCorrected" not in types(result) and "CashBalanceRecorded" not in types(result)
    assert "position_mismatch" not in kinds(result)
    assert client.state.position_of(ACCOUNT, VENUE, "BTC/USD").qty == D("0.5")
    assert client.state.position_of(ACCOUNT, VENUE, "BTCUSD") is None
    # a sale: its fee is in USD, taken from the cash at once
    ours(client, "c2", symbol="BTC/USD", side="sell", qty="0.2", limit="41000", tif="gtc")
    sale = fake.new_order(symbol="BTC/USD", side="sell", qty=D("0.2"), limit_price=D(41000), client_order_id="c2",
                          time_in_force="gtc")
    fake.fill(sale["id"], "0.2", "41000", exec_id="E-btc-2")
    result = reconcile(client, adapter)
    assert result.counts["cash_fees_unposted"] == 1 and result.counts["positions_fees_unposted"] == 1
    assert kinds(result) == ["missed_ack", "missed_fill"]  # the sale; no cash_drift, no position_mismatch
    # the end of the day: Alpaca posts the CFEE activities; they are recorded as FeeCharged
    (in_kind, in_cash) = sorted(fake.post_crypto_fees(), key=lambda a: a["qty"] == "0")
    assert in_kind["symbol"] == "BTCUSD" and in_kind["qty"] == "-0.001250000"
    result = reconcile(client, adapter)
    assert types(result) == ["FeeCharged", "FeeCharged"] and kinds(result) == []
    assert client.state.position_of(ACCOUNT, VENUE, "BTC/USD").qty == D("0.29875")
    assert client.state.accounts[ACCOUNT].cash["USD"] == fake.cash
    again = reconcile(client, adapter)
    assert again.status == "clean" and again.corrective_event_ids == [], again


def test_fractional_and_notional_orders(fake, client, adapter):
    settle(client, adapter)
    qty = D("0.123456789")
    ours(client, "f1", qty=str(qty), limit=None)
    sent = adapter.submit(OrderRequest(client_order_id="f1", symbol="AAPL", side="buy", order_type="market", qty=qty))
    assert sent.qty == qty
    fake.fill(sent.venue_order_id, str(qty), "187.13", exec_id="E-f1")
    with pytest.raises(ValueError, match="9 decimal places"):
        adapter.submit(OrderRequest(client_order_id="f2", symbol="AAPL", side="buy", order_type="market",
                                    qty=D("0.1234567891")))
    assert fake.count("POST", "/orders") == 1  # refused before sending
    # a notional order: $50 of AAPL; its quantity is known only when it fills
    ours(client, "n1", qty="0.25", limit=None)  # the engine's estimate
    notional = adapter.submit(OrderRequest(client_order_id="n1", symbol="AAPL", side="buy", order_type="market",
                                           qty=None, notional=D(50)))  # type: ignore[arg-type]
    assert notional.notional == D(50) and notional.qty == 0 and notional.is_open
    fake.fill(notional.venue_order_id, "0.267201368", "187.125", exec_id="E-n1")  # 50.0000 spent
    result = reconcile(client, adapter)
    assert order_of(client, "f1").status == "filled" and order_of(client, "f1").filled_qty == qty
    n1 = order_of(client, "n1")
    assert n1.status == "filled" and n1.qty == n1.filled_qty == D("0.267201368")
    assert result.counts["notional_quantities_recorded"] == 1
    assert "overfill" not in kinds(result) and "PositionCorrected" not in types(result)
    assert client.state.position_of(ACCOUNT, VENUE, "AAPL").qty == qty + D("0.267201368")
    again = reconcile(client, adapter)
    assert again.status == "clean" and again.corrective_event_ids == [], again


def test_a_cash_baseline_is_not_taken_while_fills_are_unknown(fake, client, adapter):
    """Before the fix: run 1 (fills query failing) recorded the venue's cash, which already held
    the fill; run 2 recorded the fill and moved that baseline a second time: a cash_drift
    correction of 1000 that never happened, blocking trading under --strict."""
    ours(client, "o1", qty="10", limit="100")
    order = fake.new_order(symbol="AAPL", side="buy", qty=D(10), limit_price=D(100), client_order_id="o1")
    fake.fill(order["id"], "10", "100", exec_id="E1")
    fake.fail("fills", "500")
    first = reconcile(client, adapter)
    assert first.status == "unknown"
    fake.failing.clear()
    second = reconcile(client, adapter, strict=True)
    assert "cash_drift" not in kinds(second), second.discrepancies
    assert kinds(second) == ["missed_fill"] and second.counts["cash_recorded"] == 1
    assert "CashBalanceRecorded" not in types(first) and first.counts["cash_baselines_deferred"] == 1
    acknowledge(client, ACCOUNT, by="ops", decision="the missed fill is recorded")
    assert client.state.accounts[ACCOUNT].cash["USD"] == fake.cash
    third = reconcile(client, adapter, strict=True)
    assert third.status == "clean" and third.corrective_event_ids == [] and not third.blocked, third


def test_live_stream_records_the_replace_and_reconciliation_agrees(fake, client, adapter):
    """The trade-updates stream (through alpaca-py's TradingStream): the replacement's ``new``
    event becomes our OrderReplaced, its fills land on our order; a reconciliation then agrees."""
    settle(client, adapter)
    updates: list = []
    adapter.start_stream(updates.append, reconnect_min_delay=0.05)
    try:
        fake.wait_listeners(1)
        client.record_intent(ACCOUNT, "L1", "AAPL", "buy", 10, order_type="limit", limit_price=100, venue=VENUE)
        client.record_submitted(ACCOUNT, "L1")
        sent = adapter.submit(OrderRequest(client_order_id="L1", symbol="AAPL", side="buy", order_type="limit",
                                           qty=D(10), limit_price=D(100)))
        fake.fill(sent.venue_order_id, "4", "100", exec_id="L-a")
        # odd events in between: parsed leniently, nothing recorded, the stream goes on
        with fake.lock:
            odd = dict(fake.orders[sent.venue_order_id])
        for event in ("restated", "order_replace_rejected", "order_cancel_rejected", "done_for_day", "calculated",
                      "something_new_in_2031"):
            fake.broadcast({"event": event, "order": odd, "timestamp": odd["updated_at"]})
        fake.broadcast({"event": "fill", "order": {"id": "garbage"}, "timestamp": "not a time"})
        new = fake.replace_order(sent.venue_order_id, qty=D(6), limit_price=D("100.5"))
        fake.fill(new["id"], "6", "100.5", exec_id="L-b")
        deadline = time.monotonic() + 10
        while len([u for u in updates if u.kind == "fill"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        adapter.stop_stream()
    # order_replace_rejected is an update of its own (it refuses a pending amendment; none is here).
    # On a loaded machine the first backfill may already hold the whole scenario: the live events
    # then replay behind it (duplicates dropped), and this one comes last
    got = [u.kind for u in updates]
    assert [k for k in got if k != "replace_rejected"] == ["ack", "fill", "replaced", "fill"], got
    assert got.count("replace_rejected") == 1, got
    for u in updates:
        record_update(client, ACCOUNT, u.client_order_id, u)
    order = order_of(client, "L1")
    assert order.status == "filled" and order.qty == D(10) and order.venue_order_id == new["id"]
    assert order.limit_price == D("100.5") and set(order.executions) == {"L-a", "L-b"}
    result = reconcile(client, adapter)
    assert result.status == "clean" and result.corrective_event_ids == [], result
