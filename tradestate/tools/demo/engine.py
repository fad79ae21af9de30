"""The demo's engine process: trades through the simulated broker until the demo SIGKILLs it.

``python -m tradestate.tools.demo.engine DB_URL SIM_STATE_FILE`` records a start, sends two orders
through the simulated venue (each intent recorded before it is sent, each venue update recorded
as it arrives), then the market moves and the venue fills the resting order — but that fill's
notification is lost (the venue's fault injection), so the log never hears of it. The engine
prints READY and keeps running; the demo kills it with SIGKILL, and recovery has to find the fill.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from ...adapters.brokers.base import OrderRequest, VenueUpdate
from ...adapters.brokers.sim import SimulatedBroker
from ...client import TradestateClient, connect
from ...order_flow import record_update

ACCOUNT = "demo-acct"
ENGINE = "demo-engine"
VENUE = "sim"
T0 = datetime(2026, 11, 20, 15, 5, tzinfo=timezone.utc)
LOST_FILL_ORDER = "o-7"


def describe_update(client: TradestateClient, u: VenueUpdate) -> str:
    """Record one venue update through the live order flow's mapping; a line saying what it was."""
    coid = u.client_order_id
    if coid is None:
        return f"ignored an update for venue order {u.venue_order_id} we never sent"
    record_update(client, ACCOUNT, coid, u)
    if u.kind == "ack":
        return f"{coid} acknowledged by the venue ({u.venue_order_id})"
    if u.kind == "fill" and u.fill is not None:
        f = u.fill
        return f"{coid} filled {f.qty} @ {f.price} ({f.exec_id})"
    return f"{coid} {u.kind}"


def send(client: TradestateClient, broker: SimulatedBroker, coid: str, symbol: str, side: str, qty: int,
         **price: str) -> None:
    """Record an order intent for ``coid`` and, if risk accepts it, record the submission and then send
    it to ``broker`` (a limit order when ``limit_price`` is given, else market). A refused intent is
    printed and not sent."""
    order_type = "limit" if "limit_price" in price else "market"
    result = client.record_intent(ACCOUNT, coid, symbol, side, qty, order_type=order_type, venue=VENUE, **price)
    if not result.accepted:
        print(f"{coid} refused by risk: {result.refusal}", flush=True)
        return
    client.record_submitted(ACCOUNT, coid)  # on record before it leaves: never an order we don't know of
    limit = price.get("limit_price")
    broker.submit(OrderRequest(coid, symbol, side, order_type, Decimal(qty),  # type: ignore[arg-type]
                               limit_price=Decimal(limit) if limit else None))
    print(f"{coid} {side} {qty} {symbol} {order_type} sent", flush=True)


def main(url: str, sim_state: str) -> int:
    """Run the demo engine on the log at ``url`` and the venue file ``sim_state`` (see the module
    docstring); prints ``READY <position>`` once its orders are out and then never returns: it waits
    to be killed."""
    ticks = iter(range(1, 10_000))
    clock = lambda: T0 + timedelta(seconds=5 * next(ticks))  # noqa: E731 - the demo's session clock
    broker = SimulatedBroker(account=ACCOUNT, venue=VENUE, seed=7, state_path=sim_state, clock=clock)
    client = connect(url, clock=clock, checkpoint_every=10)
    client.engine_started(ENGINE, version="0.1.0")
    print(f"engine started (pid, log position {client.position})", flush=True)
    # The venue holds what the morning's session left (those fills happened there too).
    for (account, venue, symbol), held in sorted(client.state.positions.items()):
        if account == ACCOUNT and venue == VENUE and held.qty:
            broker.stage_position(symbol, held.qty, held.avg_cost)
    broker.stage_cash(Decimal("100000"))
    client.reset_breaker(ACCOUNT, "volatility back to normal")
    broker.set_price("MSFT", "412.40")
    broker.set_price("AAPL", "187.60")
    send(client, broker, "o-6", "MSFT", "buy", 20, reference_price="412.40")
    send(client, broker, LOST_FILL_ORDER, "AAPL", "sell", 40, limit_price="188.20")
    for update in broker.updates():
        print(describe_update(client, update), flush=True)
    broker.update_faults(lose_next_fills=1)
    broker.set_price("AAPL", "188.25")  # the resting sell fills at the venue; its notification is lost
    for update in broker.updates():
        print(describe_update(client, update), flush=True)
    print(f"READY {client.position}", flush=True)
    while True:  # trading on, until the demo pulls the plug
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
