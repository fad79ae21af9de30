"""The HTTP API served for a test: ``serving(url, **options)`` runs it (``background_server``:
uvicorn on a free 127.0.0.1 port, in a background thread) and yields an httpx client on it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from tradestate.projections.http.server import background_server


@contextmanager
def serving(url: str, **options: Any) -> Iterator[httpx.Client]:
    """The API for ``url`` served on a free 127.0.0.1 port (``options``: ``background_server``'s),
    and a client on it (10 s timeout)."""
    with background_server(url, **options) as base_url, httpx.Client(base_url=base_url, timeout=10) as http:
        yield http


__all__ = ["serving"]
