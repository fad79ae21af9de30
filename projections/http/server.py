"""Running the API: ``run_server`` (the ``tradestate serve`` command) and ``background_server``
(a server in a thread, for the demo and the tests).

``run_server`` binds 127.0.0.1 unless told otherwise, and refuses any other address unless a
bearer token is configured (and reads left open off loopback). Whatever the address, the server
answers only the ``Host`` names it is configured for (``auth.HostCheck``).
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ...adapters.store import open_store, resolve_url
from .app import create_app
from .auth import Tokens


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (localhost or a loopback address); "" and "*"
    may mean every interface, so they are not."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another name, "" or "*": may mean any interface


def run_server(
    db: str | None,
    host: str = "127.0.0.1",
    port: int = 8321,
    token: str | None = None,
    *,
    tokens: Tokens | None = None,
    open_reads: bool = False,
    allowed_hosts: list[str] | tuple[str, ...] = (),
    lag_threshold_events: int = 1000,
    lag_threshold_seconds: float = 5.0,
    log_level: str = "info",
    alerts: dict[str, Any] | None = None,
    drill_max_age_days: float = 35.0,
    drill_required: bool = False,
) -> int:
    """Serve the API with uvicorn until interrupted; returns the process exit code.

    Refuses (2, nothing bound) a non-loopback address without a token, or with ``open_reads``.
    Raises the store's ``TradestateError`` when there is no log at ``db`` (``InvalidInput`` for a
    malformed ``allowed_hosts`` entry)."""
    token = token or None
    if not is_loopback(host) and token is None and not tokens:
        print(f"error: refusing to serve on {host!r} without a bearer token: anyone who can reach it could read "
              "every position and order. Bind 127.0.0.1, or set --token / $TRADESTATE_API_TOKEN.", file=sys.stderr)
        return 2
    if not is_loopback(host) and open_reads:
        print(f"error: refusing to serve reads without a token on {host!r}: --open-reads is for loopback only",
              file=sys.stderr)
        return 2
    if not 0 <= port <= 65535:
        print(f"error: port {port} is not a TCP port (0-65535)", file=sys.stderr)
        return 2
    url = resolve_url(db)
    open_store(url, create=False).close()  # a clear error when there is no log, before binding anything
    app = create_app(url, token=token, tokens=tokens, open_reads=open_reads, allowed_hosts=allowed_hosts,
                     lag_threshold_events=lag_threshold_events,
                     lag_threshold_seconds=lag_threshold_seconds, alerts=alerts,
                     drill_max_age_days=drill_max_age_days, drill_required=drill_required)
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           server_header=False, proxy_headers=False))
    try:
        server.run()
    except SystemExit as e:  # uvicorn exits when it cannot bind or start
        print(f"error: the server could not start on {host}:{port} (see the log above)", file=sys.stderr)
        return e.code if isinstance(e.code, int) and e.code else 1
    except KeyboardInterrupt:
        return 0
    return 0 if server.started else 1


@contextmanager
def background_server(url: str, **options: Any) -> Iterator[str]:
    """Serve the API for ``url`` on a free 127.0.0.1 port in a background thread; yields its base
    URL and stops the server on exit (the demo and the tests use it)."""
    import socket
    import threading
    import time

    import uvicorn

    app = create_app(url, **options)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Handed a socket, uvicorn leaves Nagle on: without this, each keep-alive request waits 40 ms
    # for a delayed ACK (accepted sockets inherit the option on Linux).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the API server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
