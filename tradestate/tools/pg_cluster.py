"""Throwaway PostgreSQL clusters on loopback: a primary and N hot standbys (synchronous or
asynchronous), started with the machine's own server binaries and torn down afterwards.

For tests, benchmarks and fault harnesses: nodes can be promoted, stopped in any ``pg_ctl`` mode
(``immediate`` is a crash), frozen with SIGSTOP and thawed, re-pointed at a new primary, or
rebuilt from one with ``pg_basebackup``.

The primary's ``pg_hba.conf`` trusts every role on 127.0.0.1 except ``PASSWORD_ROLE``, which must
give its password (SCRAM). The primary logs every DDL statement (``log_statement = ddl``) to
``primary.log``. Durability is traded for speed where it does not change what is measured:
``fsync = off`` (commits still wait for the standbys' acknowledgements).

Run as root, the servers run as the ``postgres`` OS user; otherwise as the current user.
``available()`` says why a cluster cannot be started here, or None. Failures are ``ClusterError``.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

PASSWORD_ROLE = "ts_pw_user"
PASSWORD = "s3cret-pw"
STANDBY_NAME = "s1"  # the first standby's application_name; the others are s2, s3, ...
SERVER_BINARIES = ("initdb", "pg_ctl", "pg_basebackup")


class ClusterError(RuntimeError):
    """A server binary failed, or the cluster did not reach the expected state in time."""


def bindir() -> Path | None:
    """The newest installed PostgreSQL binaries with initdb, pg_ctl and pg_basebackup."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if all(os.access(os.path.join(d, b), os.X_OK) for b in ("initdb", "pg_ctl", "pg_basebackup")):
            return Path(d)
    found = shutil.which("pg_ctl")
    if found and all(shutil.which(b) for b in ("initdb", "pg_basebackup")):
        return Path(found).parent
    return None


def available() -> str | None:
    """None if a cluster can be started here, else why not."""
    if bindir() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) installed"
    if os.geteuid() == 0:
        if subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
            return "running as root without a postgres OS user to run the servers"
        if shutil.which("runuser") is None:
            return "running as root without runuser to start the servers as the postgres OS user"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    """One server of the cluster: its data directory, port, log and ``application_name``."""

    def __init__(self, cluster: PgCluster, name: str, port: int, app_name: str | None = None):
        self.cluster = cluster
        self.name = name
        self.port = port
        self.app_name = app_name or name
        self.data = cluster.base / name
        self.log = cluster.base / f"{name}.log"
        self.paused = False
        self.started = False  # once started, others know its port: it keeps it

    def __repr__(self) -> str:
        return f"Node({self.name!r}, port={self.port})"

    def url(self, db: str = "test", user: str = "postgres", **params: Any) -> str:
        """A ``postgresql://`` URL of this node, with ``params`` as its query."""
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{user}@127.0.0.1:{self.port}/{db}" + (f"?{query}" if query else "")

    def connect(self, db: str = "test", **kw: Any) -> psycopg.Connection[Any]:
        """An autocommit superuser connection (not tradestate's)."""
        kw.setdefault("connect_timeout", 5)
        return psycopg.connect(self.url(db), autocommit=True, **kw)

    def start(self) -> None:
        """Start the server and wait until it accepts connections (a standby: until consistent).
        At its first start, a port taken since ``free_port`` chose it (another process picked it
        meanwhile: tests run side by side) is replaced by a new one, up to 3 times."""
        for attempt in range(4):
            logged = self.log.stat().st_size if self.log.exists() else 0
            try:
                self.cluster.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                                 "-o", f"-p {self.port} -c cluster_name={self.name}", "start")
                self.started = True
                return
            except ClusterError:
                if self.started or attempt == 3 or not self._port_was_taken(logged):
                    raise
                self.port = free_port()

    def _port_was_taken(self, logged: int) -> bool:
        """Whether the server log, past ``logged`` bytes, says the port was already in use."""
        try:
            with open(self.log, "rb") as f:
                f.seek(logged)
                return b"Address already in use" in f.read()
        except OSError:
            return False

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode``: ``smart``, ``fast`` or ``immediate`` (a crash: no checkpoint,
        recovery at the next start). A frozen node is thawed first."""
        self.resume()
        self.cluster.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def kill(self) -> None:
        """Crash the node now (``stop -m immediate``)."""
        self.stop("immediate")

    def running(self) -> bool:
        return self.cluster.run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def promote(self, timeout: float = 60.0) -> None:
        """Promote this standby and wait until it accepts writes."""
        self.cluster.run("pg_ctl", "-D", str(self.data), "-w", "-t", str(int(timeout)), "promote")
        deadline = time.monotonic() + timeout
        while self.in_recovery():
            if time.monotonic() > deadline:
                raise ClusterError(f"{self.name} is still in recovery after promote")
            time.sleep(0.05)

    def in_recovery(self) -> bool:
        with self.connect() as conn:
            return bool(conn.execute("SELECT pg_is_in_recovery()").fetchone()[0])

    def follow(self, primary: Node) -> None:
        """Point this standby's replication at ``primary`` (reloaded, no restart; the timeline
        switch of a promoted standby is followed)."""
        with open(self.data / "postgresql.auto.conf", "a") as conf:
            conf.write(f"\nprimary_conninfo = '{self.cluster.conninfo_of(primary, self.app_name)}'\n")
        self.cluster.run("pg_ctl", "-D", str(self.data), "reload")

    def rebuild_from(self, primary: Node) -> None:
        """Stop this node, discard its data and make it a fresh standby of ``primary``."""
        if self.data.exists():
            self.stop("immediate")
            shutil.rmtree(self.data, ignore_errors=True)
        self.cluster._base_backup(primary, self)
        self.start()

    def _pids(self) -> list[int]:
        """The postmaster and its children."""
        try:
            postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        pids = [postmaster]
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                pids.append(int(stat.split("/")[2]))
        return pids

    def pause(self) -> None:
        """SIGSTOP the server and all its processes: it holds its connections but answers nothing."""
        for pid in self._pids():
            os.kill(pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT what ``pause`` stopped."""
        if self.paused:
            for pid in self._pids():
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            self.paused = False


class PgCluster:
    """A primary (``self.primary``) with ``standbys`` hot standbys (``self.standbys``; the first
    is also ``self.standby``, application_name ``s1``, then ``s2``...), all on 127.0.0.1, with a
    database ``test`` and the password role.

    ``synchronous``: the primary waits for ``num_sync`` of the standbys (``FIRST num_sync (s1, ...)``,
    so ``s1`` first) at each commit; False leaves them all asynchronous.
    ``extra_conf``: more ``postgresql.conf`` lines for the primary (copied to the standbys; a
    setting given twice takes the later line, so ``fsync = on`` undoes the default ``off``).
    ``names``: the nodes' names, primary first (each is also the node's application_name);
    default ``primary``, ``standby``, ``standby2``... with application_names ``s1``, ``s2``...
    ``bin_dir``: the server binaries (default: the newest installed). ``prefix``: of the
    temporary directory (under ``base_dir``).
    """

    def __init__(self, standbys: int = 1, synchronous: bool = True, num_sync: int = 1,
                 extra_conf: str = "", base_dir: str | None = None, *, names: list[str] | None = None,
                 bin_dir: str | os.PathLike[str] | None = None, prefix: str = "ts-pgcluster-") -> None:
        bins = Path(bin_dir) if bin_dir is not None else bindir()
        if bins is None:
            raise ClusterError(available() or "no PostgreSQL binaries")
        missing = [str(bins / b) for b in SERVER_BINARIES if not (bins / b).exists()]
        if missing:
            raise ClusterError(f"{', '.join(missing)} not found (install PostgreSQL server binaries "
                               "or pass the directory that holds them)")
        if standbys < 0 or (synchronous and not 1 <= num_sync <= max(standbys, 1)):
            raise ValueError(f"{standbys} standbys cannot have {num_sync} synchronous")
        if names is not None and len(names) != standbys + 1:
            raise ValueError(f"{len(names)} names for {standbys + 1} nodes")
        self.bin = bins
        self.as_postgres = os.geteuid() == 0
        self.base = Path(tempfile.mkdtemp(prefix=prefix, dir=base_dir))
        os.chmod(self.base, 0o755)
        if self.as_postgres:
            shutil.chown(self.base, "postgres")
        self.synchronous = synchronous and standbys > 0
        self.num_sync = num_sync
        self.extra_conf = extra_conf
        if names is not None:
            self.primary = Node(self, names[0], free_port())
            self.standbys = [Node(self, name, free_port()) for name in names[1:]]
        else:
            self.primary = Node(self, "primary", free_port())
            self.standbys = [Node(self, "standby" if i == 1 else f"standby{i}", free_port(), f"s{i}")
                             for i in range(1, standbys + 1)]

    @property
    def standby(self) -> Node:
        """The first standby."""
        return self.standbys[0]

    @property
    def nodes(self) -> list[Node]:
        return [self.primary, *self.standbys]

    def run(self, tool: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a server tool (as the postgres OS user when root, from ``/``: postgres cannot enter
        the caller's working directory); ``ClusterError`` if it fails (``check``) or overruns."""
        cmd = [str(self.bin / tool), *args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        try:
            done = subprocess.run(cmd, cwd="/", capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise ClusterError(f"{tool} {' '.join(args)} did not finish in {timeout:.0f} s") from e
        if check and done.returncode != 0:
            raise ClusterError(f"{tool} {' '.join(args)} failed ({done.returncode}): "
                               f"{(done.stderr.strip() or done.stdout.strip())[-800:]}")
        return done

    def conninfo_of(self, primary: Node, app_name: str) -> str:
        return f"host=127.0.0.1 port={primary.port} user=postgres application_name={app_name}"

    def _base_backup(self, primary: Node, node: Node) -> None:
        self.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres", "-D", str(node.data),
                 "-X", "stream", "-R", "--no-sync", "-c", "fast")
        with open(node.data / "postgresql.auto.conf", "a") as conf:
            conf.write(f"\nprimary_conninfo = '{self.conninfo_of(primary, node.app_name)}'\nhot_standby = on\n")

    def sync_names(self) -> str:
        """The primary's ``synchronous_standby_names`` ('' when asynchronous)."""
        if not self.synchronous:
            return ""
        return f"FIRST {self.num_sync} ({', '.join(s.app_name for s in self.standbys)})"

    def start(self) -> PgCluster:
        """initdb, start the primary, base-backup and start each standby, then set the
        synchronous ones and wait until they stream."""
        p = self.primary
        self.run("initdb", "-D", str(p.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        with open(p.data / "postgresql.conf", "a") as conf:
            conf.write(
                "\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.base}'\n"
                "wal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\nmax_connections = 60\n"
                "fsync = off\nshared_buffers = 16MB\nlog_statement = 'ddl'\nlog_min_messages = warning\n"
                "wal_receiver_status_interval = 1s\nwal_log_hints = on\n" + self.extra_conf + "\n"
            )
        (p.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n"
            "host all all 127.0.0.1/32 trust\n"
            "host replication all 127.0.0.1/32 trust\n"
        )
        p.start()
        with psycopg.connect(p.url("postgres"), autocommit=True, connect_timeout=5) as conn:
            conn.execute("CREATE DATABASE test")
            conn.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{PASSWORD}'")
        with p.connect() as conn:
            conn.execute(f"GRANT ALL ON SCHEMA public TO {PASSWORD_ROLE}")
            conn.execute(f"GRANT CREATE ON DATABASE test TO {PASSWORD_ROLE}")
        for s in self.standbys:
            self._base_backup(p, s)
            s.start()
        if self.synchronous:
            with p.connect() as conn:
                conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{self.sync_names()}'")
                conn.execute("SELECT pg_reload_conf()")
        self.wait_sync()
        return self

    def set_synchronous(self, synchronous: bool, num_sync: int | None = None, timeout: float = 30.0) -> None:
        """Switch the primary's standbys between synchronous and asynchronous (reloaded at once),
        then ``wait_sync(timeout)``."""
        self.synchronous = synchronous and bool(self.standbys)
        if num_sync is not None:
            self.num_sync = num_sync
        with self.primary.connect() as conn:
            conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{self.sync_names()}'")
            conn.execute("SELECT pg_reload_conf()")
        self.wait_sync(timeout)

    def wait_sync(self, timeout: float = 30.0) -> None:
        """Until every running standby streams from the primary and, when synchronous,
        ``num_sync`` of them are its synchronous standbys."""
        names = {s.app_name for s in self.standbys if s.running()}
        deadline = time.monotonic() + timeout
        with self.primary.connect() as conn:
            while True:
                rows = dict(conn.execute("SELECT application_name, sync_state FROM pg_stat_replication "
                                         "WHERE state = 'streaming'").fetchall())
                streaming = names <= set(rows)
                sync = sum(1 for n in names if rows.get(n) == "sync")
                if streaming and (not self.synchronous or sync >= self.num_sync):
                    return
                if time.monotonic() > deadline:
                    raise ClusterError(f"the standbys did not stream{' synchronously' if self.synchronous else ''} "
                                       f"from {self.primary.name} after {timeout:.0f} s: {rows}")
                time.sleep(0.1)

    def wait_replayed(self, timeout: float = 30.0, standbys: list[Node] | None = None) -> None:
        """Until the standbys (default: all) have replayed everything the primary has written so far."""
        with self.primary.connect() as conn:
            (lsn,) = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
        deadline = time.monotonic() + timeout
        for node in standbys if standbys is not None else self.standbys:
            with node.connect() as conn:
                while not conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]:
                    if time.monotonic() > deadline:
                        raise ClusterError(f"{node.name} did not catch up")
                    time.sleep(0.05)

    def backends_waiting_for_sync(self, application_name: str = "tradestate") -> list[int]:
        """Pids of the primary's backends of ``application_name`` waiting for the synchronous standby."""
        with self.primary.connect() as conn:
            return [r[0] for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND wait_event = 'SyncRep'",
                (application_name,)).fetchall()]

    def failover(self, to: Node | None = None, mode: str = "immediate", *, keep_synchronous: bool = True) -> Node:
        """Stop the primary (``mode``), promote ``to`` (default: the first standby), point the other
        standbys at it and make it ``self.primary``; the old primary is left stopped and listed
        last among ``self.standbys`` (``rebuild_from`` makes it a standby again). Every node keeps
        its application_name. When synchronous, the new primary gets ``synchronous_standby_names``
        over the standbys it now has, so its commits wait for one of them, as before (none running:
        they wait until one is); ``keep_synchronous=False`` starts it with none instead (its
        commits wait for nobody, like Patroni's non-strict synchronous mode, until
        ``set_synchronous(True)``). Returns the new primary."""
        new = to or self.standbys[0]
        old = self.primary
        old.stop(mode)
        new.promote()
        self.standbys = [s for s in self.standbys if s is not new]
        for s in self.standbys:
            s.follow(new)
        self.primary = new
        self.standbys.append(old)
        if not keep_synchronous:
            self.set_synchronous(False)
        elif self.synchronous:
            with new.connect() as conn:
                conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{self.sync_names()}'")
                conn.execute("SELECT pg_reload_conf()")
        return new

    def close(self) -> None:
        for node in reversed(self.nodes):
            node.resume()
            if node.data.exists():
                node.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
