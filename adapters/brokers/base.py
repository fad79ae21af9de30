"""The broker adapter interface: venue-neutral reports that reconciliation diffs against the log.

A report is what one venue said at one moment. Every query either answers completely or raises
``VenueQueryFailed``: a failed or partial query is "unknown" (``Unknown`` in a ``VenueSnapshot``),
never "flat" or "no orders". Amounts are ``Decimal`` parsed from the venue's raw strings (never
through float); times are timezone-aware UTC.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from ...domain.venue import (
    OPEN_VENUE_STATUSES,
    Unknown,
    VenueBalance,
    VenueFill,
    VenueOrder,
    VenueOrderStatus,
    VenuePosition,
    VenueSnapshot,
)


class VenueError(Exception):
    """Base of adapter errors: the message says which venue and what went wrong."""


class VenueQueryFailed(VenueError):
    """A query failed or came back incomplete: the answer is unknown, not empty."""


class VenueConnectionError(VenueError):
    """Could not connect, lost the connection, or the venue refused us (e.g. IB error 326)."""


class OrderNotFound(VenueError):
    """The venue does not know this order (looked up by client order id or venue order id)."""


class SubmitOutcomeUnknown(VenueConnectionError):
    """A submit's answer was lost and the venue does not (yet) show the order: look it up later by
    client order id; never assume it was rejected, never send it again under a new id. Every
    adapter raises this one class (callers catch it whatever the venue)."""


class OrderNotCancelable(VenueError):
    """The venue refused a cancel: the order is finished, being replaced, or not ours to cancel
    (the message says which). One class for every adapter."""


class ReplaceRejected(VenueError):
    """The venue refused an amendment (the order is finished, being cancelled or replaced, or the
    new values are not acceptable): the order goes on as it was."""


@dataclass(frozen=True)
class OrderRequest:
    """A recorded intent, forwarded to the venue (never one that is not recorded yet)."""

    client_order_id: str
    symbol: str
    side: Literal["buy", "sell"]
    order_type: str
    qty: Decimal
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: str = "day"
    notional: Decimal | None = None  # an amount order (venues that take one): ``qty`` None, known at fill


@dataclass(frozen=True)
class VenueUpdate:
    """One update from the venue's live stream, turned into an event by the order flow."""

    # "fee": a fee the venue reported after the fill was handed over (``fill`` carries it, by exec id)
    # "replace_rejected": the venue refused an amendment of the order (the order goes on as it was)
    kind: Literal["ack", "fill", "cancelled", "rejected", "expired", "replaced", "fee", "replace_rejected"]
    client_order_id: str | None
    venue_order_id: str
    fill: VenueFill | None = None
    reason: str = ""
    occurred_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)
    # "replaced": the venue order that now carries ours (``venue_order_id``: its id; its qty, prices)
    order: VenueOrder | None = None


class BrokerAdapter(abc.ABC):
    """One venue account. Queries raise ``VenueQueryFailed`` rather than return partial data."""

    broker: str  # "sim", "alpaca", "ib"
    venue: str  # the venue name on our events
    account: str  # our account id

    @abc.abstractmethod
    def positions(self) -> list[VenuePosition]:
        """Every non-zero position the venue holds for this account, complete or ``VenueQueryFailed``."""

    @abc.abstractmethod
    def open_orders(self) -> list[VenueOrder]:
        """Every order still working at the venue (all pages), complete or ``VenueQueryFailed``."""

    @abc.abstractmethod
    def recent_orders(self, since: datetime | None = None) -> list[VenueOrder]:
        """Open and finished orders updated since ``since`` (the venue's limit applies)."""

    @abc.abstractmethod
    def fills(self, since: datetime | None = None) -> list[VenueFill]:
        """Executions since ``since`` (all pages)."""

    @abc.abstractmethod
    def balances(self) -> list[VenueBalance]:
        """Cash balances per currency, complete or ``VenueQueryFailed``."""

    @abc.abstractmethod
    def order_by_client_id(self, client_order_id: str) -> VenueOrder:
        """Look one order up by our id; raises ``OrderNotFound`` if the venue never saw it."""

    # live order flow (optional) ------------------------------------------------------------
    def submit(self, request: OrderRequest) -> VenueOrder:
        """Send a recorded intent; a duplicate client order id returns the existing order."""
        raise NotImplementedError(f"{self.broker}: live order flow is not supported")

    def cancel(self, venue_order_id: str) -> None:
        """Ask the venue to cancel an order; the outcome arrives as a ``VenueUpdate``. Raises
        ``OrderNotFound`` for an id the venue does not know, a ``VenueError`` for an order that is
        no longer open, ``NotImplementedError`` when the adapter
        has no live order flow."""
        raise NotImplementedError(f"{self.broker}: live order flow is not supported")

    def replace_order(self, venue_order_id: str, *, qty: Decimal, limit_price: Decimal | None = None,
                      stop_price: Decimal | None = None) -> VenueOrder:
        """Ask the venue to amend open order ``venue_order_id`` to ``qty`` (the whole order's
        quantity, the filled part included) at these prices (every price field the order type
        takes). Returns the venue order that now carries ours: the same one amended in place (the
        simulated venue, IB), its quantity the whole order's, or a new one (Alpaca), its quantity
        its own (what is left to fill) and ``replaces`` naming the old one. Raises
        ``OrderNotFound``, ``ReplaceRejected`` (the venue refused it: the order goes on as it
        was), ``NotImplementedError`` when the adapter has no live order flow; a connection error
        leaves the outcome unknown (the order's state at the venue tells)."""
        raise NotImplementedError(f"{self.broker}: amending orders is not supported")

    def close(self) -> None:
        """Release connections."""

    def snapshot(self, since: datetime | None = None, *, now: datetime) -> VenueSnapshot:
        """Gather every report; a failed query becomes ``Unknown`` with its reason."""

        def attempt(query: Any, *args: Any) -> Any:
            try:
                return query(*args)
            except VenueError as e:
                return Unknown(f"{type(e).__name__}: {e}")

        return VenueSnapshot(
            broker=self.broker,
            venue=self.venue,
            account=self.account,
            taken_at=now,
            positions=attempt(self.positions),
            open_orders=attempt(self.open_orders),
            recent_orders=attempt(self.recent_orders, since),
            fills=attempt(self.fills, since),
            balances=attempt(self.balances),
            since=since,
        )


__all__ = [
    "BrokerAdapter",
    "OPEN_VENUE_STATUSES",
    "OrderNotCancelable",
    "OrderNotFound",
    "OrderRequest",
    "ReplaceRejected",
    "SubmitOutcomeUnknown",
    "Unknown",
    "VenueBalance",
    "VenueConnectionError",
    "VenueError",
    "VenueFill",
    "VenueOrder",
    "VenueOrderStatus",
    "VenuePosition",
    "VenueQueryFailed",
    "VenueSnapshot",
    "VenueUpdate",
]
