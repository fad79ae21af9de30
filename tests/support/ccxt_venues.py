"""The ccxt adapter on a local exchange fake (``fake_binance``, ``fake_kraken``), and a limit
order request: what the ccxt tests of every exchange build the same way."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from tradestate.adapters.brokers.base import OrderRequest, SubmitOutcomeUnknown
from tradestate.adapters.brokers.ccxt_venue import CcxtAdapter

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


__all__ = ["ACCOUNT", "ccxt_adapter", "check_a_lost_submit_answer", "limit_order"]
