"""A reconciliation fixture shared by the runner and CLI tests: a client on a URL, the stored log
read back, and a fill the simulated venue has that the log missed."""

from __future__ import annotations

from decimal import Decimal as D

import orjson

from tradestate.adapters.store import open_store
from tradestate.client import TradestateClient

ACCOUNT = "acct-1"


def connect(url):
    return TradestateClient(open_store(url))


def rows(url):
    with open_store(url) as store:
        return [(r[3], orjson.loads(r[4])) for r in store.trading.iter_rows(0)]


def stage_missed_fill(client, sim):
    client.record_intent(ACCOUNT, "o1", "AAPL", "buy", 10, order_type="limit", limit_price="100", venue="SIM")
    client.record_submitted(ACCOUNT, "o1")
    sim.stage_order(client_order_id="o1", symbol="AAPL", side="buy", qty=D(10), status="filled",
                    fills=[("E1", D(10), D(100))])


def kinds(result) -> list[str]:
    """The kinds of a reconciliation's discrepancies, sorted: of a run's result (dicts) or of the
    domain's plan (``plan_reconciliation``: objects)."""
    return sorted(d["kind"] if isinstance(d, dict) else d.kind for d in result.discrepancies)


def types(result) -> list[str]:
    """The types of a reconciliation's corrective events, in the order they are appended: of a
    run's result (``corrective_events``) or of the domain's plan (``events``)."""
    if hasattr(result, "corrective_events"):
        return [e["type"] for e in result.corrective_events]
    return [e.type_name() for _, e in result.events]
