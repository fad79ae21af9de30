"""The engines as the API sees them, and the live crash detection of ``tradestate serve``.

``EngineMonitor`` opens the store lazily (``create=False``: nothing is written on open, so a
server on a hot standby starts and serves; a database that is not there yet is a 503 at the
first request, as for the read models) and keeps a ``tradestate.engines.EngineView`` over it.
``/engines`` serves its full rows; ``/health`` and ``/metrics`` the lease table's rows (one read,
no fold). With ``watch`` on, a daemon thread runs ``watch_leases`` every ``every`` seconds: a
dead or hung engine's expired lease is recorded as ``LeaseExpired`` by the server even when no
standby runs. The watch never stops the server: an error (the database away, a read-only hot
standby) is logged at most once a minute and retried at the next tick.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ...adapters.store import Store, open_store
from ...engines import EngineView, LeaseWatcher, detector_name
from ..queries import DatabaseUnavailable

log = logging.getLogger("tradestate.api")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class EngineMonitor:
    """The engine view of the database at ``url`` and (``watch``) its lease watcher."""

    def __init__(self, url: str, *, watch: bool = True, every: float = 2.0, detected_by: str | None = None):
        self.url = url
        self.watch = watch
        self.every = every
        self.detected_by = detected_by or detector_name("serve")
        self.watcher: LeaseWatcher | None = None
        self._store: Store | None = None
        self._view: EngineView | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_logged = 0.0

    # ---------------------------------------------------------------------------- reading
    def view(self) -> EngineView:
        """The engine view, opening the store at the first call (``DatabaseUnavailable`` if it
        cannot be opened: tried again at the next call)."""
        with self._lock:
            if self._view is None:
                try:
                    self._store = open_store(self.url, create=False)
                except Exception as e:  # noqa: BLE001 - served as 503, retried at the next request
                    raise DatabaseUnavailable(f"cannot open the log to read the engines: {_first_line(e)}") from None
                self._view = EngineView(self._store)
            return self._view

    def rows(self, *, folded: bool = True) -> list[dict[str, Any]]:
        """``tradestate.engines.engines`` rows (``folded=False``: the lease table's alone, no fold);
        ``DatabaseUnavailable`` when they cannot be read."""
        view = self.view()
        try:
            return view.rows(folded=folded)
        except DatabaseUnavailable:
            raise
        except Exception as e:  # noqa: BLE001 - one line, served as 503
            raise DatabaseUnavailable(f"cannot read the engines: {type(e).__name__}: {_first_line(e)}") from None

    # ---------------------------------------------------------------------------- watching
    def start(self) -> None:
        """Start the lease watch thread (when ``watch``)."""
        if not self.watch or (self._thread is not None and self._thread.is_alive()):
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tradestate-api-lease-watch", daemon=True)
        self._thread.start()

    def _complain(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_logged >= 60.0:
            self._last_logged = now
            log.warning("engine lease watch (retrying every %g s): %s", self.every, message)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                view = self.view()
            except DatabaseUnavailable as e:
                self._complain(str(e))
            else:
                if self.watcher is None:
                    self.watcher = LeaseWatcher(
                        view.store, detected_by=self.detected_by, every=self.every,
                        on_error=lambda e: self._complain(f"{type(e).__name__}: {_first_line(e)}"),
                        on_recorded=lambda lease: log.warning(
                            "engine %s is dead: its lease (epoch %d, holder %s) expired unrenewed; recorded "
                            "LeaseExpired", lease.engine_id, lease.epoch, lease.holder))
                self.watcher.tick(force=True)
            self._stop.wait(self.every)

    def close(self) -> None:
        """Stop the watch and close the store."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=self.every + 15)
        with self._lock:
            if self._store is not None:
                self._store.close()
            self._store = self._view = None
