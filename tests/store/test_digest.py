"""The digest chain: sealing, verifying, and naming the first bad position of a tampered log.

Tampering is done with raw SQL on the real database, the way an operator (or an intruder) with
direct access would: on SQLite with the append-only triggers dropped, on PostgreSQL as a superuser
with them disabled (``ALTER TABLE ... DISABLE TRIGGER``)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
import uuid

import orjson
import psycopg
import pytest

from tradestate.adapters.store import digest, new_event, open_store
from tradestate.domain.errors import ConcurrencyConflict

from tests.support.db import pg_base_url, schema_of, tamper
from tests.support.partitioned import db_url  # noqa: F401 - also on a partitioned PostgreSQL log

N = 60  # events in the test log; sealed in ranges of 7 (the last one partial)


def _event(i: int, stream: str | None = None, version: int | None = None):
    stream = stream or f"order-{i % 5}"
    version = version if version is not None else i // 5 + 1
    payload = orjson.dumps({"event_id": str(uuid.uuid4()), "qty": str(i + 1), "price": "101.25", "n": i})
    return new_event(stream, version, "OrderFilled" if i % 3 else "OrderIntentRecorded", payload)


@pytest.fixture
def store(db_url):
    s = open_store(db_url)
    s.trading.append([_event(i) for i in range(N // 2)])
    for i in range(N // 2, N):
        s.trading.append([_event(i)])
    s.market.append([new_event(f"bar-X|S{i}|1m", 1, "BarRecorded", b'{"close": "1"}') for i in range(10)])
    try:
        yield s
    finally:
        s.close()


def sealed(store, max_range: int = 7):
    digest.protect_log(store)
    result = digest.seal(store, max_range=max_range)
    assert result.sealed_upto == N and result.events == N + 10
    return result


def row(store, position: int) -> tuple:
    p = "?" if store.kind == "sqlite" else "%s"
    if store.kind == "sqlite":
        conn = sqlite3.connect(store.url[len("sqlite:///"):])
        try:
            return conn.execute(f"SELECT position, stream_id, stream_version, type, data, recorded_at FROM ts_events"
                                f" WHERE position = {p}", (position,)).fetchone()
        finally:
            conn.close()
    with psycopg.connect(pg_base_url()) as conn:
        conn.execute(f'SET search_path TO "{schema_of(store.url)}"')
        return conn.execute("SELECT position, stream_id, stream_version, type, data, recorded_at FROM ts_events"
                            " WHERE position = %s", (position,)).fetchone()


# ------------------------------------------------------------------------------ seal and verify


def test_seal_then_verify_ok_and_idempotent(store):
    first = sealed(store)
    assert first.ranges == (N + 6) // 7 + 2  # 60 events in ranges of 7, 10 bars in 7 + 3
    again = digest.seal(store, max_range=7)
    assert again.ranges == 0 and again.sealed_upto == N and again.last_digest == first.last_digest
    result = digest.verify(store)
    assert result.ok, result.detail
    assert (result.sealed_upto, result.head, result.checked_events, result.unsealed_events) == (N, N, N + 10, 0)
    assert result.last_digest == first.last_digest and len(result.last_digest) == 64


def test_unsealed_tail_is_counted_and_sealed_later(store):
    digest.seal(store, upto=20, max_range=7)
    result = digest.verify(store)
    assert result.ok and result.sealed_upto == 20 and result.unsealed_events == N - 20
    store.trading.append([_event(i) for i in range(N, N + 5)])
    assert digest.seal(store).sealed_upto == N + 5
    assert digest.verify(store).ok


def test_empty_log_verifies_with_nothing_sealed(sqlite_url):
    with open_store(sqlite_url) as s:
        assert digest.seal(s).ranges == 0
        result = digest.verify(s)
        assert result.ok and result.sealed_upto == 0 and "nothing sealed" in result.detail


def test_verify_after_a_position_still_checks_every_link(store):
    sealed(store)
    result = digest.verify(store, after=50)
    assert result.ok and result.checked_events < N
    tamper(store, ("UPDATE ts_events SET data = %s WHERE position = %s", (b'{"x": 1}', 10)))
    assert digest.verify(store, after=50).ok  # range 8-14 ends before 50: not recomputed
    assert digest.verify(store).first_bad_position == 10


def test_verify_ranges_checks_a_log_in_linked_parts(store):
    """verify_ranges: the ranges of a part recomputed as verify does them, linked to the part
    before it through ``previous``; it stops at the first bad range (how far the part checks out
    and the finding), and a part that does not link is a broken chain."""
    sealed(store)  # ranges of 7: 1-7, 8-14, ..., 57-60
    whole = digest.verify(store)
    first = digest.verify_ranges(store, "ts_events", 1, 28, previous=digest.GENESIS)
    assert first.ok and first.verified_upto == 28 and first.checked_events == 28
    rest = digest.verify_ranges(store, "ts_events", 29, N, previous=first.last_digest)
    assert rest.ok and rest.verified_upto == N and rest.last_digest.hex() == whole.last_digest
    # not linked to what came before: the first range's previous digest is not the one given
    broken = digest.verify_ranges(store, "ts_events", 29, N, previous=digest.GENESIS)
    assert not broken.ok and (broken.first_bad_position, broken.problem) == (29, "chain_broken")
    # a part must start at a range's start
    assert digest.verify_ranges(store, "ts_events", 30, N).problem == "chain_broken"

    tamper(store, ("UPDATE ts_events SET data = %s WHERE position = %s", (b'{"x": 1}', 40)))
    bad = digest.verify_ranges(store, "ts_events", 29, N, previous=first.last_digest)
    assert not bad.ok and bad.verified_upto == 35 and (bad.first_bad_position, bad.problem) == (40, "edited")
    assert digest.verify_ranges(store, "ts_events", 1, 35).ok  # the ranges before it still check out


def test_a_forged_chain_row_before_position_1_breaks_the_chain(store):
    sealed(store)
    tamper(store, ("INSERT INTO ts_digest_chain (log, range_start, range_end, event_count, scheme, previous_digest,"
                   " digest, fingerprints, sealed_at) SELECT log, 0, 0, 1, scheme, previous_digest, previous_digest,"
                   " substr(fingerprints, 1, 12), sealed_at FROM ts_digest_chain WHERE log = %s AND range_start = 1",
                   ("ts_events",)))
    result = digest.verify(store)
    assert not result.ok and result.problem == "chain_broken"


def test_progress_is_reported(store):
    sealed(store)
    seen: list[tuple[int, int]] = []
    digest.verify(store, progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, N + 10) and seen[-1] == (N + 10, N + 10)


# ------------------------------------------------------------------------------ tampering


TAMPERINGS = [
    ("payload", [("UPDATE ts_events SET data = %s WHERE position = %s", (b'{"qty": "1000000"}', 23))], 23,
     "edited"),
    ("type", [("UPDATE ts_events SET type = %s WHERE position = %s", ("OrderCancelled", 9))], 9, "edited"),
    ("stream", [("UPDATE ts_events SET stream_id = %s WHERE position = %s", ("order-evil", 41))], 41, "edited"),
    ("two edits: the first is named", [
        ("UPDATE ts_events SET data = %s WHERE position = %s", (b'{}', 44)),
        ("UPDATE ts_events SET data = %s WHERE position = %s", (b'{}', 16))], 16, "edited"),
    ("deleted", [("DELETE FROM ts_events WHERE position = %s", (30,))], 30, "deleted"),
    ("deleted at the end", [("DELETE FROM ts_events WHERE position >= %s", (58,))], 58, "deleted"),
    ("deleted, later events renumbered", [
        ("DELETE FROM ts_events WHERE position = %s", (12,)),
        ("UPDATE ts_events SET position = -position WHERE position > %s", (12,)),
        ("UPDATE ts_events SET position = -position - 1 WHERE position < %s", (0,))], 12, "deleted"),
    ("inserted, later events renumbered", [
        ("UPDATE ts_events SET position = -position WHERE position >= %s", (33,)),
        ("UPDATE ts_events SET position = -position + 1 WHERE position < %s", (0,)),
        ("INSERT INTO ts_events (position, stream_id, stream_version, type, data, recorded_at)"
         " SELECT 33, 'order-forged', 1, type, data, recorded_at FROM ts_events WHERE position = 34", ())],
     33, "inserted"),
    ("inserted before the log", [
        ("INSERT INTO ts_events (position, stream_id, stream_version, type, data, recorded_at)"
         " SELECT 0, 'order-forged', 1, type, data, recorded_at FROM ts_events WHERE position = 1", ())],
     0, "inserted"),
    ("payloads swapped", [], None, None),  # the statements need the rows' values: built in the test
    ("rows swapped", [
        ("UPDATE ts_events SET position = -1 WHERE position = 20", ()),
        ("UPDATE ts_events SET position = 20 WHERE position = 18", ()),
        ("UPDATE ts_events SET position = 18 WHERE position = -1", ())], 18, "reordered"),
    ("recorded_at", [("UPDATE ts_events SET recorded_at = %s WHERE position = %s",
                      ("2026-01-02T03:04:05.678901+00:00", 26))], 26, "edited"),
]


@pytest.mark.parametrize("name, statements, position, problem", TAMPERINGS)
def test_tampering_names_the_first_bad_position(store, name, statements, position, problem):
    sealed(store)
    if position is None:  # swap the payloads of 22 and 27 through a scratch value
        a, b = row(store, 22)[4], row(store, 27)[4]
        statements = [("UPDATE ts_events SET data = %s WHERE position = %s", (bytes(b), 22)),
                      ("UPDATE ts_events SET data = %s WHERE position = %s", (bytes(a), 27))]
        position, problem = 22, "reordered"
    tamper(store, *statements)
    result = digest.verify(store)
    assert not result.ok
    assert (result.first_bad_position, result.problem) == (position, problem), result.detail
    assert result.log == "ts_events"
    if name == "recorded_at":
        assert "type or recorded_at" in result.detail


def test_tampered_market_log_is_named(store):
    sealed(store)
    tamper(store, ("UPDATE ts_market_events SET data = %s WHERE position = %s", (b'{"close": "2"}', 4)))
    result = digest.verify(store)
    assert (result.ok, result.log, result.first_bad_position, result.problem) == (
        False, "ts_market_events", 4, "edited")


def test_deleted_from_unsealed_tail_on_sqlite(sqlite_url):
    with open_store(sqlite_url) as s:
        s.trading.append([_event(i) for i in range(20)])
        digest.seal(s, upto=10)
        tamper(s, ("DELETE FROM ts_events WHERE position = %s", (15,)))
        result = digest.verify(s)
        assert (result.first_bad_position, result.problem) == (15, "deleted")


CHAIN_TAMPERINGS = [
    ([("UPDATE ts_digest_chain SET digest = %s WHERE log = 'ts_events' AND range_start = 15", (bytes(32),))], 15),
    ([("UPDATE ts_digest_chain SET previous_digest = %s WHERE log = 'ts_events' AND range_start = 29",
       (bytes(32),))], 29),
    ([("UPDATE ts_digest_chain SET fingerprints = %s WHERE log = 'ts_events' AND range_start = 8",
       (bytes(84),))], 8),
    ([("DELETE FROM ts_digest_chain WHERE log = 'ts_events' AND range_start = 22", ())], 22),
]
CHAIN_TAMPERING_IDS = ["digest", "previous", "fingerprints", "range removed"]


@pytest.mark.parametrize("statements, position", CHAIN_TAMPERINGS, ids=CHAIN_TAMPERING_IDS)
def test_edited_chain_is_named(store, statements, position):
    sealed(store)
    tamper(store, *statements)
    result = digest.verify(store)
    assert (result.ok, result.problem, result.first_bad_position) == (False, "chain_broken", position), result.detail


def test_chain_rewritten_consistently_is_still_caught_by_content(store):
    """An edited event whose range digest was recomputed by the intruder still breaks the link
    to the next range (digests chain)."""
    sealed(store)
    tamper(store, ("UPDATE ts_events SET data = %s WHERE position = %s", (b'{"qty": "9"}', 10)))
    # recompute range 8-14 as an intruder would, leaving later ranges alone
    rows = []
    db = digest._Backend(store)
    with db.read() as cur:
        rows = db.rows(cur, "ts_events", 8, 14)
        cur.execute(f"SELECT previous_digest FROM {db.name('ts_digest_chain')} WHERE log = 'ts_events' AND"
                    f" range_start = 8")
        prev = bytes(cur.fetchone()[0])
    new_digest, fps = digest._hash_rows(rows, prev)
    tamper(store, ("UPDATE ts_digest_chain SET digest = %s, fingerprints = %s WHERE log = 'ts_events' AND"
                   " range_start = 8", (new_digest, digest._pack_fps(fps))))
    result = digest.verify(store)
    assert (result.ok, result.problem, result.first_bad_position) == (False, "chain_broken", 15)


@pytest.mark.postgres
def test_voided_position_taken_over_is_inserted(pg_url):
    with open_store(pg_url) as s:
        s.trading.append([_event(i) for i in range(10)])
        with pytest.raises(ConcurrencyConflict):
            s.trading.append([_event(0)])  # (order-0, 1) is taken: position 11 becomes a $void row
        s.trading.append([_event(i) for i in range(10, 15)])
        assert row(s, 11)[1] == "$void"
        digest.protect_log(s)
        assert digest.seal(s, max_range=4).sealed_upto == 16
        tamper(s, ("DELETE FROM ts_events WHERE position = 11", ()),
               ("INSERT INTO ts_events (position, stream_id, stream_version, type, data)"
                " VALUES (11, 'order-9', 99, 'OrderFilled', '{}')", ()))
        result = digest.verify(s)
        assert (result.first_bad_position, result.problem) == (11, "inserted"), result.detail


def test_one_altered_fingerprint_with_intact_events_is_named(store):
    """The fingerprints are checked even where the events match the digest (verify's fast path
    compares them too): one altered word is named at its position."""
    sealed(store)
    db = digest._Backend(store)
    with db.read() as cur:
        cur.execute(f"SELECT fingerprints FROM {db.name('ts_digest_chain')} WHERE log = 'ts_events' AND"
                    " range_start = 36")
        fps = bytearray(bytes(cur.fetchone()[0]))
    fps[digest.FP_BYTES * 4 + 5] ^= 0x40  # position 40, its type+recorded_at word
    tamper(store, ("UPDATE ts_digest_chain SET fingerprints = %s WHERE log = 'ts_events' AND range_start = 36",
                   (bytes(fps),)))
    result = digest.verify(store)
    assert (result.ok, result.problem, result.first_bad_position) == (False, "chain_broken", 40), result.detail
    assert "fingerprints of range 36-42 were altered" in result.detail


# ------------------------------------------------------------------------------ the encoding, pinned

# Rows as the database reads them (position, version, stream, type, data, recorded_at as bytes),
# with every recorded_at shape the encoding meets: canonical, isoformat without microseconds,
# isoformat with them, not a time at all, another offset. Digest and fingerprints were computed
# by the first version of the scheme: a change here means old chains no longer verify.
PINNED_ROWS = [
    (1, 1, b"order-1", b"OrderFilled", b'{"qty": "1"}', b"2026-11-16T14:30:00.037000Z"),
    (2, 2, "ordre-\u00e9".encode(), b"OrderIntentRecorded", b"", b"2026-11-16T14:30:00+00:00"),
    (3, 2**40 + 7, b"s", b"t", bytes(range(256)), b"2026-11-16T14:30:00.000001+00:00"),
    (4, -5, b"", b"", b"\x00", b"not a time"),
    (5, 3, b"$void", b"$void", b"{}", b"2026-11-16T15:30:00.5+01:00"),
]
PINNED_DIGEST = "0d71f59186066edf650c24aa75bd051ec455d551ee6ba575eb3409a2b0c76014"
PINNED_FPS = ("46c4745b17e03cc86db0a38e36fc18a1c2b668cc00000000856a5aa8499fbef729058c73fffffffb04600094d202ef8d"
              "46fc02fbda7a0b03a3a6bf43")
PINNED_NEXT = "fcec38ad4de60b813d685052f806ef778e9353f5950089f9c31440d22df48f70"  # the same rows, chained on

# A fixed log (see _fixed_log) sealed in ranges of 5: the chain rows, the same on both databases.
PINNED_CHAIN = [
    ("ts_events", 1, 5, "77c8a643c8b6cf78c99d5b12ba137751226c5c1b758ec624bdffc9d1e51d7d64",
     "31c344cde250e7af396d3dee46c4745b03b21d15a462dc98dfcd25e1e250e7afd803f943002b5e5003b21d15450c1835772c6ec6e250e7af"
     "20c1b2f5"),
    ("ts_events", 6, 10, "9ee559531ee08952ff780c4827055104255af7aa967bb43382492bb6ea68142c",
     "ee253f7c03b21d15bdce5383a65c55e4e250e7afc1af7658d15b657203b21d155ca0972e485234c8e250e7af0a3423d863fb6b6a03b21d15"
     "973bc2ae"),
    ("ts_events", 11, 12, "9c807f7e31663affd5772821d426c949d73d51b021cb436c1569b1954b008fa2",
     "14fc5bfce250e7afb4e3e6538df50a4603b21d1529ec0725"),
    ("ts_market_events", 1, 3, "042bab59a1b64ad1891acd7581fe5a08ebcc709a8696b36b4e4f7746b379f6ec",
     "6b451efc1a084cc249933b2dd3f979991a084cc249933b2dc14cd6771a084cc249933b2d"),
]


def test_range_digest_and_fingerprints_are_pinned():
    d, fps = digest._hash_rows(PINNED_ROWS, bytes(32))
    assert (d.hex(), digest._pack_fps(fps).hex()) == (PINNED_DIGEST, PINNED_FPS)
    assert digest._hash_rows(PINNED_ROWS, d)[0].hex() == PINNED_NEXT


def _fixed_log(s) -> None:
    s.trading.append([new_event(f"order-{i % 3}", i // 3 + 1, "OrderFilled" if i % 2 else "OrderIntentRecorded",
                                orjson.dumps({"n": i, "qty": "1.5"})) for i in range(12)])
    s.market.append([new_event(f"bar-X|S{i}|1m", 1, "BarRecorded", b'{"close": "1"}') for i in range(3)])
    tamper(s, ("UPDATE ts_events SET recorded_at = %s", ("2026-01-02T03:04:05.678901+00:00",)),
           ("UPDATE ts_market_events SET recorded_at = %s", ("2026-01-02T03:04:05+00:00",)))


def test_sealed_chain_is_pinned(db_url):
    """``seal`` writes byte for byte the chain the first version of the scheme wrote, on either database."""
    with open_store(db_url) as s:
        _fixed_log(s)
        result = digest.seal(s, max_range=5)
        assert result.last_digest == PINNED_CHAIN[2][3]
        db = digest._Backend(s)
        with db.read() as cur:
            cur.execute(f"SELECT log, range_start, range_end, digest, fingerprints, previous_digest"
                        f" FROM {db.name('ts_digest_chain')} ORDER BY log, range_start")
            chain = cur.fetchall()
        assert [(log, a, b, bytes(d).hex(), bytes(f).hex()) for log, a, b, d, f, _ in chain] == PINNED_CHAIN
        assert [bytes(p).hex() for *_, p in chain] == [
            "00" * 32, PINNED_CHAIN[0][3], PINNED_CHAIN[1][3], "00" * 32]
        assert digest.verify(s).ok


# ------------------------------------------------------------------------------ verify's fast path


def test_fast_path_hashes_exactly_what_seal_hashes():
    stored = bytes.fromhex(PINNED_FPS)
    h = hashlib.blake2b(bytes(32), digest_size=32)
    assert digest._hash_chunk(h.update, list(PINNED_ROWS), stored)
    assert h.hexdigest() == PINNED_DIGEST
    h = hashlib.blake2b(bytes(32), digest_size=32)  # in chunks, as verify reads them
    assert digest._hash_chunk(h.update, list(PINNED_ROWS[:2]), stored[:24])
    assert digest._hash_chunk(h.update, list(PINNED_ROWS[2:]), stored[24:])
    assert h.hexdigest() == PINNED_DIGEST


def test_fast_path_refuses_any_fingerprint_that_does_not_match():
    stored = bytes.fromhex(PINNED_FPS)
    for i in range(len(stored)):
        altered = bytearray(stored)
        altered[i] ^= 1
        assert not digest._hash_chunk(hashlib.blake2b().update, list(PINNED_ROWS), bytes(altered)), i
    assert not digest._hash_chunk(hashlib.blake2b().update, list(PINNED_ROWS), stored[:-digest.FP_BYTES])
    assert not digest._hash_chunk(hashlib.blake2b().update, list(PINNED_ROWS[:-1]), stored)


def _results_alike(store, monkeypatch) -> dict:
    """verify's report by the fast path and by the slow path (every range through _check_range,
    as before the fast path): they must be the same."""
    monkeypatch.setattr(digest, "_FAST", True)
    fast = digest.verify(store).to_dict()
    monkeypatch.setattr(digest, "_FAST", False)
    slow = digest.verify(store).to_dict()
    monkeypatch.setattr(digest, "_FAST", True)
    fast.pop("seconds")
    slow.pop("seconds")
    assert fast == slow
    return fast


@pytest.mark.parametrize(
    "statements",
    [t[1] for t in TAMPERINGS if t[1]] + [t[0] for t in CHAIN_TAMPERINGS] + [[]],
    ids=[t[0] for t in TAMPERINGS if t[1]] + [f"chain {i}" for i in CHAIN_TAMPERING_IDS] + ["untouched"],
)
def test_fast_and_slow_verify_report_alike(store, monkeypatch, statements):
    """Every tampering the tests above name is reported word for word as the slow path reports it,
    with pages and chunks smaller than a range (ranges of 7, pages of 5, chunks of 3)."""
    monkeypatch.setattr(digest, "PAGE", 5)
    monkeypatch.setattr(digest, "CHUNK", 3)
    sealed(store)
    if statements:
        tamper(store, *statements)
    result = _results_alike(store, monkeypatch)
    assert result["ok"] is (not statements)


def test_fast_and_slow_verify_report_alike_for_swapped_payloads(store, monkeypatch):
    monkeypatch.setattr(digest, "PAGE", 4)
    sealed(store)
    a, b = row(store, 22)[4], row(store, 27)[4]
    tamper(store, ("UPDATE ts_events SET data = %s WHERE position = %s", (bytes(b), 22)),
           ("UPDATE ts_events SET data = %s WHERE position = %s", (bytes(a), 27)))
    assert _results_alike(store, monkeypatch)["problem"] == "reordered"


def test_intact_log_never_takes_the_slow_path(db_url, monkeypatch):
    """Odd recorded_at shapes, ranges longer than a page, pages longer than a chunk: the fast path
    takes them all (it does not fall back to _check_range on an intact log)."""
    monkeypatch.setattr(digest, "PAGE", 4)
    monkeypatch.setattr(digest, "CHUNK", 3)
    calls: list[int] = []
    check = digest._check_range

    def counted(rows, start, *args):
        calls.append(start)
        return check(rows, start, *args)

    monkeypatch.setattr(digest, "_check_range", counted)
    with open_store(db_url) as s:
        s.trading.append([_event(i) for i in range(40)])
        s.market.append([new_event(f"bar-X|S{i}|1m", 1, "BarRecorded", b'{"close": "1"}') for i in range(5)])
        if s.kind == "sqlite":  # the text column can hold any shape; PostgreSQL's timestamptz cannot
            shapes = ["2026-11-16T14:30:00+00:00", "2026-11-16T14:30:00.000001Z", "not a time",
                      "2026-11-16T15:30:00.500000+01:00", "2026-11-16 14:30:00.25"]
            tamper(s, *[("UPDATE ts_events SET recorded_at = %s WHERE position = %s", (shape, 3 + 7 * i))
                        for i, shape in enumerate(shapes)])
        digest.seal(s, max_range=11)
        result = digest.verify(s)
        assert result.ok and result.checked_events == 45, result.detail
        assert calls == []
        assert digest.verify(s, after=30).ok and calls == []


def test_a_range_the_fast_path_refuses_is_judged_by_the_slow_path(store, monkeypatch):
    sealed(store)
    monkeypatch.setattr(digest, "_hash_chunk", lambda update, rows, stored: False)
    result = digest.verify(store)
    assert result.ok and result.checked_events == N + 10, result.detail
    monkeypatch.setattr(digest, "_hash_chunk", lambda update, rows, stored: 1 / 0)
    assert digest.verify(store).ok
    tamper(store, ("UPDATE ts_events SET data = %s WHERE position = %s", (b"{}", 31)))
    assert (digest.verify(store).first_bad_position, digest.verify(store).problem) == (31, "edited")


# ------------------------------------------------------------------------------ append-only


def test_protected_log_refuses_update_and_delete_but_appends(store):
    digest.protect_log(store)
    digest.protect_log(store)  # idempotent
    assert digest.is_protected(store)
    digest.seal(store)
    statements = ["UPDATE ts_events SET data = data WHERE position = 1", "DELETE FROM ts_events WHERE position = 1",
                  "UPDATE ts_market_events SET type = type", "DELETE FROM ts_digest_chain",
                  "UPDATE ts_digest_chain SET digest = digest"]
    if store.kind == "postgresql":
        statements += ["TRUNCATE ts_events", "TRUNCATE ts_digest_chain", "TRUNCATE ts_market_events"]
    for sql in statements:
        with pytest.raises(Exception, match="append-only"):
            _as_service(store, sql)
    assert digest.verify(store).ok
    store.trading.append([_event(1000, stream="order-new", version=1)])
    assert store.trading.head() == N + 1
    assert digest.seal(store).sealed_upto == N + 1


def _as_service(store, sql: str) -> None:
    if store.kind == "sqlite":
        conn = sqlite3.connect(store.url[len("sqlite:///"):], isolation_level=None)
        try:
            conn.execute(sql)
        finally:
            conn.close()
        return
    with psycopg.connect(pg_base_url(), autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema_of(store.url)}"')
        conn.execute(sql)


@pytest.mark.postgres
def test_postgres_void_of_a_conflict_still_works_when_protected(pg_url):
    with open_store(pg_url) as s:
        digest.protect_log(s)
        s.trading.append([_event(0)])
        with pytest.raises(ConcurrencyConflict):
            s.trading.append([_event(0)])
        with pytest.raises(ConcurrencyConflict):
            s.trading.append([_event(0), _event(1)])
        assert [r.topic for r in s.trading.read()] == ["OrderIntentRecorded", "$void", "$void", "$void"]
        assert digest.seal(s).sealed_upto == 4 and digest.verify(s).ok


@pytest.mark.postgres
def test_postgres_service_role_loses_update_delete_truncate(pg_url):
    role = "ts_svc_" + uuid.uuid4().hex[:8]
    schema = schema_of(pg_url)
    with psycopg.connect(pg_base_url(), autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" NOLOGIN')
        try:
            with open_store(pg_url) as s:
                s.trading.append([_event(i) for i in range(5)])
                admin.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
                admin.execute(f'GRANT ALL ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"')
                digest.protect_log(s, service_role=role)
                with admin.transaction():
                    admin.execute(f'SET LOCAL ROLE "{role}"')
                    admin.execute(f'SET LOCAL search_path TO "{schema}"')
                    assert admin.execute("SELECT count(*) FROM ts_events").fetchone()[0] == 5
                for sql in ("UPDATE ts_events SET data = data", "DELETE FROM ts_events", "TRUNCATE ts_events",
                            "DELETE FROM ts_digest_chain"):
                    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                        with admin.transaction():
                            admin.execute(f'SET LOCAL ROLE "{role}"')
                            admin.execute(f'SET LOCAL search_path TO "{schema}"')
                            admin.execute(sql)
                # a superuser can still get around it, and the chain shows it
                digest.seal(s)
                tamper(s, ("UPDATE ts_events SET data = %s WHERE position = 3", (b"{}",)))
                assert (digest.verify(s).first_bad_position, digest.verify(s).problem) == (3, "edited")
        finally:
            admin.execute(f'DROP OWNED BY "{role}"')
            admin.execute(f'DROP ROLE "{role}"')


# ------------------------------------------------------------------------------ concurrency


_SEALER = """
import sys
from tradestate.adapters.store import digest, open_store
with open_store(sys.argv[1], create=False) as s:
    total = 0
    for _ in range(int(sys.argv[2])):
        total += digest.seal(s, max_range=3).events
    print(total)
"""


def test_two_processes_sealing_at_once_build_one_chain(db_url):
    with open_store(db_url) as s:
        s.trading.append([_event(i) for i in range(40)])
        procs = [subprocess.Popen([sys.executable, "-c", _SEALER, db_url, "3"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env={**os.environ}) for _ in range(2)]
        for i in range(40, 140):
            s.trading.append([_event(i)])
        outs = [p.communicate(timeout=60) for p in procs]
        assert all(p.returncode == 0 for p in procs), outs
        digest.seal(s, max_range=3)
        result = digest.verify(s)
        assert result.ok and result.sealed_upto == 140, result.detail
        # every event sealed exactly once: the ranges tile 1..140
        db = digest._Backend(s)
        with db.read() as cur:
            cur.execute(f"SELECT range_start, range_end FROM {db.name('ts_digest_chain')} WHERE log = 'ts_events'"
                        " ORDER BY range_start")
            ranges = cur.fetchall()
        assert ranges[0][0] == 1 and ranges[-1][1] == 140
        assert all(b[0] == a[1] + 1 for a, b in zip(ranges, ranges[1:]))


def test_sealing_while_appending(db_url):
    with open_store(db_url) as s:
        stop = threading.Event()
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                for i in range(300):
                    s.trading.append([_event(i)])
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
            finally:
                stop.set()

        t = threading.Thread(target=writer)
        t.start()
        while not stop.is_set():
            digest.seal(s, max_range=50)
        t.join()
        assert not errors
        assert digest.seal(s).sealed_upto == 300
        assert digest.verify(s).ok
