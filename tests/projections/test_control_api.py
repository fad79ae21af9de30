"""The operator controls over HTTP and the Host check: a real uvicorn server, real HTTP, on a real
SQLite file and a real PostgreSQL schema; the events read back from the log."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from functools import partial

import httpx
import pytest
from tradestate.adapters.store import open_store
from tradestate.domain.errors import InvalidInput
from tradestate.projections.http.auth import HostPolicy, load_tokens
from tradestate.projections.http.server import run_server
from tradestate.projections.projector import Projector

import tradestate
from tests.support.gates import waiting_gate
from tests.support.http import serving as http_serving
from tests.support.controls import control_events, head

ALICE, BOB = "alice-token-0123456789", "bob-token-9876543210"
TOKENS = load_tokens(None, f"alice:{ALICE},bob:{BOB}")


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


serving = partial(http_serving, watch_engines=False)  # the engines are not watched unless a test asks


def make_log(url: str) -> None:
    with tradestate.connect(url, venue="sim") as client:
        client.set_risk_limit("a1", "max_order_qty", 100)
        assert client.record_intent("a1", "o1", "AAPL", "buy", "5").accepted
    store = open_store(url)
    try:
        projector = Projector(store)
        projector.load()
        projector.catch_up()
    finally:
        store.close()


def port_of(http: httpx.Client) -> int:
    return int(str(http.base_url).rstrip("/").rsplit(":", 1)[1])


# ------------------------------------------------------------------------------ Host check
def test_a_host_the_server_does_not_answer_for_is_refused_before_anything_runs(sqlite_url):
    """DNS rebinding: a page at evil.example whose name now resolves to 127.0.0.1 makes the browser
    send ``Host: evil.example:<port>`` to the loopback server. Refused, reads and writes alike,
    token or not, before authentication."""
    make_log(sqlite_url)
    before = head(sqlite_url)
    with serving(sqlite_url, tokens=TOKENS, open_reads=True) as http:
        port = port_of(http)
        assert http.get("/positions").status_code == 200  # reads are open on loopback here
        for host in (f"evil.example:{port}", "evil.example", f"localhost.evil.example:{port}", f"127.0.0.1.nip.io:{port}",
                     f"127.0.0.2:{port}", "", f"localhost:{port}:1", "[::1", f"localhost:{port}x"):
            for path in ("/positions", "/livez", "/openapi.json", "/nowhere"):
                r = http.get(path, headers={"Host": host})
                assert r.status_code == 421, (host, path)
                assert "DNS rebinding" in r.json()["detail"]
            r = http.post("/control/kill-switch/engage", json={"account": "a1", "reason": "x"},
                          headers={"Host": host, **auth(ALICE)})
            assert r.status_code == 421, host
        # the port is the one the client dialled: another behind a port mapping (-p 8080:8321)
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"LOCALHOST:{port}", f"localhost.:{port}",
                     "localhost:8080", "localhost", f"[::1]:{port}"):
            assert http.get("/livez", headers={"Host": host}).status_code == 200, host
        # a request with no Host at all (HTTP/1.0)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            raw.sendall(b"GET /livez HTTP/1.0\r\n\r\n")
            assert raw.recv(100).startswith(b"HTTP/1.1 421")
    assert head(sqlite_url) == before


def test_allowed_hosts_are_answered(sqlite_url):
    make_log(sqlite_url)
    with serving(sqlite_url, allowed_hosts=["trading.example.com", "box.lan:9000"]) as http:
        port = port_of(http)
        for host, code in (("trading.example.com", 200), (f"trading.example.com:{port}", 200),
                           ("box.lan:9000", 200), ("box.lan", 421), (f"box.lan:{port}", 421),
                           (f"evil.example:{port}", 421)):
            assert http.get("/livez", headers={"Host": host}).status_code == code, host
    with pytest.raises(InvalidInput, match="allowed-host"):
        HostPolicy.of(["bad host:port:x"])


def test_the_host_policy_takes_the_address_the_connection_arrived_on():
    policy = HostPolicy.of()
    assert policy.accepts("10.0.0.5:8321", ("10.0.0.5", 8321))  # served on 0.0.0.0, reached by its address
    assert policy.accepts("[fe80::1]:8321", ("fe80::1", 8321)) and policy.accepts("[::1]:8321", ("127.0.0.1", 8321))
    assert policy.accepts("localhost", ("127.0.0.1", 8321)) and policy.accepts("localhost:8080", None)
    assert not policy.accepts("10.0.0.6:8321", ("10.0.0.5", 8321))
    assert not policy.accepts("example.com:8321", None)
    assert not policy.accepts(None, ("127.0.0.1", 8321))


# --------------------------------------------------------------------------------- tokens
def test_controls_need_a_token_even_on_loopback_with_open_reads(db_url):
    make_log(db_url)
    before = head(db_url)
    body = {"account": "a1", "reason": "runaway"}
    with serving(db_url, tokens=TOKENS, open_reads=True) as http:
        assert http.get("/positions").status_code == 200
        for headers in ({}, auth("wrong"), {"Authorization": f"Basic {ALICE}"}, auth(ALICE + "x")):
            r = http.post("/control/kill-switch/engage", json=body, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", headers
        # the token is checked before the body: no token and a bad body is still 401
        assert http.post("/control/resume", json={"ramp_pct": 1}).status_code == 401
        assert head(db_url) == before
        r = http.post("/control/kill-switch/engage", json=body, headers=auth(ALICE))
        assert r.status_code == 200, r.text
        assert r.json()["operator"] == "alice" and r.json()["position"] == before + 1
        r = http.post("/control/kill-switch/release", json={"account": "a1", "reason": "fixed"}, headers=auth(BOB))
        assert r.json()["operator"] == "bob"
    (_, _, engaged), (_, _, released) = control_events(db_url)[-2:]
    assert (engaged["operator"], engaged["by"], engaged["reason"]) == ("alice", "operator", "runaway")
    assert (released["operator"], released["reason"]) == ("bob", "fixed")


def test_without_any_token_the_controls_are_refused(sqlite_url):
    make_log(sqlite_url)
    before = head(sqlite_url)
    with serving(sqlite_url) as http:
        assert http.get("/positions").status_code == 200  # token-less reads on loopback, as before
        r = http.post("/control/kill-switch/engage", json={"account": "a1", "reason": "x"}, headers=auth("any"))
        assert r.status_code == 403 and "TRADESTATE_API_TOKEN" in r.json()["detail"]
    assert head(sqlite_url) == before


def test_the_single_token_is_operator_api_and_guards_reads(sqlite_url):
    make_log(sqlite_url)
    with serving(sqlite_url, token=ALICE) as http:
        assert http.get("/positions").status_code == 401
        assert http.get("/positions", headers=auth(ALICE)).status_code == 200
        r = http.post("/control/breaker/trip", json={"account": "a1", "reason": "loss"}, headers=auth(ALICE))
        assert r.status_code == 200 and r.json()["operator"] == "api"
    assert control_events(sqlite_url)[-1][2]["operator"] == "api"


def test_tokens_from_a_file_and_bad_token_settings(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# desk\nalice:tok-a\n\ncarol: tok-c \n")
    tokens = load_tokens("tok-single", "bob:tok-b", str(path))
    assert tokens.operators == ["api", "bob", "alice", "carol"]
    assert "tok-" not in repr(tokens)
    with pytest.raises(InvalidInput, match="'alice' and 'bob'"):
        load_tokens(None, "alice:same,bob:same")
    with pytest.raises(InvalidInput, match="entry 2 is not name:token"):
        load_tokens(None, "alice:a,bob")
    with pytest.raises(InvalidInput, match="cannot read"):
        load_tokens(None, None, str(tmp_path / "missing"))


# ------------------------------------------------------------------------------- actions
def test_every_control_endpoint_records_its_event(db_url):
    make_log(db_url)
    waiting_gate(db_url, "crash-loop-e1", account="a1")
    start = head(db_url)
    calls = [
        ("/control/kill-switch/engage", {"account": "a1", "reason": "r0"}, "KillSwitchEngaged"),
        ("/control/kill-switch/release", {"account": "a1", "reason": "r1"}, "KillSwitchReleased"),
        ("/control/breaker/trip", {"account": "a1", "reason": "r2", "until": "2199-01-01T00:00:00Z"},
         "CircuitBreakerTripped"),
        ("/control/breaker/reset", {"account": "a1", "reason": "r3"}, "CircuitBreakerReset"),
        ("/control/resume", {"account": "a1", "reason": "r4", "ramp_pct": 50}, "TradingResumed"),
        ("/control/limit", {"account": "a1", "reason": "r5", "limit": "max_order_qty", "value": "7.5"},
         "RiskLimitChanged"),
        ("/control/limit", {"account": "a1", "reason": "r6", "limit": "max_position_qty", "value": None,
                            "symbol": "AAPL"}, "RiskLimitChanged"),
        ("/control/ack", {"account": "a1", "reason": "r7"}, "DiscrepancyAcknowledged"),
        ("/control/approve", {"gate_id": "crash-loop-e1", "account": "a1", "reason": "r8"}, "GateApproved"),
    ]
    with serving(db_url, tokens=TOKENS) as http:
        answers = []
        for path, body, type_name in calls:
            r = http.post(path, json=body, headers=auth(ALICE))
            assert r.status_code == 200, (path, r.text)
            assert r.json()["event_type"] == type_name and r.json()["reason"] == body["reason"]
            answers.append(r.json())
    events = [(p, t, d) for p, t, d in control_events(db_url) if p > start]
    assert [t for _, t, _ in events] == [t for _, _, t in calls]
    assert [p for p, _, _ in events] == [a["position"] for a in answers] == list(range(start + 1, start + 10))
    for i, (_, type_name, d) in enumerate(events):
        who, why = (d["by"], d["decision"]) if type_name == "DiscrepancyAcknowledged" else (d["operator"], d["reason"])
        assert (who, why) == ("alice", f"r{i}")
    assert events[5][2]["value"] == "7.5" and events[8][2]["gate_id"] == "crash-loop-e1"
    with tradestate.connect(db_url) as client:
        risk = client.risk_state("a1")
        assert risk["ramp_pct"] == 50 and risk["limits"]["max_order_qty"] == 7.5 and not risk["kill_switch"]
        assert client.state.gate_approvals["crash-loop-e1"]["operator"] == "alice"


def test_a_kill_switch_engaged_over_http_refuses_the_engines_next_intent(db_url):
    make_log(db_url)
    with tradestate.connect(db_url, venue="sim") as engine, serving(db_url, tokens=TOKENS) as http:
        assert engine.record_intent("a1", "o2", "AAPL", "buy", "1").accepted
        r = http.post("/control/kill-switch/engage", json={"account": "a1", "reason": "halt"}, headers=auth(BOB))
        assert r.status_code == 200
        refused = engine.record_intent("a1", "o3", "AAPL", "buy", "1")
        assert refused.refusal is not None and refused.refusal.reasons == ["kill_switch"]


@pytest.mark.parametrize("path, body, where", [
    ("/control/kill-switch/engage", {"account": "a1"}, "reason"),
    ("/control/kill-switch/engage", {"account": "a1", "reason": "  "}, "reason"),
    ("/control/kill-switch/engage", {"account": "a1", "reason": "x", "operator": "mallory"}, "operator"),
    ("/control/kill-switch/engage", {"account": "", "reason": "x"}, "account"),
    ("/control/kill-switch/engage", {"account": "a" * 65, "reason": "x"}, "account"),
    ("/control/kill-switch/engage", {"account": "a\x00", "reason": "x"}, "account"),
    ("/control/breaker/trip", {"account": "a1", "reason": "x", "until": "2199-01-01T00:00:00"}, "until"),
    ("/control/resume", {"account": "a1", "reason": "x", "ramp_pct": 60}, "ramp_pct"),
    ("/control/resume", {"account": "a1", "reason": "x", "ramp_pct": 50.0}, "ramp_pct"),
    ("/control/limit", {"account": "a1", "reason": "x", "limit": "max_order_qty", "value": 1.5}, "float"),
    ("/control/limit", {"account": "a1", "reason": "x", "limit": "max_order_qty", "value": "-1"}, "negative"),
    ("/control/limit", {"account": "a1", "reason": "x", "limit": "max_order_qty"}, "value"),
    ("/control/limit", {"account": "a1", "reason": "x", "limit": "leverage", "value": "1"}, "limit"),
    ("/control/limit", {"account": "a1", "reason": "x", "limit": "max_order_qty", "value": "1", "symbol": "AAPL"},
     "per symbol"),
    ("/control/approve", {"reason": "x"}, "gate_id"),
    ("/control/approve", [], "body"),
])
def test_bad_input_is_422_and_appends_nothing(db_url, path, body, where):
    make_log(db_url)
    before = head(db_url)
    with serving(db_url, tokens=TOKENS) as http:
        r = http.post(path, json=body, headers=auth(ALICE))
        assert r.status_code == 422, r.text
        assert where in r.json()["detail"]
        r = http.post(path, content=b"{not json", headers={**auth(ALICE), "Content-Type": "application/json"})
        assert r.status_code == 422
    assert head(db_url) == before


def test_openapi_documents_the_control_requests(sqlite_url):
    make_log(sqlite_url)
    with serving(sqlite_url, tokens=TOKENS) as http:
        spec = http.get("/openapi.json", headers=auth(ALICE)).json()
    op = spec["paths"]["/control/resume"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ResumeIn")
    assert {"HTTPBearer": []} in op["security"] and {"401", "403", "421", "422"} <= set(op["responses"])
    schemas = spec["components"]["schemas"]
    assert set(schemas["LimitIn"]["required"]) >= {"account", "reason", "limit", "value"}
    assert schemas["ControlOut"]["properties"]["position"]["type"] == "integer"


def test_run_server_refuses_open_reads_off_loopback(tmp_path, capsys):
    missing = f"sqlite:///{tmp_path}/missing.db"
    assert run_server(missing, host="0.0.0.0", port=0, tokens=TOKENS, open_reads=True) == 2
    assert "loopback only" in capsys.readouterr().err


def test_cli_serve_takes_named_tokens_and_allowed_hosts(sqlite_url, tmp_path):
    make_log(sqlite_url)
    waiting_gate(sqlite_url, "g1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRADESTATE_")}
    env.update(TRADESTATE_API_TOKENS=f"alice:{ALICE}", TRADESTATE_API_ALLOWED_HOSTS="desk.example")
    cli = [sys.executable, "-m", "tradestate.cli", "serve", "--db", sqlite_url, "--port", str(port)]
    bad = subprocess.run([*cli, "--allowed-host", "a:b:c"], capture_output=True, text=True, timeout=30, env=env)
    assert bad.returncode == 2 and "allowed-host" in bad.stderr
    proc = subprocess.Popen(cli, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{base}/livez", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        assert httpx.get(f"{base}/positions").status_code == 401  # named tokens guard reads too
        assert httpx.get(f"{base}/livez", headers={"Host": "evil.example"}).status_code == 421
        assert httpx.get(f"{base}/livez", headers={"Host": "desk.example:1"}).status_code == 200
        r = httpx.post(f"{base}/control/approve", json={"gate_id": "g1", "reason": "ok"},
                       headers={"Host": "desk.example", **auth(ALICE)})  # $TRADESTATE_API_ALLOWED_HOSTS
        assert r.status_code == 200 and r.json()["operator"] == "alice"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()
