"""Deterministic trading logs for the instrument properties (pure: no database).

``legacy_log(seed)`` builds, from one seed, a log of the kind every log held before instruments
existed (intents, risk checks, fills with fees in two currencies, cancels, replaces, position and
cash corrections, limits) through ``tests.support.fold.Fold``; ``summary_digest`` is the sha256 of
the folded state's ``summary()`` repr. The digests in ``tests/unit/test_instruments_props.py`` were
taken with the code before instruments existed: the same seeds must fold to the same bytes now.
"""

from __future__ import annotations

import hashlib
import random
from datetime import timedelta
from decimal import Decimal
from uuid import UUID

from tradestate.domain import events as ev
from tradestate.domain.ids import account_stream_id, order_stream_id
from tradestate.domain.state import TradingState

from tests.support.fold import T0, Fold

SYMBOLS = ("AAPL", "MSFT", "ES", "BTC/USD")
ACCOUNTS = ("a1", "a2")
VENUES = ("sim", "ib")


def _uuid(rng: random.Random) -> UUID:
    return UUID(int=rng.getrandbits(128), version=4)


def legacy_log(seed: int, steps: int = 60, fold: Fold | None = None, prefix: str = "o") -> Fold:
    """A folded log of ``steps`` random facts drawn from ``seed`` (same seed, same rows), appended
    to ``fold``'s (client order ids ``<prefix><n>``)."""
    rng = random.Random(seed)
    f = fold or Fold()
    orders: list[tuple[str, str, str]] = []  # (account, coid, side)
    n = 0
    for _ in range(steps):
        f.now = f.now + timedelta(minutes=rng.randint(1, 300))
        roll = rng.random()
        account = rng.choice(ACCOUNTS)
        if roll < 0.35 or not orders:
            n += 1
            coid = f"{prefix}{n}"
            side = rng.choice(("buy", "sell"))
            qty = str(rng.randint(1, 50))
            symbol = rng.choice(SYMBOLS)
            venue = rng.choice(VENUES)
            stream = order_stream_id(account, coid)
            intent = ev.OrderIntentRecorded(
                event_id=_uuid(rng), occurred_at=f.now, account=account, client_order_id=coid, venue=venue,
                symbol=symbol, side=side, order_type="limit", qty=qty,
                limit_price=str(Decimal(rng.randint(100, 100_000)) / 100))
            f.add(stream, intent)
            if rng.random() < 0.1:
                f.add(stream, ev.IntentRejectedByRisk(event_id=_uuid(rng), account=account, client_order_id=coid,
                                                      reasons=["max_order_qty"], detail="qty"))
                continue
            f.add(account_stream_id(account), ev.RiskCheckPassed(
                event_id=_uuid(rng), occurred_at=f.now, account=account, client_order_id=coid, symbol=symbol,
                side=side, qty=qty, trading_day=f.state.trading_day(f.now)))
            orders.append((account, coid, side))
        elif roll < 0.75:
            account, coid, _side = rng.choice(orders)
            stream = order_stream_id(account, coid)
            f.add(stream, ev.OrderFilled(
                event_id=_uuid(rng), occurred_at=f.now, account=account, client_order_id=coid,
                exec_id=f"x{rng.getrandbits(32)}", qty=str(rng.randint(1, 20)),
                price=str(Decimal(rng.randint(100, 100_000)) / 100), fee=str(Decimal(rng.randint(0, 300)) / 100),
                fee_currency=rng.choice(("USD", "USD", "EUR"))))
        elif roll < 0.82:
            account, coid, _side = rng.choice(orders)
            f.add(order_stream_id(account, coid), ev.OrderCancelled(
                event_id=_uuid(rng), occurred_at=f.now, account=account, client_order_id=coid))
        elif roll < 0.87:
            account, coid, _side = rng.choice(orders)
            f.add(order_stream_id(account, coid), ev.OrderReplaced(
                event_id=_uuid(rng), occurred_at=f.now, account=account, client_order_id=coid,
                qty=str(rng.randint(1, 60)), limit_price="10"))
        elif roll < 0.92:
            f.add(account_stream_id(account), ev.PositionCorrected(
                event_id=_uuid(rng), occurred_at=f.now, account=account, venue=rng.choice(VENUES),
                symbol=rng.choice(SYMBOLS), qty_before="0", qty_after=str(rng.randint(-30, 30)),
                avg_cost=rng.choice((None, "12.5"))))
        elif roll < 0.97:
            f.add(account_stream_id(account), ev.CashBalanceRecorded(
                event_id=_uuid(rng), occurred_at=f.now, account=account, venue=rng.choice(VENUES),
                currency=rng.choice(("USD", "EUR")), balance=str(rng.randint(0, 10**7))))
        else:
            f.add(account_stream_id(account), ev.RiskLimitChanged(
                event_id=_uuid(rng), account=account, limit="max_order_notional", value=str(rng.randint(1, 10**6))))
    return f


def summary_digest(state: TradingState) -> str:
    """sha256 of ``repr(state.summary())``: equal digests, byte-equal summaries. Leaves out the
    views added since (``venue_cash``, shown when an account holds cash at two venues; an order's
    ``fees_pending``, the venue-fact work's list of its fills still waiting for their fee): every
    value that was there before must stay byte-equal; these are new, not changed."""
    summary = state.summary()
    for account in summary["accounts"].values():
        account.pop("venue_cash", None)
    for order in summary["orders"].values():
        assert order.pop("fees_pending") == [], "a log from before pending fees has none"
    return hashlib.sha256(repr(summary).encode()).hexdigest()
