"""``tradestate recover``: from a crash to ready-to-trade, one step at a time, every step on record.

detect (did the engine stop cleanly?) → verify (the digest chain) → load the newest valid
checkpoint → replay the tail → reconcile with each configured broker → check health → record the
report (``RecoveryCompleted``) and, when ready after a crash, the resumption with its ramp level.
A broker that cannot be queried makes its part "unknown" (never "flat"); in strict mode any
discrepancy leaves trading blocked until an operator acknowledges it.

After a client raised ``LogRewound`` (the log went backwards under it), ``recover(...,
rewound=error)`` adds a ``rewind`` step: which of the events the client had acknowledged the log
still lacks (``report.lost``). They are re-established from the venue by the reconcile step
(fills, acknowledgements, cancels); without a broker to reconcile with, the step fails and the
engine is not ready.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from .adapters.store import Store
from .domain.ids import engine_stream_id
from .domain.integrity import quarantine_report
from .domain.state import TradingState
from .loading import fold_rest, from_checkpoint

STEP_NAMES = ("detect", "rewind", "verify", "checkpoint", "replay", "bootstrap", "reconcile", "health", "gate", "record")


@dataclass
class Step:
    name: str
    status: str  # ok, warn, failed, skipped
    seconds: float
    detail: str
    counts: dict[str, Any] = field(default_factory=dict)


@dataclass
class RecoveryReport:
    engine_id: str
    ready: bool = False
    strict: bool = False
    crashed: bool = False
    head: int = 0
    checkpoint_position: int | None = None
    replayed: int = 0
    discrepancies: int = 0
    corrective_events: int = 0
    blocked_accounts: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    recorded_position: int | None = None
    seconds: float = 0.0
    ready_seconds: float = 0.0  # to a caught-up, reconciled state (before recording the report)
    reconciliations: list[dict[str, Any]] = field(default_factory=list)
    # events a client acknowledged that the log no longer holds (``rewound``): position, stream_id,
    # version, type, event_id
    lost: list[dict[str, Any]] = field(default_factory=list)
    # the safety gates before resuming (gate_id, gate, passed, action, detail, values), the gates
    # that wait for an operator's approval (ids: ``GateApproved``), the accounts a closed market
    # started in monitoring mode (account -> why)
    gates: list[dict[str, Any]] = field(default_factory=list)
    awaiting_approval: list[str] = field(default_factory=list)
    monitoring: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)


class _Timer:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


def detect(store: Store, engine_id: str) -> tuple[bool, str]:
    """(crashed, why): a start with no clean stop before the next start (or before now) is a
    crash, and so is a lease that expired (``LeaseExpired``, or taken over as ``expired``), until
    a recovery is recorded after it. A released lease is a clean stop."""
    running_since: int | None = None
    crashed_at: int | None = None
    recovered_at: int | None = None
    expired = False
    for e in store.trading.read_stream(engine_stream_id(engine_id)):
        if e.topic == "EngineStarted":
            if running_since is not None:
                crashed_at = running_since
            running_since = e.position
        elif e.topic in ("EngineStopped", "LeaseReleased"):
            running_since = None
        elif e.topic == "LeaseExpired" or (e.topic == "LeaseAcquired" and b'"reason":"expired"' in e.state):
            if crashed_at is None:
                crashed_at = running_since if running_since is not None else e.position
                expired = True
            running_since = None
        elif e.topic == "RecoveryCompleted":  # closes the crashed run
            crashed_at, recovered_at, running_since, expired = None, e.position, None, False
    if running_since is not None:
        crashed_at = running_since
    if crashed_at is not None:
        how = "its lease expired (not renewed: dead, hung or cut off)" if expired else "it never recorded a clean stop"
        return True, f"engine {engine_id!r} started at position {crashed_at} and {how}: recovering from a crash"
    if recovered_at is not None:
        return False, f"engine {engine_id!r}: last crash already recovered (report at position {recovered_at})"
    if running_since is None and store.trading.read_stream(engine_stream_id(engine_id)):
        return False, f"engine {engine_id!r} stopped cleanly"
    return False, f"no start of engine {engine_id!r} on record"


def engine_ids(store: Store) -> list[str]:
    """Every engine id with a stream in the log (an index range read of the ``engine-`` streams)."""
    from .adapters.store.sql import read_cursor

    prefix = engine_stream_id("")
    p = store.dialect.param
    with read_cursor(store) as cur:
        # [prefix, prefix with its last character + 1): an index range over the stream ids
        table = getattr(store.trading, "versions_relation", None) or store.dialect.name(store.trading.table)
        cur.execute(f"SELECT DISTINCT stream_id FROM {table}"  # a partitioned log: its versions table (archives too)
                    f" WHERE stream_id >= {p} AND stream_id < {p} ORDER BY stream_id",
                    (prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)))
        return [row[0][len(prefix):] for row in cur.fetchall()]


def detect_all(store: Store) -> tuple[list[str], str]:
    """(the engines that crashed, why): ``detect`` for every engine in the log."""
    crashed, lines = [], []
    for engine in engine_ids(store):
        did, why = detect(store, engine)
        lines.append(why)
        if did:
            crashed.append(engine)
    if not lines:
        return [], "no engine start on record"
    return crashed, "; ".join(lines)


def _still_lost(store: Store, events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events (position, stream_id, version, type, event_id) that the log does not hold:
    no event with that id at that version of that stream."""
    import orjson

    lost = []
    for e in events:
        rows = store.trading.read_stream(e["stream_id"], int(e["version"]) - 1)
        found = rows[0] if rows and rows[0].originator_version == int(e["version"]) else None
        if found is None or orjson.loads(found.state).get("event_id") != e["event_id"]:
            lost.append(dict(e))
    return lost


def check_rewind(store: Store, rewound: Any, *, reconciling: bool) -> tuple[Step, list[dict[str, Any]]]:
    """The ``rewind`` step for a ``LogRewound`` (or its attributes as a dict): what the client
    knew, what the log holds now, and the acknowledged events it still lacks. ``reconciling``:
    a broker will be reconciled with (it re-establishes what the venue knows)."""
    timer = _Timer()
    info = rewound if isinstance(rewound, dict) else {
        k: getattr(rewound, k) for k in ("known_position", "known_event_id", "found_head", "found_event_id", "lost")}
    lost = _still_lost(store, info.get("lost") or ())
    head = store.trading.head()
    counts = {"known_position": info["known_position"], "head": head, "lost": len(lost)}
    what = (f"the client had seen position {info['known_position']} (event {info['known_event_id']}); "
            f"the log's head is {head}")
    if not lost:
        return Step("rewind", "warn", timer.seconds, what + "; every event the client acknowledged is in the log",
                    counts), lost
    kinds: dict[str, int] = {}
    for e in lost:
        kinds[e["type"]] = kinds.get(e["type"], 0) + 1
    listed = ", ".join(f"{n} {t}" for t, n in sorted(kinds.items()))
    detail = (f"{what}; the log lost {len(lost)} event(s) the client acknowledged ({listed}), from position "
              f"{lost[0]['position']}: ")
    if reconciling:
        detail += "the venue's fills and order states are re-established by reconciliation below; intents " \
                  "that were never sent must be recorded again"
        return Step("rewind", "warn", timer.seconds, detail, counts), lost
    detail += "configure the broker(s) and recover again so that reconciliation re-establishes them"
    return Step("rewind", "failed", timer.seconds, detail, counts), lost


PARALLEL_VERIFY_EVENTS = 100_000  # beyond this many events to re-hash, verify in another process


def _verify_in_child(url: str, after: int) -> dict[str, Any]:
    """Run in a worker process: the chain walk (hashing) next to the fold, on the other core."""
    from .adapters.store import digest, open_store

    with open_store(url, create=False) as store:
        result = digest.verify(store, after=after)
    return {k: getattr(result, k) for k in _VERIFY_FIELDS}


VERIFY_WORKER_NICE = 10


def verify_worker_nice() -> int:
    """How much lower the verify worker's priority is while the replay runs beside it.

    The replay is the critical path and the verify has slack: on two cores the replay then keeps
    its core (cold start, 1M events on PostgreSQL: 4.6-5.1 s -> 4.2-4.6 s). Once the replay is
    done the worker gets its priority back (``_VerifyWorker.replay_done``): on a busy box a
    niced worker gets a tenth of a share against every other process, and the verify ended 3-9 s
    after the replay (1M events, load 8-10 on two cores)."""
    return VERIFY_WORKER_NICE if hasattr(os, "nice") else 0


def _verify_main() -> None:
    """The worker process (argv: url, after, nice): print the verification as JSON on stdout."""
    import sys

    import orjson

    nice = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    if nice and hasattr(os, "nice"):
        os.nice(nice)
    sys.stdout.buffer.write(orjson.dumps(_verify_in_child(sys.argv[1], int(sys.argv[2]))))


class _VerifyWorker:
    """``_verify_in_child`` in a plain ``python -c`` subprocess: ``multiprocessing`` would re-import
    the caller's main module, which a script without an ``if __name__ == "__main__"`` guard
    cannot survive."""

    def __init__(self, url: str, after: int):
        import subprocess
        import sys

        self.nice = verify_worker_nice()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tradestate.recovery import _verify_main; _verify_main()", url, str(after),
             str(self.nice)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )

    def replay_done(self) -> None:
        """Nothing runs beside the verify any more: give the worker this process's priority back
        when this process may raise it (root or CAP_SYS_NICE); otherwise it keeps its lower one."""
        if self.nice and self.proc.poll() is None:
            try:
                os.setpriority(os.PRIO_PROCESS, self.proc.pid, os.getpriority(os.PRIO_PROCESS, 0))
            except (OSError, AttributeError):
                pass

    def result(self) -> dict[str, Any]:
        import orjson

        out, err = self.proc.communicate()
        if self.proc.returncode != 0:
            lines = err.decode(errors="replace").strip().splitlines()
            raise RuntimeError(f"the verify worker exited with {self.proc.returncode}: "
                               f"{lines[-1] if lines else 'no message'}")
        return orjson.loads(out)

    def shutdown(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


_VERIFY_FIELDS = ("ok", "first_bad_position", "problem", "detail", "checked_events", "sealed_upto",
                  "unsealed_events", "seconds")


class _VerifyThread:
    """``digest.verify`` of a short tail (a warm start on PostgreSQL) on a thread beside the tail's
    fold: the server's work and the round trips (most of it there) overlap the fold instead of
    preceding it. The thread reads on its own connection and gives it back when done."""

    def __init__(self, store: Store, after: int):
        import threading

        self._result: dict[str, Any] | None = None
        self._error: BaseException | None = None

        def run() -> None:
            from .adapters.store import digest
            from .adapters.store.sql import release

            try:
                result = digest.verify(store, after=after)
                self._result = {k: getattr(result, k) for k in _VERIFY_FIELDS}
            except BaseException as e:  # noqa: BLE001 - handed to the caller by result()
                self._error = e
            finally:
                try:
                    release(store)
                except Exception:  # noqa: BLE001, S110 - a connection that cannot be given back is dropped with the pool
                    pass

        self._thread = threading.Thread(target=run, name="recovery-verify", daemon=True)
        self._thread.start()

    def result(self) -> dict[str, Any]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def replay_done(self) -> None:
        """Nothing to do: the thread runs at the process's priority."""

    def shutdown(self) -> None:
        self._thread.join()


class _Verification:
    """The verify step, started before the tail is folded: when the tail to re-hash is short (a
    warm start), inline on SQLite and on a thread beside the fold on PostgreSQL (where most of it
    is the server's work and round trips); in a worker process when it is long (a cold start
    re-hashes the whole log: that runs beside the fold instead of before it)."""

    def __init__(self, store: Store, mode: str, since: int, head: int):
        self.store, self.mode, self.since = store, mode, since
        self.timer = _Timer()
        self.future: Any = None
        self.pool: Any = None
        self.step: Step | None = None
        self.beside = "in a worker process"
        if mode == "none":
            self.step = Step("verify", "skipped", 0.0, "skipped (--no-verify)")
            return
        try:
            from .adapters.store import digest  # noqa: F401
        except ImportError:
            self.step = Step("verify", "skipped", 0.0, "the digest chain is not available in this version")
            return
        self.after = since if mode == "tail" else 0
        if head - self.after >= PARALLEL_VERIFY_EVENTS:
            self.pool = self.future = _VerifyWorker(store.url, self.after)
        elif store.kind == "postgresql":
            self.pool = self.future = _VerifyThread(store, self.after)
            self.beside = "on a thread"
        else:
            from .adapters.store import digest

            result = digest.verify(store, after=self.after)
            self.step = self._step({k: getattr(result, k) for k in _VERIFY_FIELDS}, parallel=False)

    def _step(self, r: dict[str, Any], *, parallel: bool) -> Step:
        counts = {"checked": r["checked_events"], "sealed_upto": r["sealed_upto"], "unsealed": r["unsealed_events"]}
        if not r["ok"]:
            return Step("verify", "failed", self.timer.seconds,
                        f"the log was altered: first bad position {r['first_bad_position']} "
                        f"({r['problem']}: {r['detail']})", counts)
        scope = "whole chain" if self.after == 0 else f"chain links, and events after position {self.after}"
        where = f"; {self.beside}, beside the replay" if parallel else ""
        return Step("verify", "ok", self.timer.seconds, f"digest chain intact ({scope}{where})", counts)

    def replay_done(self) -> None:
        """The replay beside the verify (in a worker process or on a thread) has finished."""
        if self.pool is not None:
            self.pool.replay_done()

    def result(self) -> Step:
        if self.step is None:
            try:
                self.step = self._step(self.future.result(), parallel=True)
            except Exception as e:  # noqa: BLE001 - a verify that could not run is a failed step
                self.step = Step("verify", "failed", self.timer.seconds,
                                 f"could not verify: {type(e).__name__}: {e}")
            finally:
                self.pool.shutdown()
        return self.step


def _health(store: Store, state: TradingState, head: int, now: datetime) -> tuple[Step, list[str]]:
    timer = _Timer()
    problems: list[str] = []
    notes: list[str] = []
    if state.position < head:
        problems.append(f"the fold stopped at {state.position}, the log head is {head} (an append in flight?)")
    blocked = sorted(a.account for a in state.accounts.values() if a.blocked)
    for name in blocked:
        problems.append(f"account {name}: trading blocked until acknowledged ({state.accounts[name].blocked_reason})")
    for a in state.accounts.values():
        if a.kill_switch:
            notes.append(f"account {a.account}: kill switch engaged ({a.kill_switch_reason})")
        if a.breaker_active(now):
            notes.append(f"account {a.account}: circuit breaker tripped ({a.breaker_reason})")
    quarantined = quarantine_report(state)
    for q in quarantined:
        notes.append(f"{q['kind']} {q['name']} quarantined from position {q['position']} ({q['reason']}): "
                     "no decision is taken on it")
    open_orders = sum(len(a.open_orders) for a in state.accounts.values())
    counts = {"open_orders": open_orders, "positions": sum(1 for p in state.positions.values() if p.qty),
              "accounts": len(state.accounts), "quarantined": len(quarantined)}
    if problems:
        return Step("health", "failed", timer.seconds, "; ".join(problems + notes), counts), blocked
    return Step("health", "warn" if notes else "ok", timer.seconds,
                "; ".join(notes) or "state caught up with the log; nothing blocked", counts), blocked


def _bootstrap_step(client: Any, adapters: Sequence[Any], now: datetime, record: bool) -> Step:
    """Import each account the log holds nothing of from its venue (``recover --from-venue``)."""
    from .bootstrap import account_on_record, bootstrap
    from .domain.errors import TradestateError

    timer = _Timer()
    if not adapters:
        return Step("bootstrap", "failed", timer.seconds, "--from-venue needs a broker to import from")
    done, lines, failed = 0, [], False
    for adapter in adapters:
        where = f"{adapter.broker}/{adapter.account}"
        held = account_on_record(client.state, adapter.account)
        if held is not None:
            lines.append(f"{where}: on record already ({held}): reconciled instead")
            continue
        if not record:
            lines.append(f"{where}: not on record: would be imported from the venue (dry run)")
            continue
        try:
            result = bootstrap(client, adapter, now=now)
        except TradestateError as e:
            failed = True
            lines.append(f"{where}: {e}")
            continue
        done += 1
        c = result.counts
        lines.append(f"{where}: imported from the venue: {c['positions']} positions, {c['orders_imported']} orders "
                     f"({c['open_orders']} open), {c['balances']} balances")
    return Step("bootstrap", "failed" if failed else "ok", timer.seconds, "; ".join(lines), {"imported": done})


def recover(
    store: Store,
    *,
    engine_id: str | None = "engine",
    strict: bool = False,
    adapters: Sequence[Any] = (),
    verify: str = "tail",  # tail | full | none
    ramp: int | None = None,  # None: 50 % after a crash, nothing recorded after a clean stop
    record: bool = True,
    clock: Callable[[], datetime] | None = None,
    exchange_tz: str = "America/New_York",
    rewound: Any = None,
    initial_state: TradingState | None = None,
    lease: Any = None,
    client_options: dict[str, Any] | None = None,
    from_venue: bool = False,
    gates: Any = None,
    drop_copies: Sequence[Any] = (),
) -> tuple[RecoveryReport, Any]:
    """Run the recovery sequence; returns (report, a TradestateClient on the recovered state).
    Nothing is appended with ``record`` False (a dry run: reconciliation is planned only).
    ``initial_state``: a state already folded from this store (a warm standby's): no checkpoint is
    loaded, only the tail after it is folded. ``lease`` (``engines.EngineLease``, taken): the
    recovered client is the active engine, every append fenced with the lease's epoch.
    ``client_options``: more ``TradestateClient`` options for that client (``venue``...).
    ``engine_id`` None: every engine in the log is checked; the run counts as after a crash if
    any of them crashed, and the report is recorded on each crashed engine's stream.
    ``rewound``: the ``LogRewound`` a client raised (or its attributes as a dict): the report's
    ``rewind`` step and ``lost`` say which acknowledged events the log no longer holds.
    ``from_venue``: an account of ``adapters`` the log holds nothing of (an empty or lost log) is
    first imported from its venue (``tradestate.bootstrap``: the ``bootstrap`` step), then
    reconciled like the others.
    ``gates`` (``tradestate.gates.GateConfig``; None: its defaults; False: none): before trading
    resumes (after a crash, or with ``ramp``), each safety gate is evaluated and recorded
    (``GateEvaluated``, a ``gate`` step each): a gate that needs an operator's approval leaves the
    engine not ready (``awaiting_approval``; intents are refused until a ``GateApproved``), a closed
    market starts the accounts trading there in monitoring mode (``monitoring``). Gates still
    waiting from an earlier recovery keep the engine not ready too.
    ``drop_copies``: FIX drop copies of some of the ``adapters``' accounts (paired by account and
    venue): those accounts are reconciled three ways (``tradestate.three_way``); an alert (the API
    and the drop copy disagree) withholds their corrections and fails the reconcile step."""
    from .client import TradestateClient

    if verify not in ("tail", "full", "none"):
        raise ValueError("verify must be tail, full or none")
    if ramp is not None and ramp not in (50, 75, 100):
        raise ValueError("ramp must be 50, 75 or 100")
    guard = clock is None  # the wall clock: time for decisions never runs backwards
    clock = clock or (lambda: datetime.now(timezone.utc))
    total = _Timer()
    report = RecoveryReport(engine_id=engine_id or "engine", strict=strict)

    # 1. detect
    timer = _Timer()
    if engine_id is None:
        crashed_engines, detail = detect_all(store)
        report.crashed = bool(crashed_engines)
        if crashed_engines:
            report.engine_id = ",".join(crashed_engines)
    else:
        crashed_engines = []
        report.crashed, detail = detect(store, engine_id)
    report.head = store.trading.head()
    report.steps.append(Step("detect", "warn" if report.crashed else "ok", timer.seconds, detail,
                             {"head": report.head}))
    if rewound is not None:
        step, report.lost = check_rewind(store, rewound, reconciling=bool(adapters))
        report.steps.append(step)

    # 3. checkpoint (found first: the tail to verify starts at its position)
    timer = _Timer()
    if initial_state is not None:
        state, refused = initial_state, []
        report.checkpoint_position = None
    else:
        state, loaded = from_checkpoint(store, exchange_tz, head=report.head)
        refused = [f"checkpoint {r.checkpoint.id} at {r.checkpoint.position}: {'; '.join(r.reasons[:3])}"
                   for r in loaded.rejected]
    if initial_state is not None:
        detail = f"warm state at position {state.position} (a standby's fold): no checkpoint needed"
    elif state is not None:
        report.checkpoint_position = loaded.checkpoint.position  # type: ignore[union-attr]
        detail = f"checkpoint {loaded.checkpoint.id} at position {report.checkpoint_position} loaded"  # type: ignore[union-attr]
    else:
        detail = "no valid checkpoint: replaying from zero"
    if refused:
        detail += "; refused: " + " | ".join(refused)
    checkpoint_step = Step("checkpoint", "warn" if refused else "ok", timer.seconds, detail,
                           {"refused": len(refused), "position": report.checkpoint_position or 0})

    # 2. verify (a long walk runs in another process while the tail is replayed)
    verification = _Verification(store, verify, report.checkpoint_position or (state.position if initial_state
                                                                              is not None else 0), report.head)

    # 4. replay the tail (with no checkpoint: the cold fold, which leaves finished orders in the log)
    timer = _Timer()
    start = state.position if state is not None else 0
    state, report.replayed = fold_rest(store, state, exchange_tz)
    rate = report.replayed / timer.seconds if timer.seconds > 0 else 0.0
    replay_step = Step("replay", "ok", timer.seconds,
                       f"{report.replayed:,} events after position {start:,} folded ({rate:,.0f}/s)",
                       {"events": report.replayed, "position": state.position})
    verification.replay_done()
    verify_step = verification.result()
    report.steps += [verify_step, checkpoint_step, replay_step]
    client = TradestateClient(store, clock=clock, initial_state=state, exchange_tz=exchange_tz, clock_guard=guard,
                              clock_skew_threshold=0.05 if record else None, lease=lease, **(client_options or {}))

    if from_venue:
        report.steps.append(_bootstrap_step(client, adapters, clock(), record))

    # 5. reconcile
    timer = _Timer()
    if not adapters:
        report.steps.append(Step("reconcile", "skipped", timer.seconds, "no broker configured"))
    else:
        from .three_way import pair_drop_copies, reconcile_one

        statuses = []
        drops = pair_drop_copies(adapters, drop_copies)
        alerted = False
        for i, adapter in enumerate(adapters):
            # A dry run (record False) appends nothing: the runner plans and says what it would append.
            result, three = reconcile_one(client, adapter, drops.get(i), strict=strict, now=clock(),
                                          dry_run=not record)
            entry = {k: v for k, v in vars(result).items() if not k.startswith("_")}
            if three is not None:
                entry["three_way"] = three.as_dict()["three_way"]
                alerted = alerted or three.withheld
            found, corrective = len(result.discrepancies), len(result.corrective_event_ids)
            verb = "corrective events" if not result.dry_run else "corrective events it would append (dry run)"
            report.reconciliations.append(entry)
            report.discrepancies += found
            report.corrective_events += corrective
            known = any(k[0] == adapter.account and k[1] == adapter.venue for k in client.state.positions)
            statuses.append(f"{adapter.broker}/{adapter.account} at venue {adapter.venue!r}: {entry['status']} "
                            f"({found} discrepancies, {corrective} {verb})"
                            + ("" if known else f"; note: the log held no position of {adapter.account} at "
                               f"{adapter.venue!r} before — check --venue if that is unexpected")
                            + ("" if three is None else f"; three views: {len(three.report.alerts)} alert(s)"
                               + (", the API and the drop copy disagree: nothing corrected" if three.withheld
                                  else "")))
        unknown = any(r["status"] == "unknown" for r in report.reconciliations)
        status = "failed" if unknown or alerted else ("warn" if report.discrepancies else "ok")
        report.steps.append(Step("reconcile", status, timer.seconds, "; ".join(statuses),
                                 {"discrepancies": report.discrepancies, "corrective_events": report.corrective_events}))
    client.catch_up()

    # 6. health
    health, report.blocked_accounts = _health(store, client.state, store.trading.head(), clock())
    report.steps.append(health)
    report.ready = not any(s.status == "failed" for s in report.steps)
    if strict and report.discrepancies:
        report.ready = False
    report.ready_seconds = total.seconds
    state_ready = report.ready  # the state is sound: the limits may be set, whatever the gates say

    # 6b. safety gates before trading resumes
    level = ramp if ramp is not None else (50 if report.crashed else None)
    decisions: list[Any] = []
    gate_config = None
    if level is not None and gates is not False and state_ready:
        from .gates import GateConfig, evaluate, gate_id

        gate_config = gates or GateConfig()
        timings: dict[str, float] = {}
        decisions = evaluate(store, client.state, clock(), gate_config, timings)
        for d in decisions:
            status = "ok" if d.passed else ("failed" if d.requires_approval else "warn")
            gid = gate_id(d, report.head)
            detail = d.detail + (f" (approve: gate id {gid})" if d.requires_approval else "")
            report.steps.append(Step(f"gate {d.gate}", status, timings.get(d.gate, 0.0), detail, dict(d.values)))
            report.gates.append({"gate_id": gid, "gate": d.gate, "passed": d.passed, "action": d.action,
                                 "requires_approval": d.requires_approval, "detail": d.detail, "values": d.values})
    waiting = [x["gate_id"] for x in report.gates if x["requires_approval"]]
    earlier = [g_["gate_id"] for g_ in client.state.pending_gates() if g_["gate_id"] not in waiting]
    if earlier:
        report.steps.append(Step("gate approvals", "failed", 0.0, "gate(s) of an earlier recovery still wait for "
                                 "an operator's approval: " + ", ".join(earlier), {"waiting": len(earlier)}))
    report.awaiting_approval = waiting + earlier
    if report.awaiting_approval:
        report.ready = False

    # 7. record
    timer = _Timer()
    if record:
        if verify_step.status == "ok":  # extend the chain over what was just verified
            from .adapters.store.digest import seal

            seal(store)
        if decisions:
            from .gates import record as record_gates

            _rows, report.monitoring = record_gates(client, (crashed_engines or [engine_id or "engine"])[0],
                                                    decisions, report.head, gate_config, now=clock())
        resumed = []
        if state_ready and level is not None:
            for account in sorted(client.state.accounts):
                client.resume_trading(account, level, reason=f"recovery of engine {report.engine_id}")
                resumed.append(account)
        steps = [asdict(s) for s in report.steps]
        for engine in crashed_engines or [engine_id or "engine"]:
            recorded = client.record_recovery(
                engine, ready=report.ready, steps=steps, strict=strict, crashed=report.crashed,
                checkpoint_position=report.checkpoint_position, head=report.head, replayed=report.replayed,
                discrepancies=report.discrepancies, corrective_events=report.corrective_events)
        report.recorded_position = recorded.position
        detail = f"report recorded at position {recorded.position}"
        if resumed:
            detail += f"; trading resumed at {level} % for {', '.join(resumed)}"
        if report.awaiting_approval:
            detail += (f"; intents refused until an operator approves gate(s) {', '.join(report.awaiting_approval)}"
                       " (GateApproved)")
        if report.monitoring:
            detail += f"; monitoring mode (no new intents) for {', '.join(sorted(report.monitoring))}"
        report.steps.append(Step("record", "ok", timer.seconds, detail, {"resumed": len(resumed)}))
    else:
        if decisions:
            from .gates import monitoring_accounts

            market = next(d for d in decisions if d.gate == "market_hours")
            report.monitoring = monitoring_accounts(client.state, market, gate_config)
        report.steps.append(Step("record", "skipped", timer.seconds, "not recorded (--dry-run)"))
    report.seconds = total.seconds
    return report, client


__all__ = ["RecoveryReport", "Step", "check_rewind", "detect", "detect_all", "engine_ids", "recover"]
