"""Amendments through the pre-trade check: ``request_replace`` records the request with its risk
decision before the venue sees it; ``OrderFlow.replace`` sends only what passed; the venue's
confirmation (``OrderReplaced``) applies as before; a crash between record and send is settled by
the venue's state of the order, never by a second send."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from decimal import Decimal as D

import pytest

from tradestate import AsyncTradestateClient
from tradestate.adapters.brokers.sim import SimulatedBroker
from tradestate.adapters.store import open_store
from tradestate.client import TradestateClient
from tradestate.domain.errors import IdempotencyConflict, InvalidInput, InvalidTransition, UnknownOrder
from tradestate.domain.ids import order_stream_id
from tradestate.order_flow import OrderFlow

from tests.support.reconcile import ACCOUNT, rows

SYM = "AAPL"


@pytest.fixture
def sim(tmp_path):
    return SimulatedBroker(account=ACCOUNT, venue="SIM", state_path=str(tmp_path / "venue.json"))


def _order(client, coid="o1"):
    return client.state.orders[order_stream_id(ACCOUNT, coid)]


def _working(client, flow, coid="o1", qty=10, limit="100", side="buy"):
    """A limit order of ours working at the simulated venue (no mark: it rests)."""
    assert client.record_intent(ACCOUNT, coid, SYM, side, qty, order_type="limit", limit_price=limit,
                                venue="SIM").accepted
    flow.forward(ACCOUNT, coid)
    flow.pump()
    assert _order(client, coid).status == "acknowledged"


def test_raising_quantity_beyond_the_position_limit_is_refused_recorded_and_never_sent(db_url, sim):
    with TradestateClient(open_store(db_url)) as client:
        flow = OrderFlow(client, sim)
        client.set_risk_limit(ACCOUNT, "max_position_qty", 15)
        _working(client, flow)
        before = len(rows(db_url))
        result = flow.replace(ACCOUNT, "o1", qty=20, replace_id="r1")
        assert not result.accepted and result.refusal.reasons == ["max_position_qty"]
        assert "worst-case position 20 > 15" in result.refusal.detail
        added = [t for t, _ in rows(db_url)][before:]
        assert added == ["OrderReplaceRequested", "OrderReplaceRefused"]
        assert sim.order_by_client_id("o1").qty == 10  # the venue never saw it
        order = _order(client)
        assert order.qty == 10 and order.replace_pending is None
        assert order.as_dict()["replaces"]["r1"]["status"] == "refused"
        again = flow.replace(ACCOUNT, "o1", qty=20, replace_id="r1")  # a retry: the first answer
        assert again.duplicate and again.refusal.reasons == ["max_position_qty"]
        assert len(rows(db_url)) == before + 2
        with pytest.raises(IdempotencyConflict):
            client.request_replace(ACCOUNT, "o1", qty=12, replace_id="r1")

        # within the limit: passes, the venue amends, its confirmation applies
        ok = flow.replace(ACCOUNT, "o1", qty=14, limit_price="101", replace_id="r2")
        assert ok.accepted
        order = _order(client)
        assert (order.qty, order.limit_price, order.replace_pending) == (14, D("101"), None)
        assert sim.order_by_client_id("o1").qty == 14
        assert flow.pump().recorded == []  # the stream's "replaced" is the one recorded already
        sim.set_price(SYM, "100.5")
        flow.pump()
        assert _order(client).status == "filled" and client.state.position_of(ACCOUNT, "SIM", SYM).qty == 14


def test_more_notional_with_the_multiplier_is_refused_and_lowering_quantity_always_passes(sqlite_url, sim):
    with TradestateClient(open_store(sqlite_url)) as client:
        flow = OrderFlow(client, sim)
        client.define_instrument("ES", "future", multiplier=50, tick_size="0.25",
                                 expiry=datetime(2099, 12, 18, tzinfo=timezone.utc))
        client.set_risk_limit(ACCOUNT, "max_order_notional", 1_000_000)
        assert client.record_intent(ACCOUNT, "f1", "ES", "buy", 3, order_type="limit", limit_price="5000",
                                    venue="SIM").accepted  # 3 x 5000 x 50 = 750,000
        flow.forward(ACCOUNT, "f1")
        refused = flow.replace(ACCOUNT, "f1", qty=5)  # 1,250,000
        assert refused.refusal.reasons == ["max_order_notional"]
        assert "notional 1250000" in refused.refusal.detail
        with pytest.raises(InvalidInput, match="tick grid"):
            client.request_replace(ACCOUNT, "f1", limit_price="5000.1")
        # the kill switch refuses what adds, never what only takes away
        client.engage_kill_switch(ACCOUNT, "test")
        assert client.request_replace(ACCOUNT, "f1", limit_price="5000.25").refusal.reasons[0] == "kill_switch"
        lower = flow.replace(ACCOUNT, "f1", qty=2)
        assert lower.accepted and _order(client, "f1").qty == 2 and sim.order_by_client_id("f1").qty == 2
        client.set_risk_limit(ACCOUNT, "max_order_notional", 1)  # tightened since: still only a reduction
        assert flow.replace(ACCOUNT, "f1", qty=1, limit_price="4999.75").accepted  # less, at a lower bid


def test_bad_amendments_are_typed_errors_and_append_nothing(sqlite_url, sim):
    with TradestateClient(open_store(sqlite_url)) as client:
        flow = OrderFlow(client, sim)
        _working(client, flow)
        client.record_fill(ACCOUNT, "o1", "X1", 4, "100")
        before = len(rows(sqlite_url))
        cases = [
            (UnknownOrder, dict(client_order_id="nope", qty=5)),
            (InvalidInput, dict(qty=0)),
            (InvalidInput, dict(qty=-3)),
            (InvalidInput, dict(limit_price="-1")),
            (InvalidTransition, dict(qty=3)),  # below the 4 filled
            (InvalidTransition, dict(qty=4)),  # nothing left to work
            (InvalidInput, dict(qty=10)),  # changes nothing
            (InvalidInput, dict(stop_price="99")),  # a limit order takes no stop price
        ]
        for error, kwargs in cases:
            coid = kwargs.pop("client_order_id", "o1")
            with pytest.raises(error):
                client.request_replace(ACCOUNT, coid, **kwargs)
        client.request_cancel(ACCOUNT, "o1")
        with pytest.raises(InvalidTransition, match="cancel pending"):
            client.request_replace(ACCOUNT, "o1", qty=8)
        assert len(rows(sqlite_url)) == before + 1  # the cancel request only
        client.record_cancelled(ACCOUNT, "o1")
        with pytest.raises(InvalidTransition, match="cancelled"):
            client.request_replace(ACCOUNT, "o1", qty=8)
        client.record_intent(ACCOUNT, "o3", SYM, "buy", 5, order_type="limit", limit_price="100", venue="SIM")
        with pytest.raises(InvalidTransition, match="not acknowledged"):  # forward would send the intent
            client.request_replace(ACCOUNT, "o3", qty=8)

        _working(client, flow, "o2")
        first = client.request_replace(ACCOUNT, "o2", qty=12)
        assert first.accepted
        assert client.request_replace(ACCOUNT, "o2", qty=12).duplicate  # the same, pending: a retry
        with pytest.raises(InvalidTransition, match="pending"):
            client.request_replace(ACCOUNT, "o2", qty=11)


def test_a_crash_between_record_and_send_is_settled_by_the_venue_never_sent_twice(db_url, sim, tmp_path):
    with TradestateClient(open_store(db_url)) as client:
        flow = OrderFlow(client, sim)
        _working(client, flow, "o1")
        _working(client, flow, "o2")
        # o1: recorded and sent, the engine died before recording the venue's answer
        assert client.request_replace(ACCOUNT, "o1", qty=12, replace_id="a").accepted
        order = _order(client, "o1")
        sim.replace_order(order.venue_order_id, qty=D(12), limit_price=D(100))
        # o2: recorded, never sent
        assert client.request_replace(ACCOUNT, "o2", qty=13, replace_id="b").accepted
    sent = []
    real = sim.replace_order
    sim.replace_order = lambda *a, **k: sent.append(a) or real(*a, **k)  # counts what is sent after restart
    with TradestateClient(open_store(db_url)) as client:
        assert _order(client, "o1").replace_pending == "a" and _order(client, "o2").replace_pending == "b"
        flow = OrderFlow(client, sim)
        settled = flow.settle_replaces()
        assert len(settled) == 2 and sent == []
        o1, o2 = _order(client, "o1"), _order(client, "o2")
        assert (o1.qty, o1.replace_pending, o1.as_dict()["replaces"]["a"]["status"]) == (12, None, "replaced")
        assert (o2.qty, o2.replace_pending) == (10, None)
        assert o2.as_dict()["replaces"]["b"]["status"] == "refused"
        assert o2.as_dict()["replaces"]["b"]["by"] == "venue"
        assert flow.settle_replaces() == [] and flow.pump().recorded == []  # o1's "replaced" on the stream
        # asked again, o2 goes out once
        assert flow.replace(ACCOUNT, "o2", qty=13, replace_id="b2").accepted
        assert len(sent) == 1 and _order(client, "o2").qty == 13
        # a send retried after its answer was recorded sends nothing
        assert flow.send_replace(ACCOUNT, "o2") is None and len(sent) == 1


def test_send_after_a_crash_finds_it_applied_and_does_not_send_again(sqlite_url, sim):
    with TradestateClient(open_store(sqlite_url)) as client:
        flow = OrderFlow(client, sim)
        _working(client, flow)
        client.request_replace(ACCOUNT, "o1", qty=15, replace_id="r")
        sim.replace_order(_order(client).venue_order_id, qty=D(15), limit_price=D(100))
        sent = []
        real = sim.replace_order
        sim.replace_order = lambda *a, **k: sent.append(a) or real(*a, **k)
        assert flow.send_replace(ACCOUNT, "o1") is not None and sent == []
        assert _order(client).qty == 15


def test_the_venue_refusing_an_amendment_is_recorded_and_the_order_goes_on(sqlite_url, sim):
    with TradestateClient(open_store(sqlite_url)) as client:
        flow = OrderFlow(client, sim)
        _working(client, flow)
        assert client.request_replace(ACCOUNT, "o1", qty=12, replace_id="r").accepted
        sim.cancel(_order(client).venue_order_id)  # the venue cancelled it meanwhile
        flow.send_replace(ACCOUNT, "o1")
        entry = _order(client).as_dict()["replaces"]["r"]
        assert (entry["status"], entry["by"], entry["reasons"]) == ("refused", "venue", ["venue_rejected"])
        flow.pump()
        assert _order(client).status == "cancelled"


def test_checkpoint_and_cold_fold_keep_a_pending_amendment(sqlite_url, sim):
    with TradestateClient(open_store(sqlite_url), checkpoint_every=1) as client:
        flow = OrderFlow(client, sim)
        _working(client, flow)
        position = client.request_replace(ACCOUNT, "o1", qty=12, replace_id="r").position
        client.record_fill(ACCOUNT, "o1", "X1", 1, "100")  # a checkpoint after the request
    for use_checkpoints in (True, False):
        with TradestateClient(open_store(sqlite_url), use_checkpoints=use_checkpoints) as again:
            if use_checkpoints:
                assert again.loaded.checkpoint is not None and again.loaded.checkpoint.position >= position
            order = _order(again)
            assert order.replace_pending == "r" and order.replaces["r"]["request"]["qty"] == "12"
            assert again.request_replace(ACCOUNT, "o1", qty=12, replace_id="r").duplicate
            with pytest.raises(InvalidTransition, match="pending"):
                again.request_replace(ACCOUNT, "o1", qty=11)


def test_async_client_has_request_replace(sqlite_url, sim):
    async def main():
        client = TradestateClient(open_store(sqlite_url))
        flow = OrderFlow(client, sim)
        _working(client, flow)
        aio = AsyncTradestateClient(client)
        result = await aio.request_replace(ACCOUNT, "o1", qty=3, replace_id="x")
        assert result.accepted and result.replace_id == "x"
        client.close()

    asyncio.run(main())


# ------------------------------------------------------------------ through alpaca-py, fake Alpaca


def test_alpaca_replace_through_the_real_client_patches_once_and_records_the_replacement(sqlite_url):
    from tests.support.fake_alpaca import FakeAlpaca

    with FakeAlpaca() as fake, TradestateClient(open_store(sqlite_url)) as client:
        adapter = fake.adapter()
        account, venue = adapter.account, adapter.venue
        flow = OrderFlow(client, adapter)
        client.set_risk_limit(account, "max_position_qty", 20)
        assert client.record_intent(account, "a1", SYM, "buy", 10, order_type="limit", limit_price="100.25",
                                    venue=venue).accepted
        first = flow.forward(account, "a1")
        fill = fake.fill(first.venue_order_id, "4", "100.25")
        client.record_fill(account, "a1", fill["execution_id"], 4, "100.25", venue_order_id=first.venue_order_id)
        orders_before = len(fake.orders)

        refused = flow.replace(account, "a1", qty=25)
        assert refused.refusal.reasons == ["max_position_qty"] and len(fake.orders) == orders_before  # never sent

        ok = flow.replace(account, "a1", qty=12, limit_price="101")
        assert ok.accepted and len(fake.orders) == orders_before + 1
        old = fake.orders[first.venue_order_id]
        new = fake.orders[old["replaced_by"]]
        # Alpaca's replacement works what is left: 12 in all, 4 filled already
        assert (old["status"], D(new["qty"]), new["replaces"], D(new["limit_price"])) == (
            "replaced", D(8), first.venue_order_id, D(101))
        order = client.state.orders[order_stream_id(account, "a1")]
        assert (order.qty, order.limit_price, order.venue_order_id, order.replace_pending) == (
            12, D(101), new["id"], None)

        # a crash after the PATCH, before its answer was recorded: not sent again; reconciliation
        # reads the chain and records the replacement
        from tradestate.reconcile import reconcile

        assert client.request_replace(account, "a1", qty=13, replace_id="crash").accepted
        adapter.replace_order(new["id"], qty=D(13), limit_price=D(101))
        orders_before = len(fake.orders)
        assert flow.send_replace(account, "a1") is None and len(fake.orders) == orders_before
        assert client.state.orders[order_stream_id(account, "a1")].replace_pending == "crash"
        reconcile(client, adapter)
        order = client.state.orders[order_stream_id(account, "a1")]
        new = fake.orders[fake.orders[new["id"]]["replaced_by"]]
        assert (order.qty, order.venue_order_id, order.replace_pending) == (13, new["id"], None)
        assert order.replaces["crash"]["status"] == "replaced"
        # and the next amendment goes to the order now carrying ours
        assert flow.replace(account, "a1", qty=15, limit_price="101").accepted
        new = fake.orders[fake.orders[new["id"]]["replaced_by"]]
        order = client.state.orders[order_stream_id(account, "a1")]
        assert (D(new["qty"]), order.qty, order.venue_order_id) == (D(11), 15, new["id"])

        # the venue refuses an amendment of a finished order (HTTP 422): recorded, the order goes on
        fake.finish(new["id"], "canceled")
        assert client.request_replace(account, "a1", qty=11, replace_id="late").accepted
        flow.send_replace(account, "a1")
        entry = client.state.orders[order_stream_id(account, "a1")].replaces["late"]
        assert (entry["status"], entry["by"]) == ("refused", "venue") and "422" in entry["detail"]


# ------------------------------------------------------------------ through ib_insync, fake TWS


@pytest.mark.timeout(60)
def test_ib_replace_modifies_the_same_order_id_through_ib_insync(sqlite_url):
    from tests.support.fake_tws import FakeTWS
    from tradestate.adapters.brokers.ib import IBAdapter

    with FakeTWS() as tws, IBAdapter(account=ACCOUNT, host=tws.host, port=tws.port, client_id=1,
                                     timeout=2.0) as ib, TradestateClient(open_store(sqlite_url)) as client:
        flow = OrderFlow(client, ib)
        client.set_risk_limit(ACCOUNT, "max_order_qty", 200)
        assert client.record_intent(ACCOUNT, "i1", SYM, "buy", 100, order_type="limit", limit_price="60",
                                    venue="IB").accepted
        flow.forward(ACCOUNT, "i1")
        assert flow.replace(ACCOUNT, "i1", qty=250).refusal.reasons == ["max_order_qty"]
        assert tws.find(order_ref="i1").qty == 100
        assert flow.replace(ACCOUNT, "i1", qty=150, limit_price="61").accepted
        placed = tws.find(order_ref="i1")
        assert (placed.qty, placed.lmt, len(tws.orders)) == (150, D(61), 1)  # the same order, modified
        order = _order(client, "i1")
        assert (order.qty, order.limit_price, order.replace_pending) == (150, D(61), None)
        flow.pump()  # what the feed says of the modification records nothing more
        after = _order(client, "i1")
        assert (after.qty, after.limit_price, after.status, after.discrepancies) == (150, D(61), "acknowledged", 0)


def test_ib_a_price_only_amendment_tws_refuses_is_refused_and_the_order_keeps_its_price():
    from tests.support.fake_tws import FakeTWS
    from tradestate.adapters.brokers.base import OrderRequest, ReplaceRejected
    from tradestate.adapters.brokers.ib import IBAdapter

    with FakeTWS() as tws, IBAdapter(account=ACCOUNT, host=tws.host, port=tws.port, client_id=1,
                                     timeout=2.0) as ib:
        placed = ib.submit(OrderRequest(client_order_id="p1", symbol=SYM, side="buy", qty=D(100),
                                        order_type="limit", limit_price=D(60)))
        tws.rejects[SYM] = "price out of band"  # TWS refuses the modification (error 201)
        with pytest.raises(ReplaceRejected, match="price out of band"):
            ib.replace_order(placed.venue_order_id, qty=D(100), limit_price=D(61))
        (still,) = [o for o in ib.open_orders() if o.venue_order_id == placed.venue_order_id]
        assert (still.qty, still.limit_price) == (D(100), D(60))  # not shown as amended
        assert tws.find(order_ref="p1").lmt == D(60)


def test_reconciliation_records_an_amendment_the_venue_applied_and_leaves_an_unsent_one_pending(db_url, sim):
    from tradestate.reconcile import reconcile

    with TradestateClient(open_store(db_url)) as client:
        flow = OrderFlow(client, sim)
        _working(client, flow, "o1")
        _working(client, flow, "o2")
        client.request_replace(ACCOUNT, "o1", qty=12, replace_id="sent")
        sim.replace_order(_order(client, "o1").venue_order_id, qty=D(12), limit_price=D(100))  # then the crash
        client.request_replace(ACCOUNT, "o2", qty=13, replace_id="unsent")
    with TradestateClient(open_store(db_url)) as client:
        result = reconcile(client, sim)
        assert [d["kind"] for d in result.discrepancies] == ["missed_replace"]
        o1, o2 = _order(client, "o1"), _order(client, "o2")
        assert (o1.qty, o1.replace_pending) == (12, None)
        assert (o2.qty, o2.replace_pending) == (10, "unsent")  # the venue's order does not show it: not decided here
        assert sim.order_by_client_id("o2").qty == 10  # and nothing was sent
        head = client.store.trading.head()
        again = reconcile(client, sim)
        assert again.discrepancies == [] and client.store.trading.head() == head + 1  # its report only


def test_read_models_and_integrity_take_amendments_in_stride(sqlite_url):
    import tradestate
    from tests.support.projector_worker import Clock, assert_equals_rebuild
    from tradestate.domain.integrity import MeaningCheck, quarantine_report
    from tradestate.projections.projector import Projector

    with tradestate.connect(sqlite_url, clock=Clock()) as client:
        client.set_risk_limit("a", "max_order_qty", 15)
        client.record_intent("a", "o1", SYM, "buy", 10, order_type="limit", limit_price="60", venue="IB")
        client.record_ack("a", "o1", "P1")
        assert not client.request_replace("a", "o1", qty=20).accepted
        assert client.request_replace("a", "o1", qty=12).accepted
        client.record_replaced("a", "o1", 12, limit_price="60")
        client.record_fill("a", "o1", "X1", 12, "60")
    with open_store(sqlite_url) as store:
        Projector(store, page=2).catch_up()
        assert_equals_rebuild(store)
        check = MeaningCheck()  # the log's meaning: every amendment names an order that exists
        assert check.feed(store.trading.iter_rows(0)) is None
    with TradestateClient(open_store(sqlite_url), use_checkpoints=False) as again:
        assert quarantine_report(again.state) == []
