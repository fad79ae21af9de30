"""A checkpoint keeps the ids of the fees an account was charged recently (``snapshot.FEE_IDS_KEPT``,
version 4), not one per fee ever charged: a checkpoint follows the open state, not the history. A
fee the venue posts again close in time is still recognised after a restore; a version 3
checkpoint (every id) still loads as it was written."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal
from uuid import uuid4

import orjson

from tradestate.domain import events as ev
from tradestate.domain import snapshot
from tradestate.domain.orders import AlreadyRecorded, decide_fee
from tests.support.fold import Fold

KEPT = 5


def _charged(n: int) -> Fold:
    f = Fold()
    f.account_event(ev.CashBalanceRecorded, venue="sim", currency="USD", balance="1000")
    for i in range(n):
        f.account_event(ev.FeeCharged, venue="sim", fee_id=f"F{i}", amount="1")
    return f


def _restored(doc: dict) -> object:
    return snapshot.restore(orjson.loads(snapshot.encode(doc)), b"")


def test_a_checkpoint_keeps_the_recent_fee_ids_and_a_repeat_of_one_still_changes_nothing(monkeypatch):
    monkeypatch.setattr(snapshot, "FEE_IDS_KEPT", KEPT)
    f = _charged(12)
    doc, _ = snapshot.take(f.state)
    assert doc["snapshot_version"] == 4
    assert set(doc["accounts"]["acct"]["fee_ids"]) == {f"F{i}" for i in range(7, 12)}
    restored = _restored(doc)
    acct = restored.account("acct")
    assert acct.cash == {"USD": Decimal(988)}
    # the venue posts a recent fee again: recognised (as the whole log would), nothing moves
    again = ev.FeeCharged(event_id=uuid4(), account="acct", venue="sim", fee_id="F11", amount="1")
    assert isinstance(decide_fee(restored, again), AlreadyRecorded)
    restored.apply(f.pos + 1, "account-acct", 99, "FeeCharged", orjson.loads(orjson.dumps(again.to_payload())),
                   datetime(2024, 3, 6, tzinfo=timezone.utc))
    assert acct.cash == {"USD": Decimal(988)}
    # a restored account's ids come back sorted by id, not in the log's order: the next checkpoint
    # still keeps those folded last
    restored.apply(f.pos + 2, "account-acct", 100, "FeeCharged", orjson.loads(orjson.dumps(
        ev.FeeCharged(event_id=uuid4(), account="acct", venue="sim", fee_id="A-new", amount="1").to_payload())),
        datetime(2024, 3, 6, tzinfo=timezone.utc))
    doc2, _ = snapshot.take(restored)
    assert set(doc2["accounts"]["acct"]["fee_ids"]) == {"A-new"} | {f"F{i}" for i in range(8, 12)}


def test_a_version_3_checkpoint_with_every_fee_id_loads_them_all_and_its_next_one_keeps_the_recent(monkeypatch):
    f = _charged(12)
    doc, _ = snapshot.take(f.state)
    old = {**doc, "snapshot_version": 3}  # as version 3 wrote it: every id
    assert len(old["accounts"]["acct"]["fee_ids"]) == 12
    head = doc["position"]
    assert snapshot.problems(old, position=head, head=head, now=datetime.now(timezone.utc)) == []
    restored = _restored(old)
    assert restored.account("acct").fee_ids == f.state.account("acct").fee_ids
    monkeypatch.setattr(snapshot, "FEE_IDS_KEPT", KEPT)
    again, _ = snapshot.take(restored)
    assert again["snapshot_version"] == snapshot.SNAPSHOT_VERSION
    assert set(again["accounts"]["acct"]["fee_ids"]) == {f"F{i}" for i in range(7, 12)}
