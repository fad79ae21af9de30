"""tradestate: an event-sourced trading-state service.

    import tradestate
    client = tradestate.connect("sqlite:///trading.db", venue="alpaca")  # or postgresql://..., or $TRADESTATE_DB
    result = client.record_intent("acct-1", "ord-1", "AAPL", "buy", "10", reference_price="187.25")
    if result.accepted:
        ...  # only now send the order
"""

from .aio import AsyncTradestateClient, connect_async
from .client import IntentResult, ReplaceResult, RiskRefusal, TradestateClient, connect
from .domain.errors import (
    AppendFailed,
    CommitOutcomeUnknown,
    ConcurrencyConflict,
    IdempotencyConflict,
    InvalidInput,
    InvalidTransition,
    LeaseHeld,
    LogRewound,
    NotLeader,
    ReadOnlyStore,
    StoreUnreachable,
    TradestateError,
    UnknownOrder,
)
from .domain.integrity import CorruptStream
from .domain.values import OrderType, Side, TimeInForce
from .engines import Standby, standby
from .loading import LoadedState, load_state
from .writer import Decided, Recorded, Writer, Written, build_event

__version__ = "0.1.0"

__all__ = [
    "AppendFailed",
    "AsyncTradestateClient",
    "CommitOutcomeUnknown",
    "ConcurrencyConflict",
    "CorruptStream",
    "Decided",
    "IdempotencyConflict",
    "IntentResult",
    "InvalidInput",
    "InvalidTransition",
    "LeaseHeld",
    "LoadedState",
    "LogRewound",
    "NotLeader",
    "OrderType",
    "Recorded",
    "ReadOnlyStore",
    "ReplaceResult",
    "RiskRefusal",
    "Side",
    "Standby",
    "StoreUnreachable",
    "TimeInForce",
    "TradestateClient",
    "TradestateError",
    "UnknownOrder",
    "Writer",
    "Written",
    "build_event",
    "connect",
    "connect_async",
    "load_state",
    "standby",
]
