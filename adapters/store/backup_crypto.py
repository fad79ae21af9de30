"""Encryption at rest of backup files: AES-256-GCM in the STREAM construction, with keys kept apart.

An encrypted backup is the plain backup file (the tar) encrypted as a whole, in chunks::

    header  = b"TSBKENC1"  version (1 byte)  key id (16 bytes)  nonce prefix (7 random bytes)  chunk size (>I)
    chunk i = AES-256-GCM(key, nonce = prefix || >I i || last flag (0 or 1), plaintext, aad = header)

Every chunk but the last holds exactly ``chunk size`` plaintext bytes; the last (possibly empty)
has the flag 1. The counter in the nonce makes a reordered or repeated chunk fail its tag, the flag
makes a file cut at a chunk boundary fail (no last chunk), and the header as associated data binds
the key id, prefix and chunk size. The key id is the first 16 hex digits of a SHA-256 of the key
(a fingerprint: it tells which key is needed, it reveals nothing of the key). The key is never
written into the backup: it comes from a file or an environment variable (:func:`load_key`), as 32
raw bytes, 64 hex digits or base64 text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import secrets
import struct
from pathlib import Path
from typing import Any, BinaryIO

from .backup_errors import BackupDamaged, BackupError, BackupKeyError

MAGIC = b"TSBKENC1"
VERSION = 1
KEY_BYTES = 32
CHUNK = 1 << 16  # plaintext bytes per chunk
TAG = 16
_HEADER = struct.Struct(">8sB16s7sI")
HEADER_BYTES = _HEADER.size


class EncryptedDamaged(BackupKeyError, BackupDamaged):
    """An encrypted backup that does not decrypt with its own key: tampered with, truncated or
    reordered (both a key error and a damaged backup, so either handler refuses it)."""


def key_id(key: bytes) -> str:
    """The key's fingerprint written in the header (16 hex digits; reveals nothing of the key)."""
    return hashlib.sha256(b"tradestate-backup-key\0" + key).hexdigest()[:16]


def _check_key(key: Any) -> bytes:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        n = len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__
        raise BackupKeyError(f"a backup key is {KEY_BYTES} bytes, got {n}")
    return bytes(key)


def _parse_key(data: bytes, where: str) -> bytes:
    if len(data) == KEY_BYTES:
        return data
    text = data.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            pass
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            raw = decode(text + b"=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            continue
        if len(raw) == KEY_BYTES:
            return raw
    raise BackupKeyError(f"the key in {where} is not a backup key: give {KEY_BYTES} raw bytes, {2 * KEY_BYTES} hex "
                         "digits or base64 of 32 bytes (tradestate backup keygen --to FILE makes one)")


def load_key(key_file: str | os.PathLike[str] | None = None, key_env: str | None = None) -> bytes | None:
    """The backup key from ``key_file`` or from the environment variable ``key_env`` (None when
    neither is given). Raises :class:`BackupKeyError` for a missing file or variable or a key that
    is not 32 bytes."""
    if key_file is not None and key_env is not None:
        raise BackupKeyError("give the backup key either from a file or from an environment variable, not both")
    if key_file is not None:
        path = Path(key_file).expanduser()
        try:
            data = path.read_bytes()
        except OSError as e:
            raise BackupKeyError(f"cannot read the backup key file {path}: {e.strerror or e}") from e
        return _parse_key(data, str(path))
    if key_env is not None:
        value = os.environ.get(key_env, "")
        if not value.strip():
            raise BackupKeyError(f"the environment variable {key_env} (the backup key) is not set")
        return _parse_key(value.encode(), f"${key_env}")
    return None


def keygen(path: str | os.PathLike[str]) -> str:
    """Write a new random key as 64 hex digits to ``path`` (mode 0600, never overwritten); returns
    its key id."""
    key = secrets.token_bytes(KEY_BYTES)
    try:
        fd = os.open(Path(path).expanduser(), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise BackupError(f"{path} already exists: a backup key is never overwritten") from e
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return key_id(key)


def is_encrypted(path: str | os.PathLike[str]) -> bool:
    """Whether the file at ``path`` starts like an encrypted backup."""
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def encrypted_key_id(path: str | os.PathLike[str]) -> str | None:
    """The key id in an encrypted backup's header (None when the file is not encrypted)."""
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES or not head.startswith(MAGIC):
        return None
    return _HEADER.unpack(head)[2].decode("ascii", "replace")


def _aead(key: bytes) -> Any:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    if counter >= 1 << 32:
        raise BackupError("backup too large for one encrypted stream (2^32 chunks)")
    return prefix + counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


class EncryptingWriter(io.RawIOBase):
    """A write-only file that encrypts what is written to it into ``sink`` (see module doc);
    ``close()`` writes the last chunk. ``tell()`` counts plaintext bytes (for ``tarfile``)."""

    def __init__(self, sink: BinaryIO, key: bytes):
        key = _check_key(key)
        self._sink, self._aead = sink, _aead(key)
        self._prefix = secrets.token_bytes(7)
        self._header = _HEADER.pack(MAGIC, VERSION, key_id(key).encode("ascii"), self._prefix, CHUNK)
        sink.write(self._header)
        self._buf = bytearray()
        self._counter = 0
        self._n = 0
        self._finished = False

    def writable(self) -> bool:
        """Always True."""
        return True

    def tell(self) -> int:
        """Plaintext bytes written so far."""
        return self._n

    def write(self, b: Any) -> int:
        """Buffer ``b``, encrypting every full chunk but the newest (it may turn out to be the last)."""
        self._buf += b
        self._n += len(b)
        while len(self._buf) > CHUNK:
            self._emit(bytes(self._buf[:CHUNK]), last=False)
            del self._buf[:CHUNK]
        return len(b)

    def _emit(self, plain: bytes, *, last: bool) -> None:
        self._sink.write(self._aead.encrypt(_nonce(self._prefix, self._counter, last), plain, self._header))
        self._counter += 1

    def finish(self) -> None:
        """Write the last chunk (once); the sink stays open."""
        if not self._finished:
            self._finished = True
            self._emit(bytes(self._buf), last=True)
            self._buf.clear()

    def close(self) -> None:
        """``finish()`` then close this writer (not the sink)."""
        if not self.closed:
            self.finish()
        super().close()


class DecryptingReader(io.RawIOBase):
    """A read-only file of the plaintext of an encrypted backup read from ``source``; every chunk
    is authenticated before a byte of it is returned, and the end of the file must be the last
    chunk (a truncated file is refused)."""

    def __init__(self, source: BinaryIO, key: bytes | None, path: Any):
        self._src, self._path = source, path
        header = source.read(HEADER_BYTES)
        if len(header) < HEADER_BYTES or not header.startswith(MAGIC):
            raise BackupDamaged(f"{path}: not an encrypted tradestate backup (bad header)")
        _magic, version, kid, prefix, chunk = _HEADER.unpack(header)
        wanted = kid.decode("ascii", "replace")
        if version != VERSION:
            raise BackupError(f"{path} is encrypted with format version {version}; this version reads {VERSION}")
        if key is None:
            raise BackupKeyError(f"{path} is encrypted (key id {wanted}): give the key with --key-file or --key-env")
        key = _check_key(key)
        if key_id(key) != wanted:
            raise BackupKeyError(f"{path} is encrypted with key id {wanted}, but the key given has id {key_id(key)}: "
                                 "wrong key")
        if not 0 < chunk <= 1 << 26:
            raise EncryptedDamaged(f"{path}: the encryption header is damaged (chunk size {chunk})")
        self._aead, self._prefix, self._header, self._chunk = _aead(key), prefix, header, chunk
        self._counter = 0
        self._plain = b""
        self._pos = 0
        self._done = False

    def readable(self) -> bool:
        """Always True."""
        return True

    def _next_chunk(self) -> None:
        from cryptography.exceptions import InvalidTag

        data = self._src.read(self._chunk + TAG)
        n = self._counter
        if not data:
            raise EncryptedDamaged(f"{self._path}: the encrypted file is truncated (it ends after chunk {n - 1}, "
                                   "before its last chunk)")
        full = len(data) == self._chunk + TAG
        for last in ((False, True) if full else (True,)):
            try:
                self._plain = self._aead.decrypt(_nonce(self._prefix, n, last), data, self._header)
            except InvalidTag:
                continue
            self._pos, self._counter, self._done = 0, n + 1, last
            if last and self._src.read(1):
                raise EncryptedDamaged(f"{self._path}: data after the last encrypted chunk (the file was altered)")
            return
        if not full:
            try:
                self._aead.decrypt(_nonce(self._prefix, n, False), data, self._header)
            except InvalidTag:
                pass
            else:
                raise EncryptedDamaged(f"{self._path}: the encrypted file is truncated (chunk {n} is not the last)")
        raise EncryptedDamaged(f"{self._path}: encrypted chunk {n} fails authentication: the file was tampered with, "
                               "truncated or reordered")

    def readinto(self, b: Any) -> int:
        """Fill ``b`` with authenticated plaintext; 0 at the (authenticated) end."""
        while self._pos >= len(self._plain):
            if self._done:
                return 0
            self._next_chunk()
        n = min(len(b), len(self._plain) - self._pos)
        b[:n] = self._plain[self._pos:self._pos + n]
        self._pos += n
        return n

    def drain(self) -> None:
        """Read (and authenticate) to the end of the file."""
        while not self._done:
            self._next_chunk()


__all__ = ["DecryptingReader", "EncryptedDamaged", "EncryptingWriter", "encrypted_key_id", "is_encrypted", "key_id",
           "keygen", "load_key"]
