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
