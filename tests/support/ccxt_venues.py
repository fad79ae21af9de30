"""The ccxt adapter on a local exchange fake (``fake_binance``, ``fake_kraken``), and a limit
order request: what the ccxt tests of every exchange build the same way."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tradestate.adapters.brokers.base import OrderRequest
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
    return OrderRequest(cid, symbol, side, "limit", Decimal(qty), Decimal(price), time_in_force=tif)  # type: ignore[arg-type]


__all__ = ["ACCOUNT", "ccxt_adapter", "limit_order"]
