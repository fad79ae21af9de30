"""The reconciliation runner and ``tradestate reconcile`` on real SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from decimal import Decimal as D

import pytest

from tradestate.adapters.brokers.base import OrderRequest
from tradestate.adapters.brokers.sim import SimFaults, SimulatedBroker
from tradestate.domain.ids import order_stream_id
from tradestate.adapters.brokers.registry import make_adapter
from tradestate.reconcile import acknowledge, reconcile
from tradestate.domain.errors import InvalidInput

from tests.support.reconcile import ACCOUNT, connect, rows, stage_missed_fill


@pytest.fixture
def sim(tmp_path):
    return SimulatedBroker(account=ACCOUNT, state_path=str(tmp_path / "venue.json"))


def test_run_appends_corrections_with_the_report_and_twice_adds_only_a_record(db_url, sim):
    with connect(db_url) as client:
        stage_missed_fill(client, sim)
        first = reconcile(client, sim)
        assert first.status == "corrected"
        assert first.counts["fills_recorded"] == 1 and first.counts["cash_recorded"] == 1
        head = client.position
        second = reconcile(client, sim)
        assert second.status == "clean" and second.corrective_event_ids == []
        assert client.position == head + 1  # only its own ReconciliationCompleted
    stored = rows(db_url)
    completed = [d for t, d in stored if t == "ReconciliationCompleted"]
    assert len(completed) == 2
    report = completed[0]["venue_report"]
    assert report["fills"][0]["exec_id"] == "E1"
    assert completed[0]["venue_report_sha256"] == first.venue_report_sha256
    assert completed[0]["corrective_event_ids"] == [str(i) for i in first.corrective_event_ids]
    fill = next(d for t, d in stored if t == "OrderFilled")
    assert fill["causation_id"] == first.reconciliation_id
    intent = next(d for t, d in stored if t == "OrderIntentRecorded")
    assert fill["correlation_id"] == intent["event_id"]
    # a fresh fold of the stored log agrees with the live client
    with connect(db_url) as fresh:
        assert fresh.state.orders[order_stream_id(ACCOUNT, "o1")].status == "filled"
        assert fresh.state.accounts[ACCOUNT].last_reconciliation["status"] == "clean"


def test_missed_fills_past_the_daily_loss_limit_record_the_breach_and_trading_stops(db_url, sim):
    with connect(db_url) as client:
        client.set_risk_limit(ACCOUNT, "max_daily_loss", 50)
        stage_missed_fill(client, sim)  # long 10 @ 100
        reconcile(client, sim)
        client.record_intent(ACCOUNT, "o2", "AAPL", "sell", 10, order_type="limit", limit_price="90", venue="SIM")
        client.record_submitted(ACCOUNT, "o2")
        sim.stage_order(client_order_id="o2", symbol="AAPL", side="sell", qty=D(10), status="filled",
                        fills=[("E2", D(10), D(90))])  # a loss of 100 the log did not see
        result = reconcile(client, sim)
        assert result.counts["daily_limits_breached"] == 1
        assert client.risk_state(ACCOUNT)["breaches_today"] == ["max_daily_loss"]
        assert not client.record_intent(ACCOUNT, "o3", "AAPL", "buy", 1, venue="SIM").accepted
        assert reconcile(client, sim).corrective_event_ids == []
    stored = rows(db_url)
    fill = next(d for t, d in stored if t == "OrderFilled" and d["exec_id"] == "E2")
    (breach,) = [d for t, d in stored if t == "DailyLimitBreached"]
    assert breach["causation_id"] == fill["event_id"] and D(breach["value"]) == D(-100)
    assert breach["event_id"] in [str(i) for i in result.corrective_event_ids]


def test_strict_blocks_trading_until_acknowledged(db_url, sim):
    with connect(db_url) as client:
        sim.stage_cash(D(1000))
        assert reconcile(client, sim, strict=True).blocked is False  # a first balance is no discrepancy
        sim.stage_position("AAPL", D(3), D(10))
        result = reconcile(client, sim, strict=True)
        assert result.blocked and result.status == "corrected"
        refused = client.record_intent(ACCOUNT, "o2", "AAPL", "buy", 1, venue="SIM")
        assert refused.refusal is not None and "trading_blocked" in refused.refusal.reasons
        again = reconcile(client, sim, strict=True)  # already blocked, nothing new: no second block
        assert again.blocked is False and again.status == "clean"
        acknowledge(client, ACCOUNT, by="ops", decision="position checked with the broker")
        assert client.record_intent(ACCOUNT, "o3", "AAPL", "buy", 1, venue="SIM").accepted
    types = [t for t, _ in rows(db_url)]
    assert types.count("TradingBlocked") == 1 and types.count("DiscrepancyAcknowledged") == 1


def test_unreachable_venue_is_unknown_and_changes_nothing(sqlite_url, sim):
    with connect(sqlite_url) as client:
        stage_missed_fill(client, sim)
        sim.update_faults(disconnected=True)
        result = reconcile(client, sim, strict=True)
        assert result.status == "unknown" and result.corrective_event_ids == [] and result.blocked
        assert len(result.errors) >= 5
        assert client.state.orders[order_stream_id(ACCOUNT, "o1")].status == "submitted"


def test_concurrent_reconcilers_record_each_correction_once(sqlite_url, sim):
    with connect(sqlite_url) as setup:
        stage_missed_fill(setup, sim)
        for n in range(5):
            sim.stage_order(client_order_id=None, symbol="MSFT", side="sell", qty=D(1), status="filled",
                            fills=[(f"X{n}", D(1), D(50))])
    errors = []

    def worker():
        try:
            with connect(sqlite_url) as client:
                reconcile(client, SimulatedBroker(account=ACCOUNT, state_path=sim.state_path))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    types = [t for t, _ in rows(sqlite_url)]
    assert types.count("OrderImported") == 5 and types.count("OrderFilled") == 6
    assert types.count("ReconciliationCompleted") >= 3


def test_make_adapter_errors_are_clear(tmp_path):
    with pytest.raises(InvalidInput, match="--account"):
        make_adapter("sim", {})
    with pytest.raises(InvalidInput, match="sim-state"):
        make_adapter("sim", {"account": ACCOUNT})
    with pytest.raises(InvalidInput, match="no simulated broker state"):
        make_adapter("sim", {"account": ACCOUNT, "sim_state": str(tmp_path / "missing.json")})
    with pytest.raises(InvalidInput, match="unknown broker"):
        make_adapter("kraken", {"account": ACCOUNT})


def test_make_adapter_alpaca_needs_keys(monkeypatch):
    pytest.importorskip("tradestate.adapters.brokers.alpaca")
    monkeypatch.delenv("APCA_API_KEY_ID", raising=False)
    monkeypatch.delenv("APCA_API_SECRET_KEY", raising=False)
    with pytest.raises(InvalidInput, match="APCA_API_KEY_ID"):
        make_adapter("alpaca", {"account": ACCOUNT})


# ------------------------------------------------------------------------------------ CLI


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "tradestate.cli", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_cli_reconcile_json_strict_and_ack(db_url, sim, tmp_path):
    with connect(db_url) as client:
        stage_missed_fill(client, sim)
    base = ["reconcile", "--db", db_url, "--broker", "sim", "--sim-state", sim.state_path, "--account", ACCOUNT]
    first = cli(*base, "--json", "--strict")
    assert first.returncode == 0, first.stderr  # corrected: exit 0 even in strict mode
    result = json.loads(first.stdout)
    assert result["status"] == "corrected" and result["blocked"] is True
    assert [e["type"] for e in result["corrective_events"]] == ["OrderAcknowledged", "OrderFilled",
                                                                "CashBalanceRecorded"]
    ack = cli("reconcile", "--db", db_url, "--ack", "--account", ACCOUNT, "--by", "ops", "--decision", "fill checked")
    assert ack.returncode == 0, ack.stderr
    with connect(db_url) as client:
        assert client.state.accounts[ACCOUNT].blocked is False
        assert client.record_intent(ACCOUNT, "ghost", "AAPL", "buy", 1, venue="SIM").accepted
        client.record_submitted(ACCOUNT, "ghost")
    pending = cli(*base, "--strict")
    assert pending.returncode == 1 and "missing_at_venue" in pending.stdout
    assert "trading is blocked" in pending.stdout
    with connect(db_url) as client:
        assert client.state.accounts[ACCOUNT].blocked is True


def test_cli_reads_a_toml_config(sqlite_url, sim, tmp_path):
    connect(sqlite_url).close()
    config = tmp_path / "reconcile.toml"
    config.write_text(f'[reconcile]\nbroker = "sim"\naccount = "{ACCOUNT}"\n[sim]\nsim-state = "{sim.state_path}"\n')
    done = cli("reconcile", "--db", sqlite_url, "--config", str(config), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["broker"] == "sim"


@pytest.mark.parametrize("args, message", [
    (["--broker", "nope"], "--broker must be one of"),
    (["--broker", "sim"], "--account"),
    (["--broker", "sim", "--account", ACCOUNT, "--since", "yesterday"], "ISO-8601"),
    (["--config", "/nonexistent.toml"], "does not exist"),
    (["--ack", "--account", ACCOUNT], "--by NAME"),
])
def test_cli_bad_input_exits_2_and_appends_nothing(sqlite_url, tmp_path, args, message):
    connect(sqlite_url).close()
    done = cli("reconcile", "--db", sqlite_url, *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stdout + done.stderr
    assert rows(sqlite_url) == []


def test_cli_unknown_exits_1(sqlite_url, tmp_path):
    connect(sqlite_url).close()
    broker = SimulatedBroker(account=ACCOUNT, state_path=str(tmp_path / "v.json"),
                             faults=SimFaults(failing_queries={"positions"}))
    done = cli("reconcile", "--db", sqlite_url, "--broker", "sim", "--sim-state", broker.state_path,
               "--account", ACCOUNT)
    assert done.returncode == 1 and "unknown" in done.stdout


# ------------------------------------------------------------------------------ order flow


def test_order_flow_forwards_recorded_intents_and_records_updates(sqlite_url, sim):
    from tradestate.domain.errors import InvalidTransition, UnknownOrder
    from tradestate.order_flow import OrderFlow

    with connect(sqlite_url) as client:
        flow = OrderFlow(client, sim)
        with pytest.raises(UnknownOrder):
            flow.forward(ACCOUNT, "never-recorded")
        assert sim.recent_orders() == []  # nothing left for the venue
        client.set_risk_limit(ACCOUNT, "max_order_qty", 100)
        assert client.record_intent(ACCOUNT, "big", "AAPL", "buy", 500, venue="SIM").refusal is not None
        with pytest.raises(InvalidTransition, match="refused"):
            flow.forward(ACCOUNT, "big")

        sim.set_price("AAPL", "100")
        sim.update_faults(partial_fill_pieces=2)
        client.record_intent(ACCOUNT, "o1", "AAPL", "buy", 10, order_type="limit", limit_price="101", venue="SIM")
        first = flow.forward(ACCOUNT, "o1")
        sim.set_price("AAPL", "99")
        pumped = flow.pump()
        assert len(pumped.recorded) == 3  # ack (again: a duplicate), two fills
        order = client.state.orders[order_stream_id(ACCOUNT, "o1")]
        assert order.status == "filled" and order.venue_order_id == first.venue_order_id
        with pytest.raises(InvalidTransition, match="sent already"):
            flow.forward(ACCOUNT, "o1")

        sim.update_faults(lose_next_fills=1, partial_fill_pieces=1)
        client.record_intent(ACCOUNT, "o2", "AAPL", "sell", 4, venue="SIM")
        flow.forward(ACCOUNT, "o2")
        flow.pump()
        assert client.state.orders[order_stream_id(ACCOUNT, "o2")].status == "acknowledged"  # its fill was lost
        sim.place_external(symbol="AAPL", side="buy", qty=1)
        assert flow.pump().recorded == []
        result = reconcile(client, sim)
        assert result.counts["fills_recorded"] == 2 and result.counts["orders_imported"] == 1
        assert client.state.orders[order_stream_id(ACCOUNT, "o2")].status == "filled"
        assert client.state.position_of(ACCOUNT, "SIM", "AAPL").qty == sim.positions()[0].qty == 7


def test_order_flow_duplicate_send_after_crash_is_the_same_order(sqlite_url, sim):
    from tradestate.order_flow import OrderFlow

    with connect(sqlite_url) as client:
        client.record_intent(ACCOUNT, "o1", "AAPL", "buy", 1, order_type="limit", limit_price="1", venue="SIM")
        client.record_submitted(ACCOUNT, "o1")
        sent = sim.submit(OrderRequest("o1", "AAPL", "buy", "limit", D(1), limit_price=D(1)))  # crashed before the ack
        again = OrderFlow(client, sim).forward(ACCOUNT, "o1")
        assert again.venue_order_id == sent.venue_order_id and len(sim.recent_orders()) == 1
        assert client.state.orders[order_stream_id(ACCOUNT, "o1")].venue_order_id == sent.venue_order_id
