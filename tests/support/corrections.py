"""Logs for the fill-correction properties: the same fills folded once with one fill already
corrected, and once as recorded followed by the venue's ``FillCorrected`` of it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

from hypothesis import strategies as st

from tests.support.fold import T0, Fold
from tradestate.domain import events as ev

# (which order: its side by its name, qty, price)
FILL = st.tuples(st.sampled_from(["b1", "b2", "s1"]), st.integers(1, 30), st.integers(90, 110))


def fees_of(fills: list) -> list[str]:
    """A distinct fee per fill (0, 0.1, 0.2 ...)."""
    return [str(Decimal(i) / 10) for i in range(len(fills))]


def fill_log(fills: list, fees: list[str], *, setup: Callable[[Fold], None] = lambda f: None,
             symbol: str | None = None, corrected: tuple[int, int, int, str | None] | None = None) -> Fold:
    """Orders b1, b2 (buys) and s1 (a sell) of 1,000 and ``fills`` on them five hours apart (over
    several trading days), exec ids ``x<i>.01``; with ``corrected`` = (index, qty, price, fee), that
    fill is recorded as its correction ``x<i>.02`` instead (none at all for qty 0: a bust)."""
    f = Fold()
    setup(f)
    extra = {"symbol": symbol} if symbol else {}
    for coid in ("b1", "b2", "s1"):
        f.intent(coid, "sell" if coid.startswith("s") else "buy", "1000", **extra)
    for i, (coid, qty, price) in enumerate(fills):
        f.now = T0 + timedelta(hours=i * 5)
        if corrected is not None and i == corrected[0]:
            _, new_qty, new_price, new_fee = corrected
            if new_qty:
                f.fill(coid, f"x{i}.02", str(new_qty), str(new_price), fee=new_fee or fees[i])
            continue
        f.fill(coid, f"x{i}.01", str(qty), str(price), fee=fees[i])
    return f


def correct(f: Fold, fills: list, fees: list[str], pick: int, new_qty: int, new_price: int,
            new_fee: str | None) -> None:
    """Append the venue's ``FillCorrected`` of fill ``pick`` (``x<pick>.01`` -> ``x<pick>.02``)."""
    coid, qty, price = fills[pick]
    f.now += timedelta(minutes=3)
    f.order_event(ev.FillCorrected, coid, corrected_exec_id=f"x{pick}.01", exec_id=f"x{pick}.02",
                  qty=str(new_qty), price=str(new_price), previous_qty=str(qty), previous_price=str(price),
                  previous_fee=fees[pick], fee=new_fee)
