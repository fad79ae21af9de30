"""A simulated broker: deterministic from a seed, with fault injection.

Used by the demo, the tests and order replay. Its whole venue state (orders, fills, positions,
cash, pending stream updates, id counters, the random generator and the armed faults) is plain
JSON. With ``state_path`` it lives in a file that every change rewrites atomically (temp file,
fsync, rename) under an exclusive ``flock``, and every call reads it back first: a second
process (recovery after the engine was SIGKILLed) sees exactly the venue the first one left.

Matching is simple on purpose: market orders fill at the mark, limit orders when the mark (or a
bar) crosses them; ``SimFaults.partial_fill_pieces`` makes each match fill one k-th of the order.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from decimal import ROUND_DOWN, Decimal
from typing import Any

from .base import (
    BrokerAdapter,
    OrderNotFound,
    OrderRequest,
    ReplaceRejected,
    VenueBalance,
    VenueConnectionError,
    VenueError,
    VenueFill,
    VenueOrder,
    VenuePosition,
    VenueQueryFailed,
    VenueUpdate,
)

ZERO = Decimal(0)
QUERIES = frozenset({"positions", "orders", "fills", "balances", "order_by_client_id"})
_STATUSES = frozenset({"pending", "open", "partially_filled", "filled", "cancelled", "rejected", "expired"})
_OPEN = frozenset({"pending", "open", "partially_filled"})
_ORDER_TYPES = frozenset({"market", "limit", "stop", "stop_limit"})


@dataclass
class SimFaults:
    """Faults to inject. Counters count down as they fire; all of it is persisted with the venue."""

    lose_next_fills: int = 0  # the next N fill notifications never reach the stream (the fill happens)
    lose_fill_probability: float = 0.0  # each fill notification is lost with this probability (seeded rng)
    delay_next_acks: int = 0  # the next N acks are held back until ``release_delayed()``
    lose_next_acks: int = 0  # the next N acks never reach the stream
    reject_next: int = 0  # the next N submissions are rejected with ``reject_reason``
    reject_reason: str = "rejected by the simulated venue"
    partial_fill_pieces: int = 1  # each match fills qty / k (the last piece takes the rest)
    disconnected: bool = False  # every call raises VenueConnectionError
    failing_queries: set[str] = field(default_factory=set)  # these queries raise VenueQueryFailed

    def __post_init__(self) -> None:
        unknown = set(self.failing_queries) - QUERIES
        if unknown:
            raise ValueError(f"unknown queries {sorted(unknown)}; known: {sorted(QUERIES)}")
        if self.partial_fill_pieces < 1:
            raise ValueError("partial_fill_pieces must be at least 1")
        if not 0.0 <= self.lose_fill_probability <= 1.0:
            raise ValueError("lose_fill_probability must be between 0 and 1")

    def to_json(self) -> dict[str, Any]:
        """These faults as plain JSON (``failing_queries`` as a sorted list)."""
        data = asdict(self)
        data["failing_queries"] = sorted(self.failing_queries)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SimFaults:
        """The faults ``to_json`` wrote; validates like the constructor (``ValueError``)."""
        return cls(**{**data, "failing_queries": set(data.get("failing_queries", ()))})


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _dec(value: Any) -> Decimal:
    if isinstance(value, float) or isinstance(value, bool):
        raise TypeError("amounts must be Decimal, int or decimal strings, never float")
    return Decimal(str(value)) if not isinstance(value, Decimal) else value


def _opt(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _empty_state(seed: int) -> dict[str, Any]:
    version, internal, gauss = random.Random(seed).getstate()
    return {
        "orders": {},  # venue order id -> order dict (decimals and times as strings)
        "order_sequence": [],  # venue order ids in submission order
        "fills": [],  # every execution, in order
        "positions": {},  # symbol -> {"qty", "cost"}
        "cash": {"USD": "100000"},
        "marks": {},  # symbol -> last price
        "pending_updates": [],  # the stream, not yet drained
        "delayed_updates": [],  # acks held back by a fault
        "next_order": 1,
        "next_exec": 1,
        "rng": [version, list(internal), gauss],
        "faults": SimFaults().to_json(),
    }


class SimulatedBroker(BrokerAdapter):
    """A ``BrokerAdapter`` over a simulated venue, deterministic from ``seed`` and ``clock``. With
    ``state_path`` the venue lives in that JSON file: every call reads it under a ``flock`` and every
    change rewrites it atomically and durably (fsync of file and directory), so several objects and
    processes share one venue. Without it, the venue lives in this object. ``faults`` replace the
    stored ones when given."""

    broker = "sim"

    def __init__(
        self,
        *,
        account: str,
        venue: str = "SIM",
        seed: int = 0,
        state_path: str | None = None,
        faults: SimFaults | None = None,
        clock: Callable[[], datetime] | None = None,
    ):
        self.account = account
        self.venue = venue
        self.seed = seed
        self.state_path = state_path
        self.clock = clock or _utc_now
        self._state: dict[str, Any] = _empty_state(seed)
        self._lock_file: Any = None
        if state_path is not None:
            with self._writing() as state:
                if faults is not None:
                    state["faults"] = faults.to_json()
        elif faults is not None:
            self._state["faults"] = faults.to_json()

    # ------------------------------------------------------------------------- persistence
    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        if self.state_path is None:
            yield
            return
        with open(self.state_path + ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                if os.path.exists(self.state_path):
                    with open(self.state_path, encoding="utf-8") as f:
                        self._state = json.load(f)
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _save(self) -> None:
        if self.state_path is None:
            return
        directory = os.path.dirname(os.path.abspath(self.state_path))
        fd, tmp = tempfile.mkstemp(prefix=".sim-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._state, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_path)
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the rename itself must survive a power cut
            finally:
                os.close(dir_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    @contextlib.contextmanager
    def _writing(self) -> Iterator[dict[str, Any]]:
        with self._locked(exclusive=True):
            yield self._state
            self._save()

    @contextlib.contextmanager
    def _reading(self, query: str | None = None) -> Iterator[dict[str, Any]]:
        with self._locked(exclusive=False):
            faults = self._state["faults"]
            if faults["disconnected"]:
                raise VenueConnectionError(f"sim {self.venue}: connection dropped (injected fault)")
            if query is not None and query in faults["failing_queries"]:
                raise VenueQueryFailed(f"sim {self.venue}: query {query!r} failed (injected fault)")
            yield self._state

    def _check_connected(self, state: dict[str, Any]) -> None:
        if state["faults"]["disconnected"]:
            raise VenueConnectionError(f"sim {self.venue}: connection dropped (injected fault)")

    # ---------------------------------------------------------------------------- faults
    @property
    def faults(self) -> SimFaults:
        """The armed faults, as stored with the venue."""
        with self._locked(exclusive=False):
            return SimFaults.from_json(self._state["faults"])

    def set_faults(self, faults: SimFaults) -> None:
        """Replace every armed fault with ``faults`` (persisted with the venue)."""
        with self._writing() as state:
            state["faults"] = faults.to_json()

    def update_faults(self, **changes: Any) -> SimFaults:
        """Change some fault settings, e.g. ``update_faults(lose_next_fills=1)``."""
        with self._writing() as state:
            current = SimFaults.from_json(state["faults"])
            for name, value in changes.items():
                if not hasattr(current, name):
                    raise ValueError(f"unknown fault {name!r}")
                setattr(current, name, value)
            current.__post_init__()
            state["faults"] = current.to_json()
            return current

    def release_delayed(self) -> None:
        """Deliver the acks that a ``delay_next_acks`` fault held back."""
        with self._writing() as state:
            state["pending_updates"].extend(state["delayed_updates"])
            state["delayed_updates"] = []

    # ------------------------------------------------------------------------ internals
    def _now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None:
            raise ValueError("the simulated broker's clock returned a naive datetime")
        return now.astimezone(timezone.utc)

    def _rng(self, state: dict[str, Any]) -> random.Random:
        rng = random.Random()
        version, internal, gauss = state["rng"]
        rng.setstate((version, tuple(internal), gauss))
        return rng

    def _keep_rng(self, state: dict[str, Any], rng: random.Random) -> None:
        version, internal, gauss = rng.getstate()
        state["rng"] = [version, list(internal), gauss]

    def _emit(self, state: dict[str, Any], update: dict[str, Any]) -> None:
        faults = state["faults"]
        if update["kind"] == "ack":
            if faults["lose_next_acks"] > 0:
                faults["lose_next_acks"] -= 1
                return
            if faults["delay_next_acks"] > 0:
                faults["delay_next_acks"] -= 1
                state["delayed_updates"].append(update)
                return
        if update["kind"] == "fill":
            if faults["lose_next_fills"] > 0:
                faults["lose_next_fills"] -= 1
                return
            if faults["lose_fill_probability"] > 0:
                rng = self._rng(state)
                lost = rng.random() < faults["lose_fill_probability"]
                self._keep_rng(state, rng)
                if lost:
                    return
        state["pending_updates"].append(update)

    def _new_order(
        self,
        state: dict[str, Any],
        *,
        client_order_id: str | None,
        symbol: str,
        side: str,
        order_type: str,
        qty: Decimal,
        limit_price: Decimal | None,
        stop_price: Decimal | None,
        time_in_force: str,
        status: str,
        at: datetime,
    ) -> dict[str, Any]:
        if side not in ("buy", "sell"):
            raise ValueError(f"side must be buy or sell, not {side!r}")
        if order_type not in _ORDER_TYPES:
            raise ValueError(f"unknown order type {order_type!r}")
        if qty <= 0:
            raise ValueError("qty must be positive")
        venue_order_id = f"{self.venue}-{state['next_order']}"
        state["next_order"] += 1
        order = {
            "venue_order_id": venue_order_id,
            "client_order_id": client_order_id,
            "symbol": symbol,
            "side": side,
            "order_type": order_type,
            "qty": str(qty),
            "filled_qty": "0",
            "fill_notional": "0",
            "status": status,
            "limit_price": None if limit_price is None else str(limit_price),
            "stop_price": None if stop_price is None else str(stop_price),
            "time_in_force": time_in_force,
            "triggered": False,
            "submitted_at": at.isoformat(),
            "updated_at": at.isoformat(),
            "reject_reason": "",
        }
        state["orders"][venue_order_id] = order
        state["order_sequence"].append(venue_order_id)
        return order

    def _execute(self, state: dict[str, Any], order: dict[str, Any], qty: Decimal, price: Decimal,
                 at: datetime, exec_id: str | None = None, notify: bool = True) -> dict[str, Any]:
        """One execution: moves the order, the position and the cash, as a venue's would."""
        if exec_id is None:
            exec_id = f"{self.venue}-E{state['next_exec']}"
            state["next_exec"] += 1
        sign = 1 if order["side"] == "buy" else -1
        fill = {
            "exec_id": exec_id,
            "client_order_id": order["client_order_id"],
            "venue_order_id": order["venue_order_id"],
            "symbol": order["symbol"],
            "side": order["side"],
            "qty": str(qty),
            "price": str(price),
            "fee": "0",
            "occurred_at": at.isoformat(),
        }
        state["fills"].append(fill)
        filled = Decimal(order["filled_qty"]) + qty
        order["filled_qty"] = str(filled)
        order["fill_notional"] = str(Decimal(order["fill_notional"]) + qty * price)
        order["updated_at"] = at.isoformat()
        if order["status"] in _OPEN:
            order["status"] = "filled" if filled >= Decimal(order["qty"]) else "partially_filled"
        held = state["positions"].setdefault(order["symbol"], {"qty": "0", "cost": "0"})
        old_qty, cost = Decimal(held["qty"]), Decimal(held["cost"])
        new_qty = old_qty + sign * qty
        if old_qty == 0 or (old_qty > 0) == (sign > 0):
            cost += sign * qty * price
        elif new_qty == 0:
            cost = ZERO
        elif (new_qty > 0) != (old_qty > 0):
            cost = new_qty * price
        else:
            cost -= cost * qty / abs(old_qty)
        held["qty"], held["cost"] = str(new_qty), str(cost)
        if new_qty == 0:
            del state["positions"][order["symbol"]]
        cash = state["cash"]
        cash["USD"] = str(Decimal(cash.get("USD", "0")) - sign * qty * price)
        if notify:
            self._emit(state, {"kind": "fill", "venue_order_id": order["venue_order_id"],
                               "client_order_id": order["client_order_id"], "fill": fill,
                               "occurred_at": at.isoformat(), "reason": ""})
        return fill

    def _match(self, state: dict[str, Any], order: dict[str, Any], price: Decimal, at: datetime) -> None:
        """Fill one piece of a marketable order at ``price``."""
        remaining = Decimal(order["qty"]) - Decimal(order["filled_qty"])
        if remaining <= 0 or order["status"] not in _OPEN:
            return
        pieces = state["faults"]["partial_fill_pieces"]
        piece = remaining
        if pieces > 1:  # venues trade in bounded precision: never a 28-digit quotient
            piece = (Decimal(order["qty"]) / pieces).quantize(Decimal("0.00000001"), rounding=ROUND_DOWN)
            if piece <= 0 or remaining - piece < piece:  # the last piece takes the rest
                piece = remaining
        self._execute(state, order, piece, price, at)

    @staticmethod
    def _fill_price(order: dict[str, Any], low: Decimal, high: Decimal, reference: Decimal) -> Decimal | None:
        """The price a resting order would get when the market trades between low and high,
        starting at ``reference``; None if it does not execute."""
        buy = order["side"] == "buy"
        kind = order["order_type"]
        limit = _opt(order["limit_price"])
        stop = _opt(order["stop_price"])
        if kind in ("stop", "stop_limit") and not order["triggered"]:
            if (buy and high >= stop) or (not buy and low <= stop):  # type: ignore[operator]
                order["triggered"] = True
                reference = max(reference, stop) if buy else min(reference, stop)  # type: ignore[type-var]
            else:
                return None
        if kind in ("market", "stop"):
            return reference
        assert limit is not None
        if buy:
            return min(reference, limit) if low <= limit else None
        return max(reference, limit) if high >= limit else None

    def _resting(self, state: dict[str, Any], symbol: str) -> list[dict[str, Any]]:
        return [state["orders"][vid] for vid in state["order_sequence"]
                if state["orders"][vid]["symbol"] == symbol and state["orders"][vid]["status"] in _OPEN]

    # ----------------------------------------------------------------------- market data
    def set_price(self, symbol: str, price: Decimal | int | str) -> None:
        """Move the mark: market orders fill at it, crossed limit orders fill at it."""
        mark = _dec(price)
        if mark <= 0:
            raise ValueError("price must be positive")
        with self._writing() as state:
            state["marks"][symbol] = str(mark)
            at = self._now()
            for order in self._resting(state, symbol):
                fill_price = self._fill_price(order, mark, mark, mark)
                if fill_price is not None:
                    self._match(state, order, fill_price, at)

    def on_bar(self, symbol: str, open: Decimal | int | str, high: Decimal | int | str,
               low: Decimal | int | str, close: Decimal | int | str, at: datetime) -> list[VenueUpdate]:
        """Match resting orders against one bar (order replay); returns the updates it caused."""
        o, h, lo, c = (_dec(v) for v in (open, high, low, close))
        if not (lo <= min(o, c) and h >= max(o, c)):
            raise ValueError("bar prices are inconsistent: need low <= open, close <= high")
        if at.tzinfo is None:
            raise ValueError("bar time must be timezone-aware")
        with self._writing() as state:
            before = len(state["pending_updates"])
            for order in self._resting(state, symbol):
                fill_price = self._fill_price(order, lo, h, o)
                if fill_price is not None:
                    self._match(state, order, fill_price, at.astimezone(timezone.utc))
            state["marks"][symbol] = str(c)
            caused = state["pending_updates"][before:]
        return [self._update(u) for u in caused]

    # -------------------------------------------------------------------- order flow
    def submit(self, request: OrderRequest) -> VenueOrder:
        """Place ``request``: queue an ack (or a rejection when ``reject_next`` is armed) on the stream
        and fill at once if the mark crosses. Idempotent on ``client_order_id``: a duplicate returns
        the existing order and changes nothing. Raises ``VenueConnectionError`` when disconnected."""
        with self._writing() as state:
            self._check_connected(state)
            for vid in state["order_sequence"]:  # a duplicate client order id: the existing order
                if state["orders"][vid]["client_order_id"] == request.client_order_id:
                    return self._order(state, state["orders"][vid])
            at = self._now()
            faults = state["faults"]
            status = "open"
            if faults["reject_next"] > 0:
                faults["reject_next"] -= 1
                status = "rejected"
            order = self._new_order(
                state, client_order_id=request.client_order_id, symbol=request.symbol, side=request.side,
                order_type=request.order_type, qty=_dec(request.qty), limit_price=request.limit_price,
                stop_price=request.stop_price, time_in_force=request.time_in_force, status=status, at=at,
            )
            if status == "rejected":
                order["reject_reason"] = faults["reject_reason"]
                self._emit(state, {"kind": "rejected", "venue_order_id": order["venue_order_id"],
                                   "client_order_id": order["client_order_id"], "fill": None,
                                   "occurred_at": at.isoformat(), "reason": faults["reject_reason"]})
                return self._order(state, order)
            self._emit(state, {"kind": "ack", "venue_order_id": order["venue_order_id"],
                               "client_order_id": order["client_order_id"], "fill": None,
                               "occurred_at": at.isoformat(), "reason": ""})
            mark = state["marks"].get(request.symbol)
            if mark is not None:
                fill_price = self._fill_price(order, Decimal(mark), Decimal(mark), Decimal(mark))
                if fill_price is not None:
                    self._match(state, order, fill_price, at)
            return self._order(state, order)

    def cancel(self, venue_order_id: str) -> None:
        """Cancel an open order and queue a ``cancelled`` update. Raises ``OrderNotFound`` for an
        unknown id, ``VenueError`` for an order no longer open, ``VenueConnectionError`` when
        disconnected."""
        with self._writing() as state:
            self._check_connected(state)
            order = state["orders"].get(venue_order_id)
            if order is None:
                raise OrderNotFound(f"sim {self.venue}: no order {venue_order_id!r}")
            if order["status"] not in _OPEN:
                raise VenueError(f"sim {self.venue}: order {venue_order_id} is {order['status']}; cannot cancel")
            at = self._now()
            order["status"] = "cancelled"
            order["updated_at"] = at.isoformat()
            self._emit(state, {"kind": "cancelled", "venue_order_id": venue_order_id,
                               "client_order_id": order["client_order_id"], "fill": None,
                               "occurred_at": at.isoformat(), "reason": "cancelled on request"})

    def replace_order(self, venue_order_id: str, *, qty: Decimal, limit_price: Decimal | None = None,
                      stop_price: Decimal | None = None) -> VenueOrder:
        """Amend an open order in place (same venue order id, as IB does): its whole quantity and
        prices; queue a ``replaced`` update carrying the amended order, and fill at once if the
        mark now crosses. Raises ``OrderNotFound``, ``ReplaceRejected`` (not open, or a quantity
        not above what is filled), ``VenueConnectionError`` when disconnected."""
        with self._writing() as state:
            self._check_connected(state)
            order = state["orders"].get(venue_order_id)
            if order is None:
                raise OrderNotFound(f"sim {self.venue}: no order {venue_order_id!r}")
            if order["status"] not in _OPEN:
                raise ReplaceRejected(f"sim {self.venue}: order {venue_order_id} is {order['status']}; cannot replace")
            qty = _dec(qty)
            if qty <= Decimal(order["filled_qty"]):
                raise ReplaceRejected(f"sim {self.venue}: qty {qty} is not above the {order['filled_qty']} filled")
            at = self._now()
            order["qty"] = str(qty)
            order["limit_price"] = None if limit_price is None else str(limit_price)
            order["stop_price"] = None if stop_price is None else str(stop_price)
            order["updated_at"] = at.isoformat()
            self._emit(state, {"kind": "replaced", "venue_order_id": venue_order_id,
                               "client_order_id": order["client_order_id"], "fill": None,
                               "occurred_at": at.isoformat(), "reason": "", "order": dict(order)})
            mark = state["marks"].get(order["symbol"])
            if mark is not None:
                fill_price = self._fill_price(order, Decimal(mark), Decimal(mark), Decimal(mark))
                if fill_price is not None:
                    self._match(state, order, fill_price, at)
            return self._order(state, order)

    def expire(self, venue_order_id: str) -> None:
        """The venue expires a working order (end of day for a day order)."""
        with self._writing() as state:
            order = state["orders"][venue_order_id]
            if order["status"] in _OPEN:
                at = self._now()
                order["status"] = "expired"
                order["updated_at"] = at.isoformat()
                self._emit(state, {"kind": "expired", "venue_order_id": venue_order_id,
                                   "client_order_id": order["client_order_id"], "fill": None,
                                   "occurred_at": at.isoformat(), "reason": ""})

    def place_external(self, *, symbol: str, side: str, qty: Decimal | int | str,
                       order_type: str = "market", limit_price: Decimal | int | str | None = None,
                       client_order_id: str | None = None) -> VenueOrder:
        """An order placed outside tradestate (another app, the broker's website): the venue
        has it, our log does not, and its updates never reach our stream."""
        with self._writing() as state:
            at = self._now()
            order = self._new_order(
                state, client_order_id=client_order_id, symbol=symbol, side=side, order_type=order_type,
                qty=_dec(qty), limit_price=None if limit_price is None else _dec(limit_price), stop_price=None,
                time_in_force="day", status="open", at=at,
            )
            mark = state["marks"].get(symbol)
            if mark is not None:
                fill_price = self._fill_price(order, Decimal(mark), Decimal(mark), Decimal(mark))
                if fill_price is not None:
                    remaining = Decimal(order["qty"])
                    self._execute(state, order, remaining, fill_price, at, notify=False)
            return self._order(state, order)

    def updates(self) -> list[VenueUpdate]:
        """Drain the stream: acks, fills, cancels, rejects (minus what the faults lost)."""
        with self._writing() as state:
            self._check_connected(state)
            drained, state["pending_updates"] = state["pending_updates"], []
        return [self._update(u) for u in drained]

    # --------------------------------------------------------------------- staging (tests)
    def stage_order(self, *, client_order_id: str | None, symbol: str, side: str, qty: Decimal,
                    order_type: str = "limit", limit_price: Decimal | None = Decimal("100"),
                    status: str = "open", fills: list[tuple[str, Decimal, Decimal]] | tuple = ()) -> str:
        """Put an order at the venue as if it had happened there, with its fills (which move the
        position and cash); nothing reaches the update stream. Returns its venue order id."""
        if status not in _STATUSES:
            raise ValueError(f"unknown status {status!r}")
        with self._writing() as state:
            at = self._now()
            order = self._new_order(
                state, client_order_id=client_order_id, symbol=symbol, side=side, order_type=order_type,
                qty=_dec(qty), limit_price=None if order_type == "market" else limit_price,
                stop_price=None, time_in_force="day", status="open", at=at,
            )
            for exec_id, fill_qty, price in fills:
                self._execute(state, order, _dec(fill_qty), _dec(price), at, exec_id=exec_id, notify=False)
            if status != "open" or Decimal(order["filled_qty"]) == 0:
                order["status"] = status
            return order["venue_order_id"]

    def stage_position(self, symbol: str, qty: Decimal, avg_cost: Decimal | None = None) -> None:
        """Set the venue's position in ``symbol`` directly (0 removes it); ``avg_cost`` defaults to the
        mark, else 100. For tests and scenarios; nothing goes on the stream."""
        with self._writing() as state:
            qty = _dec(qty)
            if qty == 0:
                state["positions"].pop(symbol, None)
            else:
                cost = qty * (avg_cost if avg_cost is not None else Decimal(state["marks"].get(symbol, "100")))
                state["positions"][symbol] = {"qty": str(qty), "cost": str(cost)}

    def stage_cash(self, amount: Decimal, currency: str = "USD") -> None:
        """Set the venue's cash balance in ``currency`` directly (nothing goes on the stream)."""
        with self._writing() as state:
            state["cash"][currency] = str(_dec(amount))

    # ------------------------------------------------------------------------ queries
    def _order(self, state: dict[str, Any], o: dict[str, Any]) -> VenueOrder:
        filled = Decimal(o["filled_qty"])
        fills = tuple(self._fill(f) for f in state["fills"] if f["venue_order_id"] == o["venue_order_id"])
        return VenueOrder(
            venue_order_id=o["venue_order_id"],
            client_order_id=o["client_order_id"],
            symbol=o["symbol"],
            side=o["side"],
            order_type=o["order_type"],
            qty=Decimal(o["qty"]),
            filled_qty=filled,
            status=o["status"],
            raw_status=o["status"],
            limit_price=_opt(o["limit_price"]),
            stop_price=_opt(o["stop_price"]),
            avg_fill_price=Decimal(o["fill_notional"]) / filled if filled else None,
            time_in_force=o["time_in_force"],
            submitted_at=_time(o["submitted_at"]),
            updated_at=_time(o["updated_at"]),
            fills=fills,
            raw=dict(o),
        )

    @staticmethod
    def _fill(f: dict[str, Any]) -> VenueFill:
        return VenueFill(
            exec_id=f["exec_id"], client_order_id=f["client_order_id"], venue_order_id=f["venue_order_id"],
            symbol=f["symbol"], side=f["side"], qty=Decimal(f["qty"]), price=Decimal(f["price"]),
            fee=Decimal(f["fee"]), occurred_at=_time(f["occurred_at"]), raw=dict(f),
        )

    def _update(self, u: dict[str, Any]) -> VenueUpdate:
        return VenueUpdate(
            kind=u["kind"], client_order_id=u["client_order_id"], venue_order_id=u["venue_order_id"],
            fill=self._fill(u["fill"]) if u.get("fill") else None, reason=u.get("reason", ""),
            occurred_at=_time(u.get("occurred_at")), raw=dict(u),
            order=self._order({"fills": []}, u["order"]) if u.get("order") else None,
        )

    def positions(self) -> list[VenuePosition]:
        """Non-zero positions, by symbol, with their average cost. Raises ``VenueConnectionError`` when
        disconnected and ``VenueQueryFailed`` when this query is armed to fail (``SimFaults``)."""
        with self._reading("positions") as state:
            result = []
            for symbol, held in sorted(state["positions"].items()):
                qty, cost = Decimal(held["qty"]), Decimal(held["cost"])
                if qty:
                    result.append(VenuePosition(symbol, qty, cost / qty, raw={"symbol": symbol, **held}))
            return result

    def open_orders(self) -> list[VenueOrder]:
        """Orders still open (pending, open, partially filled), in submission order. Raises
        ``VenueConnectionError`` when disconnected and ``VenueQueryFailed`` when this query is armed
        to fail (``SimFaults``)."""
        with self._reading("orders") as state:
            return [self._order(state, state["orders"][vid]) for vid in state["order_sequence"]
                    if state["orders"][vid]["status"] in _OPEN]

    def recent_orders(self, since: datetime | None = None) -> list[VenueOrder]:
        """Every order updated at or after ``since`` (all when None), in submission order. Raises
        ``VenueConnectionError`` when disconnected and ``VenueQueryFailed`` when this query is armed
        to fail (``SimFaults``)."""
        with self._reading("orders") as state:
            orders = [state["orders"][vid] for vid in state["order_sequence"]]
            if since is not None:
                orders = [o for o in orders if datetime.fromisoformat(o["updated_at"]) >= since]
            return [self._order(state, o) for o in orders]

    def fills(self, since: datetime | None = None) -> list[VenueFill]:
        """Every execution at or after ``since`` (all when None), in execution order. Raises
        ``VenueConnectionError`` when disconnected and ``VenueQueryFailed`` when this query is armed
        to fail (``SimFaults``)."""
        with self._reading("fills") as state:
            fills = state["fills"]
            if since is not None:
                fills = [f for f in fills if datetime.fromisoformat(f["occurred_at"]) >= since]
            return [self._fill(f) for f in fills]

    def balances(self) -> list[VenueBalance]:
        """Cash per currency, by currency. Raises ``VenueConnectionError`` when disconnected and
        ``VenueQueryFailed`` when this query is armed to fail (``SimFaults``)."""
        with self._reading("balances") as state:
            return [VenueBalance(currency, Decimal(amount), raw={"currency": currency, "cash": amount})
                    for currency, amount in sorted(state["cash"].items())]

    def order_by_client_id(self, client_order_id: str) -> VenueOrder:
        """The order placed with ``client_order_id``; ``OrderNotFound`` if none. Raises
        ``VenueConnectionError`` when disconnected and ``VenueQueryFailed`` when this query is armed
        to fail (``SimFaults``)."""
        with self._reading("order_by_client_id") as state:
            for vid in state["order_sequence"]:
                if state["orders"][vid]["client_order_id"] == client_order_id:
                    return self._order(state, state["orders"][vid])
        raise OrderNotFound(f"sim {self.venue}: no order with client order id {client_order_id!r}")

    def mark(self, symbol: str) -> Decimal | None:
        """The last price set for ``symbol``, or None before any."""
        with self._locked(exclusive=False):
            price = self._state["marks"].get(symbol)
        return None if price is None else Decimal(price)

    def dump(self) -> dict[str, Any]:
        """The whole venue state (plain JSON), e.g. to compare two runs of the same seed."""
        with self._locked(exclusive=False):
            return json.loads(json.dumps(self._state))


# ------------------------------------------------------------------ the scenario-test venue


class SimVenueControl:
    """``tests/support/venues.py``'s VenueControl for the simulated broker (state in a temp file, so
    every ``adapter()`` is a fresh broker object reading the same venue)."""

    broker = "sim"
    venue = "SIM"

    def __init__(self, state_path: str, account: str):
        self.state_path = state_path
        self.account = account
        self._broker = SimulatedBroker(account=account, venue=self.venue, state_path=state_path)

    def add_order(self, *, client_order_id: str | None, symbol: str, side: str, qty: Decimal,
                  order_type: str = "limit", limit_price: Decimal | None = Decimal("100"),
                  status: str = "open", fills: list[tuple[str, Decimal, Decimal]] | tuple = ()) -> str:
        """Stage an order at the venue as if placed outside our log (``client_order_id`` None: a foreign
        order), with optional fills as (exec id, qty, price); returns its venue order id."""
        return self._broker.stage_order(client_order_id=client_order_id, symbol=symbol, side=side, qty=qty,
                                        order_type=order_type, limit_price=limit_price, status=status,
                                        fills=list(fills))

    def set_position(self, symbol: str, qty: Decimal, avg_cost: Decimal | None = None) -> None:
        """Stage the venue's position in ``symbol`` (0 removes it)."""
        self._broker.stage_position(symbol, qty, avg_cost)

    def set_cash(self, amount: Decimal, currency: str = "USD") -> None:
        """Stage the venue's cash balance in ``currency``."""
        self._broker.stage_cash(amount, currency)

    def fail(self, query: str) -> None:
        """Arm ``query`` (one of ``QUERIES``) to raise ``VenueQueryFailed`` on every call from now on."""
        faults = self._broker.faults
        self._broker.update_faults(failing_queries=faults.failing_queries | {query})

    def adapter(self) -> SimulatedBroker:
        """A new ``SimulatedBroker`` over the same venue file."""
        return SimulatedBroker(account=self.account, venue=self.venue, state_path=self.state_path)


@contextlib.contextmanager
def sim_venue(account: str = "acct-1") -> Iterator[SimVenueControl]:
    """A ``SimVenueControl`` over a fresh venue in a temporary directory, removed on exit."""
    with tempfile.TemporaryDirectory(prefix="tradestate-sim-") as directory:
        yield SimVenueControl(os.path.join(directory, "venue.json"), account)


__all__ = ["SimFaults", "SimVenueControl", "SimulatedBroker", "sim_venue"]
