"""What users see of the venues' vocabulary in the SQL read models: an order's pending amendment,
fees still to come per execution and per order, the instrument registry, cash per account, venue
and currency, recorded FX rates and corporate actions. Every way of filling the tables (pages with
restarts, the rebuild from zero, a writer process) gives what a one-page rebuild gives."""

from __future__ import annotations

import sqlite3
import zlib
from datetime import datetime, timezone
from decimal import Decimal

import pytest

import tradestate
from tests.projections.test_alert_metrics import _samples, _value
from tests.projections.test_api import serving
from tests.support.projector_worker import Clock, assert_equals_rebuild, assert_same, dump_tables, rebuild_snapshot
from tradestate.adapters.store import open_store
from tradestate.domain import events as ev
from tradestate.domain.ids import account_stream_id
from tradestate.projections import queries
from tradestate.projections.projector import PROJECTION, Projector
from tradestate.projections.tables import SCHEMA_ROW, TABLES, TRACKING_TABLE
from tradestate.writer import build_event

EXPIRY = datetime(2030, 1, 1, tzinfo=timezone.utc)
SPLIT_AT = datetime(2026, 6, 1, tzinfo=timezone.utc)


def _cash(client, account: str, venue: str, currency: str, balance: str) -> None:
    e = build_event(ev.CashBalanceRecorded, **client.writer.envelope(), account=account, venue=venue,
                    currency=currency, balance=balance)
    client.writer.record_event(account_stream_id(account), e)


def _venue_session(url: str) -> None:
    """Instruments, a rate, balances at two venues, fills whose fees come later (on the order, on
    the account, never), a correction, amendments pending, refused and confirmed, a split and a
    symbol change."""
    with tradestate.connect(url, clock=Clock()) as c:
        c.record_fx_rate("EUR", "USD", "1.1", source="ECB")
        c.record_fx_rate("EUR", "USD", "1.08", source="ECB")  # the last one counts
        c.define_instrument("FESX", "future", multiplier=10, quote_currency="EUR", expiry=EXPIRY, tick_size="1")
        c.define_instrument("XYZ", "equity", lot_size=1)
        _cash(c, "a", "IB", "USD", "100000")
        _cash(c, "a", "IB", "EUR", "5000")
        _cash(c, "a", "ALP", "USD", "2000")
        c.record_intent("a", "o1", "XYZ", "buy", 100, order_type="limit", limit_price="50", venue="IB")
        c.record_submitted("a", "o1")
        c.record_ack("a", "o1", "P1")
        c.record_fill("a", "o1", "X.01", 40, "50", fee_pending=True)
        c.record_fill("a", "o1", "Y.01", 20, "50", fee_pending=True)
        c.record_fill("a", "o1", "Z.01", 10, "50", fee_pending=True)
        c.record_fee("a", "IB", "Y.01", "0.2", symbol="XYZ", exec_id="Y.01", client_order_id="o1")  # on the order
        c.record_fee("a", "IB", "Z.01", "0.1", symbol="XYZ", exec_id="Z.01")  # on the account, naming the execution
        c.request_replace("a", "o1", qty=120, limit_price="51", replace_id="R1")  # pending: the venue has not answered
        c.record_intent("a", "o2", "FESX", "sell", 2, order_type="limit", limit_price="5000", venue="IB")
        c.record_submitted("a", "o2")
        c.record_ack("a", "o2", "P2")
        c.request_replace("a", "o2", qty=3, replace_id="R2")
        c.record_replace_refused("a", "o2", "R2", "venue says no")
        c.request_replace("a", "o2", qty=1, replace_id="R3")
        c.record_replaced("a", "o2", 1, limit_price="5000")
        c.record_fill("a", "o2", "F.01", 1, "5001", fee_pending=True)
        c.record_fill_correction("a", "o2", "F.02", ["F.01"], 1, "5002", fee_pending=True)
        c.record_corporate_action("XYZ", "split", SPLIT_AT, ratio_from=1, ratio_to=2, source="venue")
        c.record_corporate_action("XYZ", "symbol_change", SPLIT_AT, new_symbol="XYZW")


def _rows(tables: dict, table: str) -> list[dict]:
    names = [c for c, _ in TABLES[table][0]]
    return [dict(zip(names, row)) for row in tables[table]]


def test_the_read_models_show_amendments_pending_fees_instruments_cash_rates_and_actions(sqlite_url):
    _venue_session(sqlite_url)
    with open_store(sqlite_url) as store:
        Projector(store, page=2).catch_up()
        tables = dump_tables(store)
        assert_equals_rebuild(store)
    orders = {r["client_order_id"]: r for r in _rows(tables, "ts_orders")}
    assert (orders["o1"]["fees_pending"], orders["o1"]["replace_pending"], orders["o1"]["replace_qty"],
            orders["o1"]["replace_limit_price"]) == (1, "R1", 170, 25.5)  # 120 @ 51 restated by the split: 70 + 50 x 2
    # the amendment does not move the quantity until the venue confirms; the split does (OrderAdjusted):
    # 70 filled + the 30 left, doubled
    assert orders["o1"]["qty"] == 130
    # o2: R2 refused, R3 confirmed: nothing pending; its corrected fill's fee is still to come
    assert (orders["o2"]["replace_pending"], orders["o2"]["replace_qty"], orders["o2"]["qty"],
            orders["o2"]["fees_pending"]) == (None, None, 1, 1)
    pending = {(r["account"], r["exec_id"]): r for r in _rows(tables, "ts_fees_pending")}
    assert set(pending) == {("a", "X.01"), ("a", "F.02")}  # Y.01, Z.01 came; F.01 was replaced by F.02
    assert (pending[("a", "X.01")]["client_order_id"], pending[("a", "X.01")]["qty"],
            pending[("a", "F.02")]["price"]) == ("o1", 40, 5002)
    instruments = {r["symbol"]: r for r in _rows(tables, "ts_instruments")}
    assert set(instruments) == {"FESX", "XYZ", "XYZW"}  # the symbol change carries the definition over
    assert (instruments["FESX"]["asset_class"], instruments["FESX"]["multiplier"], instruments["FESX"]["quote_currency"],
            instruments["FESX"]["tick_size"], instruments["FESX"]["expiry"]) == (
        "future", 10, "EUR", 1, EXPIRY.isoformat())
    with queries.open_reader(sqlite_url).read() as tx:
        cash = {(r["account"], r["venue"], r["currency"]): r["balance"] for r in queries.cash(tx)}
    # the IB account paid for 70 XYZ at 50 and the fees that came; Alpaca's cash is its own
    assert cash == {("a", "IB", "USD"): str(100000 - 70 * 50 - Decimal("0.3")), ("a", "IB", "EUR"): "5000",
                    ("a", "ALP", "USD"): "2000"}
    assert [(r["base"], r["quote"], r["rate"], r["source"]) for r in _rows(tables, "ts_fx_rates")] == [
        ("EUR", "USD", 1.08, "ECB")]
    actions = [(r["symbol"], r["action"], r["ratio_from"], r["ratio_to"], r["new_symbol"], r["source"])
               for r in _rows(tables, "ts_corporate_actions")]
    assert actions == [("XYZ", "split", 1, 2, None, "venue"), ("XYZ", "symbol_change", None, None, "XYZW", "operator")]


@pytest.mark.parametrize("page, writer_process", [(1, False), (3, True), (10**6, False)])
def test_every_way_of_filling_the_tables_gives_the_same_venue_facts(db_url, store, page, writer_process):
    _venue_session(db_url)
    projector = Projector(store, page=page)
    while projector.run_once():
        projector = Projector(store, page=page)  # a restart after every page
    _, reference = rebuild_snapshot(store)
    assert_same(dump_tables(store), reference, "tables of pages with restarts")
    assert Projector(store, page=page).rebuild(writer_process=writer_process) == store.trading.head()
    assert_same(dump_tables(store), reference, "tables of the rebuild from zero")
    # pages committed by a writer process (their deletes of settled fees cross the pipe too)
    assert Projector(store, page=page).rebuild_in_pages(writer_process=writer_process) == store.trading.head()
    assert_same(dump_tables(store), reference, "tables of pages from a writer process")
    assert len(reference["ts_fees_pending"]) == 2 and len(reference["ts_instruments"]) == 3


def test_a_fee_after_a_restart_moves_the_equity_curve_as_without_one(sqlite_url):
    """The equity book is replayed on a restart: a fee or a correction folded before it counts
    there as it did in the page that wrote it (was: only fills were replayed, so the next point
    after a restart lost the fee)."""
    with tradestate.connect(sqlite_url, clock=Clock()) as c:
        c.record_intent("a", "o1", "XYZ", "buy", 10, order_type="limit", limit_price="50", venue="IB")
        c.record_fill("a", "o1", "X.01", 5, "50", fee_pending=True)
        c.record_fee("a", "IB", "X.01", "0.25", symbol="XYZ", exec_id="X.01", client_order_id="o1")
        c.record_intent("a", "o2", "ABC", "buy", 10, order_type="limit", limit_price="50", venue="IB")
        c.record_fill("a", "o2", "X.02", 5, "51", fee="0.02")  # another position of the account
    with open_store(sqlite_url) as store:
        head = store.trading.head()
        Projector(store).run_once(limit=head - 3)  # up to the fee
        Projector(store).catch_up()  # a new projector: load() replays the log up to the tables' position
        assert_equals_rebuild(store)
        equity = dump_tables(store)["ts_equity_curve"]
    assert [row[4] for row in equity] == [0.27]


def test_read_models_of_the_shape_before_these_tables_are_rebuilt_with_them(sqlite_url):
    """A read-model database written by the version before (no pending amendment or fee columns on
    ts_orders, none of the new tables, that version's fingerprint) is dropped and rebuilt from the
    log by the first projector that opens it."""
    _venue_session(sqlite_url)
    with open_store(sqlite_url) as store:
        head = Projector(store).catch_up()
    new_tables = ("ts_fees_pending", "ts_instruments", "ts_cash", "ts_fx_rates", "ts_corporate_actions")
    old_columns = [c for c, _ in TABLES["ts_orders"][0]][:25]
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("DROP VIEW ts_open_orders")
        for table in new_tables:
            conn.execute(f"DROP TABLE {table}")
        conn.execute("CREATE TABLE ts_orders_old AS SELECT " + ", ".join(old_columns) + " FROM ts_orders")
        conn.execute("DROP TABLE ts_orders")
        conn.execute("ALTER TABLE ts_orders_old RENAME TO ts_orders")
        conn.execute("CREATE VIEW ts_open_orders AS SELECT * FROM ts_orders WHERE is_open")
        conn.execute(f"UPDATE {TRACKING_TABLE} SET position = ? WHERE projection = ?", (zlib.crc32(b"older"), SCHEMA_ROW))
        assert conn.execute(f"SELECT position FROM {TRACKING_TABLE} WHERE projection = ?", (PROJECTION,)).fetchone()[0] == head
    with open_store(sqlite_url) as store:
        assert Projector(store).catch_up() == head
        tables = dump_tables(store)
        assert_equals_rebuild(store)
    assert all(tables[t] for t in new_tables)
    assert {r["client_order_id"]: r["replace_pending"] for r in _rows(tables, "ts_orders")} == {"o1": "R1", "o2": None}
    # and the readers see them
    reader = queries.open_reader(sqlite_url)
    with reader.read() as tx:
        assert [i["symbol"] for i in queries.instruments(tx)] == ["FESX", "XYZ", "XYZW"]


def test_the_api_serves_them_with_their_openapi_models(sqlite_url):
    _venue_session(sqlite_url)
    with open_store(sqlite_url) as store:
        Projector(store).catch_up()
    with serving(sqlite_url) as http:
        o1 = http.get("/orders/a/o1").json()
        assert (o1["fees_pending"], o1["replace_pending"], o1["replace_qty"], o1["replace_limit_price"]) == (
            1, "R1", "170", "25.5")  # restated by the split
        assert [(f["exec_id"], f["client_order_id"], f["qty"]) for f in http.get("/fees/pending").json()] == [
            ("X.01", "o1", "40"), ("F.02", "o2", "1")]
        assert [f["exec_id"] for f in http.get("/fees/pending", params={"client_order_id": "o2"}).json()] == ["F.02"]
        fesx = http.get("/instruments/FESX").json()
        assert (fesx["asset_class"], fesx["multiplier"], fesx["quote_currency"], fesx["fractional"]) == (
            "future", "10", "EUR", False)
        assert [i["symbol"] for i in http.get("/instruments", params={"asset_class": "equity"}).json()] == ["XYZ", "XYZW"]
        missing = http.get("/instruments/NOPE")
        assert missing.status_code == 404 and "NOPE" in missing.json()["detail"]
        assert [(c["venue"], c["currency"], c["balance"]) for c in http.get("/cash", params={"account": "a"}).json()] == [
            ("ALP", "USD", "2000"), ("IB", "EUR", "5000"), ("IB", "USD", "96499.7")]
        assert http.get("/cash", params={"currency": "usd"}).status_code == 422
        assert [(r["base"], r["quote"], r["rate"]) for r in http.get("/fx-rates").json()] == [("EUR", "USD", "1.08")]
        actions = http.get("/corporate-actions", params={"symbol": "XYZ"}).json()
        assert [(a["action"], a["ratio_from"], a["ratio_to"], a["new_symbol"]) for a in actions] == [
            ("split", "1", "2", None), ("symbol_change", None, None, "XYZW")]
        spec = http.get("/openapi.json").json()["components"]["schemas"]
        assert "not confirmed or refused" in str(spec["Order"]["properties"]["replace_pending"])
        assert {"Instrument", "Cash", "FxRate", "CorporateAction", "FeePending"} <= set(spec)


def test_metrics_count_the_fees_to_come_and_the_age_of_the_oldest(sqlite_url):
    _venue_session(sqlite_url)
    with open_store(sqlite_url) as store:
        Projector(store).catch_up()
    with serving(sqlite_url) as http:
        samples = _samples(http.get("/metrics").text)
    assert _value(samples, "tradestate_fees_pending", account="a") == 2
    # the session's clock starts in 2024: the oldest fill's fee has been waiting since then
    assert _value(samples, "tradestate_fees_pending_oldest_age_seconds", account="a") > 3600


def test_the_python_read_model_reads_them_typed(sqlite_url):
    from tradestate.projections.reader import ReadModel

    _venue_session(sqlite_url)
    with open_store(sqlite_url) as store:
        Projector(store).catch_up()
    with ReadModel(sqlite_url) as rm:
        assert [(c["venue"], c["currency"], c["balance"]) for c in rm.cash("a", venue="IB")] == [
            ("IB", "EUR", Decimal(5000)), ("IB", "USD", Decimal("96499.7"))]
        assert rm.instruments("FESX")[0]["expiry"] == EXPIRY and rm.instruments("XYZ")[0]["fractional"] is False
        assert [(r["base"], r["rate"]) for r in rm.fx_rates()] == [("EUR", Decimal("1.08"))]
        assert [a["action"] for a in rm.corporate_actions("XYZ")] == ["split", "symbol_change"]
        assert [f["exec_id"] for f in rm.fees_pending("a", client_order_id="o1")] == ["X.01"]
        assert rm.order("a", "o1")["replace_qty"] == Decimal(170)
