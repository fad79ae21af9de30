"""What the alerting rules need: the /metrics gauges of a real server, and the rules file itself."""

from __future__ import annotations

import shutil
import subprocess
from decimal import Decimal as D
from importlib import resources

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tradestate.adapters.brokers.sim import SimulatedBroker
from tradestate.adapters.store import open_store
from tradestate.client import TradestateClient
from tradestate.projections.http.server import background_server
from tradestate.projections.projector import Projector
from tradestate.reconcile import reconcile

ACCOUNT = "acct-1"


def _samples(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _value(samples: dict[str, list], name: str, **labels: str) -> float:
    found = [s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def test_metrics_serve_positions_pnl_limits_blocks_discrepancies_and_reconciliation_age(db_url, tmp_path):
    sim = SimulatedBroker(account=ACCOUNT, state_path=str(tmp_path / "venue.json"))
    store = open_store(db_url)
    with TradestateClient(store) as client:
        client.set_risk_limit(ACCOUNT, "max_position_qty", 100)
        client.record_intent(ACCOUNT, "o1", "AAPL", "buy", 10, order_type="limit", limit_price="100", venue="SIM")
        client.record_submitted(ACCOUNT, "o1")
        sim.stage_order(client_order_id="o1", symbol="AAPL", side="buy", qty=D(10), status="filled",
                        fills=[("E1", D(10), D(100))])
        sim.stage_position("AAPL", D(10), D(100))
        # o2: we hold it submitted, the venue never heard of it: missing_at_venue, kept pending
        client.record_intent(ACCOUNT, "o2", "MSFT", "buy", 5, order_type="limit", limit_price="50", venue="SIM")
        client.record_submitted(ACCOUNT, "o2")
        result = reconcile(client, sim, strict=True)
        assert result.blocked and any(d["kind"] == "missing_at_venue" for d in result.discrepancies)
    with open_store(db_url) as store:
        projector = Projector(store)
        projector.load()
        projector.catch_up()
    with background_server(db_url) as base, httpx.Client(base_url=base, timeout=10) as http:
        samples = _samples(http.get("/metrics").text)
    where = {"account": ACCOUNT, "venue": "SIM", "symbol": "AAPL"}
    assert _value(samples, "tradestate_position_qty", **where) == 10
    assert _value(samples, "tradestate_position_realized_pnl", **where) == 0
    assert "tradestate_position_unrealized_pnl" in samples
    assert _value(samples, "tradestate_limit_effective", account=ACCOUNT, limit="max_position_qty", symbol="") == 100
    assert _value(samples, "tradestate_limit_used", account=ACCOUNT, limit="max_position_qty", symbol="") >= 10
    assert 0 < _value(samples, "tradestate_limit_usage_ratio", account=ACCOUNT, limit="max_position_qty",
                      symbol="") <= 1
    assert _value(samples, "tradestate_account_blocked", account=ACCOUNT) == 1
    assert _value(samples, "tradestate_discrepancies_open", account=ACCOUNT) == 1
    assert _value(samples, "tradestate_discrepancies", account=ACCOUNT) >= 1
    age = _value(samples, "tradestate_reconciliation_age_seconds", account=ACCOUNT)
    assert 0 <= age < 120
    assert _value(samples, "tradestate_reconciliation_status", account=ACCOUNT, status=result.status) == 1


def _rules() -> dict:
    text = resources.files("tradestate.projections.http").joinpath("alerts.rules.yml").read_text()
    return yaml.safe_load(text)


def test_the_rules_file_parses_and_covers_every_condition():
    rules = _rules()
    [group] = rules["groups"]
    assert group["name"] == "tradestate"
    alerts = {r["alert"]: r for r in group["rules"]}
    for name in ("TradestateEngineDead", "TradestateDiscrepancies", "TradestateOpenDiscrepancies",
                 "TradestateKillSwitchEngaged", "TradestateBreakerActive", "TradestateDailyLimitBreached",
                 "TradestateProjectorStalled", "TradestateAccountBlocked", "TradestateReconciliationStale",
                 "TradestateLimitNearlyUsed", "TradestateDatabaseDown", "TradestateReconciliationUnknown",
                 "TradestateFeesOverdue"):
        assert name in alerts, name
    for rule in alerts.values():
        assert rule["expr"].strip() and rule["labels"]["severity"] in ("info", "warning", "critical")
        assert rule["annotations"]["summary"]


def test_every_metric_a_rule_reads_is_served():
    import re

    from tradestate.projections.metrics import MetricsSnapshot, ReadModelCollector

    snap = MetricsSnapshot(accounts=[{"account": "a", "kill_switch": False, "breaker_active": False,
                                      "trading_blocked": False, "discrepancies": 0, "last_reconciled_at": None}],
                           engines=[{"engine_id": "e1", "lease": "active", "state": "active", "epoch": 1}])
    served = {m.name for m in ReadModelCollector(lambda: snap).collect()}
    served |= {n + "_total" for n in served}  # counters are exposed with _total
    exprs = " ".join(r["expr"] for r in _rules()["groups"][0]["rules"])
    used = set(re.findall(r"\btradestate_[a-z_]+", exprs))
    assert used <= served, used - served


_PROMTOOL_TESTS = """
rule_files: [RULES]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'tradestate_account_blocked{account="a"}'
        values: '0 1 1'
      - series: 'tradestate_limit_usage_ratio{account="a",limit="max_daily_loss",symbol=""}'
        values: '0.5 1.2 1.2'
      - series: 'tradestate_engine_up{engine="e1"}'
        values: '1 1 0'
    alert_rule_test:
      - eval_time: 2m
        alertname: TradestateAccountBlocked
        exp_alerts:
          - exp_labels: {severity: critical, account: a}
            exp_annotations:
              summary: "trading of a is blocked until an operator acknowledges"
              description: "Strict recovery or reconciliation found a disagreement: `tradestate reconcile --ack`."
      - eval_time: 2m
        alertname: TradestateDailyLimitBreached
        exp_alerts:
          - exp_labels: {severity: critical, account: a, limit: max_daily_loss}
            exp_annotations:
              summary: "a reached its max_daily_loss for the day"
              description: "Intents of the account are refused for the rest of the trading day."
      - eval_time: 1m
        alertname: TradestateEngineDead
        exp_alerts: []
"""


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules_and_they_fire(tmp_path):
    path = tmp_path / "rules.yml"
    path.write_text(resources.files("tradestate.projections.http").joinpath("alerts.rules.yml").read_text())
    subprocess.run(["promtool", "check", "rules", str(path)], check=True)
    tests = tmp_path / "tests.yml"
    tests.write_text(_PROMTOOL_TESTS.replace("RULES", str(path)))
    subprocess.run(["promtool", "test", "rules", str(tests)], check=True)
