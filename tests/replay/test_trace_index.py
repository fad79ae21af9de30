"""``replay trace`` with the order-reference index (``adapters.store.order_refs``) gives exactly the
trace of the whole account stream, wherever the index ends, on SQLite and PostgreSQL: for the
recorded session, and for generated logs whose account events link to orders every way the
trace knows (causation chains, correlation with the intent, a risk decision by client order id,
reconciliation runs naming or correcting an order, and the events of those runs)."""

from __future__ import annotations

import itertools

import tempfile

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tradestate import replay
from tradestate.adapters.store import open_store, order_refs
from tradestate.domain.ids import account_stream_id
from tradestate.tools.bench.logs import MIN_EVENTS, generate_trading_rows

from tests.support.replay_session import A, build_session
from tests.support.partitioned import db_url  # noqa: F401 - also on a partitioned PostgreSQL log

ORDERS = [(A, "o-1"), (A, "o-2"), (A, "o-3"), (A, "o-4"), ("acct-b", "o-1")]


def _json(t: replay.Trace) -> bytes:
    return orjson.dumps(t.to_json(), default=str)


def test_the_indexed_trace_is_the_scanned_one_wherever_the_index_ends(db_url, monkeypatch):
    session = build_session(db_url)
    with open_store(session.url, create=False) as store:
        scanned = {o: _json(replay.trace(store, *o)) for o in ORDERS}
        assert order_refs.state(store) is None  # a trace does not build the index on its own
        monkeypatch.setattr(order_refs, "AUTO_CATCH_UP", 0)  # keep each partial index as it is
        for upto in (0, 3, 9, session.head // 2, session.head - 1, session.head):
            order_refs.catch_up(store, limit=upto - (order_refs.state(store) or order_refs.IndexState(0, "")).upto)
            assert order_refs.state(store).upto == upto
            assert {o: _json(replay.trace(store, *o)) for o in ORDERS} == scanned, upto


def test_a_trace_catches_a_nearly_current_index_up_and_a_replaced_log_is_indexed_again(sqlite_url):
    session = build_session(sqlite_url)
    with open_store(session.url, create=False) as store:
        done = order_refs.catch_up(store, limit=5)
        assert (done.before, done.upto) == (0, 5)
        replay.trace(store, A, "o-4")
        assert order_refs.state(store).upto == session.head  # within AUTO_CATCH_UP: caught up
        with store.trading.transaction(write=True) as cur:  # the log under the index changes
            cur.execute("UPDATE ts_order_refs_upto SET event_id = 'another log'")
        again = order_refs.catch_up(store)
        assert (again.before, again.upto) == (0, session.head)


def test_refs_of_names_every_id_an_account_event_carries():
    recon = {"correlation_id": "c", "causation_id": "k", "reconciliation_id": "r", "corrective_event_ids": ["e1"],
             "discrepancies": [{"client_order_id": "o-9", "detail": "d"}, "not a dict"]}
    assert order_refs.refs_of("ReconciliationCompleted", recon) == {"c", "k", "r", "e1", "o-9", "d"}
    assert order_refs.refs_of("PositionCorrected", recon) == {"c", "k", "r"}  # lists only on the run itself


# ---------------------------------------------------------------------------------- generated

ORDER_COUNT = 12  # orders in the generated flow (about 5 events each)
account_event = st.fixed_dictionaries({
    "type": st.sampled_from(["ReconciliationCompleted", "PositionCorrected", "TradingBlocked", "RiskCheckPassed"]),
    "order": st.integers(min_value=1, max_value=ORDER_COUNT),  # the order it may name
    "how": st.sampled_from(["causation", "correlation", "coid", "discrepancy", "detail", "corrective", "recon",
                            "chain", "none"]),
    "recon": st.sampled_from(["r1", "r2", "r3"]),
})


def _extra_rows(start: int, picks: list[dict], rows: list[tuple]) -> list[tuple]:
    """Account events after the generated flow, linked to its orders as ``picks`` say."""
    by_order = {}
    for _, stream, _, type_name, data, _ in rows:
        d = orjson.loads(data)
        if stream.startswith("order-"):
            by_order.setdefault(d["client_order_id"], []).append(d)
    versions: dict[str, int] = {}
    for _, stream, version, *_ in rows:
        versions[stream] = max(versions.get(stream, 0), version)
    out, position, at, previous = [], start, rows[-1][5], None
    for n, pick in enumerate(picks):
        coid = f"c{pick['order']:09d}"
        events = by_order.get(coid)
        if not events:
            continue
        account = events[0]["account"]
        d = {"event_id": f"extra-{n}", "account": account, "occurred_at": events[0]["occurred_at"],
             "reconciliation_id": pick["recon"], "status": "ok", "symbol": "AAPL", "qty_before": "0",
             "qty_after": "1", "reason": "test", "side": "buy", "qty": "1", "client_order_id": None}
        how = pick["how"]
        if how == "causation":
            d["causation_id"] = events[-1]["event_id"]
        elif how == "correlation":
            d["correlation_id"] = events[0]["event_id"]
        elif how == "coid":
            d["client_order_id"] = coid
        elif how == "discrepancy":
            d["discrepancies"] = [{"kind": "fills_unknown", "client_order_id": coid}]
        elif how == "detail":
            d["discrepancies"] = [{"kind": "x", "detail": coid}]
        elif how == "corrective":
            d["corrective_event_ids"] = [events[min(1, len(events) - 1)]["event_id"]]  # the log may end after its intent
        elif how == "chain" and previous is not None:
            d["causation_id"] = previous
        previous = d["event_id"]
        stream = account_stream_id(account)
        versions[stream] = versions.get(stream, 0) + 1
        position += 1
        out.append((position, stream, versions[stream], pick["type"], orjson.dumps(d), at))
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(picks=st.lists(account_event, max_size=25), split=st.floats(min_value=0, max_value=1))
def test_on_generated_logs_the_indexed_trace_is_the_scanned_one(picks, split):
    rows = list(itertools.islice(generate_trading_rows(MIN_EVENTS), ORDER_COUNT * 5))  # the smallest log's start
    rows += _extra_rows(len(rows), picks, rows)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/log.db"
        open_store(url).close()
        with open_store(url, create=False) as store:
            with store.trading.transaction(write=True) as cur:
                cur.executemany("INSERT INTO ts_events (position, stream_id, stream_version, type, data, recorded_at)"
                                " VALUES (?,?,?,?,?,?)", [(*r[:5], r[5].isoformat()) for r in rows])
            orders = sorted({(orjson.loads(r[4])["account"], orjson.loads(r[4])["client_order_id"])
                             for r in rows if r[1].startswith("order-")})
            scanned = {o: _json(replay.trace(store, *o)) for o in orders}
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(order_refs, "AUTO_CATCH_UP", 0)
                for limit in (int(len(rows) * split), None):  # the index ends somewhere, then at the head
                    order_refs.catch_up(store, limit=limit)
                    assert {o: _json(replay.trace(store, *o)) for o in orders} == scanned
