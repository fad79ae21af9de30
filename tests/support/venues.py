"""One way to stage a venue's state for the reconciliation scenarios, whatever the venue.

Each venue (the simulated broker, the fake Alpaca server, the fake TWS server) provides a
``VenueControl``: it puts orders, fills, positions and cash *at the venue* (as if they had
happened there, with or without our knowing) and hands out a real ``BrokerAdapter`` connected to
it. The scenario tests (``test_reconcile_scenarios.py``) run once per entry of ``VENUES``.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from decimal import Decimal
from typing import Protocol

from tradestate.adapters.brokers.base import BrokerAdapter

ACCOUNT = "acct-1"  # our account id in every scenario


class VenueControl(Protocol):
    broker: str  # "sim", "alpaca", "ib"
    venue: str  # the venue name our intents carry for this broker

    def add_order(
        self,
        *,
        client_order_id: str | None,
        symbol: str,
        side: str,
        qty: Decimal,
        order_type: str = "limit",
        limit_price: Decimal | None = Decimal("100"),
        status: str = "open",  # open, partially_filled, filled, cancelled, rejected, expired
        fills: list[tuple[str, Decimal, Decimal]] = (),  # (exec id, qty, price)
    ) -> str:
        """Put an order at the venue (as if it had been submitted there); returns its venue order id.
        Its fills also move the venue's position and cash, as a venue's would."""

    def set_position(self, symbol: str, qty: Decimal, avg_cost: Decimal | None = None) -> None:
        """Override the venue's position in symbol (0 removes it)."""

    def set_cash(self, amount: Decimal, currency: str = "USD") -> None: ...

    def fail(self, query: str) -> None:
        """Make one query fail from now on: "positions", "orders", "fills" or "balances"."""

    def adapter(self) -> BrokerAdapter:
        """A real adapter, through the real client library, connected to this venue."""


# name -> "module:function"; the function is a context manager yielding a VenueControl.
VENUES = {
    "sim": "tradestate.adapters.brokers.sim:sim_venue",
    "alpaca": "tests.support.fake_alpaca:alpaca_venue",
    "ib": "tests.support.fake_tws:ib_venue",
}


@contextlib.contextmanager
def open_venue(name: str) -> Iterator[VenueControl]:
    module, function = VENUES[name].split(":")
    with getattr(importlib.import_module(module), function)() as control:
        yield control
