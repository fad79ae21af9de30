"""The HTTP side shared by the venues' REST fakes (``fake_binance``, ``fake_kraken``): a threaded
server on 127.0.0.1 port 0 answering JSON, every request recorded, and ``stall`` (an answer held
back, optionally after the request took effect). Each fake says what a request means in
``answer``; nothing here knows a venue."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


class RestFake:
    """Subclasses implement ``answer(method, path, query, body, headers) -> (status, payload)``."""

    name = "fake-rest"

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for assertions
        self.lock = threading.RLock()
        self._stalls: list[dict[str, Any]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def answer(self, method: str, path: str, query: str, body: str, headers: dict[str, str]) -> tuple[int, Any]:
        raise NotImplementedError

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Any:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                status, payload = fake.handle(method, self.path, body, dict(self.headers))
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json;charset=UTF-8")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout): nothing to answer

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        for s in self._stalls:
            s["release"].set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # ------------------------------------------------------------------ test controls
    def stall(self, method: str, path: str, seconds: float, *, after: bool = False, times: int = 1) -> None:
        """Hold the next ``times`` answers to ``method path`` for ``seconds``; ``after``: the
        request takes effect first (an order placed whose answer is late)."""
        self._stalls.append({"method": method, "path": path, "seconds": seconds, "after": after,
                             "times": times, "release": threading.Event()})

    def handle(self, method: str, raw_path: str, body: str, headers: dict[str, str]) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        path = parts.path
        with self.lock:
            self.requests.append((method, path))
            stall = next((s for s in self._stalls if s["method"] == method and s["path"] == path and s["times"] > 0),
                         None)
            if stall is not None:
                stall["times"] -= 1
        if stall is not None and not stall["after"]:
            stall["release"].wait(stall["seconds"])
        result = self.answer(method, path, parts.query, body, headers)
        if stall is not None and stall["after"]:
            stall["release"].wait(stall["seconds"])
        return result


__all__ = ["RestFake"]
