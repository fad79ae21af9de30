"""The demo's instruments act (issue 18), alone on a fresh log: what it prints is what the log
holds, and a state that is not what a step says fails that step by name."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import orjson
from rich.console import Console

import tradestate
from tradestate.adapters.store import open_store
from tradestate.domain.ids import order_stream_id
from tradestate.tools.demo.instruments_act import ACCOUNT, VENUE, show_instruments


def run(url: str) -> tuple[bool, str]:
    console = Console(record=True, width=400, color_system=None)
    ok = show_instruments(url, console)
    return ok, console.export_text()


def test_the_act_holds_every_step_and_the_log_holds_what_it_printed(db_url):
    ok, out = run(db_url)
    assert ok, out
    assert "every step of the act held" in out and "FAILED" not in out
    assert "refused: instrument_off_tick" in out and "refused: instrument_lot_size" in out
    assert "refused: max_order_notional (notional 500000.00 > 300000)" in out
    assert "refused: no_fx_rate" in out and "FxRateRecorded EUR/USD 1.08" in out
    assert "OrderAdjusted d-9: sell 40 @200.00 → 80 @100.00" in out
    assert "request_replace d-10 qty 1 → 2 → refused before the venue sees it: max_order_notional" in out

    with tradestate.connect(db_url) as client:  # a new fold of the log, not the act's client
        state = client.state
        positions = {p["symbol"]: p for p in client.positions(ACCOUNT)}
        # ES: bought 5000, settled 5012.50, sold 5020: realised once, (5020 - 5000) x 1 x 50
        assert positions["ESZ6"]["qty"] == 0 and positions["ESZ6"]["realized_pnl"] == 1000
        # SAP: 100 @180 split 2-for-1 into 200 @90, 80 sold @100 by the adjusted order
        assert positions["SAP"]["qty"] == 120 and positions["SAP"]["avg_cost"] == 90
        assert positions["SAP"]["realized_pnl"] == 800 and positions["SAP"]["currency"] == "EUR"
        assert positions["BTC/USD"]["qty"] == Decimal("0.25")
        # USD: 1,000,000 + ES 1,000 - ES fees 4.50 - BTC 22,812.625 - its fee 11.41; EUR: 100,000 - 18,000 + 8,000
        assert state.accounts[ACCOUNT].cash_at(VENUE) == {"USD": Decimal("978171.465"), "EUR": Decimal("90000")}
        sold = client.order(ACCOUNT, "d-9")
        assert (sold["status"], sold["qty"], sold["limit_price"]) == ("filled", 80, 100)
        fee = client.order(ACCOUNT, "d-6")
        assert fee["fees_pending"] == [] and fee["fees"] == Decimal("11.41")
        amended = client.order(ACCOUNT, "d-10")
        assert amended["status"] == "cancelled" and amended["limit_price"] == Decimal("4995.00")
        assert sorted(r["status"] for r in amended["replaces"].values()) == ["refused", "replaced"]
        assert client.reporting_view("USD", ACCOUNT)["totals"]["realized_pnl"] == Decimal("1864.00")
        assert client.open_orders(ACCOUNT) == []
    with open_store(db_url) as store:
        kinds = [e.topic for e in store.trading.read_stream(order_stream_id(ACCOUNT, "d-9"))]
        assert kinds.count("OrderAdjusted") == 1 and "OrderReplaced" not in kinds  # the venue's confirmation: no second
        amend = [e.topic for e in store.trading.read_stream(order_stream_id(ACCOUNT, "d-10"))]
        assert amend.count("OrderReplaceRequested") == 2 and amend.count("OrderReplaceRefused") == 1
        assert "OrderReplaced" in amend
        settled = [orjson.loads(e.state) for e in store.trading.read_stream(f"account-{ACCOUNT}")
                   if e.topic == "VariationMarginSettled"]
        assert [(s["settlement_price"], s["amount"]) for s in settled] == [("5012.50", "625.00")]


def test_a_state_that_is_not_as_a_step_says_fails_that_step_by_name(sqlite_url):
    """An EUR/USD rate already on record: the act's intent that must be refused for want of one
    passes, and the act stops there, naming the step, instead of telling a story the log does not hold."""
    with tradestate.connect(sqlite_url, clock=lambda: datetime(2026, 11, 20, 12, tzinfo=timezone.utc)) as client:
        client.record_fx_rate("EUR", "USD", "1.10", source="earlier")
    ok, out = run(sqlite_url)
    assert not ok
    assert "FAILED step 'an equity in EUR, a 2-for-1 split with an open order' failed: intent d-7" in out
    assert "expected no_fx_rate" in out and "every step of the act held" not in out


def test_an_error_of_a_step_fails_it_by_name(sqlite_url):
    """The desk's account already on record: its opening (bootstrap) is refused, and said so by step."""
    assert run(sqlite_url)[0]
    ok, out = run(sqlite_url)
    assert not ok
    assert "FAILED step \"the desk's account, opened from the venue\" failed: AccountOnRecord" in out
