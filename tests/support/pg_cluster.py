"""Throwaway PostgreSQL clusters for the tests: a primary and a synchronous hot standby on free
loopback ports, started with the machine's own binaries and torn down afterwards.

The primary's ``pg_hba.conf`` trusts every role on 127.0.0.1 except ``PASSWORD_ROLE``, which must
give its password (SCRAM): the tests of ``.pgpass`` and ``PG*`` variables log in as that role.
The primary logs every DDL statement (``log_statement = ddl``) to ``primary.log``.

Run as root (as CI does), the servers run as the ``postgres`` OS user; otherwise as the current
user. ``available()`` says why a cluster cannot be started here (no binaries), or None.
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
STANDBY_NAME = "s1"


def bindir() -> Path | None:
    """The newest installed PostgreSQL binaries with initdb, pg_ctl and pg_basebackup."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if all(os.access(os.path.join(d, b), os.X_OK) for b in ("initdb", "pg_ctl", "pg_basebackup")):
            return Path(d)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


def available() -> str | None:
    """None if a cluster can be started here, else why not."""
    if bindir() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl, pg_basebackup) installed"
    if os.geteuid() == 0 and subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
        return "running as root without a postgres OS user to run the servers"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    """One server of the cluster: its data directory, port and log."""

    def __init__(self, cluster: PgCluster, name: str, port: int):
        self.cluster = cluster
        self.name = name
        self.port = port
        self.data = cluster.base / name
        self.log = cluster.base / f"{name}.log"
        self.paused = False

    def url(self, db: str = "test", user: str = "postgres", **params: Any) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{user}@127.0.0.1:{self.port}/{db}" + (f"?{query}" if query else "")

    def connect(self, db: str = "test") -> psycopg.Connection[Any]:
        """An autocommit superuser connection (not tradestate's)."""
        return psycopg.connect(self.url(db), autocommit=True, connect_timeout=5)

    def start(self) -> None:
        self.cluster.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                         "-o", f"-p {self.port}", "start")

    def stop(self, mode: str = "fast") -> None:
        self.resume()
        self.cluster.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

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
        if self.paused:
            for pid in self._pids():
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            self.paused = False


class PgCluster:
    """A primary (``self.primary``) with one synchronous hot standby (``self.standby``, named
    ``STANDBY_NAME``), both on 127.0.0.1; a database ``test`` and a password role on both."""

    def __init__(self) -> None:
        bins = bindir()
        if bins is None:
            raise RuntimeError(available() or "no PostgreSQL binaries")
        self.bin = bins
        self.as_postgres = os.geteuid() == 0
        self.base = Path(tempfile.mkdtemp(prefix="ts-pgcluster-"))
        os.chmod(self.base, 0o755)
        if self.as_postgres:
            shutil.chown(self.base, "postgres")
        self.primary = Node(self, "primary", free_port())
        self.standby = Node(self, "standby", free_port())

    def run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / tool), *args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, cwd="/", capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
        return done

    def start(self) -> PgCluster:
        """initdb, start the primary, base-backup and start the standby, make it synchronous."""
        p = self.primary
        self.run("initdb", "-D", str(p.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        with open(p.data / "postgresql.conf", "a") as conf:
            conf.write(
                "\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.base}'\n"
                "wal_level = replica\nmax_wal_senders = 5\nmax_connections = 60\nfsync = off\n"
                "shared_buffers = 16MB\nlog_statement = 'ddl'\nlog_min_messages = warning\n"
                "wal_receiver_status_interval = 1s\n"
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
        s = self.standby
        self.run("pg_basebackup", "-h", "127.0.0.1", "-p", str(p.port), "-U", "postgres", "-D", str(s.data),
                 "-X", "stream", "-R", "--no-sync", "-c", "fast")
        with open(s.data / "postgresql.auto.conf", "a") as conf:
            conf.write(f"\nprimary_conninfo = 'host=127.0.0.1 port={p.port} user=postgres "
                       f"application_name={STANDBY_NAME}'\nhot_standby = on\n")
        s.start()
        with p.connect() as conn:
            conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'")
            conn.execute("SELECT pg_reload_conf()")
        self.wait_sync()
        return self

    def wait_sync(self, timeout: float = 30.0) -> None:
        """Until the standby streams as the primary's synchronous standby."""
        deadline = time.monotonic() + timeout
        with self.primary.connect() as conn:
            while True:
                row = conn.execute("SELECT sync_state FROM pg_stat_replication WHERE application_name = %s",
                                   (STANDBY_NAME,)).fetchone()
                if row and row[0] == "sync":
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the standby did not become synchronous: {row}")
                time.sleep(0.1)

    def wait_replayed(self, timeout: float = 30.0) -> None:
        """Until the standby has replayed everything the primary has written so far."""
        with self.primary.connect() as conn:
            (lsn,) = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
        deadline = time.monotonic() + timeout
        with self.standby.connect() as conn:
            while not conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (lsn,)).fetchone()[0]:
                if time.monotonic() > deadline:
                    raise RuntimeError("the standby did not catch up")
                time.sleep(0.05)

    def backends_waiting_for_sync(self, application_name: str = "tradestate") -> list[int]:
        """Pids of the primary's backends of ``application_name`` waiting for the synchronous standby."""
        with self.primary.connect() as conn:
            return [r[0] for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND wait_event = 'SyncRep'",
                (application_name,)).fetchall()]

    def close(self) -> None:
        for node in (self.standby, self.primary):
            node.resume()
            if node.data.exists():
                node.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
