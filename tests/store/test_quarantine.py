"""A row the fold cannot apply (an order event with no intent before it, inserted with raw SQL
around the append-only triggers) is quarantined: ``connect``, ``state``, ``recover`` and
``project`` keep working for the rest of the log, a decision on the affected order or account
raises ``CorruptStream``, and ``verify`` names the position and what is wrong there."""

from __future__ import annotations

import json
import uuid

import orjson
import pytest
from tests.support.projector_worker import Clock
from tests.support.db import tamper
from typer.testing import CliRunner

import tradestate
from tradestate.adapters.store import digest, open_store
from tradestate.cli.main import app
from tradestate.domain.ids import order_stream_id
from tradestate.domain.integrity import CorruptStream, MeaningCheck
from tradestate.recovery import recover

GHOST = order_stream_id("acct-1", "ghost")


def _fill_payload(account: str, coid: str, exec_id: str = "x-ghost") -> bytes:
    return orjson.dumps({"event_id": str(uuid.uuid4()), "occurred_at": "2024-03-05T14:31:00.000000Z",
                         "correlation_id": None, "causation_id": None, "account": account,
                         "client_order_id": coid, "exec_id": exec_id, "qty": "1", "price": "100", "fee": "0",
                         "fee_currency": "USD", "liquidity": "unknown", "venue_order_id": "v-ghost", "_v": 1})


def _inject(store, stream: str, version: int, type_name: str, data: bytes) -> None:
    """Insert one row behind the writer's back, as an intruder with the owner's rights would."""
    if store.kind == "sqlite":
        sql = "INSERT INTO ts_events (stream_id, stream_version, type, data, recorded_at) VALUES (%s, %s, %s, %s, %s)"
        params: tuple = (stream, version, type_name, data, "2024-03-05T14:31:00.000000+00:00")
    else:
        sql = ("INSERT INTO ts_events (position, stream_id, stream_version, type, data) "
               "VALUES (nextval('ts_events_position_seq'), %s, %s, %s, %s)")
        params = (stream, version, type_name, data)
    tamper(store, (sql, params))


def _log(url: str) -> int:
    with tradestate.connect(url, venue="sim", clock=Clock()) as c:
        c.set_risk_limit("acct-1", "max_order_qty", 100)
        for account, coid in (("acct-1", "o1"), ("acct-2", "o2")):
            assert c.record_intent(account, coid, "AAPL", "buy", "10", reference_price="100").accepted
            c.record_submitted(account, coid)
            c.record_ack(account, coid, f"v-{coid}")
        c.record_fill("acct-2", "o2", "x-1", "4", "101")
        return c.position


@pytest.fixture
def injected(db_url):
    head = _log(db_url)
    with open_store(db_url, create=False) as store:
        _inject(store, GHOST, 1, "OrderFilled", _fill_payload("acct-1", "ghost"))
        assert store.trading.head() == head + 1
    return db_url, head + 1


def test_the_fold_quarantines_the_row_and_the_rest_stays_usable(injected):
    url, bad = injected
    with tradestate.connect(url, venue="sim", clock=Clock()) as c:
        assert c.position == bad
        position, reason = c.state.quarantined_streams[GHOST]
        assert position == bad and "no intent or import before it" in reason
        assert c.state.quarantined_accounts["acct-1"][0] == bad
        # the rest of the log was folded
        assert c.order("acct-2", "o2")["filled_qty"] == 4 and c.order("acct-1", "o1")["status"] == "acknowledged"
        # decisions on the rest go on
        assert c.record_intent("acct-2", "o3", "AAPL", "buy", "1", reference_price="100").accepted
        c.record_fill("acct-2", "o2", "x-2", "1", "101")
        # a decision on the affected order or account is refused with the reason, nothing appended
        head = c.position
        with pytest.raises(CorruptStream, match=f"position {bad}") as refused:
            c.record_fill("acct-1", "ghost", "x-9", "1", "100")
        assert refused.value.name == GHOST and refused.value.position == bad
        with pytest.raises(CorruptStream, match="account acct-1 is quarantined"):
            c.record_intent("acct-1", "o4", "AAPL", "buy", "1", reference_price="100")
        with pytest.raises(CorruptStream):
            c.record_fill("acct-1", "o1", "x-3", "1", "100")
        assert c.position == head
        # an operator can still stop the account
        c.engage_kill_switch("acct-1", "corrupt log")
        assert c.state.accounts["acct-1"].kill_switch


def test_a_running_client_quarantines_a_row_injected_under_it(db_url):
    _log(db_url)
    with tradestate.connect(db_url, venue="sim", clock=Clock()) as c:
        with open_store(db_url, create=False) as store:
            _inject(store, GHOST, 1, "OrderFilled", _fill_payload("acct-1", "ghost"))
        c.catch_up()  # the warm path (TradingState.apply), not the cold fold
        assert GHOST in c.state.quarantined_streams
        with pytest.raises(CorruptStream):
            c.record_intent("acct-1", "o5", "AAPL", "buy", "1", reference_price="100")
        assert c.record_intent("acct-2", "o5", "AAPL", "buy", "1", reference_price="100").accepted


def test_state_recover_and_project_work_and_show_the_quarantine(injected):
    url, bad = injected
    runner = CliRunner()
    r = runner.invoke(app, ["state", "--db", url, "--json"])
    assert r.exit_code == 0, r.output
    quarantined = json.loads(r.stdout)["quarantined"]
    assert {(q["kind"], q["name"], q["position"]) for q in quarantined} == {("stream", GHOST, bad),
                                                                              ("account", "acct-1", bad)}
    r = runner.invoke(app, ["state", "--db", url])
    assert r.exit_code == 0 and "QUARANTINED" in r.stdout and str(bad) in r.stdout

    with open_store(url, create=False) as store:
        report, client = recover(store, clock=Clock())
        try:
            health = report.step("health")
            assert report.ready and health.status == "warn" and f"quarantined from position {bad}" in health.detail
            assert health.counts["quarantined"] == 2
        finally:
            client.close()

    r = runner.invoke(app, ["project", "--db", url, "--once", "--json"])
    assert r.exit_code == 0, r.output
    with tradestate.connect(url, venue="sim") as c:
        model = c.read_model()
        assert {o["client_order_id"] for o in model.orders()} >= {"o1", "o2"}


def test_verify_names_the_first_row_that_makes_no_sense(injected):
    url, bad = injected
    with open_store(url, create=False) as store:
        assert digest.verify(store).ok  # the digest cannot tell: the row was written whole
        sense = digest.verify_meaning(store)
        assert (sense.ok, sense.first_bad_position, sense.problem, sense.stream) == (False, bad, "orphan", GHOST)
    r = CliRunner().invoke(app, ["verify", "--db", url, "--json"])
    out = json.loads(r.stdout)
    assert r.exit_code == 1 and (out["ok"], out["first_bad_position"], out["problem"]) == (False, bad, "orphan")
    assert out["meaning"]["stream"] == GHOST
    r = CliRunner().invoke(app, ["verify", "--db", url])
    assert r.exit_code == 1 and "MEANINGLESS" in r.stdout and str(bad) in r.stdout
    assert CliRunner().invoke(app, ["verify", "--db", url, "--no-meaning"]).exit_code == 0


def test_a_sound_log_passes_the_meaning_check(db_url):
    head = _log(db_url)
    with open_store(db_url, create=False) as store:
        sense = digest.verify_meaning(store)
    assert sense.ok and sense.checked_events == head


def _rows(*specs):
    return [(i + 1, stream, version, type_name, data) for i, (stream, version, type_name, data) in enumerate(specs)]


def test_meaning_rules_each_name_their_position():
    intent = orjson.dumps({"account": "a", "client_order_id": "c"})
    s = order_stream_id("a", "c")
    gap = MeaningCheck().feed(_rows((s, 1, "OrderIntentRecorded", intent), (s, 3, "OrderSubmitted", intent)))
    assert (gap.position, gap.problem) == (2, "version_gap")
    first = MeaningCheck().feed(_rows(("account-a", 2, "KillSwitchEngaged", b"{}")))
    assert (first.position, first.problem) == (1, "version_gap")
    other = orjson.dumps({"account": "a", "client_order_id": "other"})
    dangling = MeaningCheck().feed(_rows((s, 1, "OrderIntentRecorded", intent), (s, 2, "OrderFilled", other)))
    assert (dangling.position, dangling.problem) == (2, "dangling_reference") and "a/other" in dangling.detail
    assert MeaningCheck().feed(_rows((s, 1, "OrderImported", intent), (s, 2, "OrderFilled", intent))) is None
    voided = _rows((s, 1, "OrderIntentRecorded", intent), ("$void", 2, "$void", b"{}"), (s, 2, "OrderFilled", intent))
    assert MeaningCheck().feed(voided) is None


def test_a_malformed_row_on_a_known_order_quarantines_it_the_same_way_warm_and_cold():
    from datetime import datetime, timezone

    from tradestate.domain import events as ev
    from tradestate.domain.fold import fold_cold
    from tradestate.domain.state import TradingState

    at = datetime(2024, 3, 5, 14, 30, tzinfo=timezone.utc)
    sid, other = order_stream_id("a", "c"), order_stream_id("b", "d")

    def intent(account, coid):
        return ev.OrderIntentRecorded(event_id=uuid.uuid4(), occurred_at=at, account=account, client_order_id=coid,
                                      venue="sim", symbol="AAPL", side="buy", order_type="market", qty="10").to_payload()

    fill = orjson.loads(_fill_payload("a", "c"))
    del fill["qty"]
    rows = [(1, sid, 1, "OrderIntentRecorded", orjson.dumps(intent("a", "c")), at),
            (2, other, 1, "OrderIntentRecorded", orjson.dumps(intent("b", "d")), at),
            (3, sid, 2, "OrderFilled", orjson.dumps(fill), at),
            (4, sid, 3, "OrderFilled", _fill_payload("a", "c", "x-2"), at),
            (5, other, 2, "OrderFilled", _fill_payload("b", "d", "x-3"), at)]
    warm = TradingState()
    for position, stream, version, type_name, data, when in rows:
        warm.apply(position, stream, version, type_name, orjson.loads(data), when)
    cold, _ = fold_cold([rows])
    for state in (warm, cold):
        position, reason = state.quarantined_streams[sid]
        assert position == 3 and "KeyError: 'qty'" in reason
        assert state.orders[sid].filled_qty == 0  # the row after it on the same stream is not folded either
        assert state.orders[other].filled_qty == 1 and state.position == 5
    assert warm.summary() == cold.summary()
