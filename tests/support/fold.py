"""A fold of hand-built events, as a store would hold and replay them (pure: no database)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Any
from uuid import uuid4

import orjson

from tradestate.domain import events as ev
from tradestate.domain.ids import account_stream_id, order_stream_id
from tradestate.domain.state import TradingState

T0 = datetime(2024, 3, 5, 15, 0, tzinfo=timezone.utc)  # 10:00 in New York, a Tuesday


class Fold:
    """Builds events and folds their stored form into a TradingState at increasing positions."""

    def __init__(self, exchange_tz: str = "America/New_York"):
        self.state = TradingState(exchange_tz)
        self.pos = 0
        self.versions: Counter[str] = Counter()
        self.now = T0
        self.rows: list[tuple[int, str, int, str, bytes, datetime]] = []  # what a store would hold

    # plumbing -----------------------------------------------------------------------------
    def raw(self, stream: str, type_name: str, payload: dict[str, Any], recorded_at: datetime | None = None) -> int:
        self.pos += 1
        self.versions[stream] += 1
        # Round-trip through JSON bytes, as the store does.
        stored = orjson.dumps(payload)
        at = recorded_at or self.now
        self.rows.append((self.pos, stream, self.versions[stream], type_name, stored, at))
        self.state.apply(self.pos, stream, self.versions[stream], type_name, orjson.loads(stored), at)
        return self.pos

    def add(self, stream: str, event: ev.Event, recorded_at: datetime | None = None) -> int:
        return self.raw(stream, event.type_name(), event.to_payload(), recorded_at)

    # orders -----------------------------------------------------------------------------------
    def intent(self, coid: str, side: str = "buy", qty: str = "10", *, account: str = "acct",
               symbol: str = "AAPL", venue: str = "sim", order_type: str = "market",
               at: datetime | None = None, **extra: Any) -> str:
        stream = order_stream_id(account, coid)
        self.add(stream, ev.OrderIntentRecorded(
            event_id=uuid4(), occurred_at=at or self.now, account=account, client_order_id=coid,
            venue=venue, symbol=symbol, side=side, order_type=order_type, qty=qty, **extra))
        return stream

    def order_event(self, cls: type[ev.OrderEvent], coid: str, *, account: str = "acct",
                    at: datetime | None = None, **fields: Any) -> int:
        return self.add(order_stream_id(account, coid), cls(
            event_id=uuid4(), occurred_at=at or self.now, account=account, client_order_id=coid, **fields))

    def fill(self, coid: str, exec_id: str, qty: str, price: str, *, fee: str = "0",
             account: str = "acct", at: datetime | None = None, **fields: Any) -> int:
        return self.order_event(ev.OrderFilled, coid, account=account, at=at, exec_id=exec_id,
                                qty=qty, price=price, fee=fee, **fields)

    def account_event(self, cls: type[ev.AccountEvent], account: str = "acct",
                      recorded_at: datetime | None = None, **fields: Any) -> int:
        return self.add(account_stream_id(account), cls(event_id=uuid4(), account=account, **fields), recorded_at)

    def limit(self, name: str, value: str | None, *, account: str = "acct", symbol: str | None = None) -> int:
        return self.account_event(ev.RiskLimitChanged, account, limit=name, value=value, symbol=symbol)

    # views ------------------------------------------------------------------------------------
    def order(self, coid: str, account: str = "acct"):
        return self.state.orders[order_stream_id(account, coid)]

    def position(self, symbol: str = "AAPL", account: str = "acct", venue: str = "sim"):
        return self.state.position_of(account, venue, symbol)

    def acct(self, account: str = "acct"):
        return self.state.account(account)


def fill_v1_payload() -> dict[str, Any]:
    return {
        "event_id": str(uuid4()),
        "occurred_at": "2024-03-05T15:00:00Z",
        "correlation_id": None,
        "causation_id": None,
        "account": "acct",
        "client_order_id": "o1",
        "exec_id": "x-v1",
        "qty": "4",
        "price": "100.5",
        "fee": "0.40",
        "venue_order_id": None,
        "_v": 1,
    }
