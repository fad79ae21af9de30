"""One typed settings object: flags over TRADESTATE_* variables over the TOML file, secrets never
printed, and every command reading its database (and recover its broker) from them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tests.support.fake_alpaca import FakeAlpaca
from typer.testing import CliRunner

import tradestate
from tradestate.cli.main import app
from tradestate.domain.errors import InvalidInput
from tradestate.settings import Settings

runner = CliRunner()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tradestate.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("TRADESTATE_") and name != "TRADESTATE_TEST_PG" or name.startswith("APCA_"):
            monkeypatch.delenv(name)


def test_flags_over_environment_over_file(tmp_path, monkeypatch):
    config = tmp_path / "c.toml"
    config.write_text('db = "sqlite:///file.db"\n[ib]\nport = 4001\nhost = "file-host"\n[api]\nport = 9000\n'
                      '[projector]\ncheckpoint-every = 5\n')
    s = Settings.load(str(config))
    assert (s.db, s.ib_port, s.ib_host, s.api_port, s.checkpoint_every) == ("sqlite:///file.db", 4001, "file-host",
                                                                           9000, 5)
    monkeypatch.setenv("TRADESTATE_IB_PORT", "4002")
    monkeypatch.setenv("TRADESTATE_DB", "sqlite:///env.db")
    s = Settings.load(str(config))
    assert (s.db, s.ib_port, s.ib_host) == ("sqlite:///env.db", 4002, "file-host")
    s = Settings.load(str(config), db="sqlite:///flag.db", ib_port=4003)
    assert (s.db, s.ib_port) == ("sqlite:///flag.db", 4003)
    monkeypatch.setenv("TRADESTATE_CONFIG", str(config))
    assert Settings.load().api_port == 9000  # $TRADESTATE_CONFIG names the file when --config does not


@pytest.mark.parametrize("text, message", [
    ("nope = 1\n", "unknown setting(s) nope"),
    ("[ib]\nportt = 1\n", "ib.portt"),
    ("[mystery]\na = 1\n", "[mystery]"),
    ("db = \n", "not valid TOML"),
    ("ramp = 60\n", "ramp"),
    ("[ib]\nport = \"x\"\n", "ib_port"),
    ('broker = ["nyse"]\n', "not a broker"),
])
def test_bad_settings_are_refused_naming_them(tmp_path, text, message):
    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(InvalidInput) as refused:
        Settings.load(str(config))
    assert message in str(refused.value)
    with pytest.raises(InvalidInput, match="does not exist"):
        Settings.load(str(tmp_path / "missing.toml"))


def test_secrets_come_from_environment_or_file_and_are_never_printed(tmp_path, monkeypatch):
    monkeypatch.setenv("APCA_API_KEY_ID", "key-from-env")
    monkeypatch.setenv("TRADESTATE_API_TOKEN", "token-from-env")
    config = tmp_path / "c.toml"
    config.write_text('[alpaca]\nsecret-key = "secret-from-file"\n')
    s = Settings.load(str(config))
    assert s.broker_options("alpaca")["api_key"] == "key-from-env"
    assert s.broker_options("alpaca")["secret_key"] == "secret-from-file"
    assert s.api_token is not None and s.api_token.get_secret_value() == "token-from-env"
    shown = repr(s) + str(s) + s.model_dump_json()
    assert "key-from-env" not in shown and "secret-from-file" not in shown and "token-from-env" not in shown


def test_alpaca_live_endpoint_when_not_paper():
    s = Settings(alpaca_paper=False)
    assert s.broker_options("alpaca")["base_url"] == "https://api.alpaca.markets"
    assert Settings().broker_options("alpaca")["base_url"] == "https://paper-api.alpaca.markets"


COMMANDS = [
    ["state"], ["verify"], ["backup", "--to", "b.bak"], ["restore", "--from", "b.bak"], ["checkpoint"],
    ["recover"], ["reconcile", "--broker", "sim", "--account", "a", "--sim-state", "s.json"], ["project", "--once"],
    ["serve"], ["chaos", "--kills", "1"], ["bench", "--quick"],
    ["replay", "state", "--position", "1"], ["replay", "diff", "--from-position", "1", "--to-position", "2"],
    ["replay", "timeline", "--around", "2026-11-20T15:00:00Z"], ["replay", "trace", "o-1"],
    ["replay", "market"], ["replay", "orders"], ["replay", "export", "--out", "x.jsonl"],
    ["replay", "report", "--around", "2026-11-20T15:00:00Z"],
]


@pytest.mark.parametrize("source", ["config", "env"])
@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_every_command_takes_its_database_from_the_settings(tmp_path, monkeypatch, args, source):
    """A URL named only in the config file (or only in TRADESTATE_DB) is the one the command opens:
    its refusal names it."""
    monkeypatch.chdir(tmp_path)
    url = f"mysql://from-{source}/x"
    if source == "config":
        (tmp_path / "c.toml").write_text(f'db = "{url}"\n')
        result = runner.invoke(app, [*args, "--config", str(tmp_path / "c.toml")])
    else:
        result = runner.invoke(app, args, env={"TRADESTATE_DB": url})
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert url in result.stderr, result.stderr


@pytest.mark.parametrize("source", ["config", "env"])
def test_the_demo_never_writes_into_the_configured_trading_log(tmp_path, monkeypatch, source):
    """The demo records a simulated session (and --reset drops tables): it writes only where --db
    names, or into demo-data/, never into the database the settings name for trading."""
    monkeypatch.chdir(tmp_path)
    configured = tmp_path / "trading.db"
    url = f"sqlite:///{configured}"
    if source == "config":
        (tmp_path / "c.toml").write_text(f'db = "{url}"\n')
        result = runner.invoke(app, ["demo", "--db", "mysql://explicit/x", "--config", str(tmp_path / "c.toml")])
    else:
        result = runner.invoke(app, ["demo", "--db", "mysql://explicit/x"], env={"TRADESTATE_DB": url})
    assert result.exit_code == 2 and "mysql://explicit/x" in result.stderr, result.stderr
    assert not configured.exists()


def test_state_verify_and_replay_read_the_log_named_only_in_the_config_file(tmp_path):
    url = f"sqlite:///{tmp_path}/only-in-config.db"
    with tradestate.connect(url) as client:
        client.record_intent("a1", "o-1", "AAPL", "buy", 10, venue="SIM", reference_price="10")
    config = tmp_path / "c.toml"
    config.write_text(f'db = "{url}"\n')
    state = cli("state", "--config", str(config), "--json")
    assert state.returncode == 0, state.stderr
    assert json.loads(state.stdout)["position"] >= 1
    verify = cli("verify", "--json", env={"TRADESTATE_CONFIG": str(config)})
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"] is True, verify.stderr
    trace = cli("replay", "trace", "o-1", "--config", str(config), "--json")
    assert trace.returncode == 0 and "o-1" in trace.stdout, trace.stderr
    flag_wins = cli("state", "--config", str(config), "--db", f"sqlite:///{tmp_path}/other.db")
    assert flag_wins.returncode == 2 and "other.db" in flag_wins.stderr


def test_recover_queries_the_alpaca_endpoint_of_the_config_file(tmp_path):
    url = f"sqlite:///{tmp_path}/log.db"
    with tradestate.connect(url) as client:
        client.engine_started("engine")
    with FakeAlpaca() as fake:
        config = tmp_path / "c.toml"
        config.write_text(f'db = "{url}"\nbroker = ["alpaca"]\naccount = "a1"\n'
                          f'[alpaca]\nbase-url = "{fake.base_url}"\nstream-url = "{fake.stream_url}"\n')
        run = cli("recover", "--config", str(config), "--dry-run", "--json",
                  env={"APCA_API_KEY_ID": fake.api_key, "APCA_API_SECRET_KEY": fake.secret_key})
        assert fake.requests, (run.stdout, run.stderr)  # the configured endpoint was asked, not Alpaca's
        report = json.loads(run.stdout)
        assert [r["broker"] for r in report["reconciliations"]] == ["alpaca"], report
        asked = len(fake.requests)
        env_url = cli("reconcile", "--db", url, "--broker", "alpaca", "--account", "a1", "--dry-run", "--json",
                      env={"APCA_API_KEY_ID": fake.api_key, "APCA_API_SECRET_KEY": fake.secret_key,
                           "TRADESTATE_ALPACA_BASE_URL": fake.base_url})
        assert env_url.returncode == 0, env_url.stderr
        assert len(fake.requests) > asked and json.loads(env_url.stdout)["dry_run"] is True
