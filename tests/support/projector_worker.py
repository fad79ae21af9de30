"""Helpers shared by the projector tests (importable, so subprocesses and threads can use them).

* ``snapshot(store)``: the tracking position and every read-model table (ordered by primary key),
  read in ONE snapshot, so a projector committing meanwhile cannot make the two disagree (the
  chaos harness's ``table_snapshot``, so the tests and the harness compare the same reading).
* ``rebuild_snapshot(store)``: a one-page rebuild through the paged path into the store's own tables,
  then ``snapshot``.
* ``prefix_snapshot(store, position, target_url)``: copies the log rows up to ``position`` (byte
  for byte, with their positions and timestamps) into a fresh store and rebuilds it there: what
  the tables must hold when the tracking row says ``position``.
* ``COMMANDS`` / ``run_command`` / ``random_command``: a small trading workload through the real
  client (intents, submits, acks, partial and over-fills, cancels, rejects, replaces, refusals
  through limits, kill switch and breaker, ramps, daily breaches, signals, the clock moving).
* ``python -m tests.support.projector_worker URL``: a writer process that keeps appending that workload
  until killed (used by hand; the tests write from a thread).
"""

from __future__ import annotations

import random
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from tradestate.adapters.store import Store, open_store
from tradestate.domain.errors import IdempotencyConflict, InvalidTransition, UnknownOrder
from tradestate.projections.projector import Projector
from tradestate.projections.tables import TABLES
from tradestate.tools.chaos import table_snapshot as snapshot

ACCOUNTS = ["acct-a", "acct-b"]
SYMBOLS = ["AAPL", "MSFT"]
STRATEGIES = ["sma", "mom"]
EXPECTED_ERRORS = (InvalidTransition, UnknownOrder, IdempotencyConflict)


# ------------------------------------------------------------------------------- reading


def assert_same(actual: dict, expected: dict, what: str = "tables") -> None:
    assert actual == expected, f"{what} differ from a one-page rebuild:\n{diff(actual, expected)}"


def assert_equals_rebuild(store) -> int:
    """The tables as they are == a one-page rebuild into the same tables; returns the position."""
    tracked, before = snapshot(store)
    rebuilt_at, rebuilt = rebuild_snapshot(store)
    assert tracked == rebuilt_at == store.trading.head(), (tracked, rebuilt_at, store.trading.head())
    assert_same(before, rebuilt)
    return tracked


def dump_tables(store: Store) -> dict[str, list[tuple]]:
    """Every table of ``projections.tables.TABLES``, rows ordered by primary key."""
    return snapshot(store)[1]


def rebuild_snapshot(store: Store) -> tuple[int, dict[str, list[tuple]]]:
    """Rebuild the store's tables through the paged path in one page (one transaction) and read
    them back: the reference every other way of filling the tables is compared with."""
    projector = Projector(store, page=10**9)
    position = projector.rebuild_in_pages()
    assert projector.applied_pages <= 1
    tracked, tables = snapshot(store)
    assert tracked == position
    return tracked, tables


def diff(a: dict[str, list[tuple]], b: dict[str, list[tuple]], limit: int = 6) -> str:
    """A readable account of how two dumps differ ('' when equal)."""
    lines = []
    for table in TABLES:
        ra, rb = a.get(table, []), b.get(table, [])
        if ra == rb:
            continue
        only_a = [r for r in ra if r not in rb]
        only_b = [r for r in rb if r not in ra]
        lines.append(f"{table}: {len(ra)} vs {len(rb)} rows")
        lines += [f"  - {r}" for r in only_a[:limit]] + [f"  + {r}" for r in only_b[:limit]]
    return "\n".join(lines)


# ---------------------------------------------------------------------- log prefix copies


def copy_prefix(store: Store, position: int, target: Store) -> int:
    """Copy the log rows 1..position (positions, types, bytes and timestamps unchanged) into the
    empty log of ``target``; returns the number of rows copied."""
    assert target.trading.head() == 0, "the target log must be empty"
    rows = list(store.trading.iter_rows(0, position))
    assert [r[0] for r in rows] == list(range(1, position + 1)), "the source log has a hole below the position"
    if target.kind == "sqlite":
        with target.trading.datastore.get_connection(commit=True) as connection:
            raw = connection._sqlite_conn
            raw.execute("BEGIN IMMEDIATE")
            raw.executemany(
                f"INSERT INTO {target.trading.table} (position, stream_id, stream_version, type, data, recorded_at) "
                "VALUES (?,?,?,?,?,?)",
                [(p, s, v, t, d, at.isoformat()) for p, s, v, t, d, at in rows],
            )
            raw.execute("COMMIT")
    else:
        from psycopg.sql import SQL, Identifier

        table = SQL("{}.{}").format(Identifier(target.trading.datastore.schema), Identifier(target.trading.table))
        with target.trading._connection() as conn, conn.transaction():
            with conn.cursor().copy(
                SQL("COPY {} (position, stream_id, stream_version, type, data, recorded_at) FROM STDIN").format(table)
            ) as copy:
                for p, s, v, t, d, at in rows:
                    copy.write_row((p, s, v, t, bytes(d), at))
    return len(rows)


def prefix_snapshot(store: Store, position: int, target_url: str) -> dict[str, list[tuple]]:
    """The tables a one-page rebuild of the log up to ``position`` yields, built in a fresh store
    at ``target_url`` (a new SQLite file or a new PostgreSQL schema)."""
    with open_store(target_url) as target:
        copy_prefix(store, position, target)
        tracked, tables = rebuild_snapshot(target)
        assert tracked == position
        return tables


# ---------------------------------------------------------------------------- workload


class Clock:
    """A deterministic, thread-safe clock the workload moves forward (across trading days too)."""

    def __init__(self, start: datetime | None = None):
        self.now = start or datetime(2024, 3, 5, 14, 30, tzinfo=timezone.utc)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self.now += timedelta(milliseconds=1)
            return self.now

    def advance(self, minutes: int) -> None:
        with self._lock:
            self.now += timedelta(minutes=minutes)


class Orders:
    """The orders a workload has created (later commands pick one of the last few by index)."""

    RECENT = 6

    def __init__(self) -> None:
        self.ids: list[tuple[str, str, int]] = []  # (account, client order id, qty)
        self.pending: list[tuple[str, str, int, int]] = []  # fills with a fee to come: (account, coid, qty, exec n)

    def pick(self, i: int, client: Any = None) -> tuple[str, str, int] | None:
        """One of the last few orders; three times in four an open one when there is one (the
        fourth exercises the venue contradicting us: fills on closed orders and the like)."""
        if not self.ids:
            return None
        recent = self.ids[-self.RECENT:]
        if client is not None and i % 4:
            from tradestate.domain.ids import order_stream_id

            orders = client.state.orders
            open_ = [o for o in recent if (x := orders.get(order_stream_id(o[0], o[1]))) is not None and x.is_open]
            recent = open_ or recent
        return recent[-1 - i % len(recent)]


def run_command(client: Any, orders: Orders, clock: Clock | None, cmd: tuple) -> None:
    """Apply one workload command; refusals are recorded by the client, and the errors a real
    engine meets (a transition the order's state forbids, an unknown order) append nothing."""
    kind, *args = cmd
    try:
        if kind == "intent":
            acct, sym, side, qty, limit_price = args
            coid = f"o{len(orders.ids) + 1}"
            orders.ids.append((ACCOUNTS[acct], coid, qty))
            client.record_intent(
                ACCOUNTS[acct], coid, SYMBOLS[sym], side, qty,
                order_type="limit" if limit_price is not None else "market",
                limit_price=limit_price, reference_price=limit_price or "100",
                strategy_id=STRATEGIES[acct % len(STRATEGIES)], venue="sim",
            )
            return
        if kind == "trade":  # an intent, its ack, and fills of the given percentages of its quantity
            acct, sym, side, qty, percents = args
            run_command(client, orders, clock, ("intent", acct, sym, side, qty, None))
            acct_id, coid, _ = orders.ids[-1]
            client.record_ack(acct_id, coid, venue_order_id=f"V-{coid}")
            for n, percent in enumerate(percents):
                client.record_fill(acct_id, coid, exec_id=f"X-{coid}-t{n}", qty=max(1, qty * percent // 100),
                                   price=str(100 + n), fee="0.02")
            return
        if kind == "limit":
            acct, name, value = args
            client.set_risk_limit(ACCOUNTS[acct], name, value)
            return
        if kind == "breaker":
            acct, trip = args
            if trip:
                client.trip_breaker(ACCOUNTS[acct], "test trip")
            else:
                client.reset_breaker(ACCOUNTS[acct], "test reset")
            return
        if kind == "kill":
            acct, engage = args
            if engage:
                client.engage_kill_switch(ACCOUNTS[acct], "test kill")
            else:
                client.release_kill_switch(ACCOUNTS[acct], "test release")
            return
        if kind == "resume":
            acct, pct = args
            client.resume_trading(ACCOUNTS[acct], pct, "ramp")
            return
        if kind == "breach":
            (acct,) = args
            client.record_daily_limit_breach(ACCOUNTS[acct], "max_daily_trades", 10, 10)
            return
        if kind == "signal":
            strat, sym, signal, value = args
            client.record_signal(STRATEGIES[strat], SYMBOLS[sym], signal, value=value, attributes={"k": signal})
            return
        if kind == "tick":
            if clock is not None:
                clock.advance(args[0])
            return
        if kind in VENUE_FACTS:
            _venue_fact(client, orders, clock, kind, args)
            return
        picked = orders.pick(args[0], client)
        if picked is None:
            return
        acct, coid, order_qty = picked
        if kind == "submit":
            client.record_submitted(acct, coid)
        elif kind == "ack":
            client.record_ack(acct, coid, venue_order_id=f"V-{coid}")
        elif kind == "fill":
            _, percent, price, exec_n = args  # of the order's quantity: partial, full, or too much
            qty = max(1, order_qty * percent // 100)
            client.record_fill(acct, coid, exec_id=f"X-{coid}-{exec_n}", qty=qty, price=price, fee="0.01")
        elif kind == "cancel":
            client.request_cancel(acct, coid, "test")
            client.record_cancelled(acct, coid, "test")
        elif kind == "reject":
            client.record_reject(acct, coid, "venue says no")
        elif kind == "replace":
            _, qty = args
            client.record_replaced(acct, coid, qty, limit_price="101")
        else:
            raise ValueError(f"unknown command {kind!r}")
    except EXPECTED_ERRORS:
        pass


# The venues' vocabulary beyond the plain lifecycle: instruments, FX rates, corporate actions,
# cash balances, fees reported late (or in kind), execution corrections, engine amendments.
VENUE_FACTS = frozenset({"instrument", "fx", "split", "cash", "pending_fill", "fee", "correct", "amend",
                         "amend_refused", "venue_trade"})
_EFFECTIVE = datetime(2024, 3, 1, tzinfo=timezone.utc)


def _venue_fact(client: Any, orders: Orders, clock: Clock | None, kind: str, args: list[Any]) -> None:
    """One command of ``VENUE_FACTS``; what the domain refuses (a fill correction of an unknown
    execution, an amendment that changes nothing...) appends nothing."""
    from tradestate.domain.errors import InvalidInput
    from tradestate.domain.ids import account_stream_id, order_stream_id

    try:
        if kind == "instrument":  # (symbol, multiplier, currency)
            sym, multiplier, currency = args
            client.define_instrument(SYMBOLS[sym], "equity", multiplier=multiplier, quote_currency=currency)
            return
        if kind == "fx":
            (rate,) = args
            client.record_fx_rate("EUR", "USD", rate)
            return
        if kind == "split":  # (symbol, day, ratio from, ratio to)
            sym, day, old, new = args
            client.record_corporate_action(SYMBOLS[sym], "split", _EFFECTIVE + timedelta(days=day),
                                           ratio_from=old, ratio_to=new)
            return
        if kind == "cash":  # (account, currency, balance): the venue's balance as reconciliation records it
            from tradestate.domain import events as ev
            from tradestate.writer import build_event

            acct, currency, balance = args
            e = build_event(ev.CashBalanceRecorded, **client.writer.envelope(), account=ACCOUNTS[acct], venue="sim",
                            currency=currency, balance=balance)
            client.writer.record_event(account_stream_id(ACCOUNTS[acct]), e)
            return
        if kind == "venue_trade":  # an acknowledged order and its venue facts, in one of their orders
            acct, sym, qty, percents, fee, correct, amend = args
            run_command(client, orders, clock, ("intent", acct, sym, "buy" if qty % 2 else "sell", qty, "100"))
            acct_id, coid, _ = orders.ids[-1]
            client.record_ack(acct_id, coid, venue_order_id=f"V-{coid}")
            if amend:  # asked before the fills; answered (refused, or confirmed) after them
                _venue_fact(client, orders, clock, "amend", [0, amend])
            for n, percent in enumerate(percents):
                _venue_fact(client, orders, clock, "pending_fill", [0, percent, "100.5", n])
            if correct:  # a new price, or a bust (percent 0), of the first fill
                _venue_fact(client, orders, clock, "correct", [0, 0, 1, 0 if correct == 2 else percents[0] // 2,
                                                               "99.75", fee == 3])
            if fee:  # the fee of the first fill (its correction's, if corrected): on the order, the account or in kind
                exec_n = 0 if not correct else None
                fee_id = f"X-{coid}-0" if exec_n == 0 else f"X-{coid}-0.1"
                client.record_fee(acct_id, "sim", f"F-{fee_id}", "0.25", symbol=SYMBOLS[sym], exec_id=fee_id,
                                  client_order_id=coid if fee == 1 else None)
            if amend and amend % 2:
                _venue_fact(client, orders, clock, "amend_refused", [0])
            elif amend:
                run_command(client, orders, clock, ("replace", 0, amend))
            return
        picked = orders.pick(args[0], client)
        if kind in ("fee", "correct") and orders.pending and args[1] % 2:  # mostly a fill whose fee is to come
            acct, coid, qty, exec_n = orders.pending[-1 - args[0] % len(orders.pending)]
            picked, args = (acct, coid, qty), [args[0], exec_n, *args[2:]]
        if picked is None:
            return
        acct, coid, order_qty = picked
        order = client.state.orders.get(order_stream_id(acct, coid))
        if kind == "pending_fill":  # a fill whose fee the venue reports later
            _, percent, price, exec_n = args
            client.record_fill(acct, coid, exec_id=f"X-{coid}-{exec_n}", qty=max(1, order_qty * percent // 100),
                               price=price, fee_pending=True)
            orders.pending.append((acct, coid, order_qty, exec_n))
        elif kind == "fee":  # (order, exec n, amount, on the order's stream, in kind)
            _, exec_n, amount, on_order, in_kind = args
            symbol = order.symbol if order is not None else SYMBOLS[0]
            client.record_fee(acct, "sim", f"F-{coid}-{exec_n}-{in_kind}", amount, symbol=symbol, in_kind=in_kind,
                              exec_id=None if in_kind else f"X-{coid}-{exec_n}",
                              client_order_id=coid if on_order else None)
        elif kind == "correct":  # (order, exec n, version, percent (0: a bust), price, fee pending)
            _, exec_n, version, percent, price, pending = args
            base = f"X-{coid}-{exec_n}"
            earlier = [base] + [f"{base}.{v}" for v in range(1, version)]
            client.record_fill_correction(acct, coid, f"{base}.{version}", earlier, order_qty * percent // 100
                                          if percent else 0, price, fee_pending=pending)
        elif kind == "amend":  # (order, new quantity)
            _, qty = args
            client.request_replace(acct, coid, qty=qty, reference_price="100")
        elif kind == "amend_refused" and order is not None and order.replace_pending is not None:
            client.record_replace_refused(acct, coid, order.replace_pending, "venue says no")
    except (*EXPECTED_ERRORS, InvalidInput):
        pass


def random_command(rng: random.Random) -> tuple:
    """One command of the workload, weighted like a trading session (mostly orders and fills)."""
    r = rng.random()
    acct = rng.randrange(len(ACCOUNTS))
    if r < 0.08:
        return ("trade", acct, rng.randrange(len(SYMBOLS)), rng.choice(["buy", "sell"]), rng.randint(2, 30),
                rng.choice([[50], [30, 30], [50, 50], [25, 25, 25, 25], [100], [60, 60]]))
    if r < 0.22:
        return ("intent", acct, rng.randrange(len(SYMBOLS)), rng.choice(["buy", "sell"]), rng.randint(1, 30),
                rng.choice([None, "99.5", "100.25"]))
    if r < 0.29:
        return ("submit", rng.randrange(1000))
    if r < 0.38:
        return ("ack", rng.randrange(1000))
    if r < 0.62:
        return ("fill", rng.randrange(1000), rng.choice([25, 40, 50, 100, 130]), rng.choice(["99", "100.5", "101.25"]),
                rng.randrange(5))
    if r < 0.68:
        return ("cancel", rng.randrange(1000))
    if r < 0.70:
        return ("reject", rng.randrange(1000))
    if r < 0.72:
        return ("replace", rng.randrange(1000), rng.randint(1, 60))
    if r < 0.76:
        return ("limit", acct, rng.choice(["max_order_qty", "max_position_qty", "max_open_orders", "max_daily_trades"]),
                rng.choice([25, 200, 1000, None, None, None]))
    if r < 0.79:
        return ("breaker", acct, rng.random() < 0.15)
    if r < 0.81:
        return ("kill", acct, rng.random() < 0.15)
    if r < 0.83:
        return ("resume", acct, rng.choice([50, 75, 100]))
    if r < 0.84:
        return ("breach", acct)
    if r < 0.97:
        return ("signal", rng.randrange(len(STRATEGIES)), rng.randrange(len(SYMBOLS)),
                rng.choice(["buy", "sell", "flat"]), rng.choice([None, "0.5", "1.25"]))
    return ("tick", rng.choice([1, 30, 600, 1440]))


def write_session(client: Any, n: int, seed: int = 1, clock: Clock | None = None) -> int:
    """Record ``n`` random commands; returns the log head."""
    rng = random.Random(seed)
    orders = Orders()
    for _ in range(n):
        run_command(client, orders, clock, random_command(rng))
    return client.store.trading.head()


class Writer(threading.Thread):
    """Keeps appending the workload through the client until ``stop`` is set."""

    def __init__(self, url: str, seed: int = 7, pause: float = 0.0):
        super().__init__(name="workload-writer", daemon=True)
        self.url, self.seed, self.pause = url, seed, pause
        self.stop = threading.Event()
        self.commands = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        import tradestate

        rng = random.Random(self.seed)
        orders = Orders()
        clock = Clock()
        try:
            with tradestate.connect(self.url, clock=clock) as client:
                while not self.stop.is_set():
                    run_command(client, orders, clock, random_command(rng))
                    self.commands += 1
                    if self.pause:
                        time.sleep(self.pause)
        except BaseException as e:  # noqa: BLE001 - the test asserts on it
            self.error = e


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (Linux /proc), in seconds."""
    import os

    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":  # a writer process: python -m tests.support.projector_worker URL [seed]
    w = Writer(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 7)
    w.run()
    if w.error:
        raise w.error


class ScratchDatabases:
    """Fresh databases of the same kind as ``like_url`` (new SQLite files beside ``directory``,
    new PostgreSQL schemas, dropped by ``close()``), for rebuilding a log prefix elsewhere."""

    def __init__(self, like_url: str, directory: str):
        self.like_url = like_url
        self.directory = directory
        self.schemas: list[str] = []
        self.count = 0

    def new(self) -> str:
        import uuid
        from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

        self.count += 1
        if self.like_url.startswith("sqlite:"):
            return f"sqlite:///{self.directory}/scratch-{self.count}-{uuid.uuid4().hex[:6]}.db"
        parsed = urlparse(self.like_url)
        query = dict(parse_qsl(parsed.query))
        query["schema"] = schema = f"s_{uuid.uuid4().hex[:12]}"
        self.schemas.append(schema)
        return urlunparse(parsed._replace(query=urlencode(query)))

    def close(self) -> None:
        if not self.schemas:
            return
        from urllib.parse import urlparse, urlunparse

        import psycopg

        base = urlunparse(urlparse(self.like_url)._replace(query=""))
        with psycopg.connect(base, autocommit=True) as conn:
            for schema in self.schemas:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        self.schemas = []

    def __enter__(self) -> ScratchDatabases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
