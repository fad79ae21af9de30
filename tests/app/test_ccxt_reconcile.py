"""Reconciliation of one account trading BTC at two crypto venues (Binance and Binance.US, both
speaking Binance's spot API: two fake servers), through the real ccxt client: a fill missed at one
venue is found and booked once; positions are summed across venues as seed 002's script does;
each venue's cash stays that venue's."""

from __future__ import annotations

from decimal import Decimal as D

import orjson
import pytest

from tests.support.fake_binance import FakeBinance
from tradestate.adapters.brokers.ccxt_venue import CcxtAdapter
from tradestate.adapters.store import open_store
from tradestate.client import TradestateClient
from tradestate.domain.ids import order_stream_id
from tradestate.multi_venue import reconcile_venues
from tradestate.order_flow import OrderFlow

ACCOUNT = "acct-1"


@pytest.fixture
def venues():
    with FakeBinance(balances={"USDT": "100000", "BTC": "1"}) as a, \
            FakeBinance(balances={"USDT": "50000", "BTC": "2"}) as b:
        adapters = [CcxtAdapter(account=ACCOUNT, exchange=name, symbols="BTC/USDT", api_key=f.api_key,
                                secret=f.secret, base_url=f.url, timeout=2.0, rate_limit=False)
                    for name, f in (("binance", a), ("binanceus", b))]
        yield {"BINANCE": a, "BINANCEUS": b}, adapters
        for adapter in adapters:
            adapter.close()


@pytest.fixture
def client(tmp_path):
    c = TradestateClient(open_store(f"sqlite:///{tmp_path / 'log.db'}"))
    yield c
    c.close()


def define_btc_usdt(client):
    client.define_instrument("BTC/USDT", "crypto", quote_currency="USDT", tick_size="0.01", lot_size="0.00001",
                             fractional=True)


def logged(url, *types):
    with open_store(url) as store:
        rows = [(r[3], orjson.loads(r[4])) for r in store.trading.iter_rows(0)]
    return [(t, d) for t, d in rows if not types or t in types]


def row(result, asset):
    return next(p for p in result.positions if p["asset"] == asset)


def test_a_fill_missed_at_one_venue_is_found_and_booked_once(venues, client, tmp_path):
    fakes, (binance, binanceus) = venues
    url = f"sqlite:///{tmp_path / 'log.db'}"
    define_btc_usdt(client)
    first = reconcile_venues(client, [binance, binanceus])
    assert row(first, "BTC")["status"] == "corrected"  # an empty log: the venues' opening positions
    client.record_intent(ACCOUNT, "o-1", "BTC/USDT", "sell", "0.4", order_type="limit", limit_price="41000",
                         time_in_force="gtc", venue="BINANCE")
    order = OrderFlow(client, binance).forward(ACCOUNT, "o-1")
    fakes["BINANCE"].fill(int(order.venue_order_id), "0.4")  # the venue fills it; we never hear of it

    found = reconcile_venues(client, [binance, binanceus])
    at_binance, at_us = found.results
    assert [d["kind"] for d in at_binance.discrepancies] == ["missed_fill"]
    assert [e["type"] for e in at_binance.corrective_events] == ["OrderFilled"]
    assert at_us.corrective_events == [] and at_us.status == "clean"
    fill = at_binance.corrective_events[0]
    assert (D(fill["qty"]), D(fill["price"])) == (D("0.4"), D("41000"))
    client.catch_up()
    ours = client.state.orders[order_stream_id(ACCOUNT, "o-1")]
    assert (ours.status, ours.filled_qty) == ("filled", D("0.4"))
    filled = [d for t, d in logged(url, "OrderFilled")]
    assert len(filled) == 1 and (D(filled[0]["fee"]), filled[0]["fee_currency"]) == (D("16.4"), "USDT")
    # the position at Binance is the booked fill: no blind correction; the sum matches
    assert [d for t, d in logged(url, "PositionCorrected") if d["reconciliation_id"] ==
            at_binance.reconciliation_id] == []
    # the seed's comparison: the log held 3 BTC across the venues, they hold 2.6; booked, it holds 2.6
    assert row(found, "BTC") | {"by_venue": None} == {
        "asset": "BTC", "ours": "3", "venues": "2.6", "difference": "-0.4", "ours_after": "2.6",
        "status": "corrected", "by_venue": None}
    assert row(found, "BTC")["by_venue"] == {"BINANCE": {"ours": "1", "ours_after": "0.6", "venue": "0.6"},
                                             "BINANCEUS": {"ours": "2", "ours_after": "2", "venue": "2"}}

    again = reconcile_venues(client, [binance, binanceus])
    assert [r.corrective_events for r in again.results] == [[], []]
    assert len(logged(url, "OrderFilled")) == 1


def test_positions_summed_across_venues_as_the_seed_script_does(venues, client):
    fakes, adapters = venues
    first = reconcile_venues(client, adapters)
    btc = row(first, "BTC")
    assert (btc["ours"], btc["venues"], btc["ours_after"], btc["status"]) == ("0", "3", "3", "corrected")
    assert {v: b["venue"] for v, b in btc["by_venue"].items()} == {"BINANCE": "1", "BINANCEUS": "2"}
    assert row(reconcile_venues(client, adapters), "BTC")["status"] == "ok"

    fakes["BINANCEUS"].free["BTC"] += D("0.5")  # a deposit we were not told about
    dry = reconcile_venues(client, adapters, dry_run=True)
    btc = row(dry, "BTC")
    assert (btc["ours"], btc["venues"], btc["difference"], btc["status"]) == ("3", "3.5", "0.5", "mismatch")
    assert btc["by_venue"]["BINANCEUS"] == {"ours": "2", "ours_after": "2", "venue": "2.5"}
    # within the seed's tolerance, a difference is not one
    fakes["BINANCEUS"].free["BTC"] -= D("0.49995")
    assert row(reconcile_venues(client, adapters, dry_run=True, tolerance=D("0.0001")), "BTC")["status"] == "ok"

    fakes["BINANCEUS"].stall("GET", "/api/v3/account", 10, times=2)  # one venue cannot say: the sum is unknown
    partial = reconcile_venues(client, [adapters[0], CcxtAdapter(
        account=ACCOUNT, exchange="binanceus", symbols="BTC/USDT", api_key="fake-key", secret="fake-secret",
        base_url=fakes["BINANCEUS"].url, timeout=0.5, rate_limit=False)])
    btc = row(partial, "BTC")
    assert btc["status"] == "unknown" and btc["by_venue"]["BINANCEUS"]["venue"] == "unknown"


def test_cash_is_kept_per_venue_never_corrected_by_another_venues_balance(venues, client, tmp_path):
    fakes, adapters = venues
    url = f"sqlite:///{tmp_path / 'log.db'}"
    for _ in range(3):
        result = reconcile_venues(client, adapters)
    assert result.cash == {"BINANCE": {"USDT": {"venue": "100000", "log": result.cash["BINANCE"]["USDT"]["log"]}},
                           "BINANCEUS": {"USDT": {"venue": "50000", "log": result.cash["BINANCEUS"]["USDT"]["log"]}}}
    recorded = [d for t, d in logged(url, "CashBalanceRecorded")]
    # each venue's balance recorded once, as that venue's (never flipped by the other's)
    assert result.cash_recorded
    assert sorted((d["venue"], d["currency"], D(d["balance"])) for d in recorded) == [
        ("BINANCE", "USDT", D("100000")), ("BINANCEUS", "USDT", D("50000"))]
    assert result.cash["BINANCE"]["USDT"]["log"] == "100000"
    # the venue report of each run keeps its venue's raw balances
    completed = [d for t, d in logged(url, "ReconciliationCompleted")]
    assert {d["venue"]: d["venue_report"]["balances"][0]["free"] for d in completed[-2:]} == {
        "BINANCE": "100000.00000000", "BINANCEUS": "50000.00000000"}
    assert [r.corrective_events for r in result.results] == [[], []]


def test_cli_reconciles_several_ccxt_venues_with_sums_and_cash_per_venue(venues, client, tmp_path):
    import json
    import os
    import subprocess
    import sys

    fakes, _ = venues
    url = f"sqlite:///{tmp_path / 'log.db'}"
    env = {**os.environ, "TRADESTATE_CCXT_SYMBOLS": "BTC/USDT",
           "TRADESTATE_CCXT_BASE_URL": f"binance={fakes['BINANCE'].url};binanceus={fakes['BINANCEUS'].url}",
           "TRADESTATE_CCXT_TIMEOUT": "2"}
    for name in ("BINANCE", "BINANCEUS"):
        env[f"TRADESTATE_CCXT_{name}_API_KEY"], env[f"TRADESTATE_CCXT_{name}_SECRET"] = "fake-key", "fake-secret"
    done = subprocess.run([sys.executable, "-m", "tradestate.cli", "reconcile", "--db", url, "--account", ACCOUNT,
                           "--broker", "ccxt:binance", "--broker", "ccxt:binanceus", "--json"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert [(r["broker"], r["venue"]) for r in out["results"]] == [("ccxt:binance", "BINANCE"),
                                                                   ("ccxt:binanceus", "BINANCEUS")]
    assert [(p["asset"], p["venues"], p["ours_after"], p["status"]) for p in out["positions"]] == [
        ("BTC", "3", "3", "corrected")]
    assert {v: c["USDT"]["venue"] for v, c in out["cash"].items()} == {"BINANCE": "100000", "BINANCEUS": "50000"}
    del env["TRADESTATE_CCXT_BINANCEUS_SECRET"]
    refused = subprocess.run([sys.executable, "-m", "tradestate.cli", "reconcile", "--db", url, "--account",
                              ACCOUNT, "--broker", "ccxt:binanceus"], capture_output=True, text=True, timeout=60,
                             env=env)
    assert refused.returncode == 2 and "TRADESTATE_CCXT_BINANCEUS_SECRET" in refused.stderr


def test_a_buy_whose_fee_is_taken_in_btc_needs_no_position_correction(venues, client, tmp_path):
    fakes, (binance, binanceus) = venues
    define_btc_usdt(client)  # priced in USDT: the fill moves the venue's USDT, as the venue does
    url = f"sqlite:///{tmp_path / 'log.db'}"
    reconcile_venues(client, [binance, binanceus])
    client.record_intent(ACCOUNT, "o-2", "BTC/USDT", "buy", "0.5", order_type="limit", limit_price="40000",
                         time_in_force="gtc", venue="BINANCE")
    order = OrderFlow(client, binance).forward(ACCOUNT, "o-2")
    fakes["BINANCE"].fill(int(order.venue_order_id), "0.5")  # 0.0005 BTC taken as fee: the venue holds 1.4995
    found = reconcile_venues(client, [binance, binanceus])
    # the fill, then its fee taken from the BTC bought: the position is the venue's without a correction
    assert [e["type"] for e in found.results[0].corrective_events] == ["OrderFilled", "FeeCharged"]
    fee = [d for t, d in logged(url, "FeeCharged")]
    assert [(D(d["amount"]), d["currency"], d["in_kind"], d["fee_id"]) for d in fee] == [
        (D("0.0005"), "BTC", True, found.results[0].corrective_events[0]["exec_id"])]
    assert D(logged(url, "OrderFilled")[0][1]["fee"]) == 0  # not also a cash fee
    assert row(found, "BTC")["by_venue"]["BINANCE"] == {"ours": "1", "ours_after": "1.4995", "venue": "1.4995"}
    again = reconcile_venues(client, [binance, binanceus])
    assert [r.corrective_events for r in again.results] == [[], []]


def test_live_fills_book_the_fee_in_kind_once_and_reconciliation_agrees(venues, client, tmp_path):
    fakes, (binance, binanceus) = venues
    define_btc_usdt(client)  # priced in USDT: the fill moves the venue's USDT, as the venue does
    url = f"sqlite:///{tmp_path / 'log.db'}"
    reconcile_venues(client, [binance, binanceus])
    flow = OrderFlow(client, binance)
    client.record_intent(ACCOUNT, "o-3", "BTC/USDT", "buy", "0.5", order_type="limit", limit_price="40000",
                         time_in_force="gtc", venue="BINANCE")
    order = flow.forward(ACCOUNT, "o-3")
    fakes["BINANCE"].fill(int(order.venue_order_id), "0.2")
    fakes["BINANCE"].fill(int(order.venue_order_id), "0.3")
    flow.pump()
    flow.pump()
    client.catch_up()
    held = client.state.positions[(ACCOUNT, "BINANCE", "BTC/USDT")]
    assert held.qty == fakes["BINANCE"].balance("BTC") == D("1.4995")
    assert len(logged(url, "FeeCharged")) == 2 and len(logged(url, "OrderFilled")) == 1 + 1
    after = reconcile_venues(client, [binance, binanceus])
    assert [r.corrective_events for r in after.results] == [[], []]
