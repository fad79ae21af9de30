"""A minimal FIX 4.4 initiator session over TCP: framing, checksums, sequence numbers, recovery.

``simplefix`` encodes and parses messages; it "does no socket handling, and does not implement FIX
recovery or any message persistence", so this module is the session layer, written from the FIX
4.4 specification, Volume 2 (Session Protocol) and the tag dictionary (quickfix ``spec/FIX44.xml``):

* Framing: ``8=FIX.4.4|9=BodyLength|...|10=CheckSum|``. BodyLength counts the bytes after the
  ``9=`` field up to and including the SOH before ``10=``; CheckSum is the sum of every byte before
  ``10=`` modulo 256, three digits. A frame whose BodyLength does not land on ``10=`` or whose
  checksum is wrong is *garbled*: the spec says to ignore it without consuming its MsgSeqNum, so
  the next message opens a gap and recovery asks for it again.
* Logon ``35=A`` (EncryptMethod 98=0, HeartBtInt 108, optional ResetSeqNumFlag 141), answered by
  the acceptor's Logon. Heartbeat ``35=0`` after HeartBtInt seconds of silence on our side; after
  HeartBtInt (+20 %) of silence on theirs, a TestRequest ``35=1`` (TestReqID 112), which must be
  answered by a Heartbeat echoing 112 within another interval, else the link is declared lost.
* MsgSeqNum (34) per direction, persisted per session (``SequenceStore``). An incoming number
  above the expected one is a gap: one ResendRequest ``35=2`` (BeginSeqNo 7 = expected, EndSeqNo
  16 = 0 "through infinity"); messages past the gap are dropped until the resend fills it (the
  resend covers them). SequenceReset ``35=4`` with GapFillFlag 123=Y moves the expected number to
  NewSeqNo 36 (the admin messages it stands for are never resent); without 123 it is a reset that
  ignores 34. A number below the expected one with PossDupFlag 43=Y is a duplicate and ignored;
  without 43=Y it is a fatal error (Logout with the reason, then disconnect). A PossDup message
  in sequence without OrigSendingTime 122 (or with one later than SendingTime 52) is rejected
  (35=3, SessionRejectReason 373 = 1 or 10) and its number consumed, as the spec says.
* A ResendRequest from the acceptor is answered with one SequenceReset-GapFill over the range:
  this session only sends admin messages and queries whose answers would be stale (the spec lets
  a sender gap-fill rather than resend such messages).
* Logout ``35=5`` in both directions, waiting (bounded) for the counterpart's Logout.

Every wait is bounded by a deadline; the socket is read with a short timeout so heartbeats run.
Application messages are passed to ``on_app`` in sequence order, exactly once per MsgSeqNum
(idempotency across sessions, e.g. a resend after a sequence reset, is the application's job:
the drop-copy book dedupes by ExecID).
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import simplefix

from .base import VenueConnectionError, VenueError

BEGIN_STRING = b"FIX.4.4"
SOH = b"\x01"
MAX_BODY_LENGTH = 1 << 20  # a larger BodyLength is garbage, not a message
ADMIN_TYPES = frozenset({b"0", b"1", b"2", b"3", b"4", b"5", b"A"})


class FixError(VenueError):
    """A FIX session error (the message says which session and what went wrong)."""


class FixGarbled(FixError):
    """A frame whose BodyLength or CheckSum is wrong: ignored, its sequence number not consumed."""


class FixSessionError(FixError):
    """The session cannot continue: logon refused, sequence number too low, link lost, timeout."""


def checksum(data: bytes) -> bytes:
    """CheckSum (10): the byte sum modulo 256 as three ASCII digits."""
    return b"%03d" % (sum(data) % 256)


def utc_timestamp(at: datetime) -> str:
    """UTCTimestamp as FIX 4.4 writes it: YYYYMMDD-HH:MM:SS.sss."""
    return at.astimezone(timezone.utc).strftime("%Y%m%d-%H:%M:%S.") + f"{at.microsecond // 1000:03d}"


def parse_utc_timestamp(value: bytes | str | None) -> datetime | None:
    """A UTCTimestamp (with or without milliseconds/microseconds); None when absent or malformed."""
    if not value:
        return None
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    for fmt in ("%Y%m%d-%H:%M:%S.%f", "%Y%m%d-%H:%M:%S"):
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
    return None


def take_frame(buf: bytes) -> tuple[bytes | None, bytes, int]:
    """Cut the first complete frame off ``buf``: ``(frame, rest, garbled)``. ``frame`` is None when
    more bytes are needed. Garbled frames (wrong BodyLength or CheckSum) and junk before a
    BeginString are dropped and counted in ``garbled``; the scan resumes at the next ``8=FIX.4.4``."""
    garbled = 0
    start_tag = b"8=" + BEGIN_STRING + SOH
    while True:
        start = buf.find(start_tag)
        if start < 0:
            # keep a tail that could be the beginning of a BeginString
            return None, buf[-(len(start_tag) - 1):] if buf else buf, garbled
        buf = buf[start:]
        pos = len(start_tag)
        if len(buf) < pos + 3:
            return None, buf, garbled
        end_of_length = buf.find(SOH, pos)
        if end_of_length < 0:
            if len(buf) - pos > 12:  # "9=" and at most 7 digits
                garbled += 1
                buf = buf[1:]
                continue
            return None, buf, garbled
        field = buf[pos:end_of_length]
        if not field.startswith(b"9=") or not field[2:].isdigit() or int(field[2:]) > MAX_BODY_LENGTH:
            garbled += 1
            buf = buf[1:]
            continue
        body_end = end_of_length + 1 + int(field[2:])
        if len(buf) < body_end + 7:  # "10=" + 3 digits + SOH
            # A BodyLength too large would hold up the messages behind it until more bytes come:
            # a BeginString inside the claimed body means this frame ended before it.
            if buf.find(SOH + start_tag, pos) >= 0:
                garbled += 1
                buf = buf[1:]
                continue
            return None, buf, garbled
        trailer = buf[body_end:body_end + 7]
        if not (trailer.startswith(b"10=") and trailer.endswith(SOH)) or trailer[3:6] != checksum(buf[:body_end]):
            garbled += 1
            buf = buf[1:]
            continue
        return buf[:body_end + 7], buf[body_end + 7:], garbled


def parse_frame(frame: bytes) -> simplefix.FixMessage:
    """A checked frame as a ``simplefix.FixMessage``."""
    parser = simplefix.FixParser()
    parser.append_buffer(frame)
    msg = parser.get_message()
    if msg is None:  # take_frame checked it: cannot happen
        raise FixGarbled(f"unparseable frame {frame[:60]!r}")
    return msg


def encode(msg_type: bytes | str, fields: list[tuple[int, Any]], *, sender: str, target: str, seq: int,
           sending_time: datetime, header: list[tuple[int, Any]] = ()) -> bytes:
    """One message: the standard header (8, 9, 35, 49, 56, 34, 52 and ``header``), the body,
    and simplefix's BodyLength and CheckSum."""
    msg = simplefix.FixMessage()
    msg.append_pair(8, BEGIN_STRING, header=True)
    msg.append_pair(35, msg_type, header=True)
    msg.append_pair(49, sender, header=True)
    msg.append_pair(56, target, header=True)
    msg.append_pair(34, seq, header=True)
    msg.append_pair(52, utc_timestamp(sending_time), header=True)
    for tag, value in header:
        msg.append_pair(tag, value, header=True)
    for tag, value in fields:
        msg.append_pair(tag, value)
    return msg.encode()


def get(msg: simplefix.FixMessage, tag: int) -> str | None:
    """A field's value as text (None when absent)."""
    value = msg.get(tag)
    return None if value is None else value.decode("latin-1")


class SequenceStore:
    """The session's next outgoing and next expected incoming MsgSeqNum, and the application
    messages received, kept per session (SenderCompID, TargetCompID). With ``directory`` None the
    store lives in memory (one connection's worth); otherwise ``<sender>-<target>.seqnums`` is
    replaced atomically after every change and ``.messages`` is an append-only journal, so a
    reconnect resumes where the last session stopped and the book can be rebuilt from the journal."""

    def __init__(self, directory: str | Path | None, sender: str, target: str) -> None:
        self.next_out = 1
        self.next_in = 1
        self._messages: list[bytes] = []
        self._seq_path = self._journal_path = None
        if directory is not None:
            base = Path(directory)
            base.mkdir(parents=True, exist_ok=True)
            name = f"{_safe(sender)}-{_safe(target)}"
            self._seq_path = base / f"{name}.seqnums"
            self._journal_path = base / f"{name}.messages"
            if self._seq_path.exists():
                data = json.loads(self._seq_path.read_text())
                self.next_out, self.next_in = int(data["next_out"]), int(data["next_in"])

    def save(self) -> None:
        if self._seq_path is None:
            return
        tmp = self._seq_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"next_out": self.next_out, "next_in": self.next_in}))
        os.replace(tmp, self._seq_path)

    def record(self, frame: bytes) -> None:
        """Journal one application message (before its sequence number is saved as consumed)."""
        if self._journal_path is None:
            self._messages.append(frame)
            return
        with open(self._journal_path, "ab") as f:
            f.write(json.dumps({"raw": frame.decode("latin-1")}).encode() + b"\n")

    def messages(self) -> list[bytes]:
        """Every application message journalled, oldest first."""
        if self._journal_path is None:
            return list(self._messages)
        if not self._journal_path.exists():
            return []
        out = []
        for line in self._journal_path.read_bytes().splitlines():
            if line.strip():
                out.append(json.loads(line)["raw"].encode("latin-1"))
        return out

    def reset(self) -> None:
        """Sequence numbers back to 1 (ResetSeqNumFlag): the journal is kept."""
        self.next_out = self.next_in = 1
        self.save()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


@dataclass
class SessionStats:
    """What the session saw: for tests, logs and the adapter's report."""

    garbled: int = 0
    resend_requests_sent: int = 0
    gap_fills: int = 0
    duplicates_ignored: int = 0
    test_requests_sent: int = 0
    heartbeats_sent: int = 0
    rejects: int = 0  # Reject (35=3) received
    rejects_sent: int = 0


class FixSession:
    """One initiator session (see the module docstring). Single-threaded: the caller drives it with
    ``logon``, ``send``, ``wait_for``/``sync`` and ``logout``; every call returns or raises within
    its timeout. ``on_app(msg, frame)`` receives application messages in sequence order."""

    def __init__(self, host: str, port: int, *, sender: str, target: str, store: SequenceStore,
                 on_app: Callable[[simplefix.FixMessage, bytes], None], heartbeat: int = 30,
                 timeout: float = 10.0, reset_seq_nums: bool = False,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        if not 0 < heartbeat <= 3600:
            raise ValueError(f"fix: heartbeat must be 1..3600 seconds, got {heartbeat!r}")
        if not 0 < timeout <= 3600:
            raise ValueError(f"fix: timeout must be a positive number of seconds, got {timeout!r}")
        self.host, self.port = host, port
        self.sender, self.target = sender, target
        self.store = store
        self.on_app = on_app
        self.heartbeat = heartbeat
        self.timeout = float(timeout)
        self.reset_seq_nums = reset_seq_nums
        self.clock = clock
        self.stats = SessionStats()
        self.logged_on = False
        self._sock: socket.socket | None = None
        self._buf = b""
        self._last_sent = self._last_received = time.monotonic()
        self._resend_until: int | None = None  # a ResendRequest is outstanding up to this seq
        self._pending_test: tuple[str, float] | None = None  # (TestReqID, when sent)
        self._heartbeats_seen: set[str] = set()
        self._logout_received = False
        self._logout_sent = False
        self.logout_text: str | None = None  # the counterparty's Logout Text (58), when it sent one
        self._test_ids = itertools.count(1)

    # ------------------------------------------------------------------------ wire
    def _where(self) -> str:
        return f"fix {self.sender}->{self.target} at {self.host}:{self.port}"

    def send(self, msg_type: str, fields: list[tuple[int, Any]] = (), header: list[tuple[int, Any]] = (),
             *, seq: int | None = None) -> int:
        """Send one message with the next outgoing MsgSeqNum (persisted first, so a crash never
        reuses a number); returns the number used."""
        if self._sock is None:
            raise FixSessionError(f"{self._where()}: not connected")
        if seq is None:
            seq = self.store.next_out
            self.store.next_out += 1
            self.store.save()
        data = encode(msg_type, list(fields), sender=self.sender, target=self.target, seq=seq,
                      sending_time=self.clock(), header=list(header))
        try:
            self._sock.sendall(data)
        except OSError as e:
            self._drop()
            raise VenueConnectionError(f"{self._where()}: send failed: {e}") from None
        self._last_sent = time.monotonic()
        return seq

    def _drop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._sock = None
        self.logged_on = False

    def close(self) -> None:
        """Close the socket (no Logout: use ``logout`` for an orderly end)."""
        self._drop()

    def _read_once(self, until: float) -> bool:
        """Read what is there (waiting at most until ``until`` or 0.2 s); process whole frames.
        False when the peer closed the connection."""
        assert self._sock is not None
        self._sock.settimeout(max(0.001, min(0.2, until - time.monotonic())))
        try:
            chunk = self._sock.recv(65536)
        except (socket.timeout, BlockingIOError):
            return True
        except OSError as e:
            self._drop()
            raise VenueConnectionError(f"{self._where()}: receive failed: {e}") from None
        if not chunk:
            return False
        self._buf += chunk
        while self._sock is not None:
            frame, self._buf, garbled = take_frame(self._buf)
            self.stats.garbled += garbled
            if frame is None:
                break
            self._last_received = time.monotonic()
            self._handle(frame)
        return True

    def _tick(self) -> None:
        """Heartbeat on our silence; TestRequest on theirs; link lost when that goes unanswered."""
        now = time.monotonic()
        if not self.logged_on:
            return
        if now - self._last_sent >= self.heartbeat:
            self.send("0")
            self.stats.heartbeats_sent += 1
        silent = now - self._last_received
        if self._pending_test is None and silent >= self.heartbeat * 1.2:
            self.test_request()
        elif self._pending_test is not None and now - self._pending_test[1] >= self.heartbeat * 1.2 \
                and silent >= self.heartbeat * 1.2:
            self._drop()
            raise FixSessionError(f"{self._where()}: no answer to TestRequest {self._pending_test[0]}: link lost")

    def test_request(self) -> str:
        """Send a TestRequest (35=1) and return its TestReqID."""
        test_id = f"TEST-{int(time.time() * 1000)}-{next(self._test_ids)}"
        self.send("1", [(112, test_id)])
        self._pending_test = (test_id, time.monotonic())
        self.stats.test_requests_sent += 1
        return test_id

    def wait_for(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Pump the connection until ``done()`` or raise ``FixSessionError`` after ``timeout``."""
        until = time.monotonic() + timeout
        while not done():
            if self._sock is None:
                said = f" (their Logout: {self.logout_text})" if self.logout_text else ""
                raise FixSessionError(f"{self._where()}: disconnected while waiting for {what}{said}")
            if time.monotonic() >= until:
                raise FixSessionError(f"{self._where()}: no {what} within {timeout:g} s")
            if not self._read_once(until):
                self._drop()
                if done():
                    return
                said = f" (their Logout: {self.logout_text})" if self.logout_text else ""
                raise FixSessionError(f"{self._where()}: the counterparty closed the connection "
                                      f"while we waited for {what}{said}")
            self._tick()

    # ------------------------------------------------------------------ lifecycle
    def logon(self) -> None:
        """Connect, send Logon, and wait for the acceptor's Logon (within ``timeout``)."""
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as e:
            raise VenueConnectionError(f"{self._where()}: cannot connect: {e}") from None
        self._buf = b""
        fields: list[tuple[int, Any]] = [(98, 0), (108, self.heartbeat)]
        if self.reset_seq_nums:
            self.store.reset()
            fields.append((141, "Y"))
        self.send("A", fields)
        try:
            self.wait_for(lambda: self.logged_on, self.timeout, "Logon answer")
        except FixSessionError:
            self._drop()
            raise

    def sync(self, timeout: float | None = None) -> None:
        """Wait until every message the counterparty sent before now has been processed: no gap
        outstanding, and a Heartbeat answering a fresh TestRequest (the acceptor answers in order,
        so everything sent before it has arrived)."""
        timeout = self.timeout if timeout is None else timeout
        until = time.monotonic() + timeout
        self.wait_for(lambda: self._resend_until is None, timeout, "the end of the resend")
        test_id = self.test_request()
        self.wait_for(lambda: test_id in self._heartbeats_seen and self._resend_until is None,
                      max(0.001, until - time.monotonic()), f"Heartbeat for TestRequest {test_id}")

    def logout(self, text: str = "") -> None:
        """Send Logout and wait (bounded) for the counterparty's, then close."""
        if self._sock is None:
            return
        try:
            if not self._logout_received:
                self.send("5", [(58, text)] if text else [])
                self._logout_sent = True
                self.wait_for(lambda: self._logout_received, min(self.timeout, 5.0), "Logout answer")
        except VenueError:
            pass  # closing anyway: the counterparty may already be gone
        finally:
            self._drop()

    # ----------------------------------------------------------------- incoming
    def _handle(self, frame: bytes) -> None:
        msg = parse_frame(frame)
        msg_type = msg.message_type
        seq_text = get(msg, 34)
        if seq_text is None or not seq_text.isdigit():
            self.stats.rejects += 1
            self._fatal(f"message without a valid MsgSeqNum (34): {seq_text!r}")
            return
        seq = int(seq_text)
        if get(msg, 49) != self.target or get(msg, 56) != self.sender:
            self._fatal(f"CompIDs {get(msg, 49)!r}->{get(msg, 56)!r} do not match the session")
            return
        poss_dup = get(msg, 43) == "Y"
        if msg_type == b"5":
            self.logout_text = get(msg, 58) or ""

        if msg_type == b"A":
            if get(msg, 141) == "Y":  # the acceptor resets both directions (spec: ResetSeqNumFlag)
                self.store.next_in = 1
                self.store.save()
            self.logged_on = True
        if msg_type == b"4" and get(msg, 123) != "Y":  # SequenceReset-Reset: MsgSeqNum is ignored
            new_seq = int(get(msg, 36) or 0)
            if new_seq > self.store.next_in:
                self.store.next_in = new_seq
                self.store.save()
            self._resend_done()
            return

        expected = self.store.next_in
        if seq < expected:
            if poss_dup:
                self.stats.duplicates_ignored += 1
                return
            if msg_type == b"5":
                self._logout_received = True
            self._fatal(f"MsgSeqNum too low, expecting {expected} but received {seq}")
            return
        if seq > expected:
            if self._resend_until is None:
                self._resend_until = seq
                self.send("2", [(7, expected), (16, 0)])
                self.stats.resend_requests_sent += 1
            else:
                self._resend_until = max(self._resend_until, seq)
            # The resend covers this message; only session-level facts are taken now.
            if msg_type == b"0" and get(msg, 112):  # resent as a GapFill: its TestReqID counts now
                self._saw_heartbeat(get(msg, 112) or "")
            elif msg_type == b"5":
                self._logout_received = True
                self._drop()
            elif msg_type == b"1":
                self.send("0", [(112, get(msg, 112) or "")])
            elif msg_type == b"2":  # answered at once, as the spec asks, even out of sequence
                self._answer_resend(int(get(msg, 7) or 1), int(get(msg, 16) or 0))
            return

        # in sequence
        if poss_dup and msg_type != b"4" and not self._orig_sending_time_ok(msg, seq):
            return
        if msg_type == b"4":  # SequenceReset-GapFill
            new_seq = int(get(msg, 36) or 0)
            if new_seq <= seq:
                self._fatal(f"SequenceReset-GapFill NewSeqNo {new_seq} is not above MsgSeqNum {seq}")
                return
            self.store.next_in = new_seq
            self.store.save()
            self.stats.gap_fills += 1
            self._resend_check()
            return
        if msg_type not in ADMIN_TYPES:
            self.store.record(frame)  # journalled before the number is consumed: never lost
        self.store.next_in = seq + 1
        self.store.save()
        self._resend_check()
        if msg_type == b"0":
            test_id = get(msg, 112)
            if test_id:
                self._saw_heartbeat(test_id)
        elif msg_type == b"1":
            self.send("0", [(112, get(msg, 112) or "")])
        elif msg_type == b"2":
            self._answer_resend(int(get(msg, 7) or 1), int(get(msg, 16) or 0))
        elif msg_type == b"3":
            self.stats.rejects += 1
        elif msg_type == b"5":
            self._logout_received = True
            if self._sock is not None and not self._logout_sent:  # their Logout: confirm it
                try:
                    self.send("5")
                except VenueError:
                    pass
            self._drop()
        elif msg_type not in ADMIN_TYPES:
            self.on_app(msg, frame)

    def _orig_sending_time_ok(self, msg: simplefix.FixMessage, seq: int) -> bool:
        """A PossDup message must carry OrigSendingTime (122) no later than its SendingTime (52);
        otherwise the spec's Reject (SessionRejectReason 1 "required tag missing" or 10 "SendingTime
        accuracy problem"), and the MsgSeqNum is consumed without processing the message."""
        orig, sent = parse_utc_timestamp(get(msg, 122)), parse_utc_timestamp(get(msg, 52))
        if orig is not None and (sent is None or orig <= sent):
            return True
        reason, text = (1, "OrigSendingTime (122) missing") if orig is None else \
            (10, "OrigSendingTime is later than SendingTime")
        self.send("3", [(45, seq), (371, 122), (372, msg.message_type.decode()), (373, reason), (58, text)])
        self.stats.rejects_sent += 1
        self.store.next_in = seq + 1
        self.store.save()
        self._resend_check()
        return False

    def _saw_heartbeat(self, test_id: str) -> None:
        self._heartbeats_seen.add(test_id)
        if self._pending_test and self._pending_test[0] == test_id:
            self._pending_test = None

    def _resend_check(self) -> None:
        if self._resend_until is not None and self.store.next_in > self._resend_until:
            self._resend_done()

    def _resend_done(self) -> None:
        self._resend_until = None

    def _answer_resend(self, begin: int, end: int) -> None:
        """Gap-fill the whole range: we send only admin messages and queries (see module docstring)."""
        new_seq = self.store.next_out
        if begin >= new_seq:
            return
        self.send("4", [(123, "Y"), (36, new_seq)], header=[(43, "Y"), (122, utc_timestamp(self.clock()))],
                  seq=begin)

    def _fatal(self, reason: str) -> None:
        """A violation the session cannot recover from: Logout with the reason, then disconnect."""
        try:
            if self._sock is not None:
                self.send("5", [(58, reason)])
        except VenueError:
            pass
        self._drop()
        raise FixSessionError(f"{self._where()}: {reason}")


__all__ = [
    "FixError",
    "FixGarbled",
    "FixSession",
    "FixSessionError",
    "SequenceStore",
    "checksum",
    "encode",
    "get",
    "parse_frame",
    "parse_utc_timestamp",
    "take_frame",
    "utc_timestamp",
]
