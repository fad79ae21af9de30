"""The IB adapter through the real ib_insync ``IB`` client against a fake TWS on 127.0.0.1.

Nothing of ib_insync is mocked: the adapter's ``IB`` object does the real handshake, the real
start-up sync and real requests over a socket to ``tests/support/fake_tws.py``, which encodes every
message as ib_insync's decoder reads it at server version 176.
"""

from __future__ import annotations

import socket
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from tests.support.fake_tws import FakeTWS, ib_venue
from tradestate.adapters.brokers.base import (
    OrderNotFound,
    OrderRequest,
    Unknown,
    VenueConnectionError,
    VenueQueryFailed,
)
from tradestate.adapters.brokers.ib import (
    IBAdapter,
    OrderNotCancelable,
    map_status,
    parse_ib_time,
)

pytestmark = pytest.mark.timeout(60)

FAST = 1.0  # seconds: every wait in these tests is bounded by this


@pytest.fixture
def tws():
    with FakeTWS() as server:
        yield server


def connect(server: FakeTWS, client_id: int = 1, **options) -> IBAdapter:
    options.setdefault("timeout", FAST)
    return IBAdapter(account="acct-1", host=server.host, port=server.port, client_id=client_id, **options)


@pytest.fixture
def adapter(tws):
    a = connect(tws)
    yield a
    a.close()


def by_perm(orders):
    return {o.venue_order_id: o for o in orders}


# -- connection and start-up sync -----------------------------------------------------------


def test_connect_runs_ib_insyncs_startup_sync(tws):
    with connect(tws) as a:
        assert a.is_connected()
        assert a.ib_account == "DU1234567"
        assert (a.broker, a.venue, a.account) == ("ib", "IB", "acct-1")
        asked = {int(m[0]) for m in tws.received}
        # startApi, positions, open orders, completed orders, account updates (+multi), executions
        assert {71, 61, 5, 99, 6, 76, 7} <= asked
        start_api = next(m for m in tws.received if m[0] == "71")
        assert start_api[2] == "1"


def test_duplicate_client_id_is_reported_as_error_326_quickly(tws):
    with connect(tws, client_id=5):
        started = time.monotonic()
        with pytest.raises(VenueConnectionError) as caught:
            connect(tws, client_id=5, timeout=5.0)
        elapsed = time.monotonic() - started
    message = str(caught.value)
    assert "326" in message and "client id 5 is already in use" in message
    assert "different client_id" in message
    assert elapsed < 2.0, "326 must be reported when it arrives, not after the connect timeout"


@pytest.mark.parametrize("stalled, named", [("positions", "positions"), ("orders", "open orders"),
                                            ("balances", "account updates"), ("fills", "executions")])
def test_sync_that_never_finishes_is_reported_clearly(stalled, named):
    with FakeTWS(stall_sync={stalled}) as server:
        started = time.monotonic()
        with pytest.raises(VenueConnectionError) as caught:
            connect(server, timeout=0.3)
        assert time.monotonic() - started < 3
        message = str(caught.value)
        assert "start-up sync did not finish within 0.3 s" in message
        assert named in message
        assert "Retry" in message
        assert not server.conns or all(c.closed for c in server.conns) or _eventually_closed(server)


def _eventually_closed(server: FakeTWS) -> bool:
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if not server.conns:
            return True
        time.sleep(0.01)
    return False


def test_nothing_listening_is_reported_clearly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(VenueConnectionError, match=f"nothing listens at 127.0.0.1:{port}"):
            IBAdapter(account="acct-1", port=port, timeout=FAST)


def test_several_accounts_need_ib_account():
    with FakeTWS(accounts=("DU111", "DU222")) as server:
        with pytest.raises(VenueConnectionError, match="manages 2 accounts .*ib_account="):
            connect(server)
        with pytest.raises(VenueConnectionError, match="DU999 is not managed"):
            connect(server, client_id=2, ib_account="DU999")
        server.set_position("AAPL", Decimal(5), account="DU111")
        server.set_position("MSFT", Decimal(7), account="DU222")
        with connect(server, client_id=3, ib_account="DU222") as a:
            assert [(p.symbol, p.qty) for p in a.positions()] == [("MSFT", Decimal(7))]


def test_bad_arguments_are_refused_before_connecting(tws):
    with pytest.raises(ValueError, match="client_id"):
        IBAdapter(account="acct-1", port=tws.port, client_id=-1)
    with pytest.raises(ValueError, match="port"):
        IBAdapter(account="acct-1", port=70000)
    with pytest.raises(ValueError, match="account"):
        IBAdapter(account="", port=tws.port)
    with pytest.raises(ValueError, match="timeout"):
        IBAdapter(account="acct-1", port=tws.port, timeout=0)


def test_queries_reconnect_after_the_connection_drops(tws, adapter):
    tws.set_position("AAPL", Decimal(3))
    tws.drop_connections()
    deadline = time.monotonic() + 2
    while adapter.is_connected() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [p.qty for p in adapter.positions()] == [Decimal(3)]


# -- positions, balances: exact decimals ------------------------------------------------------


def test_positions_are_exact_decimals_long_and_short(tws, adapter):
    tws.set_position("AAPL", Decimal("123.4567"), Decimal("187.123456789"))
    tws.set_position("MSFT", Decimal("-40"), Decimal("0.1"))
    tws.set_position("IBM", Decimal("1234567.891234"), Decimal("99999.99999999"))
    got = {p.symbol: p for p in adapter.positions()}
    assert got["AAPL"].qty == Decimal("123.4567") and str(got["AAPL"].qty) == "123.4567"
    assert got["AAPL"].avg_cost == Decimal("187.123456789")
    assert got["MSFT"].qty == Decimal("-40") and got["MSFT"].avg_cost == Decimal("0.1")
    assert got["IBM"].qty == Decimal("1234567.891234") and got["IBM"].avg_cost == Decimal("99999.99999999")
    assert all(isinstance(p.qty, Decimal) for p in got.values())
    tws.set_position("AAPL", Decimal(0))
    assert "AAPL" not in {p.symbol for p in adapter.positions()}


def test_balances_per_currency_from_account_values(tws, adapter):
    tws.set_cash(Decimal("100000.37"), "USD")
    tws.set_cash(Decimal("-2500.5"), "EUR")
    balances = {b.currency: b for b in adapter.balances()}
    assert set(balances) == {"USD", "EUR"}  # BASE is a conversion total, not a currency
    assert balances["USD"].cash == Decimal("100000.37")
    assert balances["EUR"].cash == Decimal("-2500.5")
    assert balances["USD"].raw["tag"] == "CashBalance"
    tws.set_cash(Decimal("5"), "USD")
    assert {b.currency: b.cash for b in adapter.balances()}["USD"] == Decimal(5)  # a fresh answer


# -- orders -----------------------------------------------------------------------------------


def test_open_orders_of_every_client_id_keyed_by_perm_id(tws, adapter):
    ours = tws.add_order(symbol="AAPL", action="BUY", qty=Decimal(10), lmt=Decimal("187.45"), order_ref="ord-1",
                         client_id=1, order_id=7)
    other_api = tws.add_order(symbol="AAPL", action="SELL", qty=Decimal(3), lmt=Decimal("190"), client_id=9,
                              order_id=7)  # the same orderId, another client: only permId tells them apart
    by_hand = tws.add_order(symbol="MSFT", action="SELL", qty=Decimal("0.5"), order_type="STP", lmt=None,
                            aux=Decimal("401.1"), client_id=0, order_id=0)
    orders = by_perm(adapter.open_orders())
    assert set(orders) == {str(ours.perm_id), str(other_api.perm_id), str(by_hand.perm_id)}
    mine = orders[str(ours.perm_id)]
    assert (mine.client_order_id, mine.symbol, mine.side, mine.order_type) == ("ord-1", "AAPL", "buy", "limit")
    assert (mine.qty, mine.limit_price, mine.status, mine.raw_status) == (Decimal(10), Decimal("187.45"), "open", "Submitted")
    assert orders[str(other_api.perm_id)].client_order_id is None
    assert orders[str(other_api.perm_id)].raw["order"]["clientId"] == 9
    stop = orders[str(by_hand.perm_id)]
    assert (stop.order_type, stop.stop_price, stop.limit_price, stop.qty) == ("stop", Decimal("401.1"), None, Decimal("0.5"))
    assert stop.client_order_id is None


def test_partial_fill_status_and_average_price(tws, adapter):
    order = tws.add_order(symbol="AAPL", action="BUY", qty=Decimal(10), order_ref="ord-p", client_id=1)
    tws.fill(order, Decimal(4), Decimal("187.45"), notify=False)
    tws.fill(order, Decimal(1), Decimal("187.46"), notify=False)
    got = adapter.order_by_client_id("ord-p")
    assert (got.status, got.raw_status, got.filled_qty) == ("partially_filled", "Submitted", Decimal(5))
    assert got.avg_fill_price == Decimal("187.452")


def test_completed_orders_keyed_by_perm_id_even_when_order_ids_repeat(tws, adapter):
    filled = tws.add_order(symbol="AAPL", action="BUY", qty=Decimal(2), order_ref="ord-f", client_id=1, order_id=1)
    tws.fill(filled, Decimal(2), Decimal("10.01"), notify=False)
    cancelled = tws.add_order(symbol="AAPL", action="BUY", qty=Decimal(2), order_ref="ord-c", client_id=1, order_id=2)
    tws.fill(cancelled, Decimal(1), Decimal("10.02"), notify=False)
    tws.finish(cancelled, "Cancelled", "Cancelled by Trader", notify=False)
    rejected = tws.add_order(symbol="AAPL", action="SELL", qty=Decimal(2), order_ref="ord-r", client_id=1, order_id=3)
    tws.finish(rejected, "Inactive", "Rejected: margin", notify=False)
    expired = tws.add_order(symbol="AAPL", action="SELL", qty=Decimal(2), order_ref="ord-e", client_id=1, order_id=4)
    tws.finish(expired, "Cancelled", "Expired", notify=False)
    # TWS reset its order id sequence: a new order reuses orderId 1 of the filled one
    reused = tws.add_order(symbol="AAPL", action="BUY", qty=Decimal(1), order_ref="ord-new", client_id=1, order_id=1)
    orders = by_perm(adapter.recent_orders())
    assert len(orders) == 5
    assert orders[str(filled.perm_id)].status == "filled" and orders[str(filled.perm_id)].filled_qty == Decimal(2)
    assert orders[str(cancelled.perm_id)].status == "cancelled"
    assert orders[str(cancelled.perm_id)].filled_qty == Decimal(1)
    assert orders[str(rejected.perm_id)].status == "rejected"
    assert orders[str(expired.perm_id)].status == "expired"
    assert orders[str(expired.perm_id)].raw_status == "Cancelled"
    assert orders[str(reused.perm_id)].status == "open"
    assert orders[str(reused.perm_id)].client_order_id == "ord-new"
    assert orders[str(filled.perm_id)].client_order_id == "ord-f"
    done_at = orders[str(filled.perm_id)].updated_at
    assert done_at is not None and done_at.tzinfo is not None and done_at.utcoffset() == timedelta(0)
    assert abs(done_at - filled.completed_time) < timedelta(seconds=1)
    # finished orders are not open orders
    assert set(by_perm(adapter.open_orders())) == {str(reused.perm_id)}
    # the lookup by our id finds finished ones too
    assert adapter.order_by_client_id("ord-f").venue_order_id == str(filled.perm_id)
    assert adapter.order_by_venue_id(str(expired.perm_id)).client_order_id == "ord-e"


def test_recent_orders_since_drops_older_completed_orders(tws, adapter):
    old = tws.add_order(symbol="AAPL", action="BUY", qty=Decimal(1), order_ref="old", client_id=1)
    tws.finish(old, "Cancelled", notify=False)
    old.completed_time = datetime.now(timezone.utc) - timedelta(hours=3)
    new = tws.add_order(symbol="AAPL", action="BUY", qty=Decimal(1), order_ref="new", client_id=1)
    tws.finish(new, "Cancelled", notify=False)
    since = datetime.now(timezone.utc) - timedelta(hours=1)
    assert set(by_perm(adapter.recent_orders(since))) == {str(new.perm_id)}
    with pytest.raises(ValueError, match="timezone-aware"):
        adapter.recent_orders(datetime.now())


def test_unknown_order_is_not_found(adapter):
    with pytest.raises(OrderNotFound, match="orderRef 'nope'"):
        adapter.order_by_client_id("nope")
    with pytest.raises(OrderNotFound):
        adapter.order_by_venue_id("42")


# -- fills ------------------------------------------------------------------------------------


def test_fills_with_commission_as_fee_exact_and_deduplicated(tws, adapter):
    order = tws.add_order(symbol="AAPL", action="SELL", qty=Decimal(300), order_ref="ord-x", client_id=1)
    e1 = tws.fill(order, Decimal(100), Decimal("187.45"), commission=Decimal("1.0025"), notify=False)
    e2 = tws.fill(order, Decimal("0.0001"), Decimal("1234567.891234"), commission=Decimal("0.35"), notify=False)
    for _ in range(2):  # the second time ib_insync already knows these executions
        fills = {f.exec_id: f for f in adapter.fills()}
        assert set(fills) == {e1.exec_id, e2.exec_id}
        first = fills[e1.exec_id]
        assert (first.qty, first.price, first.fee, first.fee_currency) == (Decimal(100), Decimal("187.45"), Decimal("1.0025"), "USD")
        assert (first.side, first.symbol, first.client_order_id) == ("sell", "AAPL", "ord-x")
        assert first.venue_order_id == str(order.perm_id)
        assert first.occurred_at is not None and first.occurred_at.utcoffset() == timedelta(0)
        assert abs(first.occurred_at - e1.time) < timedelta(seconds=1)
        second = fills[e2.exec_id]
        assert (second.qty, second.price, second.fee) == (Decimal("0.0001"), Decimal("1234567.891234"), Decimal("0.35"))
        assert str(second.price) == "1234567.891234"
    assert e1.exec_id.count(".") == 3 and e1.exec_id.endswith(".01.01")  # TWS's execId shape


def test_a_correction_replaces_the_fill_it_corrects(tws, adapter):
    order = tws.add_order(symbol="AAPL", action="BUY", qty=Decimal(100), order_ref="ord-k", client_id=1)
    original = tws.fill(order, Decimal(100), Decimal("50.10"), commission=Decimal("1"), notify=False)
    corrected = tws.correct(original, price=Decimal("50.01"), commission=Decimal("0.9"), notify=False)
    assert corrected.exec_id == original.exec_id[:-2] + "02"
    # TWS reports both executions; the adapter reports the correction only
    assert len(tws.executions) == 2
    fills = adapter.fills()
    assert [f.exec_id for f in fills] == [corrected.exec_id]
    assert (fills[0].price, fills[0].qty, fills[0].fee) == (Decimal("50.01"), Decimal(100), Decimal("0.9"))
    assert fills[0].raw["corrects"] == [original.exec_id]
    tws.executions.reverse()  # whatever order TWS lists them in
    assert [f.exec_id for f in adapter.fills()] == [corrected.exec_id]


def test_exec_ids_of_different_orders_are_never_merged(tws, adapter):
    a = tws.add_order(symbol="AAPL", action="BUY", qty=Decimal(1), order_ref="a", client_id=1)
    b = tws.add_order(symbol="AAPL", action="BUY", qty=Decimal(1), order_ref="b", client_id=1)
    tws.fill(a, Decimal(1), Decimal(1), exec_id="0000e0d5.00000001.01.01", notify=False)
    tws.fill(b, Decimal(1), Decimal(1), exec_id="0000e0d5.00000001.01.02", notify=False)  # same shape, other order
    assert len(adapter.fills()) == 2


def test_fills_since_a_time(tws, adapter):
    order = tws.add_order(symbol="AAPL", action="BUY", qty=Decimal(2), order_ref="t", client_id=1)
    now = datetime.now(timezone.utc)
    old = tws.fill(order, Decimal(1), Decimal(1), at=now - timedelta(hours=2), notify=False)
    new = tws.fill(order, Decimal(1), Decimal(1), at=now - timedelta(minutes=1), notify=False)
    assert [f.exec_id for f in adapter.fills(now - timedelta(hours=1))] == [new.exec_id]
    assert [f.exec_id for f in adapter.fills()] == [old.exec_id, new.exec_id]
    filt = next(m for m in reversed(tws.received) if m[0] == "7")
    assert filt[4] == "DU1234567"  # filtered by account at TWS


# -- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("query, method", [("positions", "positions"), ("orders", "open_orders"),
                                           ("orders", "recent_orders"), ("fills", "fills"),
                                           ("balances", "balances")])
def test_a_failing_query_raises_instead_of_answering_empty(tws, adapter, query, method):
    tws.fail(query)
    started = time.monotonic()
    with pytest.raises(VenueQueryFailed, match="error 322"):
        getattr(adapter, method)()
    assert time.monotonic() - started < FAST  # the error ends the wait, not the timeout


def test_a_silent_query_times_out_as_failed(tws):
    with connect(tws, timeout=0.3) as a:
        tws.fail("positions", mode="silent")
        with pytest.raises(VenueQueryFailed, match="no answer .* within 0.3 s"):
            a.positions()
        tws.heal()
        tws.set_position("AAPL", Decimal(1))
        assert [p.qty for p in a.positions()] == [Decimal(1)]  # the adapter is still usable


def test_snapshot_marks_only_the_failing_part_unknown(tws, adapter):
    tws.set_position("AAPL", Decimal(2))
    tws.fail("fills")
    snap = adapter.snapshot(now=datetime.now(timezone.utc))
    assert isinstance(snap.fills, Unknown) and "error 322" in snap.fills.reason
    assert [p.qty for p in snap.positions] == [Decimal(2)]
    assert isinstance(snap.open_orders, list) and isinstance(snap.balances, list)
    assert snap.raw_report()["fills"] == {"unknown": snap.fills.reason}


def test_the_scenario_venue_failure_applies_after_connect():
    with ib_venue() as venue:
        venue.fail("positions")  # before the adapter exists
        adapter = venue.adapter()
        with pytest.raises(VenueQueryFailed):
            adapter.positions()
        assert isinstance(adapter.balances(), list)


# -- live order flow --------------------------------------------------------------------------


def test_submit_carries_order_ref_and_reads_back_once(tws, adapter):
    request = OrderRequest("ord-42", "AAPL", "buy", "limit", Decimal("100"), limit_price=Decimal("187.45"))
    placed = adapter.submit(request)
    assert placed.client_order_id == "ord-42" and placed.status in ("pending", "open")
    at_venue = tws.find(order_ref="ord-42")
    assert placed.venue_order_id == str(at_venue.perm_id)
    assert (at_venue.qty, at_venue.lmt, at_venue.order_type, at_venue.client_id) == (Decimal(100), Decimal("187.45"), "LMT", 1)
    place_msg = next(m for m in tws.received if m[0] == "3")
    assert place_msg[17] == "100" and place_msg[19] == "187.45" and place_msg[26] == "ord-42"  # exact wire text
    again = adapter.submit(request)  # a retry: the existing order, no second one
    assert again.venue_order_id == placed.venue_order_id
    assert len([o for o in tws.orders if o.order_ref == "ord-42"]) == 1
    back = adapter.order_by_client_id("ord-42")
    assert (back.venue_order_id, back.status, back.limit_price) == (placed.venue_order_id, "open", Decimal("187.45"))
    # a new session (another client id) sees it as well, by orderRef
    with connect(tws, client_id=2) as other:
        assert other.order_by_client_id("ord-42").venue_order_id == placed.venue_order_id
        assert other.submit(request).venue_order_id == placed.venue_order_id
    assert len([o for o in tws.orders if o.order_ref == "ord-42"]) == 1


def test_submit_cancel_and_updates_feed(tws, adapter):
    placed = adapter.submit(OrderRequest("ord-c1", "AAPL", "sell", "limit", Decimal(5), limit_price=Decimal("200")))
    adapter.cancel(placed.venue_order_id)
    assert tws.find(order_ref="ord-c1").status == "Cancelled"
    assert adapter.order_by_client_id("ord-c1").status == "cancelled"
    kinds = _updates(adapter, 2)
    assert [(u.kind, u.client_order_id, u.venue_order_id) for u in kinds] == [
        ("ack", "ord-c1", placed.venue_order_id), ("cancelled", "ord-c1", placed.venue_order_id)]
    with pytest.raises(OrderNotCancelable, match="finished already"):
        adapter.cancel(placed.venue_order_id)
    with pytest.raises(OrderNotFound):
        adapter.cancel("999")


def test_market_order_fill_arrives_on_the_feed_with_its_commission():
    with FakeTWS(commission_per_share=Decimal("0.005"), min_commission=Decimal("1")) as server:
        server.set_mark("AAPL", Decimal("187.45"))
        with connect(server) as a:
            placed = a.submit(OrderRequest("ord-m", "AAPL", "buy", "market", Decimal(300)))
            updates = _updates(a, 2)
            assert [u.kind for u in updates] == ["ack", "fill"]
            fill = updates[1].fill
            assert fill is not None and fill.venue_order_id == placed.venue_order_id
            assert (fill.qty, fill.price, fill.fee, fill.client_order_id) == (Decimal(300), Decimal("187.45"), Decimal("1.5"), "ord-m")
            assert a.order_by_client_id("ord-m").status == "filled"
            assert [(p.symbol, p.qty) for p in a.positions()] == [("AAPL", Decimal(300))]
            assert a.next_update(0.3) is None  # nothing twice


def test_a_rejected_order_comes_back_rejected(tws, adapter):
    tws.rejects["TSLA"] = "no trading permission"
    result = adapter.submit(OrderRequest("ord-r", "TSLA", "buy", "limit", Decimal(1), limit_price=Decimal(1)))
    assert result.status == "rejected"
    assert "no trading permission" in result.raw["errors"]
    update = _updates(adapter, 1)[0]
    assert update.kind == "rejected" and update.client_order_id == "ord-r"


def test_orders_of_other_clients_cannot_be_cancelled_from_here(tws, adapter):
    by_hand = tws.add_order(symbol="MSFT", action="BUY", qty=Decimal(1), client_id=0, order_id=0)
    with pytest.raises(OrderNotCancelable, match="by hand in TWS"):
        adapter.cancel(str(by_hand.perm_id))
    assert by_hand.is_open


def test_bad_order_requests_are_refused_before_sending(tws, adapter):
    bad = [
        OrderRequest("x", "AAPL", "buy", "limit", Decimal(1)),  # no limit price
        OrderRequest("x", "AAPL", "buy", "market", 1.5),  # type: ignore[arg-type]  # float
        OrderRequest("x", "AAPL", "buy", "market", Decimal("NaN")),
        OrderRequest("x", "AAPL", "hold", "market", Decimal(1)),
        OrderRequest("", "AAPL", "buy", "market", Decimal(1)),
        OrderRequest("x", "AAPL", "buy", "trailing", Decimal(1)),
    ]
    for request in bad:
        with pytest.raises(ValueError):
            adapter.submit(request)
    assert not [m for m in tws.received if m[0] == "3"]


def _updates(adapter: IBAdapter, n: int):
    out = []
    for _ in range(n):
        update = adapter.next_update(3)
        assert update is not None, f"only {len(out)} of {n} updates: {out}"
        out.append(update)
    return out


# -- pure mapping -----------------------------------------------------------------------------


def test_status_mapping():
    ten, none = Decimal(10), Decimal(0)
    assert map_status("PendingSubmit", ten, none) == "pending"
    assert map_status("ApiPending", ten, none) == "pending"
    assert map_status("PreSubmitted", ten, none) == "pending"
    assert map_status("Submitted", ten, none) == "open"
    assert map_status("Submitted", ten, Decimal(3)) == "partially_filled"
    assert map_status("PendingCancel", ten, none) == "open"
    assert map_status("Filled", ten, ten) == "filled"
    assert map_status("Cancelled", ten, Decimal(3)) == "cancelled"
    assert map_status("ApiCancelled", ten, none) == "cancelled"
    assert map_status("Cancelled", ten, none, "Expired") == "expired"
    assert map_status("Inactive", ten, none) == "rejected"
    assert map_status("SomethingNew", ten, none) == "unknown"


def test_ib_times():
    assert parse_ib_time("20240315 10:30:00 America/New_York") == datetime(2024, 3, 15, 14, 30, tzinfo=timezone.utc)
    assert parse_ib_time("20240115 10:30:00 EST") == datetime(2024, 1, 15, 15, 30, tzinfo=timezone.utc)
    assert parse_ib_time("20240315-14:30:00") == datetime(2024, 3, 15, 14, 30, tzinfo=timezone.utc)
    assert parse_ib_time("") is None and parse_ib_time("garbage") is None


# -- the VenueControl used by the reconciliation scenarios -----------------------------------


def test_ib_venue_control_stages_the_venue():
    with ib_venue() as venue:
        assert (venue.broker, venue.venue) == ("ib", "IB")
        ours = venue.add_order(client_order_id="ord-1", symbol="AAPL", side="buy", qty=Decimal(10),
                               status="partially_filled", fills=[("X-1", Decimal(4), Decimal("187.45"))])
        outside = venue.add_order(client_order_id=None, symbol="MSFT", side="sell", qty=Decimal(2))
        done = venue.add_order(client_order_id="ord-2", symbol="AAPL", side="sell", qty=Decimal(4), status="filled",
                               fills=[("X-2", Decimal(4), Decimal("190"))])
        venue.set_cash(Decimal("1000"))
        adapter = venue.adapter()
        orders = by_perm(adapter.recent_orders())
        assert orders[ours].status == "partially_filled" and orders[ours].client_order_id == "ord-1"
        assert orders[outside].client_order_id is None and orders[outside].raw["order"]["clientId"] == 0
        assert orders[done].status == "filled"
        assert {f.exec_id for f in adapter.fills()} == {"X-1", "X-2"}
        assert [(p.symbol, p.qty) for p in adapter.positions()] == []  # +4 -4
        venue.set_position("AAPL", Decimal("-3"), Decimal("190"))
        assert [(p.symbol, p.qty) for p in adapter.positions()] == [("AAPL", Decimal(-3))]
        assert [(b.currency, b.cash) for b in adapter.balances()] == [("USD", Decimal("1000"))]


def test_the_adapter_imports_after_asyncio_run_left_no_event_loop():
    """An engine that ran ``asyncio.run()`` before importing the IB adapter (the main thread then has
    no event loop, which ib_insync's import asks for) can still import it."""
    import subprocess
    import sys

    script = ("import asyncio\nasyncio.run(asyncio.sleep(0))\n"
              "import tradestate.adapters.brokers.ib as ib\nprint(ib.IB_MODULE)\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
