"""The failover harness: a replicated PostgreSQL pair whose primary dies under engine load, again and again.

The harness starts its own cluster on free loopback ports (``tools.pg_cluster``: ``initdb``,
``pg_ctl``, ``pg_basebackup``; run as the ``postgres`` OS user when it runs as root): a primary
and one streaming standby, synchronous (``synchronous_standby_names`` names it) or, with
``asynchronous=True``, asynchronous. An engine process records orders (intents, submissions,
acks, partial fills) through ``tradestate.connect`` on a multi-host URL
(``postgresql://postgres@127.0.0.1:P1,127.0.0.1:P2/postgres?target_session_attrs=read-write``)
and writes every call to a side channel before it starts and once it was acknowledged (the kill
-9 harness's side channel, ``tools.chaos``).

Each round: the primary is stopped at once (``pg_ctl stop -m immediate``: no shutdown
checkpoint, every connection cut), the standby is promoted (``pg_ctl promote``), and the old
primary is rebuilt as a standby of the new one (``pg_basebackup``); in synchronous mode the new
primary then names it in ``synchronous_standby_names`` and the next round waits until it streams
synchronously. Between the promotion and that moment the new primary runs alone (like Patroni's
non-strict synchronous mode); no failure is injected then. The engine is never told about any of
it: a call that fails with ``AppendFailed`` is retried, the same call with the same client order
id / execution id (so retrying is idempotent), until it is acknowledged or a bounded total wait
runs out; a ``LogRewound`` makes it re-open its client, abandon the order in hand, and carry on
(each one is counted: in synchronous mode it is a finding).

With ``manager="patroni"`` (``PatroniCluster``) a failover manager does the promoting instead:
three nodes under Patroni with a one-member etcd, Patroni's ``synchronous_mode`` unless
asynchronous; a round kills the leader's node (its Patroni SIGKILLed, its server stopped at once),
Patroni promotes once the leader key expires (``ttl``), and the dead node's Patroni is started
again and rejoins (its data directory re-initialised when its timeline diverged).

After the rounds the log on the last primary is checked: every acknowledged call's event is in
it (found by identity: an asynchronous failover reuses positions), each client order id has one
intent and each execution id one fill, positions are 1..head with only ``$void`` rows between;
and write unavailability per failover is measured from the engine's first failed call after the
primary was stopped to its next acknowledged call (and, beside it, from the stop itself, and the
total of the engine's stalls from that failed call to the next failover: see ``stalled``).

``python -m tradestate.tools.failover engine --db URL --acks FILE`` runs the engine by hand.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from .pg_cluster import ClusterError, Node, PgCluster, free_port
from .pg_cluster import bindir as pg_cluster_bindir
from .chaos import ACCOUNTS, MAX_ORDER_QTY, OP_TYPES, AckWriter, LogChecker, order_calls, perform, read_side_channel

DEFAULT_BINDIR = str(pg_cluster_bindir() or "/usr/lib/postgresql/15/bin")  # the newest installed
RETRY_SECONDS = 60.0  # the engine gives up on one call after retrying it this long


# ------------------------------------------------------------------------------ the engine


def _open_client(url: str, deadline: float) -> Any:
    """``tradestate.connect(url)``, retried until ``deadline`` (monotonic) while no primary answers."""
    from ..client import connect
    from ..domain.errors import AppendFailed

    while True:
        try:
            return connect(url, venue="sim", use_checkpoints=False)
        except AppendFailed:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def engine(url: str, acks: str, *, tag: str, seed: int, retry_seconds: float = RETRY_SECONDS,
           limit: int | None = None) -> int:
    """The engine: records orders until killed (or ``limit`` calls), following the primary by itself.

    Side channel lines (besides the kill -9 harness's ``ready``/``try``/``ok``/``error``, each with
    ``at``: ``time.monotonic()``): ``fail`` (a call raised ``AppendFailed``; it is retried) and
    ``rewound`` (a call raised ``LogRewound``: the client was re-opened and the order abandoned).
    Raises (after writing ``error``) when one call stays unacknowledged for ``retry_seconds``."""
    from ..domain.errors import AppendFailed, LogRewound

    out = AckWriter(acks)
    try:
        client = _open_client(url, time.monotonic() + retry_seconds)
        rng = random.Random(seed)
        out.write({"t": "ready", "pid": os.getpid(), "head": client.position, "at": time.monotonic()})
        n = order = incarnation = 0
        while limit is None or n < limit:
            order += 1
            for call in order_calls(rng, f"{tag}-k{incarnation}-o{order}"):
                n += 1
                out.write({"t": "try", "n": n, "at": time.monotonic(), **call})
                result: dict[str, Any] | None = None
                first_failure: float | None = None
                failures = 0
                last_error = ""
                while True:
                    attempt_started = time.monotonic()
                    try:
                        result = perform(client, call)
                        break
                    except LogRewound as e:
                        out.write({"t": "rewound", "n": n, "at": time.monotonic(), "lost": len(e.lost),
                                   "error": str(e)[:500]})
                        try:
                            client.close()
                        except Exception:  # noqa: BLE001 - a client on a rewound log: dropped either way
                            pass
                        client = _open_client(url, time.monotonic() + retry_seconds)
                        incarnation += 1
                        break
                    except AppendFailed as e:
                        now = time.monotonic()
                        failures += 1
                        last_error = f"{type(e).__name__}: {e}"[:300]
                        if first_failure is None:
                            first_failure = now
                            out.write({"t": "fail", "n": n, "at": now, "error": f"{type(e).__name__}: {e}"[:500]})
                        if now - first_failure > retry_seconds:
                            raise
                        time.sleep(0.02)
                if result is None:
                    break  # the log went backwards: this order's earlier facts may be gone
                out.write({"t": "ok", "n": n, "at": time.monotonic(), "retries": failures, **result,
                           **({"last_error": last_error, "last_attempt_s": round(time.monotonic() - attempt_started, 4)}
                              if failures else {})})
                if call["op"] == "intent" and not result["acc"]:
                    break
        client.close()
        return n
    except BaseException:
        out.write({"t": "error", "at": time.monotonic(), "error": traceback.format_exc()})
        raise


@dataclass
class EngineLog:
    """The engine's side channel, read back: acknowledged calls and the times of everything."""

    acked: list[dict[str, Any]]
    pending: list[dict[str, Any]]
    ok_times: list[float]
    fail_times: list[float]
    rewinds: list[dict[str, Any]]
    error: str | None
    ready: bool


def read_engine_log(path: str | os.PathLike[str]) -> EngineLog:
    """The engine side channel at ``path`` (a torn last line is ignored)."""
    side = read_side_channel(path)
    ok_times: list[float] = []
    fail_times: list[float] = []
    rewinds: list[dict[str, Any]] = []
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        data = b""
    for line in data.split(b"\n")[:-1]:
        record = orjson.loads(line)
        kind = record.get("t")
        if kind == "ok":
            ok_times.append(record["at"])
        elif kind == "fail":
            fail_times.append(record["at"])
        elif kind == "rewound":
            rewinds.append(record)
    return EngineLog(side.acked(), side.pending, ok_times, fail_times, rewinds, side.error, side.ready)


# ------------------------------------------------------------------------------ the cluster


@dataclass
class FailoverTimes:
    """One failover as the cluster ran it: the node stopped, the node promoted, and when
    (``time.monotonic()``) the primary was stopped, the new one took writes, and the old one was
    back as a standby (streaming synchronously in synchronous mode)."""

    stopped: str
    promoted: str
    stopped_at: float
    promoted_at: float
    rebuilt_at: float


class Cluster:
    """The harness's primary and standbys: a ``tools.pg_cluster.PgCluster`` whose nodes are named
    ``node1``, ``node2``... (each its own application_name, the name ``synchronous_standby_names``
    uses), with ``fsync`` on, in a directory of its own (removed by ``close``)."""

    CONF = "fsync = on\nwal_retrieve_retry_interval = 200ms\n"  # PgCluster trades fsync for speed

    def __init__(self, nodes: int = 2, *, bindir: str = DEFAULT_BINDIR, workdir: str | None = None):
        self.pg = PgCluster(standbys=nodes - 1, names=[f"node{i + 1}" for i in range(nodes)], bin_dir=bindir,
                            base_dir=workdir, extra_conf=self.CONF, prefix="tradestate-failover-")
        self.dir = self.pg.base

    @property
    def primary(self) -> Node:
        return self.pg.primary

    @property
    def nodes(self) -> list[Node]:
        return sorted(self.pg.nodes, key=lambda n: n.name)

    def setup(self, asynchronous: bool) -> None:
        """Start the primary and its standbys, synchronous unless ``asynchronous``, and wait until
        they stream."""
        self.pg.synchronous = not asynchronous
        self.pg.start()

    def fail_over(self, asynchronous: bool) -> FailoverTimes:
        """Stop the primary at once, promote the standby (with no synchronous standby), rebuild
        the old primary as its standby (named in ``synchronous_standby_names`` unless
        ``asynchronous``) and wait until it streams."""
        old = self.pg.primary
        stopped_at = time.monotonic()
        new = self.pg.failover(mode="immediate", keep_synchronous=False)
        promoted_at = time.monotonic()
        old.rebuild_from(new)
        if asynchronous:
            self.pg.wait_sync(60)
        else:
            self.pg.set_synchronous(True, timeout=60)
        return FailoverTimes(old.name, new.name, stopped_at, promoted_at, time.monotonic())

    def url(self, schema: str = "failover") -> str:
        """The multi-host URL of every node: libpq picks whichever one is the primary now."""
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write&connect_timeout=2&schema={schema}"

    def has_primary(self) -> bool:
        """Whether a primary is running."""
        return self.pg.primary.running()

    def close(self) -> None:
        """Stop every node and remove the cluster's directory."""
        self.pg.close()


class PatroniCluster:
    """Three PostgreSQL nodes managed by Patroni with a one-member etcd, on loopback ports, in a
    directory of their own (``close`` stops every process it started, by its id, and removes it).

    A failover is a node's death: its Patroni is SIGKILLed and its server stopped at once; Patroni
    on the others notices the leader key expire (``ttl``) and promotes the synchronous standby
    (``synchronous_mode``; in asynchronous mode the most advanced replica). The dead node's Patroni
    is then started again and rejoins as a replica (its data directory re-initialised when it
    diverged)."""

    MANAGER_BINARIES = ("patroni", "etcd")
    LOOP_WAIT = 1  # seconds between Patroni's runs of its loop (a replica looks at the leader key this often)

    def __init__(self, nodes: int = 3, *, bindir: str = DEFAULT_BINDIR, workdir: str | None = None,
                 ttl: int = 10):
        problem = self.problem()
        if problem:
            raise ClusterError(problem)
        # never started: the directory, the binaries, running them as postgres
        self.pg = PgCluster(standbys=0, synchronous=False, bin_dir=bindir, base_dir=workdir,
                            prefix="tradestate-failover-")
        self.dir = self.pg.base
        self.ttl = ttl
        self.detection_s = float(ttl + self.LOOP_WAIT)  # the leader key expires, then a replica's next loop sees it
        self.names = [f"n{i + 1}" for i in range(nodes)]
        self.ports = {name: (free_port(), free_port()) for name in self.names}  # (postgres, REST API)
        self.etcd_ports = (free_port(), free_port())
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.asynchronous = False
        self.keep_logs = False  # set when an error names the logs

    @classmethod
    def problem(cls) -> str | None:
        """Why Patroni clusters cannot run here (None: they can)."""
        missing = [b for b in cls.MANAGER_BINARIES if shutil.which(b) is None]
        return f"{', '.join(missing)} not found (apt-get install patroni etcd-server)" if missing else None

    def _spawn(self, key: str, cmd: list[str]) -> None:
        kwargs: dict[str, Any] = {"user": "postgres", "group": "postgres", "extra_groups": []} \
            if self.pg.as_postgres else {}
        with open(self.dir / f"{key}.log", "ab") as log:
            self.procs[key] = subprocess.Popen(cmd, cwd="/", stdout=log, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)

    def _config(self, name: str) -> Path:
        pg_port, api_port = self.ports[name]
        config = {
            "scope": f"tradestate-{self.dir.name}", "name": name,
            "restapi": {"listen": f"127.0.0.1:{api_port}", "connect_address": f"127.0.0.1:{api_port}"},
            "etcd3": {"hosts": f"127.0.0.1:{self.etcd_ports[0]}"},
            "bootstrap": {
                "dcs": {"ttl": self.ttl, "loop_wait": self.LOOP_WAIT, "retry_timeout": max(2, (self.ttl - 1) // 2),
                        "synchronous_mode": not self.asynchronous, "maximum_lag_on_failover": 1 << 30,
                        "postgresql": {"use_pg_rewind": False, "parameters": {
                            "wal_level": "replica", "hot_standby": "on", "max_wal_senders": 8,
                            "max_replication_slots": 8}}},
                "initdb": [{"auth": "trust"}, {"username": "postgres"}],
                "pg_hba": ["host all all 127.0.0.1/32 trust", "host replication all 127.0.0.1/32 trust"],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{pg_port}", "connect_address": f"127.0.0.1:{pg_port}",
                "data_dir": str(self.dir / name), "bin_dir": str(self.pg.bin),
                "pgpass": str(self.dir / f"pgpass-{name}"),
                "remove_data_directory_on_rewind_failure": True,
                "remove_data_directory_on_diverged_timelines": True,
                # A node rebuilt as a replica copies with pg_basebackup, which by default waits for
                # the source's next spread checkpoint (minutes: checkpoint_timeout); Patroni adds
                # no --checkpoint of its own.
                "basebackup": [{"checkpoint": "fast"}],
                "authentication": {"superuser": {"username": "postgres"}, "replication": {"username": "postgres"}},
                "parameters": {"unix_socket_directories": str(self.dir), "shared_buffers": "16MB",
                               "max_connections": 60},
            },
        }
        path = self.dir / f"{name}.yml"
        path.write_bytes(orjson.dumps(config))  # JSON is YAML
        if self.pg.as_postgres:
            shutil.chown(path, "postgres", "postgres")
        return path

    def _members(self) -> list[dict[str, Any]]:
        import urllib.request

        for name in self.names:
            if name not in self.procs or self.procs[name].poll() is not None:
                continue
            try:
                url = f"http://127.0.0.1:{self.ports[name][1]}/cluster"
                with urllib.request.urlopen(url, timeout=1) as answer:
                    return orjson.loads(answer.read()).get("members", [])
            except OSError:
                continue
        return []

    def leader(self) -> str | None:
        """The running leader's name (None: none right now)."""
        for m in self._members():
            if m.get("role") == "leader" and m.get("state") == "running":
                return m["name"]
        return None

    def healthy(self) -> bool:
        """One running leader, every node up, and (synchronous mode) a synchronous standby."""
        members = self._members()
        up = [m for m in members if m.get("state") in ("running", "streaming")]
        sync = any(m.get("role") == "sync_standby" for m in up)
        return (len(up) == len(self.names) and sum(m.get("role") == "leader" for m in up) == 1
                and (sync or self.asynchronous))

    def _wait(self, what: str, condition: Callable[[], Any], timeout: float = 120) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            if time.monotonic() > deadline:
                self.keep_logs = True  # the error names them: ``close`` leaves them for a post-mortem
                raise ClusterError(f"Patroni cluster: {what} not reached after {timeout:.0f} s "
                                   f"(members: {self._members()}; logs in {self.dir})")
            time.sleep(0.1)

    def setup(self, asynchronous: bool) -> None:
        """Start etcd and every node's Patroni (the first bootstraps), and wait until healthy."""
        self.asynchronous = asynchronous
        client, peer = self.etcd_ports
        self._spawn("etcd", ["etcd", "--name", "e1", "--data-dir", str(self.dir / "etcd"),
                             "--listen-client-urls", f"http://127.0.0.1:{client}",
                             "--advertise-client-urls", f"http://127.0.0.1:{client}",
                             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                             "--initial-cluster", f"e1=http://127.0.0.1:{peer}"])
        for i, name in enumerate(self.names):
            self._spawn(name, ["patroni", str(self._config(name))])
            if i == 0:
                self._wait("a bootstrapped leader", self.leader)
        self._wait("every node up with a synchronous standby", self.healthy)

    def fail_over(self, asynchronous: bool) -> FailoverTimes:
        """Kill the leader's node (Patroni SIGKILLed, server stopped at once), wait for Patroni to
        promote another, start the dead node's Patroni again and wait until the cluster is whole."""
        self._wait("a healthy cluster", self.healthy)
        old = self._wait("a leader", self.leader)
        stopped_at = time.monotonic()
        self.procs[old].kill()
        self.procs[old].wait()
        self.pg.run("pg_ctl", "-D", str(self.dir / old), "-m", "immediate", "-w", "stop", check=False)  # or gone already
        new = self._wait("a new leader", lambda: (lambda n: n if n not in (None, old) else None)(self.leader()),
                         timeout=self.ttl * 6)
        promoted_at = time.monotonic()
        self._spawn(old, ["patroni", str(self._config(old))])
        self._wait("the old leader back as a replica", self.healthy)
        return FailoverTimes(old, new, stopped_at, promoted_at, time.monotonic())

    def url(self, schema: str = "failover") -> str:
        """The multi-host URL of every node: libpq picks whichever one is the primary now."""
        hosts = ",".join(f"127.0.0.1:{self.ports[n][0]}" for n in self.names)
        return f"postgresql://postgres@{hosts}/postgres?target_session_attrs=read-write&connect_timeout=2&schema={schema}"

    def has_primary(self) -> bool:
        """Whether a leader is running."""
        return self.leader() is not None

    def close(self) -> None:
        """Stop every Patroni (it stops its server), then etcd, each by its own process id; stop any
        server left, and remove the directory."""
        for key, proc in self.procs.items():
            if key != "etcd" and proc.poll() is None:
                proc.terminate()
        for key, proc in self.procs.items():
            if key == "etcd":
                continue
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for name in self.names:
            if (self.dir / name / "postmaster.pid").exists():
                self.pg.run("pg_ctl", "-D", str(self.dir / name), "-m", "immediate", "-w", "stop", check=False)
        etcd = self.procs.get("etcd")
        if etcd is not None and etcd.poll() is None:
            etcd.terminate()
            try:
                etcd.wait(10)
            except subprocess.TimeoutExpired:
                etcd.kill()
                etcd.wait()
        if self.keep_logs:  # the data directories go, the logs and configurations stay
            for name in self.names:
                shutil.rmtree(self.dir / name, ignore_errors=True)
            shutil.rmtree(self.dir / "etcd", ignore_errors=True)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


MANAGERS = ("pg_ctl", "patroni")


# ------------------------------------------------------------------------------ the report


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile (0..1) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 1))))
    return ordered[rank - 1]


@dataclass
class FailoverRound:
    """One failover: which node died and which took over, how long writes were unavailable, and
    how many calls the engine had acknowledged by the end of the round."""

    round: int
    killed: str
    promoted: str
    unavailable_s: float | None  # the engine's first failed call -> its next acknowledged call
    since_stop_s: float | None  # stop of the primary -> that acknowledged call
    first_failure_s: float | None  # stop of the primary -> the engine's first failed call (None: none failed)
    acked_after: int  # calls acknowledged after the failover, before the next one (or the end)
    promote_s: float
    rebuild_s: float
    stalled_s: float | None = None  # every wait > STALL for an acknowledgement from the first failed call on


@dataclass
class FailoverReport:
    """The outcome of ``run_failover``: rounds, acknowledged vs stored calls, losses and
    duplicates, write unavailability per failover."""

    mode: str  # "synchronous" or "asynchronous"
    seed: int
    rounds_asked: int
    manager: str = "pg_ctl"  # what promoted the standby: pg_ctl (the harness) or patroni
    detection_s: float = 0.0  # the manager's worst time to notice the dead primary (pg_ctl: 0, it is told)
    rounds: list[FailoverRound] = field(default_factory=list)
    acknowledged: int = 0  # calls the engine saw acknowledged
    stored: int = 0  # ... whose event is in the log after the last failover
    lost: int = 0  # acknowledged - stored
    lost_calls: list[str] = field(default_factory=list)  # the first lost ones
    duplicates: int = 0  # an exec id booked twice, an intent twice, a second submit or ack
    gaps: int = 0  # positions missing (other than $void), torn or misplaced rows
    misplaced: int = 0  # acknowledged events found at another position than the client returned
    rewinds: int = 0  # LogRewound seen by the engine (re-opened its client)
    rewound_lost: int = 0  # events the engine's clients reported lost in those LogRewound
    retried_calls: int = 0  # acknowledged calls that failed at least once first
    head: int = 0
    voids: int = 0
    engine_error: str | None = None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def unavailability(self) -> list[float]:
        """Seconds of write unavailability of every failover measured."""
        return [r.unavailable_s for r in self.rounds if r.unavailable_s is not None]

    @property
    def p50(self) -> float | None:
        """Median write unavailability (seconds)."""
        return percentile(self.unavailability, 0.5)

    @property
    def p95(self) -> float | None:
        """95th percentile of write unavailability (seconds)."""
        return percentile(self.unavailability, 0.95)

    @property
    def stalled_p50(self) -> float | None:
        """Median time the engine stalled per failover (seconds; see ``stalled``)."""
        return percentile([r.stalled_s for r in self.rounds if r.stalled_s is not None], 0.5)

    @property
    def stalled_p95(self) -> float | None:
        """95th percentile of the time the engine stalled per failover (seconds)."""
        return percentile([r.stalled_s for r in self.rounds if r.stalled_s is not None], 0.95)

    @property
    def progressed(self) -> bool:
        """Whether the engine had calls acknowledged after every failover."""
        return bool(self.rounds) and all(r.acked_after > 0 for r in self.rounds)

    @property
    def ok(self) -> bool:
        """Every round ran and the engine carried on after each one; no duplicate, no gap, no engine
        error; and in synchronous mode nothing acknowledged was lost and no log went backwards.
        (Asynchronous mode reports its losses without failing on them: showing them is its point.)"""
        clean = (len(self.rounds) == self.rounds_asked and self.progressed and self.duplicates == 0
                 and self.gaps == 0 and self.engine_error is None)
        if self.mode == "synchronous":
            return clean and self.lost == 0 and self.misplaced == 0 and self.rewinds == 0
        return clean

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values, with ``ok`` and the unavailability percentiles."""
        d = asdict(self)
        d.update(ok=self.ok, unavailability_p50_s=self.p50, unavailability_p95_s=self.p95,
                 stalled_p50_s=self.stalled_p50, stalled_p95_s=self.stalled_p95, progressed=self.progressed)
        return d


# ------------------------------------------------------------------------------ the harness


def _wait_acks(path: Path, after: float, count: int, timeout: float) -> EngineLog:
    """Poll the engine's side channel until ``count`` calls were acknowledged after ``after``
    (monotonic), the engine wrote an error, or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        log = read_engine_log(path)
        if sum(1 for t in log.ok_times if t > after) >= count or log.error or time.monotonic() > deadline:
            return log
        time.sleep(0.02)


STALL = 0.25  # seconds without an acknowledgement that count as a stall (the engine acks every few ms)


def stalled(log: EngineLog, start: float, end: float) -> float:
    """Seconds between ``start`` and ``end`` (monotonic) the engine spent waiting longer than
    ``STALL`` for an acknowledgement: every such wait from the first failed call on, counted whole
    (after a failover the first acknowledgement is not the end of it: a log position the new
    primary's sequence skipped holds readers back until it is voided)."""
    failed = [t for t in log.fail_times if start < t < end]
    if not failed:
        return 0.0
    total, previous = 0.0, failed[0]
    for t in log.ok_times:
        if t <= previous:
            continue
        if t >= end:
            break
        if t - previous > STALL:
            total += t - previous
        previous = t
    return round(total, 4)


def check_log(store: Any, acked: list[dict[str, Any]], report: FailoverReport) -> None:
    """Fill ``report``'s stored / lost / duplicates / gaps / misplaced from the log in ``store``."""
    from ..domain.ids import order_stream_id

    checker = LogChecker(store)
    checker.scan()
    checker.check_duplicates()
    report.head = checker.position
    report.voids = checker.voids
    report.acknowledged = len(acked)
    stored = 0
    for call in acked:
        kind, stream = call["op"], order_stream_id(call["acct"], call["coid"])
        if kind == "intent":
            found = checker.intents.get((call["acct"], call["coid"]), [])
        elif kind == "fill":
            found = checker.fills.get((stream, call["exec"]), [])
        else:
            found = checker.once.get((stream, OP_TYPES[kind]), [])
        if found:
            stored += 1
            if call["pos"] not in found:
                report.misplaced += 1
                if len(report.problems) < 50:
                    report.problems.append(f"{kind} {call['coid']} acknowledged at {call['pos']}, found at {found}")
        else:
            report.lost += 1
            if len(report.lost_calls) < 20:
                report.lost_calls.append(f"{kind} {call['acct']}/{call['coid']}"
                                         + (f" exec {call['exec']}" if kind == "fill" else "")
                                         + f" (acknowledged at position {call['pos']})")
    report.stored = stored
    counts = Counter(check for check, _ in checker.problems)
    report.duplicates = counts["no duplicates"]
    report.gaps = counts["no gaps"] + counts["not torn"]
    for check, detail in checker.take_problems():
        if len(report.problems) < 50:
            report.problems.append(f"[{check}] {detail}")


def run_failover(
    rounds: int,
    *,
    asynchronous: bool = False,
    seed: int | None = None,
    bindir: str = DEFAULT_BINDIR,
    workdir: str | None = None,
    min_run: float = 0.3,
    max_run: float = 1.0,
    round_timeout: float = 60.0,
    manager: str = "pg_ctl",
    on_round: Callable[[FailoverRound, FailoverReport], None] | None = None,
) -> FailoverReport:
    """Start a primary and a standby (``manager="patroni"``: three nodes under Patroni), run an
    engine against them, fail over ``rounds`` times and check the log. Each round lets the engine run a seeded random ``min_run``..``max_run`` seconds
    on a fully replicated pair before the primary is stopped. Never raises for a failed check
    (``report.ok``); raises ``ClusterError`` when the cluster itself cannot be set up."""
    from ..adapters.store import open_store
    from ..client import TradestateClient

    seed = seed if seed is not None else random.randrange(1 << 31)
    rng = random.Random(seed)
    report = FailoverReport(mode="asynchronous" if asynchronous else "synchronous", seed=seed, rounds_asked=rounds)
    started = time.monotonic()
    if manager not in MANAGERS:
        raise ClusterError(f"unknown failover manager {manager!r}: use one of {', '.join(MANAGERS)}")
    cluster: Cluster | PatroniCluster = (Cluster(2, bindir=bindir, workdir=workdir) if manager == "pg_ctl" else
                                         PatroniCluster(3, bindir=bindir, workdir=workdir))
    report.manager = manager
    report.detection_s = getattr(cluster, "detection_s", 0.0)
    proc: subprocess.Popen[bytes] | None = None
    acks = cluster.dir / "engine-acks.jsonl"
    kills: list[float] = []  # when each round stopped its primary (monotonic)
    try:
        cluster.setup(asynchronous)
        url = cluster.url()
        store = open_store(url)
        try:
            client = TradestateClient(store, use_checkpoints=False)
            for account in ACCOUNTS:
                client.set_risk_limit(account, "max_order_qty", MAX_ORDER_QTY, reason="failover run")
        finally:
            store.close()
        with open(cluster.dir / "engine.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tradestate.tools.failover", "engine", "--db", url, "--acks", str(acks),
                 "--tag", f"f{uuid.uuid4().hex[:6]}", "--seed", str(rng.randrange(1 << 30))],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        since = time.monotonic()
        _wait_acks(acks, since, 5, 120)
        for k in range(rounds):
            time.sleep(rng.uniform(min_run, max_run))
            times = cluster.fail_over(asynchronous)
            killed_at, promoted_at, rebuilt_at = times.stopped_at, times.promoted_at, times.rebuilt_at
            # the engine must have carried on: an acknowledged call after the failover (and, so that
            # the next failover has replicated writes in flight, after the rebuild as well)
            log = _wait_acks(acks, rebuilt_at, 5, round_timeout)
            after = [t for t in log.ok_times if t > killed_at]
            failed = [t for t in log.fail_times if t > killed_at]
            # the outage as the engine saw it: its first failed call after the stop, to the next
            # acknowledged call (an acknowledgement in between came from the dying primary)
            start = failed[0] if failed else killed_at
            back = [t for t in after if t > start]
            rnd = FailoverRound(round=k + 1, killed=times.stopped, promoted=times.promoted,
                                unavailable_s=round(back[0] - start, 4) if back else None,
                                since_stop_s=round(back[0] - killed_at, 4) if back else None,
                                first_failure_s=round(failed[0] - killed_at, 4) if failed else None,
                                acked_after=len(after), promote_s=round(promoted_at - killed_at, 3),
                                rebuild_s=round(rebuilt_at - promoted_at, 3))
            report.rounds.append(rnd)
            kills.append(killed_at)
            if on_round is not None:
                on_round(rnd, report)
            if log.error or proc.poll() is not None or not after:
                break
        else:
            time.sleep(rng.uniform(min_run, max_run))  # the last failover's round runs as long as the others
    finally:
        if proc is not None:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        try:
            log = read_engine_log(acks)
            report.engine_error = log.error
            report.rewinds = len(log.rewinds)
            report.rewound_lost = sum(r.get("lost", 0) for r in log.rewinds)
            report.retried_calls = sum(1 for c in log.acked if c.get("retries"))
            for rnd, start, end in zip(report.rounds, kills, kills[1:] + [float("inf")]):
                rnd.acked_after = sum(1 for t in log.ok_times if start < t < end)
                rnd.stalled_s = stalled(log, start, end)
            if cluster.has_primary():
                store = open_store(cluster.url())
                try:
                    check_log(store, log.acked, report)
                finally:
                    store.close()
        finally:
            cluster.close()
            report.seconds = round(time.monotonic() - started, 2)
    return report


# ------------------------------------------------------------------------------- by hand


def main(argv: list[str] | None = None) -> int:
    """``python -m tradestate.tools.failover engine``: run one engine (until killed or ``--limit``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tradestate.tools.failover")
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("engine", help="run an engine that records orders and follows the primary")
    e.add_argument("--db", required=True)
    e.add_argument("--acks", required=True, help="side-channel file (JSON lines)")
    e.add_argument("--tag", default=f"h{uuid.uuid4().hex[:6]}")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--retry-seconds", type=float, default=RETRY_SECONDS)
    e.add_argument("--limit", type=int, default=None, help="stop after this many calls")
    args = parser.parse_args(argv)
    engine(args.db, args.acks, tag=args.tag, seed=args.seed, retry_seconds=args.retry_seconds, limit=args.limit)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
