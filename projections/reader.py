"""Reading the read-model tables from Python, with read-your-writes.

    model = client.read_model()          # waits until the tables include this client's writes
    model.positions("acct-1"); model.open_orders(); model.order("acct-1", "ord-42")

The rows are the tables' (see README, "Read models"), decoded exactly as the HTTP API serves
them: decimals and times as Python ``Decimal`` and aware ``datetime``.
"""

from __future__ import annotations

import time
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from ..domain.errors import TradestateError, UnknownOrder
from .api import _columns, _reader
from .projector import PROJECTION
from .tables import OPEN_ORDERS_VIEW, TRACKING_TABLE


class ProjectionBehind(TradestateError, TimeoutError):
    """The read models did not reach the requested log position in time (is `tradestate project`
    running?)."""


def _typed(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "num":
        return value if isinstance(value, Decimal) else Decimal(str(value))
    if kind == "time":
        return datetime.fromisoformat(value) if isinstance(value, str) else value
    if kind == "bool":
        return bool(value)
    if kind == "date":
        return value.isoformat() if isinstance(value, date) else value
    return value


class ReadModel:
    def __init__(self, url: str):
        self._reader = _reader(url)
        self._dialect = self._reader.dialect

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> ReadModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ plumbing
    def position(self) -> int:
        """The last log position the tables include."""
        p = self._dialect.param
        with self._reader.read() as tx:
            if not self._reader.exists(tx, TRACKING_TABLE):
                return 0
            row = tx.one(f"SELECT position FROM {self._dialect.name(TRACKING_TABLE)} WHERE projection = {p}",
                         (PROJECTION,))
        return row[0] if row else 0

    def wait_for(self, position: int, timeout: float = 5.0) -> ReadModel:
        """Return once the tables include ``position``; ``ProjectionBehind`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        delay = 0.001
        while (reached := self.position()) < position:
            if time.monotonic() >= deadline:
                raise ProjectionBehind(
                    f"the read models are at log position {reached}, not yet {position}, after {timeout:g} s: "
                    "is `tradestate project` running against this database?"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        return self

    def _select(self, table: str, where: dict[str, Any], order: str, source: str | None = None) -> list[dict]:
        p = self._dialect.param
        columns = _columns(table)
        clause = " AND ".join(f"{c} = {p}" for c in where)
        sql = f"SELECT {', '.join(c for c, _ in columns)} FROM {self._dialect.name(source or table)}"
        sql += f" WHERE {clause}" if clause else ""
        with self._reader.read() as tx:
            rows = tx.rows(f"{sql} ORDER BY {order}", tuple(where.values()))
        return [{c: _typed(k, v) for (c, k), v in zip(columns, row, strict=True)} for row in rows]

    @staticmethod
    def _filters(**values: Any) -> dict[str, Any]:
        return {k: v for k, v in values.items() if v is not None}

    # ------------------------------------------------------------------------------- queries
    def positions(self, account: str | None = None, symbol: str | None = None) -> list[dict[str, Any]]:
        return self._select("ts_positions", self._filters(account=account, symbol=symbol), "account, venue, symbol")

    def open_orders(self, account: str | None = None) -> list[dict[str, Any]]:
        return self._select("ts_orders", self._filters(account=account), "created_at, stream_id",
                            source=OPEN_ORDERS_VIEW)

    def orders(self, account: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        return self._select("ts_orders", self._filters(account=account, status=status), "created_at, stream_id")

    def order(self, account: str, client_order_id: str) -> dict[str, Any]:
        rows = self._select("ts_orders", {"account": account, "client_order_id": client_order_id}, "stream_id")
        if not rows:
            raise UnknownOrder(account, client_order_id)
        return rows[0]

    def risk_state(self, account: str) -> dict[str, Any]:
        rows = self._select("ts_risk_state", {"account": account}, "account")
        state = rows[0] if rows else {"account": account, "kill_switch": False, "breaker_tripped": False}
        state["limits"] = self._select("ts_risk_usage", {"account": account}, "limit_name, symbol")
        return state

    def daily_stats(self, account: str | None = None) -> list[dict[str, Any]]:
        return self._select("ts_daily_stats", self._filters(account=account), "account, trading_day")

    def equity_curve(self, account: str) -> list[dict[str, Any]]:
        return self._select("ts_equity_curve", {"account": account}, "minute")

    def signals(self, strategy_id: str | None = None) -> list[dict[str, Any]]:
        return self._select("ts_signals", self._filters(strategy_id=strategy_id), "strategy_id, symbol")
