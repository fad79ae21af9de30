"""A real local webhook receiver (``http.server`` in a thread) for the alert tests and the demo.

It keeps every POST (headers, body, parsed JSON), answers 500 to the first ``fail_first``
requests, and while ``hang`` is set holds each request until it is cleared (a receiver that
accepted the connection and never answers)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any


@dataclass
class Receiver:
    fail_first: int = 0
    received: list[Received] = field(default_factory=list)  # answered 2xx
    requests: int = 0  # every POST, answered or not
    hang: threading.Event = field(default_factory=threading.Event)
    server: ThreadingHTTPServer | None = None
    thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/alerts"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.requests += 1
                    failing = receiver.requests <= receiver.fail_first
                deadline = time.monotonic() + 30
                while receiver.hang.is_set() and time.monotonic() < deadline:
                    time.sleep(0.02)
                if failing:
                    self.send_response(500)
                    self.end_headers()
                    return
                with receiver.lock:
                    receiver.received.append(Received(self.path, dict(self.headers.items()), body,
                                                      json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.hang.clear()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def kinds(self) -> list[str]:
        with self.lock:
            return [r.json["kind"] for r in self.received]

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Received]:
        """The first ``n`` alerts received, waiting at most ``timeout`` s (fewer if they did not come)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= n:
                    return list(self.received)
            time.sleep(0.02)
        with self.lock:
            return list(self.received)
