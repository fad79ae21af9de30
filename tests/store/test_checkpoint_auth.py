"""Checkpoints that cannot be forged: with a key configured (outside the database), a checkpoint
without a valid MAC is refused; without a key, a checkpoint is used only if its risk state agrees
with the log's own risk events. A forged checkpoint (a valid unkeyed checksum, the kill switch
released while the log says engaged) is refused both ways, and an engine then refuses intents."""

from __future__ import annotations

import base64
import json
import os

import pytest
from tests.support.projector_worker import Clock
from typer.testing import CliRunner

import tradestate
from tradestate.adapters.store import checkpoints as cp
from tradestate.adapters.store import open_store
from tradestate.cli.main import app
from tradestate.domain.errors import InvalidInput
from tradestate.domain.state import TradingState
from tradestate.loading import fold_tail

KEY = bytes(range(32))


def _fold(store) -> TradingState:
    state = TradingState()
    fold_tail(store, state)
    return state


@pytest.fixture
def log(db_url, monkeypatch):
    """acct-1 traded, then its kill switch was engaged; acct-2 has a limit and a tripped breaker."""
    monkeypatch.delenv(cp.KEY_ENV, raising=False)
    monkeypatch.delenv(cp.KEY_FILE_ENV, raising=False)
    with tradestate.connect(db_url, venue="sim", clock=Clock()) as c:
        assert c.record_intent("acct-1", "o1", "AAPL", "buy", "10", reference_price="100").accepted
        c.set_risk_limit("acct-2", "max_order_qty", 50)
        c.trip_breaker("acct-2", "drawdown")
        c.engage_kill_switch("acct-1", "runaway strategy")
    return db_url


def _forge(store, mutate) -> cp.CheckpointInfo:
    """What anyone who can INSERT can write: the public checksum over a doctored state."""
    state = _fold(store)
    mutate(state)
    return cp.write(store, state)


def _kill_switch_off(state: TradingState) -> None:
    state.accounts["acct-1"].kill_switch = False
    state.accounts["acct-1"].kill_switch_reason = ""


def _intent_refused(url: str) -> list[str]:
    with tradestate.connect(url, venue="sim", clock=Clock()) as c:
        result = c.record_intent("acct-1", "o2", "AAPL", "buy", "1", reference_price="100")
        return [] if result.accepted else list(result.refusal.reasons)


def test_without_a_key_a_forged_risk_state_is_refused(log):
    with open_store(log, create=False) as store:
        genuine = cp.write(store, _fold(store))
        forged = _forge(store, _kill_switch_off)
        loaded = cp.load(store)
        assert loaded.checkpoint is not None and loaded.checkpoint.id == genuine.id
        (refusal,) = loaded.rejected
        assert refusal.checkpoint.id == forged.id
        assert "no checkpoint key configured" in refusal.reasons[0]
        assert "account acct-1: kill switch is released in the checkpoint but engaged in the log" in refusal.reasons[0]
        assert loaded.state.accounts["acct-1"].kill_switch
    assert _intent_refused(log)  # the engine decides on the log's risk state, not the forged one


@pytest.mark.parametrize("mutate, words", [
    (lambda s: setattr(s.accounts["acct-2"], "breaker_tripped", False), "circuit breaker is reset"),
    (lambda s: s.accounts["acct-2"].limits.pop("max_order_qty"), "limits is {}"),
    (lambda s: setattr(s.accounts["acct-1"], "ramp_pct", 50), "ramp is 50%"),
    (lambda s: s.accounts.pop("acct-1"), "kill switch is released in the checkpoint"),
])
def test_without_a_key_every_risk_field_is_cross_checked(log, mutate, words):
    with open_store(log, create=False) as store:
        _forge(store, mutate)
        loaded = cp.load(store)
    assert loaded.state is None and words in loaded.rejected[0].reasons[0]


def test_without_a_key_old_unkeyed_checkpoints_still_load(log):
    with open_store(log, create=False) as store:
        info = cp.write(store, _fold(store))
        assert not info.authenticated
        loaded = cp.load(store)
        assert loaded.checkpoint.id == info.id and not loaded.rejected
        assert cp.authentication(store, info) == "no MAC"


def test_with_a_key_only_authenticated_checkpoints_load(log, monkeypatch):
    with open_store(log, create=False) as store:
        old = cp.write(store, _fold(store))  # genuine, but written before the key was configured
        forged = _forge(store, _kill_switch_off)
        monkeypatch.setenv(cp.KEY_ENV, KEY.hex())
        loaded = cp.load(store)
        assert loaded.state is None  # nothing authenticated yet: a cold fold
        reasons = {r.checkpoint.id: r.reasons for r in loaded.rejected}
        assert any("written without the checkpoint key" in r for r in reasons[forged.id])
        assert any("written without the checkpoint key" in r for r in reasons[old.id])

        genuine = cp.write(store, _fold(store))
        assert genuine.authenticated and cp.authentication(store, genuine, KEY) == "MAC verified"
        loaded = cp.load(store)
        assert loaded.checkpoint.id == genuine.id and loaded.state.accounts["acct-1"].kill_switch

        # a MAC under another key (or copied from another checkpoint) does not authenticate
        monkeypatch.setenv(cp.KEY_ENV, base64.b64encode(b"another key of 32 bytes, really!").decode())
        forged_keyed = _forge(store, _kill_switch_off)
        monkeypatch.setenv(cp.KEY_ENV, KEY.hex())
        loaded = cp.load(store)
        assert loaded.checkpoint.id == genuine.id
        refused = next(r for r in loaded.rejected if r.checkpoint.id == forged_keyed.id)
        assert any("does not match the configured checkpoint key" in r for r in refused.reasons)
    assert _intent_refused(log)


def test_the_key_can_come_from_a_file_and_a_bad_key_is_refused(log, monkeypatch, tmp_path):
    key_file = tmp_path / "checkpoint.key"
    key_file.write_text(base64.b64encode(KEY).decode() + "\n")
    os.chmod(key_file, 0o600)
    monkeypatch.setenv(cp.KEY_FILE_ENV, str(key_file))
    assert cp.checkpoint_key() == KEY
    with open_store(log, create=False) as store:
        info = cp.write(store, _fold(store))
        monkeypatch.delenv(cp.KEY_FILE_ENV)
        monkeypatch.setenv(cp.KEY_ENV, KEY.hex())
        assert cp.load(store).checkpoint.id == info.id
    monkeypatch.setenv(cp.KEY_ENV, "abcd")
    with pytest.raises(InvalidInput, match="at least 16 bytes"):
        cp.checkpoint_key()


def test_checkpoint_list_shows_which_are_authenticated(log, monkeypatch):
    with open_store(log, create=False) as store:
        monkeypatch.setenv(cp.KEY_ENV, KEY.hex())
        genuine = cp.write(store, _fold(store))
        monkeypatch.delenv(cp.KEY_ENV)
        forged = _forge(store, _kill_switch_off)  # newer: the one an engine would try first
        monkeypatch.setenv(cp.KEY_ENV, KEY.hex())
    r = CliRunner().invoke(app, ["checkpoint", "--db", log, "--list", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["id"]: row for row in json.loads(r.stdout)["checkpoints"]}
    assert rows[genuine.id]["authenticated"] == "MAC verified" and rows[genuine.id]["status"] == "newest valid"
    assert rows[forged.id]["authenticated"] == "no MAC" and rows[forged.id]["status"].startswith("refused")
    monkeypatch.delenv(cp.KEY_ENV)
    r = CliRunner().invoke(app, ["checkpoint", "--db", log, "--list", "--json"])
    rows = {row["id"]: row for row in json.loads(r.stdout)["checkpoints"]}
    assert rows[genuine.id]["authenticated"] == "MAC not checked (no key configured)"
    assert "risk state disagrees" in rows[forged.id]["status"]


def test_the_risk_check_reads_the_same_risk_events_with_or_without_the_risk_index(log):
    """The partial index of risk events (made with the checkpoint table on a short log) only
    changes how they are found: a forged checkpoint is refused and a genuine one used either way."""
    with open_store(log, create=False) as store:
        forged = _forge(store, _kill_switch_off)
        assert cp.risk_index_exists(store)
        with_index = cp._risk_rows(store, store.trading.head())
        assert {r[3] for r in with_index} >= {"KillSwitchEngaged", "RiskLimitChanged", "CircuitBreakerTripped"}
        refused = cp.load(store)
        assert forged.id in {r.checkpoint.id for r in refused.rejected} and refused.state is None
        with store.trading.transaction(write=True) as cur:
            cur.execute(f"DROP INDEX {store.dialect.name(cp.RISK_INDEX)}")
        assert not cp.risk_index_exists(store)
        assert cp._risk_rows(store, store.trading.head()) == with_index
        assert forged.id in {r.checkpoint.id for r in cp.load(store).rejected}
        genuine = cp.write(store, _fold(store))  # writes it again (a short log)
        assert cp.risk_index_exists(store) and cp.load(store).checkpoint.id == genuine.id
