"""The read models risk tools query: plain SQL tables beside the log, in the same database.

Each table is rewritten only by the projector, in the same transaction as the tracking row that
records the last log position applied, so a table never reflects an event twice or skips one.
Money and quantities are ``numeric`` on PostgreSQL (exact) and ``NUMERIC`` on SQLite, where the
projector's decimal text is stored as INTEGER or REAL: ``ORDER BY``, ``MAX()`` and comparisons are
numeric, and a value of up to 15 significant digits reads back exactly (a longer one, such as an
average cost that does not divide evenly, is kept as the nearest double). Times are ``timestamptz``
on PostgreSQL and ISO-8601 UTC strings on SQLite; trading days are ``date`` on PostgreSQL and
``YYYY-MM-DD`` text on SQLite.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from ..adapters.store import sql

# name -> (columns [(column, kind)], primary key); kinds: text, num, int, bool, time, date, json
TABLES: dict[str, tuple[list[tuple[str, str]], tuple[str, ...]]] = {
    "ts_positions": (
        [("account", "text"), ("venue", "text"), ("symbol", "text"), ("qty", "num"), ("avg_cost", "num"),
         ("realized_pnl", "num"), ("unrealized_pnl", "num"), ("fees", "num"), ("last_price", "num"),
         ("updated_at", "time"), ("last_position", "int"), ("multiplier", "num"), ("currency", "text")],
        ("account", "venue", "symbol"),
    ),
    "ts_orders": (
        [("stream_id", "text"), ("account", "text"), ("client_order_id", "text"), ("venue", "text"),
         ("symbol", "text"), ("side", "text"), ("order_type", "text"), ("qty", "num"), ("limit_price", "num"),
         ("stop_price", "num"), ("time_in_force", "text"), ("strategy_id", "text"), ("status", "text"),
         ("is_open", "bool"), ("filled_qty", "num"), ("remaining_qty", "num"), ("avg_fill_price", "num"),
         ("fees", "num"), ("venue_order_id", "text"), ("cancel_requested", "bool"), ("discrepancies", "int"),
         ("refusal", "text"), ("created_at", "time"), ("updated_at", "time"), ("last_position", "int"),
         # executions whose fee the venue has not reported yet; the engine's amendment the venue
         # has not answered yet (its id and the quantity and prices it asks for)
         ("fees_pending", "int"), ("replace_pending", "text"), ("replace_qty", "num"),
         ("replace_limit_price", "num"), ("replace_stop_price", "num")],
        ("stream_id",),
    ),
    "ts_daily_stats": (
        [("account", "text"), ("trading_day", "date"), ("trades", "int"), ("fills", "int"), ("volume", "num"),
         ("realized_pnl", "num"), ("fees", "num"), ("net_pnl", "num"), ("breaches", "text"),
         ("last_position", "int")],
        ("account", "trading_day"),
    ),
    "ts_risk_state": (
        [("account", "text"), ("kill_switch", "bool"), ("kill_switch_reason", "text"), ("breaker_tripped", "bool"),
         ("breaker_reason", "text"), ("breaker_until", "time"), ("ramp_pct", "int"), ("open_orders", "int"),
         ("discrepancies", "int"), ("trading_blocked", "bool"), ("blocked_reason", "text"), ("last_position", "int"),
         ("last_reconciled_at", "time"), ("last_reconciliation_status", "text")],
        ("account",),
    ),
    "ts_risk_usage": (
        [("account", "text"), ("limit_name", "text"), ("symbol", "text"), ("configured", "num"),
         ("effective", "num"), ("used", "num"), ("trading_day", "date"), ("last_position", "int")],
        ("account", "limit_name", "symbol"),
    ),
    "ts_signals": (
        [("strategy_id", "text"), ("symbol", "text"), ("signal", "text"), ("value", "num"),
         ("attributes", "json"), ("at", "time"), ("last_position", "int")],
        ("strategy_id", "symbol"),
    ),
    # One point per account and minute (UTC): the state after the minute's last fill.
    "ts_equity_curve": (
        [("account", "text"), ("minute", "time"), ("realized_pnl", "num"), ("unrealized_pnl", "num"),
         ("fees", "num"), ("equity", "num"), ("fills", "int"), ("last_position", "int")],
        ("account", "minute"),
    ),
    # One row per execution whose fee the venue has not reported yet (``fee_pending``); the row
    # goes when the fee comes (``FeeCharged``) or a correction replaces the execution.
    "ts_fees_pending": (
        [("account", "text"), ("exec_id", "text"), ("stream_id", "text"), ("client_order_id", "text"),
         ("venue", "text"), ("symbol", "text"), ("qty", "num"), ("price", "num"), ("at", "time"),
         ("last_position", "int")],
        ("account", "exec_id"),
    ),
    # The instrument registry: each symbol's last definition (``InstrumentDefined``).
    "ts_instruments": (
        [("symbol", "text"), ("asset_class", "text"), ("multiplier", "num"), ("quote_currency", "text"),
         ("settlement_currency", "text"), ("tick_size", "num"), ("lot_size", "num"), ("fractional", "bool"),
         ("expiry", "time"), ("underlying", "text"), ("strike", "num"), ("option_right", "text"),
         ("last_position", "int")],
        ("symbol",),
    ),
    # Cash per account, venue and currency: the venue's last reported balance, moved by our fills,
    # fees and settlements since.
    "ts_cash": (
        [("account", "text"), ("venue", "text"), ("currency", "text"), ("balance", "num"),
         ("last_position", "int")],
        ("account", "venue", "currency"),
    ),
    # The last recorded FX rate of each currency pair (``FxRateRecorded``): one base is worth rate quote.
    "ts_fx_rates": (
        [("base", "text"), ("quote", "text"), ("rate", "num"), ("source", "text"), ("at", "time"),
         ("last_position", "int")],
        ("base", "quote"),
    ),
    # Every corporate action recorded (``CorporateActionRecorded``).
    "ts_corporate_actions": (
        [("symbol", "text"), ("action", "text"), ("effective_at", "time"), ("ratio_from", "num"),
         ("ratio_to", "num"), ("new_symbol", "text"), ("source", "text"), ("reason", "text"), ("at", "time"),
         ("last_position", "int")],
        ("symbol", "action", "effective_at"),
    ),
}

TRACKING_TABLE = "ts_projection_tracking"
SCHEMA_ROW = "$schema"
OPEN_ORDERS_VIEW = "ts_open_orders"

# Read models differ from the log's own tables in two types: money sorts as numbers on SQLite
# (NUMERIC affinity: exact up to 15 significant digits; the log itself keeps exact decimal text),
# and a trading day is a ``date`` on PostgreSQL.
_READ_MODEL_TYPES = {sql.SQLITE: {"num": "NUMERIC", "date": "TEXT"}, sql.POSTGRESQL: {"date": "date"}}
_KINDS = ("text", "num", "int", "bool", "time", "date", "json")

# The tables' shape and column types, fingerprinted: stored beside the tracking row, so that
# tables of an older shape are dropped and rebuilt from the log (read models are disposable; the
# log is not).
SCHEMA_FINGERPRINT = zlib.crc32(repr((
    sorted(TABLES.items()),
    [(kind, [(k, (_READ_MODEL_TYPES[kind].get(k) or sql.Dialect(kind).type(k))) for k in _KINDS])
     for kind in (sql.SQLITE, sql.POSTGRESQL)],
)).encode())


@dataclass(frozen=True)
class Dialect(sql.Dialect):
    """The store's SQL dialect, plus the statements and column types of the read models."""

    def type(self, kind: str) -> str:
        """The SQL column type of value kind ``kind`` (``text``, ``num``, ``int``...) in the read
        models."""
        return _READ_MODEL_TYPES[self.kind].get(kind) or super().type(kind)

    def drop_statements(self) -> list[str]:
        """Statements dropping the open-orders view, every read-model table and the tracking table."""
        return [f"DROP VIEW IF EXISTS {self.name(OPEN_ORDERS_VIEW)}"] + [
            f"DROP TABLE IF EXISTS {self.name(table)}" for table in (*TABLES, TRACKING_TABLE)
        ]

    def create_statements(self) -> list[str]:
        """Idempotent statements creating every read-model table, the tracking table, the indexes and
        the open-orders view."""
        types = {kind: self.type(kind) for kind in _KINDS}
        statements = []
        for table, (columns, key) in TABLES.items():
            # symbol is part of ts_risk_usage's key; '' (not NULL) stands for "all symbols"
            cols = ", ".join(
                f"{c} {types[k]}" + (" NOT NULL" if c in key else "") for c, k in columns
            )
            statements.append(
                f"CREATE TABLE IF NOT EXISTS {self.name(table)} ({cols}, PRIMARY KEY ({', '.join(key)}))"
            )
        statements.append(
            f"CREATE TABLE IF NOT EXISTS {self.name(TRACKING_TABLE)} (projection {types['text']} PRIMARY KEY, "
            f"position {types['int']} NOT NULL, updated_at {types['time']})"
        )
        statements.append(
            f"CREATE INDEX IF NOT EXISTS ts_orders_account_status ON {self.name('ts_orders')} (account, status)"
        )
        statements.append(
            f"CREATE INDEX IF NOT EXISTS ts_orders_symbol_updated ON {self.name('ts_orders')} (symbol, updated_at)"
        )
        view = self.name(OPEN_ORDERS_VIEW)
        body = f"SELECT * FROM {self.name('ts_orders')} WHERE is_open"
        if self.is_postgres:
            statements.append(f"CREATE OR REPLACE VIEW {view} AS {body}")
        else:
            statements.append(f"CREATE VIEW IF NOT EXISTS {view} AS {body}")
        return statements

    def upsert(self, table: str) -> str:
        """An INSERT of one row of ``table`` (parameters in column order) that replaces the row with the
        same key."""
        columns, key = TABLES[table]
        names = [c for c, _ in columns]
        marks = ", ".join([self.param] * len(names))
        updates = ", ".join(f"{c} = excluded.{c}" for c in names if c not in key)
        return (
            f"INSERT INTO {self.name(table)} ({', '.join(names)}) VALUES ({marks}) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
        )

    def upsert_arrays(self, table: str) -> str:
        """PostgreSQL: one statement for a whole page of rows, one array parameter per column
        (executemany would pay a round trip per row)."""
        columns, key = TABLES[table]
        names = [c for c, _ in columns]
        arrays = ", ".join(f"%b::{self.type(k)}[]" for _, k in columns)  # binary: no escaping
        updates = ", ".join(f"{c} = excluded.{c}" for c in names if c not in key)
        return (
            f"INSERT INTO {self.name(table)} ({', '.join(names)}) SELECT * FROM unnest({arrays}) "
            f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
        )

    def upsert_from(self, table: str, staging: str) -> str:
        """An INSERT of every row of ``staging`` into ``table`` that replaces rows with the same key."""
        columns, key = TABLES[table]
        names = ", ".join(c for c, _ in columns)
        updates = ", ".join(f"{c} = excluded.{c}" for c, _ in columns if c not in key)
        return (f"INSERT INTO {self.name(table)} ({names}) SELECT {names} FROM {staging} "
                f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}")

    def delete(self, table: str) -> str:
        """A DELETE of the row of ``table`` with the given key (parameters in key order)."""
        _, key = TABLES[table]
        return f"DELETE FROM {self.name(table)} WHERE " + " AND ".join(f"{c} = {self.param}" for c in key)


def drop_read_models(dialect: sql.Dialect) -> list[str]:
    """The statements that drop every read-model table and view (``backup.restore``'s ``extra_drop``)."""
    return Dialect(dialect.kind, dialect.schema).drop_statements()
