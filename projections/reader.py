"""Reading the read-model tables from Python, with read-your-writes.

    model = client.read_model()          # waits until the tables include this client's writes
    model.positions("acct-1"); model.open_orders(); model.order("acct-1", "ord-42")

The rows are the tables' (see README, "Read models"), decoded exactly as the HTTP API serves
them (``projections/queries.py``), then typed: decimals ``Decimal``, times aware UTC ``datetime``.
This module never imports the web framework.
"""

from __future__ import annotations

import time
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from ..domain.errors import TradestateError, UnknownOrder
from . import queries
from .tables import OPEN_ORDERS_VIEW


class ProjectionBehind(TradestateError, TimeoutError):
    """The read models did not reach the requested log position in time (is `tradestate project`
    running?)."""


def _typed(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "num":
        return Decimal(queries._num(value))  # type: ignore[arg-type] - not None here
    if kind == "time":
        return queries._time(value)
    if kind == "bool":
        return bool(value)
    if kind == "date":
        return value.isoformat() if isinstance(value, date) else value
    return value


class ReadModel:
    """Read-only queries on the read-model tables of the database at ``url``; each call reads one
    consistent snapshot. ``InvalidInput`` for an unsupported URL; ``DatabaseUnavailable`` (from
    ``projections.queries``) when the database cannot be read. Close it (or use ``with``)."""

    def __init__(self, url: str):
        self._reader = queries.open_reader(url)

    def close(self) -> None:
        """Release the reader's connections; queries fail afterwards."""
        self._reader.close()

    def __enter__(self) -> ReadModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ plumbing
    def position(self) -> int:
        """The last log position the tables include."""
        with self._reader.read() as tx:
            return queries.projection_position(tx)

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
        columns = queries._columns(table)
        with self._reader.read() as tx:
            rows = queries.table_rows(tx, table, where, order, source)
        return [{c: _typed(k, v) for (c, k), v in zip(columns, row, strict=True)} for row in rows]

    @staticmethod
    def _filters(**values: Any) -> dict[str, Any]:
        return {k: v for k, v in values.items() if v is not None}

    # ------------------------------------------------------------------------------- queries
    def positions(self, account: str | None = None, symbol: str | None = None) -> list[dict[str, Any]]:
        """Positions, optionally of one account and/or symbol, by account, venue, symbol."""
        return self._select("ts_positions", self._filters(account=account, symbol=symbol), "account, venue, symbol")

    def open_orders(self, account: str | None = None) -> list[dict[str, Any]]:
        """Open orders (new, submitted, acknowledged, partially filled), oldest first."""
        return self._select("ts_orders", self._filters(account=account), "created_at, stream_id",
                            source=OPEN_ORDERS_VIEW)

    def orders(self, account: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Orders, optionally of one account and/or status, oldest first."""
        return self._select("ts_orders", self._filters(account=account, status=status), "created_at, stream_id")

    def order(self, account: str, client_order_id: str) -> dict[str, Any]:
        """One order; ``UnknownOrder`` when the tables do not hold it."""
        rows = self._select("ts_orders", {"account": account, "client_order_id": client_order_id}, "stream_id")
        if not rows:
            raise UnknownOrder(account, client_order_id)
        return rows[0]

    def risk_state(self, account: str) -> dict[str, Any]:
        """The account's risk state with ``limits`` (its rows of ts_risk_usage); an account
        without a row reads as kill switch and breaker off."""
        rows = self._select("ts_risk_state", {"account": account}, "account")
        state = rows[0] if rows else {"account": account, "kill_switch": False, "breaker_tripped": False}
        state["limits"] = self._select("ts_risk_usage", {"account": account}, "limit_name, symbol")
        return state

    def daily_stats(self, account: str | None = None) -> list[dict[str, Any]]:
        """Daily statistics by account and trading day."""
        return self._select("ts_daily_stats", self._filters(account=account), "account, trading_day")

    def equity_curve(self, account: str) -> list[dict[str, Any]]:
        """The account's equity points, oldest first."""
        return self._select("ts_equity_curve", {"account": account}, "minute")

    def signals(self, strategy_id: str | None = None) -> list[dict[str, Any]]:
        """The last signal per strategy and symbol."""
        return self._select("ts_signals", self._filters(strategy_id=strategy_id), "strategy_id, symbol")

    def instruments(self, symbol: str | None = None) -> list[dict[str, Any]]:
        """The instrument registry (each symbol's last definition), by symbol."""
        return self._select("ts_instruments", self._filters(symbol=symbol), "symbol")

    def cash(self, account: str | None = None, venue: str | None = None) -> list[dict[str, Any]]:
        """Cash per account, venue and currency."""
        return self._select("ts_cash", self._filters(account=account, venue=venue), "account, venue, currency")

    def fx_rates(self) -> list[dict[str, Any]]:
        """The last recorded rate of each currency pair."""
        return self._select("ts_fx_rates", {}, "base, quote")

    def corporate_actions(self, symbol: str | None = None) -> list[dict[str, Any]]:
        """Corporate actions recorded, by effective time."""
        return self._select("ts_corporate_actions", self._filters(symbol=symbol), "effective_at, symbol, action")

    def fees_pending(self, account: str | None = None, client_order_id: str | None = None) -> list[dict[str, Any]]:
        """Fills whose fee the venue has not reported yet, oldest first."""
        return self._select("ts_fees_pending", self._filters(account=account, client_order_id=client_order_id),
                            "account, last_position, exec_id")
