"""Shared fixtures: real SQLite files and a real PostgreSQL (never mocks).

PostgreSQL comes from ``TRADESTATE_TEST_PG`` (default: the local cluster). Each test gets its own
schema, dropped afterwards. Without a reachable server the PostgreSQL tests skip and say how to
enable them; with ``TRADESTATE_REQUIRE_PG=1`` (as CI sets) they fail instead.
"""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest
from hypothesis import settings

from tests.support.db import pg_base_url, with_schema

# CI runs the same examples every time (a red build must be reproducible); locally, new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

def _pg_reachable(url: str) -> str | None:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as e:  # noqa: BLE001 - any failure means "not usable"
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


@pytest.fixture(scope="session")
def pg_server() -> str:
    url = pg_base_url()
    problem = _pg_reachable(url)
    if problem is not None:
        message = (
            f"PostgreSQL not reachable at {url} ({problem}). Start it "
            "(pg_ctlcluster --skip-systemctl-redirect 15 main start) or point TRADESTATE_TEST_PG at one."
        )
        if os.environ.get("TRADESTATE_REQUIRE_PG") == "1":
            pytest.fail("PostgreSQL tests are required here: " + message)
        pytest.skip(message)
    return url


@pytest.fixture
def pg_url(pg_server: str):
    schema = "t_" + uuid.uuid4().hex[:12]
    yield with_schema(pg_server, schema)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        # and what the test's restores and migrations kept aside or staged (``<schema>_pre_...``)
        derived = [r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                                              (schema + "\\_%",))]
        for name in [schema, *derived]:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/tradestate.db"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """Runs a test once on a SQLite file and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/tradestate.db"
    else:
        yield request.getfixturevalue("pg_url")


@pytest.fixture
def store(db_url):
    """The store of ``db_url``, closed after the test."""
    from tradestate.adapters.store import open_store

    s = open_store(db_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(autouse=True)
def _postgres_reads_stream_early(monkeypatch):
    """PostgreSQL reads of 200 positions or more stream, as production reads of 50,000 do: the
    suite's logs are small, and the streamed path is the one long reads take."""
    from tradestate.adapters.store import postgres

    monkeypatch.setattr(postgres, "STREAM_FROM", 200)
    monkeypatch.setattr(postgres, "STREAM_CHUNK", 64)


@pytest.fixture(autouse=True)
def _fresh_decimal_context():
    """Each test starts from Python's default decimal context: a library that sets rounding or
    traps on the thread's context (ccxt does) must not change how a later test's fold rounds."""
    import decimal

    decimal.setcontext(decimal.Context())
    yield


_GROUPS_DROPPED = pytest.StashKey[bool]()


@pytest.hookimpl(trylast=True)  # after xdist's own, which names the groups
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist, the long tests first (marked ``slow``, then the system tests), so that no
    worker starts one of them near the end while the others sit idle. Serial runs keep file order."""
    if not hasattr(config, "workerinput"):  # not an xdist worker
        return
    if config.getvalue("loadgroup"):
        # xdist marks a grouped test by suffixing its node id with "@group"; a version that
        # silently drops groups must not go unnoticed: its grouped tests fail (below)
        grouped = [item for item in items if item.get_closest_marker("xdist_group") is not None]
        if grouped and not any("@" in item.nodeid for item in grouped):
            config.stash[_GROUPS_DROPPED] = True

    def weight(item) -> int:
        if item.get_closest_marker("slow") is not None:
            return 0
        return 1 if item.nodeid.startswith("tests/system/") else 2

    items.sort(key=weight)  # stable: file order within each weight


def pytest_runtest_setup(item):
    if item.config.stash.get(_GROUPS_DROPPED, False) and item.get_closest_marker("xdist_group") is not None:
        pytest.fail("--dist loadgroup ignores xdist_group with this pytest/pytest-xdist pair "
                    "(pytest-dev/pytest-xdist#1386), so this test may not share its worker: see the pin "
                    "in pyproject.toml, or run with -n 0", pytrace=False)
