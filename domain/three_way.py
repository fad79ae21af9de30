"""Three-way reconciliation: our log, the broker's API and the FIX drop copy, and which one differs.

Pure: the folded log and two venue snapshots in, a report out; no I/O, no events. The two-way
plan (``domain/reconcile.py``) treats the broker's API as the truth. With a third, independent
view (a drop copy receives every ExecutionReport on the account, whatever channel the order
took), a disagreement can be attributed:

- the API and the drop copy agree, our log differs: the log is behind, and the corrective events
  of the two-way plan are right (``correct_log``);
- our log and the drop copy agree, the API differs: the API's answer is wrong or stale, and
  nothing is corrected from it (``alert``);
- our log and the API agree, the drop copy differs: the drop copy is behind or wrong (``alert``,
  nothing to correct in the log);
- all three differ: ``alert``.

What is compared: per order (by client order id; an order without one by its ``ext-`` id) the
status class (``open`` for every working status, else filled/cancelled/rejected/expired), the
filled quantity, and the average fill price (to 6 places) when all three views know it, so a
corrected price is seen; per symbol the signed position quantity.

Absence: views list different windows (the API since ``--since``, the drop copy its session's
day), so an order missing from a view counts as a disagreement only while some view holds it open
(a working order must be listed by every complete view). A finished order listed by two views is
compared between those two: no majority is possible, so the verdict is ``no_tiebreak`` and the
API remains the truth as in a two-way reconciliation when it is one of them (``correct_log``),
otherwise ``alert``. A view whose part could not be read (``Unknown``) makes the row ``unknown``:
the two-way rules apply to it as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal

from .ids import order_stream_id
from .reconcile import external_client_order_id, venue_orders
from .state import OPEN_STATUSES, TradingState
from .venue import OPEN_VENUE_STATUSES, Unknown, VenueOrder, VenueSnapshot

View = Literal["log", "api", "drop_copy"]
VIEWS: tuple[View, ...] = ("log", "api", "drop_copy")
Verdict = Literal["agree", "log_differs", "api_differs", "drop_copy_differs", "all_differ", "no_tiebreak",
                  "unknown"]
Action = Literal["none", "correct_log", "alert", "unknown"]
ACTIONS: dict[str, Action] = {"agree": "none", "log_differs": "correct_log", "api_differs": "alert",
                              "drop_copy_differs": "alert", "all_differ": "alert", "unknown": "unknown"}
ZERO = Decimal(0)
PRICE_PLACES = Decimal("0.000001")


@dataclass(frozen=True)
class OrderFacts:
    """What one view says about one order."""

    status: str  # "open" or the terminal status
    filled_qty: Decimal
    avg_price: Decimal | None  # None: this view does not know it

    def key(self, with_price: bool) -> tuple[Any, ...]:
        base = (self.status, self.filled_qty.normalize())
        return base + ((self.avg_price,) if with_price else ())

    def text(self, with_price: bool) -> str:
        price = f" @ {_plain(self.avg_price)}" if with_price and self.avg_price is not None else ""
        return f"{self.status} {_plain(self.filled_qty)}{price}"


ABSENT = "absent"
Value = OrderFacts | Literal["absent"] | None  # None: the view could not be read


@dataclass(frozen=True)
class Row:
    """One order or position, what each view says, and which view differs."""

    kind: Literal["order", "position"]
    key: str  # client order id, or symbol
    values: dict[str, str | None]  # view -> what it says (None: could not be read)
    verdict: Verdict
    differs: View | None
    action: Action
    symbol: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "symbol": self.symbol, "verdict": self.verdict,
                "differs": self.differs, "action": self.action, **{v: self.values.get(v) for v in VIEWS}}


@dataclass
class ThreeWayReport:
    """Every compared row (agreeing ones included), with helpers for what to do."""

    account: str
    venue: str
    rows: list[Row] = field(default_factory=list)

    @property
    def disagreements(self) -> list[Row]:
        return [r for r in self.rows if r.verdict not in ("agree", "unknown")]

    @property
    def alerts(self) -> list[Row]:
        """Rows where correcting the log from the API would be blind: the API is the odd one out,
        the drop copy is, or no two views agree."""
        return [r for r in self.rows if r.action == "alert"]

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r.verdict] = out.get(r.verdict, 0) + 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"account": self.account, "venue": self.venue, "counts": self.counts,
                "alerts": len(self.alerts), "rows": [r.as_dict() for r in self.rows if r.verdict != "agree"]}


def verdict_of(values: Mapping[str, Any]) -> tuple[Verdict, View | None]:
    """The majority verdict over three comparable values (None: unknown)."""
    if any(values.get(v) is None for v in VIEWS):
        return "unknown", None
    log, api, drop = (values[v] for v in VIEWS)
    if log == api == drop:
        return "agree", None
    if api == drop:
        return "log_differs", "log"
    if log == drop:
        return "api_differs", "api"
    if log == api:
        return "drop_copy_differs", "drop_copy"
    return "all_differ", None


def _plain(value: Decimal) -> str:
    """A decimal without exponent or trailing zeros (10, not 1E+1 or 10.00)."""
    return format(value.normalize(), "f")


def _price(value: Decimal | None) -> Decimal | None:
    if value is None or value <= 0:
        return None
    return value.quantize(PRICE_PLACES, rounding=ROUND_HALF_EVEN)


def _venue_facts(o: VenueOrder) -> OrderFacts:
    status = "open" if o.status in OPEN_VENUE_STATUSES else o.status
    if status == "unknown":
        status = f"unknown:{o.raw_status}"
    avg = o.avg_fill_price
    if (avg is None or avg <= 0) and o.fills:
        qty = sum((f.qty for f in o.fills), ZERO)
        avg = sum((f.qty * f.price for f in o.fills), ZERO) / qty if qty else None
    return OrderFacts(status, o.filled_qty, _price(avg) if o.filled_qty else None)


def _venue_view(snapshot: VenueSnapshot) -> dict[str, OrderFacts] | None:
    if isinstance(snapshot.open_orders, Unknown) or isinstance(snapshot.recent_orders, Unknown):
        return None
    out: dict[str, OrderFacts] = {}
    for o in venue_orders(snapshot).values():
        out[o.client_order_id or external_client_order_id(o.venue_order_id)] = _venue_facts(o)
    return out


def _log_view(state: TradingState, account: str, venue: str) -> dict[str, OrderFacts]:
    out: dict[str, OrderFacts] = {}
    for o in state.orders.values():
        if o.account != account or o.venue != venue:
            continue
        status = "open" if o.status in OPEN_STATUSES else o.status
        avg = o.fill_notional / o.filled_qty if o.filled_qty else None
        out[o.client_order_id] = OrderFacts(status, o.filled_qty, _price(avg))
        if o.status == "new":  # never sent: no venue can know it
            out[o.client_order_id] = OrderFacts("new", o.filled_qty, None)
    return out


def compare_order(values: Mapping[str, Value]) -> tuple[Verdict, View | None, bool, tuple[str, ...]]:
    """The verdict for one order from each view's facts (``ABSENT``: not listed; None: unknown),
    whether prices were compared, and the views that had a say. Our log holds every order, so its
    absence always counts; a venue view's absence counts only while some view holds the order open
    (see the module docstring)."""
    if any(values.get(v) is None for v in VIEWS):
        return "unknown", None, False, VIEWS
    present = {v: f for v, f in values.items() if isinstance(f, OrderFacts)}
    with_price = len(present) == 3 and all(f.avg_price is not None for f in present.values())
    keys: dict[str, Any] = {v: (f.key(with_price) if isinstance(f, OrderFacts) else ABSENT)
                            for v, f in values.items()}
    open_somewhere = any(f.status == "open" for f in present.values())
    considered = tuple(v for v in VIEWS if open_somewhere or v == "log" or values[v] != ABSENT)
    if len(considered) == 3:
        verdict, differs = verdict_of(keys)
        return verdict, differs, with_price, considered
    if len({keys[v] for v in considered}) == 1:
        return "agree", None, with_price, considered
    return "no_tiebreak", None, with_price, considered


def compare_three_ways(state: TradingState, api: VenueSnapshot, drop_copy: VenueSnapshot) -> ThreeWayReport:
    """Compare our log, the broker API's snapshot and the drop copy's for one account at one venue
    (the two snapshots must be of the same account and venue: ``ValueError`` otherwise)."""
    if (api.account, api.venue) != (drop_copy.account, drop_copy.venue):
        raise ValueError(f"three-way: the API snapshot is of {api.account}@{api.venue}, the drop copy's of "
                         f"{drop_copy.account}@{drop_copy.venue}")
    account, venue = api.account, api.venue
    report = ThreeWayReport(account, venue)
    views: dict[str, dict[str, OrderFacts] | None] = {
        "log": _log_view(state, account, venue), "api": _venue_view(api), "drop_copy": _venue_view(drop_copy)}
    listed = set().union(*(set(v) for k, v in views.items() if v is not None and k != "log"))
    log_view = views["log"] or {}
    keys = listed | {k for k, f in log_view.items() if f.status == "open"}
    for key in sorted(keys):
        if log_view.get(key) is not None and log_view[key].status == "new" and key not in listed:
            continue
        values: dict[str, Value] = {}
        for view in VIEWS:
            facts = views[view]
            values[view] = None if facts is None else facts.get(key, ABSENT)
        verdict, differs, with_price, considered = compare_order(values)
        if verdict == "no_tiebreak":  # two views, no majority: the API stays the truth, as two-way
            action: Action = "correct_log" if "api" in considered else "alert"
        else:
            action = ACTIONS[verdict]
        shown = {v: (None if values[v] is None else values[v] if values[v] == ABSENT
                     else values[v].text(with_price)) for v in VIEWS}  # type: ignore[union-attr]
        report.rows.append(Row("order", key, shown, verdict, differs, action))
    _positions(report, state, api, drop_copy)
    return report


def _positions(report: ThreeWayReport, state: TradingState, api: VenueSnapshot, drop_copy: VenueSnapshot) -> None:
    def venue_qty(snapshot: VenueSnapshot) -> dict[str, Decimal] | None:
        if isinstance(snapshot.positions, Unknown):
            return None
        out: dict[str, Decimal] = {}
        for p in snapshot.positions:
            out[p.symbol] = out.get(p.symbol, ZERO) + p.qty
        return out

    ours = {symbol: held.qty for (acct, ven, symbol), held in state.positions.items()
            if acct == report.account and ven == report.venue}
    views = {"log": ours, "api": venue_qty(api), "drop_copy": venue_qty(drop_copy)}
    symbols = set().union(*(set(s for s, q in v.items() if q) for v in views.values() if v is not None))
    for symbol in sorted(symbols):
        values = {v: (None if views[v] is None else views[v].get(symbol, ZERO).normalize())  # type: ignore[union-attr]
                  for v in VIEWS}
        verdict, differs = verdict_of(values)
        report.rows.append(Row("position", symbol, {v: None if q is None else _plain(q) for v, q in values.items()},
                               verdict, differs, ACTIONS[verdict], symbol=symbol))


def order_streams(account: str, snapshots: Iterable[VenueSnapshot]) -> list[str]:
    """The order streams a comparison reads: every order the snapshots list (a finished order may
    not be in memory; the runner loads these before comparing)."""
    coids: set[str] = set()
    for snapshot in snapshots:
        if isinstance(snapshot.open_orders, Unknown) or isinstance(snapshot.recent_orders, Unknown):
            continue
        for o in venue_orders(snapshot).values():
            coids.add(o.client_order_id or external_client_order_id(o.venue_order_id))
    return [order_stream_id(account, c) for c in sorted(coids)]


__all__ = ["ACTIONS", "OrderFacts", "Row", "ThreeWayReport", "VIEWS", "compare_order", "compare_three_ways",
           "order_streams", "verdict_of"]
