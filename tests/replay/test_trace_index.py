"""``replay trace`` with the order-reference index (``adapters.store.order_refs``) gives exactly the
trace of the whole account stream, wherever the index ends, on SQLite and PostgreSQL: for the
recorded session, and for generated logs whose account events link to orders every way the
trace knows (causation chains, correlation with the intent, a risk decision by client order id,
reconciliation runs naming or correcting an order, the events of those runs, and fees naming only
an execution); and an index built before fees' exec ids were indexed is upgraded."""

from __future__ import annotations

import itertools
import sqlite3

import tempfile

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tradestate
from tradestate import replay
from tradestate.cli.main import app
from typer.testing import CliRunner
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
    fee = {"fee_id": "f", "exec_id": "X-1", "causation_id": "k"}
    assert order_refs.refs_of("FeeCharged", fee) == {"k", "X-1"}  # a fee by execution only: its order's


# ------------------------------------------------------------- fees naming only an execution

FEE_ORDERS = [(A, "o-1"), (A, "o-4")]


def _with_exec_fees(url: str) -> int:
    """The recorded session plus fees the venue reported by execution only (on the account
    stream): two of o-1's executions, one of o-4's, and one of an execution no order has."""
    session = build_session(url)
    with tradestate.connect(url, venue="sim") as c:
        for fee_id, exec_id in (("F-1", "X-1"), ("F-4", "X-4"), ("F-2", "X-2"), ("F-9", "X-9")):
            c.record_fee(A, "sim", fee_id, "0.05", exec_id=exec_id)
        return c.position if c.position else session.head


def _fee_steps(t: replay.Trace) -> list[str]:
    return [s.event.payload["fee_id"] for s in t.steps if s.event.type == "FeeCharged"]


def test_a_fee_naming_only_an_execution_is_in_its_orders_trace_indexed_or_scanned(db_url, monkeypatch):
    head = _with_exec_fees(db_url)
    with open_store(db_url, create=False) as store:
        scanned = {o: replay.trace(store, *o) for o in FEE_ORDERS}
        assert _fee_steps(scanned[(A, "o-1")]) == ["F-1", "F-2"]
        assert _fee_steps(scanned[(A, "o-4")]) == ["F-4"]  # F-9's execution is no order's
        assert {s.role for s in scanned[(A, "o-1")].steps if s.event.type == "FeeCharged"} == {"fee (reported apart)"}
        scanned = {o: _json(t) for o, t in scanned.items()}
        monkeypatch.setattr(order_refs, "AUTO_CATCH_UP", 0)
        for upto in (head - 3, head):  # the index ends among the fees, then after them
            order_refs.catch_up(store, limit=upto - (order_refs.state(store) or order_refs.IndexState(0, "")).upto)
            assert {o: _json(replay.trace(store, *o)) for o in FEE_ORDERS} == scanned, upto


def _make_format_1(store) -> None:
    """Turn the current index into one built before fees' exec ids: no such refs, no ``format``."""
    exec_refs = [(order_refs.ref_hash(orjson.loads(r.state)["exec_id"]), r.position)
                 for r in store.trading.read_stream(account_stream_id(A)) if r.topic == "FeeCharged"]
    state = order_refs.state(store)
    p = store.dialect.param
    with store.trading.transaction(write=True) as cur:
        name = store.dialect.name
        cur.executemany(f"DELETE FROM {name(order_refs.TABLE)} WHERE ref = {p} AND position = {p}", exec_refs)
        cur.execute(f"DROP TABLE {name(order_refs.STATE_TABLE)}")
        cur.execute(f"CREATE TABLE {name(order_refs.STATE_TABLE)} (id integer PRIMARY KEY, upto bigint NOT NULL,"
                    " event_id text NOT NULL)")
        cur.execute(f"INSERT INTO {name(order_refs.STATE_TABLE)} (id, upto, event_id) VALUES (1, {p}, {p})",
                    (state.upto, state.event_id))


def test_an_index_built_before_exec_ids_is_upgraded_by_the_trace_and_by_replay_index(db_url):
    head = _with_exec_fees(db_url)
    with open_store(db_url, create=False) as store:
        scanned = {o: _json(replay.trace(store, *o)) for o in FEE_ORDERS}
        order_refs.catch_up(store)
        _make_format_1(store)
        assert order_refs.state(store) == order_refs.IndexState(head, order_refs.state(store).event_id, 1)
        # a trace of a current index of format 1 upgrades it itself (no positions to catch up)
        assert {o: _json(replay.trace(store, *o)) for o in FEE_ORDERS} == scanned
        assert order_refs.state(store).format == order_refs.FORMAT
        assert order_refs.state(store).upto == head
        # ``tradestate replay index`` (catch_up) adds only the fees' refs, then is current
        _make_format_1(store)
    result = CliRunner().invoke(app, ["replay", "index", "--db", db_url, "--json"])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout) == {"indexed_from": head, "indexed_upto": head, "account_events": 4,
                                           "refs": 4, "format_upgraded": True}
    with open_store(db_url, create=False) as store:
        assert order_refs.state(store).format == order_refs.FORMAT
        assert {o: _json(replay.trace(store, *o)) for o in FEE_ORDERS} == scanned
        again = order_refs.catch_up(store)
        assert (again.events, again.upgraded) == (0, False)


def test_a_trace_that_cannot_upgrade_an_older_index_reads_the_account_stream(sqlite_url, monkeypatch):
    _with_exec_fees(sqlite_url)
    with open_store(sqlite_url, create=False) as store:
        scanned = {o: _json(replay.trace(store, *o)) for o in FEE_ORDERS}
        order_refs.catch_up(store)
        _make_format_1(store)

        def refused(*args, **kwargs):  # what a standby answers a write (our function, not the database)
            raise sqlite3.OperationalError("attempt to write a readonly database")

        monkeypatch.setattr(order_refs, "catch_up", refused)
        assert order_refs.state(store).format == 1
        assert {o: _json(replay.trace(store, *o)) for o in FEE_ORDERS} == scanned
        assert order_refs.state(store).format == 1


# ---------------------------------------------------------------------------------- generated

ORDER_COUNT = 12  # orders in the generated flow (about 5 events each)
account_event = st.fixed_dictionaries({
    "type": st.sampled_from(["ReconciliationCompleted", "PositionCorrected", "TradingBlocked", "RiskCheckPassed"]),
    "order": st.integers(min_value=1, max_value=ORDER_COUNT),  # the order it may name
    "how": st.sampled_from(["causation", "correlation", "coid", "discrepancy", "detail", "corrective", "recon",
                            "chain", "fee", "none"]),
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
        type_name = pick["type"]
        if how == "fee":  # a fee the venue reported by execution only (none: an execution no order has)
            fills = [e["exec_id"] for e in events if e.get("exec_id")]
            type_name = "FeeCharged"
            d.update(fee_id=f"fee-{n}", venue="sim", amount="0.01", currency="USD",
                     exec_id=fills[n % len(fills)] if fills else f"x-none-{n}")
        previous = d["event_id"]
        stream = account_stream_id(account)
        versions[stream] = versions.get(stream, 0) + 1
        position += 1
        out.append((position, stream, versions[stream], type_name, orjson.dumps(d), at))
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
