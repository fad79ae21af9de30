"""The demo's hot-restart act: an active engine and its standby, each in its own process.

``python -m tradestate.tools.demo.hot engine DB_URL SIM_STATE LEASE_SECONDS`` is the active engine
``hot-engine`` (``connect(..., engine_id=...)``: it takes the engine's lease and renews it): it
trades one order through the simulated venue, then records the intent of a second one, records
its submission and sends it — and the demo SIGKILLs it before it reads the venue's ack and fill:
the order is in flight. It prints ``IN FLIGHT <client order id>`` and waits to be killed.

``python -m tradestate.tools.demo.hot standby DB_URL SIM_STATE LEASE_SECONDS`` is the standby
(``tradestate.standby``): it follows the log, prints ``FOLLOWING``, and once the dead engine's
lease runs out takes over (``LeaseExpired``, ``LeaseAcquired``, recovery reconciling with the
venue), prints ``TAKEOVER <json>``; then, as an engine's order loop would after a restart,
re-sends the in-flight order's intent with the same client order id (a duplicate: not sent
again), drains the venue's late notifications (duplicates too), stops cleanly and prints
``DONE <json>``.

Both use the wall clock: the takeover time they report is real.
"""

from __future__ import annotations

import json
import sys
import time
from decimal import Decimal

from ...adapters.brokers.base import OrderRequest
from ...adapters.brokers.sim import SimulatedBroker
from ...client import IntentResult, TradestateClient, connect
from ...domain.ids import order_stream_id
from ...order_flow import record_update

ENGINE = "hot-engine"
# Its own account at its own simulated venue (its own file; its exec ids, "sim-hot-E1"..., do not
# collide with the earlier acts' "sim-E1"...): the earlier acts' reconciliation is untouched.
ACCOUNT = "demo-hot"
VENUE = "sim-hot"
SEED = 11
FIRST = {"client_order_id": "h-1", "symbol": "MSFT", "side": "buy", "qty": 10, "reference_price": "412.45"}
IN_FLIGHT = {"client_order_id": "h-2", "symbol": "AAPL", "side": "buy", "qty": 25, "reference_price": "188.25"}


def _broker(sim_state: str) -> SimulatedBroker:
    return SimulatedBroker(account=ACCOUNT, venue=VENUE, seed=SEED, state_path=sim_state)


def _intent(client: TradestateClient, order: dict) -> IntentResult:
    """The order's intent exactly as both engines record it (the same content: a re-send of the
    same client order id is a duplicate, not a conflict)."""
    return client.record_intent(ACCOUNT, order["client_order_id"], order["symbol"], order["side"], order["qty"],
                                venue=VENUE, reference_price=order["reference_price"])


def _send(client: TradestateClient, broker: SimulatedBroker, order: dict) -> None:
    coid = order["client_order_id"]
    result = _intent(client, order)
    if not result.accepted:
        raise SystemExit(f"{coid} refused by risk: {result.refusal}")
    client.record_submitted(ACCOUNT, coid)  # on record before it leaves
    broker.submit(OrderRequest(coid, order["symbol"], order["side"], "market", Decimal(order["qty"])))
    print(f"{coid} {order['side']} {order['qty']} {order['symbol']} market sent", flush=True)


def engine(url: str, sim_state: str, lease_seconds: float) -> int:
    """The active engine (see the module docstring); never returns: it waits to be killed."""
    client = connect(url, engine_id=ENGINE, lease_seconds=lease_seconds, venue=VENUE)
    lease = client.lease.lease
    print(f"took the lease of {ENGINE}: epoch {lease.epoch}, {lease_seconds:g} s, renewed every "
          f"{client.lease.renew_seconds:.2g} s", flush=True)
    client.engine_started(ENGINE, version="0.1.0")
    broker = _broker(sim_state)
    broker.stage_cash(Decimal("50000"))
    broker.set_price("MSFT", FIRST["reference_price"])
    broker.set_price("AAPL", IN_FLIGHT["reference_price"])
    _send(client, broker, FIRST)
    for update in broker.updates():
        if update.client_order_id is not None:
            record_update(client, ACCOUNT, update.client_order_id, update)
            print(f"{update.client_order_id} {update.kind} recorded", flush=True)
    _send(client, broker, IN_FLIGHT)  # the venue acks and fills it; this engine never hears of it
    print(f"IN FLIGHT {IN_FLIGHT['client_order_id']} {client.position}", flush=True)
    while True:  # trading on, until the demo pulls the plug
        time.sleep(0.1)


def standby(url: str, sim_state: str, lease_seconds: float) -> int:
    """The standby (see the module docstring); 0 once it took over and stopped cleanly."""
    from ...engines import standby as make_standby

    broker = _broker(sim_state)
    follower = make_standby(url, ENGINE, adapters=[broker], lease_seconds=lease_seconds, venue=VENUE)
    follower.follower.catch_up()
    print(f"FOLLOWING {follower.follower.position}", flush=True)
    takeover = follower.wait(timeout=60)
    if takeover is None:
        print("no takeover within 60 s", flush=True)
        return 1
    ready_at = time.time()
    client, report = takeover.client, takeover.report
    print("TAKEOVER " + json.dumps({
        "ready_at": ready_at, "seconds": takeover.seconds, "previous_epoch": takeover.previous.epoch
        if takeover.previous else 0, "epoch": takeover.lease.epoch, "crashed": report.crashed,
        "ready": report.ready, "discrepancies": report.discrepancies,
        "corrective_events": report.corrective_events}), flush=True)
    # The order loop resumes where the dead engine was: the in-flight order again, same id.
    coid = IN_FLIGHT["client_order_id"]
    again = _intent(client, IN_FLIGHT)
    if again.duplicate:
        print(f"re-sent intent {coid}: already on record at position {again.position} "
              "(a duplicate) → not sent to the venue again", flush=True)
    else:
        _send(client, broker, IN_FLIGHT)
    late = [(u.kind, record_update(client, ACCOUNT, u.client_order_id, u)) for u in broker.updates()
            if u.client_order_id is not None]
    appended = [kind for kind, recorded in late if recorded is not None and not recorded.duplicate]
    print(f"the venue's late notifications for the dead engine: {', '.join(k for k, _ in late) or 'none'} → "
          f"{len(late) - len(appended)} duplicates, {len(appended)} appended", flush=True)
    venue_orders = [o for o in broker.recent_orders() if o.client_order_id == coid]
    order = client.state.orders.get(order_stream_id(ACCOUNT, coid))
    client.engine_stopped(ENGINE, "demo over")
    print("DONE " + json.dumps({
        "duplicate": again.duplicate, "venue_orders": len(venue_orders),
        "late_appended": len(appended), "status": order.status if order else None,
        "filled": str(order.filled_qty) if order else None}), flush=True)
    client.close()
    follower.close()
    return 0


if __name__ == "__main__":
    role, db_url, state_file, seconds = sys.argv[1:5]
    sys.exit((engine if role == "engine" else standby)(db_url, state_file, float(seconds)))
