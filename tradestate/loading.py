"""Loading trading state from the log: the newest valid checkpoint plus the tail, or the cold fold.

``load_state`` is the one way an engine's state is built at start (the client and recovery both
use it): restore the newest checkpoint that passes validation and fold the log after it, or,
with none, fold the whole log cold (``domain.fold``). Either way finished orders stay in the log
(the cold fold keeps their ids, a checkpoint only their number) until something needs one;
``LazyOrders`` brings one back from its own stream then (an indexed read), and ``ensure_orders``
does so explicitly before a decision runs. While a decision runs
(``deciding``) nothing is loaded: the domain sees the orders in memory and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import orjson

from .adapters.store import Store, checkpoints, gc_paused
from .domain.fold import fold_cold as _fold_cold_pages
from .domain.snapshot import LogReader, OrderBook, OrderLoader, materialize_all, materialize_order
from .domain.state import OrderState, TradingState


class LazyOrders(OrderBook):
    """``TradingState.orders`` of a state loaded from a store: an ``OrderBook`` that brings a
    finished order back from the log the first time a reader asks for it (``get``, ``in``,
    ``[]``), or all of them for a full iteration. Lookups of orders in memory stay plain dict
    lookups (the fold's hot path). With an open-ended book (a version 3 checkpoint keeps only how
    many orders finished), a miss on an order stream is one indexed read of that stream: it
    brings the order back, or finds none (remembered, ``OrderBook.absent``).

    Inside ``deciding(state)`` it is a plain dict: a miss is a miss, nothing is read."""

    def __init__(self, state: TradingState, book: OrderBook, loader: OrderLoader | None,
                 log_reader: LogReader | None = None):
        if book.open_ended:
            super().__init__(in_log=book.unloaded)
        else:
            super().__init__(book.packed_unloaded(), ordered=book.ordered)
        dict.update(self, book)
        self._state = state
        self.loader = loader  # (stream id, up to position) -> that stream's rows
        self.log_reader = log_reader  # up to position -> every row, in order
        self._sealed = 0

    @property
    def sealed(self) -> bool:
        """True while a decision runs on the state (``deciding``): nothing is loaded then."""
        return self._sealed > 0

    def load(self, sid: str) -> OrderState | None:
        """The order of stream ``sid``, brought back from the log if it is a finished order not
        in memory; None for a stream that is not an order of this state."""
        if not self.is_unloaded(sid):
            return dict.get(self, sid)
        if self.loader is None:
            raise KeyError(f"{sid} may be a finished order of the checkpoint but no order loader was given")
        rows = self.loader(sid, self._state.position)
        if self.open_ended:
            rows = list(rows)
            if not rows:  # no such order up to this position: a new client order id, or an unknown one
                self.absent(sid)
                return None
        order = materialize_order(self._state, sid, rows)
        self.put(sid, order)
        return order

    def __missing__(self, sid: str) -> OrderState:
        if self._sealed or not self.is_unloaded(sid):
            raise KeyError(sid)
        order = self.load(sid)
        if order is None:
            raise KeyError(sid)
        return order

    def get(self, sid: str, default: Any = None) -> Any:  # type: ignore[override]
        try:
            return self[sid]
        except KeyError:
            return default

    def __contains__(self, sid: object) -> bool:
        if dict.__contains__(self, sid):
            return True
        if self._sealed or not self.is_unloaded(sid):
            return False
        return not self.open_ended or self.load(sid) is not None  # type: ignore[arg-type]

    def load_all(self, rows: Iterable[tuple[Any, ...]] | None = None) -> None:
        """Bring every finished order back. ``rows`` (the log up to the state's position) is one
        pass instead of one read per order; without it, many orders (or an open-ended book's,
        whose streams are not known) are read in one pass too."""
        if not self.unloaded:
            return
        if rows is None and self.log_reader is not None and (self.open_ended or self.unloaded >= 64):
            rows = self.log_reader(self._state.position)
        if rows is None:
            if self.open_ended:
                raise RuntimeError("the checkpoint keeps only how many orders finished: bringing them all back "
                                   "needs a read of the log, and no log reader was given")
            for sid in self.unloaded_streams():
                self.load(sid)
            return
        materialize_all(self._state, rows)

    def _everything(self) -> None:
        if self.unloaded and not self._sealed:
            if self.loader is None:
                raise RuntimeError("finished orders of the checkpoint are not loaded and no order loader was given")
            self.load_all()

    def __iter__(self) -> Iterator[str]:
        self._everything()
        return dict.__iter__(self)

    def __len__(self) -> int:
        return dict.__len__(self) + (0 if self._sealed else self.unloaded)

    def keys(self):  # type: ignore[override]
        self._everything()
        return dict.keys(self)

    def values(self):  # type: ignore[override]
        self._everything()
        return dict.values(self)

    def items(self):  # type: ignore[override]
        self._everything()
        return dict.items(self)


def attach(state: TradingState, loader: OrderLoader | None, log_reader: LogReader | None = None) -> TradingState:
    """Give ``state`` (restored or cold-folded) orders that load finished ones through ``loader``."""
    if isinstance(state.orders, OrderBook) and not isinstance(state.orders, LazyOrders):
        state.orders = LazyOrders(state, state.orders, loader, log_reader)
    return state


def attach_store(state: TradingState, store: Store) -> TradingState:
    """``attach`` with the store's order loader and log reader."""
    return attach(state, checkpoints.order_loader(store), lambda upto: store.trading.iter_rows(0, upto))


def ensure_orders(state: TradingState, streams: Iterable[str]) -> None:
    """Bring the finished orders among ``streams`` into memory (unknown streams are left alone)."""
    orders = state.orders
    if isinstance(orders, LazyOrders):
        for sid in streams:
            orders.load(sid)


class deciding:  # noqa: N801 - used as a function: ``with deciding(state) as state:``
    """While a decision runs on ``state``: its orders are exactly those in memory (no log reads)."""

    __slots__ = ("state", "orders")

    def __init__(self, state: TradingState):
        self.state = state
        self.orders = state.orders if isinstance(state.orders, LazyOrders) else None

    def __enter__(self) -> TradingState:
        if self.orders is not None:
            self.orders._sealed += 1
        return self.state

    def __exit__(self, *exc: object) -> None:
        if self.orders is not None:
            self.orders._sealed -= 1


# ------------------------------------------------------------------------------ folds


def fold_tail(store: Store, state: TradingState, stop: int | None = None) -> int:
    """Apply the log after ``state.position`` (up to ``stop``); returns events applied."""
    applied = 0
    with gc_paused():
        apply, loads = state.apply, orjson.loads
        for pos, stream, version, type_name, data, at in store.trading.iter_rows(state.position, stop):
            apply(pos, stream, version, type_name, loads(data), at)
            applied += 1
    return applied


def fold_pages(pages: Any, exchange_tz: str = "America/New_York", *, order_loader: OrderLoader | None,
               log_reader: LogReader | None = None) -> tuple[TradingState, int]:
    """``domain.fold.fold_cold`` of ``pages`` (lists of rows from the log's first position), with
    finished orders loading through ``order_loader`` (and ``log_reader`` for all at once)."""
    state, rows = _fold_cold_pages(pages, exchange_tz)
    return attach(state, order_loader, log_reader), rows


def fold_cold(store: Store, exchange_tz: str = "America/New_York", stop: int | None = None) -> tuple[TradingState, int]:
    """(the state after the log up to ``stop``, rows folded) with no checkpoint: the cold fold,
    so finished orders stay ids until asked for, as after a restore."""
    with gc_paused(), closing(store.trading.iter_pages(0, stop)) as pages:
        state, rows = _fold_cold_pages(pages, exchange_tz)
    return attach_store(state, store), rows


def load_checkpoint(store: Store, **options: Any) -> checkpoints.Loaded:
    """``checkpoints.load`` (same options), its state's finished orders loading from ``store``."""
    loaded = checkpoints.load(store, **options)
    if loaded.state is not None:
        attach_store(loaded.state, store)
    return loaded


def state_at(store: Store, position: int | None = None, *, exchange_tz: str = "America/New_York") -> TradingState:
    """The trading state after the event at ``position`` (default: the head): from the newest
    valid checkpoint at or before it, then the log up to it."""
    loaded = load_checkpoint(store, at_or_before=position)
    state = loaded.state
    if state is None or state.exchange_tz != exchange_tz:
        state = TradingState(exchange_tz)
    fold_tail(store, state, position)
    return state


# ------------------------------------------------------------------------------ at start


@dataclass
class LoadedState:
    """What ``load_state`` built: the state at ``state.position``; the checkpoint search
    (``loaded``: None when checkpoints were not used), the checkpoint's position when one was
    restored, events folded after it (or in the cold fold), and the seconds each part took."""

    state: TradingState
    loaded: checkpoints.Loaded | None
    checkpoint_position: int | None
    replayed: int
    checkpoint_seconds: float = 0.0
    replay_seconds: float = 0.0


def from_checkpoint(store: Store, exchange_tz: str, *, head: int | None = None) -> tuple[TradingState | None,
                                                                                          checkpoints.Loaded]:
    """The newest valid checkpoint's state (None: none valid, or one kept in another exchange time
    zone) and the search's report."""
    loaded = load_checkpoint(store, head=head)
    state = loaded.state if loaded.state is not None and loaded.state.exchange_tz == exchange_tz else None
    return state, loaded


def fold_rest(store: Store, state: TradingState | None, exchange_tz: str) -> tuple[TradingState, int]:
    """The state at the log head from ``state`` (fold its tail) or, with None, the cold fold;
    and the number of events folded."""
    if state is None:
        return fold_cold(store, exchange_tz)
    return state, fold_tail(store, state)


def load_state(store: Store, *, exchange_tz: str = "America/New_York", use_checkpoints: bool = True,
               head: int | None = None) -> LoadedState:
    """The state at the log head: the newest valid checkpoint and the tail after it, or the cold
    fold of the whole log (no valid checkpoint, or ``use_checkpoints`` False)."""
    started = time.perf_counter()
    state, loaded = from_checkpoint(store, exchange_tz, head=head) if use_checkpoints else (None, None)
    checkpoint_seconds = time.perf_counter() - started
    position = state.position if state is not None else None
    started = time.perf_counter()
    state, replayed = fold_rest(store, state, exchange_tz)
    return LoadedState(state, loaded, position, replayed, checkpoint_seconds, time.perf_counter() - started)


__all__ = [
    "LazyOrders",
    "LoadedState",
    "attach",
    "attach_store",
    "deciding",
    "ensure_orders",
    "fold_cold",
    "fold_pages",
    "fold_rest",
    "fold_tail",
    "from_checkpoint",
    "load_checkpoint",
    "load_state",
    "state_at",
]
