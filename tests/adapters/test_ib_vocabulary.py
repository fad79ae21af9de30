"""IB's vocabulary beyond the common statuses, through the real ib_insync client against the fake
TWS (``tests/support/fake_tws.py``, written from IB's documentation) and a real client on SQLite:
execution corrections, commission reports that come late or never (the master client id),
two permIds behind one orderRef, duplicate order statuses, GTC orders filled across sessions,
financial-advisor allocations. Each scenario reconciles twice: the second run appends nothing.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest

from tests.support.fake_tws import FakeTWS
from tests.support.reconcile import kinds, types
from tradestate.adapters.brokers.base import OrderRequest
from tradestate.adapters.brokers.ib import IBAdapter
from tradestate.adapters.store import open_store
from tradestate.client import TradestateClient
from tradestate.domain.ids import order_stream_id
from tradestate.order_flow import OrderFlow, record_update
from tradestate.reconcile import reconcile

pytestmark = pytest.mark.timeout(60)

ACCOUNT = "acct-1"
CASH = D("100000")


@pytest.fixture
def client(tmp_path):
    with TradestateClient(open_store(f"sqlite:///{tmp_path}/ib.db")) as c:
        yield c


def adapter_for(server: FakeTWS, client_id: int = 1, **options) -> IBAdapter:
    options.setdefault("timeout", 2.0)
    return IBAdapter(account=ACCOUNT, host=server.host, port=server.port, client_id=client_id, **options)


def baseline(client, adapter) -> None:
    first = reconcile(client, adapter)
    assert first.status in ("clean", "corrected"), first.discrepancies


def our_order(client, server: FakeTWS, coid: str, qty: int = 100, *, tif: str = "DAY",
              submitted_at: datetime | None = None):
    """An order recorded by us and acknowledged, placed at the venue by client id 1."""
    client.record_intent(ACCOUNT, coid, "AAPL", "buy", qty, order_type="limit", limit_price="60", venue="IB",
                         time_in_force=tif.lower())
    client.record_submitted(ACCOUNT, coid)
    order = server.add_order(symbol="AAPL", action="BUY", qty=D(qty), lmt=D(60), order_ref=coid, client_id=1,
                             tif=tif, submitted_at=submitted_at)
    client.record_ack(ACCOUNT, coid, str(order.perm_id))
    return order


def order_of(client, coid):
    return client.state.orders.get(order_stream_id(ACCOUNT, coid))


def position(client, symbol="AAPL"):
    held = client.state.position_of(ACCOUNT, "IB", symbol)
    return held


def settled(client, adapter):
    again = reconcile(client, adapter)
    assert again.corrective_event_ids == [], again.corrective_events
    return again


# -- execution corrections ---------------------------------------------------------------------


def test_a_quantity_correction_replaces_the_fill_recorded_live(client):
    with FakeTWS(cash={"USD": CASH}) as tws, adapter_for(tws) as ib:
        baseline(client, ib)
        order = our_order(client, tws, "o-corr")
        first = tws.fill(order, D(40), D("50.10"), notify=False)
        client.record_fill(ACCOUNT, "o-corr", first.exec_id, 40, "50.10", venue_order_id=str(order.perm_id))
        corrected = tws.correct(first, qty=D(30), notify=False)  # TWS: .01 -> .02, 40 -> 30
        result = reconcile(client, ib)
        assert types(result) == ["FillCorrected"], result.corrective_events
        assert "fill_corrected" in kinds(result) and "position_mismatch" not in kinds(result)
        o = order_of(client, "o-corr")
        assert (o.filled_qty, o.status, set(o.executions)) == (D(30), "partially_filled", {corrected.exec_id})
        assert position(client).qty == D(30)
        assert client.state.account(ACCOUNT).cash["USD"] == tws.cash["DU1234567"]["USD"]
        assert settled(client, ib).status == "clean"


def test_a_price_correction_on_a_filled_order_corrects_the_price(client):
    with FakeTWS(cash={"USD": CASH}) as tws, adapter_for(tws) as ib:
        baseline(client, ib)
        order = our_order(client, tws, "o-px")
        first = tws.fill(order, D(100), D("50.10"), commission=D(1), notify=False)
        assert reconcile(client, ib).status == "corrected"  # the fill, and the venue's cash after it
        assert order_of(client, "o-px").status == "filled"
        tws.correct(first, price=D("50.01"), commission=D("0.9"), notify=False)
        result = reconcile(client, ib)
        assert types(result) == ["FillCorrected"], result.corrective_events
        assert "fill_on_terminal" not in kinds(result) and "cash_drift" not in kinds(result)
        o = order_of(client, "o-px")
        assert (o.status, o.filled_qty, o.avg_fill_price, o.fees) == ("filled", D(100), D("50.01"), D("0.9"))
        assert (position(client).qty, position(client).avg_cost) == (D(100), D("50.01"))
        assert client.state.account(ACCOUNT).cash["USD"] == tws.cash["DU1234567"]["USD"]
        assert settled(client, ib).status == "clean"


# -- commission reports ------------------------------------------------------------------------


def test_a_late_commission_report_becomes_fee_charged(client):
    with FakeTWS(cash={"USD": CASH}) as tws, adapter_for(tws, master_client_id=1) as ib:
        baseline(client, ib)
        order = our_order(client, tws, "o-fee")
        execution = tws.fill(order, D(100), D(50), commission=D("1.25"), report=False, notify=False)
        result = reconcile(client, ib)
        assert types(result)[0] == "OrderFilled"
        o = order_of(client, "o-fee")
        assert (o.fees, o.as_dict()["fees_pending"]) == (D(0), [execution.exec_id])  # pending, not a silent 0
        tws.report_commission(execution)
        result = reconcile(client, ib)
        assert types(result) == ["FeeCharged"], result.corrective_events
        assert "cash_drift" not in kinds(result)
        o = order_of(client, "o-fee")
        assert o.as_dict()["fees_pending"] == []
        assert position(client).fees == D("1.25")
        assert client.state.account(ACCOUNT).cash["USD"] == tws.cash["DU1234567"]["USD"]
        assert settled(client, ib).status == "clean"


def test_only_the_master_client_id_receives_other_clients_commissions(client, caplog):
    with FakeTWS(cash={"USD": CASH}, master_client_id=0) as tws:
        by_hand = tws.add_order(symbol="MSFT", action="BUY", qty=D(10), client_id=0, order_id=0)
        execution = tws.fill(by_hand, D(10), D(300), commission=D(1), notify=False)
        with caplog.at_level(logging.WARNING, logger="tradestate.adapters.brokers.ib"):
            with adapter_for(tws, client_id=1, master_client_id=0) as ib:
                assert not ib.receives_all_commissions
                (fill,) = ib.fills()
                assert (fill.fee, fill.fee_pending) == (D(0), True)  # no report for client 1: pending
        assert "not TWS's master API client id" in caplog.text
        caplog.clear()
        with adapter_for(tws, client_id=0, master_client_id=0) as master:
            assert master.receives_all_commissions
            (fill,) = master.fills()
            assert (fill.exec_id, fill.fee, fill.fee_pending) == (execution.exec_id, D(1), False)
        assert "master API client id" not in caplog.text


def test_a_commission_report_that_never_comes_is_reported_and_the_cash_put_down_to_it(client):
    # the order is placed by client id 1; reconciliation connects as client id 2, not TWS's master
    # client id: TWS charges the commission but sends its report to client 1 (and the master) only
    with FakeTWS(cash={"USD": CASH}) as tws, adapter_for(tws, client_id=2) as ib:
        baseline(client, ib)
        order = our_order(client, tws, "o-nofee")
        execution = tws.fill(order, D(100), D(50), commission=D("1.25"), notify=False)
        result = reconcile(client, ib)  # at once: the report may still come, the cash waits for it
        assert types(result) == ["OrderFilled"], result.corrective_events
        assert order_of(client, "o-nofee").as_dict()["fees_pending"] == [execution.exec_id]
        assert "cash_drift" not in kinds(result) and result.counts["cash_fees_pending"] == 1
        later = datetime.now(timezone.utc) + ib.fee_report_wait
        result = reconcile(client, ib, now=later)  # past the wait: the venue's cash says what it was
        assert types(result) == ["FeeCharged"], result.corrective_events
        assert kinds(result) == ["fee_inferred"] and execution.exec_id in result.discrepancies[0]["detail"]
        o = order_of(client, "o-nofee")
        assert (o.fees, o.as_dict()["fees_pending"]) == (D("1.25"), [])
        assert client.state.account(ACCOUNT).cash["USD"] == tws.cash["DU1234567"]["USD"]
        assert settled(client, ib).status == "clean"


def test_several_commission_reports_that_never_come_block_strict_mode_naming_them(client):
    with FakeTWS(cash={"USD": CASH}, master_client_id=0) as tws, adapter_for(tws, client_id=2) as ib:
        baseline(client, ib)
        order = our_order(client, tws, "o-nofee2")
        first = tws.fill(order, D(40), D(50), commission=D(1), notify=False)
        second = tws.fill(order, D(60), D(50), commission=D("1.1"), notify=False)
        never = tws.fill(our_order(client, tws, "o-nofee3", qty=10), D(10), D(50), commission=D(1), report=False,
                         notify=False)  # computed never: not charged either
        later = datetime.now(timezone.utc) + ib.fee_report_wait
        result = reconcile(client, ib, strict=True, now=later)
        assert sorted(types(result)) == ["OrderFilled"] * 3, result.corrective_events
        assert "CashBalanceRecorded" not in types(result)  # never a blind cash correction
        missing = [d for d in result.discrepancies if d["kind"] == "fee_report_missing"]
        assert sorted(d["theirs"] for d in missing) == sorted([first.exec_id, second.exec_id, never.exec_id])
        (cash,) = [d for d in result.discrepancies if d["kind"] == "cash_fees_unreported"]
        assert first.exec_id in cash["detail"] and second.exec_id in cash["detail"] and "2.1" in cash["detail"]
        assert result.status == "discrepancies" and result.blocked
        assert "fee_report_missing" in client.state.account(ACCOUNT).blocked_reason
        o = order_of(client, "o-nofee2")
        assert (o.fees, sorted(o.as_dict()["fees_pending"])) == (D(0), sorted([first.exec_id, second.exec_id]))
        # the master client id gets the reports: the fees are recorded and the cash agrees
        with adapter_for(tws, client_id=0, master_client_id=0) as master:
            result = reconcile(client, master, now=later)
        assert sorted(types(result)) == ["FeeCharged", "FeeCharged"], result.corrective_events
        assert "cash_drift" not in kinds(result) and kinds(result) == ["fee_report_missing"]  # `never` still
        assert order_of(client, "o-nofee2").fees == D("2.1")
        assert client.state.account(ACCOUNT).cash["USD"] == tws.cash["DU1234567"]["USD"]


# -- one orderRef, two permIds -------------------------------------------------------------------


def test_two_venue_orders_with_one_order_ref_are_reported_and_kept_apart(client):
    with FakeTWS(cash={"USD": CASH}) as tws, adapter_for(tws) as ib:
        baseline(client, ib)
        original = our_order(client, tws, "o-dup")
        resent = tws.add_order(symbol="AAPL", action="BUY", qty=D(100), lmt=D(60), order_ref="o-dup", client_id=1)
        tws.fill(resent, D(100), D(59), notify=False)
        result = reconcile(client, ib)
        (dup,) = [d for d in result.discrepancies if d["kind"] == "duplicate_order_ref"]
        assert str(original.perm_id) in dup["detail"] and str(resent.perm_id) in dup["detail"]
        assert dup["resolution"] == "pending" and result.status == "discrepancies"
        o = order_of(client, "o-dup")  # the original can still fill: ours is not filled by the duplicate
        assert (o.status, o.filled_qty, o.venue_order_id) == ("acknowledged", D(0), str(original.perm_id))
        external = order_of(client, f"ext-{resent.perm_id}")
        assert external is not None and external.external and external.filled_qty == D(100)
        assert position(client).qty == D(100)  # the exposure is on the books, not corrected blindly
        assert "PositionCorrected" not in types(result)
        again = settled(client, ib)
        assert "duplicate_order_ref" in kinds(again)  # reported while both exist


def test_the_live_feed_hands_over_the_first_perm_id_of_an_order_ref_only():
    with FakeTWS() as tws, adapter_for(tws) as ib:
        tws.set_mark("AAPL", D(50))
        placed = ib.submit(OrderRequest("o-live", "AAPL", "buy", "limit", D(5), limit_price=D(60)))
        second = tws.add_order(symbol="AAPL", action="BUY", qty=D(5), lmt=D(60), order_ref="o-live", client_id=1,
                               notify=True)  # a resend with the same orderRef
        tws.fill(second, D(5), D(50))
        updates = []
        while (u := ib.next_update(0.5 if not updates else 2.5)) is not None:
            updates.append(u)
        fills = [u for u in updates if u.kind == "fill"]
        assert fills and all(u.client_order_id is None for u in fills)
        assert fills[0].raw["duplicate_order_ref_of"] == placed.venue_order_id


# -- order statuses, sessions, allocations -----------------------------------------------------


def test_duplicate_order_status_messages_are_handed_over_once(client):
    with FakeTWS(duplicate_status=True, commission_per_share=D("0.01")) as tws, adapter_for(tws) as ib:
        tws.set_mark("AAPL", D(50))
        client.record_intent(ACCOUNT, "o-twice", "AAPL", "buy", 10, order_type="market", venue="IB",
                             reference_price="50")
        flow = OrderFlow(client, ib)
        flow.forward(ACCOUNT, "o-twice")
        updates = []
        while (u := ib.next_update(3)) is not None and len(updates) < 10:
            updates.append(u)
            if u.kind == "fill":
                break
        assert [u.kind for u in updates] == ["ack", "fill"]
        assert ib.next_update(0.3) is None
        tws.finish(tws.orders[-1], "Filled")  # one more (duplicated) status: nothing new
        assert ib.next_update(0.3) is None
        for u in updates:
            record_update(client, ACCOUNT, "o-twice", u)
            record_update(client, ACCOUNT, "o-twice", u)  # seen twice: recorded once
        o = order_of(client, "o-twice")
        assert (o.status, o.filled_qty, o.fees, len(o.executions)) == ("filled", D(10), D("0.1"), 1)


def test_duplicate_statuses_of_a_partial_fill_a_cancel_and_a_reject_are_handed_over_once(client):
    with FakeTWS(duplicate_status=True, rejects={"BAD": "no such contract"}) as tws:
        with adapter_for(tws) as ib:
            for coid, symbol in (("o-dup-st", "AAPL"), ("o-dup-rej", "BAD")):
                client.record_intent(ACCOUNT, coid, symbol, "buy", 100, order_type="limit", limit_price="60", venue="IB")
            flow = OrderFlow(client, ib)
            flow.forward(ACCOUNT, "o-dup-st")
            flow.forward(ACCOUNT, "o-dup-rej")
            order = tws.find(order_ref="o-dup-st")
            tws.fill(order, D(40), D(50))  # Submitted 40/100, twice
            ib.cancel(str(order.perm_id))  # Cancelled, twice
            updates = []
            while (u := ib.next_update(2.5 if not updates else 1)) is not None:
                updates.append(u)
            mine = sorted((u.client_order_id, u.kind) for u in updates)
            assert mine == [("o-dup-rej", "rejected"), ("o-dup-st", "ack"), ("o-dup-st", "cancelled"),
                            ("o-dup-st", "fill")], mine
            for u in updates * 2:  # handed over again (a replay): recorded once
                record_update(client, ACCOUNT, u.client_order_id, u)
            o = order_of(client, "o-dup-st")
            assert (o.status, o.filled_qty, len(o.executions)) == ("cancelled", D(40), 1)
            assert order_of(client, "o-dup-rej").status == "rejected"  # the submit's answer; its status twice
        with adapter_for(tws) as again:  # a restart: what its start-up sync hands over is in the log already
            before = client.state.position
            assert all(r.duplicate for r in pump_until_quiet(OrderFlow(client, again)))
            assert client.state.position == before


def test_a_gtc_order_filled_across_sessions(client):
    two_days_ago = datetime.now(timezone.utc) - timedelta(days=2)
    with FakeTWS(cash={"USD": CASH}, execution_days=1) as tws, adapter_for(tws) as ib:
        baseline(client, ib)
        order = our_order(client, tws, "o-gtc", tif="GTC", submitted_at=two_days_ago)
        old = tws.fill(order, D(60), D(50), at=two_days_ago + timedelta(minutes=1), notify=False)
        client.record_fill(ACCOUNT, "o-gtc", old.exec_id, 60, 50, venue_order_id=str(order.perm_id),
                           occurred_at=old.time)
        baseline(client, ib)  # the cash after the old fill
        today = tws.fill(order, D(40), D(51), notify=False)
        assert [f.exec_id for f in ib.fills()] == [today.exec_id]  # TWS lists today's executions only
        result = reconcile(client, ib)
        assert types(result) == ["OrderFilled"], result.corrective_events
        o = order_of(client, "o-gtc")
        assert (o.status, o.filled_qty, set(o.executions)) == ("filled", D(100), {old.exec_id, today.exec_id})
        assert "fill_unexplained" not in kinds(result) and position(client).qty == D(100)
        assert settled(client, ib).status == "clean"


ADVISOR, SUBS = "F1234567", ("DU1111111", "DU2222222")
# Seconds for each request of the advisor scenarios, which connect a dozen times (each start-up
# sync is six requests over three accounts): generous for a loaded CI box, where 5 s ran out. No
# step here waits one out (each scenario takes a tenth of a second unloaded); a hang still fails.
FA_TIMEOUT = 30.0


def fa_tws(**options) -> FakeTWS:
    """An advisor's login: its own account and two client accounts in group "Growth" (1:2)."""
    return FakeTWS(accounts=(ADVISOR, *SUBS), fa_groups={"Growth": {SUBS[0]: D(1), SUBS[1]: D(2)}},
                   commission_per_share=D("0.01"), master_client_id=2, **options)


def sub_reconcile(client, tws, sub: str, **options):
    """Reconcile our account for IB sub-account ``sub`` (as the master client id, which gets the
    allocations' commission reports)."""
    with IBAdapter(account=f"client-{sub}", host=tws.host, port=tws.port, client_id=2, ib_account=sub,
                   master_client_id=2, timeout=FA_TIMEOUT) as ib:
        return reconcile(client, ib, **options)


def test_financial_advisor_group_order_is_reconciled_per_sub_account(client):
    with fa_tws() as tws:
        tws.set_mark("SPY", D(500))
        for sub in SUBS:  # each client account's cash on record before the order
            assert sub_reconcile(client, tws, sub).status == "corrected"
        with adapter_for(tws, ib_account=ADVISOR, fa_group="Growth", timeout=FA_TIMEOUT) as advisor:
            baseline(client, advisor)  # the group's cash: its accounts' summed
            client.record_intent(ACCOUNT, "fa-1", "SPY", "buy", 30, order_type="limit", limit_price="510",
                                 venue="IB")
            OrderFlow(client, advisor).forward(ACCOUNT, "fa-1")
            placed = tws.find(order_ref="fa-1")
            assert (placed.fa_group, placed.account) == ("Growth", ADVISOR)  # faGroup on the wire, no account
            first = tws.fill(placed, D(12), D(500))  # allocated 4 / 8
            (one, two) = tws.allocations(first)
            assert [(e.account, e.shares) for e in (one, two)] == [(SUBS[0], D(4)), (SUBS[1], D(8))]
            # the advisor's connection gets the allocation order's own execution, not the allocations
            fill = next(u for u in iter(lambda: advisor.next_update(FA_TIMEOUT), None) if u.kind == "fill").fill
            assert (fill.exec_id, fill.qty, fill.raw["execution"]["acctNumber"]) == (first.exec_id, D(12), ADVISOR)
        for sub, got in zip(SUBS, (D(4), D(8))):
            result = sub_reconcile(client, tws, sub)
            assert sorted(types(result)) == ["OrderFilled", "OrderImported"], result.corrective_events
            assert kinds(result) == ["fa_allocation"], result.discrepancies
            assert "fa-1" in result.discrepancies[0]["detail"] and "Growth" in result.discrepancies[0]["detail"]
            held = client.state.position_of(f"client-{sub}", "IB", "SPY")
            assert held.qty == got  # no blind PositionCorrected, no CashBalanceRecorded
            assert client.state.account(f"client-{sub}").cash["USD"] == tws.cash[sub]["USD"]
            assert sub_reconcile(client, tws, sub).corrective_event_ids == []
        tws.fill(placed, D(18), D(501))  # the rest: 6 / 12; the group order is filled
        for sub, got in zip(SUBS, (D(10), D(20))):
            result = sub_reconcile(client, tws, sub)
            assert "PositionCorrected" not in types(result) and "CashBalanceRecorded" not in types(result)
            assert result.status == "corrected", result.discrepancies
            imported = order_of_account(client, f"client-{sub}", f"ext-{placed.perm_id}")
            assert (imported.status, imported.qty, imported.filled_qty) == ("filled", got, got)
            assert client.state.position_of(f"client-{sub}", "IB", "SPY").qty == got
            assert client.state.account(f"client-{sub}").cash["USD"] == tws.cash[sub]["USD"]
            assert sub_reconcile(client, tws, sub).status == "clean"
        # our account for the advisor books the group order: the group's positions and cash, summed
        with adapter_for(tws, ib_account=ADVISOR, fa_group="Growth", timeout=FA_TIMEOUT) as advisor:
            result = reconcile(client, advisor)
            assert not {"PositionCorrected", "CashBalanceRecorded"} & set(types(result)), result.corrective_events
            o = order_of(client, "fa-1")
            assert (o.status, o.filled_qty, o.fees) == ("filled", D(30), D("0.30"))
            assert position(client, "SPY").qty == D(30)
            assert client.state.account(ACCOUNT).cash["USD"] == sum(tws.cash[sub]["USD"] for sub in SUBS)
            assert settled(client, advisor).status == "clean"


def test_an_fa_group_order_filled_over_two_days_is_allocated_in_full(client):
    two_days_ago = datetime.now(timezone.utc) - timedelta(days=2)
    with fa_tws() as tws:
        group = tws.add_order(symbol="SPY", action="BUY", qty=D(30), lmt=D(510), order_ref="fa-2", client_id=1,
                              account=ADVISOR, fa_group="Growth", tif="GTC", submitted_at=two_days_ago)
        for sub in SUBS:
            sub_reconcile(client, tws, sub)
        tws.fill(group, D(12), D(500), at=two_days_ago + timedelta(minutes=1))  # 4 / 8, that day
        for sub in SUBS:
            assert kinds(sub_reconcile(client, tws, sub)) == ["fa_allocation"]
        tws.execution_days = 1  # today: TWS lists today's executions only
        tws.fill(group, D(18), D(501))  # 6 / 12; the group order is filled
        for sub, got in zip(SUBS, (D(10), D(20))):
            result = sub_reconcile(client, tws, sub)
            assert result.status == "corrected" and "overfill" not in kinds(result), result.discrepancies
            imported = order_of_account(client, f"client-{sub}", f"ext-{group.perm_id}")
            assert (imported.status, imported.qty, imported.filled_qty) == ("filled", got, got)
            assert client.state.position_of(f"client-{sub}", "IB", "SPY").qty == got
            assert client.state.account(f"client-{sub}").cash["USD"] == tws.cash[sub]["USD"]
            assert sub_reconcile(client, tws, sub).status == "clean"


def test_an_fa_order_names_an_account_or_a_group_never_both():
    with fa_tws() as tws, adapter_for(tws, ib_account=ADVISOR, fa_group="Nope") as ib:
        placed = ib.submit(OrderRequest("fa-bad", "SPY", "buy", "limit", D(5), limit_price=D(500)))
        assert placed.status == "rejected" and "allocation group" in placed.raw["errors"]


def order_of_account(client, account, coid):
    return client.state.orders.get(order_stream_id(account, coid))


# -- the live path: OrderFlow.pump over the adapter's feed ------------------------------------------


def pump_until_quiet(flow: OrderFlow, quiet: float = 0.5) -> list:
    """Pump until nothing came for ``quiet`` seconds; what was recorded."""
    recorded, last = [], time.monotonic()
    while time.monotonic() - last < quiet:
        got = flow.pump().recorded
        if got:
            recorded += got
            last = time.monotonic()
        time.sleep(0.02)
    return recorded


def pump_until(flow: OrderFlow, done, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flow.pump()
        if done():
            return
        time.sleep(0.02)
    raise AssertionError("the feed did not deliver in time")


def test_live_a_correction_and_a_late_commission_are_recorded_as_such(client):
    with FakeTWS() as tws, adapter_for(tws, master_client_id=1) as ib:
        ib.commission_wait = 0.2  # seconds a live fill waits for its commission report
        client.record_intent(ACCOUNT, "o-live", "AAPL", "buy", 100, order_type="limit", limit_price="60", venue="IB")
        flow = OrderFlow(client, ib)
        flow.forward(ACCOUNT, "o-live")
        order = tws.find(order_ref="o-live")
        first = tws.fill(order, D(40), D("50.10"), commission=D("0.4"), report=False)  # its report comes late
        o = lambda: order_of(client, "o-live")  # noqa: E731
        pump_until(flow, lambda: o().filled_qty == D(40))
        assert (o().fees, o().as_dict()["fees_pending"]) == (D(0), [first.exec_id])
        tws.report_commission(first)
        pump_until(flow, lambda: o().fees == D("0.4"))
        assert o().as_dict()["fees_pending"] == []
        corrected = tws.correct(first, qty=D(30), price=D("50.05"), commission=D("0.3"))
        pump_until(flow, lambda: corrected.exec_id in o().executions)
        assert (o().filled_qty, o().avg_fill_price, o().fees, set(o().executions)) == (
            D(30), D("50.05"), D("0.3"), {corrected.exec_id})
        held = position(client)
        assert (held.qty, held.avg_cost, held.fees) == (D(30), D("50.05"), D("0.3"))
        # the venue agrees: reconciliation has nothing to add (its cash is a first baseline)
        result = reconcile(client, ib)
        assert not [t for t in types(result) if t in ("OrderFilled", "FillCorrected", "PositionCorrected")], \
            result.corrective_events


def test_live_a_gtc_fill_made_while_disconnected_is_handed_over_after_the_reconnect(client):
    with FakeTWS(commission_per_share=D("0.01")) as tws, adapter_for(tws) as ib:
        client.record_intent(ACCOUNT, "o-away", "AAPL", "buy", 100, order_type="limit", limit_price="60", venue="IB",
                             time_in_force="gtc")
        flow = OrderFlow(client, ib)
        flow.forward(ACCOUNT, "o-away")
        order = tws.find(order_ref="o-away")
        assert order.tif == "GTC"
        tws.drop_connections()  # TWS restarts, the network drops: nobody hears the next executions
        deadline = time.monotonic() + 3
        while ib.is_connected() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not ib.is_connected()
        away = tws.fill(order, D(60), D(50))
        tws.correct(away, price=D("49.9"), commission=D("0.6"))
        # the feed reconnects by itself (no query needed); the start-up sync lists the day's executions
        o = lambda: order_of(client, "o-away")  # noqa: E731
        pump_until(flow, lambda: o().filled_qty == D(60))
        assert (o().avg_fill_price, o().fees, list(o().executions)) == (D("49.9"), D("0.6"), [tws.executions[-1].exec_id])
        assert o().as_dict()["fees_pending"] == []
        tws.fill(order, D(40), D(51))  # live again
        pump_until(flow, lambda: o().status == "filled")


def test_live_an_engine_started_the_next_day_records_the_gtc_fills_it_slept_through(client):
    with FakeTWS() as tws:
        order = tws.add_order(symbol="AAPL", action="BUY", qty=D(100), lmt=D(60), order_ref="o-night", client_id=1,
                              tif="GTC", submitted_at=datetime.now(timezone.utc) - timedelta(days=1))
        client.record_intent(ACCOUNT, "o-night", "AAPL", "buy", 100, order_type="limit", limit_price="60",
                             venue="IB", time_in_force="gtc")
        client.record_submitted(ACCOUNT, "o-night")
        client.record_ack(ACCOUNT, "o-night", str(order.perm_id))
        early = tws.fill(order, D(100), D(50), commission=D(1), notify=False)  # before the engine is up
        with adapter_for(tws) as ib:
            flow = OrderFlow(client, ib)
            pump_until(flow, lambda: order_of(client, "o-night").status == "filled")
            assert (order_of(client, "o-night").fees, list(order_of(client, "o-night").executions)) == (
                D(1), [early.exec_id])
            assert flow.pump().recorded == []  # handed over once


def test_the_master_client_id_comes_from_the_ib_table_of_a_config(tmp_path):
    from tradestate.adapters.brokers.registry import make_adapter
    from tradestate.settings import Settings

    with FakeTWS(master_client_id=7) as tws:
        config = tmp_path / "tradestate.toml"
        config.write_text(f'account = "{ACCOUNT}"\n[ib]\nport = {tws.port}\nclient_id = 7\nmaster_client_id = 7\n')
        options = Settings.load(str(config)).broker_options("ib")
        assert (options["client_id"], options["master_client_id"]) == (7, 7)
        with make_adapter("ib", options) as ib:
            assert ib.receives_all_commissions


def test_the_fa_group_comes_from_the_ib_table_of_a_config(tmp_path):
    from tradestate.adapters.brokers.registry import make_adapter
    from tradestate.settings import Settings

    with fa_tws() as tws:
        config = tmp_path / "tradestate.toml"
        config.write_text(f'account = "{ACCOUNT}"\n[ib]\nport = {tws.port}\nclient_id = 3\nib_account = "{ADVISOR}"\n'
                          'fa_group = "Growth"\n')
        options = Settings.load(str(config)).broker_options("ib")
        with make_adapter("ib", options) as ib:
            assert ib.fa_group == "Growth"
            placed = ib.submit(OrderRequest("fa-cfg", "SPY", "buy", "limit", D(3), limit_price=D(400)))
            assert placed.status in ("pending", "open") and tws.find(order_ref="fa-cfg").fa_group == "Growth"


def test_live_a_correction_of_an_execution_from_before_this_session_is_still_a_correction(client):
    with FakeTWS() as tws:
        order = tws.add_order(symbol="AAPL", action="BUY", qty=D(100), lmt=D(60), order_ref="o-prev", client_id=1)
        first = tws.fill(order, D(40), D("50.10"), commission=D("0.4"), notify=False)  # before we connected
        client.record_intent(ACCOUNT, "o-prev", "AAPL", "buy", 100, order_type="limit", limit_price="60", venue="IB")
        client.record_submitted(ACCOUNT, "o-prev")
        client.record_fill(ACCOUNT, "o-prev", first.exec_id, 40, "50.10", fee="0.4", venue_order_id=str(order.perm_id))
        with adapter_for(tws) as ib:  # a new session: ib_insync's start-up sync lists the day's executions
            corrected = tws.correct(first, qty=D(40), price=D("50.00"), commission=D("0.4"))  # streamed live
            flow = OrderFlow(client, ib)
            o = lambda: order_of(client, "o-prev")  # noqa: E731
            pump_until(flow, lambda: corrected.exec_id in o().executions)
            assert (o().filled_qty, o().avg_fill_price, set(o().executions)) == (D(40), D(50), {corrected.exec_id})


def test_a_gtc_fill_of_an_earlier_day_we_missed_is_inferred_from_the_filled_quantity(client):
    two_days_ago = datetime.now(timezone.utc) - timedelta(days=2)
    with FakeTWS(cash={"USD": CASH}, execution_days=1) as tws, adapter_for(tws) as ib:
        baseline(client, ib)
        order = our_order(client, tws, "o-gtc2", tif="GTC", submitted_at=two_days_ago)
        tws.fill(order, D(60), D(50), at=two_days_ago + timedelta(minutes=1), notify=False)  # never seen by us
        today = tws.fill(order, D(40), D(51), notify=False)
        result = reconcile(client, ib)
        o = order_of(client, "o-gtc2")
        assert (o.status, o.filled_qty) == ("filled", D(100))
        inferred = [e for e in o.executions if e.startswith("recon-")]
        # the quantity is known; the price is not (a completed order carries no average price):
        # the limit price stands in, and the cash is set to the venue's (Flex reports would say more)
        assert len(inferred) == 1 and o.executions[inferred[0]][:2] == (D(60), D(60))
        assert today.exec_id in o.executions and position(client).qty == D(100)
        assert "PositionCorrected" not in types(result) and "CashBalanceRecorded" in types(result)
        assert client.state.account(ACCOUNT).cash["USD"] == tws.cash["DU1234567"]["USD"]
        assert settled(client, ib).status == "clean"


def test_strict_reconcile_from_the_cli_says_which_commission_reports_never_came(tmp_path):
    from typer.testing import CliRunner

    from tradestate.cli.main import app

    url = f"sqlite:///{tmp_path}/cli.db"
    with FakeTWS(cash={"USD": CASH}) as tws:
        config = tmp_path / "ib.toml"
        config.write_text(f'account = "{ACCOUNT}"\n[ib]\nport = {tws.port}\nclient_id = 2\ntimeout = 5\n')
        cli = ["reconcile", "--db", url, "--broker", "ib", "--config", str(config)]
        with TradestateClient(open_store(url)) as client:  # placed by the engine, client id 1
            placed = our_order(client, tws, "o-cli")
        first = CliRunner().invoke(app, cli)
        assert first.exit_code == 0, first.output  # the cash on record
        ten_minutes_ago = datetime.now(timezone.utc) - timedelta(minutes=10)
        one = tws.fill(placed, D(40), D(50), commission=D(1), at=ten_minutes_ago, notify=False)
        two = tws.fill(placed, D(60), D(50), commission=D("1.2"), at=ten_minutes_ago, notify=False)
        run = CliRunner().invoke(app, [*cli, "--strict"], terminal_width=400)
        assert run.exit_code == 1, run.output
        assert "fee_report_missing" in run.output and "cash_fees_unreported" in run.output
        assert one.exec_id in run.output and two.exec_id in run.output
