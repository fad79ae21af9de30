"""Start from the venue (``tradestate.bootstrap``): an account that already trades, adopted on an
empty log. Once per venue (sim, Alpaca's fake server, a fake TWS) and per database (SQLite,
PostgreSQL): the opening events make the state equal the venue's, and a reconciliation right after
finds nothing to correct; a partial venue answer or an account already on record appends nothing.
"""

from __future__ import annotations

import contextlib
import importlib
from decimal import Decimal as D

import pytest

from tests.support import venues
from tradestate.adapters.store import open_store
from tradestate.bootstrap import bootstrap
from tradestate.client import TradestateClient
from tradestate.domain.ids import account_stream_id
from tradestate.domain.errors import AccountOnRecord, VenueIncomplete
from tradestate.reconcile import reconcile

ACCOUNT = venues.ACCOUNT
ADAPTER_MODULES = {"alpaca": "tradestate.adapters.brokers.alpaca", "ib": "tradestate.adapters.brokers.ib"}
for _module in ADAPTER_MODULES.values():  # see test_reconcile_scenarios: ib_insync wants the main loop
    with contextlib.suppress(ImportError):
        importlib.import_module(_module)


@pytest.fixture(params=list(venues.VENUES))
def control(request):
    name = request.param
    if name != "sim":
        pytest.importorskip(venues.VENUES[name].split(":")[0])
        pytest.importorskip(ADAPTER_MODULES[name])
    with venues.open_venue(name) as venue:
        yield venue


@pytest.fixture
def adapter(control):
    a = control.adapter()
    yield a
    a.close()


def _stage_trading_account(control):
    """An account with history: a long and a short position (one of them partly from an order still
    open), a resting order, a filled order, and cash."""
    control.add_order(client_order_id="old-1", symbol="AAPL", side="buy", qty=D(10), status="filled",
                      fills=[("E-old-1", D(10), D(100))])
    control.add_order(client_order_id="rest-1", symbol="MSFT", side="sell", qty=D(5), limit_price=D(400),
                      status="partially_filled", fills=[("E-rest-1", D(2), D(401))])
    control.add_order(client_order_id=None, symbol="AAPL", side="buy", qty=D(3), limit_price=D(90), status="open")
    control.set_position("AAPL", D(25), D("98.5"))  # more than the listed fills explain: opened long ago
    control.set_position("MSFT", D(-2), D(401))
    control.set_cash(D("50000"))  # last: the staged fills move the venue's cash too


def test_bootstrap_then_reconcile_finds_nothing(db_url, control, adapter):
    _stage_trading_account(control)
    with TradestateClient(open_store(db_url)) as client:
        assert client.store.trading.head() == 0

        result = bootstrap(client, adapter)

        assert result.counts["positions"] >= 1 and result.counts["orders_imported"] == 3
        assert result.counts["open_orders"] == 2 and result.counts["balances"] == 1
        client.catch_up()
        held = {p["symbol"]: p["qty"] for p in client.positions(ACCOUNT)}
        assert held == {"AAPL": D(25), "MSFT": D(-2)}
        assert client.state.accounts[ACCOUNT].cash["USD"] == D("50000")
        open_orders = client.open_orders(ACCOUNT)
        assert sorted((o["symbol"], o["side"]) for o in open_orders) == [("AAPL", "buy"), ("MSFT", "sell")]
        assert all(o["external"] for o in open_orders)
        # the venue report is stored beside the opening events, with its hash
        types = [e.topic for e in client.store.trading.read_stream(account_stream_id(ACCOUNT))]
        assert "AccountBootstrapped" in types and "ReconciliationCompleted" in types

        again = reconcile(client, adapter)

        assert again.status == "clean", again.discrepancies
        assert again.corrective_event_ids == [] and again.discrepancies == []


def test_bootstrap_refuses_an_account_on_record(sqlite_url, control, adapter):
    control.set_cash(D("1000"))
    with TradestateClient(open_store(sqlite_url)) as client:
        bootstrap(client, adapter)
        head = client.store.trading.head()
        with pytest.raises(AccountOnRecord):
            bootstrap(client, adapter)
        assert client.store.trading.head() == head


@pytest.mark.parametrize("query", ["positions", "fills"])
def test_partial_venue_answer_appends_nothing(db_url, control, adapter, query):
    _stage_trading_account(control)
    control.fail(query)
    with TradestateClient(open_store(db_url)) as client:
        with pytest.raises(VenueIncomplete, match="nothing appended"):
            bootstrap(client, adapter)
        assert client.store.trading.head() == 0
        assert client.positions(ACCOUNT) == []


def cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "tradestate.cli", *args], capture_output=True, text=True, timeout=60)


def test_cli_bootstrap_creates_the_log_then_refuses_again(tmp_path):
    import json

    from tradestate.adapters.brokers.sim import SimulatedBroker

    sim = SimulatedBroker(account=ACCOUNT, state_path=str(tmp_path / "venue.json"))
    sim.stage_position("AAPL", D(7), D(120))
    sim.stage_cash(D("2500"))
    url = f"sqlite:///{tmp_path}/new.db"
    base = ["reconcile", "--db", url, "--broker", "sim", "--sim-state", sim.state_path, "--account", ACCOUNT]
    before = cli(*base)
    assert before.returncode == 2 and "reconcile --bootstrap" in before.stderr, before.stderr

    first = cli(*base, "--bootstrap", "--json")

    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["counts"]["positions"] == 1 and result["counts"]["balances"] == 1
    second = cli(*base, "--bootstrap")
    assert second.returncode == 2 and "already on record" in second.stderr
    after = cli(*base, "--json")
    assert after.returncode == 0 and json.loads(after.stdout)["status"] == "clean", after.stdout
    with TradestateClient(open_store(url, create=False)) as client:
        assert [(p["symbol"], p["qty"]) for p in client.positions(ACCOUNT)] == [("AAPL", D(7))]


def test_recover_from_venue_on_a_lost_log(db_url, control, adapter):
    from tradestate.recovery import recover

    _stage_trading_account(control)
    report, client = recover(open_store(db_url), engine_id="e1", adapters=[adapter], from_venue=True)
    with client:
        step = report.step("bootstrap")
        assert step.status == "ok" and step.counts == {"imported": 1}, step.detail
        assert report.ready and report.discrepancies == 0, report.reconciliations
        assert {p["symbol"]: p["qty"] for p in client.positions(ACCOUNT)} == {"AAPL": D(25), "MSFT": D(-2)}

    again, client = recover(open_store(db_url), engine_id="e1", adapters=[adapter], from_venue=True)
    with client:
        assert "on record already" in again.step("bootstrap").detail and again.discrepancies == 0


def test_cli_recover_from_venue_creates_the_log(tmp_path):
    from tradestate.adapters.brokers.sim import SimulatedBroker

    sim = SimulatedBroker(account=ACCOUNT, state_path=str(tmp_path / "venue.json"))
    sim.stage_position("AAPL", D(3), D(50))
    url = f"sqlite:///{tmp_path}/lost.db"
    done = cli("recover", "--db", url, "--engine-id", "e1", "--from-venue", "--broker", "sim", "--sim-state",
               sim.state_path, "--account", ACCOUNT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "imported from the venue" in done.stdout
    with TradestateClient(open_store(url, create=False)) as client:
        assert [(p["symbol"], p["qty"]) for p in client.positions(ACCOUNT)] == [("AAPL", D(3))]
