"""The async twin of the client, for engines built on asyncio.

The log's drivers are synchronous; each call runs on one dedicated worker thread, so the event
loop never blocks on a commit and calls from one engine keep their order.
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
    "open_orders", "positions", "risk_state", "catch_up",
})  # fmt: skip


class AsyncTradestateClient:
    """``TradestateClient`` for asyncio: the same methods (each awaited, with the same contract),
    run in order on one worker thread; ``sync`` is the wrapped client."""

    def __init__(self, client: TradestateClient):
        self.sync = client
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tradestate")

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


async def connect_async(url: str | None = None, **options: Any) -> AsyncTradestateClient:
    """``await connect_async(url, **options)``: opens the store and folds the log off the event
    loop; ``options`` are ``TradestateClient``'s (``venue=...``: the venue of intents naming none)."""
    loop = asyncio.get_running_loop()
    client = await loop.run_in_executor(None, lambda: TradestateClient(open_store(url), **options))
    return AsyncTradestateClient(client)
