"""Optional live order flow: forward recorded intents to a venue, record the venue's updates.

``forward`` sends only an intent that is in the log and passed the pre-trade check; it records
``OrderSubmitted`` *before* sending, so a crash between the two leaves an order that
reconciliation resolves by looking it up (never one the venue has and the log does not). The
venue answering "duplicate client order id" means it was already submitted: the adapter returns
the existing order. ``replace`` amends an order the same way: the request is recorded with its
pre-trade check before it is sent (a refused one never is), and after a crash between the two
``settle_replaces`` lets the venue's state of the order decide (applied or not), never sending it
twice. ``pump`` turns the venue's stream (acks, fills, cancels, rejects, expiries)
into events through the client, which deduplicates them (a fill by exec id, an ack by venue order
id), so an update seen twice, or also seen by reconciliation, is recorded once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .adapters.brokers.base import (
    BrokerAdapter,
    OrderNotFound,
    OrderRequest,
    ReplaceRejected,
    VenueError,
    VenueOrder,
    VenueUpdate,
)
from .client import Recorded, ReplaceResult, TradestateClient
from .domain.errors import InvalidInput, InvalidTransition, UnknownOrder
from .domain.ids import order_stream_id


@dataclass
class PumpResult:
    """What one ``pump`` did: the updates recorded (with the client's answers) and those left alone."""

    recorded: list[Recorded] = field(default_factory=list)
    ignored: list[VenueUpdate] = field(default_factory=list)  # not ours (outside orders): reconciliation imports them


class OrderFlow:
    """Forwards recorded intents to one broker adapter and records its updates through the client."""

    def __init__(self, client: TradestateClient, adapter: BrokerAdapter):
        self.client = client
        self.adapter = adapter

    def forward(self, account: str, client_order_id: str) -> VenueOrder:
        """Send a recorded, accepted intent to the venue; returns the venue's order."""
        if account != self.adapter.account:
            raise InvalidInput(f"this adapter trades account {self.adapter.account!r}, not {account!r}")
        self.client.catch_up()
        order = self.client.state.orders.get(order_stream_id(account, client_order_id))
        if order is None:
            raise UnknownOrder(account, client_order_id)  # never send what the log does not hold
        if order.external:
            raise InvalidTransition(f"order {client_order_id!r} was imported from the venue; it is not ours to send")
        if order.status == "refused":
            raise InvalidTransition(f"order {client_order_id!r} was refused by the pre-trade check: "
                                    f"{', '.join(order.refusal or [])}")
        if order.status not in ("new", "submitted"):
            raise InvalidTransition(f"order {client_order_id!r} is {order.status}; it was sent already")
        if order.venue != self.adapter.venue:
            raise InvalidInput(f"order {client_order_id!r} is for venue {order.venue!r}, this adapter is "
                               f"{self.adapter.venue!r}")
        self.client.record_submitted(account, client_order_id)  # durable before anything leaves
        request = OrderRequest(
            client_order_id=client_order_id, symbol=order.symbol, side=order.side,  # type: ignore[arg-type]
            order_type=order.order_type, qty=order.qty, limit_price=order.limit_price,
            stop_price=order.stop_price, time_in_force=order.time_in_force,
        )
        # A connection error here is ambiguous: the order stays submitted; reconciliation's lookup
        # by client order id resolves it. It is never assumed rejected.
        try:
            venue_order = self.adapter.submit(request)
        except VenueError as e:
            if getattr(e, "refused_by_venue", False):  # a definite "no" (not a lost answer): nothing works there
                self.client.record_reject(account, client_order_id, str(e))
            raise
        if venue_order.status == "rejected":
            self.client.record_reject(account, client_order_id, str(venue_order.raw.get("reject_reason", "")
                                                                    if venue_order.raw else ""))
        else:
            self.client.record_ack(account, client_order_id, venue_order.venue_order_id)
        return venue_order

    def replace(self, account: str, client_order_id: str, *, qty: Decimal | int | str | None = None,
                limit_price: Decimal | int | str | None = None, stop_price: Decimal | int | str | None = None,
                reference_price: Decimal | int | str | None = None, replace_id: str | None = None,
                reason: str = "") -> ReplaceResult:
        """Amend an order of ours at the venue through the pre-trade check: record the request
        (``client.request_replace``: durable, risk-checked) and, only if it passed, send it
        (``send_replace``). A refused amendment is returned as recorded, never sent; a request
        found already recorded (a retry) is sent only while it is still pending and the venue does
        not show it applied."""
        if account != self.adapter.account:
            raise InvalidInput(f"this adapter trades account {self.adapter.account!r}, not {account!r}")
        result = self.client.request_replace(account, client_order_id, qty=qty, limit_price=limit_price,
                                             stop_price=stop_price, reference_price=reference_price,
                                             replace_id=replace_id, reason=reason)
        if result.accepted:
            self.send_replace(account, client_order_id)
        return result

    def send_replace(self, account: str, client_order_id: str) -> Recorded | None:
        """Send the order's pending amendment (recorded by ``request_replace``) to the venue, once:
        when the venue's order already shows it (a retry after a crash between record and send),
        nothing is sent and the confirmation is recorded; when the venue replaced it by a new
        order (Alpaca), nothing is sent and reconciliation records the replacement. The venue's answer is recorded: the
        confirmation (``OrderReplaced``) or its refusal (``OrderReplaceRefused`` by the venue).
        None: nothing pending. A connection error leaves it pending (``settle_replaces`` or
        reconciliation tells later); it is never assumed refused."""
        self.client.catch_up()
        order = self.client.state.orders.get(order_stream_id(account, client_order_id))
        if order is None:
            raise UnknownOrder(account, client_order_id)
        if order.replace_pending is None or not order.is_open:
            return None
        rid = order.replace_pending
        entry = order.replaces[rid]  # type: ignore[index]
        want = entry["request"]
        if order.venue_order_id is None:
            raise InvalidTransition(f"order {client_order_id!r} has no venue order id yet; amend it once acknowledged")
        venue_now = self._venue_order(order)
        if venue_now is not None and _shows(venue_now, order.filled_qty, entry):
            return record_update(self.client, account, client_order_id, _replaced(client_order_id, venue_now))
        if venue_now is not None and venue_now.status == "replaced":
            return None  # replaced by a new venue order already (Alpaca): reconciliation reads the chain
        try:
            venue_order = self.adapter.replace_order(order.venue_order_id, qty=_dec(want["qty"]),
                                                     limit_price=_opt(want.get("limit_price")),
                                                     stop_price=_opt(want.get("stop_price")))
        except (ReplaceRejected, OrderNotFound) as e:
            return self.client.record_replace_refused(account, client_order_id, rid, str(e))
        if venue_order.replaces and str(venue_order.raw_status).lower() in NOT_YET_LIVE:
            # Alpaca: a 200 "does NOT guarantee the existing open order has been replaced"; the
            # replacement is confirmed by its ``new`` (stream, reconciliation) or refused
            return None
        if venue_order.replaces:
            # a new venue order for what is left: ours is the quantity asked for (the adapter
            # took off what the venue filled), not our log's filled part (it may lag) + the rest
            return self.client.record_replaced(account, client_order_id, _dec(want["qty"]),
                                               limit_price=venue_order.limit_price,
                                               stop_price=venue_order.stop_price,
                                               venue_order_id=venue_order.venue_order_id,
                                               occurred_at=venue_order.updated_at)
        return record_update(self.client, account, client_order_id, _replaced(client_order_id, venue_order))

    def settle_replaces(self) -> list[Recorded]:
        """After a restart: settle every amendment of this adapter's account left pending by a
        crash between its record and its send, by the venue's state of the order: applied there
        (``OrderReplaced``), else not sent (``OrderReplaceRefused`` by the venue, reason
        "not_at_venue": ask again if still wanted); never sent a second time. An order the venue
        cannot be asked about stays pending. Call it before the engine trades again."""
        self.client.catch_up()
        account = self.adapter.account
        out: list[Recorded] = []
        for order in list(self.client.state.account(account).open_orders.values()):
            if order.replace_pending is None or order.venue != self.adapter.venue:
                continue
            venue_now = self._venue_order(order)
            if venue_now is None:
                continue
            if _shows(venue_now, order.filled_qty, order.replaces[order.replace_pending]):  # type: ignore[index]
                recorded = record_update(self.client, account, order.client_order_id,
                                         _replaced(order.client_order_id, venue_now))
            elif venue_now.status == "replaced" or str(venue_now.raw_status).lower() == "pending_replace":
                continue  # replaced by a new order (reconciliation reads the chain) or being replaced
            else:
                recorded = self.client.record_replace_refused(
                    account, order.client_order_id, order.replace_pending,
                    "not_at_venue: the venue's order does not show the amendment (not sent before a restart)")
            if recorded is not None:
                out.append(recorded)
        return out

    def _venue_order(self, order: Any) -> VenueOrder | None:
        """The venue's order carrying ``order`` as our log knows it: by its venue order id where
        the adapter looks orders up by it (Alpaca, IB: a replacement has a client order id of its
        own), else by our client order id; None when the venue does not know it or cannot say."""
        by_id = getattr(self.adapter, "order_by_venue_id", None)
        try:
            if by_id is not None and order.venue_order_id is not None:
                return by_id(order.venue_order_id)
            return self.adapter.order_by_client_id(order.client_order_id)
        except OrderNotFound:
            return None
        except VenueError:
            return None  # unknown for now: nothing is decided on it

    def reconcile_continuously(self, *, every: float = 30.0, adapter: BrokerAdapter | None = None,
                               **options: Any) -> Any:
        """Start checking this flow's account against the venue while it trades: a
        ``tradestate.reconcile.ReconcileLoop`` (a daemon thread; ``stop()`` it) running
        ``reconcile_follow`` every ``every`` seconds with ``options`` (``stuck``, ``strict``,
        ``dry_run``, ``on_round``...). It never corrects on a partial or failed venue answer, and it
        holds the writer's lock only to plan and append, as any append does: ``forward`` and ``pump``
        go on meanwhile. ``adapter``: a second adapter on the same account for the loop's queries
        (default: this flow's own, which must then be safe to call from two threads)."""
        from .reconcile import ReconcileLoop

        return ReconcileLoop(self.client, [adapter or self.adapter], every=every, **options).start()

    def pump(self) -> PumpResult:
        """Record every update the venue's stream has delivered since the last call."""
        result = PumpResult()
        account = self.adapter.account
        for update in self.adapter.updates():
            recorded = self._record(account, update)
            if recorded is None:
                result.ignored.append(update)
            else:
                result.recorded.append(recorded)
        return result

    def _record(self, account: str, u: VenueUpdate) -> Recorded | None:
        coid = u.client_order_id
        if not coid or self.client.state.orders.get(order_stream_id(account, coid)) is None:
            self.client.catch_up()
            if not coid or self.client.state.orders.get(order_stream_id(account, coid)) is None:
                return None
        return record_update(self.client, account, coid, u)


def record_update(client: TradestateClient, account: str, client_order_id: str, u: VenueUpdate) -> Recorded | None:
    """Record one venue update of order ``client_order_id`` as the lifecycle event it is: an ack
    (venue order id), a fill (exec id, qty, price, fee and its currency, venue order id; its own
    time, else the update's; its fee pending when the venue reports it apart; ``FillCorrected``
    when it corrects an execution reported before), a fee reported after its fill (``FeeCharged``
    by exec id), a cancel, a reject, an expiry; a "replaced" that names the venue order now
    carrying ours (``u.order``): ``OrderReplaced`` with its prices and, as quantity, what ours has
    filled plus the new venue order's quantity (the venue fills the replacement as an order of its
    own). Returns what the client answered (deduplicated as the client does); None for an update
    that records nothing (a "replaced" without the new order, one already recorded or of an order
    no longer open: reconciliation says why; a fill update without a fill)."""
    at: dict[str, Any] = {"occurred_at": u.occurred_at}
    if u.kind == "ack":
        return client.record_ack(account, client_order_id, u.venue_order_id, **at)
    if u.kind == "fill" and u.fill is not None:
        f = u.fill
        if f.corrects:  # replaces an execution the venue reported before (IB: .01 -> .02)
            return client.record_fill_correction(account, client_order_id, f.exec_id, f.corrects, f.qty, f.price,
                                                 fee=f.fee, fee_currency=f.fee_currency, fee_pending=f.fee_pending,
                                                 venue_order_id=f.venue_order_id,
                                                 occurred_at=f.occurred_at or u.occurred_at)
        return client.record_fill(account, client_order_id, f.exec_id, f.qty, f.price, fee=f.fee,
                                  fee_currency=f.fee_currency, venue_order_id=f.venue_order_id,
                                  occurred_at=f.occurred_at or u.occurred_at, fee_pending=f.fee_pending)
    if u.kind == "fee" and u.fill is not None:  # the fee of a fill recorded with its fee pending
        f = u.fill
        order = client.state.orders.get(order_stream_id(account, client_order_id))
        if order is None:
            return None
        # a fee in the pair's base asset (BTC of BTC/USDT: a crypto venue's fee on a buy) is taken in kind
        in_kind = "/" in order.symbol and f.fee_currency == order.symbol.split("/")[0]
        return client.record_fee(account, order.venue, f.exec_id, f.fee, currency=f.fee_currency, symbol=order.symbol,
                                 in_kind=in_kind, exec_id=f.exec_id, client_order_id=client_order_id,
                                 occurred_at=f.occurred_at or u.occurred_at,
                                 reason="the venue's fee, reported after the fill")
    if u.kind == "cancelled":
        return client.record_cancelled(account, client_order_id, u.reason, **at)
    if u.kind == "rejected":
        return client.record_reject(account, client_order_id, u.reason, **at)
    if u.kind == "expired":
        return client.record_expired(account, client_order_id, **at)
    if u.kind == "replace_rejected":  # the venue refused our amendment: the pending request is refused
        order = client.state.orders.get(order_stream_id(account, client_order_id))
        if order is None or order.replace_pending is None:
            return None
        return client.record_replace_refused(account, client_order_id, order.replace_pending,
                                             f"venue_rejected: {u.reason}", **at)
    if u.kind == "replaced" and u.order is not None:
        order = client.state.orders.get(order_stream_id(account, client_order_id))
        if order is None or not order.is_open:
            return None
        if order.venue_order_id == u.venue_order_id and u.order.replaces:
            return None  # a replacement (Alpaca) ours moved to already: its qty is only what was left
        if order.venue_order_id == u.venue_order_id:
            # amended in place (IB, the simulated venue): the venue order is the whole order; the
            # same values as ours: recorded already (a replacement's too, once its id is ours)
            if (u.order.qty, u.order.limit_price, u.order.stop_price) == (order.qty, order.limit_price,
                                                                          order.stop_price):
                return None
            qty = u.order.qty
        else:
            qty = order.filled_qty + u.order.qty
        return client.record_replaced(account, client_order_id, qty,
                                      limit_price=u.order.limit_price, stop_price=u.order.stop_price,
                                      venue_order_id=u.venue_order_id, **at)
    return None


# a replacement the venue has taken but not yet put to work (Alpaca's ``pending_new``/``accepted``)
NOT_YET_LIVE = frozenset({"pending_new", "accepted", "accepted_for_bidding"})


def _dec(value: Any) -> Decimal:
    return Decimal(value)


def _opt(value: Any) -> Decimal | None:
    return None if value is None else Decimal(value)


def _shows(vo: VenueOrder, our_filled: Decimal, entry: dict[str, Any]) -> bool:
    """Whether the venue's order ``vo`` (the one carrying ours) shows the amendment ``entry`` (an
    order's ``replaces`` entry: its ``request`` in our terms; after a split, also the venue's
    restatement of the whole order, filled part included, ``restated_qty``)."""
    if vo.status == "replaced":  # carried on by another order (its chain is reconciliation's to read)
        return False
    want = entry["request"]
    qty = vo.qty if not vo.replaces else our_filled + vo.qty  # a replacement works what is left
    quantities = {_dec(want["qty"])}
    if entry.get("restated_qty") is not None:
        quantities.add(_dec(entry["restated_qty"]))
    return qty in quantities and (vo.limit_price, vo.stop_price) == (_opt(want.get("limit_price")),
                                                                      _opt(want.get("stop_price")))


def _replaced(client_order_id: str, vo: VenueOrder) -> VenueUpdate:
    return VenueUpdate(kind="replaced", client_order_id=client_order_id, venue_order_id=vo.venue_order_id,
                       occurred_at=vo.updated_at, order=vo)


__all__ = ["OrderFlow", "PumpResult", "record_update"]
