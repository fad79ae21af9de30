"""The rebuild's fresh tables (``projections/rebuild.py``): a key written twice keeps the later fact."""

from __future__ import annotations

import pytest
from tests.support.projector_worker import Clock, write_session
from tests.support.partitioned import pg_url  # noqa: F401 - also on a partitioned PostgreSQL log

import tradestate
from tradestate.adapters.store import open_store
from tradestate.projections.projector import Projector
from tradestate.projections.rebuild import FreshTables
from tradestate.projections.tables import TABLES


@pytest.mark.postgres
def test_a_key_written_twice_keeps_the_row_with_the_later_position_whatever_its_place_in_the_table(pg_url):
    """An order brought back for a late event is written again; on PostgreSQL the duplicates are
    resolved when the keys are built. The later fact must win even when its row sits physically
    before the earlier one (COPY may use free space in a table's earlier pages)."""
    with tradestate.connect(pg_url, clock=Clock()) as client:
        write_session(client, 40, seed=3)
    with open_store(pg_url) as store:
        projector = Projector(store)
        projector.rebuild()
        columns = [c for c, _ in TABLES["ts_orders"][0]]
        last = columns.index("last_position")
        with store.trading.transaction() as cur:
            cur.execute(f"SELECT {', '.join(columns)} FROM {projector.dialect.name('ts_orders')} ORDER BY stream_id LIMIT 1")
            row = cur.fetchone()
        earlier = tuple(row)
        later = tuple(v + 1000 if i == last else v for i, v in enumerate(row))
        fresh = FreshTables(projector)
        fresh.create()
        try:
            fresh.write([("ts_orders", [later])])  # the later fact first: it sits at the lower ctid
            fresh.write([("ts_orders", [earlier])])
            fresh.finish()
            with store.trading.transaction() as cur:
                cur.execute(f"SELECT last_position FROM {projector.dialect.name(fresh.names['ts_orders'])}")
                assert [r[0] for r in cur.fetchall()] == [later[last]]
        finally:
            fresh.drop()

