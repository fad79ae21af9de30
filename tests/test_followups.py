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
    from fake_tws import FakeTWS

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

    from test_reconcile import ACCOUNT, connect, stage_missed_fill

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
