"""The store's SQL seam: URLs, dialects, libpq parameters and unreachable servers.

The seam's cursors (``read_cursor``, ``write_cursor``, ``snapshot_cursor``) are part of the event
log contract (``store_contract.EventLogContract``, run on both backends by tests/store/test_store.py).
Real PostgreSQL server (nothing mocked)."""

from __future__ import annotations

import socket
import time
import uuid

import pytest

from tradestate.adapters.store import Dialect, PgUrl, new_event, open_store, redact
from tradestate.adapters.store.sql import read_cursor
from tradestate.domain.errors import InvalidInput, StoreUnreachable

# ------------------------------------------------------------------------------ URLs


def test_a_postgresql_url_keeps_libpq_parameters_and_takes_out_tradestates_own():
    u = PgUrl.parse("postgresql://ann:s%40cret@db.example:6543/trading?sslmode=require&schema=desk"
                    "&target_session_attrs=read-write&connect_timeout=2&application_name=risk&lock_timeout=3")
    assert u.params == {"host": "db.example", "port": "6543", "dbname": "trading", "user": "ann",
                        "password": "s@cret", "sslmode": "require", "target_session_attrs": "read-write",
                        "connect_timeout": "2", "application_name": "risk"}
    assert (u.schema, u.lock_timeout, u.statement_timeout, u.connect_timeout) == ("desk", 3.0, 30.0, 2.0)
    assert u.where == "db.example:6543/trading"
    assert "schema" not in u.conninfo() and "sslmode=require" in u.conninfo()
    assert PgUrl.parse(u.with_schema("other")).schema == "other"


def test_a_multi_host_url_parses_and_names_every_host():
    u = PgUrl.parse("postgresql://u@h1:5432,h2:5433/db?target_session_attrs=read-write")
    assert (u.params["host"], u.params["port"], u.params["target_session_attrs"]) == ("h1,h2", "5432,5433",
                                                                                        "read-write")
    assert u.where == "h1:5432,h2:5433/db"


def test_defaults_and_bad_urls():
    u = PgUrl.parse("postgres:///")
    assert (u.params["host"], u.params["dbname"], u.params["user"], u.schema) == ("127.0.0.1", "postgres",
                                                                                 "postgres", "public")
    with pytest.raises(InvalidInput, match=r"\*\*\*") as e:
        PgUrl.parse("postgresql://u:topsecret@h/db?nosuchparameter=1")
    assert "topsecret" not in str(e.value)
    with pytest.raises(InvalidInput):
        PgUrl.parse("sqlite:///x.db")


def test_redact_hides_passwords_in_the_user_part_and_in_the_query():
    assert redact("postgresql://u:pw@h1:5432,h2:5433/db") == "postgresql://u:***@h1:5432,h2:5433/db"
    assert redact("postgresql://u@h/db?password=pw&sslmode=require") == \
        "postgresql://u@h/db?password=***&sslmode=require"
    assert redact("sqlite:///x.db") == "sqlite:///x.db"


def test_dialects():
    pg, lite = Dialect("postgresql", "desk"), Dialect("sqlite")
    assert (pg.name("t"), pg.param, pg.type("num")) == ('"desk"."t"', "%s", "numeric")
    assert (lite.name("t"), lite.param, lite.type("num")) == ("t", "?", "TEXT")
    assert Dialect("postgresql").schema == "public"
    with pytest.raises(ValueError):
        Dialect("mysql")


# ------------------------------------------------------------------------------ PostgreSQL


def test_libpq_parameters_in_the_url_reach_the_server(pg_url):
    with open_store(pg_url + "&application_name=seam-test&sslmode=disable") as store:
        with read_cursor(store) as cur:
            assert cur.execute("SHOW application_name").fetchone()[0] == "seam-test"
        assert store.dialect.schema == PgUrl.parse(pg_url).schema


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("cause", ["nothing listening", "unknown role", "unknown database"])
def test_an_unreachable_postgresql_raises_store_unreachable_quickly_with_libpqs_reason(pg_server, cause):
    base = PgUrl.parse(pg_server).params
    host, port, db = base["host"], base.get("port", "5432"), base["dbname"]
    url, reason = {
        "nothing listening": (f"postgresql://postgres:hunter2@{host}:{_free_port()}/{db}", "Connection refused"),
        "unknown role": (f"postgresql://nosuchrole_{uuid.uuid4().hex[:6]}:hunter2@{host}:{port}/{db}",
                         "does not exist"),
        "unknown database": (f"postgresql://postgres:hunter2@{host}:{port}/nosuchdb_{uuid.uuid4().hex[:6]}",
                             "does not exist"),
    }[cause]
    started = time.monotonic()
    with pytest.raises(StoreUnreachable) as e:
        open_store(url)
    assert time.monotonic() - started < 3.0
    message = str(e.value)
    assert "\n" not in message and "hunter2" not in message
    assert PgUrl.parse(url).where in message and reason in message


def test_a_multi_host_url_fails_over_to_the_host_that_answers(pg_server, pg_url):
    base = PgUrl.parse(pg_server).params
    host, port = base["host"], base.get("port", "5432")
    schema = PgUrl.parse(pg_url).schema
    url = (f"postgresql://postgres@{host}:{_free_port()},{host}:{port}/{base['dbname']}"
           f"?schema={schema}&target_session_attrs=read-write")
    with open_store(url) as store:
        store.trading.append([new_event("s", 1, "T", b"{}")])
        assert store.trading.head() == 1
