"""The engines over HTTP: a real uvicorn server on a real SQLite file and a real PostgreSQL schema.
A hung engine (it stops renewing its lease, no standby anywhere) is noticed by the server itself:
recorded once as LeaseExpired, shown dead on /health (degraded) and /engines and in the /metrics
gauges; the hung engine's next call is refused (NotLeader)."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tradestate.adapters.store import open_store
from tradestate.engines import engines
from tradestate.projections.projector import Projector

import tradestate
from tests.support.http import serving

TOKEN = "engines-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def project(url: str) -> None:
    store = open_store(url)
    try:
        projector = Projector(store)
        projector.load()
        projector.catch_up()
    finally:
        store.close()


def gauges(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def expiries(url: str, engine_id: str) -> list[dict[str, Any]]:
    store = open_store(url, create=False)
    try:
        return [orjson.loads(e.state) for e in store.trading.read_stream(f"engine-{engine_id}")
                if e.topic == "LeaseExpired"]
    finally:
        store.close()


def log_head(url: str) -> int:
    store = open_store(url, create=False)
    try:
        return store.trading.head()
    finally:
        store.close()


# Long enough that the live engine's renewals (every third of it) keep it alive on a loaded CI box
# (0.6 s once expired before the first /health), short enough to wait out in a test.
HUNG_LEASE_SECONDS = 2.0


def test_a_hung_engine_is_detected_by_the_server_and_shown_dead_on_health_engines_and_metrics(db_url):
    hung = tradestate.connect(db_url, engine_id="e1", lease_seconds=HUNG_LEASE_SECONDS, venue="sim")
    hung.engine_started("e1")
    stopped = tradestate.connect(db_url, engine_id="e2", lease_seconds=30, venue="sim")
    stopped.engine_stopped("e2")  # a clean stop: releases the lease
    stopped.close()
    project(db_url)
    try:
        with serving(db_url, token=TOKEN, engine_watch_seconds=0.5) as http:
            health = http.get("/health", headers=AUTH)
            assert health.status_code == 200, health.text
            body = health.json()
            assert body["status"] == "ok" and body["dead_engines"] == 0
            assert {e["engine_id"]: e["state"] for e in body["engines"]} == {"e1": "active", "e2": "stopped"}
            assert body["engines"][0]["epoch"] == 1 and body["engines"][0]["holder"] == hung.lease.holder
            assert http.get("/health").json()["engines"] is None  # an open probe: no engine ids
            assert http.get("/engines").status_code == 401
            metrics = gauges(http.get("/metrics", headers=AUTH).text)
            assert metrics[("tradestate_engine_up", (("engine", "e1"),))] == 1
            assert ("tradestate_engine_up", (("engine", "e2"),)) not in metrics  # stopped cleanly: nothing to alert
            assert metrics[("tradestate_engine_lease_epoch", (("engine", "e1"),))] == 1

            hung.lease.stop()  # hung: no more renewals, no standby anywhere
            stopped_at = time.monotonic()
            deadline = stopped_at + 10
            while not expiries(db_url, "e1"):
                assert time.monotonic() < deadline, "the server did not record the expired lease"
                time.sleep(0.1)
            detected = time.monotonic() - stopped_at
            assert detected < HUNG_LEASE_SECONDS + 0.5 + 2.0  # the lease, one watch interval, slack for load
            [expired] = expiries(db_url, "e1")
            assert expired["detected_by"].startswith("serve ") and expired["epoch"] == 1
            assert expired["holder"] == hung.lease.holder

            health = http.get("/health", headers=AUTH)
            assert health.status_code == 200  # the read models are fine: degraded, not unavailable
            body = health.json()
            assert body["status"] == "degraded" and body["dead_engines"] == 1
            dead = next(e for e in body["engines"] if e["engine_id"] == "e1")
            assert dead["state"] == "dead" and dead["renewal_age_seconds"] >= HUNG_LEASE_SECONDS
            assert http.get("/health").json()["dead_engines"] == 1  # the count is public, for alerting

            rows = http.get("/engines", headers=AUTH).json()
            assert [(r["engine_id"], r["state"], r["lease"], r["expiry_recorded"], r["running"]) for r in rows] == [
                ("e1", "dead", "expired", True, True), ("e2", "stopped", "released", False, False)]
            store = open_store(db_url, create=False)
            try:
                direct = engines(store)
            finally:
                store.close()
            assert [(r["engine_id"], r["state"], r["holder"], r["epoch"]) for r in direct] == \
                [(r["engine_id"], r["state"], r["holder"], r["epoch"]) for r in rows]

            metrics = gauges(http.get("/metrics", headers=AUTH).text)
            assert metrics[("tradestate_engine_up", (("engine", "e1"),))] == 0
            assert metrics[("tradestate_engine_state", (("engine", "e1"), ("state", "dead")))] == 1
            age = metrics[("tradestate_engine_lease_renewal_age_seconds",
                           (("engine", "e1"), ("holder", hung.lease.holder)))]
            assert age >= HUNG_LEASE_SECONDS

            # The hung engine wakes up: refused, never a silent write; the expiry stays recorded once.
            head = log_head(db_url)
            with pytest.raises(tradestate.NotLeader, match="expired"):
                hung.record_intent("acct", "o1", "AAPL", "buy", "1", reference_price="10")
            time.sleep(1.2)  # two more watch ticks
            assert len(expiries(db_url, "e1")) == 1
            assert log_head(db_url) in (head, head + 1)  # a voided position at most
    finally:
        hung.close()


def test_engines_endpoint_is_documented_and_empty_without_engines(db_url):
    tradestate.connect(db_url, venue="sim").close()
    project(db_url)
    with serving(db_url, watch_engines=False) as http:
        assert http.get("/engines").json() == []
        body = http.get("/health").json()
        assert body["status"] == "ok" and body["engines"] == [] and body["dead_engines"] == 0
        assert http.get("/engines", params={"x": "1"}).status_code == 422
        spec = http.get("/openapi.json").json()
        assert "/engines" in spec["paths"]
        schema = spec["paths"]["/engines"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema["items"]["$ref"].endswith("/Engine") or schema["items"]["$ref"].endswith("/EngineOut")
        assert "degraded" in spec["components"]["schemas"]["HealthOut"]["properties"]["status"]["enum"]
