"""The last restore drill on /health and /metrics (a real uvicorn server, real SQLite and PostgreSQL):
none on record is said without turning /health red (unless drills are required); a passed drill
shows its figures; a failed or stale one makes /health degraded with the reason."""

from __future__ import annotations

import time
from functools import partial

import httpx
from prometheus_client.parser import text_string_to_metric_families
from tests.support.http import serving as http_serving
from tests.support.projector_worker import write_session
from tradestate.adapters.store import backup as bk
from tradestate.adapters.store import open_store
from tradestate.drill import drill
from tradestate.projections.projector import Projector

import tradestate

TOKEN = "drill-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DRILL_FAMILIES = ("tradestate_drill_last_completed_timestamp_seconds", "tradestate_drill_passed",
                  "tradestate_drill_rto_seconds", "tradestate_drill_rpo_seconds", "tradestate_drill_events_behind")


serving = partial(http_serving, token=TOKEN)


def project(url: str) -> None:
    store = open_store(url)
    try:
        projector = Projector(store)
        projector.load()
        projector.catch_up()
    finally:
        store.close()


def drill_samples(http: httpx.Client) -> dict[str, float]:
    text = http.get("/metrics", headers=AUTH).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name.startswith("tradestate_drill_")}


def test_health_and_metrics_show_the_last_drill(db_url, tmp_path):
    with tradestate.connect(db_url) as client:
        write_session(client, 40, seed=4)
    project(db_url)
    with serving(db_url) as http:
        h = http.get("/health").json()
        assert (h["status"], h["drill_status"], h["last_drill"], h["reasons"]) == ("ok", "never", None, [])
        assert drill_samples(http) == {}
    with serving(db_url, drill_required=True) as http:
        r = http.get("/health")
        assert r.status_code == 200 and r.json()["status"] == "degraded"
        assert "no restore drill on record" in r.json()["reasons"][0]

    with open_store(db_url, create=False) as store:
        bk.backup(store, tmp_path / "b.tsb")
    report = drill(db_url, [tmp_path])
    assert report.passed
    project(db_url)
    with serving(db_url) as http:
        h = http.get("/health", headers=AUTH).json()
        assert (h["status"], h["drill_status"], h["reasons"]) == ("ok", "ok", [])
        last = h["last_drill"]
        assert last["outcome"] == "passed" and last["position"] == report.recorded_position
        assert last["rto_seconds"] == round(report.rto_seconds, 3) and last["events_behind"] == 0
        assert 0 <= last["age_seconds"] < 60 and h["drill_max_age_days"] == 35
        samples = drill_samples(http)
        assert samples["tradestate_drill_passed"] == 1
        assert samples["tradestate_drill_rto_seconds"] == round(report.rto_seconds, 3)
        assert samples["tradestate_drill_rpo_seconds"] == round(report.rpo_seconds, 3)
        assert abs(samples["tradestate_drill_last_completed_timestamp_seconds"] - time.time()) < 60
    # stale: older than the configured maximum age
    with serving(db_url, drill_max_age_days=0.5 / 86400) as http:
        time.sleep(0.6)
        h = http.get("/health").json()
        assert (h["status"], h["drill_status"]) == ("degraded", "stale") and "days old" in h["reasons"][0]

    # a failed drill: degraded, with its reason for the authorized only
    (tmp_path / "b.tsb").write_bytes(b"damaged")
    failed = drill(db_url, [tmp_path / "b.tsb"])
    assert not failed.passed
    project(db_url)
    with serving(db_url) as http:
        r = http.get("/health", headers=AUTH)
        assert r.status_code == 200
        h = r.json()
        assert (h["status"], h["drill_status"]) == ("degraded", "failed")
        assert h["last_drill"]["outcome"] == "failed" and h["last_drill"]["reason"] == failed.reason
        assert h["last_drill"]["rto_seconds"] is None
        public = http.get("/health").json()
        assert public["status"] == "degraded" and public["last_drill"]["reason"] is None
        samples = drill_samples(http)
        assert samples["tradestate_drill_passed"] == 0 and "tradestate_drill_rto_seconds" not in samples
