"""Replay across archived and live data of a partitioned PostgreSQL log: ``state --position``,
``state --at``, ``trace``, ``market`` and ``export`` give the same answers once the history is archived to
Parquet (the log's reader, its stream reads and replay's time index read archived ranges from the
files), and restoring the archived month answers ``state --at`` inside it as before."""

from __future__ import annotations

import json

import pytest
from tests.support.replay_session import A, at, build_session
from typer.testing import CliRunner

import tradestate
from tests.support.projector_worker import Clock
from tradestate.adapters.store import archive as arch
from tradestate.adapters.store import digest, open_store
from tradestate.adapters.store import partitions as P
from tradestate.cli.main import app
from tradestate.replay.log import iso

pytestmark = pytest.mark.postgres
runner = CliRunner()


def out(*args: str) -> str:
    result = runner.invoke(app, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, (args, result.output)
    return result.stdout


def test_replay_reads_across_archives_and_a_restored_month_answers_state_at(pg_url, tmp_path):
    url = pg_url + f"&archive={tmp_path / 'archive'}"
    session = build_session(url)  # a plain log ...
    db = ["--db", url]
    commands = [
        ["replay", "state", *db, "--position", str(session.mid_position)],
        ["replay", "state", *db, "--position", str(session.head)],
        ["replay", "trace", "o-4", *db],
        ["replay", "trace", "o-1", *db, "--account", A],
        ["replay", "market", *db, "--start", iso(at(0)), "--end", iso(at(240)), "--speed", "max"],
    ]
    at_mid = ["replay", "state", *db, "--at", iso(session.mid)]
    before = [out(*c) for c in commands]
    before_at = out(*at_mid)
    out("replay", "export", *db, "--format", "jsonl", "--out", str(tmp_path / "before.jsonl"))
    with open_store(url) as store:
        assert P.convert(store, "ts_events", month="2099-01") is not None  # ... partitioned in place
        P.convert(store, "ts_market_events", month="2099-01")
    with tradestate.connect(url, clock=Clock(), venue="sim") as c:  # the open partitions get an event each:
        c.engine_started("eng-2")  # a log's head stays in its table
        c.record_bar("sim", "AAPL", "1m", at(24 * 3600), "1", "1", "1", "1", 1)
    out("verify", *db, "--seal")
    archived = json.loads(out("archive", "--to", str(tmp_path / "archive"), *db, "--before", "2099-01"))["archived"]
    assert sorted(a["log"] for a in archived) == ["ts_events", "ts_market_events"]
    with open_store(url, create=False) as store:
        assert len(P.partitions(store, "ts_events")) == 1 and digest.verify(store).ok
    checked = json.loads(out("verify", *db))  # the chain and the meaning, across archived and live rows
    assert checked["ok"] and checked["checked_events"] == session.head + 1 + 5, checked  # + the 5 bars
    assert [out(*c) for c in commands] == before
    assert out(*at_mid) == before_at  # the time index reads the archived stamps from the files
    out("replay", "export", *db, "--format", "jsonl", "--out", str(tmp_path / "after.jsonl"), "--end",
        iso(session.mid))
    exported = (tmp_path / "after.jsonl").read_text().splitlines()
    assert exported and exported == (tmp_path / "before.jsonl").read_text().splitlines()[:len(exported)]
    # the read models rebuilt from zero and a crash recovery, across the archived rows
    out("project", *db, "--rebuild", "--once")
    with tradestate.connect(url, clock=Clock()) as c, c.read_model(timeout=10) as model:
        projected = sorted((p["symbol"], str(p["qty"])) for p in model.positions(A))
    at_head = json.loads(before[1])
    assert projected == sorted((p["symbol"], p["qty"]) for p in at_head["positions"]
                               if p.get("account", A) == A) != []
    from tradestate.recovery import recover

    with open_store(url, create=False) as store:
        report, _client = recover(store, record=False)
        assert report.ready, [s.detail for s in report.steps if s.status == "failed"]
    # the archived month back as a read-only partition: state --at inside it, as before
    restored = json.loads(out("archive", "restore", "--month", P.month_label(), *db))["restored"]
    assert restored and restored[0]["attached"]
    assert out(*at_mid) == before_at
    with open_store(url, create=False) as store:
        assert arch.check(store).ok and digest.verify(store).ok
