"""Replay from Python (notebooks): state at a position or instant, diff, timeline, trace, market
and order replay, export — on a small real log, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from tradestate import replay
from tradestate.adapters.store import checkpoints as cp
from tradestate.loading import fold_tail
from tradestate.adapters.store import open_store
from tradestate.domain.errors import TradestateError, UnknownOrder
from tradestate.domain.state import TradingState

from tests.support.replay_session import A, T0, Session, at, build_session


@pytest.fixture
def session(db_url) -> Session:
    return build_session(db_url)


@pytest.fixture
def store(session):
    s = open_store(session.url, create=False)
    try:
        yield s
    finally:
        s.close()


def fresh_fold(store, stop=None) -> TradingState:
    state = TradingState()
    fold_tail(store, state, stop)
    return state


# ------------------------------------------------------------------------------ state


def test_state_at_a_position_is_the_fold_of_the_prefix_with_or_without_checkpoints(store, session):
    for position in (1, 9, session.mid_position, session.head):
        got = replay.state_at_position(store, position)
        want = fresh_fold(store, position)
        assert got.view() == replay.state_view(want, got.at, position=position), position
    cp.write(store, fresh_fold(store, 12))
    got = replay.state_at_position(store, session.mid_position)
    assert got.view() == replay.state_view(fresh_fold(store, session.mid_position), got.at,
                                           position=session.mid_position)


def test_state_at_a_recorded_instant_maps_to_the_last_position_at_or_before_it(store, session):
    st = replay.state_at_time(store, session.mid)
    assert st.position == session.mid_position
    view = st.view()
    assert [(p["symbol"], p["qty"]) for p in view["positions"]] == [("AAPL", Decimal(100))]
    assert view["open_orders"] == []
    assert view["accounts"][A]["breaker_tripped"] is False
    # ISO text with Z works too, and gives the same answer
    assert replay.state_at_time(store, replay.log.iso(session.mid)).position == session.mid_position


def test_state_on_the_occurred_axis_folds_every_event_that_had_occurred(store, session):
    st = replay.state_at_time(store, at(105), axis="occurred")
    view = st.view()
    acct = view["accounts"][A]
    assert acct["breaker_tripped"] is True and acct["breaker_reason"] == "volatility spike"
    assert [(p["symbol"], p["qty"]) for p in view["positions"]] == [("AAPL", Decimal(100))]
    # o-2 was cancelled at 81s: no open order; at 75s it was working
    assert view["open_orders"] == []
    early = replay.state_at_time(store, at(75), axis="occurred").view()
    assert [o["client_order_id"] for o in early["open_orders"]] == ["o-2"]
    later = replay.state_at_time(store, at(131), axis="occurred").view()
    assert later["accounts"][A]["kill_switch"] is True and later["accounts"][A]["breaker_tripped"] is False


def test_times_outside_the_log_are_refused(store, session):
    with pytest.raises(replay.ReplayError, match="before the log starts"):
        replay.state_at_time(store, "2001-01-01T00:00:00Z")
    with pytest.raises(replay.ReplayError, match="after the log ends"):
        replay.state_at_time(store, datetime.now(timezone.utc) + timedelta(days=1))
    with pytest.raises(replay.ReplayError, match="after the log ends"):
        replay.state_at_time(store, "2027-01-01T00:00:00Z", axis="occurred")
    with pytest.raises(replay.ReplayError, match="time zone"):
        replay.state_at_time(store, "2026-11-20T14:31:05")
    with pytest.raises(replay.ReplayError, match="after the log ends"):
        replay.state_at_position(store, session.head + 1)


# ------------------------------------------------------------------------------- diff


def test_diff_says_what_changed_and_which_events_changed_it(store, session):
    d = replay.diff(store, at(60), at(140), axis="occurred")
    orders = {o["client_order_id"]: o for o in d["orders"]}
    assert orders["o-2"]["changes"]["status"] == [None, "cancelled"]
    assert orders["o-3"]["changes"]["status"] == [None, "refused"]
    assert "o-1" not in orders  # nothing happened to it in the window
    types = {e["type"] for e in d["events"]}
    assert {"CircuitBreakerTripped", "KillSwitchEngaged", "OrderCancelled"} <= types
    assert not d["positions"]  # no fill in the window
    d2 = replay.diff_positions(store, 1, session.mid_position)
    (pos,) = d2["positions"]
    assert pos["changes"]["qty"] == [None, Decimal(100)]
    fills = [e["position"] for e in d2["events"] if e["type"] == "OrderFilled"]
    assert pos["events"] == fills and len(fills) == 2
    with pytest.raises(replay.ReplayError, match="before"):
        replay.diff(store, session.mid, session.mid - timedelta(seconds=1))


# --------------------------------------------------------------------------- timeline


def test_timeline_lists_the_window_in_log_order_with_filters_and_bars(store, session):
    tl = replay.timeline(store, at(60), "60s", axis="occurred")
    positions = [e.position for e in tl.events]
    assert positions == sorted(positions) and len(positions) > 10
    assert all(at(0) <= e.time("occurred") <= at(120) for e in tl.events)
    only = replay.timeline(store, at(60), "60s", axis="occurred", types="OrderFilled")
    assert [e.payload["exec_id"] for e in only.events] == ["X-1", "X-2"]
    by_strategy = replay.timeline(store, at(60), "60s", axis="occurred", strategy="sma")
    assert {e.payload.get("client_order_id") for e in by_strategy.events} == {"o-1", None}  # o-1 + the signal
    with_bars = replay.timeline(store, at(60), "60s", axis="occurred", market=True, symbol="AAPL")
    bars = [e for e in with_bars.events if e.log == "market"]
    assert len(bars) == 2  # closes at 14:31 and 14:32
    times = [e.time("occurred") for e in with_bars.events]
    i = with_bars.events.index(bars[0])
    assert times[i - 1] <= times[i]  # interleaved by time
    on_recorded = replay.timeline(store, session.mid, "1h")
    assert len(on_recorded.events) == session.head
    with pytest.raises(replay.ReplayError, match="not a duration"):
        replay.timeline(store, session.mid, "6x")
    with pytest.raises(replay.ReplayError, match="unknown event type"):
        replay.timeline(store, session.mid, "60s", types="NoSuchEvent")


# ------------------------------------------------------------------------------ trace


def test_trace_shows_the_whole_life_with_state_after_each_step(store, session):
    t = replay.trace(store, A, "o-1")
    types = [s.event.type for s in t.steps]
    assert types == ["OrderIntentRecorded", "RiskCheckPassed", "OrderSubmitted", "OrderAcknowledged",
                     "OrderFilled", "OrderFilled"]
    assert [s.order_after["status"] for s in t.steps if s.order_after] == [
        "new", "submitted", "acknowledged", "partially_filled", "filled"]
    assert t.steps[1].caused_by == 1  # the risk decision was caused by the intent
    assert t.final["filled_qty"] == 100 and t.final["avg_fill_price"] == Decimal("187.468")
    refused = replay.trace(store, A, "o-3")
    assert [s.event.type for s in refused.steps] == ["OrderIntentRecorded", "IntentRejectedByRisk"]
    assert refused.final["refusal"] == ["circuit_breaker"]
    over = replay.trace(store, A, "o-4")
    disc = [s for s in over.steps if s.event.type == "DiscrepancyRecorded"]
    assert len(disc) == 1 and disc[0].from_reconciliation and over.final["discrepancies"] == 1
    json.dumps(over.to_json(), default=str)
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(over)
    assert "discrepancy" in console.export_text()


def test_trace_of_an_unknown_or_ambiguous_order(store, session):
    with pytest.raises(UnknownOrder):
        replay.trace(store, A, "nope")
    with pytest.raises(replay.ReplayError, match="unknown order"):
        replay.trace(store, None, "nope")
    with pytest.raises(replay.ReplayError, match="several accounts"):
        replay.trace(store, None, "o-1")
    assert replay.trace(store, None, "o-4").account == A


# ----------------------------------------------------------------------- market replay


def test_market_replay_is_in_time_order_paced_by_speed_and_interleaved(store, session):
    seen = []
    fake = {"now": 0.0}
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        fake["now"] += s

    r = replay.replay_market(store, at(0), at(240), "60x", seen.append, sleep=sleep, clock=lambda: fake["now"])
    items = list(r)
    assert items == seen
    assert [i.time for i in items] == sorted(i.time for i in items)
    bars = [i.bar for i in items if i.kind == "bar"]
    assert [b.start for b in bars] == [T0 + timedelta(minutes=m) for m in range(4)]
    assert bars[0].close == Decimal("187.55")
    assert any(i.kind == "event" and i.event.type == "OrderFilled" for i in items)
    span = (items[-1].time - items[0].time).total_seconds()
    assert sum(sleeps) == pytest.approx(span / 60, rel=1e-6)
    stats = replay.replay_market(store, at(0), at(240), "max", trading=False).run()
    assert stats.bars == 4 and stats.events == 0
    warm = replay.recorded_bars(store, symbol="AAPL", end=at(150), last=2)
    assert [b.start for b in warm] == [T0, T0 + timedelta(minutes=1)]  # closed by 14:32:30
    with pytest.raises(replay.ReplayError):
        replay.replay_market(store, at(0), at(60), "fast")
    with pytest.raises(replay.ReplayError, match="nothing recorded"):
        list(replay.replay_market(store, "2030-01-01T00:00:00Z", "2030-01-02T00:00:00Z"))


# ------------------------------------------------------------------------ order replay


def test_order_replay_compares_simulated_with_recorded_outcomes(store, session):
    r = replay.replay_orders(store, at(0), at(240), account=A)
    by_id = {o.client_order_id: o for o in r.orders}
    assert set(by_id) == {"o-1", "o-2", "o-3", "o-4"}
    o1 = by_id["o-1"]
    assert o1.recorded["filled_qty"] == 100 and o1.simulated["filled_qty"] == 100
    assert o1.simulated["avg_price"] <= Decimal("187.50")  # a buy limit never fills above its limit
    assert by_id["o-3"].simulated is None and by_id["o-3"].same  # refused: not sent
    assert by_id["o-2"].recorded["status"] == "cancelled"
    (aapl,) = [p for p in r.positions if p["symbol"] == "AAPL"]
    assert aapl["recorded_qty"] == Decimal(110)  # o-1 and o-4; the overfill is a discrepancy, not a fill
    assert r.to_json()["summary"]["orders"] == 4
    assert replay.replay_orders(store, at(0), at(240), account=A).to_json() == r.to_json()  # deterministic
    with pytest.raises(replay.ReplayError, match="no order intent"):
        replay.replay_orders(store, "2030-01-01T00:00:00Z", "2030-01-02T00:00:00Z")


# ----------------------------------------------------------------------------- export


def test_export_parquet_and_jsonl_have_one_column_per_envelope_field(store, session, tmp_path):
    import pyarrow.parquet as pq

    n = replay.export(store, str(tmp_path / "log.parquet"))
    table = pq.read_table(tmp_path / "log.parquet")
    assert n == session.head == table.num_rows
    assert table.column_names == ["position", "stream_id", "version", "type", "recorded_at", "event_id",
                                  "occurred_at", "correlation_id", "causation_id", "payload"]
    rows = table.to_pylist()
    assert [r["position"] for r in rows] == list(range(1, session.head + 1))
    assert json.loads(rows[0]["payload"])["engine_id"] == "eng-1"
    assert rows[0]["recorded_at"].tzinfo is not None
    m = replay.export(store, str(tmp_path / "w.jsonl"), start=at(60), end=at(140), axis="occurred")
    lines = [json.loads(x) for x in (tmp_path / "w.jsonl").read_text().splitlines()]
    assert len(lines) == m and 0 < m < session.head
    assert set(lines[0]) == {"position", "stream_id", "version", "type", "recorded_at", "event_id", "occurred_at",
                             "correlation_id", "causation_id", "payload"}
    assert all("2026-11-20T14:31:00Z" <= x["occurred_at"] <= "2026-11-20T14:32:20Z" for x in lines)
    bars = replay.export(store, str(tmp_path / "bars.jsonl"), log="market")
    assert bars == 4
    with pytest.raises(replay.ReplayError, match="format"):
        replay.export(store, str(tmp_path / "x.csv"))


def test_typed_tables_for_notebooks(store, session):
    import pyarrow as pa
    import pyarrow.compute as pc

    fills = replay.fills(session.url)  # a URL: opened and closed for the call
    assert fills.num_rows == 3  # X-5 overfilled o-4: a discrepancy, not a fill
    assert fills.schema.field("qty").type == pa.decimal128(28, 12)
    assert fills.schema.field("recorded_at").type == pa.timestamp("us", tz="UTC")
    assert pc.sum(fills["qty"]).as_py() == Decimal("110")
    wide = pa.decimal256(28, 12)
    notional = pc.sum(pc.multiply(fills["qty"].cast(wide), fills["price"].cast(wide))).as_py()
    assert notional == Decimal("40") * Decimal("187.45") + Decimal("60") * Decimal("187.48") + \
        Decimal("10") * Decimal("188.10")
    assert fills.column("symbol").to_pylist() == ["AAPL"] * 3 and fills.column("side").to_pylist() == ["buy"] * 3
    meta = fills.schema.metadata
    assert meta[b"tradestate.kind"] == b"fills" and meta[b"tradestate.log_head"] == str(session.head).encode()
    window = replay.fills(store, at(60), at(240), axis="occurred")  # an open store: left open
    assert window.column("exec_id").to_pylist() == ["X-4"] and store.trading.head() == session.head
    assert replay.fills(store, account="acct-b").num_rows == 0

    orders = {(r["account"], r["client_order_id"]): r for r in replay.orders(store).to_pylist()}
    assert len(orders) == 5
    o1 = orders[(A, "o-1")]
    assert (o1["status"], o1["filled_qty"], o1["avg_fill_price"], o1["fees"], o1["fills"], o1["venue_order_id"]) == (
        "filled", Decimal(100), Decimal("187.468"), Decimal("0.5"), 2, "V-1")
    assert o1["closed_at"] == at(45) and o1["strategy_id"] == "sma"
    assert orders[(A, "o-2")]["status"] == "cancelled" and orders[(A, "o-2")]["cancel_requested"]
    assert orders[(A, "o-3")]["status"] == "refused" and orders[(A, "o-3")]["refusal"] == "circuit_breaker"
    assert orders[(A, "o-4")]["discrepancies"] == 1 and orders[("acct-b", "o-1")]["status"] == "new"
    # over the whole log, every order's lifecycle is the domain's fold of it
    folded = {(o.account, o.client_order_id): (o.status, o.filled_qty, o.fees, o.discrepancies, o.venue_order_id)
              for o in fresh_fold(store).orders.values()}
    assert {k: (r["status"], r["filled_qty"], r["fees"], r["discrepancies"], r["venue_order_id"])
            for k, r in orders.items()} == folded

    bars = replay.bars(store)
    assert bars.num_rows == 4 and bars.schema.field("close").type == pa.decimal128(28, 12)
    assert pc.max(bars["high"]).as_py() == Decimal("189.30") and bars.column("end").to_pylist()[0] == at(60)

    risk = replay.risk_events(store, account=A)
    assert risk.column("type").to_pylist() == ["RiskLimitChanged", "CircuitBreakerTripped", "IntentRejectedByRisk",
                                               "CircuitBreakerReset", "KillSwitchEngaged", "KillSwitchReleased"]
    assert risk.column("value").to_pylist()[0] == Decimal(1000)
    with pytest.raises(replay.ReplayError, match="kind"):
        replay.frame(store, "trades")

    pandas = pytest.importorskip("pandas")
    df = fills.to_pandas()
    assert isinstance(df, pandas.DataFrame) and df["qty"].sum() == Decimal("110")


def test_typed_export_files_carry_types_and_metadata(store, session, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = replay.export(store, str(tmp_path / "fills.parquet"), kind="fills", start=at(0), end=at(240),
                      axis="occurred")
    table = pq.read_table(tmp_path / "fills.parquet")
    assert n == table.num_rows == 3 and table.schema.field("price").type == pa.decimal128(28, 12)
    meta = pq.read_metadata(tmp_path / "fills.parquet").metadata
    assert (meta[b"tradestate.time_axis"], meta[b"tradestate.window_start"], meta[b"tradestate.window_end"],
            meta[b"tradestate.schema_version"]) == (b"occurred", b"2026-11-20T14:30:00Z", b"2026-11-20T14:34:00Z", b"1")
    assert replay.export(store, str(tmp_path / "bars.parquet"), kind="bars") == 4
    assert pq.read_metadata(tmp_path / "bars.parquet").metadata[b"tradestate.log"] == b"market"
    # JSON lines: the payload is an object, decimals are strings inside it
    replay.export(store, str(tmp_path / "log.jsonl"))
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    fill = next(x for x in lines if x["type"] == "OrderFilled")
    assert fill["payload"]["qty"] == "40" and fill["payload"]["exec_id"] == "X-1"
    replay.export(store, str(tmp_path / "risk.jsonl"), kind="risk")
    risk = [json.loads(x) for x in (tmp_path / "risk.jsonl").read_text().splitlines()]
    assert risk[0]["value"] == "1000" and risk[0]["occurred_at"] == "2026-11-20T14:30:01Z"


def test_export_never_leaves_a_half_written_file_or_writes_where_it_should_not(store, session, tmp_path):
    folder = tmp_path / "exports"
    folder.mkdir()
    out = folder / "log.parquet"
    with pytest.raises(replay.ReplayError, match="does not exist"):
        replay.export(store, str(folder / "nodir" / "log.parquet"))
    assert not (folder / "nodir").exists()

    # an existing file is kept unless overwrite=True
    out.write_text("keep me")
    with pytest.raises(replay.ReplayError, match="already exists"):
        replay.export(store, str(out))
    assert out.read_text() == "keep me"
    assert replay.export(store, str(out), overwrite=True) == session.head
    assert out.read_bytes()[:4] == b"PAR1"

    # a symbolic link is refused, even with overwrite, and what it points to is untouched
    victim = folder / "victim.txt"
    victim.write_text("precious")
    (folder / "link.jsonl").symlink_to(victim)
    for overwrite in (False, True):
        with pytest.raises(replay.ReplayError, match="symbolic link"):
            replay.export(store, str(folder / "link.jsonl"), overwrite=overwrite)
    assert victim.read_text() == "precious" and (folder / "link.jsonl").is_symlink()

    # a failure half way: the old file stays as it was and no temporary file is left behind
    def explode(done: int, total: int) -> None:
        if done > 5:
            raise RuntimeError("disk pulled")

    before = out.read_bytes()
    for name in ("log.parquet", "new.jsonl"):
        with pytest.raises(RuntimeError, match="disk pulled"):
            replay.export(store, str(folder / name), progress=explode, overwrite=True)
    assert out.read_bytes() == before and not (folder / "new.jsonl").exists()
    with pytest.raises(replay.ReplayError, match="before"):
        replay.export(store, str(folder / "w.jsonl"), start=at(100), end=at(10))
    assert sorted(p.name for p in folder.iterdir()) == ["link.jsonl", "log.parquet", "victim.txt"]


def test_replay_never_writes(store, session):
    before = (store.trading.head(), store.market.head(), cp.list_checkpoints(store))
    replay.state_at_time(store, session.mid)
    replay.timeline(store, session.mid, "1h", market=True)
    replay.trace(store, A, "o-4")
    replay.replay_orders(store, at(0), at(240))
    assert (store.trading.head(), store.market.head(), cp.list_checkpoints(store)) == before


def test_errors_are_tradestate_errors(store, session):
    for call in (lambda: replay.parse_duration("6x"), lambda: replay.parse_speed("fast"),
                 lambda: replay.parse_time("yesterday")):
        with pytest.raises(TradestateError):
            call()
