"""The standby harness: an active engine and a warm standby of one engine id, the active one
SIGKILLed or paused at random moments, and what must hold after every takeover.

Each engine process (``node``) starts like a real deployment would: ``tradestate.connect(url,
engine_id=...)`` takes the lease, or, while another process holds it, ``tradestate.standby(...)
.wait()`` follows the log until the lease expires and takes over (its client is then the active
engine, fenced with the new epoch). Either way it then trades a stream of orders (intent,
submission, ack, partial fills; the kill -9 harness's workload). Right after a takeover it re-sends
the call the engine it replaces had in flight and that engine's last acknowledged intent, with the
same client order ids: both must be recognised (one intent per client order id).

As in ``tools.chaos``, every call goes to a side channel before it starts (``try``) and once
acknowledged (``ok``), each line with the epoch the process held: the parent knows, whatever
happened to the process, which calls it saw acknowledged and under which epoch.

Each round the parent SIGKILLs the active process, or (``pause_fraction`` of the rounds) SIGSTOPs
it for longer than the lease (a network pause), lets the standby take over, SIGCONTs it (its next
call must be refused, ``NotLeader``) and then kills it; in some pause rounds the standby itself is
SIGKILLed at a random moment while the active one is stopped, and a fresh standby must take over.
A new standby is started for the next round. Takeover time: from the kill (or the SIGSTOP) to the
first new intent the new active engine had acknowledged.

After the run, on the whole log (``check_run``):

* **acknowledged**: every call any process saw acknowledged is in the log where it was told;
* **no duplicates**: one intent per client order id (re-sends recognised), one fill per execution
  id, one submission and ack per order; no torn row, no gap (the kill -9 harness's checker);
* **one writer per epoch**: the log's ``LeaseAcquired`` positions on ``engine-<id>`` split it into
  epoch intervals; every call acknowledged under epoch e lies between ``LeaseAcquired(e)`` and
  ``LeaseAcquired(e+1)``, and every intent in the log lies in the interval of an epoch that tried
  it (an intent outside: two epochs appended in one interval, a double writer);
* **deposed**: every paused-then-resumed engine was refused (``NotLeader``) and appended nothing
  after the takeover;
* **processes**: every process died by the harness's SIGKILL or stopped on ``NotLeader``, never by
  an error of its own, and every round had a takeover.

``python -m tradestate.tools.standby_chaos forkserver`` is the harness's fork server.
"""

from __future__ import annotations

import math
import os
import random
import signal
import tempfile
import time
import traceback
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .chaos import AckWriter, ForkServer, LogChecker, SideChannel, order_calls, perform, side_channel_records

ENGINE_ID = "chaos-standby"
DEFAULT_LEASE_SECONDS = 3.0

CHECKS = (
    ("acknowledged", "every call a process saw acknowledged is in the log where it was told"),
    ("no duplicates", "one intent per client order id (re-sends recognised), one fill per exec id; no torn row, no gap"),
    ("one writer per epoch", "every acknowledged call and stored intent lies in its epoch's interval of the log"),
    ("deposed", "a paused engine, resumed after the takeover, was refused and appended nothing more"),
    ("processes", "every process died by the harness or stopped on NotLeader; every round had a takeover"),
)


# ------------------------------------------------------------------------------ side channel


@dataclass
class NodeChannel(SideChannel):
    """What one engine process wrote to its side channel (the kill -9 harness's, plus how the
    process became active and whether it was deposed)."""

    started: bool = False
    standby_at: float | None = None  # monotonic time it began to wait as a standby
    active: dict[str, Any] | None = None  # how it became active: epoch, how, at, takeover_s, waited_s
    deposed: dict[str, Any] | None = None

    @property
    def epoch(self) -> int | None:
        return None if self.active is None else self.active["epoch"]

    def first_new_intent_at(self) -> float | None:
        """Monotonic time of the first intent this process had accepted as new (not a duplicate)."""
        for call in self.acked():
            if call["op"] == "intent" and call["acc"] and not call["dup"]:
                return call["at"]
        return None


def read_node_channel(path: str | os.PathLike[str]) -> NodeChannel:
    """The side channel at ``path`` (empty if missing); a torn last line is ignored (flagged)."""
    out = NodeChannel()
    records, out.torn_tail = side_channel_records(path)
    for record in records:
        kind = record.pop("t")
        if kind == "try":
            out.tries[record["n"]] = record
        elif kind == "ok":
            out.oks[record["n"]] = record
        elif kind == "start":
            out.started = True
        elif kind == "standby":
            out.standby_at = record["at"]
        elif kind == "active":
            out.active = record
        elif kind == "deposed":
            out.deposed = record
        elif kind == "error":
            out.error = record["error"]
    return out
    lines = data.split(b"\n")
    out.torn_tail = bool(lines and lines[-1])
    for line in lines[:-1]:
        record = orjson.loads(line)
        kind = record.pop("t")
        if kind == "try":
            out.tries[record["n"]] = record
        elif kind == "ok":
            out.oks[record["n"]] = record
        elif kind == "start":
            out.started = True
        elif kind == "standby":
            out.standby_at = record["at"]
        elif kind == "active":
            out.active = record
        elif kind == "deposed":
            out.deposed = record
        elif kind == "error":
            out.error = record["error"]
    return out


# ------------------------------------------------------------------------------- the engine


def node(url: str, acks: str, *, engine_id: str, tag: str, incarnation: int, seed: int, lease_seconds: float,
         renew_seconds: float | None = None, replaces: str | None = None, pace: float = 0.002,
         wait_seconds: float = 120.0, limit: int | None = None) -> int:
    """One engine process: active at once if the lease of ``engine_id`` is free, else a standby
    until it takes over; then re-sends what the engine it replaces (side channel ``replaces``) had
    in flight and its last acknowledged intent, and trades until killed, refused (``NotLeader``:
    recorded as ``deposed``, returns) or ``limit`` calls. Returns the number of calls made."""
    import tradestate
    from ..domain.errors import LeaseHeld, NotLeader

    out = AckWriter(acks)
    try:
        out.write({"t": "start", "pid": os.getpid()})
        try:
            client = tradestate.connect(url, engine_id=engine_id, lease_seconds=lease_seconds,
                                        renew_seconds=renew_seconds, venue="sim", use_checkpoints=False)
            epoch = client.lease.lease.epoch
            out.write({"t": "active", "epoch": epoch, "how": "connect", "at": time.monotonic()})
        except LeaseHeld:
            # The harness kills an engine every few seconds: the repeated-crash gate would rightly wait
            # for an operator after the third. Takeovers are measured without the safety gates.
            waiting = tradestate.standby(url, engine_id, lease_seconds=lease_seconds, renew_seconds=renew_seconds,
                                         venue="sim", use_checkpoints=False, gates=False)
            out.write({"t": "standby", "at": time.monotonic()})
            takeover = waiting.wait(timeout=wait_seconds)
            if takeover is None:
                raise TimeoutError(f"no takeover within {wait_seconds} s")
            client = takeover.client
            epoch = takeover.lease.epoch
            out.write({"t": "active", "epoch": epoch, "how": "takeover", "at": time.monotonic(),
                       "takeover_s": round(takeover.seconds, 4), "waited_s": round(takeover.waited, 4),
                       "crashed": bool(takeover.report.crashed)})
        resend: list[dict[str, Any]] = []
        if replaces:
            before = read_node_channel(replaces)
            resend = before.pending
            intents = [c for c in before.acked() if c["op"] == "intent"]
            if intents:
                resend.append(intents[-1])
        keep = ("op", "acct", "coid", "sym", "side", "qty", "type", "limit", "ref", "venue_id", "exec", "price", "fee")
        calls = [{k: v for k, v in c.items() if k in keep} | {"resend": True} for c in resend]
        rng = random.Random(seed)
        n = order = 0
        while limit is None or n < limit:
            if not calls:
                order += 1
                calls = order_calls(rng, f"{tag}-k{incarnation}-o{order}")
            call = calls.pop(0)
            n += 1
            out.write({"t": "try", "n": n, "epoch": epoch, **call})
            try:
                result = perform(client, call)
            except NotLeader as e:
                out.write({"t": "deposed", "n": n, "epoch": epoch, "reason": str(e), "at": time.monotonic()})
                client.close()
                return n
            out.write({"t": "ok", "n": n, "epoch": epoch, "at": time.monotonic(), **result})
            if call["op"] == "intent" and not result["acc"] and not call.get("resend"):
                calls = []  # refused by the pre-trade check: nothing to send
            if pace:
                time.sleep(pace)
        client.close()
        return n
    except BaseException:
        out.write({"t": "error", "error": traceback.format_exc()})
        raise


# ------------------------------------------------------------------------------- the checks


@dataclass
class LogEpochs:
    """The epoch intervals of one engine's log: epoch -> position of its ``LeaseAcquired``."""

    acquired: dict[int, int]
    problems: list[str]

    def interval(self, epoch: int) -> tuple[int, float]:
        """(first position after ``LeaseAcquired(epoch)``, position of the next epoch's or infinity)."""
        start = self.acquired.get(epoch, -1)
        after = [p for e, p in self.acquired.items() if e > epoch]
        return start, (min(after) if after else float("inf"))

    def holds(self, epoch: int, position: int) -> bool:
        start, end = self.interval(epoch)
        return epoch in self.acquired and start < position < end


def scan_epochs(store: Any, engine_id: str) -> tuple[LogEpochs, dict[str, list[int]]]:
    """One pass over the log: the ``LeaseAcquired`` position of each epoch of ``engine_id`` and the
    positions of every intent by client order id."""
    from ..domain.ids import engine_stream_id

    stream = engine_stream_id(engine_id)
    acquired: dict[int, int] = {}
    intents: dict[str, list[int]] = defaultdict(list)
    problems = []
    last = 0
    log = store.trading
    for position, stream_id, _version, type_name, data, _at in log.iter_rows(0, log.head()):
        if stream_id == stream and type_name == "LeaseAcquired":
            epoch = orjson.loads(bytes(data))["epoch"]
            if epoch <= last:
                problems.append(f"LeaseAcquired of epoch {epoch} at {position} follows epoch {last}")
            last = max(last, epoch)
            acquired[epoch] = position
        elif type_name == "OrderIntentRecorded":
            intents[orjson.loads(bytes(data))["client_order_id"]].append(position)
    return LogEpochs(acquired, problems), intents


@dataclass
class Interval:
    """A double-writer interval: epoch ``epoch`` appended at ``first``..``last``, inside the interval
    of a later epoch (after ``LeaseAcquired(epoch + 1)`` at ``newer_at``)."""

    epoch: int
    first: int
    last: int
    newer_at: int
    calls: int


def check_run(store: Any, engine_id: str, channels: dict[str, NodeChannel], *, tag: str,
              paused: list[str] = ()) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Every log check of a run: ``({check: problems}, figures)``. ``channels``: each process's side
    channel by name; ``paused``: the names of the processes that were paused and resumed; ``tag``:
    the run's client order id prefix (intents of other runs on the same log are not judged)."""
    problems: dict[str, list[str]] = {name: [] for name, _ in CHECKS}
    acked = [call for ch in channels.values() for call in ch.acked()]
    # acknowledged, no duplicates, not torn, no gaps: the kill -9 harness's checker
    checker = LogChecker(store)
    checker.scan()
    checker.check_acked(acked)
    checker.check_duplicates()
    for check, detail in checker.take_problems():
        problems["acknowledged" if check == "acknowledged" else "no duplicates"].append(f"[{check}] {detail}")
    epochs, intents = scan_epochs(store, engine_id)
    problems["one writer per epoch"] += epochs.problems
    # every acknowledged call lies in the interval of the epoch it was acknowledged under
    bad: dict[int, list[int]] = defaultdict(list)
    for call in acked:
        if call["dup"]:
            # Found already recorded, nothing appended: the position is the original's, which may
            # be a later epoch's (a resumed engine's call in flight, re-sent by its successor).
            continue
        if not epochs.holds(call["epoch"], call["pos"]):
            bad[call["epoch"]].append(call["pos"])
            start, end = epochs.interval(call["epoch"])
            problems["one writer per epoch"].append(
                f"{call['op']} {call['coid']} acknowledged under epoch {call['epoch']} at position {call['pos']}, "
                f"outside its interval ({start}, {end})")
    # every stored intent of this run lies in the interval of an epoch that tried it
    tried: dict[str, set[int]] = defaultdict(set)
    for ch in channels.values():
        for call in ch.tries.values():
            if call["op"] == "intent":
                tried[call["coid"]].add(call["epoch"])
    for coid, positions in intents.items():
        if not coid.startswith(tag):
            continue
        for position in positions:
            by = sorted(tried.get(coid, ()))
            if not by:
                problems["one writer per epoch"].append(f"intent {coid} at {position} was tried by no engine")
            elif not any(epochs.holds(e, position) for e in by):
                newest = max(e for e, p in epochs.acquired.items() if p < position) if any(
                    p < position for p in epochs.acquired.values()) else 0
                bad[min(by)].append(position)
                problems["one writer per epoch"].append(
                    f"intent {coid} at {position} was tried only by epoch(s) {by} but lies in epoch {newest}'s interval")
    intervals = []
    for epoch, positions in sorted(bad.items()):
        newer = epochs.interval(epoch)[1]
        intervals.append(asdict(Interval(epoch, min(positions), max(positions),
                                         -1 if newer == float("inf") else int(newer), len(positions))))
    # deposed: paused, resumed, refused
    for name in paused:
        ch = channels[name]
        if ch.deposed is None:
            problems["deposed"].append(f"{name} (epoch {ch.epoch}) was resumed after the takeover but never refused")
            continue
        if "NotLeader" not in ch.deposed["reason"] and "epoch" not in ch.deposed["reason"]:
            problems["deposed"].append(f"{name} stopped for another reason: {ch.deposed['reason']}")
        end = epochs.interval(ch.epoch or 0)[1]
        late = [c for c in ch.acked() if c["pos"] > end and not c["dup"]]
        if late:
            problems["deposed"].append(f"{name} (epoch {ch.epoch}) appended {len(late)} calls after the takeover "
                                       f"at {end}: first at {late[0]['pos']}")
    stored = sum(1 for call in acked if call["pos"] in checker.rows_by_pos)
    figures = {
        "acknowledged": len(acked),
        "stored": stored,
        "intents_acknowledged": sum(1 for c in acked if c["op"] == "intent"),
        "intents_stored": sum(len(p) for c, p in intents.items() if c.startswith(tag)),
        "duplicates": sum(len(p) - 1 for c, p in intents.items() if c.startswith(tag) and len(p) > 1)
        + sum(len(p) - 1 for p in checker.fills.values() if len(p) > 1),
        "resent": sum(1 for c in acked if c.get("resend")),
        "resent_recognised": sum(1 for c in acked if c.get("resend") and c["dup"]),
        "epochs": len(epochs.acquired),
        "paused": len(paused),
        "paused_refused": sum(1 for name in paused if channels[name].deposed is not None),
        "double_writer_intervals": intervals,
        "head": checker.position,
    }
    return problems, figures


# ------------------------------------------------------------------------------- the harness


@dataclass
class Round:
    """One takeover: how the active engine was stopped and how long until the new one traded."""

    round: int
    action: str  # kill | pause | pause+standby-kill
    epoch_before: int | None
    epoch_after: int | None
    takeover_s: float | None  # kill/SIGSTOP -> first new intent acknowledged by the new active engine
    lease_free_s: float | None  # kill/SIGSTOP -> the standby noticed the lease was free
    recover_s: float | None  # the standby's takeover (record expiry, acquire, recover)
    after_s: float  # how long the active engine traded before the kill/pause
    pause_s: float | None = None  # SIGSTOP -> SIGCONT (pause rounds)
    via: str | None = None  # how the new active engine got the lease: takeover (a standby) or connect

    @property
    def while_paused(self) -> bool | None:
        """Pause rounds: whether the new engine traded before the paused one resumed (False: the
        paused engine held a database lock the takeover had to wait for)."""
        if self.pause_s is None or self.takeover_s is None:
            return None
        return self.takeover_s < self.pause_s


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class StandbyChaosReport:
    """The outcome of ``run_standby_chaos``."""

    backend: str
    url: str
    seed: int
    lease_seconds: float
    rounds: list[Round] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, list[str]] = field(default_factory=lambda: {name: [] for name, _ in CHECKS})
    seconds: float = 0.0

    def takeovers(self, action: str | None = None) -> list[float]:
        """Takeover times of the rounds (of ``action``: ``kill`` or ``pause``, by prefix), seconds."""
        return [r.takeover_s for r in self.rounds if r.takeover_s is not None
                and (action is None or r.action.startswith(action))]

    def stats(self, action: str | None = None) -> dict[str, float | int | None]:
        values = self.takeovers(action)
        return {"n": len(values), "p50": percentile(values, 0.5), "p95": percentile(values, 0.95),
                "max": max(values) if values else None}

    @property
    def ok(self) -> bool:
        """At least one round and no check failed."""
        return bool(self.rounds) and not any(self.checks.values())

    def problem(self, check: str, detail: str) -> None:
        self.checks[check].append(detail)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["takeover"] = {"all": self.stats(), "kill": self.stats("kill"), "pause": self.stats("pause")}
        d["pause_rounds_taken_over_while_paused"] = sum(1 for r in self.rounds if r.while_paused)
        d["failed"] = {name: len(p) for name, p in self.checks.items() if p}
        d["checks"] = {name: p[:20] for name, p in self.checks.items()}
        return d


class _Proc:
    """A node process of the run, by name."""

    def __init__(self, name: str, pid: int, acks: Path):
        self.name, self.pid, self.acks = name, pid, acks
        self.code: int | None = None

    def channel(self) -> NodeChannel:
        return read_node_channel(self.acks)


def run_standby_chaos(
    url: str,
    rounds: int,
    *,
    seed: int | None = None,
    pause_fraction: float = 0.25,
    standby_kill_fraction: float = 0.3,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    renew_seconds: float | None = None,
    engine_id: str = ENGINE_ID,
    min_s: float = 0.2,
    max_s: float = 1.5,
    pace: float = 0.002,
    workdir: str | None = None,
    on_round: Callable[[Round, StandbyChaosReport], None] | None = None,
) -> StandbyChaosReport:
    """Run ``rounds`` takeovers (see the module docstring) and check the log afterwards. Never
    raises for a failed check: the report says (``report.ok``)."""
    from ..adapters.store import open_store, redact

    seed = seed if seed is not None else random.randrange(1 << 31)
    rng = random.Random(seed)
    tag = f"s{uuid.uuid4().hex[:6]}"
    own_dir = workdir is None
    work = Path(workdir or tempfile.mkdtemp(prefix="tradestate-standby-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    store = open_store(url)
    report = StandbyChaosReport(backend=store.kind, url=redact(url), seed=seed, lease_seconds=lease_seconds)
    server = ForkServer(module="tradestate.tools.standby_chaos")
    procs: dict[str, _Proc] = {}
    live: set[str] = set()
    paused: list[str] = []
    count = 0
    wait_limit = lease_seconds + 60  # every wait bounded: a takeover slower than this is a failure

    def start(replaces: _Proc | None) -> _Proc:
        nonlocal count
        name = f"n{count}"
        acks = work / f"{name}.jsonl"
        pid = server.start("node", str(work / f"{name}.log"), url=url, acks=str(acks), engine_id=engine_id,
                           tag=tag, incarnation=count, seed=rng.randrange(1 << 30), lease_seconds=lease_seconds,
                           renew_seconds=renew_seconds, replaces=str(replaces.acks) if replaces else None,
                           pace=pace, wait_seconds=wait_limit * 2)
        count += 1
        proc = _Proc(name, pid, acks)
        procs[name] = proc
        live.add(name)
        return proc

    def until(proc: _Proc, ready: Callable[[NodeChannel], bool], timeout: float) -> NodeChannel | None:
        deadline = time.monotonic() + timeout
        while True:
            ch = proc.channel()
            if ready(ch):
                return ch
            if ch.error or time.monotonic() > deadline:
                return None
            time.sleep(0.005)

    def reap(proc: _Proc, sig: int | None = signal.SIGKILL) -> None:
        if sig is not None:
            try:
                os.kill(proc.pid, sig)
            except OSError:
                pass
        proc.code = server.wait(proc.pid)
        live.discard(proc.name)

    try:
        active = start(None)
        if until(active, lambda ch: ch.first_new_intent_at() is not None, 120) is None:
            report.problem("processes", f"the first engine did not trade: {active.channel().error or 'timeout'}")
            rounds = 0  # nothing to take over; the checks still run on what it wrote
        standby = start(active)
        for k in range(rounds):
            if until(standby, lambda ch: ch.standby_at is not None, 120) is None:
                report.problem("processes", f"round {k}: {standby.name} did not become a standby: "
                                            f"{standby.channel().error or 'timeout'}")
                break
            after = rng.uniform(min_s, max_s)
            time.sleep(after)
            pause = rng.random() < pause_fraction
            kill_standby = pause and rng.random() < standby_kill_fraction
            before = active.channel().epoch
            t0 = time.monotonic()
            successor = standby
            if pause:
                # A network pause longer than the lease: the standby takes over meanwhile (unless the
                # paused engine holds a database lock: then only once it resumes and is refused).
                pause_s = rng.uniform(lease_seconds + 0.5, lease_seconds + 2.5)
                os.kill(active.pid, signal.SIGSTOP)
                if kill_standby:  # the other one dies too, at a random moment: a fresh standby must take over
                    time.sleep(rng.uniform(0, pause_s))
                    reap(standby)
                    successor = start(active)
                time.sleep(max(0.0, t0 + pause_s - time.monotonic()))  # the whole pause, however fast the takeover
                os.kill(active.pid, signal.SIGCONT)
                resumed = time.monotonic()
                paused.append(active.name)
            else:
                reap(active)
            ch = until(successor, lambda c: c.first_new_intent_at() is not None, wait_limit)
            if pause:
                until(active, lambda c: c.deposed is not None or c.error is not None, 15)  # else the check names it
                reap(active)
            action = "pause+standby-kill" if kill_standby else "pause" if pause else "kill"
            if ch is None:
                report.problem("processes", f"round {k} ({action}): no takeover by {successor.name} within "
                                            f"{wait_limit:.0f} s: {successor.channel().error or 'timeout'}")
                report.rounds.append(Round(k, action, before, None, None, None, None, round(after, 3)))
                break
            first = ch.first_new_intent_at()
            assert first is not None and ch.active is not None
            noticed = ch.active["at"] - ch.active.get("takeover_s", 0.0)
            this = Round(k, action, before, ch.epoch, round(first - t0, 4), round(noticed - t0, 4),
                         ch.active.get("takeover_s"), round(after, 3), round(resumed - t0, 4) if pause else None,
                         ch.active["how"])
            report.rounds.append(this)
            active, standby = successor, start(successor)
            if on_round is not None:
                on_round(this, report)
    finally:
        for name in list(live):
            proc = procs[name]
            try:
                os.kill(proc.pid, signal.SIGCONT)
            except OSError:
                pass
            reap(proc)
        server.close()
    channels = {name: p.channel() for name, p in procs.items()}
    for name, ch in channels.items():
        code = procs[name].code
        if ch.error:
            report.problem("processes", f"{name} failed: {ch.error.strip().splitlines()[-1]}")
        elif code not in (-signal.SIGKILL, 0):
            report.problem("processes", f"{name} exited with {code}")
    problems, figures = check_run(store, engine_id, channels, tag=tag, paused=paused)
    for check, found in problems.items():
        for detail in found:
            report.problem(check, detail)
    report.figures = figures
    store.close()
    if own_dir:
        for f in work.glob("*"):
            f.unlink()
        work.rmdir()
    report.seconds = time.monotonic() - started
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m tradestate.tools.standby_chaos forkserver``: the harness's fork server."""
    import sys

    from .chaos import _fork_server

    args = sys.argv[1:] if argv is None else argv
    if args != ["forkserver"]:
        print("usage: python -m tradestate.tools.standby_chaos forkserver (the harness is `tradestate standby-chaos`)",
              file=sys.stderr)
        return 2
    import tradestate  # noqa: F401 - preloaded for the children
    from ..adapters.store import postgres as _pg, sqlite as _sqlite  # noqa: F401
    from .. import engines as _engines, recovery as _recovery  # noqa: F401

    _fork_server({"node": node})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
