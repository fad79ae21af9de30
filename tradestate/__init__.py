"""tradestate: an event-sourced trading-state service.

    import tradestate
    client = tradestate.connect("sqlite:///trading.db")   # or postgresql://..., or $TRADESTATE_DB
    result = client.record_intent("acct-1", "ord-1", "AAPL", "buy", "10", reference_price="187.25")
    if result.accepted:
        ...  # only now send the order
"""

from .aio import AsyncTradestateClient, connect_async
from .client import IntentResult, Recorded, RiskRefusal, TradestateClient, connect
from .domain.errors import (
    AppendFailed,
    ConcurrencyConflict,
    IdempotencyConflict,
    InvalidInput,
    InvalidTransition,
    TradestateError,
    UnknownOrder,
)
from .domain.values import OrderType, Side, TimeInForce

__version__ = "0.1.0"

__all__ = [
    "AppendFailed",
    "AsyncTradestateClient",
    "ConcurrencyConflict",
    "IdempotencyConflict",
    "IntentResult",
    "InvalidInput",
    "InvalidTransition",
    "OrderType",
    "Recorded",
    "RiskRefusal",
    "Side",
    "TimeInForce",
    "TradestateClient",
    "TradestateError",
    "UnknownOrder",
    "connect",
    "connect_async",
]
