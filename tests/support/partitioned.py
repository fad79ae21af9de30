"""Fixtures that run a module's tests on a partitioned PostgreSQL log too.

Import them into a test module (``from tests.support.partitioned import db_url  # noqa: F401``) and
every test there that takes ``db_url`` (or ``store``, which takes it) runs on a SQLite file, on a
plain PostgreSQL log, and on a PostgreSQL log created with ``?partitions=month`` (see
adapters/store/partitions.py). ``pg_url`` likewise runs a PostgreSQL-only module on both layouts."""

from __future__ import annotations

import pytest

PARTITIONED = "partitions=month"


def partitioned(url: str) -> str:
    """``url`` asking for the monthly-partitioned layout."""
    return url + ("&" if "?" in url else "?") + PARTITIONED


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres),
                        pytest.param("postgresql-partitioned", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """A SQLite file, a PostgreSQL schema, or a PostgreSQL schema whose logs are partitioned."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/tradestate.db"
    elif request.param == "postgresql":
        yield request.getfixturevalue("pg_url")
    else:
        yield partitioned(request.getfixturevalue("pg_url"))


@pytest.fixture(params=["plain", "partitioned"])
def pg_url(request, pg_url):
    """The conftest's ``pg_url`` (a fresh schema) with a plain or a partitioned log. Import either
    this or ``db_url`` into a module, not both (``db_url`` would run the partitioned case twice)."""
    return pg_url if request.param == "plain" else partitioned(pg_url)
