"""The async twin of the client, for engines built on asyncio.

The log's drivers are synchronous; each call runs on one dedicated worker thread, so the event
loop never blocks on a commit and calls from one engine keep their order.

With ``coalesce=True`` (``connect_async(url, coalesce=True, concurrency=6)``) calls run on
``concurrency`` worker threads and share commits (group commit, ``adapters.store.coalesce``):
many order flows awaiting at once pay for about one commit per batch. Each call keeps its own
contract; calls issued at the same moment may then run in any order (a flow that awaits each
call before the next keeps its own order). Each worker holds a connection on PostgreSQL, so
``concurrency`` stays below the store's pool (10).
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .adapters.store import open_store
from .client import TradestateClient

_ASYNC_METHODS = frozenset({
    "record_intent", "record_submitted", "record_ack", "record_reject", "record_fill", "request_cancel",
    "record_cancelled", "record_replaced", "record_expired", "set_risk_limit", "trip_breaker",
    "reset_breaker", "engage_kill_switch", "release_kill_switch", "record_daily_limit_breach",
    "resume_trading", "record_signal", "engine_started", "engine_stopped", "record_recovery", "record_bar", "order",
    "open_orders", "positions", "risk_state", "catch_up", "define_instrument", "record_fx_rate", "instruments",
    "record_corporate_action", "record_option_settlement", "reporting_view", "request_replace",
    "record_replace_refused", "record_variation_margin",
})  # fmt: skip


class AsyncTradestateClient:
    """``TradestateClient`` for asyncio: the same methods (each awaited, with the same contract),
    run in order on one worker thread; ``sync`` is the wrapped client."""

    def __init__(self, client: TradestateClient, *, concurrency: int = 1):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if concurrency > 1 and getattr(client, "coalescer", None) is None:
            raise ValueError("concurrency above 1 needs a coalescing client (coalesce=True): one writer "
                             "otherwise runs one call at a time anyway")
        self.sync = client
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="tradestate")

    def __getattr__(self, name: str) -> Any:
        if name not in _ASYNC_METHODS:
            raise AttributeError(name)
        method = getattr(self.sync, name)

        @functools.wraps(method)
        async def call(*args: Any, **kwargs: Any) -> Any:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, functools.partial(method, *args, **kwargs))

        return call

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.sync.close)
        self._executor.shutdown(wait=True)

    async def __aenter__(self) -> AsyncTradestateClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# Worker threads of a coalescing async client: each pins a PostgreSQL connection, beside the
# coalescer's and a lease's, within the store's pool of 10.
DEFAULT_CONCURRENCY = 6


async def connect_async(url: str | None = None, *, concurrency: int | None = None,
                        **options: Any) -> AsyncTradestateClient:
    """``await connect_async(url, **options)``: opens the store and folds the log off the event
    loop; ``options`` are ``TradestateClient``'s (``venue=...``: the venue of intents naming none;
    ``coalesce=True``: concurrent calls share commits, on ``concurrency`` worker threads,
    default 6)."""
    loop = asyncio.get_running_loop()

    def opened() -> TradestateClient:
        client = TradestateClient(open_store(url), **options)
        client.store.trading.release_connection()  # this thread is done with the log
        return client

    client = await loop.run_in_executor(None, opened)
    if concurrency is None:
        concurrency = DEFAULT_CONCURRENCY if options.get("coalesce") else 1
    return AsyncTradestateClient(client, concurrency=concurrency)
