"""The command line's contract with scripts: errors on stderr (JSON under --json), distinct exit
codes stated in every command's help, --version, listed choices, help on every option, and the
same --broker/--strict/--dry-run in recover and reconcile."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from tests.support.timed_cli import CliMarks, timed_cli
from tradestate.cli.common import ExitCode
from tradestate.cli.main import app

UNREACHABLE = "postgresql://postgres:sekrit@127.0.0.1:1/test"  # nothing listens on port 1
CONNECT_TIMEOUT_SECONDS = 5  # the URL has none: the store's default (adapters/store/sql.py)
runner = CliRunner()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tradestate.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def commands() -> list[tuple[str, object]]:
    """Every leaf command of the click tree, with its path (``replay state``...)."""
    root = typer.main.get_command(app)
    found: list[tuple[str, object]] = []

    def walk(prefix: str, group: object) -> None:
        for name, cmd in sorted(group.commands.items()):  # type: ignore[attr-defined]
            path = f"{prefix} {name}".strip()
            if hasattr(cmd, "commands"):
                walk(path, cmd)
            else:
                found.append((path, cmd))

    walk("", root)
    return found


def test_exit_codes_are_distinct_and_documented_in_every_command():
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3]
    assert len(commands()) >= 20
    for path, cmd in commands():
        epilog = cmd.epilog or ""  # type: ignore[attr-defined]
        assert "Exit codes: 0 ok" in epilog and "2 bad input" in epilog and "3 " in epilog, path


def test_every_option_has_help_and_every_command_takes_config():
    for path, cmd in commands():
        names = set()
        for param in cmd.params:  # type: ignore[attr-defined]
            if param.param_type_name == "option" and param.name != "help":
                assert (param.help or "").strip(), f"{path} {param.opts} has no help"
            names.add(param.name)
        assert "config" in names, path


@pytest.mark.parametrize("path, option, values", [
    ("replay state", "--time-axis", "[recorded|occurred]"),
    ("replay market", "--time-axis", "[occurred|recorded]"),
    ("replay orders", "--time-axis", "[occurred|recorded]"),
    ("replay export", "--format", "[parquet|jsonl]"),
    ("replay export", "--log", "[trading|market]"),
    ("recover", "--broker", "[sim|alpaca|ib|ccxt:<exchange>]"),
    ("reconcile", "--broker", "[sim|alpaca|ib|ccxt:<exchange>]"),
    ("recover", "--ramp", "[50|75|100]"),
])
def test_options_with_a_fixed_set_of_values_list_them_and_refuse_others(path, option, values):
    cmd = dict(commands())[path]
    param = next(p for p in cmd.params if option in p.opts)  # type: ignore[attr-defined]
    assert param.metavar == values
    if option != "--ramp":
        bad = runner.invoke(app, [*path.split(), option, "nope"])
        assert bad.exit_code == 2 and "nope" in bad.stderr and bad.stdout == ""


def test_broker_and_strict_are_the_same_in_recover_and_reconcile():
    by_path = dict(commands())
    for option in ("--broker", "--strict", "--dry-run", "--account", "--venue", "--base-url", "--port",
                   "--sim-state", "--config"):
        recover = next(p for p in by_path["recover"].params if option in p.opts)  # type: ignore[attr-defined]
        reconcile = next(p for p in by_path["reconcile"].params if option in p.opts)  # type: ignore[attr-defined]
        assert (recover.opts, recover.secondary_opts, recover.multiple, recover.help) == \
               (reconcile.opts, reconcile.secondary_opts, reconcile.multiple, reconcile.help) \
               or option == "--dry-run", option
    strict = next(p for p in by_path["recover"].params if "--strict" in p.opts)  # type: ignore[attr-defined]
    assert strict.secondary_opts == ["--no-strict"]
    broker = next(p for p in by_path["reconcile"].params if "--broker" in p.opts)  # type: ignore[attr-defined]
    assert broker.multiple


def test_version():
    from importlib.metadata import version

    run = cli("--version")
    assert run.returncode == 0 and run.stdout.strip() == f"tradestate {version('tradestate')}"


@pytest.mark.parametrize("args", [
    ["state"], ["verify"], ["recover"], ["replay", "state", "--position", "1"], ["engines"],
])
def test_an_unreachable_database_is_one_line_on_stderr_and_exit_3(args, tmp_path):
    """Each command in two processes at once (text, then --json), each within the URL's connect
    timeout (the store's default here, 5 s) of the end of its start-up: the wait is the command's own,
    bounded one (a retry loop or a pool waiting to fill would exceed it), whatever the machine's
    load does to the interpreter's start-up (seconds on a loaded CI box: not the command's)."""
    marks = [tmp_path / "text.marks", tmp_path / "json.marks"]
    procs = [timed_cli([*args, "--db", UNREACHABLE, *extra], mark, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for extra, mark in zip(([], ["--json"]), marks)]
    try:
        (text_out, text_err), (json_out, json_err) = (p.communicate(timeout=120) for p in procs)  # a hang
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    own = [CliMarks.read(mark).own_seconds for mark in marks]
    assert max(own) < CONNECT_TIMEOUT_SECONDS, own
    assert [p.returncode for p in procs] == [3, 3], (text_err, json_err)
    assert text_out == "" and json_out == ""
    assert len(text_err.strip().splitlines()) == 1 and text_err.startswith("error: "), text_err
    assert "Traceback" not in text_err and "sekrit" not in text_err + json_err
    error = json.loads(json_err)
    assert error["ok"] is False and error["exit_code"] == 3 and "cannot reach PostgreSQL at 127.0.0.1:1/test" in error["error"]
    assert "Connection refused" in error["error"]  # libpq's own reason


@pytest.mark.parametrize("args, message", [
    (["state", "--at", "garbage"], "ISO-8601"),
    (["replay", "state", "--at", "garbage"], "does not exist"),
    (["replay", "trace", "x"], "does not exist"),
    (["verify"], "does not exist"),
    (["checkpoint"], "does not exist"),
    (["recover"], "does not exist"),
    (["recover", "--ramp", "60"], "--ramp"),
    (["reconcile", "--broker", "sim", "--account", "a"], "does not exist"),
    (["reconcile", "--broker", "nope"], "--broker must be one of"),
    (["project", "--once", "--checkpoint-seconds", "0"], "--checkpoint-seconds must be > 0"),
    (["serve"], "does not exist"),
    (["engines"], "does not exist"),
    (["backup", "--to", "x.bak"], "does not exist"),
    (["state", "--no-such-option"], "No such option"),
])
def test_errors_go_to_stderr_and_are_json_under_json(tmp_path, args, message):
    db = f"sqlite:///{tmp_path}/none.db"
    text = runner.invoke(app, [*args, "--db", db])
    as_json = cli(*args, "--db", db, "--json")
    assert text.exit_code == 2 and text.stdout == "" and message in text.stderr, (text.stdout, text.stderr)
    assert as_json.returncode == 2 and as_json.stdout == "", as_json.stdout
    error = json.loads(as_json.stderr)
    assert error == {"ok": False, "error": error["error"], "exit_code": 2} and message in error["error"]


@pytest.mark.slow
def test_demo_and_project_have_json(tmp_path):
    url = f"sqlite:///{tmp_path}/demo.db"
    demo = cli("demo", "--db", url, "--json")
    assert demo.returncode == 0, demo.stderr
    assert json.loads(demo.stdout) == {"ok": True, "exit_code": 0, "db": url}
    assert "same state" in demo.stderr  # the story goes to stderr, the data to stdout
    assert "The webhook listener received 5 alert(s)" in demo.stderr  # the later acts' story too
    assert "DrillCompleted is on record" in demo.stderr
    assert "every step of the act held" in demo.stderr  # the instruments act, last
    project = cli("project", "--db", url, "--once", "--json")
    assert project.returncode == 0, project.stderr
    summary = json.loads(project.stdout)
    assert summary["ok"] is True and summary["position"] == summary["head"] == 160  # all eight acts' events


def test_reconcile_dry_run_appends_nothing_and_says_what_it_would(sqlite_url, tmp_path):
    from tests.support.reconcile import ACCOUNT, connect, rows, stage_missed_fill

    from tradestate.adapters.brokers.sim import SimulatedBroker

    sim = SimulatedBroker(account=ACCOUNT, state_path=str(tmp_path / "venue.json"))
    with connect(sqlite_url) as client:
        stage_missed_fill(client, sim)
    before = rows(sqlite_url)
    base = ["reconcile", "--db", sqlite_url, "--broker", "sim", "--sim-state", sim.state_path, "--account", ACCOUNT]
    planned = cli(*base, "--dry-run", "--json")
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert plan["dry_run"] is True and plan["status"] == "corrected" and plan["would_append"] >= 2
    assert rows(sqlite_url) == before
    done = cli(*base, "--json")
    assert json.loads(done.stdout)["status"] == "corrected" and len(rows(sqlite_url)) > len(before)


def test_reconcile_takes_several_brokers(sqlite_url, tmp_path):
    from tests.support.reconcile import ACCOUNT, connect

    from tradestate.adapters.brokers.sim import SimulatedBroker

    sim = SimulatedBroker(account=ACCOUNT, state_path=str(tmp_path / "venue.json"))
    connect(sqlite_url).close()
    config = tmp_path / "cfg.toml"
    config.write_text(f'broker = ["sim", "sim"]\naccount = "{ACCOUNT}"\n[sim]\nstate = "{sim.state_path}"\n')
    done = cli("reconcile", "--db", sqlite_url, "--config", str(config), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)  # the repeated broker collapses to one run: one object, not {"results"}
    assert result["broker"] == "sim" and result["account"] == ACCOUNT


def test_bench_only_help_names_every_metric_group():
    from tradestate.tools.bench.run import GROUPS

    bench = dict(commands())["bench"]
    only = next(p for p in bench.params if p.name == "only")  # type: ignore[attr-defined]
    assert all(name in only.help for name in GROUPS), [n for n in GROUPS if n not in only.help]
