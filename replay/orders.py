"""Order replay: the recorded intents of a window sent through the simulated broker against the
recorded bars, and what it would have done compared with what did happen.

How: one ``SimulatedBroker`` per account (seeded, in memory), its clock set to the replayed
time. Items are taken in time order on the chosen axis (``occurred`` by default: market time, a
bar at its close): a bar goes to ``on_bar`` (it matches resting orders over its range and sets
the mark), an intent that passed the risk check is submitted (a market order fills at the mark,
i.e. the last bar's close, or at the next bar's open), a recorded cancel request cancels the
simulated order if it is still working. Intents refused by risk are not sent; they are listed.
On ties, bars come first. A bar is applied at its close, so an order placed inside a bar may
fill against the whole of that bar (documented optimism of this simple matcher).

Compared per order: status, filled quantity, average price, number of fills; per account and
symbol: the net quantity and notional the orders of the window added, recorded vs simulated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..adapters.store import Store
from ..domain.state import TradingState
from .log import Axis, LoggedEvent, ReplayError, check_axis, iso, parse_time, window_events

ZERO = Decimal(0)


@dataclass
class OrderOutcome:
    """One replayed intent: the order, its recorded outcome and its simulated one (None: refused by
    risk, not sent); ``same`` when filled quantity and average price agree."""

    account: str
    client_order_id: str
    symbol: str
    side: str
    order_type: str
    qty: Decimal
    limit_price: Decimal | None
    intent_position: int
    at: datetime
    recorded: dict[str, Any]
    simulated: dict[str, Any] | None  # None: not sent (refused by risk)
    same: bool = False

    def to_json(self) -> dict[str, Any]:
        """The outcome as JSON-ready values."""
        return {"account": self.account, "client_order_id": self.client_order_id, "symbol": self.symbol,
                "side": self.side, "order_type": self.order_type, "qty": self.qty, "limit_price": self.limit_price,
                "intent_position": self.intent_position, "at": iso(self.at), "recorded": self.recorded,
                "simulated": self.simulated, "same": self.same}


@dataclass
class OrderReplay:
    """The result of ``replay_orders``: the window, the bars used, each intent's outcome and the net
    quantity and notional per account and symbol, recorded against simulated."""

    start: datetime
    end: datetime
    axis: Axis
    bars: int
    orders: list[OrderOutcome] = field(default_factory=list)
    positions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def differing(self) -> int:
        """How many intents' simulated outcome differs from the recorded one."""
        return sum(1 for o in self.orders if not o.same)

    def to_json(self) -> dict[str, Any]:
        """The replay as JSON-ready values, with a summary of same and differing orders."""
        return {"start": iso(self.start), "end": iso(self.end), "axis": self.axis, "bars": self.bars,
                "orders": [o.to_json() for o in self.orders], "positions": self.positions,
                "summary": {"orders": len(self.orders), "same": len(self.orders) - self.differing,
                            "differing": self.differing}}

    def __rich__(self) -> Group:
        return render_order_replay(self)


def _recorded_outcome(store: Store, stream_id: str, upto: int | None = None) -> dict[str, Any]:
    """The order's recorded outcome: its own stream folded (to the end of the log)."""
    state = TradingState()
    for r in store.trading.read_stream(stream_id):
        if upto is not None and r.position > upto:
            break
        e = LoggedEvent.from_row((r.position, r.originator_id, r.originator_version, r.topic, r.state, r.recorded_at))
        state.apply(e.position, e.stream_id, e.version, e.type, dict(e.payload), e.recorded_at)
    o = state.orders[stream_id]
    fills = sorted(((q, p) for k, (q, p, _pos) in o.executions.items() if not k.startswith("!")), key=lambda f: f[1])
    return {"status": o.status, "filled_qty": o.filled_qty, "avg_price": o.avg_fill_price, "fills": len(fills),
            "refusal": o.refusal}


def _sim_outcome(order: Any, fills: list[Any]) -> dict[str, Any]:
    notional = sum((f.qty * f.price for f in fills), ZERO)
    filled = sum((f.qty for f in fills), ZERO)
    status = {"open": "acknowledged", "pending": "submitted"}.get(order.status, order.status)
    return {"status": status, "filled_qty": filled, "avg_price": notional / filled if filled else None,
            "fills": len(fills), "venue_order_id": order.venue_order_id}


def _same(rec: dict[str, Any], sim: dict[str, Any] | None) -> bool:
    if sim is None:
        return rec["status"] == "refused"
    if rec["filled_qty"] != sim["filled_qty"]:
        return False
    if rec["avg_price"] is None or sim["avg_price"] is None:
        return rec["avg_price"] is sim["avg_price"]
    return abs(rec["avg_price"] - sim["avg_price"]) <= Decimal("0.000001")


def replay_orders(store: Store, start: datetime | str, end: datetime | str, *, axis: Axis = "occurred",
                  account: str | None = None, seed: int = 0) -> OrderReplay:
    """Replay the order intents recorded in ``start``..``end`` on ``axis`` (those of ``account`` only,
    when given) through a simulated broker seeded with ``seed`` against the window's recorded bars,
    and compare with what was recorded (see the module docstring). Read only. Raises ``ReplayError``
    for a bad axis or time, ``end`` before ``start``, or a window without intents."""
    from ..adapters.brokers.base import OrderRequest
    from ..adapters.brokers.sim import SimulatedBroker

    check_axis(axis)
    start = parse_time(start, "--start")
    end = parse_time(end, "--end")
    if end < start:
        raise ReplayError(f"--end {iso(end)} is before --start {iso(start)}")
    events = window_events(store, start, end, axis=axis)
    intents = [e for e in events if e.type == "OrderIntentRecorded" and (account is None or e.account == account)]
    if not intents:
        raise ReplayError(f"no order intent was recorded between {iso(start)} and {iso(end)} ({axis} axis)"
                          + (f" for account {account}" if account else ""))
    refused = {e.stream_id for e in events if e.type == "IntentRejectedByRisk"}
    wanted = {e.stream_id for e in intents}
    cancels = [e for e in events if e.type == "OrderCancelRequested" and e.stream_id in wanted]
    symbols = {e.payload["symbol"] for e in intents}
    bars = [e for e in window_events(store, start, end, axis=axis, log="market")
            if e.type == "BarRecorded" and e.payload["symbol"] in symbols]
    # refusals recorded after the window still count
    for e in intents:
        if e.stream_id not in refused:
            rows = store.trading.read_stream(e.stream_id)
            if any(r.topic == "IntentRejectedByRisk" for r in rows):
                refused.add(e.stream_id)

    now = [start]
    brokers: dict[str, Any] = {}

    def broker(acct: str) -> Any:
        if acct not in brokers:
            brokers[acct] = SimulatedBroker(account=acct, venue="SIM", seed=seed, clock=lambda: now[0])
        return brokers[acct]

    for e in intents:
        broker(e.payload["account"])
    items: list[tuple[datetime, int, int, LoggedEvent]] = []
    items += [(b.time(axis), 0, b.position, b) for b in bars]
    items += [(e.time(axis), 1, e.position, e) for e in intents]
    items += [(e.time(axis), 2, e.position, e) for e in cancels]
    items.sort(key=lambda i: (i[0], i[1], i[2]))
    venue_ids: dict[str, tuple[str, str]] = {}  # stream -> (account, venue order id)
    for t, kind, _pos, e in items:
        now[0] = t
        d = e.payload
        if kind == 0:
            for b in brokers.values():
                b.on_bar(d["symbol"], d["open"], d["high"], d["low"], d["close"], t)
        elif kind == 1:
            acct = d["account"]
            br = broker(acct)
            if e.stream_id in refused:
                continue
            vo = br.submit(OrderRequest(
                client_order_id=d["client_order_id"], symbol=d["symbol"], side=d["side"],
                order_type=d["order_type"], qty=Decimal(d["qty"]),
                limit_price=Decimal(d["limit_price"]) if d.get("limit_price") else None,
                stop_price=Decimal(d["stop_price"]) if d.get("stop_price") else None,
                time_in_force=d.get("time_in_force", "day")))
            venue_ids[e.stream_id] = (acct, vo.venue_order_id)
        else:
            ref = venue_ids.get(e.stream_id)
            if ref is not None:
                order = brokers[ref[0]].order_by_client_id(d["client_order_id"])
                if order.is_open:
                    brokers[ref[0]].cancel(ref[1])
    out = OrderReplay(start, end, axis, len(bars))
    net: dict[tuple[str, str], dict[str, Decimal]] = {}
    for e in intents:
        d = e.payload
        rec = _recorded_outcome(store, e.stream_id)
        sim = None
        if e.stream_id in venue_ids:
            acct, _vid = venue_ids[e.stream_id]
            order = brokers[acct].order_by_client_id(d["client_order_id"])
            fills = [f for f in brokers[acct].fills() if f.client_order_id == d["client_order_id"]]
            sim = _sim_outcome(order, fills)
        sign = 1 if d["side"] == "buy" else -1
        row = net.setdefault((d["account"], d["symbol"]), {"recorded_qty": ZERO, "simulated_qty": ZERO,
                                                           "recorded_notional": ZERO, "simulated_notional": ZERO})
        row["recorded_qty"] += sign * rec["filled_qty"]
        row["recorded_notional"] += sign * rec["filled_qty"] * (rec["avg_price"] or ZERO)
        if sim is not None:
            row["simulated_qty"] += sign * sim["filled_qty"]
            row["simulated_notional"] += sign * sim["filled_qty"] * (sim["avg_price"] or ZERO)
        out.orders.append(OrderOutcome(
            d["account"], d["client_order_id"], d["symbol"], d["side"], d["order_type"], Decimal(d["qty"]),
            Decimal(d["limit_price"]) if d.get("limit_price") else None, e.position, e.time(axis), rec, sim,
            _same(rec, sim)))
    for (acct, sym), row in sorted(net.items()):
        out.positions.append({"account": acct, "symbol": sym, **row,
                              "qty_difference": row["simulated_qty"] - row["recorded_qty"]})
    for b in brokers.values():
        b.close()
    return out


def _f(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, Decimal):
        return f"{round(v, 6).normalize():f}"
    return str(v)


def render_order_replay(r: OrderReplay) -> Group:
    """A rich rendering of ``r``: one row per intent, then the net positions."""
    t = Table(title=f"Order replay {iso(r.start)} .. {iso(r.end)} ({r.axis} axis, {r.bars} bars): "
                    f"{len(r.orders)} intents, {r.differing} differ", title_justify="left")
    for c in ("account", "client order id", "order", "recorded", "simulated", "same"):
        t.add_column(c)
    for o in r.orders:
        rec = o.recorded
        sim = o.simulated
        t.add_row(o.account, o.client_order_id,
                  f"{o.side} {_f(o.qty)} {o.symbol} {o.order_type}" + (f" @{_f(o.limit_price)}" if o.limit_price else ""),
                  f"{rec['status']} {_f(rec['filled_qty'])} @{_f(rec['avg_price'])} ({rec['fills']} fills)",
                  f"{sim['status']} {_f(sim['filled_qty'])} @{_f(sim['avg_price'])} ({sim['fills']} fills)" if sim
                  else "not sent (refused by risk)",
                  "[green]yes[/]" if o.same else "[bold red]no[/]")
    p = Table(title="Net quantity the window's orders added", title_justify="left")
    for c in ("account", "symbol", "recorded qty", "simulated qty", "difference", "recorded notional",
              "simulated notional"):
        p.add_column(c)
    for row in r.positions:
        p.add_row(row["account"], row["symbol"], _f(row["recorded_qty"]), _f(row["simulated_qty"]),
                  _f(row["qty_difference"]), _f(row["recorded_notional"]), _f(row["simulated_notional"]))
    return Group(t, p, Text(f"{len(r.orders) - r.differing} of {len(r.orders)} orders had the same outcome"))
