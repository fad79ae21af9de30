"""A small driver of headless Chromium (Debian's ``chromium``) over the DevTools protocol, for the
browser tests: start it, open a page, evaluate JavaScript, wait for a condition, answer dialogs,
take a screenshot. Only ``websockets`` (a dependency already) is needed; every wait is bounded.

JavaScript dialogs (``confirm``) are answered as they open: accepted unless ``dismiss_dialogs``
is set; each one's message is kept in ``dialogs``.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


class CdpError(RuntimeError):
    pass


class Page:
    """One page (tab) of the browser, over its own DevTools WebSocket."""

    def __init__(self, ws: Any):
        self._ws = ws  # a websockets.sync ClientConnection, opened by the caller
        self._next = 0
        self._send_lock = threading.Lock()
        self._pending: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._pending_lock = threading.Lock()
        self.dialogs: list[str] = []
        self.dismiss_dialogs = False
        self.console: list[str] = []
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="cdp-reader", daemon=True)
        self._reader.start()
        self.call("Page.enable")
        self.call("Runtime.enable")

    def _read(self) -> None:
        while not self._closed:
            try:
                message = json.loads(self._ws.recv(timeout=0.5))
            except TimeoutError:
                continue
            except Exception:  # noqa: BLE001 - the socket closed
                return
            if "id" in message:
                with self._pending_lock:
                    waiter = self._pending.pop(message["id"], None)
                if waiter is not None:
                    waiter.put(message)
            elif message.get("method") == "Page.javascriptDialogOpening":
                self.dialogs.append(message["params"].get("message", ""))
                # answered from here: the page is blocked until it is
                self._send("Page.handleJavaScriptDialog", {"accept": not self.dismiss_dialogs})
            elif message.get("method") == "Runtime.consoleAPICalled":
                args = message["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))

    def _send(self, method: str, params: dict[str, Any] | None = None) -> queue.Queue[dict[str, Any]]:
        with self._send_lock:
            self._next += 1
            ident = self._next
            waiter: queue.Queue[dict[str, Any]] = queue.Queue(1)
            with self._pending_lock:
                self._pending[ident] = waiter
            self._ws.send(json.dumps({"id": ident, "method": method, "params": params or {}}))
        return waiter

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """Send a DevTools command and wait for its result (``CdpError`` on an error answer)."""
        try:
            message = self._send(method, params).get(timeout=timeout)
        except queue.Empty:
            raise CdpError(f"{method}: no answer within {timeout} s") from None
        if "error" in message:
            raise CdpError(f"{method}: {message['error']}")
        return message.get("result", {})

    def navigate(self, url: str, timeout: float = 30.0) -> None:
        """Open ``url`` and wait until the document has loaded."""
        self.call("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete' && !!document.body", timeout=timeout)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited when it is a promise)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise CdpError(f"{expression!r}: {result['exceptionDetails'].get('text')} "
                           f"{result['exceptionDetails'].get('exception', {}).get('description', '')}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 10.0, every: float = 0.1) -> Any:
        """Evaluate ``expression`` until it is truthy; its value, or ``TimeoutError`` saying what
        the page showed."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except CdpError:
                value = None  # e.g. evaluated during a navigation
            if value:
                return value
            time.sleep(every)
        body = ""
        try:
            body = self.evaluate("document.body ? document.body.innerText.slice(0, 3000) : ''") or ""
        except CdpError:
            pass
        raise TimeoutError(f"not true within {timeout} s: {expression}\n--- page text ---\n{body}")

    def screenshot(self, path: str) -> bytes:
        """A PNG of the page (full page); written to ``path``."""
        metrics = self.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics.get("contentSize")
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": True}
        if size:
            params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = base64.b64decode(self.call("Page.captureScreenshot", params)["data"])
        with open(path, "wb") as f:
            f.write(data)
        return data

    def close(self) -> None:
        self._closed = True
        try:
            self._ws.close()
        except Exception:  # noqa: BLE001
            pass
        self._reader.join(2)


@contextmanager
def headless_chromium(width: int = 1400, height: int = 1000, timeout: float = 30.0) -> Iterator[Page]:
    """A headless Chromium with one blank page; the browser is killed on exit (its profile, a
    temporary directory, removed)."""
    from websockets.sync.client import connect

    if CHROMIUM is None:
        raise CdpError("chromium is not installed: apt-get install -y chromium")
    profile = tempfile.mkdtemp(prefix="tradestate-chromium-")
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: nobody has to drain it
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "--remote-allow-origins=*", f"--window-size={width},{height}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=log, text=True,
    )
    page = None
    stack = ExitStack()
    try:
        port = _devtools_port(proc, profile, log, timeout)
        ws_url = _page_ws_url(port, timeout)
        ws = stack.enter_context(connect(ws_url, max_size=64 * 1024 * 1024, open_timeout=10))
        page = Page(ws)
        page.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                          "mobile": False})
        yield page
    finally:
        if page is not None:
            page.close()
        stack.close()
        proc.kill()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        log.close()
        shutil.rmtree(profile, ignore_errors=True)


def _devtools_port(proc: subprocess.Popen[str], profile: str, log: Any, timeout: float) -> int:
    """The port Chromium chose: read from ``DevToolsActivePort`` in its profile (no reading of a
    pipe that could block)."""
    marker = os.path.join(profile, "DevToolsActivePort")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise CdpError(f"chromium exited ({proc.returncode}): {log.read()[-2000:]}")
        try:
            first = open(marker).read().splitlines()[0]
            if re.fullmatch(r"\d+", first):
                return int(first)
        except (OSError, IndexError):
            pass
        time.sleep(0.05)
    raise CdpError(f"chromium did not open its DevTools port within {timeout} s")


def _page_ws_url(port: int, timeout: float) -> str:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    raise CdpError("chromium listed no page")
