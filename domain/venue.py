"""What a venue reports, in our terms: the venue-neutral reports reconciliation compares with
the log. Plain data (no I/O); the broker adapters build them, the pure reconciliation plan reads
them. Amounts are ``Decimal`` from the venue's raw strings; times are timezone-aware UTC. A part
whose query failed is ``Unknown``: never read as empty."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

# Our statuses (domain/state.py) plus what venues say that we have no word for ("unknown").
VenueOrderStatus = Literal[
    "pending",  # accepted by the venue, not yet working (pending_new, PreSubmitted, ...)
    "open",  # working, nothing filled
    "partially_filled",
    "filled",
    "cancelled",
    "rejected",
    "expired",
    "replaced",  # finished at the venue: a new venue order (``VenueOrder.replaces``) carries on
    "unknown",  # a status this adapter does not know: reported as is in ``raw_status``
]
OPEN_VENUE_STATUSES = frozenset({"pending", "open", "partially_filled"})


@dataclass(frozen=True)
class VenueFill:
    """One execution as the venue reports it."""

    exec_id: str  # the venue's execution id (IB: execId; Alpaca: activity id)
    client_order_id: str | None  # ours, when the order carried it (Alpaca client_order_id, IB orderRef)
    venue_order_id: str  # the venue's durable order key (Alpaca order id, IB permId)
    symbol: str
    side: Literal["buy", "sell"]
    qty: Decimal
    price: Decimal
    fee: Decimal = Decimal(0)
    fee_currency: str = "USD"
    occurred_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)
    # execution ids this one corrects (replaces), oldest first (IB: the same execId up to its last '.')
    corrects: tuple[str, ...] = ()
    fee_pending: bool = False  # the venue reports the fee apart and it has not come (``fee`` is 0)


@dataclass(frozen=True)
class VenueOrder:
    """One order as the venue reports it, with its fills when the venue lists them."""

    venue_order_id: str
    client_order_id: str | None
    symbol: str
    side: Literal["buy", "sell"]
    order_type: str  # market, limit, stop, stop_limit
    qty: Decimal
    filled_qty: Decimal
    status: VenueOrderStatus
    raw_status: str  # exactly what the venue said
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    avg_fill_price: Decimal | None = None
    time_in_force: str = "day"
    submitted_at: datetime | None = None
    updated_at: datetime | None = None
    fills: tuple[VenueFill, ...] = ()  # when the venue reports them with the order
    raw: dict[str, Any] = field(default_factory=dict, compare=False)
    # Links between venue orders (None when the venue reports none):
    replaces: str | None = None  # the venue order id this order replaced (a cancel/replace)
    parent_venue_order_id: str | None = None  # a bracket/OCO/OTO leg: the order it belongs to
    notional: Decimal | None = None  # an amount order: ``qty`` is what filled until the venue states one

    @property
    def is_open(self) -> bool:
        """True while the venue may still fill the order."""
        return self.status in OPEN_VENUE_STATUSES


@dataclass(frozen=True)
class VenuePosition:
    """A position as the venue reports it (signed quantity)."""

    symbol: str
    qty: Decimal  # signed: negative is short
    avg_cost: Decimal | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class VenueBalance:
    """Cash in one currency as the venue reports it."""

    currency: str
    cash: Decimal
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class VenueFee:
    """A fee the venue posted apart from its fills (Alpaca's crypto ``CFEE`` activity, posted at
    the end of the day). ``in_kind``: taken in the asset of the position ``symbol`` (``amount``
    units of ``currency``, e.g. BTC), not in cash."""

    fee_id: str  # the venue's id of the posting (activity id)
    amount: Decimal  # positive: what the account paid
    currency: str
    symbol: str | None = None
    in_kind: bool = False
    occurred_at: datetime | None = None  # the day it covers
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class VenueVariationMargin:
    """A futures position's daily settlement as the venue posted it: ``amount`` of ``currency``
    moved to (positive) or from the account's cash for ``qty`` contracts of ``symbol`` marked at
    ``settlement_price`` on ``business_date`` (ISO date)."""

    symbol: str
    business_date: str
    settlement_price: Decimal
    qty: Decimal  # signed, as held at the settlement
    amount: Decimal
    currency: str = "USD"
    venue_ref: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Unknown:
    """A part of a snapshot whose query failed: reconciliation must not treat it as empty."""

    reason: str


@dataclass(frozen=True)
class VenueSnapshot:
    """Everything one reconciliation looks at, gathered from one venue account."""

    broker: str  # "sim", "alpaca", "ib"
    venue: str  # the venue name our events carry (OrderIntentRecorded.venue)
    account: str  # our account id
    taken_at: datetime
    positions: list[VenuePosition] | Unknown
    open_orders: list[VenueOrder] | Unknown
    recent_orders: list[VenueOrder] | Unknown  # open and finished orders since ``since``
    fills: list[VenueFill] | Unknown  # executions since ``since``
    balances: list[VenueBalance] | Unknown
    since: datetime | None = None
    fees: list[VenueFee] | Unknown = field(default_factory=list)  # fees posted apart (venues that do)
    # symbol -> the highest rate of a fee the venue takes at each execution from what the account
    # receives (a buy: the asset; a sell: the quote currency) but posts only later as a ``VenueFee``
    # (Alpaca crypto: 25 bps, posted at the end of the day). Until then the venue's position and
    # cash differ from the fills by that fee.
    unposted_fee_rates: dict[str, Decimal] = field(default_factory=dict)
    # venues that report each execution's fee apart and may never send it to this connection (IB's
    # commissionReport reaches only the placing client and the master client id): how long a fee
    # may stay pending before reconciliation reports it missing (None: no bound), and the largest
    # fee per execution as a share of its notional (None: a cash difference is never put down to
    # pending fees)
    fee_report_wait: timedelta | None = None
    max_fee_rate: Decimal | None = None
    # the daily settlements of futures positions the venue posted (None: the venue does not
    # report them, so its cash may have moved by settlements the log cannot see)
    variation_margins: list[VenueVariationMargin] | Unknown | None = None
    # currency -> the most the venue has already deducted from the cash in fees it posts only later
    # (Alpaca's regulatory fees on sales: accrued intraday, posted as ``FEE`` at the end of the day)
    unposted_cash_fees: dict[str, Decimal] = field(default_factory=dict)

    def raw_report(self) -> dict[str, Any]:
        """The venue's raw data this snapshot was built from (stored with the reconciliation)."""

        def part(value: Any) -> Any:
            if isinstance(value, Unknown):
                return {"unknown": value.reason}
            return [item.raw for item in value]

        return {
            "broker": self.broker,
            "venue": self.venue,
            "account": self.account,
            "taken_at": self.taken_at.isoformat(),
            "since": self.since.isoformat() if self.since else None,
            "positions": part(self.positions),
            "open_orders": part(self.open_orders),
            "recent_orders": part(self.recent_orders),
            "fills": part(self.fills),
            "balances": part(self.balances),
            **({"fees": part(self.fees)} if self.fees else {}),  # only venues that post fees apart
            **({"variation_margins": part(self.variation_margins)} if self.variation_margins is not None else {}),
        }
