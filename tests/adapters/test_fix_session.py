"""The FIX 4.4 session layer against the local acceptor (real TCP on 127.0.0.1, port 0): logon,
heartbeats and test requests, gap -> ResendRequest, PossDup, garbled frames, sequence numbers."""

from __future__ import annotations

import socket
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal as D

import pytest

from tests.support.fake_fix import FakeDropCopyServer
from tradestate.adapters.brokers.base import VenueConnectionError
from tradestate.adapters.brokers.fix_session import (
    FixSession,
    FixSessionError,
    SequenceStore,
    checksum,
    encode,
    get,
    parse_frame,
    take_frame,
)

pytestmark = pytest.mark.timeout(30)
T = datetime(2026, 12, 5, 14, 30, tzinfo=timezone.utc)


@pytest.fixture
def server():
    with FakeDropCopyServer() as srv:
        yield srv


def session(srv, store, received, **kw):
    return FixSession("127.0.0.1", srv.port, sender="DESK", target="VENUE", store=store,
                      on_app=lambda msg, frame: received.append(msg), timeout=kw.pop("timeout", 5.0),
                      heartbeat=kw.pop("heartbeat", 30), **kw)


def exec_ids(received):
    return [get(m, 17) for m in received if m.message_type == b"8"]


# ------------------------------------------------------------------------- framing


def test_frames_are_checked_for_body_length_and_checksum():
    good = encode("0", [], sender="A", target="B", seq=1, sending_time=T)
    frame, rest, garbled = take_frame(good + b"8=FIX")
    assert frame == good and rest == b"8=FIX" and garbled == 0
    msg = parse_frame(frame)
    assert get(msg, 49) == "A" and get(msg, 34) == "1"
    # the checksum is the byte sum modulo 256 of everything before "10="
    body_end = good.rindex(b"10=")
    assert good[body_end + 3:body_end + 6] == checksum(good[:body_end])

    bad_sum = good[:-4] + b"%03d" % ((int(good[-4:-1]) + 1) % 256) + b"\x01"
    frame, rest, garbled = take_frame(bad_sum)
    assert frame is None and garbled == 1 and b"8=FIX.4.4" not in rest
    bad_length = good.replace(b"9=", b"9=1", 1)
    frame, _, garbled = take_frame(bad_length + good)
    assert frame == good and garbled == 1  # the next good frame after the garbled one
    half, rest, garbled = take_frame(good[:20])
    assert half is None and rest == good[:20] and garbled == 0


# -------------------------------------------------------------------------- session


def test_logon_persists_sequence_numbers_and_logout(server, tmp_path):
    store = SequenceStore(tmp_path, "DESK", "VENUE")
    received = []
    s = session(server, store, received)
    s.logon()
    assert s.logged_on and server.logons == 1
    assert server.received[0] == ("A", 1, False)
    s.sync()
    s.logout()
    assert server.wait_received("5")
    again = SequenceStore(tmp_path, "DESK", "VENUE")
    assert (again.next_out, again.next_in) == (store.next_out, store.next_in)
    assert again.next_out == 4  # Logon, TestRequest, Logout
    # the next session resumes the numbers: the acceptor sees no gap and asks for no resend
    s2 = session(server, again, received)
    s2.logon()
    s2.sync()
    s2.logout()
    assert server.received[3] == ("A", 4, False)
    assert server.resend_requests == []


def test_heartbeat_on_silence_and_answer_to_test_request(server, tmp_path):
    s = session(server, SequenceStore(None, "DESK", "VENUE"), [], heartbeat=1)
    s.logon()
    server.test_request("PING-1")
    s.wait_for(lambda: server.heartbeat_ids == ["PING-1"], 3, "heartbeat echo")
    # nothing sent by us for HeartBtInt: a Heartbeat goes out on its own
    before = s.stats.heartbeats_sent
    s.wait_for(lambda: s.stats.heartbeats_sent > before, 3, "our heartbeat")
    assert server.wait_received("0", 2)
    s.logout()


def test_gap_is_recovered_with_one_resend_request(server):
    received = []
    s = session(server, SequenceStore(None, "DESK", "VENUE"), received)
    s.logon()
    oid = server.new_order("c1", "AAPL", "buy", "100", "10")
    server.drop_next(2)  # two reports lost on the wire
    server.fill(oid, "40", "10", exec_id="X1")
    server.fill(oid, "60", "10", exec_id="X2")
    server.cancel(oid)  # arrives with MsgSeqNum past the gap
    s.sync()
    assert s.stats.resend_requests_sent == 1 and len(server.resend_requests) == 1
    begin, end = server.resend_requests[0]
    assert end == 0  # "through infinity"
    ids = exec_ids(received)
    assert ids.count("X1") == 1 and ids.count("X2") == 1
    assert [get(m, 150) for m in received] == ["0", "F", "F", "4"]  # in sequence order, each once
    assert [get(m, 43) for m in received][1:] == ["Y", "Y", "Y"]  # resent ones carry PossDupFlag
    s.logout()


def test_first_logon_replays_the_day_and_admin_messages_are_gap_filled(server):
    oid = server.new_order("c1", "AAPL", "buy", "10", "10")
    server.fill(oid, "10", "10", exec_id="X1")
    received = []
    s = session(server, SequenceStore(None, "DESK", "VENUE"), received)
    s.logon()  # the acceptor's Logon is MsgSeqNum 3: 1 and 2 are asked for
    s.sync()
    assert exec_ids(received) == [received[0].get(17).decode(), "X1"]
    assert server.resend_requests == [(1, 0)]
    assert s.stats.gap_fills == 1  # the acceptor's Logon inside the range came back as a GapFill
    s.logout()


def test_possdup_duplicate_is_ignored(server):
    received = []
    s = session(server, SequenceStore(None, "DESK", "VENUE"), received)
    s.logon()
    oid = server.new_order("c1", "AAPL", "buy", "10", "10")
    server.fill(oid, "10", "10", exec_id="X1")
    fill_seq = max(server.sent)
    s.sync()
    server.duplicate(fill_seq)  # already processed: MsgSeqNum below the expected one, 43=Y
    s.sync()
    assert exec_ids(received).count("X1") == 1
    assert s.stats.duplicates_ignored == 1
    s.logout()


def test_bad_checksum_is_ignored_and_recovered_by_resend(server):
    received = []
    s = session(server, SequenceStore(None, "DESK", "VENUE"), received)
    s.logon()
    oid = server.new_order("c1", "AAPL", "buy", "10", "10")
    server.corrupt_next()
    server.fill(oid, "10", "10", exec_id="X1")
    server.cancel(oid)
    s.sync()
    assert s.stats.garbled == 1
    assert s.stats.resend_requests_sent == 1
    assert exec_ids(received).count("X1") == 1
    fill = next(m for m in received if get(m, 17) == "X1")
    assert get(fill, 43) == "Y" and D(get(fill, 32)) == 10
    s.logout()


def test_sequence_number_too_low_without_possdup_ends_the_session(server):
    s = session(server, SequenceStore(None, "DESK", "VENUE"), [])
    s.logon()
    server.new_order("c1", "AAPL", "buy", "10", "10")
    s.sync()
    server.rewind(1)
    server.new_order("c2", "AAPL", "buy", "10", "10")
    with pytest.raises(FixSessionError, match="MsgSeqNum too low"):
        s.sync()
    assert server.wait_received("5")  # we said why before disconnecting
    assert not s.logged_on


def test_resend_request_from_the_acceptor_is_answered_with_a_gap_fill(server, tmp_path):
    store = SequenceStore(tmp_path, "DESK", "VENUE")
    store.next_out = 10  # the acceptor expects 1: it asks for 1..infinity
    store.save()
    s = session(server, store, [])
    s.logon()
    s.sync()
    assert ("4", 1, True) in server.received  # SequenceReset-GapFill with PossDupFlag
    assert server.next_in > 10
    s.logout()


def test_every_wait_is_bounded(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    accepted = []
    t = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
    t.start()
    s = FixSession("127.0.0.1", port, sender="DESK", target="VENUE", store=SequenceStore(None, "DESK", "VENUE"),
                   on_app=lambda m, f: None, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(FixSessionError, match="no Logon answer within 0.5 s"):
        s.logon()
    assert time.monotonic() - started < 3
    listener.close()
    for conn, _ in accepted:
        conn.close()
    with pytest.raises(VenueConnectionError):
        FixSession("127.0.0.1", port, sender="DESK", target="VENUE", store=SequenceStore(None, "DESK", "VENUE"),
                   on_app=lambda m, f: None, timeout=0.5).logon()


def test_a_silent_counterparty_gets_a_test_request_then_the_link_is_declared_lost():
    """HeartBtInt of silence on their side: a TestRequest; unanswered for another interval: lost."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    seen = []

    def acceptor():  # answers the Logon, then reads and says nothing
        conn, _ = listener.accept()
        buf = b""
        conn.settimeout(5)
        try:
            while True:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                buf += chunk
                while True:
                    frame, buf, _ = take_frame(buf)
                    if frame is None:
                        break
                    msg = parse_frame(frame)
                    seen.append(msg.message_type)
                    if msg.message_type == b"A":
                        conn.sendall(encode("A", [(98, 0), (108, 1)], sender="VENUE", target="DESK", seq=1,
                                            sending_time=datetime.now(timezone.utc)))
        except OSError:
            pass
        finally:
            conn.close()

    t = threading.Thread(target=acceptor, daemon=True)
    t.start()
    s = FixSession("127.0.0.1", port, sender="DESK", target="VENUE", store=SequenceStore(None, "DESK", "VENUE"),
                   on_app=lambda m, f: None, heartbeat=1, timeout=5)
    s.logon()
    started = time.monotonic()
    with pytest.raises(FixSessionError, match="no answer to TestRequest"):
        s.wait_for(lambda: False, 10, "anything")
    assert 2 <= time.monotonic() - started < 6
    assert b"1" in seen and not s.logged_on
    t.join(5)
    listener.close()


def test_sequence_reset_without_gap_fill_moves_the_expected_number(server):
    received = []
    s = session(server, SequenceStore(None, "DESK", "VENUE"), received)
    s.logon()
    s.sync()
    server.sequence_reset(50)
    server.new_order("c1", "AAPL", "buy", "10", "10")  # MsgSeqNum 50: in sequence after the reset
    s.sync()
    assert s.store.next_in > 50 and s.stats.resend_requests_sent == 0
    assert [get(m, 34) for m in received] == ["50"]
    s.logout()


def test_a_resent_message_without_orig_sending_time_is_rejected(server):
    received = []
    s = session(server, SequenceStore(None, "DESK", "VENUE"), received)
    s.logon()
    server.resend_without_orig_time = True
    oid = server.new_order("c1", "AAPL", "buy", "10", "10")
    server.drop_next(1)
    server.fill(oid, "10", "10", exec_id="X1")
    server.cancel(oid)
    s.sync()
    assert s.stats.rejects_sent == 2  # the resent fill and cancel: Reject 373=1, numbers consumed
    assert server.wait_received("3", 2)
    assert exec_ids(received) == [received[0].get(17).decode()]  # only the New, received live
    s.logout()
