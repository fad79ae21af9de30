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
