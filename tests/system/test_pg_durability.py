"""Durability of an acknowledgement on PostgreSQL with a synchronous standby, connections as libpq
means them, read-only servers, and connection pools that heal.

The cluster tests start their own primary + synchronous hot standby (``tradestate.tools.pg_cluster``) on free
loopback ports; the rest use the suite's server (``pg_url``). Nothing is mocked: standbys are
really stalled (SIGSTOP), waits really cancelled and backends really terminated.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import psycopg
import pytest

from tests.support import pg_cluster
from tradestate.adapters.store import PgUrl, new_event, open_store
from tradestate.adapters.store.postgres import PostgresEventLog, TradestatePostgresDatastore
from tradestate.client import connect
from tradestate.domain.errors import (
    AppendFailed,
    CommitInterrupted,
    CommitOutcomeUnknown,
    InvalidInput,
    ReadOnlyStore,
    StoreUnreachable,
)

# one pytest-xdist worker runs this module: its tests share one module-scoped cluster
pytestmark = [pytest.mark.postgres, pytest.mark.xdist_group("pg_durability")]

ACCT = "acct-1"


@pytest.fixture(scope="module")
def cluster():
    yield from pg_cluster.started_cluster()


@pytest.fixture
def standby_resumed(cluster):
    """The cluster, with its standby running and synchronous again after the test."""
    yield cluster
    cluster.standby.resume()
    cluster.wait_sync()


def schema_url(node: pg_cluster.Node, **params: Any) -> str:
    return node.url(schema="t_" + uuid.uuid4().hex[:10], **params)


def one_event(stream: str, version: int = 1):
    return new_event(stream, version, "SignalRecorded", b'{"x": 1}')


def rows_on(node: pg_cluster.Node, url: str) -> list[tuple[str, int]]:
    schema = PgUrl.parse(url).schema
    with node.connect() as conn:
        return conn.execute(f'SELECT stream_id, stream_version FROM "{schema}".ts_events ORDER BY position').fetchall()


def _positions(node: pg_cluster.Node, url: str) -> list[tuple[int]]:
    schema = PgUrl.parse(url).schema
    with node.connect() as conn:
        return conn.execute(f'SELECT position FROM "{schema}".ts_events').fetchall()


# ------------------------------------------------------------------------- acknowledgements


def test_a_stalled_standby_gives_commit_outcome_unknown_within_the_append_timeout(standby_resumed):
    cluster = standby_resumed
    url = schema_url(cluster.primary, append_timeout="1.5")
    client = connect(url, venue="sim")
    try:
        assert client.record_intent(ACCT, "o-1", "AAPL", "buy", "1", reference_price="10").accepted
        before = len(rows_on(cluster.primary, url))
        cluster.standby.pause()
        started = time.monotonic()
        with pytest.raises(CommitOutcomeUnknown) as caught:
            client.record_intent(ACCT, "o-2", "AAPL", "buy", "1", reference_price="10")
        elapsed = time.monotonic() - started
        print(f"typed error after {elapsed:.2f} s (append_timeout 1.5 s)")
        assert 1.4 <= elapsed < 3.0
        message = str(caught.value)
        assert "unknown" in message and "do not send" in message.lower()
        # The row is on the primary only: a retry while the standby still stalls is refused too
        # (it must not answer "duplicate" for a commit a failover could lose).
        assert len(rows_on(cluster.primary, url)) > before
        with pytest.raises(CommitOutcomeUnknown):
            client.record_intent(ACCT, "o-2", "AAPL", "buy", "1", reference_price="10")
        cluster.standby.resume()
        again = client.record_intent(ACCT, "o-2", "AAPL", "buy", "1", reference_price="10")
        assert again.accepted and again.duplicate
        cluster.wait_replayed()
        assert rows_on(cluster.standby, url) == rows_on(cluster.primary, url)
    finally:
        cluster.standby.resume()
        client.store.close()


def test_remote_apply_makes_every_acknowledged_append_visible_on_the_standby(cluster):
    url = schema_url(cluster.primary, synchronous_commit="remote_apply")
    schema = PgUrl.parse(url).schema
    with open_store(url) as store, cluster.standby.connect() as standby:
        with store.trading.transaction() as cur:
            assert cur.execute("SHOW synchronous_commit").fetchone() == ("remote_apply",)
        for i in range(20):
            (appended,) = store.trading.append([one_event(f"ra-{i}")])
            seen = standby.execute(f'SELECT count(*) FROM "{schema}".ts_events WHERE position = %s',
                                   (appended.position,)).fetchone()[0]
            assert seen == 1, f"append {i} acknowledged before the standby applied it"


def test_the_store_append_is_bounded_and_typed_under_a_stalled_standby(standby_resumed):
    cluster = standby_resumed
    url = schema_url(cluster.primary, append_timeout="1")
    store = open_store(url)
    try:
        store.trading.append([one_event("s-1")])
        cluster.standby.pause()
        started = time.monotonic()
        with pytest.raises(CommitOutcomeUnknown):
            store.trading.append([one_event("s-1", 2)])
        single = time.monotonic() - started
        started = time.monotonic()
        with pytest.raises(CommitOutcomeUnknown):
            store.trading.append([one_event("s-2"), one_event("s-3")])
        batch = time.monotonic() - started
        print(f"store append: typed error after {single:.2f} s (one event), {batch:.2f} s (two)")
        assert single < 2.0 and batch < 2.0
        with pytest.raises(CommitOutcomeUnknown):
            store.trading.confirm_durable(0.5)
        cluster.standby.resume()
        store.trading.confirm_durable()
    finally:
        cluster.standby.resume()
        store.close()


def test_an_append_to_a_primary_that_does_not_answer_is_bounded(cluster):
    """The primary itself stalls (SIGSTOP): not even the cancel is answered; the append still
    returns, with an error, shortly after its timeout."""
    url = schema_url(cluster.primary, append_timeout="1")
    store = open_store(url)
    try:
        store.trading.append([one_event("p-1")])
        cluster.primary.pause()
        started = time.monotonic()
        with pytest.raises(AppendFailed) as caught:
            store.trading.append([one_event("p-1", 2)])
        elapsed = time.monotonic() - started
        print(f"stalled primary: {type(caught.value).__name__} after {elapsed:.2f} s (append_timeout 1 s)")
        assert elapsed < 4.0
        assert isinstance(caught.value, CommitInterrupted) and "may or may not" in str(caught.value)
    finally:
        cluster.primary.resume()
        store.close()


@pytest.mark.parametrize("cut", ["pg_cancel_backend", "pg_terminate_backend"])
def test_a_cut_synchronous_wait_is_never_accepted(standby_resumed, cut):
    cluster = standby_resumed
    app = "ts-cut-" + uuid.uuid4().hex[:6]
    url = schema_url(cluster.primary, append_timeout="4", application_name=app)
    client = connect(url, venue="sim")
    outcome: dict[str, Any] = {}

    def submit() -> None:
        try:
            outcome["result"] = client.record_intent(ACCT, "cut-1", "AAPL", "buy", "1", reference_price="10")
        except BaseException as e:  # noqa: BLE001 - the main thread checks it
            outcome["error"] = e

    try:
        cluster.standby.pause()
        worker = threading.Thread(target=submit)
        worker.start()
        deadline = time.monotonic() + 3
        while not (pids := cluster.backends_waiting_for_sync(app)):
            assert time.monotonic() < deadline, "the append never waited for the standby"
            time.sleep(0.02)
        with cluster.primary.connect() as conn:
            conn.execute(f"SELECT {cut}(%s)", (pids[0],))
        worker.join(10)
        assert not worker.is_alive()
        assert "result" not in outcome, f"a cut synchronous wait was answered {outcome.get('result')}"
        assert isinstance(outcome["error"], CommitOutcomeUnknown), repr(outcome["error"])
        # It committed locally, as PostgreSQL said: the retry must not write it twice.
        cluster.standby.resume()
        again = client.record_intent(ACCT, "cut-1", "AAPL", "buy", "1", reference_price="10")
        assert again.duplicate
        assert again.position == min(p for p, in _positions(cluster.primary, url))
    finally:
        cluster.standby.resume()
        client.store.close()


def test_a_connection_lost_during_the_commit_wait_is_never_accepted(standby_resumed):
    """The client's socket dies while its commit waits for the stalled standby (no WARNING ever
    arrives): the row is not visible yet, the call fails typed, and once the standby is back the
    retry finds the one row instead of writing a second."""
    cluster = standby_resumed
    app = "ts-lost-" + uuid.uuid4().hex[:6]
    url = schema_url(cluster.primary, append_timeout="1", application_name=app)
    client = connect(url, venue="sim")
    outcome: dict[str, Any] = {}

    def submit() -> None:
        try:
            outcome["result"] = client.record_intent(ACCT, "lost-1", "AAPL", "buy", "1", reference_price="10")
        except BaseException as e:  # noqa: BLE001 - the main thread checks it
            outcome["error"] = e

    try:
        pinned_before = set(map(id, client.store.trading._pinned))
        cluster.standby.pause()
        worker = threading.Thread(target=submit)
        worker.start()
        deadline = time.monotonic() + 3
        while not cluster.backends_waiting_for_sync(app):
            assert time.monotonic() < deadline, "the append never waited for the standby"
            time.sleep(0.02)
        (conn,) = [c for c in client.store.trading._pinned if id(c) not in pinned_before] or client.store.trading._pinned
        with socket.socket(fileno=os.dup(conn.fileno())) as sock:
            sock.shutdown(socket.SHUT_RDWR)
        worker.join(15)
        assert not worker.is_alive()
        assert "result" not in outcome, f"a commit of unknown outcome was answered {outcome.get('result')}"
        assert isinstance(outcome["error"], CommitOutcomeUnknown), repr(outcome["error"])
        cluster.standby.resume()
        cluster.wait_sync()
        again = client.record_intent(ACCT, "lost-1", "AAPL", "buy", "1", reference_price="10")
        print(f"lost connection: {type(outcome['error']).__name__} after the cut; retry duplicate={again.duplicate}")
        assert again.accepted and again.duplicate
        cluster.wait_replayed()
        assert rows_on(cluster.standby, url) == rows_on(cluster.primary, url)
        assert len(rows_on(cluster.primary, url)) == len(set(rows_on(cluster.primary, url)))
    finally:
        cluster.standby.resume()
        client.store.close()


def test_reopening_an_existing_log_writes_no_catalog(standby_resumed):
    cluster = standby_resumed
    url = schema_url(cluster.primary, append_timeout="1")
    open_store(url).close()
    logged = cluster.primary.log.stat().st_size
    cluster.standby.pause()
    done: dict[str, Any] = {}

    def reopen() -> None:
        started = time.monotonic()
        try:
            open_store(url).close()
            done["seconds"] = time.monotonic() - started
        except BaseException as e:  # noqa: BLE001
            done["error"] = e

    worker = threading.Thread(target=reopen, daemon=True)
    worker.start()
    worker.join(10)
    cluster.standby.resume()
    worker.join(10)
    assert "error" not in done, done
    assert done.get("seconds", 99) < 3, "re-opening waited for the standby: it wrote to the catalog"
    with open(cluster.primary.log, "rb") as log:
        log.seek(logged)
        ddl = [line for line in log.read().decode(errors="replace").splitlines() if "statement:" in line]
    assert ddl == []


def test_any_warning_during_an_append_counts_as_a_cut_replication_wait():
    """The server's message may be translated: a WARNING is never taken as plain success."""
    from tradestate.adapters.store.postgres import _replication_cut

    assert _replication_cut([("NOTICE", "relation exists, skipping")]) is None
    french = "annulation de l'attente pour la réplication synchrone"
    assert _replication_cut([("WARNING", french)]) == french
    english = "canceling wait for synchronous replication due to user request"
    assert _replication_cut([("WARNING", "something else"), ("WARNING", english)]) == english


def test_create_table_on_an_existing_log_needs_no_write(pg_url):
    """Runs on the suite's server: a session whose transactions are read-only can still open the log."""
    open_store(pg_url).close()
    ro = pg_url + "&options=-c%20default_transaction_read_only%3Don"
    ds = TradestatePostgresDatastore(ro)
    log = PostgresEventLog(ds, "ts_events")
    try:
        log.create_table()  # in place: nothing to write
        fresh = PostgresEventLog(ds, "ts_other_events")
        with pytest.raises(Exception, match="read-only"):
            fresh.create_table()  # not there: it would have to write
    finally:
        log.close()


# ------------------------------------------------------------------------- read-only servers


def test_connect_on_a_hot_standby_is_a_read_only_store_error(cluster):
    url = schema_url(cluster.standby)
    for opener in (lambda: open_store(url), lambda: connect(url, venue="sim")):
        with pytest.raises(ReadOnlyStore) as caught:
            opener()
        assert isinstance(caught.value, StoreUnreachable)
        assert "reads only" in str(caught.value) and "hot standby" in str(caught.value)


def test_a_multi_host_url_finds_the_primary_past_the_standby(cluster):
    hosts = f"127.0.0.1:{cluster.standby.port},127.0.0.1:{cluster.primary.port}"
    schema = "t_" + uuid.uuid4().hex[:10]
    with pytest.raises(ReadOnlyStore):
        open_store(f"postgresql://postgres@{hosts}/test?schema={schema}")
    url = f"postgresql://postgres@{hosts}/test?schema={schema}&target_session_attrs=read-write"
    with open_store(url) as store:
        store.trading.append([one_event("mh-1")])
    assert rows_on(cluster.primary, url) == [("mh-1", 1)]


def test_read_only_opens_work_on_a_hot_standby(cluster):
    from tradestate.loading import load_state

    url = schema_url(cluster.primary)
    client = connect(url, venue="sim")
    try:
        for i in range(5):
            client.record_intent(ACCT, f"r-{i}", "AAPL", "buy", "1", reference_price="10")
        head = client.store.trading.head()
    finally:
        client.store.close()
    cluster.wait_replayed()
    on_standby = url.replace(f":{cluster.primary.port}/", f":{cluster.standby.port}/")
    with open_store(on_standby, create=False) as store:
        assert store.trading.head() == head
        assert [r[:4] for r in store.trading.iter_rows()] == [r[:4] for r in open_store(url, create=False).trading.iter_rows()]
        state = load_state(store, use_checkpoints=False).state
        assert state.position == head and len(state.orders) == 5
    tradestate = os.path.join(os.path.dirname(sys.executable), "tradestate")
    for command in (["state"], ["verify"], ["replay", "state", "--position", "3"]):
        done = subprocess.run([tradestate, *command, "--db", on_standby], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (command, done.stdout[-500:], done.stderr[-500:])


# ------------------------------------------------------------------------- connections


def test_synchronous_commit_is_never_weakened(pg_url):
    for weak in ("off", "local", "remote_write"):
        with pytest.raises(InvalidInput, match="synchronous_commit"):
            PgUrl.parse(pg_url + f"&synchronous_commit={weak}")
    with pytest.raises(InvalidInput, match="append_timeout"):
        PgUrl.parse(pg_url + "&append_timeout=0")
    assert PgUrl.parse(pg_url + "&synchronous_commit=remote_apply").synchronous_commit == "remote_apply"
    assert "synchronous_commit" not in PgUrl.parse(pg_url + "&synchronous_commit=remote_apply").params

    def session_level(url: str) -> str:
        with open_store(url) as store, store.trading.transaction() as cur:
            return cur.execute("SHOW synchronous_commit").fetchone()[0]

    assert session_level(pg_url) == "on"
    assert session_level(pg_url + "&synchronous_commit=remote_apply") == "remote_apply"
    # A stronger server (here: session) default is kept, a weaker one raised to tradestate's floor.
    assert session_level(pg_url + "&options=-c%20synchronous_commit%3Dremote_apply") == "remote_apply"
    assert session_level(pg_url + "&options=-c%20synchronous_commit%3Doff") == "on"


def test_libpq_environment_fills_what_the_url_leaves_out(monkeypatch):
    for name in ("PGHOST", "PGHOSTADDR", "PGPORT", "PGUSER", "PGDATABASE", "PGCONNECT_TIMEOUT", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    bare = PgUrl.parse("postgresql:///")
    assert (bare.params["host"], bare.params["user"], bare.params["dbname"]) == ("127.0.0.1", "postgres", "postgres")
    monkeypatch.setenv("PGHOST", "db.example")
    monkeypatch.setenv("PGPORT", "6543")
    monkeypatch.setenv("PGUSER", "ann")
    monkeypatch.setenv("PGDATABASE", "trading")
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "2")
    u = PgUrl.parse("postgresql:///")
    assert "host" not in u.params and "user" not in u.params and "dbname" not in u.params
    assert u.connect_timeout == 2.0
    assert u.where == "db.example:6543/trading"
    named = PgUrl.parse("postgresql://bob@h2/other")  # the URL wins over the environment
    assert (named.params["host"], named.params["user"], named.params["dbname"]) == ("h2", "bob", "other")


def test_pg_environment_and_pgpass_reach_libpq(cluster, tmp_path, monkeypatch):
    for name in ("PGHOSTADDR", "PGDATABASE", "PGPASSWORD", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGHOST", "127.0.0.1")
    monkeypatch.setenv("PGPORT", str(cluster.primary.port))
    monkeypatch.setenv("PGUSER", pg_cluster.PASSWORD_ROLE)
    schema = "t_" + uuid.uuid4().hex[:10]
    url = f"postgresql:///test?schema={schema}"
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "missing"))
    with pytest.raises(StoreUnreachable, match="password") as caught:
        open_store(url)
    assert f"127.0.0.1:{cluster.primary.port}/test" in str(caught.value)
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:{cluster.primary.port}:test:{pg_cluster.PASSWORD_ROLE}:{pg_cluster.PASSWORD}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    with open_store(url) as store:
        store.trading.append([one_event("pw-1")])
        with store.trading.transaction() as cur:
            assert cur.execute("SELECT current_user, current_database()").fetchone() == (pg_cluster.PASSWORD_ROLE, "test")
    assert rows_on(cluster.primary, f"postgresql:///test?schema={schema}") == [("pw-1", 1)]


# ------------------------------------------------------------------------- pools that heal


def test_the_projector_is_back_within_a_second_after_a_storm_of_terminated_connections(cluster):
    from tradestate.projections.follow import FollowStats, follow

    app = "ts-storm-" + uuid.uuid4().hex[:6]
    url = schema_url(cluster.primary, application_name=app)
    client = connect(url, venue="sim")
    projector_store = open_store(url, create=False)
    stop = threading.Event()
    stats = FollowStats()
    appended: list[int] = []
    failures: list[str] = []

    def append_forever() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                appended.append(client.record_signal("strat", "AAPL", f"s{i}").position)
            except (AppendFailed, psycopg.Error) as e:
                failures.append(type(e).__name__)
            time.sleep(0.005)

    errors_at: list[tuple[float, str]] = []
    follower = threading.Thread(target=follow, args=(projector_store, stop), daemon=True,
                                kwargs={"stats": stats, "on_error": lambda e: errors_at.append((time.monotonic(), f"{type(e).__name__}: {e}"[:150]))})
    writer = threading.Thread(target=append_forever, daemon=True)
    follower.start()
    writer.start()
    try:
        deadline = time.monotonic() + 10
        while not appended or stats.position < appended[0]:
            assert time.monotonic() < deadline, "the projector never started following"
            time.sleep(0.02)
        with cluster.primary.connect() as admin:
            storm_end = time.monotonic() + 2.0
            killed = 0
            while time.monotonic() < storm_end:
                killed += len(admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                    (app,)).fetchall())
                time.sleep(0.05)
            stopped = time.monotonic()
            (head,) = admin.execute(f'SELECT max(position) FROM "{PgUrl.parse(url).schema}".ts_events').fetchone()
        # back = it has applied an event appended after the storm (the client's next one)
        after = len(appended)
        while len(appended) == after:
            assert time.monotonic() - stopped < 10, "the client never appended again"
            time.sleep(0.005)
        head = max(head, appended[after])
        while stats.position < head:
            assert time.monotonic() - stopped < 10, f"the projector is stuck at {stats.position} < {head}"
            time.sleep(0.01)
        recovery = time.monotonic() - stopped
        print(f"storm: {killed} backends terminated; projector back {recovery:.3f} s after it stopped; "
              f"follower errors {stats.errors}, client errors {len(failures)}")
        for at, what in errors_at[-6:]:
            print(f"  {at - stopped:+.3f} {what}")
        assert killed > 10
        assert recovery < 1.0
    finally:
        stop.set()
        follower.join(10)
        writer.join(10)
        client.store.close()
        projector_store.close()
