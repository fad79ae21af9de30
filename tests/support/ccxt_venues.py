"""The ccxt adapter on a local exchange fake (``fake_binance``, ``fake_kraken``, ``fake_coinbase``),
a limit order request, and the checks and runs the ccxt tests of every exchange share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest

from tradestate.adapters.brokers.base import OrderRequest, SubmitOutcomeUnknown
from tradestate.adapters.brokers.ccxt_venue import CcxtAdapter
from tradestate.adapters.store import open_store
from tradestate.client import TradestateClient
from tradestate.domain.ids import order_stream_id
from tradestate.order_flow import OrderFlow

ACCOUNT = "acct-1"


def ccxt_adapter(fake: Any, exchange: str, symbols: str, **options: Any) -> CcxtAdapter:
    """A real ``CcxtAdapter`` for ``exchange`` pointed at ``fake`` (its keys, no rate limiter,
    2 s requests); ``options`` override any of these."""
    settings: dict[str, Any] = dict(account=ACCOUNT, exchange=exchange, symbols=symbols, api_key=fake.api_key,
                                    secret=fake.secret, base_url=fake.url, timeout=2.0, rate_limit=False)
    settings.update(options)
    return CcxtAdapter(**settings)


def limit_order(cid: str, symbol: str, qty: str, price: str, side: str = "buy", tif: str = "gtc") -> OrderRequest:
    return OrderRequest(cid, symbol, side, "limit", Decimal(qty), Decimal(price),  # type: ignore[arg-type]
                        time_in_force=tif)


def check_a_lost_submit_answer(fake: Any, adapter: CcxtAdapter, order_path: str,
                                limit: Callable[[str], OrderRequest]) -> None:
    """A submit whose answer is late (the order placed) is looked up by client id within the
    adapter's timeout and never sent again; with no answer and nothing placed, the outcome is
    ``SubmitOutcomeUnknown``, never "rejected". ``adapter``: one with a short timeout."""
    adapter.positions()  # markets loaded
    fake.stall("POST", order_path, 4, after=True)
    started = time.monotonic()
    order = adapter.submit(limit("lost-1"))
    assert time.monotonic() - started < 2.5
    assert order.client_order_id == "lost-1" and len(fake.orders) == 1
    fake.stall("POST", order_path, 4)  # no answer and nothing placed
    with pytest.raises(SubmitOutcomeUnknown):
        adapter.submit(limit("lost-2"))


def check_one_open_buy(adapter: CcxtAdapter, order: Any) -> None:
    """After ``order`` (a 0.5 BTC/USD buy at 40,000) rests on a venue holding 100,000 USD and 1 BTC:
    the cash it holds still counts in the balance, the position is unchanged, the order is open."""
    assert {b.currency: b.cash for b in adapter.balances()} == {"USD": Decimal("100000")}
    assert [(p.symbol, p.qty) for p in adapter.positions()] == [("BTC/USD", Decimal(1))]
    assert [(o.venue_order_id, o.status) for o in adapter.open_orders()] == [(order.venue_order_id, "open")]


def check_a_partial_then_full_fill(fake: Any, adapter: CcxtAdapter, cid: str, raw_filled: str,
                                   fees: tuple[str, str]) -> None:
    """A 0.5 BTC/USD buy at 40,000 under ``cid`` on a venue holding 100,000 USD and 1 BTC, filled
    0.2 as maker then 0.3 as taker: partially filled, then filled (the venue's status
    ``raw_filled``), its two executions with ``fees`` in USD (cash, nothing taken in kind), exact
    Decimals; 1.5 BTC and 100,000 - 20,000 - the fees USD after."""
    order = adapter.submit(limit_order(cid, "BTC/USD", "0.5", "40000"))
    fake.fill(order.venue_order_id, "0.2")
    partial = adapter.order_by_client_id(cid)
    assert (partial.status, partial.filled_qty, len(partial.fills)) == ("partially_filled", Decimal("0.2"), 1)
    fake.fill(order.venue_order_id, "0.3", maker=False)
    done = adapter.order_by_client_id(cid)
    assert (done.status, done.filled_qty, done.raw_status) == ("filled", Decimal("0.5"), raw_filled)
    fills = sorted(adapter.fills(), key=lambda f: f.qty)
    assert [(f.qty, f.price, f.fee, f.fee_currency, f.client_order_id) for f in fills] == [
        (Decimal("0.2"), Decimal("40000"), Decimal(fees[0]), "USD", cid),
        (Decimal("0.3"), Decimal("40000"), Decimal(fees[1]), "USD", cid)]
    assert sorted(f.exec_id for f in done.fills) == sorted(f.exec_id for f in fills)
    assert adapter.snapshot(now=datetime.now(timezone.utc)).fees == []  # nothing taken in kind
    assert [(p.symbol, p.qty) for p in adapter.positions()] == [("BTC/USD", Decimal("1.5"))]
    assert {b.currency: b.cash for b in adapter.balances()} == {
        "USD": Decimal("100000") - Decimal("20000") - Decimal(fees[0]) - Decimal(fees[1])}
    for value in (*(f.qty for f in fills), *(f.fee for f in fills)):
        assert type(value) is Decimal


def check_the_order_flow(fake: Any, adapter: CcxtAdapter, url: str, venue: str) -> None:
    """An intent to buy 0.5 BTC/USD at 40,000 forwarded to ``venue`` through ``OrderFlow``: a
    partial fill pumped and recorded once (the ack ``forward`` recorded is a duplicate), nothing
    more on the next pump, then a cancel recorded with the fill kept. ``url``: a fresh log."""
    client = TradestateClient(open_store(url))
    flow = OrderFlow(client, adapter)
    client.record_intent(ACCOUNT, "o-1", "BTC/USD", "buy", "0.5", order_type="limit", limit_price="40000",
                         time_in_force="gtc", venue=venue)
    order = flow.forward(ACCOUNT, "o-1")
    fake.fill(order.venue_order_id, "0.2")
    recorded = flow.pump().recorded
    assert [r.duplicate for r in recorded] == [False, True]  # the fill; the ack forward recorded
    client.catch_up()
    state = client.state.orders[order_stream_id(ACCOUNT, "o-1")]
    assert (state.status, state.filled_qty) == ("partially_filled", Decimal("0.2"))
    assert flow.pump().recorded == []
    adapter.cancel(order.venue_order_id)
    flow.pump()
    client.catch_up()
    state = client.state.orders[order_stream_id(ACCOUNT, "o-1")]
    assert state.status == "cancelled" and state.filled_qty == Decimal("0.2")
    client.close()


def cli_reconcile(url: str, venues: dict[str, tuple[Any, str]]) -> dict[str, Any]:
    """``tradestate reconcile --json`` of ``ACCOUNT`` in a subprocess, one ``--broker ccxt:<id>`` per
    exchange of ``venues`` (exchange id -> (its fake, the symbols traded there)), configured as a
    user would: keys, symbols and base URLs in the environment. The JSON it printed."""
    env = {**os.environ, "TRADESTATE_CCXT_TIMEOUT": "2",
           "TRADESTATE_CCXT_SYMBOLS": ";".join(f"{name}={symbols}" for name, (_, symbols) in venues.items()),
           "TRADESTATE_CCXT_BASE_URL": ";".join(f"{name}={fake.url}" for name, (fake, _) in venues.items())}
    for name, (fake, _) in venues.items():
        env[f"TRADESTATE_CCXT_{name.upper()}_API_KEY"] = fake.api_key
        env[f"TRADESTATE_CCXT_{name.upper()}_SECRET"] = fake.secret
    brokers = [arg for name in venues for arg in ("--broker", f"ccxt:{name}")]
    done = subprocess.run([sys.executable, "-m", "tradestate.cli", "reconcile", "--db", url, "--account", ACCOUNT,
                           *brokers, "--json"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


__all__ = ["ACCOUNT", "ccxt_adapter", "check_a_lost_submit_answer", "check_a_partial_then_full_fill",
           "check_one_open_buy", "check_the_order_flow", "cli_reconcile", "limit_order"]
