"""The kill -9 harness: an engine process SIGKILLed at random moments, and what must survive it.

An engine child records order intents, submissions, acks and partial fills through the real
client at full speed. Before each call it writes the call to a side channel (``try``), and after
the call has returned (the commit is durable) it writes what it was told (``ok``: the event's
global position). The side channel is an append-only file written with one ``write`` per line
(and optionally fsynced): the kernel keeps it whatever happens to the process, so after a SIGKILL
the parent knows exactly which calls were acknowledged and which one was in flight. A torn last
line (the kill landed inside the ``write``) is ignored: a ``try`` line is written before its call
starts, an ``ok`` line after its call returned, so a torn line never hides an acknowledgement
that matters (a torn ``ok`` only makes the parent expect less).

The parent kills the engine (and, with ``projector=True``, a projector child running beside it)
after a seeded random 20-300 ms, and then checks:

* **killed**: the engine died by the SIGKILL, not by an error of its own;
* **acknowledged**: every acknowledged call's event is in the log at the position the client
  returned, in the order's stream, with the right type, client order id and execution id;
* **not torn**: every row decodes and validates against its event schema, sits in the stream its
  payload names, at the next version of that stream; ``$void`` rows are well-formed; an intent and
  its risk decision (one transaction) are both there or both absent;
* **no gaps**: positions are exactly 1..head (``$void`` allowed; a hole a dead writer left is
  voided by the reader once nothing can fill it, at most ``gap_timeout`` on, and only then counted);
* **projection at kill**: the killed projector's tracking position is within the log and no table
  row reflects an event beyond it;
* **projection = fold**: the tables, caught up to the head, equal a one-page rebuild of a
  byte-for-byte copy of the log in a scratch database (a fresh fold);
* **no duplicates**: the call in flight at the kill (and the last acknowledged one) re-sent with
  the same client order id / execution id returns the recorded event or records it once; each
  client order id has exactly one intent, each execution id one fill, each order at most one
  submission and one ack, and no discrepancy was recorded.

``python -m tradestate.tools.chaos engine --db URL --acks FILE`` runs an engine by hand.
"""

from __future__ import annotations

import os
import random
import signal
import tempfile
import time
import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

import orjson

from ..adapters.store.sql import read_cursor, snapshot_cursor, write_cursor

ACCOUNTS = ("chaos-a", "chaos-b", "chaos-c")
SYMBOLS = ("AAPL", "MSFT", "NVDA", "SPY")
MAX_ORDER_QTY = 95  # set on every account: intents above it are refused (and recorded as such)

OP_TYPES = {"intent": "OrderIntentRecorded", "submit": "OrderSubmitted", "ack": "OrderAcknowledged",
            "fill": "OrderFilled"}

PHASES = ("scan", "projection at kill", "re-send and log checks", "projector catch-up", "fresh fold")

CHECKS = (
    ("killed", "the engine died by the SIGKILL, not by itself"),
    ("acknowledged", "every acknowledged event is in the log where the client said"),
    ("not torn", "every row decodes and validates; intents and risk decisions whole"),
    ("no gaps", "positions are 1..head ($void allowed)"),
    ("projection at kill", "tracking within the log, no row beyond it"),
    ("projection = fold", "tables equal a fresh fold of the log"),
    ("no duplicates", "re-sent calls: one intent per client order id, one fill per exec id"),
)


# ------------------------------------------------------------------------------ side channel


class AckWriter:
    """Append-only JSON lines, one ``os.write`` each (so a SIGKILL tears at most the last line)."""

    def __init__(self, path: str | os.PathLike[str], fsync: bool = False):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.fsync = fsync

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one JSON line in a single ``os.write`` (fsynced when ``fsync``)."""
        os.write(self.fd, orjson.dumps(record) + b"\n")
        if self.fsync:
            os.fsync(self.fd)

    def close(self) -> None:
        """Close the file."""
        os.close(self.fd)


@dataclass
class SideChannel:
    """What one engine incarnation wrote before it died."""

    tries: dict[int, dict[str, Any]] = field(default_factory=dict)  # n -> the call
    oks: dict[int, dict[str, Any]] = field(default_factory=dict)  # n -> what the client returned
    ready: bool = False
    error: str | None = None
    torn_tail: bool = False

    @property
    def pending(self) -> list[dict[str, Any]]:
        """Calls started and never acknowledged (at most one: the engine is sequential)."""
        return [op for n, op in sorted(self.tries.items()) if n not in self.oks]

    def acked(self) -> list[dict[str, Any]]:
        """Every acknowledged call, in call order, merged with what the client returned for it."""
        return [{**self.tries[n], **ok} for n, ok in sorted(self.oks.items())]


def side_channel_records(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], bool]:
    """The records of the side channel at ``path``, in order (none if the file does not exist), and
    whether its last line is torn (the kill landed inside a write: that line never counted)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], False
    lines = data.split(b"\n")
    return [orjson.loads(line) for line in lines[:-1]], bool(lines and lines[-1])


def read_side_channel(path: str | os.PathLike[str]) -> SideChannel:
    """The side channel at ``path`` (empty if the file does not exist); a torn last line is ignored and
    flagged in ``torn_tail``."""
    out = SideChannel()
    records, out.torn_tail = side_channel_records(path)
    for record in records:
        kind = record.pop("t")
        if kind == "try":
            out.tries[record["n"]] = record
        elif kind == "ok":
            out.oks[record["n"]] = record
        elif kind == "ready":
            out.ready = True
        elif kind == "error":
            out.error = record["error"]
    return out
    lines = data.split(b"\n")
    if lines and lines[-1]:
        out.torn_tail = True  # the kill landed inside a write: that line never counted
    for line in lines[:-1]:
        record = orjson.loads(line)
        kind = record.pop("t")
        if kind == "try":
            out.tries[record["n"]] = record
        elif kind == "ok":
            out.oks[record["n"]] = record
        elif kind == "ready":
            out.ready = True
        elif kind == "error":
            out.error = record["error"]
    return out


# ------------------------------------------------------------------------------- the calls


def perform(client: Any, op: dict[str, Any]) -> dict[str, Any]:
    """Make one client call described by ``op``; return what it acknowledged."""
    kind, acct, coid = op["op"], op["acct"], op["coid"]
    if kind == "intent":
        r = client.record_intent(acct, coid, op["sym"], op["side"], op["qty"], order_type=op["type"],
                                 limit_price=op.get("limit"), reference_price=op.get("ref"), strategy_id="chaos",
                                 venue="sim")
        return {"pos": r.position, "dup": r.duplicate, "acc": r.accepted}
    if kind == "submit":
        r = client.record_submitted(acct, coid)
    elif kind == "ack":
        r = client.record_ack(acct, coid, venue_order_id=op["venue_id"])
    elif kind == "fill":
        r = client.record_fill(acct, coid, exec_id=op["exec"], qty=op["qty"], price=op["price"], fee=op["fee"],
                               venue_order_id=op["venue_id"])
    else:
        raise ValueError(f"unknown call {kind!r}")
    return {"pos": r.position, "dup": r.duplicate, "disc": r.discrepancy}


def order_calls(rng: random.Random, coid: str) -> list[dict[str, Any]]:
    """An order's life: intent, submission, ack, and one to four partial fills (sometimes leaving
    part of it unfilled)."""
    acct = rng.choice(ACCOUNTS)
    qty = rng.randint(1, 100)
    limit = rng.random() < 0.6
    price = f"{rng.randint(9000, 11000) / 100:.2f}"
    base = {"acct": acct, "coid": coid}
    intent = {"op": "intent", **base, "sym": rng.choice(SYMBOLS), "side": rng.choice(["buy", "sell"]),
              "qty": str(qty), "type": "limit" if limit else "market", "limit": price if limit else None,
              "ref": None if limit else price}
    venue_id = f"V-{coid}"
    calls = [intent, {"op": "submit", **base}, {"op": "ack", **base, "venue_id": venue_id}]
    left = qty if rng.random() < 0.7 else rng.randint(0, qty - 1) if qty > 1 else qty
    parts = rng.randint(1, 4)
    for i in range(parts):
        if left <= 0:
            break
        q = left if i == parts - 1 else max(1, left * rng.randint(20, 70) // 100)
        left -= q
        calls.append({"op": "fill", **base, "exec": f"X-{coid}-{i}", "qty": str(q),
                      "price": f"{float(price) + rng.randint(-50, 50) / 100:.2f}", "fee": "0.01",
                      "venue_id": venue_id})
    return calls


def engine(url: str, acks: str, *, tag: str, incarnation: int, seed: int, fsync: bool = False,
           limit: int | None = None) -> int:
    """The engine: records orders until killed (or ``limit`` calls). Every call goes to the side
    channel before (``try``) and after (``ok``) it."""
    from ..client import TradestateClient
    from ..adapters.store import open_store

    out = AckWriter(acks, fsync)
    try:
        client = TradestateClient(open_store(url), use_checkpoints=False)
        rng = random.Random(seed)
        out.write({"t": "ready", "pid": os.getpid(), "head": client.position})
        n = order = 0
        while limit is None or n < limit:
            order += 1
            for call in order_calls(rng, f"{tag}-k{incarnation}-o{order}"):
                n += 1
                out.write({"t": "try", "n": n, **call})
                result = perform(client, call)
                out.write({"t": "ok", "n": n, **result})
                if call["op"] == "intent" and not result["acc"]:
                    break  # refused by the pre-trade check: nothing to send
        client.close()
        return n
    except BaseException:
        out.write({"t": "error", "error": traceback.format_exc()})
        raise


def projector(url: str, status: str, *, seed: int) -> None:
    """A projector following the log in small pages (so a kill lands inside pages and commits)."""
    from ..adapters.store import open_store
    from ..projections.projector import Projector

    out = AckWriter(status)
    try:
        rng = random.Random(seed)
        store = open_store(url)
        p = Projector(store, page=rng.choice([7, 50, 300, 2000]))
        out.write({"t": "ready", "pid": os.getpid()})
        while True:
            p.catch_up()
            time.sleep(0.002)
    except BaseException:
        out.write({"t": "error", "error": traceback.format_exc()})
        raise


# ------------------------------------------------------------------------------ fork server


def _fork_server(targets: dict[str, Callable[..., Any]] | None = None) -> None:
    """``python -m tradestate.tools.chaos forkserver``: imports everything once, then forks a child
    per request (a new interpreter per engine start would cost ~0.5 s of imports per kill).
    Requests and answers are JSON lines on stdin/stdout: ``{"run": "engine"|"projector",
    "kwargs": {...}, "log": path}`` -> ``{"pid": n}``; ``{"wait": pid}`` -> ``{"pid": n, "code": c}``
    (``code`` as ``Popen.returncode``: ``-9`` for a SIGKILL). ``targets``: what ``run`` names
    (default: this module's engine and projector; other harnesses pass their own)."""
    import sys

    from .. import client as _client  # noqa: F401 - preloaded for the children
    from ..adapters.store import postgres as _pg, sqlite as _sqlite  # noqa: F401
    from ..projections import projector as _projector  # noqa: F401

    targets = targets if targets is not None else {"engine": engine, "projector": projector}
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    for line in stdin:
        request = orjson.loads(line)
        if "wait" in request:
            _, status = os.waitpid(request["wait"], 0)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            stdout.write(orjson.dumps({"pid": request["wait"], "code": code}) + b"\n")
            stdout.flush()
            continue
        pid = os.fork()
        if pid == 0:  # the child: never returns into this loop
            code = 1
            try:
                os.setsid()  # its own process group: a ^C to the harness does not reach it first
                fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                random.seed()
                targets[request["run"]](**request["kwargs"])
                code = 0
            except BaseException:  # noqa: BLE001
                traceback.print_exc()
            finally:
                os._exit(code)
        stdout.write(orjson.dumps({"pid": pid}) + b"\n")
        stdout.flush()


class ForkServer:
    """The parent's handle on ``_fork_server`` (run as ``python -m <module> forkserver``)."""

    def __init__(self, module: str = "tradestate.tools.chaos") -> None:
        import subprocess
        import sys

        self.proc = subprocess.Popen([sys.executable, "-m", module, "forkserver"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(orjson.dumps(request) + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the chaos fork server died (exit {self.proc.wait()})")
        return orjson.loads(line)

    def start(self, run: str, log: str, **kwargs: Any) -> int:
        """Fork a child running ``run`` (``engine`` or ``projector``) with ``kwargs``, its output in
        ``log``; returns its pid."""
        return self._ask({"run": run, "log": log, "kwargs": kwargs})["pid"]

    def wait(self, pid: int) -> int:
        """Wait for child ``pid`` to exit; returns its code as ``Popen.returncode`` (-9 for a SIGKILL)."""
        return self._ask({"wait": pid})["code"]

    def close(self) -> None:
        """Stop the fork server (killed if it does not exit within 10 s)."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except Exception:  # noqa: BLE001
            self.proc.kill()
            self.proc.wait()


def _wait_ready(path: Path, timeout: float) -> SideChannel:
    """Poll a child's side channel until it says ready (or wrote an error, or time is up)."""
    deadline = time.monotonic() + timeout
    while True:
        side = read_side_channel(path)
        if side.ready or side.error or time.monotonic() > deadline:
            return side
        time.sleep(0.002)


# ------------------------------------------------------------------------------- the checker


def _raw_rows(store: Any, sql: str) -> list[tuple]:
    with read_cursor(store) as cur:
        return [tuple(r) for r in cur.execute(sql).fetchall()]


def _table_name(store: Any, table: str) -> str:
    return store.dialect.name(table)


class LogChecker:
    """Reads the log incrementally (rows are immutable: each is checked once) and keeps the
    indexes the checks need."""

    def __init__(self, store: Any, *, hole_wait: float | None = None):
        self.store = store
        self.position = 0
        self.problems: list[tuple[str, str]] = []  # (check, detail)
        self.rows_by_pos: dict[int, tuple[str, str, str | None, str | None]] = {}  # pos -> stream, type, coid, exec
        self.intents: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.fills: dict[tuple[str, str], list[int]] = defaultdict(list)  # (order stream, exec id)
        self.once: dict[tuple[str, str], list[int]] = defaultdict(list)  # (order stream, type) submit/ack
        self.discrepancies: list[tuple[int, str, str]] = []
        self.intent_ids: dict[str, int] = {}  # intent event id -> position
        self.decisions: dict[str, list[int]] = defaultdict(list)  # intent event id -> its risk decision(s)
        self.versions: dict[str, int] = {}
        self.voids = 0
        self.hole_wait = hole_wait if hole_wait is not None else 3 * getattr(store.trading, "gap_timeout", 0.5) + 1

    def fail(self, check: str, detail: str) -> None:
        """Record a problem found by ``check``."""
        self.problems.append((check, detail))

    # ------------------------------------------------------------------------ reading
    def scan(self) -> int:
        """Check the rows appended since the last scan; returns the head reached."""
        from ..domain import events as ev
        from ..domain.ids import order_stream_id

        log = self.store.trading
        head = log.head()
        deadline = time.monotonic() + self.hole_wait
        while self.position < head:
            before = self.position
            for row in log.iter_rows(self.position, head):
                self._row(row, ev, order_stream_id)
            if self.position >= head:
                break
            if self.position == before:
                if time.monotonic() > deadline:
                    self.fail("no gaps", f"hole at position {self.position + 1} (head {head}) not filled "
                                         f"or voided after {self.hole_wait:.1f} s")
                    break
                time.sleep(0.05)  # a hole: its writer is committing, or dead (the reader voids it)
        # Independently of the reader: the table holds exactly the positions 1..max.
        table = _table_name(self.store, log.table)
        count, low, high = _raw_rows(self.store, f"SELECT count(*), coalesce(min(position), 0), "
                                                 f"coalesce(max(position), 0) FROM {table}")[0]
        if count != high or (count and low != 1):
            self.fail("no gaps", f"{count} rows but positions {low}..{high}")
        return head

    def _row(self, row: tuple, ev: Any, order_stream_id: Callable[[str, str], str]) -> None:
        position, stream, version, type_name, data, _at = row
        if position != self.position + 1:
            self.fail("no gaps", f"position {self.position + 1} missing (next row is {position})")
        self.position = position
        data = bytes(data)
        if type_name == "$void":
            self.voids += 1
            if stream != "$void" or version != position or data != b"{}":
                self.fail("not torn", f"malformed $void row at {position}: {stream!r} v{version} {data[:60]!r}")
            return
        try:
            payload = orjson.loads(data)
            event = ev.decode(type_name, payload)
        except Exception as e:  # noqa: BLE001 - any failure to decode is a torn or foreign row
            self.fail("not torn", f"row {position} ({type_name} in {stream}) does not decode: "
                                  f"{type(e).__name__}: {str(e)[:200]}")
            return
        last = self.versions.get(stream, 0)
        if version != last + 1:
            self.fail("not torn", f"row {position}: {stream} version {version} follows version {last}")
        self.versions[stream] = max(last, version)
        coid = getattr(event, "client_order_id", None)
        account = getattr(event, "account", None)
        if isinstance(event, ev.OrderEvent):
            expected = order_stream_id(event.account, event.client_order_id)
            if stream != expected:
                self.fail("not torn", f"row {position}: {type_name} of {event.account}/{coid} in stream {stream}")
        exec_id = getattr(event, "exec_id", None)
        self.rows_by_pos[position] = (stream, type_name, coid, exec_id)
        if type_name == "OrderIntentRecorded":
            self.intents[(account, coid)].append(position)
            self.intent_ids[str(event.event_id)] = position
        elif type_name == "OrderFilled":
            self.fills[(stream, exec_id)].append(position)
        elif type_name in ("OrderSubmitted", "OrderAcknowledged"):
            self.once[(stream, type_name)].append(position)
        elif type_name in ("RiskCheckPassed", "IntentRejectedByRisk"):
            self.decisions[str(event.causation_id)].append(position)
        elif type_name == "DiscrepancyRecorded":
            self.discrepancies.append((position, stream, getattr(event, "kind", "")))

    # ------------------------------------------------------------------------ checks
    def check_acked(self, acked: list[dict[str, Any]]) -> int:
        """Every acknowledged call's event is where the client said. Returns the number checked."""
        from ..domain.ids import order_stream_id

        for call in acked:
            pos, kind = call["pos"], call["op"]
            stream = order_stream_id(call["acct"], call["coid"])
            row = self.rows_by_pos.get(pos)
            what = f"{kind} {call['acct']}/{call['coid']}" + (f" exec {call['exec']}" if kind == "fill" else "")
            if row is None:
                self.fail("acknowledged", f"{what} acknowledged at position {pos}, but that position "
                                          f"{'is beyond the log' if pos > self.position else 'holds no such event'}")
                continue
            r_stream, r_type, r_coid, r_exec = row
            if r_stream != stream or r_type != OP_TYPES[kind] or r_coid != call["coid"] or (
                    kind == "fill" and r_exec != call["exec"]):
                self.fail("acknowledged", f"{what} acknowledged at position {pos}, which holds "
                                          f"{r_type} {r_coid} {r_exec or ''} in {r_stream}")
        return len(acked)

    def check_duplicates(self, tag: str | None = None) -> None:
        """One intent per client order id, one fill per execution id, one submission and one
        ack per order, no discrepancy (the workload never contradicts itself)."""
        for (account, coid), positions in self.intents.items():
            if len(positions) > 1:
                self.fail("no duplicates", f"{account}/{coid} has {len(positions)} intents at {positions}")
        for (stream, exec_id), positions in self.fills.items():
            if len(positions) > 1:
                self.fail("no duplicates", f"execution {exec_id} has {len(positions)} fills at {positions}")
        for (stream, type_name), positions in self.once.items():
            if len(positions) > 1:
                self.fail("no duplicates", f"{type_name} {len(positions)} times in {stream} at {positions}")
        for position, stream, kind in self.discrepancies:
            self.fail("no duplicates", f"discrepancy {kind!r} recorded at {position} in {stream}")
        # an intent and its risk decision are appended in one transaction: both or neither
        for event_id, position in self.intent_ids.items():
            n = len(self.decisions.get(event_id, ()))
            if n != 1:
                self.fail("not torn", f"intent at {position} has {n} risk decisions")
        for event_id, positions in self.decisions.items():
            if event_id not in self.intent_ids:
                self.fail("not torn", f"risk decision at {positions} without its intent")

    def take_problems(self) -> list[tuple[str, str]]:
        """The problems recorded since the last call, cleared from the checker."""
        problems, self.problems = self.problems, []
        # a problem found once stays found: report duplicates/torn once, not after every kill
        return problems


def verify_log(store: Any, acked: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Every log check on a whole log from scratch: ``[(check, problem)]``, empty when it passes."""
    checker = LogChecker(store)
    checker.scan()
    checker.check_acked(acked)
    checker.check_duplicates()
    return checker.take_problems()


# --------------------------------------------------------------------------- projections


def table_snapshot(store: Any) -> tuple[int, dict[str, list[tuple]]]:
    """(tracking position, {table: rows by primary key}) read in one snapshot."""
    from ..projections.projector import PROJECTION, Projector
    from ..projections.tables import TABLES, TRACKING_TABLE

    d = Projector(store).dialect
    queries = {t: f"SELECT * FROM {d.name(t)} ORDER BY {', '.join(key)}" for t, (_c, key) in TABLES.items()}
    tracking = f"SELECT position FROM {d.name(TRACKING_TABLE)} WHERE projection = {d.param}"
    out: dict[str, list[tuple]] = {}
    with snapshot_cursor(store) as cur:
        row = cur.execute(tracking, (PROJECTION,)).fetchone()
        for table, sql in queries.items():
            out[table] = [tuple(r) for r in cur.execute(sql).fetchall()]
    return (row[0] if row else 0), out


def has_tables(store: Any) -> bool:
    """Whether the store holds the read-model tracking table."""
    with read_cursor(store) as cur:
        return store.dialect.table_exists(cur, "ts_projection_tracking")


def diff_tables(a: dict[str, list[tuple]], b: dict[str, list[tuple]], limit: int = 4) -> str:
    """A readable account of how table snapshots ``a`` and ``b`` differ, at most ``limit`` rows shown
    per side and table; empty when they are equal."""
    lines = []
    for table in sorted(set(a) | set(b)):
        ra, rb = a.get(table, []), b.get(table, [])
        if ra == rb:
            continue
        sa, sb = set(ra), set(rb)
        lines.append(f"{table}: {len(ra)} rows vs {len(rb)} in the fresh fold")
        lines += [f"  - {r}" for r in [r for r in ra if r not in sb][:limit]]
        lines += [f"  + {r}" for r in [r for r in rb if r not in sa][:limit]]
    return "\n".join(lines)


def projection_at_kill(store: Any) -> list[str]:
    """After a projector was killed: tracking within the log, no row reflects an event beyond it."""
    from ..projections.tables import TABLES

    if not has_tables(store):
        return []
    tracked, tables = table_snapshot(store)
    head = store.trading.head()
    problems = []
    if not 0 <= tracked <= head:
        problems.append(f"tracking position {tracked} is beyond the log head {head}")
    for table, (columns, _key) in TABLES.items():
        names = [c for c, _ in columns]
        if "last_position" not in names:
            continue
        index = names.index("last_position")
        beyond = [r for r in tables[table] if r[index] is not None and r[index] > tracked]
        if beyond:
            problems.append(f"{table} has {len(beyond)} rows from beyond the tracked position {tracked}: {beyond[:2]}")
    return problems


class FreshFold:
    """A scratch database of the same kind: the log copied byte for byte (incrementally: the log
    is append-only) and its tables rebuilt from zero in one page each time."""

    def __init__(self, like_url: str, directory: str):
        from ..adapters.store import open_store

        self.like_url = like_url
        self.schema: str | None = None
        if like_url.startswith("sqlite:"):
            url = f"sqlite:///{directory}/fresh-fold-{uuid.uuid4().hex[:8]}.db"
        else:
            self.schema = f"chaos_fold_{uuid.uuid4().hex[:10]}"
            url = with_schema(like_url, self.schema)
        self.store = open_store(url)
        self.copied = 0

    def tables(self, source: Any, position: int) -> dict[str, list[tuple]]:
        """Copy ``source``'s log up to ``position`` into the scratch store, rebuild the read models
        there in one page, and return their rows per table. Raises ``RuntimeError`` when the log has
        a hole below ``position``."""
        from ..projections.projector import Projector

        rows = list(source.trading.iter_rows(self.copied, position))
        if [r[0] for r in rows] != list(range(self.copied + 1, position + 1)):
            raise RuntimeError(f"the log has a hole below {position}: cannot copy it")
        self._copy(rows)
        self.copied = position
        projector = Projector(self.store, page=10**9)
        try:
            assert projector.rebuild_in_pages() == position
        finally:
            if projector._writer is not None:
                projector._writer.shutdown()
        tracked, tables = table_snapshot(self.store)
        assert tracked == position
        return tables

    def _copy(self, rows: list[tuple]) -> None:
        if not rows:
            return
        log = self.store.trading
        table = _table_name(self.store, log.table)
        with write_cursor(self.store) as cur:
            if self.store.dialect.is_sqlite:
                cur.executemany(f"INSERT INTO {table} (position, stream_id, stream_version, type, data, "
                                "recorded_at) VALUES (?,?,?,?,?,?)",
                                [(p, s, v, t, d, at.isoformat()) for p, s, v, t, d, at in rows])
            else:
                with cur.copy(f"COPY {table} (position, stream_id, stream_version, type, data, "
                              "recorded_at) FROM STDIN") as copy:
                    for p, s, v, t, d, at in rows:
                        copy.write_row((p, s, v, t, bytes(d), at))

    def close(self) -> None:
        """Close the scratch store and drop its PostgreSQL schema."""
        self.store.close()
        if self.schema is not None:
            import psycopg

            base = urlunparse(urlparse(self.like_url)._replace(query=""))
            with psycopg.connect(base, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


def check_projection(store: Any, fresh: FreshFold | None, phase: dict[str, float] | None = None) -> list[str]:
    """Catch the tables up to the head (a new projector, as after a restart) and compare them
    with a fresh fold of the log."""
    from ..projections.projector import Projector

    phase = phase if phase is not None else dict.fromkeys(PHASES, 0.0)
    t = time.monotonic()
    projector = Projector(store)
    try:
        for _ in range(5):
            try:
                reached = projector.catch_up()
                break
            except Exception as e:  # noqa: BLE001 - a killed projector's lock may linger briefly
                error = e
                time.sleep(0.2)
        else:
            return [f"the projector could not catch up: {type(error).__name__}: {error}"]
    finally:
        if projector._writer is not None:
            projector._writer.shutdown()
    head = store.trading.head()
    tracked, tables = table_snapshot(store)
    phase["projector catch-up"] += time.monotonic() - t
    t = time.monotonic()
    if tracked != head or reached != head:
        return [f"caught up to {reached}, tracking {tracked}, but the log head is {head}"]
    if fresh is None:  # this kill only checks that the tables caught up (fold_every)
        return []
    expected = fresh.tables(store, head)
    phase["fresh fold"] += time.monotonic() - t
    if tables != expected:
        return [f"tables at {head} differ from a fresh fold:\n{diff_tables(tables, expected)}"]
    return []


def with_schema(url: str, schema: str) -> str:
    """``url`` with its ``schema`` query parameter set to ``schema``."""
    parsed = urlparse(url)
    query = dict(parse_qsl(parsed.query))
    query["schema"] = schema
    return urlunparse(parsed._replace(query=urlencode(query)))


# ------------------------------------------------------------------------------- the harness


@dataclass
class CheckTally:
    """How many kill cycles passed and failed one check, and the first failure."""

    passed: int = 0
    failed: int = 0
    first: str | None = None


@dataclass
class ChaosReport:
    """The outcome of ``run_chaos``: kills, events, timings, a tally per check and the first problems
    found."""

    backend: str
    url: str
    seed: int
    kills: int = 0  # engine incarnations killed (or found dead)
    projector_kills: int = 0
    head: int = 0  # log head at the end
    events: int = 0  # events appended during the run
    voids: int = 0  # $void rows (positions given up)
    calls: int = 0  # client calls acknowledged to the engines
    in_flight: int = 0  # calls in flight at a kill
    in_flight_landed: int = 0  # ... of which the commit had happened (re-send: duplicate)
    fresh_folds: int = 0  # kills after which the tables were compared with a fresh fold
    resent_acked: int = 0  # acknowledged calls re-sent: must come back as duplicates
    refused: int = 0  # intents refused by the pre-trade check (recorded)
    seconds: float = 0.0
    check_seconds: float = 0.0  # time spent checking (the rest: engines running)
    phase_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    kill_after_ms: list[float] = field(default_factory=list)
    checks: dict[str, CheckTally] = field(default_factory=lambda: {name: CheckTally() for name, _ in CHECKS})
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when at least one kill happened and no check failed."""
        return self.kills > 0 and all(t.failed == 0 for t in self.checks.values())

    def tally(self, check: str, problems: list[str], cycle: int) -> None:
        """Count ``check`` as passed, or failed with ``problems`` at kill ``cycle`` (the first 50
        problems are kept)."""
        t = self.checks[check]
        if problems:
            t.failed += 1
            if t.first is None:
                t.first = f"kill {cycle}: {problems[0]}"
            for p in problems:
                if len(self.problems) < 50:
                    self.problems.append(f"kill {cycle} [{check}] {p}")
        else:
            t.passed += 1

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values, with ``ok`` and the kill-delay distribution."""
        d = asdict(self)
        d["ok"] = self.ok
        ms = sorted(self.kill_after_ms)
        d["kill_after_ms"] = {"min": ms[0], "median": ms[len(ms) // 2], "max": ms[-1]} if ms else None
        return d


def run_chaos(
    url: str,
    kills: int,
    *,
    seed: int | None = None,
    projector: bool = True,
    min_ms: float = 20,
    max_ms: float = 300,
    fsync_acks: bool = False,
    workdir: str | None = None,
    on_kill: Callable[[int, ChaosReport], None] | None = None,
    stop_on_failure: bool = False,
    fold_every: int = 1,
) -> ChaosReport:
    """Kill an engine ``kills`` times and check after each kill. Never raises for a failed check:
    the report says (``report.ok``). ``fold_every``: compare the tables with a fresh fold after
    every that many kills (and after the last); a fresh fold costs O(log), so long runs on a big
    log may space it out. Every other check runs after every kill."""
    from ..adapters.store import open_store, redact
    from ..client import TradestateClient

    seed = seed if seed is not None else random.randrange(1 << 31)
    rng = random.Random(seed)
    tag = f"c{uuid.uuid4().hex[:6]}"  # a new run on the same log must not reuse client order ids
    own_dir = workdir is None
    work = Path(workdir or tempfile.mkdtemp(prefix="tradestate-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    store = open_store(url)
    report = ChaosReport(backend=store.kind, url=redact(url), seed=seed)
    client = TradestateClient(store, use_checkpoints=False)
    for account in ACCOUNTS:
        if client.state.accounts.get(account) is None or \
                client.state.accounts[account].limits.get("max_order_qty") != MAX_ORDER_QTY:
            client.set_risk_limit(account, "max_order_qty", MAX_ORDER_QTY, reason="chaos run")
    checker = LogChecker(store)
    checker.scan()
    checker.take_problems()  # what was there before the run is not ours to judge here
    start_head = checker.position
    fresh = FreshFold(url, str(work))
    acked: list[dict[str, Any]] = []
    server = ForkServer()
    live: set[int] = set()  # children started and not yet reaped: killed on the way out
    try:
        for k in range(kills):
            acks = work / f"acks-{k}.jsonl"
            eng = server.start("engine", str(work / f"engine-{k}.log"), url=url, acks=str(acks), tag=tag,
                               incarnation=k, seed=rng.randrange(1 << 30), fsync=fsync_acks)
            proj = None
            if projector:
                proj_status = work / f"projector-{k}.jsonl"
                proj = server.start("projector", str(work / f"projector-{k}.log"), url=url,
                                    status=str(proj_status), seed=rng.randrange(1 << 30))
                live.add(proj)
            live.add(eng)
            engine_after = rng.uniform(min_ms, max_ms) / 1000
            projector_after = rng.uniform(0, max_ms) / 1000
            _wait_ready(acks, 120)  # the kill is timed from the engine's first append
            t0 = time.monotonic()
            plan = sorted([(engine_after, "engine"), (projector_after, "projector")] if proj else
                          [(engine_after, "engine")])
            for after, who in plan:
                time.sleep(max(0.0, t0 + after - time.monotonic()))
                os.kill(eng if who == "engine" else proj, signal.SIGKILL)  # a zombie takes it harmlessly
            report.kill_after_ms.append(round(engine_after * 1000, 1))
            code = server.wait(eng)
            live.discard(eng)
            check_started = time.monotonic()
            side = read_side_channel(acks)
            report.kills += 1
            died = [] if code == -signal.SIGKILL else [
                f"the engine exited with {code} before the kill: {side.error or 'no error written'}"]
            if not side.ready and not died:
                died.append("killed before it was ready (it did not start within 120 s)")
            if proj is not None:
                pcode = server.wait(proj)
                live.discard(proj)
                report.projector_kills += pcode == -signal.SIGKILL
                if pcode != -signal.SIGKILL:
                    perror = read_side_channel(proj_status).error
                    died.append(f"the projector exited with {pcode} before the kill: {perror or 'no error written'}")
            report.tally("killed", died, k)
            fold = (k + 1) % max(1, fold_every) == 0 or k == kills - 1
            _check_cycle(k, report, store, client, checker, fresh if fold else None, side, acked, projector)
            report.check_seconds += time.monotonic() - check_started
            report.head = checker.position
            report.events = report.head - start_head
            report.voids = checker.voids
            report.calls = len(acked)
            if on_kill is not None:
                on_kill(k, report)
            if stop_on_failure and not report.ok:
                break
        # the whole log once more, from scratch: nothing the incremental checks missed
        final = verify_log(store, acked)
        report.tally("not torn", [p for c, p in final if c == "not torn"], report.kills)
        report.tally("no gaps", [p for c, p in final if c == "no gaps"], report.kills)
        report.tally("acknowledged", [p for c, p in final if c == "acknowledged"], report.kills)
        report.tally("no duplicates", [p for c, p in final if c == "no duplicates"], report.kills)
    finally:
        for pid in live:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        server.close()
        fresh.close()
        client.close()
        if own_dir:
            for f in work.glob("*"):
                f.unlink()
            work.rmdir()
    report.calls = len(acked)
    report.seconds = time.monotonic() - started
    return report


def _check_cycle(k: int, report: ChaosReport, store: Any, client: Any, checker: LogChecker, fresh: FreshFold | None,
                 side: SideChannel, acked: list[dict[str, Any]], projector: bool) -> None:
    def tally(problems: list[tuple[str, str]]) -> None:
        by: dict[str, list[str]] = defaultdict(list)
        for check, detail in problems:
            by[check].append(detail)
        for check in ("not torn", "no gaps", "acknowledged", "no duplicates"):
            report.tally(check, by.get(check, []), k)

    phase = report.phase_seconds
    t = time.monotonic()
    acked_now = side.acked()
    report.refused += sum(1 for c in acked_now if c["op"] == "intent" and not c["acc"])
    acked.extend(acked_now)
    # 1. what the engine saw acknowledged is there; nothing torn; no gaps
    checker.scan()
    phase["scan"] += time.monotonic() - t
    t = time.monotonic()
    if projector:
        report.tally("projection at kill", projection_at_kill(store), k)
    phase["projection at kill"] += time.monotonic() - t
    t = time.monotonic()
    # 2. re-send the call in flight at the kill, and the last acknowledged one, with the same ids
    resend_problems = []
    for call in side.pending:
        report.in_flight += 1
        try:
            result = perform(client, call)
        except Exception as e:  # noqa: BLE001
            resend_problems.append(f"re-sending {call['op']} {call['coid']} failed: {type(e).__name__}: {e}")
            continue
        report.in_flight_landed += bool(result["dup"])
        acked.append({**call, **result})
    if acked_now:
        last = acked_now[-1]
        try:
            result = perform(client, last)
            report.resent_acked += 1
            if not result["dup"] or result["pos"] != last["pos"]:
                resend_problems.append(f"re-sending acknowledged {last['op']} {last['coid']} (position "
                                       f"{last['pos']}) returned {result}")
        except Exception as e:  # noqa: BLE001
            resend_problems.append(f"re-sending acknowledged {last['op']} {last['coid']} failed: "
                                   f"{type(e).__name__}: {e}")
    checker.scan()
    checker.check_acked(acked)
    checker.check_duplicates()
    problems = checker.take_problems() + [("no duplicates", p) for p in resend_problems]
    tally(problems)
    phase["re-send and log checks"] += time.monotonic() - t
    # 3. the read models equal a fresh fold of the log
    report.fresh_folds += fresh is not None
    try:
        report.tally("projection = fold", check_projection(store, fresh, phase), k)
    except Exception as e:  # noqa: BLE001
        report.tally("projection = fold", [f"{type(e).__name__}: {e}"], k)


# ------------------------------------------------------------------------------- by hand


def main(argv: list[str] | None = None) -> int:
    """``python -m tradestate.tools.chaos engine|forkserver``: run one engine child (until killed or
    ``--limit`` calls) or the fork server; returns the exit code."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tradestate.tools.chaos")
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("engine", help="run an engine that records orders until killed")
    e.add_argument("--db", required=True)
    e.add_argument("--acks", required=True, help="side-channel file (JSON lines)")
    e.add_argument("--tag", default=f"h{uuid.uuid4().hex[:6]}")
    e.add_argument("--incarnation", type=int, default=0)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--fsync", action="store_true")
    e.add_argument("--limit", type=int, default=None, help="stop after this many calls")
    sub.add_parser("forkserver", help="(internal) fork engines and projectors for the harness")
    args = parser.parse_args(argv)
    if args.command == "forkserver":
        _fork_server()
        return 0
    engine(args.db, args.acks, tag=args.tag, incarnation=args.incarnation, seed=args.seed, fsync=args.fsync,
           limit=args.limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
