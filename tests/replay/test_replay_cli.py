"""``tradestate replay ...`` from the command line: every command, --json, determinism (the same
command twice gives identical output), bad input (clear message, non-zero exit, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tests.support.replay_session import A, at, build_session
from typer.testing import CliRunner

from tradestate.cli.main import app
from tradestate.replay.log import iso

runner = CliRunner()


@pytest.fixture
def session(db_url):
    return build_session(db_url)


def run(*args: str):
    result = runner.invoke(app, ["replay", *args], catch_exceptions=True)
    # a typer.Exit is a SystemExit; anything else escaping is a traceback for the user
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"replay {args} raised {result.exception!r}\n{result.output}")
    return result


def ok_json(*args: str):
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_every_command_with_json_and_deterministic_output(session, tmp_path):
    db = ["--db", session.url]
    commands = [
        ["state", *db, "--at", iso(session.mid)],
        ["state", *db, "--position", str(session.mid_position)],
        ["state", *db, "--at", iso(at(105)), "--time-axis", "occurred"],
        ["diff", *db, "--from", iso(at(60)), "--to", iso(at(140)), "--time-axis", "occurred"],
        ["diff", *db, "--from-position", "1", "--to-position", str(session.head)],
        ["timeline", *db, "--around", iso(at(60)), "--window", "60s", "--time-axis", "occurred", "--market",
         "--symbol", "AAPL"],
        ["timeline", *db, "--around", iso(session.mid), "--window", "1h", "--account", A, "--type",
         "OrderFilled,OrderCancelled"],
        ["trace", "o-4", *db],
        ["trace", "o-1", *db, "--account", A],
        ["market", *db, "--start", iso(at(0)), "--end", iso(at(240)), "--speed", "max"],
        ["orders", *db, "--start", iso(at(0)), "--end", iso(at(240))],
    ]
    for command in commands:
        first = run(*command, "--json")
        second = run(*command, "--json")
        assert first.exit_code == 0, (command, first.output)
        assert first.stdout == second.stdout, command
        text1, text2 = run(*command), run(*command)
        assert text1.exit_code == 0 and text1.stdout == text2.stdout, command
        assert text1.stdout.strip()

    state = ok_json("state", *db, "--at", iso(session.mid))
    assert state["position"] == session.mid_position
    assert [(p["symbol"], p["qty"]) for p in state["positions"]] == [("AAPL", "100")]
    tl = ok_json("timeline", *db, "--around", iso(session.mid), "--window", "1h", "--account", A, "--type",
                 "OrderFilled,OrderCancelled")
    assert {e["type"] for e in tl["events"]} == {"OrderFilled", "OrderCancelled"}
    trace = ok_json("trace", "o-4", *db)
    assert trace["account"] == A and trace["final"]["discrepancies"] == 1
    market_lines = run("market", *db, "--start", iso(at(0)), "--end", iso(at(240)), "--json").stdout.splitlines()
    assert sum(1 for x in market_lines if json.loads(x)["kind"] == "bar") == 4
    orders = ok_json("orders", *db, "--start", iso(at(0)), "--end", iso(at(240)), "--account", A)
    assert orders["summary"]["orders"] == 4


def test_export_and_report_from_the_command_line(session, tmp_path):
    db = ["--db", session.url]
    out = ok_json("export", *db, "--out", str(tmp_path / "log.parquet"))
    assert out["rows"] == session.head
    out = ok_json("export", *db, "--out", str(tmp_path / "w.jsonl"), "--start", iso(at(60)), "--end",
                  iso(at(140)), "--time-axis", "occurred")
    assert 0 < out["rows"] < session.head
    report = ok_json("report", *db, "--around", iso(session.mid), "--window", "30m", "--out",
                     str(tmp_path / "r.html"))
    html = (tmp_path / "r.html").read_text()
    assert report["path"] == str(tmp_path / "r.html") and "data:image/png;base64," in html
    assert "circuit breaker TRIPPED" in html and "breaker tripped" in html
    # the same report twice: byte-identical
    run("report", *db, "--around", iso(session.mid), "--window", "30m", "--out", str(tmp_path / "r2.html"))
    assert (tmp_path / "r2.html").read_text() == html


def test_export_kinds_and_file_safety_from_the_command_line(session, tmp_path):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    db = ["--db", session.url]
    out = ok_json("export", *db, "--kind", "fills", "--out", str(tmp_path / "fills.parquet"))
    assert (out["rows"], out["kind"]) == (3, "fills")
    fills = pq.read_table(tmp_path / "fills.parquet")
    assert fills.schema.field("qty").type == pa.decimal128(28, 12) and str(pc.sum(fills["qty"]).as_py()) == "110.000000000000"
    assert ok_json("export", *db, "--kind", "bars", "--out", str(tmp_path / "bars.jsonl"))["rows"] == 4
    assert ok_json("export", *db, "--kind", "risk", "--account", "acct-b", "--out", str(tmp_path / "r.jsonl"))["rows"] == 0

    # a missing folder: one line, exit 2, nothing created
    result = run("export", *db, "--out", str(tmp_path / "nodir" / "log.parquet"))
    assert result.exit_code == 2 and "does not exist" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "nodir").exists()
    # an existing file is kept without --force, replaced with it
    result = run("export", *db, "--kind", "fills", "--out", str(tmp_path / "fills.parquet"))
    assert result.exit_code == 2 and "--force" in result.output
    assert ok_json("export", *db, "--out", str(tmp_path / "fills.parquet"), "--force")["rows"] == session.head
    assert pq.read_table(tmp_path / "fills.parquet").column_names[0:2] == ["position", "stream_id"]
    # a symbolic link is refused
    (tmp_path / "victim").write_text("precious")
    (tmp_path / "link.jsonl").symlink_to(tmp_path / "victim")
    result = run("export", *db, "--out", str(tmp_path / "link.jsonl"), "--force")
    assert result.exit_code == 2 and "symbolic link" in result.output
    assert (tmp_path / "victim").read_text() == "precious"
    # the kinds are documented in the command's help
    help_text = runner.invoke(app, ["replay", "export", "--help"]).output
    assert all(word in help_text for word in ("--kind", "fills", "orders", "bars", "risk", "--force"))


@pytest.mark.parametrize("args, message", [
    (["state", "--at", "2001-01-01T00:00:00Z"], "before the log starts"),
    (["state", "--at", "2099-01-01T00:00:00Z"], "after the log ends"),
    (["state", "--at", "not-a-time"], "not an ISO-8601 time"),
    (["state", "--at", "2026-11-20T14:31:05"], "time zone"),
    (["state"], "exactly one of"),
    (["state", "--position", "100000"], "after the log ends"),
    (["state", "--at", "2026-11-20T14:31:05Z", "--time-axis", "sideways"], "time axis"),
    (["timeline", "--around", "2026-11-20T14:31:05Z", "--window", "6x"], "not a duration"),
    (["timeline", "--around", "2001-01-01T00:00:00Z"], "before the log starts"),
    (["trace", "no-such-order"], "unknown order"),
    (["trace", "no-such-order", "--account", A], "unknown order"),
    (["trace", "o-1"], "several accounts"),
    (["market", "--speed", "fast"], "not a speed"),
    (["market", "--start", "2030-01-01T00:00:00Z", "--end", "2030-01-02T00:00:00Z"], "nothing recorded"),
    (["orders", "--start", "2030-01-01T00:00:00Z", "--end", "2030-01-02T00:00:00Z"], "no order intent"),
    (["export", "--out", "x.csv"], "format"),
    (["export", "--out", "x.parquet", "--kind", "trades"], "kind"),
    (["report", "--around", "2099-01-01T00:00:00Z", "--out", "x.html"], "after the log ends"),
    (["diff", "--from", "2026-11-20T14:31:05Z"], "--to"),
])
def test_bad_input_gets_a_clear_message_and_a_non_zero_exit(session, args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run(*args, "--db", session.url)
    assert result.exit_code != 0, result.output
    assert message in result.output.replace("\n", " "), result.output
    assert "Traceback" not in result.output


def test_a_missing_database_and_a_real_process(tmp_path):
    result = run("state", "--db", f"sqlite:///{tmp_path}/none.db", "--position", "1")
    assert result.exit_code == 2 and "does not exist" in result.output
    proc = subprocess.run([sys.executable, "-m", "tradestate.cli", "replay", "trace", "x", "--db",
                           f"sqlite:///{tmp_path}/none.db"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr


def test_index_builds_then_catches_up_and_the_trace_stays_the_same(session):
    db = ["--db", session.url]
    before = ok_json("trace", "o-4", *db)
    built = ok_json("index", *db)
    assert built == {"indexed_from": 0, "indexed_upto": session.head, "account_events": built["account_events"],
                     "refs": built["refs"]} and built["account_events"] > 0
    assert ok_json("index", *db)["indexed_from"] == session.head  # nothing new: nothing done
    assert "up to date" in run("index", *db).stdout
    assert ok_json("trace", "o-4", *db) == before
