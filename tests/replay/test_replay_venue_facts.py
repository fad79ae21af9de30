"""The post-mortem tools describe the venues' own facts in words: instruments, FX rates, corporate
actions, option settlements, fees reported apart, execution corrections and busts, amendments
asked, refused and confirmed (the timeline's summaries, the order trace, the diff, the report)."""

from __future__ import annotations

import io
from datetime import datetime, timezone
from decimal import Decimal

from rich.console import Console

import tradestate
from tests.support.projector_worker import Clock
from tradestate import replay
from tradestate.adapters.store import open_store
from tradestate.domain.events import EVENT_TYPES
from tradestate.replay.log import describe, iter_events
from tradestate.replay.report import incident

EXPIRY = datetime(2030, 1, 1, tzinfo=timezone.utc)
SPLIT_AT = datetime(2026, 6, 1, tzinfo=timezone.utc)


def _session(url: str) -> Clock:
    clock = Clock()
    with tradestate.connect(url, clock=clock) as c:
        c.record_fx_rate("EUR", "USD", "1.08", source="ECB")
        c.define_instrument("FESX", "future", multiplier=10, quote_currency="EUR", expiry=EXPIRY, tick_size="1")
        c.define_instrument("XYZ", "equity", lot_size=1)
        c.define_instrument("XYZ1C", "option", multiplier=100, expiry=EXPIRY, underlying="XYZ", strike="50",
                            right="call")
        c.record_intent("a", "o1", "XYZ", "buy", 100, order_type="limit", limit_price="50", venue="IB")
        c.record_submitted("a", "o1")
        c.record_ack("a", "o1", "P1")
        c.record_fill("a", "o1", "X.01", 40, "50", fee_pending=True)
        c.record_fill("a", "o1", "Y.01", 20, "50", fee="0.1")
        c.record_fill_correction("a", "o1", "Y.02", ["Y.01"], 20, "49.5")
        c.record_fill_correction("a", "o1", "Y.03", ["Y.02"], 0, "49.5")  # busted
        c.request_replace("a", "o1", qty=120, limit_price="51", replace_id="R1")
        c.record_replace_refused("a", "o1", "R1", "too late")
        c.request_replace("a", "o1", qty=110, replace_id="R2")
        c.record_fee("a", "IB", "CRYPTO-1", "0.5", symbol="XYZ", in_kind=True)
        c.record_intent("a", "o2", "XYZ1C", "buy", 1, order_type="limit", limit_price="3", venue="IB")
        c.record_submitted("a", "o2")
        c.record_fill("a", "o2", "V.01", 1, "2.5")
        c.record_option_settlement("a", "IB", "XYZ1C", "exercise", 1, venue_ref="EX-1")
        c.record_corporate_action("XYZ", "split", SPLIT_AT, ratio_from=1, ratio_to=2, source="venue")
        c.record_corporate_action("XYZ", "split", SPLIT_AT.replace(month=7), ratio_from=10, ratio_to=1)
        c.record_corporate_action("XYZ", "symbol_change", SPLIT_AT.replace(month=8), new_symbol="XYZW")
        c.record_fee("a", "IB", "X.01", "0.4", exec_id="X.01", client_order_id="o1")  # booked on the order's XYZW
    return clock


def test_every_new_venue_event_reads_as_words(sqlite_url):
    _session(sqlite_url)
    with open_store(sqlite_url) as store:
        said = {}
        for e in iter_events(store, 0, store.trading.head()):
            said.setdefault(e.type, []).append(describe(e))
    for t in ("InstrumentDefined", "FxRateRecorded", "CorporateActionRecorded", "OptionSettled", "FeeCharged",
              "FillCorrected", "OrderReplaceRequested", "OrderReplaceRefused"):
        assert t in EVENT_TYPES and t in said, t
        assert all(text != t and "replacerequested" not in text for text in said[t]), said[t]
    assert said["FxRateRecorded"] == ["FX rate 1 EUR = 1.08 USD (ECB)"]
    assert said["InstrumentDefined"][0] == ("instrument FESX defined: future x10 in EUR, tick_size 1, whole units, "
                                            "expires 2030-01-01T00:00:00Z")
    assert "call on XYZ strike 50" in said["InstrumentDefined"][2]
    assert said["OrderFilled"][0] == "a/o1 fill X.01: 40 @50 fee to come (reported later)"
    assert said["FillCorrected"] == ["a/o1 venue corrected execution Y.01 (20 @50) to Y.02: 20 @49.5",
                                     "a/o1 venue BUSTED execution Y.02 (20 @49.5; Y.03)"]
    assert said["OrderReplaceRequested"][0] == ("a/o1 amendment R1 asked: qty 120 limit 51; the order keeps its "
                                                "terms until the venue confirms")
    assert said["OrderReplaceRefused"] == ["a/o1 amendment R1 REFUSED by venue (venue_rejected): too late"]
    assert said["FeeCharged"] == [
        "a fee 0.5 XYZ for CRYPTO-1 at IB, taken in kind: the XYZ position shrinks by it",
        "a/o1 fee 0.4 USD for X.01 of order o1 on XYZW at IB"]
    assert said["OptionSettled"] == ["a option XYZ1C: 1 contracts exercised at IB (venue ref EX-1)"]
    assert said["CorporateActionRecorded"][0].startswith("corporate action: XYZ 2-for-1 split effective 2026-06-01")
    assert "1-for-10 reverse split" in said["CorporateActionRecorded"][1]
    assert said["CorporateActionRecorded"][2].startswith("corporate action: XYZ becomes XYZW effective 2026-08-01")


def _amended_with_fees_to_come(client, fills: int) -> None:
    """Order o1, acknowledged, ``fills`` fills of 10 whose fees are still to come, and amendment R1
    (to 120 at 51) not answered by the venue yet."""
    client.record_intent("a", "o1", "XYZ", "buy", 100, order_type="limit", limit_price="50", venue="IB")
    client.record_ack("a", "o1", "P1")
    for n in range(fills):
        client.record_fill("a", "o1", f"X.0{n + 1}", 10, "50", fee_pending=True)
    client.request_replace("a", "o1", qty=120, limit_price="51", replace_id="R1")


def test_the_trace_shows_the_pending_amendment_and_the_fee_to_come(sqlite_url):
    with tradestate.connect(sqlite_url, clock=Clock()) as c:
        _amended_with_fees_to_come(c, 1)
    with open_store(sqlite_url) as store:
        t = replay.trace(store, "a", "o1")
    roles = [s.role for s in t.steps]
    assert "amendment request" in roles
    assert t.final["fees_pending"] == ["X.01"]
    assert t.final["replace_pending"] == {"replace_id": "R1", "qty": "120", "limit_price": "51", "stop_price": None}
    out = io.StringIO()
    Console(file=out, width=250).print(t)
    assert "fee to come for X.01" in out.getvalue() and "amendment R1 (qty 120) waits for the venue" in out.getvalue()


def test_the_diff_names_what_instruments_rates_and_actions_changed(sqlite_url):
    _session(sqlite_url)
    with open_store(sqlite_url) as store:
        head = store.trading.head()
        d = replay.diff_positions(store, 1, head)  # from the first rate on
        out = io.StringIO()
        Console(file=out, width=250).print(replay.render_diff(d))
    reference = {r["what"]: r for r in d["reference"]}
    assert "FX rate EUR/USD" not in reference  # recorded at position 1: the same before and after
    assert reference["instrument FESX"]["changes"]["multiplier"][1] == 10
    assert "instrument XYZW" in reference  # carried over by the symbol change
    # the split and the rename are among what changed the XYZ position
    xyz = next(p for p in d["positions"] if p["key"] == "a|IB|XYZ")
    kinds = {e["position"]: e["type"] for e in d["events"]}
    assert {"CorporateActionRecorded", "OptionSettled", "FeeCharged"} <= {kinds[p] for p in xyz["events"]}
    order = next(o for o in d["orders"] if o["client_order_id"] == "o1")
    assert order["changes"]["replace_pending"] == [None, "R2"] and order["changes"]["fees_pending"] == [None, 0]
    assert "Instruments and FX rates" in out.getvalue()


def test_the_report_lists_the_venue_facts_and_marks_corrected_prices(sqlite_url, tmp_path):
    clock = _session(sqlite_url)
    with open_store(sqlite_url) as store:
        tl = replay.timeline(store, clock.now, "1h", axis="occurred")
        inc = incident(store, tl)
        assert [e.type for e in inc.venue_facts] == ["FillCorrected", "FillCorrected", "OrderReplaceRefused",
                                                     "OptionSettled", "CorporateActionRecorded",
                                                     "CorporateActionRecorded", "CorporateActionRecorded"]
        from tradestate.replay.report import price_points

        corrected = [p for p in price_points(store, tl, inc) if p.kind == "corrected fill"]
        assert [(p.symbol, str(p.price)) for p in corrected] == [("XYZ", "49.5")]  # the bust has no price
        path = replay.write_report(store, clock.now, "1h", str(tmp_path / "r.html"), axis="occurred")
    html = open(path).read()
    assert "Venue corrections, refused amendments, settlements and corporate actions" in html
    assert "venue BUSTED execution Y.02" in html and "amendment R1 REFUSED by venue" in html


def test_the_orders_table_notes_the_pending_amendment_and_fees(sqlite_url):
    from tradestate.render import orders_table

    with tradestate.connect(sqlite_url, clock=Clock()) as c:
        _amended_with_fees_to_come(c, 2)
        out = io.StringIO()
        Console(file=out, width=250).print(orders_table(c.state))
    assert "amendment to qty 120 waits for the venue; fee to come for 2 fills" in out.getvalue()


def test_the_orders_export_books_corrections_busts_and_late_fees_as_the_fold(sqlite_url):
    """(was: the export summed the ``OrderFilled`` rows only: a corrected or busted fill kept its
    first quantity and price, and a fee reported apart was missing)"""
    _session(sqlite_url)
    with tradestate.connect(sqlite_url, clock=Clock()) as c:
        c.record_intent("a", "o3", "XYZW", "sell", 10, order_type="limit", limit_price="20", venue="IB")
        c.record_ack("a", "o3", "P3")
        c.record_fill("a", "o3", "S.01", 10, "21", fee="0.3")
        c.record_fill_correction("a", "o3", "S.02", ["S.01"], 0, "21")  # busted after it filled the order
        folded = {o.client_order_id: o for o in c.state.orders.values()}
    rows = {r["client_order_id"]: r for r in replay.orders(sqlite_url).to_pylist()}
    for coid, o in folded.items():
        assert (rows[coid]["filled_qty"], rows[coid]["fees"], rows[coid]["status"]) == (
            o.filled_qty, o.fees, o.status), coid
        assert (rows[coid]["avg_fill_price"] is None) == (o.avg_fill_price is None)
        if o.avg_fill_price is not None:
            assert abs(rows[coid]["avg_fill_price"] - o.avg_fill_price) < Decimal("1e-9"), coid


def test_a_futures_daily_settlement_reads_as_words():
    """``VariationMarginSettled`` (the futures' daily settlement, a venue fact) from its stored payload."""
    from tradestate.replay.log import LoggedEvent

    e = LoggedEvent("trading", 7, "account-a", 3, "VariationMarginSettled", datetime(2026, 12, 1, tzinfo=timezone.utc),
                    {"account": "a", "venue": "IB", "symbol": "ESZ6", "business_date": "2026-12-01",
                     "settlement_price": "5010.25", "qty": "-2", "amount": "-1025.00", "currency": "USD",
                     "venue_ref": "VM-1"})
    assert describe(e) == ("a ESZ6 daily settlement 2026-12-01 at IB: -2 contracts marked at 5010.25, "
                           "variation margin -1025 USD (venue ref VM-1)")
