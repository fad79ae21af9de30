"""Anchors outside the database: a history rewritten with the service's own credentials
(triggers disabled, a row edited, the chain sealed again with tradestate's own sealing code)
passes a plain verify, but not a verify against the signed anchors, which names the position."""

from __future__ import annotations

import json

import orjson
import pytest
from tests.support.projector_worker import Clock
from tests.support.db import tamper
from typer.testing import CliRunner

import tradestate
from tradestate.adapters.store import anchor, digest, open_store
from tradestate.cli.main import app


def _trade(url: str, n: int, start: int = 0) -> int:
    with tradestate.connect(url, venue="sim", clock=Clock()) as c:
        for i in range(start, start + n):
            coid = f"o{i}"
            assert c.record_intent("acct-1", coid, "AAPL", "buy", "10", reference_price="100").accepted
            c.record_fill("acct-1", coid, f"x{i}", "10", "100")
        return c.position


@pytest.fixture
def keys(tmp_path):
    private, public = tmp_path / "anchor.pem", tmp_path / "anchor.pub.pem"
    r = CliRunner().invoke(app, ["anchor", "keygen", "--key", str(private), "--public-key", str(public), "--json"])
    assert r.exit_code == 0, r.output
    assert private.stat().st_mode & 0o077 == 0
    return private, public


@pytest.fixture
def anchored(db_url, keys, tmp_path):
    """Two anchors: one after the first session, one after the second."""
    private, public = keys
    anchors = tmp_path / "anchors.log"
    first = _trade(db_url, 5)
    r = CliRunner().invoke(app, ["anchor", "export", "--db", db_url, "--to", str(anchors), "--key", str(private),
                                 "--seal", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["anchor"]["position"] == first
    second = _trade(db_url, 5, start=5)
    with open_store(db_url, create=False) as store:
        digest.seal(store)
        anchor.export(store, anchors, private)
    lines = anchors.read_bytes().splitlines()
    assert [orjson.loads(line)["position"] for line in lines] == [first, second]
    return db_url, anchors, public, first, second


def _verify(url, anchors, public):
    return CliRunner().invoke(app, ["verify", "--db", url, "--anchors", str(anchors), "--public-key", str(public),
                                    "--json"])


def test_an_intact_log_matches_its_anchors(anchored):
    url, anchors, public, first, second = anchored
    r = _verify(url, anchors, public)
    out = json.loads(r.stdout)
    assert r.exit_code == 0 and out["ok"] and out["anchors"]["checked"] == 2
    assert out["anchors"]["last_anchored_position"] == second


def _rewrite_and_reseal(store, position: int, anchored_positions: list[int]) -> None:
    """The service's own credentials: triggers off, a fill's price edited, the chain dropped and
    sealed again by tradestate's own code, on the same range boundaries as before."""
    fill = next(e for e in store.trading.read(limit=position) if e.topic == "OrderFilled")
    payload = orjson.loads(fill.state) | {"price": "1"}
    tamper(store, ("UPDATE ts_events SET data = %s WHERE position = %s", (orjson.dumps(payload), fill.position)),
           ("DELETE FROM ts_digest_chain WHERE log = %s", ("ts_events",)))
    for upto in anchored_positions:
        digest.seal(store, upto=upto)
    digest.seal(store)


def test_a_rewrite_resealed_with_the_services_credentials_is_caught_by_the_anchors(anchored):
    url, anchors, public, first, second = anchored
    with open_store(url, create=False) as store:
        _rewrite_and_reseal(store, first, [first, second])
        assert digest.verify(store).ok  # the chain agrees with the rewritten log
        result = anchor.verify_anchors(store, anchors, public)
    assert not result.ok and (result.first_bad_line, result.first_bad_position, result.problem) == (
        1, first, "digest_mismatch")
    assert f"position {first}" in result.detail and "rewritten" in result.detail

    assert CliRunner().invoke(app, ["verify", "--db", url]).exit_code == 0  # plain verify passes
    r = _verify(url, anchors, public)
    out = json.loads(r.stdout)
    assert r.exit_code == 1 and (out["ok"], out["first_bad_position"], out["problem"]) == (
        False, first, "digest_mismatch")
    r = CliRunner().invoke(app, ["verify", "--db", url, "--anchors", str(anchors), "--public-key", str(public)])
    assert r.exit_code == 1 and "ANCHOR MISMATCH" in r.stdout and str(first) in r.stdout


def test_a_chain_resealed_on_other_boundaries_is_caught_too(anchored):
    url, anchors, public, first, second = anchored
    with open_store(url, create=False) as store:
        _rewrite_and_reseal(store, first, [])
        assert digest.verify(store).ok
        result = anchor.verify_anchors(store, anchors, public)
    assert (result.ok, result.first_bad_position, result.problem) == (False, first, "not_sealed")


def test_an_altered_anchor_file_or_another_key_is_refused(anchored, tmp_path):
    url, anchors, public, first, second = anchored
    lines = anchors.read_bytes().splitlines()
    doctored = orjson.loads(lines[1]) | {"position": first}
    forged = tmp_path / "forged.log"
    forged.write_bytes(lines[0] + b"\n" + orjson.dumps(doctored, option=orjson.OPT_SORT_KEYS) + b"\n")
    with open_store(url, create=False) as store:
        result = anchor.verify_anchors(store, forged, public)
        assert (result.ok, result.first_bad_line, result.problem, result.checked) == (False, 2, "bad_signature", 1)
        other_private, other_public = tmp_path / "other.pem", tmp_path / "other.pub.pem"
        anchor.keygen(other_private, other_public)
        result = anchor.verify_anchors(store, anchors, other_public)
        assert (result.ok, result.first_bad_line, result.problem) == (False, 1, "other_key")
        with pytest.raises(anchor.AnchorError, match="never overwritten"):
            anchor.keygen(other_private, tmp_path / "x.pem")


def test_export_refuses_an_unsealed_log(db_url, keys, tmp_path):
    _trade(db_url, 1)
    r = CliRunner().invoke(app, ["anchor", "export", "--db", db_url, "--to", str(tmp_path / "a.log"),
                                 "--key", str(keys[0])])
    assert r.exit_code == 2 and "nothing is sealed" in r.output
    assert not (tmp_path / "a.log").exists()
