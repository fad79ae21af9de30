"""A throwaway PostgreSQL cluster stopped with ``pg_ctl stop -m immediate`` while a client appends.

The cluster is our own (``initdb`` into a temporary directory, a free port, its own socket
directory; as root through ``runuser -u postgres``), so the test can crash it without touching
the machine's server. One client, in this process, records the chaos harness's workload (intents,
submissions, acks, partial fills) in a loop: a call that fails is re-sent with the same ids, as an
engine would (the calls are idempotent). The timeline:

    appends ok  ->  pg_ctl stop -m immediate  ->  down 3 s  ->  pg_ctl start  ->  appends ok again

The scenario runs once (a module fixture); each test asserts one property of what happened:

* while the server is down, every call fails within a bounded time (no hang) with an error that
  says what is wrong;
* nothing the client acknowledged before the crash is missing after the restart, and the log
  passes every check of the kill -9 harness (no gap, nothing torn, no duplicate from re-sends);
* the same client (same object, same process) carries on recording once the cluster is back.

Two stricter properties hold since their fixes: after the restart the client sees its own writes at
once (a run of holes left by the sequence's crash jump is voided together, not one per second), and
errors while the server is down are the documented ``AppendFailed``.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tradestate
from tradestate.tools.pg_cluster import bindir
from tradestate.adapters.store import open_store
from tradestate.tools.chaos import order_calls, perform, verify_log
from tests.support.xdist import TIMING

pytestmark = [pytest.mark.postgres, pytest.mark.slow, TIMING]

PG_BIN = Path(os.environ.get("TRADESTATE_PG_BIN") or bindir() or "/usr/lib/postgresql/15/bin")
DOWN_SECONDS = 3.0
CALL_BOUND = 15.0  # no call may take longer than this, up or down (the pool's timeout is 5 s)


def _as_postgres(*cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a server binary as the postgres user (it refuses to run as root)."""
    if os.geteuid() == 0:
        cmd = ("runuser", "-u", "postgres", "--", *cmd)
    return subprocess.run(cmd, cwd="/", capture_output=True, text=True, timeout=timeout)


class Cluster:
    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="tradestate-immediate-")
        os.chmod(self.dir, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.data = f"{self.dir}/data"
        run = _as_postgres(str(PG_BIN / "initdb"), "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")
        assert run.returncode == 0, run.stderr
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres?schema=immediate&connect_timeout=2"

    def start(self) -> None:
        run = _as_postgres(str(PG_BIN / "pg_ctl"), "-D", self.data, "-l", f"{self.dir}/log", "-w", "-t", "60",
                           "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start")
        assert run.returncode == 0, run.stdout + run.stderr + self.log()

    def stop(self, mode: str) -> None:
        run = _as_postgres(str(PG_BIN / "pg_ctl"), "-D", self.data, "-m", mode, "-w", "stop")
        assert run.returncode == 0, run.stdout + run.stderr

    def log(self) -> str:
        try:
            return Path(f"{self.dir}/log").read_text()[-3000:]
        except OSError:
            return ""

    def destroy(self) -> None:
        _as_postgres(str(PG_BIN / "pg_ctl"), "-D", self.data, "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Attempt:
    started: float
    seconds: float
    call: dict
    result: dict | None = None
    error: BaseException | None = None


@dataclass
class Run:
    attempts: list[Attempt] = field(default_factory=list)
    t_stop: float = 0.0  # when pg_ctl stop -m immediate returned
    t_starting: float = 0.0  # when pg_ctl start was run (the server may accept before it returns)
    t_up: float = 0.0  # when pg_ctl start returned
    t_end: float = 0.0
    crashed: BaseException | None = None  # the appender died of something other than a call error

    def ok(self) -> list[Attempt]:
        return [a for a in self.attempts if a.error is None]

    def acked(self) -> list[dict]:
        return [{**a.call, **a.result} for a in self.ok()]


class Appender(threading.Thread):
    """Records the workload through one client; re-sends a failed call (same ids) until it lands."""

    def __init__(self, client: tradestate.TradestateClient, run: Run):
        super().__init__(name="appender", daemon=True)
        self.client, self.run_ = client, run
        self.stop = threading.Event()

    def run(self) -> None:
        rng = random.Random(11)
        order = 0
        try:
            while not self.stop.is_set():
                order += 1
                for call in order_calls(rng, f"imm-o{order}"):
                    while not self.stop.is_set():
                        started = time.monotonic()
                        try:
                            result = perform(self.client, call)
                        except Exception as e:  # noqa: BLE001 - every failure is recorded and asserted on
                            self.run_.attempts.append(Attempt(started, time.monotonic() - started, call, error=e))
                            time.sleep(0.1)
                            continue
                        self.run_.attempts.append(Attempt(started, time.monotonic() - started, call, result))
                        break
                    if self.stop.is_set() or (call["op"] == "intent" and not result["acc"]):
                        break
        except BaseException as e:  # noqa: BLE001
            self.run_.crashed = e


@pytest.fixture(scope="module")
def scenario():
    if not (PG_BIN / "initdb").exists():
        message = f"no PostgreSQL server binaries at {PG_BIN} (set TRADESTATE_PG_BIN)"
        if os.environ.get("TRADESTATE_REQUIRE_PG") == "1":
            pytest.fail(message)
        pytest.skip(message)
    cluster = Cluster()
    try:
        cluster.start()
        run = Run()
        client = tradestate.connect(cluster.url)
        appender = Appender(client, run)
        appender.start()
        deadline = time.monotonic() + 60
        while len(run.ok()) < 200 and time.monotonic() < deadline and appender.is_alive():
            time.sleep(0.05)
        cluster.stop("immediate")
        run.t_stop = time.monotonic()
        time.sleep(DOWN_SECONDS)
        run.t_starting = time.monotonic()
        cluster.start()
        run.t_up = time.monotonic()
        # carry on until 50 calls have succeeded since the restart (or a minute has passed)
        deadline = run.t_up + 60
        while time.monotonic() < deadline and appender.is_alive():
            if sum(1 for a in run.ok() if a.started >= run.t_up) >= 50:
                break
            time.sleep(0.05)
        appender.stop.set()
        appender.join(CALL_BOUND * 2)
        assert not appender.is_alive(), "the appender hangs in a call"
        run.t_end = time.monotonic()
        client.close()
        yield cluster, run
    finally:
        cluster.destroy()


def describe(run: Run) -> str:
    lines = []
    for a in run.attempts:
        if a.error is not None or a.started > run.t_stop - 0.2:
            at = a.started - run.t_stop
            what = f"{type(a.error).__module__}.{type(a.error).__name__}: {str(a.error)[:120]}" if a.error else "ok"
            lines.append(f"  t{at:+7.2f}s {a.seconds:5.2f}s {a.call['op']:6} {a.call['coid']:10} {what}")
    errors = [i for i, line in enumerate(lines) if not line.endswith(" ok")]
    first = max(0, (errors[0] if errors else len(lines)) - 5)
    return "\n".join(lines[first:first + 60])


def test_calls_fail_fast_with_a_clear_error_while_the_server_is_down(scenario):
    _cluster, run = scenario
    assert run.crashed is None, repr(run.crashed)
    assert len([a for a in run.ok() if a.started < run.t_stop]) >= 200, "too few appends before the crash"
    # calls that ended while the server was down (one started then may land once it is back)
    down = [a for a in run.attempts if run.t_stop <= a.started + a.seconds < run.t_starting]
    assert down, f"no call was attempted while the server was down:\n{describe(run)}"
    succeeded = [a for a in down if a.error is None]
    assert not succeeded, f"{len(succeeded)} calls succeeded while the server was down: {succeeded[:3]}\n{describe(run)}"
    slow = [a for a in run.attempts if a.seconds > CALL_BOUND]
    assert not slow, f"calls hung for more than {CALL_BOUND} s:\n{describe(run)}"
    # a clear message: it names the connection problem, whatever the exception class
    clear = ("connection", "server closed", "terminat", "could not", "couldn't", "refused", "shut down")
    unclear = [a for a in down if not any(w in str(a.error).lower() for w in clear)]
    assert not unclear, f"unclear errors:\n{describe(run)}"


def test_nothing_acknowledged_is_lost_and_the_log_is_whole(scenario):
    cluster, run = scenario
    acked = run.acked()
    before = [c for a, c in zip(run.ok(), acked) if a.started < run.t_stop]
    assert before
    with open_store(cluster.url) as store:
        problems = verify_log(store, acked)  # every acknowledged event where the client said; no gap,
        # nothing torn, one intent per client order id and one fill per exec id despite the re-sends
    assert problems == [], "\n".join(f"[{c}] {p}" for c, p in problems)


def test_the_same_client_carries_on_after_the_restart(scenario):
    _cluster, run = scenario
    after = [a for a in run.ok() if a.started >= run.t_up]
    assert len(after) >= 50, f"only {len(after)} calls succeeded in the minute after the restart:\n{describe(run)}"
    intents = [a for a in after if a.call["op"] == "intent" and a.result["acc"] and not a.result["dup"]]
    fills = [a for a in after if a.call["op"] == "fill" and not a.result["dup"]]
    assert intents and fills, "new orders and fills must be recorded after the restart"


def test_the_client_sees_its_own_writes_at_once_after_the_restart(scenario):
    _cluster, run = scenario
    after = [a for a in run.attempts if a.started >= run.t_up]
    first_ok = next(i for i, a in enumerate(after) if a.error is None)
    # from the first success on, the client's own orders are known to it: no call fails any more
    failing = [a for a in after[first_ok:] if a.error is not None]
    assert not failing, f"{len(failing)} calls failed after the first success since the restart:\n{describe(run)}"


def test_errors_while_down_are_the_documented_append_failed(scenario):
    _cluster, run = scenario
    down = [a for a in run.attempts if a.error is not None]
    assert down
    wrong = [a for a in down if not isinstance(a.error, tradestate.TradestateError)]
    assert not wrong, f"{len(wrong)} of {len(down)} errors are not TradestateError:\n{describe(run)}"
