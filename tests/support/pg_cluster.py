"""The tests' throwaway PostgreSQL clusters: the product's ``tradestate.tools.pg_cluster``."""

from tradestate.tools.pg_cluster import (  # noqa: F401
    PASSWORD,
    PASSWORD_ROLE,
    STANDBY_NAME,
    Node,
    PgCluster,
    available,
    bindir,
    free_port,
)


def started_cluster(**options):
    """A started ``PgCluster`` (a generator for a pytest fixture: yields it, closes it after).
    Where none can start here the test skips — or fails where PostgreSQL tests are required
    (``TRADESTATE_REQUIRE_PG=1``, as in CI)."""
    import os

    import pytest

    problem = available()
    if problem is not None:
        if os.environ.get("TRADESTATE_REQUIRE_PG") == "1":
            pytest.fail("PostgreSQL cluster tests are required here: " + problem)
        pytest.skip(problem)
    cluster = PgCluster(**options)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
