"""Broker settings reach the adapter through the registry; the reconciliation runner's dry run;
checkpoints keep the execution-id index across a warm start."""

from __future__ import annotations

import os

import pytest

from tradestate.adapters.brokers.registry import BROKERS, OPTIONS, make_adapter
from tradestate.domain.errors import InvalidInput
from tradestate.settings import Settings


@pytest.fixture
def _clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("TRADESTATE_") and name != "TRADESTATE_TEST_PG" or name.startswith("APCA_"):
            monkeypatch.delenv(name)


# ------------------------------------------------------------------------------ the broker registry


@pytest.mark.usefixtures("_clean_env")
@pytest.mark.parametrize("broker", BROKERS)
def test_every_broker_setting_is_an_option_the_registry_takes(broker):
    assert set(Settings().broker_options(broker)) <= set(OPTIONS[broker])


def test_an_option_the_broker_does_not_take_is_refused_not_dropped():
    with pytest.raises(InvalidInput, match="takes no option.*paper"):
        make_adapter("ib", {"account": "a1", "paper": True})


@pytest.mark.usefixtures("_clean_env")
def test_the_ib_timeout_from_the_environment_reaches_the_adapter(monkeypatch):
    from tests.support.fake_tws import FakeTWS

    with FakeTWS() as server:
        monkeypatch.setenv("TRADESTATE_ACCOUNT", "acct-1")
        monkeypatch.setenv("TRADESTATE_IB_HOST", server.host)
        monkeypatch.setenv("TRADESTATE_IB_PORT", str(server.port))
        monkeypatch.setenv("TRADESTATE_IB_CLIENT_ID", "7")
        monkeypatch.setenv("TRADESTATE_IB_TIMEOUT", "3.5")
        monkeypatch.setenv("TRADESTATE_IB_VENUE", "IBKR")
        adapter = make_adapter("ib", Settings.load().broker_options("ib"))
        try:
            assert (adapter.account, adapter.host, adapter.port, adapter.client_id, adapter.timeout, adapter.venue) \
                == ("acct-1", server.host, server.port, 7, 3.5, "IBKR")
        finally:
            adapter.close()


@pytest.mark.usefixtures("_clean_env")
@pytest.mark.parametrize("paper, base_url", [("false", "https://api.alpaca.markets"),
                                             ("true", "https://paper-api.alpaca.markets")])
def test_the_alpaca_paper_flag_from_the_environment_reaches_the_adapter(monkeypatch, paper, base_url):
    pytest.importorskip("tradestate.adapters.brokers.alpaca")
    monkeypatch.setenv("TRADESTATE_ACCOUNT", "a1")
    monkeypatch.setenv("TRADESTATE_ALPACA_PAPER", paper)
    monkeypatch.setenv("APCA_API_KEY_ID", "key")
    monkeypatch.setenv("APCA_API_SECRET_KEY", "secret")
    monkeypatch.setenv("TRADESTATE_ALPACA_VENUE", "ALP")
    adapter = make_adapter("alpaca", Settings.load().broker_options("alpaca"))
    try:
        assert adapter._paper is (paper == "true")
        assert adapter._client._sandbox is (paper == "true")
        assert adapter.base_url.rstrip("/") == base_url
        assert adapter._stream_url.startswith("wss://paper-api" if paper == "true" else "wss://api")
        assert adapter.venue == "ALP"
    finally:
        adapter.close()


# ------------------------------------------------------------------------------ the runner's dry run


def test_a_dry_run_of_the_runner_appends_nothing_and_lists_the_events_a_run_appends(db_url, tmp_path):
    from datetime import datetime, timezone
    from decimal import Decimal as D

    from tests.support.reconcile import ACCOUNT, connect, stage_missed_fill

    from tradestate.adapters.brokers.sim import SimulatedBroker
    from tradestate.reconcile import reconcile

    sim = SimulatedBroker(account=ACCOUNT, state_path=str(tmp_path / "venue.json"))
    now = datetime.now(timezone.utc)
    with connect(db_url) as client:
        stage_missed_fill(client, sim)
        sim.stage_position("AAPL", D(13), D(100))  # 3 more than the missed fill explains: strict blocks
        head = client.store.trading.head()
        dry = reconcile(client, sim, strict=True, now=now, dry_run=True)
        assert client.store.trading.head() == head and client.position == head  # the head did not move
        assert not client.state.accounts[ACCOUNT].blocked
        assert dry.dry_run and dry.position == 0 and dry.blocked and dry.status == "corrected"
        types = [e["type"] for e in dry.corrective_events]
        assert "OrderFilled" in types and len(types) == len(dry.corrective_event_ids) >= 2
        assert dry.as_dict()["would_append"] == len(types) and dry.as_dict()["dry_run"] is True
        done = reconcile(client, sim, strict=True, now=now)  # the same run, for real
        assert not done.dry_run and done.position > head and done.blocked
        assert (done.reconciliation_id, done.corrective_event_ids, done.corrective_events, done.discrepancies) == \
               (dry.reconciliation_id, dry.corrective_event_ids, dry.corrective_events, dry.discrepancies)
        assert client.state.accounts[ACCOUNT].blocked


# ------------------------------------------------------------------------------ the execution-id index in checkpoints


def _filled_order_and_open_order(client, account="acct-1"):
    """o1 filled in full by execution X1 (a finished order), o2 open."""
    client.record_intent(account, "o1", "AAPL", "buy", 10, order_type="limit", limit_price="100", venue="SIM")
    client.record_submitted(account, "o1")
    client.record_fill(account, "o1", "X1", 10, 100)
    client.record_intent(account, "o2", "AAPL", "buy", 10, order_type="limit", limit_price="100", venue="SIM")
    client.record_submitted(account, "o2")


def test_a_duplicate_exec_id_of_a_fill_before_the_checkpoint_is_caught_after_a_warm_start(db_url):
    from tests.support.projector_worker import Clock

    import tradestate
    from tradestate.adapters.store import checkpoints as cp
    from tradestate.adapters.store import open_store
    from tradestate.domain.ids import order_stream_id
    from tradestate.loading import state_at

    clock = Clock()
    with tradestate.connect(db_url, clock=clock) as client:
        _filled_order_and_open_order(client)
    with open_store(db_url) as store:
        cp.write(store, state_at(store))
    with tradestate.connect(db_url, clock=clock) as client:
        assert client.state.orders.is_unloaded(order_stream_id("acct-1", "o1"))  # warm: o1 is only an id
        recorded = client.record_fill("acct-1", "o2", "X1", 4, 100)
        assert recorded.discrepancy == "duplicate_exec_id"
        o2 = client.state.orders[order_stream_id("acct-1", "o2")]
        assert o2.filled_qty == 0 and client.state.position_of("acct-1", "SIM", "AAPL").qty == 10


def test_a_reconciliation_after_a_warm_start_sees_a_venue_fill_reusing_a_booked_exec_id(db_url, tmp_path):
    from decimal import Decimal as D

    from tradestate.adapters.brokers.sim import SimulatedBroker
    from tradestate.adapters.store import checkpoints as cp
    from tradestate.adapters.store import open_store
    from tradestate.client import TradestateClient
    from tradestate.loading import state_at
    from tradestate.reconcile import reconcile

    with TradestateClient(open_store(db_url)) as client:
        _filled_order_and_open_order(client)
    with open_store(db_url) as store:
        cp.write(store, state_at(store))
    sim = SimulatedBroker(account="acct-1", state_path=str(tmp_path / "venue.json"))
    sim.stage_order(client_order_id="o2", symbol="AAPL", side="buy", qty=D(10), status="partially_filled",
                    fills=[("X1", D(4), D(100))])
    with TradestateClient(open_store(db_url)) as client:
        result = reconcile(client, sim, dry_run=True)
    assert "duplicate_exec_id" in [d["kind"] for d in result.discrepancies], result.discrepancies


def test_a_checkpoint_keeps_the_exec_ids_of_the_last_two_trading_days_and_of_open_orders(sqlite_url, monkeypatch):
    from tests.support.projector_worker import Clock

    import tradestate
    from tradestate.domain import snapshot
    from tradestate.domain.ids import order_stream_id

    clock = Clock()
    with tradestate.connect(sqlite_url, clock=clock) as client:
        for day in range(4):  # a filled order per trading day, and one open order filled on day 0
            if day == 0:
                client.record_intent("a", "open", "AAPL", "buy", 10, order_type="limit", limit_price="100", venue="V")
                client.record_submitted("a", "open")
                client.record_fill("a", "open", "XO", 1, 100)
            client.record_intent("a", f"o{day}", "AAPL", "buy", 1, order_type="limit", limit_price="100", venue="V")
            client.record_submitted("a", f"o{day}")
            client.record_fill("a", f"o{day}", f"X{day}", 1, 100)
            clock.advance(24 * 60)
        doc, finished = snapshot.take(client.state)
        assert doc["snapshot_version"] == snapshot.SNAPSHOT_VERSION >= 3
        restored_ids = sorted(e for by_day in doc["exec_ids"].values() for execs, _ in by_day.values()
                              for e in execs.split(snapshot.SEP))
        assert restored_ids == ["X2", "X3", "XO"]
        restored = snapshot.restore(orjson_roundtrip(doc), finished)
        assert restored.exec_ids == {"V": {"X2": order_stream_id("a", "o2"), "X3": order_stream_id("a", "o3"),
                                           "XO": order_stream_id("a", "open")}}
        # taken again from the restored state (no order in memory): the same index
        assert snapshot.take(restored)[0]["exec_ids"] == doc["exec_ids"]
        monkeypatch.setattr(snapshot, "EXEC_ID_ORDERS", 1)  # only the most recently filled order, and open ones
        (by_day,) = snapshot.take(restored)[0]["exec_ids"].values()
        assert sorted(e for execs, _ in by_day.values() for e in execs.split(snapshot.SEP)) == ["X3", "XO"]


def orjson_roundtrip(doc):
    import orjson

    from tradestate.domain import snapshot

    return orjson.loads(snapshot.encode(doc))


def test_a_checkpoint_written_without_the_index_still_loads_with_an_empty_one(db_url):
    import orjson

    import tradestate
    from tradestate.adapters.store import checkpoints as cp
    from tradestate.adapters.store import open_store
    from tradestate.domain import snapshot
    from tradestate.loading import load_checkpoint, state_at

    with tradestate.connect(db_url) as client:
        _filled_order_and_open_order(client)
    with open_store(db_url) as store:
        info = cp.write(store, state_at(store))
        with cp._cursor(store, write=False) as cur:
            cur.execute(f"SELECT document, finished FROM {cp._table(store)} WHERE id = {info.id}")
            data, finished = (bytes(x) for x in cur.fetchone())
        doc = orjson.loads(data)
        del doc["exec_ids"]  # what version 1 wrote
        doc["snapshot_version"] = 1
        data = snapshot.encode(doc)
        p = store.dialect.param
        with cp._cursor(store, write=True) as cur:
            cur.execute(f"UPDATE {cp._table(store)} SET document = {p}, checksum = {p}, snapshot_version = 1 "
                        f"WHERE id = {p}", (data, snapshot.checksum(data, finished), info.id))
        loaded = load_checkpoint(store)
        assert not loaded.rejected and loaded.checkpoint.id == info.id and loaded.checkpoint.snapshot_version == 1
        assert loaded.state.exec_ids == {} and loaded.state.position == info.position
