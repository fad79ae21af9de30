"""The HTTP API for risk tools: a real uvicorn server, real HTTP, on a real SQLite file and a real
PostgreSQL schema, over read models projected from a log written by the real client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tradestate.adapters.store import open_store
from tradestate.domain.errors import TradestateError
from tradestate.projections import queries
from tradestate.projections.http.server import run_server
from tradestate.projections.projector import Projector

import tradestate
from tests.support.http import serving

TOKEN = "s3cret-token-for-tests"


# ------------------------------------------------------------------------------- harness
def project(url: str) -> int:
    store = open_store(url)
    try:
        projector = Projector(store)
        projector.load()  # creates the tables, folds what they already hold
        return projector.catch_up()
    finally:
        store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Clock:
    """The engine's clock: a fixed start two days ago (10:00 or 11:00 in New York), 10 ms a call."""

    def __init__(self) -> None:
        self.t0 = (datetime.now(timezone.utc) - timedelta(days=2)).replace(hour=15, minute=0, second=0,
                                                                         microsecond=0)
        self.calls = 0

    def __call__(self) -> datetime:
        self.calls += 1
        return self.t0 + timedelta(milliseconds=10 * self.calls)


def populate(url: str) -> dict[str, Any]:
    """A small trading session through the real client; returns what the tests compare with."""
    clock = Clock()
    t0 = clock.t0
    now = datetime.now(timezone.utc)
    client = tradestate.connect(url, clock=clock, venue="sim")
    try:
        client.set_risk_limit("acct-1", "max_order_qty", 1000)
        client.set_risk_limit("acct-1", "max_position_qty", 5000)
        client.set_risk_limit("acct-1", "max_open_orders", 5)
        # o1: buy 100 AAPL, filled in two executions
        assert client.record_intent("acct-1", "o1", "AAPL", "buy", "100", order_type="limit",
                                    limit_price="187.50", strategy_id="sma").accepted
        client.record_submitted("acct-1", "o1")
        client.record_ack("acct-1", "o1", venue_order_id="V-1")
        client.record_fill("acct-1", "o1", "X-1", "40", "187.45", fee="0.20", occurred_at=t0 + timedelta(minutes=1))
        client.record_fill("acct-1", "o1", "X-2", "60", "187.50", fee="0.30", occurred_at=t0 + timedelta(minutes=2))
        # o2: sell 30 AAPL at 190: realises P&L
        assert client.record_intent("acct-1", "o2", "AAPL", "sell", "30", order_type="limit",
                                    limit_price="190").accepted
        client.record_ack("acct-1", "o2", venue_order_id="V-2")
        client.record_fill("acct-1", "o2", "X-3", "30", "190.00", fee="0.10", occurred_at=t0 + timedelta(minutes=3))
        # o3: open; o4: refused by risk; o5: cancelled; o6: rejected by the venue
        assert client.record_intent("acct-1", "o3", "MSFT", "buy", "10", order_type="limit",
                                    limit_price="400").accepted
        client.record_ack("acct-1", "o3", venue_order_id="V-3")
        refused = client.record_intent("acct-1", "o4", "MSFT", "buy", "2000")
        assert refused.refusal is not None and refused.refusal.reasons == ["max_order_qty"]
        assert client.record_intent("acct-1", "o5", "TSLA", "buy", "5", order_type="limit", limit_price="200").accepted
        client.request_cancel("acct-1", "o5")
        client.record_cancelled("acct-1", "o5")
        assert client.record_intent("acct-1", "o6", "TSLA", "sell", "1").accepted
        client.record_reject("acct-1", "o6", "no borrow")
        # acct-2: one fill, then an expired breaker and the kill switch
        assert client.record_intent("acct-2", "b1", "SPY", "buy", "2").accepted
        client.record_ack("acct-2", "b1", venue_order_id="V-9")
        client.record_fill("acct-2", "b1", "X-9", "2", "500.25", fee="1", occurred_at=t0 + timedelta(minutes=2))
        client.trip_breaker("acct-2", "volatility", until=now - timedelta(hours=1))  # already expired
        client.engage_kill_switch("acct-2", "manual stop")
        # acct-1's breaker: tripped until tomorrow
        client.trip_breaker("acct-1", "loss streak", until=now + timedelta(days=1))
        client.record_signal("sma", "AAPL", "long", value="1.5", attributes={"fast": "10", "slow": "50"})
        client.record_signal("sma", "MSFT", "flat")
        return {
            "t0": t0,
            "day": client.state.trading_day(t0),
            "head": client.position,
            "positions": client.positions(),
            "orders": {o: client.order(a, o) for a, o in [("acct-1", f"o{i}") for i in range(1, 7)] + [("acct-2", "b1")]},
        }
    finally:
        client.close()


def append_unprojected(url: str, n: int) -> None:
    client = tradestate.connect(url, venue="sim")
    try:
        for i in range(n):
            client.record_signal("lagging", f"SYM{i}", "long")
    finally:
        client.close()


def exact(value: Any) -> str:
    return format(Decimal(value), "f")


def money(url: str, values: Any) -> Any:
    """``values`` (a tuple or one value) as compared on ``url``'s backend: PostgreSQL keeps a
    decimal's scale, SQLite's NUMERIC columns keep only its value (75.60 reads back as 75.6)."""
    if not url.startswith("sqlite"):
        return values

    def one(v: Any) -> Any:
        try:
            return Decimal(v) if isinstance(v, str) else v
        except InvalidOperation:
            return v

    return tuple(map(one, values)) if isinstance(values, tuple) else one(values)


@pytest.fixture
def session(db_url: str) -> dict[str, Any]:
    facts = populate(db_url)
    assert project(db_url) == facts["head"]
    facts["url"] = db_url
    return facts


# ------------------------------------------------------------------------------ read models
def test_read_endpoints_return_the_projected_state(session: dict[str, Any]) -> None:
    t0, day = session["t0"], session["day"]
    with serving(session["url"]) as http:
        # positions: exact decimal strings, as the client folds them
        r = http.get("/positions")
        assert r.status_code == 200, r.text
        got = {(p["account"], p["symbol"]): p for p in r.json()}
        assert set(got) == {("acct-1", "AAPL"), ("acct-2", "SPY")}
        aapl = got[("acct-1", "AAPL")]
        url = session["url"]
        assert money(url, (aapl["qty"], aapl["avg_cost"], aapl["realized_pnl"], aapl["unrealized_pnl"], aapl["fees"],
                           aapl["last_price"])) == money(url, ("70", "187.48", "75.60", "176.40", "0.60", "190.00"))
        spy = got[("acct-2", "SPY")]
        assert (spy["qty"], spy["avg_cost"], spy["fees"]) == ("2", "500.25", "1")
        for p in session["positions"]:
            row = got[(p["account"], p["symbol"])]
            for key in ("qty", "avg_cost", "realized_pnl", "unrealized_pnl", "fees", "last_price"):
                assert money(url, row[key]) == money(url, exact(p[key])), key
        assert [p["symbol"] for p in http.get("/positions", params={"account": "acct-2"}).json()] == ["SPY"]
        assert http.get("/positions", params={"symbol": "NOPE"}).json() == []

        # orders: statuses, filters, most recently updated first
        orders = http.get("/orders").json()
        assert {o["client_order_id"]: o["status"] for o in orders} == {
            "o1": "filled", "o2": "filled", "o3": "acknowledged", "o4": "refused", "o5": "cancelled",
            "o6": "rejected", "b1": "filled"}
        stamps = [o["updated_at"] for o in orders]
        assert stamps == sorted(stamps, reverse=True)
        o4 = next(o for o in orders if o["client_order_id"] == "o4")
        assert o4["refusal"] == ["max_order_qty"] and o4["is_open"] is False and o4["qty"] == "2000"
        assert [o["client_order_id"] for o in http.get("/orders", params={"status": "refused"}).json()] == ["o4"]
        assert {o["client_order_id"] for o in http.get("/orders", params={"status": "filled", "account": "acct-1"}).json()} == {"o1", "o2"}
        assert {o["client_order_id"] for o in http.get("/orders", params={"symbol": "TSLA"}).json()} == {"o5", "o6"}
        assert len(http.get("/orders", params={"limit": 2}).json()) == 2
        # the time filters work on updated_at: since inclusive, until exclusive
        window = {"since": (t0 + timedelta(seconds=90)).isoformat(), "until": (t0 + timedelta(minutes=3)).isoformat()}
        assert {o["client_order_id"] for o in http.get("/orders", params=window).json()} == {"o1", "b1"}
        since_z = (t0 + timedelta(minutes=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert [o["client_order_id"] for o in http.get("/orders", params={"since": since_z}).json()] == ["o2"]

        # one order
        r = http.get("/orders/acct-1/o1")
        assert r.status_code == 200
        o1 = r.json()
        expected = session["orders"]["o1"]
        assert money(url, (o1["status"], o1["qty"], o1["filled_qty"], o1["remaining_qty"], o1["avg_fill_price"],
                           o1["fees"], o1["venue_order_id"], o1["strategy_id"])) == money(
            url, ("filled", "100", "100", "0", "187.48", "0.50", "V-1", "sma"))
        assert money(url, o1["avg_fill_price"]) == money(url, exact(expected["avg_fill_price"]))
        assert datetime.fromisoformat(o1["updated_at"]) == t0 + timedelta(minutes=2)
        assert o1["updated_at"].endswith("Z")
        r = http.get("/orders/acct-1/nope")
        assert r.status_code == 404 and "nope" in r.json()["detail"]

        # open orders
        open_orders = http.get("/orders/open").json()
        assert [(o["account"], o["client_order_id"], o["status"]) for o in open_orders] == [("acct-1", "o3", "acknowledged")]
        assert http.get("/orders/open", params={"account": "acct-2"}).json() == []

        # risk: the breaker counts as active only while breaker_until is in the future
        risk = {r["account"]: r for r in http.get("/risk").json()}
        a1, a2 = risk["acct-1"], risk["acct-2"]
        assert a1["breaker_tripped"] and a1["breaker_active"] and a1["breaker_reason"] == "loss streak"
        assert datetime.fromisoformat(a1["breaker_until"]) > datetime.now(timezone.utc)
        assert a2["breaker_tripped"] and not a2["breaker_active"]
        assert a2["kill_switch"] and a2["kill_switch_reason"] == "manual stop" and not a1["kill_switch"]
        assert a1["open_orders"] == 1 and a1["ramp_pct"] == 100
        usage = {(u["limit_name"], u["symbol"]): (u["configured"], u["effective"], u["used"]) for u in a1["limits"]}
        assert usage == {
            ("max_open_orders", None): ("5", "5", "1"),
            ("max_order_qty", None): ("1000", "1000", None),
            ("max_position_qty", None): ("5000", "5000", "70"),
        }
        assert a2["limits"] == []
        r = http.get("/risk/acct-1")
        assert r.status_code == 200 and r.json() == a1
        assert http.get("/risk/nobody").status_code == 404

        # daily stats
        stats = http.get("/stats/daily", params={"account": "acct-1"}).json()
        assert len(stats) == 1
        s = stats[0]
        assert money(url, (s["trading_day"], s["trades"], s["fills"], s["volume"], s["realized_pnl"], s["fees"],
                           s["net_pnl"], s["breaches"])) == money(url, (day, 5, 3, "130", "75.60", "0.60", "75.00", []))
        assert len(http.get("/stats/daily", params={"day": day}).json()) == 2
        assert http.get("/stats/daily", params={"day": "2001-01-01"}).json() == []

        # equity curve: one point per account and minute of fills, oldest first
        time_column = queries.EQUITY_TIME
        curve = http.get("/equity", params={"account": "acct-1"}).json()
        assert [Decimal(p["equity"]) for p in curve] == [Decimal("-0.20"), Decimal("1.50"), Decimal("251.40")]
        assert [datetime.fromisoformat(p[time_column]) for p in curve] == [
            t0 + timedelta(minutes=m) for m in (1, 2, 3)]
        assert money(url, (curve[-1]["realized_pnl"], curve[-1]["unrealized_pnl"], curve[-1]["fees"])) == money(
            url, ("75.60", "176.40", "0.60"))
        since = {"since": (t0 + timedelta(minutes=2)).isoformat()}
        assert len(http.get("/equity", params={"account": "acct-1", **since}).json()) == 2
        assert [p["account"] for p in http.get("/equity", params={"limit": 2}).json()] == ["acct-2", "acct-1"]

        # signals
        signals = http.get("/signals").json()
        assert [(s["strategy_id"], s["symbol"], s["signal"], s["value"]) for s in signals] == [
            ("sma", "AAPL", "long", "1.5"), ("sma", "MSFT", "flat", None)]
        assert signals[0]["attributes"] == {"fast": "10", "slow": "50"}
        assert http.get("/signals", params={"symbol": "MSFT"}).json()[0]["signal"] == "flat"


def test_health_and_metrics_follow_the_projection_lag(session: dict[str, Any]) -> None:
    url, head = session["url"], session["head"]
    probe = Counter("tradestate_api_test_probe", "registered in the process-wide default registry")
    probe.inc(3)
    try:
        with serving(url, lag_threshold_events=2, lag_threshold_seconds=30) as http:
            r = http.get("/health")
            assert r.status_code == 200, r.text
            h = r.json()
            assert (h["status"], h["log_head"], h["projection_position"], h["lag_events"], h["lag_seconds"]) == (
                "ok", head, head, 0, 0)
            assert h["last_event_at"] is not None
            accounts = {a["account"]: a for a in h["accounts"]}
            assert accounts["acct-1"]["breaker_active"] and not accounts["acct-1"]["kill_switch"]
            assert not accounts["acct-2"]["breaker_active"] and accounts["acct-2"]["kill_switch"]

            r = http.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for f in text_string_to_metric_families(r.text) for s in f.samples}
            assert samples[("tradestate_log_head", ())] == head
            assert samples[("tradestate_projection_position", ())] == head
            assert samples[("tradestate_projection_lag_events", ())] == 0
            assert samples[("tradestate_projection_lag_seconds", ())] == 0
            assert samples[("tradestate_api_database_up", ())] == 1
            assert samples[("tradestate_risk_refusals_total", ())] == 1
            by_status = {dict(labels)["status"]: v for (name, labels), v in samples.items() if name == "tradestate_orders"}
            assert by_status == {"new": 0, "submitted": 0, "acknowledged": 1, "partially_filled": 0, "filled": 3,
                                 "cancelled": 1, "rejected": 1, "expired": 0, "refused": 1}
            assert samples[("tradestate_breaker_active", (("account", "acct-1"),))] == 1
            assert samples[("tradestate_breaker_active", (("account", "acct-2"),))] == 0
            assert samples[("tradestate_kill_switch_engaged", (("account", "acct-2"),))] == 1
            # the process-wide registry is served too (what the client library registers in-process)
            assert samples[("tradestate_api_test_probe_total", ())] == 3
            shared = {line for line in generate_latest(REGISTRY).decode().splitlines() if line.startswith("# TYPE")}
            served = {line for line in r.text.splitlines() if line.startswith("# TYPE")}
            assert shared <= served
            assert len(served) == len({line.split()[2] for line in served})  # no family served twice

            # behind: more unprojected events than the threshold
            append_unprojected(url, 3)
            r = http.get("/health")
            assert r.status_code == 503
            h = r.json()
            assert (h["status"], h["log_head"], h["projection_position"], h["lag_events"]) == (
                "behind", head + 3, head, 3)
            assert 0 < h["lag_seconds"] < 30
            text = http.get("/metrics").text
            assert "tradestate_projection_lag_events 3.0" in text
            assert f"tradestate_log_head {float(head + 3)}" in text

            assert project(url) == head + 3
            r = http.get("/health")
            assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["lag_seconds"] == 0

        # stalled: an unprojected event older than the seconds threshold
        with serving(url, lag_threshold_events=1000, lag_threshold_seconds=0.2) as http:
            assert http.get("/health").status_code == 200
            append_unprojected(url, 1)
            time.sleep(0.3)
            r = http.get("/health")
            assert r.status_code == 503
            h = r.json()
            assert h["status"] == "stalled" and h["lag_events"] == 1 and h["lag_seconds"] >= 0.2
    finally:
        REGISTRY.unregister(probe)


def test_openapi_lists_the_endpoints(sqlite_url: str) -> None:
    with serving(sqlite_url) as http:
        r = http.get("/openapi.json")
        assert r.status_code == 200
        spec = r.json()
        assert set(spec["paths"]) == {
            "/positions", "/orders", "/orders/open", "/orders/{account}/{client_order_id}", "/risk",
            "/risk/{account}", "/stats/daily", "/equity", "/signals", "/health", "/livez", "/readyz", "/metrics",
            "/engines", "/control/kill-switch/engage", "/control/kill-switch/release", "/control/breaker/trip",
            "/control/breaker/reset", "/control/resume", "/control/limit", "/control/ack", "/control/approve",
            "/instruments", "/instruments/{symbol}", "/cash", "/fx-rates", "/corporate-actions", "/fees/pending"}
        schemas = spec["components"]["schemas"]
        assert "exact decimal" in schemas["Position"]["properties"]["qty"]["description"]
        assert "refused" in str(schemas["Order"]["properties"]["status"])
        assert schemas["RiskState"]["properties"]["breaker_active"]["description"]
        limit = next(p for p in spec["paths"]["/orders"]["get"]["parameters"] if p["name"] == "limit")
        assert limit["schema"]["maximum"] == 1000
        assert http.get("/docs").status_code == 200
        # every data endpoint documents its freshness headers
        for path in ("/positions", "/orders", "/orders/open", "/orders/{account}/{client_order_id}", "/risk",
                     "/risk/{account}", "/stats/daily", "/equity", "/signals", "/instruments", "/instruments/{symbol}",
                     "/cash", "/fx-rates", "/corporate-actions", "/fees/pending"):
            headers = spec["paths"][path]["get"]["responses"]["200"]["headers"]
            assert set(headers) == {"X-Tradestate-Projection-Position", "X-Tradestate-Log-Head"}, path
            assert "projection_position" in headers["X-Tradestate-Projection-Position"]["description"]
            assert spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"], path
        # a range with since after until is a documented 422
        for path in ("/orders", "/equity"):
            assert "`since` after `until`" in spec["paths"][path]["get"]["responses"]["422"]["description"]
        assert "not projected yet" in spec["paths"]["/orders/{account}/{client_order_id}"]["get"]["responses"]["404"]["description"]


# ------------------------------------------------------------------------- probes, freshness
def test_liveness_and_readiness_are_separate_probes(session: dict[str, Any], tmp_path) -> None:
    url, head = session["url"], session["head"]
    with serving(url, token=TOKEN, lag_threshold_events=2, lag_threshold_seconds=30) as http:
        # both probes answer without the token; neither needs it for its verdict
        r = http.get("/livez")
        assert r.status_code == 200 and r.json() == {"status": "alive"}
        r = http.get("/readyz")
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "ready", "log_head": head, "projection_position": head, "lag_events": 0,
                            "lag_seconds": 0}
        # the projection falls behind: not ready (with the lag), yet alive, and data still served
        append_unprojected(url, 3)
        r = http.get("/readyz")
        assert r.status_code == 503
        body = r.json()
        assert (body["status"], body["log_head"], body["projection_position"], body["lag_events"]) == (
            "behind", head + 3, head, 3)
        assert r.headers["X-Tradestate-Projection-Position"] == str(head)
        assert http.get("/livez").status_code == 200
        assert http.get("/health").status_code == 503  # /health is the readiness detail: same verdict
        assert http.get("/positions", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        project(url)
        assert http.get("/readyz").status_code == 200
        assert http.get("/readyz", params={"x": "1"}).status_code == 422
    # a database that cannot be read: not ready, still alive
    with serving(f"sqlite:///{tmp_path}/missing.db") as http:
        assert http.get("/livez").status_code == 200
        r = http.get("/readyz")
        assert r.status_code == 503 and r.json()["detail"]


def test_data_responses_say_how_fresh_they_are(session: dict[str, Any]) -> None:
    url, head = session["url"], session["head"]
    paths = ("/positions", "/orders", "/orders/open", "/orders/acct-1/o1", "/risk", "/risk/acct-1", "/stats/daily",
             "/equity", "/signals")
    with serving(url) as http:
        for path in paths:
            r = http.get(path)
            assert r.status_code == 200, (path, r.text)
            assert (r.headers["X-Tradestate-Projection-Position"], r.headers["X-Tradestate-Log-Head"]) == (
                str(head), str(head)), path
        r = http.get("/orders/acct-1/nope")  # caught up: a plain unknown order
        assert r.status_code == 404 and "not projected" not in r.json()["detail"]
        assert r.headers["X-Tradestate-Log-Head"] == str(head)

        # an order recorded after the last projection: in the log, not in the read models
        client = tradestate.connect(url, venue="sim")
        try:
            assert client.record_intent("acct-3", "o9", "AAPL", "buy", "1").accepted
            new_head = client.position
        finally:
            client.close()
        for path in paths:
            r = http.get(path)
            assert (r.headers["X-Tradestate-Projection-Position"], r.headers["X-Tradestate-Log-Head"]) == (
                str(head), str(new_head)), path
        r = http.get("/orders/acct-3/o9")
        assert r.status_code == 404
        detail = r.json()["detail"]
        assert "'o9'" in detail and f"at position {head} of head {new_head}" in detail
        assert "not projected yet" in detail
        assert r.headers["X-Tradestate-Projection-Position"] == str(head)
        r = http.get("/risk/acct-9")
        assert r.status_code == 404 and "not projected yet" in r.json()["detail"]

        assert project(url) == new_head
        r = http.get("/orders/acct-3/o9")
        assert r.status_code == 200 and r.json()["status"] == "new"
        assert r.headers["X-Tradestate-Projection-Position"] == r.headers["X-Tradestate-Log-Head"] == str(new_head)


# ------------------------------------------------------------------------------- bad input
def test_bad_input_is_a_clear_4xx(session: dict[str, Any]) -> None:
    cases = [
        ("/orders", {"color": "red"}, "unknown query parameter"),
        ("/positions", {"acount": "acct-1"}, "acount"),
        ("/risk", {"account": "acct-1"}, "unknown query parameter"),
        ("/health", {"verbose": "1"}, "unknown query parameter"),
        ("/orders", {"since": "yesterday"}, "ISO-8601"),
        ("/orders", {"until": "2026-13-45T00:00:00Z"}, "ISO-8601"),
        ("/orders", {"since": "2026-11-20T10:00:00"}, "time zone"),
        ("/orders", {"since": "1700000000"}, "ISO-8601"),
        ("/orders", {"since": "2026-11-21T00:00:00Z", "until": "2026-11-20T00:00:00Z"}, "since is after until"),
        ("/equity", {"since": "soon"}, "ISO-8601"),
        ("/orders", {"limit": "100000"}, "less than or equal to 1000"),
        ("/orders", {"limit": "-1"}, "greater than or equal to 1"),
        ("/orders", {"limit": "ten"}, "integer"),
        ("/orders", {"status": "lost"}, "'refused'"),
        ("/orders", {"account": "a\x00b"}, "account"),
        ("/orders", {"account": "x" * 65}, "account"),
        ("/stats/daily", {"day": "20th"}, "day"),
        ("/stats/daily", {"day": "0"}, "YYYY-MM-DD"),
        ("/stats/daily", {"day": "1763596800"}, "YYYY-MM-DD"),
        ("/stats/daily", {"day": "2026-02-30"}, "calendar day"),
        ("/equity", {"since": "2026-11-21T00:00:00Z", "until": "2026-11-20T00:00:00Z"}, "since is after until"),
    ]
    with serving(session["url"]) as http:
        for path, params, needle in cases:
            r = http.get(path, params=params)
            assert r.status_code == 422, (path, params, r.status_code, r.text)
            body = r.json()
            assert isinstance(body["detail"], str) and needle in body["detail"], (path, params, body)
        r = http.get("/orders?status=filled&status=refused")
        assert r.status_code == 422 and "more than once" in r.json()["detail"]
        r = http.get("/orders/acct-1/bad%00id")
        assert r.status_code == 422
        assert http.get("/nowhere").status_code == 404
        # odd input is answered, never a 500 (undecodable bytes are replaced: no such account)
        assert http.get("/orders?account=%FF%FE").json() == []
        for raw in ("/orders?%00=1", "/risk/%00", "/orders?limit=1e3",
                    "/orders?limit=99999999999999999999999999", "/equity?since=0001-01-01T00:00:00%2B14:00",
                    "/equity?until=9999-12-31T23:59:59-12:00", "/orders?since=", "/signals?symbol="):
            r = http.get(raw)
            assert 400 <= r.status_code < 500, (raw, r.status_code, r.text)
        # an unencoded '+' arrives as a space: still understood
        r = http.get("/orders?since=2000-01-01T00:00:00+00:00&limit=1")
        assert r.status_code == 200 and len(r.json()) == 1
        # still serving after all that
        assert http.get("/positions").status_code == 200


def test_database_errors_are_503_not_tracebacks(tmp_path) -> None:
    not_a_db = tmp_path / "garbage.db"
    not_a_db.write_bytes(b"this is not a database" * 100)
    unbuilt = f"sqlite:///{tmp_path}/unbuilt.db"
    append_unprojected(unbuilt, 2)  # a log, but no read-model tables yet
    for url in (f"sqlite:///{not_a_db}", f"sqlite:///{tmp_path}/missing.db",
                f"postgresql://postgres@127.0.0.1:{free_port()}/test?connect_timeout=2"):
        with serving(url) as http:
            for path in ("/positions", "/orders/open", "/health"):
                r = http.get(path)
                assert r.status_code == 503, (url, path, r.text)
                assert r.json()["detail"] and "Traceback" not in r.text
            r = http.get("/metrics")
            assert r.status_code == 200 and "tradestate_api_database_up 0.0" in r.text
    with serving(unbuilt, lag_threshold_events=1) as http:
        r = http.get("/positions")
        assert r.status_code == 503 and "tradestate project" in r.json()["detail"]
        r = http.get("/health")  # no tables yet: everything is lag
        assert r.status_code == 503 and r.json()["projection_position"] == 0 and r.json()["lag_events"] == 2


# -------------------------------------------------------------------------------- security
def test_token_is_required_when_configured(sqlite_url: str) -> None:
    populate(sqlite_url)
    project(sqlite_url)
    with serving(sqlite_url, token=TOKEN) as http:
        for path in ("/positions", "/orders", "/risk/acct-1", "/metrics", "/openapi.json", "/docs"):
            r = http.get(path)
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"] == "Bearer" and "bearer token" in r.json()["detail"]
            assert http.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert http.get(path, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
            assert http.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200, path
        assert http.get("/positions", headers={"Authorization": f"bearer {TOKEN}"}).json()[0]["account"] == "acct-1"
        # /health stays reachable for probes, without the per-account details
        r = http.get("/health")
        assert r.status_code == 200 and r.json()["accounts"] is None
        r = http.get("/health", headers={"Authorization": f"Bearer {TOKEN}"})
        assert {a["account"] for a in r.json()["accounts"]} == {"acct-1", "acct-2"}
        spec = http.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_run_server_refuses_public_addresses_without_a_token(tmp_path, capsys) -> None:
    port = free_port()
    missing = f"sqlite:///{tmp_path}/missing.db"
    for host in ("0.0.0.0", "::", "192.0.2.10", "example.com", ""):
        assert run_server(missing, host=host, port=port, token=None) == 2
        assert "refusing" in capsys.readouterr().err
        assert run_server(missing, host=host, port=port, token="") == 2  # an empty token is no token
    with socket.socket() as s:  # nothing was bound
        s.bind(("127.0.0.1", port))
    assert run_server(missing, host="127.0.0.1", port=70000) == 2
    # loopback (or a token) passes the check; then a missing log is a clear error, before binding
    for host, token in (("127.0.0.1", None), ("localhost", None), ("::1", None), ("0.0.0.0", TOKEN)):
        with pytest.raises(TradestateError, match="no tradestate log"):
            run_server(missing, host=host, port=port, token=token)


def test_cli_serve_runs_the_server(sqlite_url: str, tmp_path) -> None:
    populate(sqlite_url)
    project(sqlite_url)
    port = free_port()
    env = {**os.environ, "TRADESTATE_API_TOKEN": TOKEN}
    cli = [sys.executable, "-m", "tradestate.cli", "serve", "--db", sqlite_url]
    refused = subprocess.run([*cli, "--host", "0.0.0.0", "--port", str(port)], capture_output=True, text=True,
                             timeout=30, env={k: v for k, v in env.items() if k != "TRADESTATE_API_TOKEN"})
    assert refused.returncode == 2 and "refusing" in refused.stderr
    proc = subprocess.Popen([*cli, "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                r = httpx.get(f"{base}/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "timeout"
                time.sleep(0.05)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        assert httpx.get(f"{base}/positions").status_code == 401
        r = httpx.get(f"{base}/positions", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and len(r.json()) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()


def test_client_metrics_are_in_the_default_registry(sqlite_url):
    """Appends, their latency and refusals are counted in-process (served by /metrics when the
    API runs beside the engine)."""
    from prometheus_client import REGISTRY

    import tradestate

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before_ok = sample("tradestate_appends_total", outcome="ok")
    before_hist = sample("tradestate_append_seconds_count")
    before_refused = sample("tradestate_intent_refusals_total", reason="kill_switch")
    with tradestate.connect(sqlite_url, venue="sim") as client:
        client.engage_kill_switch("m", "test")
        client.record_intent("m", "m-1", "AAPL", "buy", "1")
    assert sample("tradestate_appends_total", outcome="ok") == before_ok + 2
    assert sample("tradestate_append_seconds_count") == before_hist + 2
    assert sample("tradestate_intent_refusals_total", reason="kill_switch") == before_refused + 1
