"""A log that went backwards under a running client is detected, not decided on.

A restore of an older backup (``tradestate restore --force``) or an asynchronous failover (the
promoted standby lacks the primary's last commits) leaves a running client with a fold ahead of
the log. Its next call raises ``LogRewound`` naming what it had seen, what the log holds now and
which of its own acknowledged events are gone; nothing is appended, every later call fails the
same way, and a client opened afresh works on the log as it is.
"""

from __future__ import annotations

import pytest
from tests.support.projector_worker import Clock
from typer.testing import CliRunner

import tradestate
from tradestate.adapters.store import backup as bk
from tradestate.adapters.store import open_store
from tradestate.cli.main import app
from tradestate.domain.errors import LogRewound, TradestateError
from tradestate.domain.ids import derived_id

ACCT = "acct"


def _backup(url: str, path) -> int:
    """Back the log up to ``path``; returns the head the backup holds."""
    with open_store(url, create=False) as store:
        bk.backup(store, path)
        return store.trading.head()


def _head(url: str) -> int:
    with open_store(url, create=False) as store:
        return store.trading.head()


def _restore(url: str, path) -> None:
    """``tradestate restore --force`` of ``path`` into ``url``, as an operator runs it."""
    r = CliRunner().invoke(app, ["restore", "--db", url, "--from", str(path), "--force"])
    assert r.exit_code == 0, r.stdout + r.stderr


def test_a_restore_of_an_older_backup_under_a_running_client_is_detected(db_url, tmp_path):
    client = tradestate.connect(db_url, clock=Clock(), venue="sim")
    try:
        client.set_risk_limit(ACCT, "max_order_qty", 100)
        client.record_intent(ACCT, "before", "AAPL", "buy", 5, reference_price=100)
        backed_up = _backup(db_url, tmp_path / "old.tsb")
        # Acknowledged after the backup: what the restore will lose.
        after = client.record_intent(ACCT, "after", "AAPL", "buy", 5, reference_price=100)
        ack = client.record_ack(ACCT, "after", "V-1")
        fill = client.record_fill(ACCT, "after", "X-1", 5, 101)
        known = client.position
        assert known > backed_up

        _restore(db_url, tmp_path / "old.tsb")
        assert _head(db_url) == backed_up

        with pytest.raises(LogRewound) as caught:
            client.record_intent(ACCT, "next", "AAPL", "buy", 1, reference_price=100)
        e = caught.value
        assert isinstance(e, TradestateError)
        assert (e.known_position, e.found_head, e.found_event_id) == (known, backed_up, None)
        assert e.known_event_id == str(fill.event_id)
        passed = derived_id(after.event_id, "RiskCheckPassed")
        assert [x["event_id"] for x in e.lost] == [str(i) for i in (after.event_id, passed, ack.event_id,
                                                                     fill.event_id)]
        assert [x["type"] for x in e.lost] == ["OrderIntentRecorded", "RiskCheckPassed", "OrderAcknowledged",
                                               "OrderFilled"]
        assert all(x["position"] > backed_up for x in e.lost)
        assert "tradestate recover" in str(e) and "reconcile" in str(e)
        assert _head(db_url) == backed_up  # nothing appended

        # every later call fails the same way, queries included, and still appends nothing
        for call in (lambda: client.record_fill(ACCT, "before", "X-2", 1, 100),
                     lambda: client.engage_kill_switch(ACCT, "test"),
                     lambda: client.open_orders(),
                     lambda: client.catch_up()):
            with pytest.raises(LogRewound):
                call()
        assert _head(db_url) == backed_up
    finally:
        client.close()

    # re-opened, the client folds the log as it is and trades on it
    with tradestate.connect(db_url, clock=Clock(), venue="sim") as again:
        assert again.position == backed_up
        assert again.open_orders(ACCT) and {o["client_order_id"] for o in again.open_orders(ACCT)} == {"before"}
        redo = again.record_intent(ACCT, "after", "AAPL", "buy", 5, reference_price=100)
        assert redo.accepted and not redo.duplicate and redo.position == backed_up + 1


def test_a_log_rewritten_past_the_known_position_is_detected_by_the_event_there(db_url, tmp_path):
    """An asynchronous failover that a new primary has since written past: the head is not
    below what the client saw, but the event at its last position is another one."""
    client = tradestate.connect(db_url, clock=Clock(), venue="sim")
    try:
        client.record_intent(ACCT, "a", "AAPL", "buy", 1, reference_price=100)
        backed_up = _backup(db_url, tmp_path / "old.tsb")
        client.record_ack(ACCT, "a", "V-a")
        mine = client.record_intent(ACCT, "b", "MSFT", "buy", 1, reference_price=100)
        known = client.position

        _restore(db_url, tmp_path / "old.tsb")
        # another engine, on the new primary, writes on past that position
        with tradestate.connect(db_url, clock=Clock(), venue="sim") as other:
            for i in range(known - backed_up + 2):
                other.record_signal("s", "AAPL", f"tick{i}")
            assert other.position > known
        head = _head(db_url)

        with pytest.raises(LogRewound) as caught:
            client.record_ack(ACCT, "b", "V-b")
        e = caught.value
        assert e.known_position == known and e.found_head == head >= known
        assert e.found_event_id is not None and e.found_event_id != e.known_event_id
        assert str(mine.event_id) in {x["event_id"] for x in e.lost}
        assert _head(db_url) == head
    finally:
        client.close()


def test_a_head_below_the_known_position_is_detected_before_anything_is_decided(db_url, tmp_path):
    """A standby promoted after an asynchronous failover lacks the primary's last commits: the
    log's head drops below what the client saw. Simulated by restoring a backup taken earlier;
    the first call after it, whatever it is, raises and appends nothing."""
    with tradestate.connect(db_url, clock=Clock(), venue="sim") as client:
        client.record_signal("s", "AAPL", "up")
        backed_up = _backup(db_url, tmp_path / "early.tsb")
        for i in range(3):
            client.record_signal("s", "AAPL", f"more{i}")
        _restore(db_url, tmp_path / "early.tsb")
        with pytest.raises(LogRewound) as caught:
            client.record_signal("s", "AAPL", "after")
        assert caught.value.found_head == backed_up < caught.value.known_position
        assert len(caught.value.lost) == 3
        assert _head(db_url) == backed_up


def test_a_log_that_only_grew_is_not_a_rewind(db_url):
    """The check reads the known event again on every catch-up: another writer's appends, and
    a state that was moved on outside the writer, are not mistaken for a rewind."""
    with tradestate.connect(db_url, clock=Clock(), venue="sim") as a, \
            tradestate.connect(db_url, clock=Clock(), venue="sim") as b:
        for i in range(5):
            a.record_signal("s", "AAPL", f"a{i}")
            b.record_signal("t", "AAPL", f"b{i}")
        assert a.catch_up() == b.catch_up() == _head(db_url)
        assert a.writer.rewound is None and b.writer.rewound is None


def test_recover_names_what_the_log_lost_and_reconciliation_re_establishes_it(db_url, tmp_path):
    """The engine keeps the error (``as_dict``) for the operator; ``recover`` reports the events
    the log lost, and with the broker configured, reconciliation books the lost fill again."""
    import orjson

    from tradestate.adapters.brokers.sim import sim_venue
    from tradestate.recovery import recover

    with sim_venue(ACCT) as venue, tradestate.connect(db_url, clock=Clock(), venue="SIM") as client:
        client.record_intent(ACCT, "a", "AAPL", "buy", 5, order_type="limit", limit_price=100)
        backed_up = _backup(db_url, tmp_path / "old.tsb")
        client.record_submitted(ACCT, "a")
        client.record_ack(ACCT, "a", "V-1")
        client.record_fill(ACCT, "a", "X-1", 5, 100)
        venue.add_order(client_order_id="a", symbol="AAPL", side="buy", qty=5, status="filled",
                        fills=[("X-1", 5, 100)])
        venue.set_position("AAPL", 5, 100)
        _restore(db_url, tmp_path / "old.tsb")
        with pytest.raises(LogRewound) as caught:
            client.record_signal("s", "AAPL", "x")
        kept = orjson.loads(orjson.dumps(caught.value.as_dict()))  # what an engine writes to disk
        assert [e["type"] for e in kept["lost"]] == ["OrderSubmitted", "OrderAcknowledged", "OrderFilled"]

        # without a broker to reconcile with, the engine is not ready
        with open_store(db_url, create=False) as store:
            report, again = recover(store, rewound=kept, record=False, verify="none")
            again.close()
        step = report.step("rewind")
        assert step.status == "failed" and not report.ready
        assert [e["type"] for e in report.lost] == ["OrderSubmitted", "OrderAcknowledged", "OrderFilled"]
        assert "lost 3 event(s)" in step.detail and f"from position {backed_up + 1}" in step.detail

        with open_store(db_url, create=False) as store:
            report, recovered = recover(store, rewound=caught.value, adapters=[venue.adapter()], verify="none")
            with recovered:
                assert report.step("rewind").status == "warn" and len(report.lost) == 3
                order = recovered.order(ACCT, "a")
                assert order["status"] == "filled" and order["filled_qty"] == 5
                assert [p["qty"] for p in recovered.positions(ACCT)] == [5]


def test_the_recover_command_takes_the_kept_error_and_names_what_the_log_lost(db_url, tmp_path):
    """``tradestate recover --rewound FILE`` reads what the engine kept (``as_dict`` as JSON): the
    report lists the lost events and, with no broker to re-establish them, says not ready."""
    import json

    import orjson

    with tradestate.connect(db_url, clock=Clock(), venue="SIM") as client:
        client.record_intent(ACCT, "a", "AAPL", "buy", 5, order_type="limit", limit_price=100)
        _backup(db_url, tmp_path / "old.tsb")
        client.record_submitted(ACCT, "a")
        _restore(db_url, tmp_path / "old.tsb")
        with pytest.raises(LogRewound) as caught:
            client.record_ack(ACCT, "a", "V-1")
    kept = tmp_path / "rewound.json"
    kept.write_bytes(orjson.dumps(caught.value.as_dict()))

    run = CliRunner().invoke(app, ["recover", "--db", db_url, "--rewound", str(kept), "--no-verify", "--dry-run",
                                   "--json"])
    assert run.exit_code == 1, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert [e["type"] for e in report["lost"]] == ["OrderSubmitted"]
    assert any(s["name"] == "rewind" and s["status"] == "failed" for s in report["steps"])

    kept.write_text('{"found_head": 3}')
    bad = CliRunner().invoke(app, ["recover", "--db", db_url, "--rewound", str(kept)])
    assert bad.exit_code == 2 and "not a LogRewound record" in bad.stderr
