"""The throwaway clusters' ports under parallel tests: ``free_port`` picks a port that was free a
moment ago, and another process (a test on another pytest-xdist worker) may take it before the
server binds it. A node's first start then moves to a new port; a node that has started keeps its
port (its standbys and clients know it), so a later start on a taken port fails clearly."""

from __future__ import annotations

import os
import socket

import pytest

from tests.support.pg_cluster import PgCluster, available
from tradestate.tools.pg_cluster import ClusterError

pytestmark = pytest.mark.postgres


def _squat(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_a_first_start_on_a_port_taken_meanwhile_moves_to_a_free_one_and_a_restart_does_not():
    problem = available()
    if problem is not None:
        if os.environ.get("TRADESTATE_REQUIRE_PG") == "1":
            pytest.fail("PostgreSQL cluster tests are required here: " + problem)
        pytest.skip(problem)
    cluster = PgCluster(standbys=0, synchronous=False)
    try:
        taken = cluster.primary.port
        with _squat(taken):
            cluster.start()
            assert cluster.primary.port != taken
            with cluster.primary.connect() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        assert "Address already in use" in cluster.primary.log.read_text()
        port = cluster.primary.port
        cluster.primary.stop()
        with _squat(port):
            with pytest.raises(ClusterError):
                cluster.primary.start()
        assert cluster.primary.port == port
    finally:
        cluster.close()
