"""Anchors: the digest chain's head, signed and kept outside the database.

The digest chain lives in the database it protects, so whoever holds the database owner's
credentials can disable the triggers, rewrite history and seal the chain again; ``verify`` then
passes. An anchor is the trading log's sealed head (``position``, ``digest``, ``at``) signed with
an ed25519 key that the service does not hold, appended as one JSON line to a file the service
cannot rewrite (another host or account; an append-only file, ``chattr +a``, or WORM storage).
``verify_anchors`` checks every anchor's signature, then that the chain still has, at the anchor's
position, the digest the anchor recorded: a rewrite below an anchored position changes every
digest after it, so the first anchor at or after the rewrite no longer matches.

One line per anchor, UTF-8 JSON with sorted keys::

    {"at": "...Z", "digest": "<hex>", "key": "<hex public key>", "log": "ts_events", "position": 1234,
     "sig": "<hex ed25519 signature of the same object without sig>", "v": 1}
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from ...domain.errors import TradestateError
from . import TRADING_TABLE, Store

VERSION = 1


class AnchorError(TradestateError):
    """An anchor cannot be written or read (no key, nothing sealed, a malformed anchor file)."""


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise AnchorError("anchors need the 'cryptography' package (pip install cryptography)") from e
    return serialization, ed25519


def keygen(private_path: str | os.PathLike[str], public_path: str | os.PathLike[str]) -> str:
    """Write a new ed25519 key pair as PEM files (the private one readable by its owner only,
    never overwritten); returns the public key in hex."""
    serialization, ed25519 = _crypto()
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise AnchorError(f"{private_path} already exists: a signing key is never overwritten") from e
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    Path(public_path).write_bytes(public)
    return _raw_public(key.public_key()).hex()


def _raw_public(public: Any) -> bytes:
    serialization, _ = _crypto()
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _load_private(path: str | os.PathLike[str]) -> Any:
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise AnchorError(f"cannot read the signing key {path}: {e}") from e
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise AnchorError(f"{path} is not an ed25519 private key")
    return key


def _load_public(path: str | os.PathLike[str]) -> Any:
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as e:
        raise AnchorError(f"cannot read the public key {path}: {e}") from e
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise AnchorError(f"{path} is not an ed25519 public key")
    return key


def _signed_bytes(anchor: dict[str, Any]) -> bytes:
    return orjson.dumps({k: v for k, v in anchor.items() if k != "sig"}, option=orjson.OPT_SORT_KEYS)


def chain_head(store: Store, log: str = TRADING_TABLE) -> tuple[int, str]:
    """(last sealed position, its range's digest in hex) of ``log``'s chain; (0, "") if nothing is sealed."""
    from .digest import CHAIN_TABLE, _Backend, _tail

    db = _Backend(store)
    if not db.table_exists(CHAIN_TABLE):
        return 0, ""
    with db.read() as cur:
        end, digest = _tail(db, cur, log)
    return end, digest.hex() if end else ""


def export(store: Store, to: str | os.PathLike[str], key_path: str | os.PathLike[str], *,
           now: datetime | None = None) -> dict[str, Any]:
    """Append the trading log's sealed chain head, signed with the ed25519 key at ``key_path``,
    to ``to`` (opened with O_APPEND: one JSON line, one write). Returns the anchor."""
    key = _load_private(key_path)
    position, digest = chain_head(store)
    if not position:
        raise AnchorError("nothing is sealed yet: seal the chain first (tradestate verify --seal, or anchor export "
                          "--seal)")
    at = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    anchor: dict[str, Any] = {"v": VERSION, "log": TRADING_TABLE, "position": position, "digest": digest,
                              "at": at.isoformat().replace("+00:00", "Z"), "key": _raw_public(key.public_key()).hex()}
    anchor["sig"] = key.sign(_signed_bytes(anchor)).hex()
    line = orjson.dumps(anchor, option=orjson.OPT_SORT_KEYS) + b"\n"
    fd = os.open(to, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)
        if written != len(line):
            raise AnchorError(f"short write to {to}: {written} of {len(line)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)
    return anchor


@dataclass
class AnchorResult:
    """What ``verify_anchors`` found: ``ok``, or the first anchor that no longer matches and why."""

    ok: bool
    anchors: int  # anchors in the file
    checked: int  # anchors checked before the first bad one (all of them when ok)
    first_bad_line: int | None = None
    first_bad_position: int | None = None
    problem: str | None = None  # bad_signature | other_key | malformed | digest_mismatch | not_sealed
    detail: str = ""
    last_anchored_position: int = 0
    findings: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON-ready values."""
        return asdict(self)


def read_anchors(path: str | os.PathLike[str]) -> list[tuple[int, bytes]]:
    """(line number, raw line) of every non-empty line of the anchor file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise AnchorError(f"cannot read the anchor file {path}: {e}") from e
    return [(n, line) for n, line in enumerate(data.split(b"\n"), 1) if line.strip()]


def verify_anchors(store: Store, path: str | os.PathLike[str], public_key: str | os.PathLike[str]) -> AnchorResult:
    """Check each anchor of ``path`` (in file order): its ed25519 signature by ``public_key``, then
    that the trading log's chain has a sealed range ending at the anchored position whose digest
    is the anchored one. Names the first anchor that fails. The chain's own rows are trusted here
    only as far as ``digest.verify`` (which recomputes them from the log) says: run both."""
    from .digest import CHAIN_TABLE, _Backend

    key = _load_public(public_key)
    expected_key = _raw_public(key).hex()
    lines = read_anchors(path)
    db = _Backend(store)
    digests: dict[int, bytes] = {}
    if db.table_exists(CHAIN_TABLE):
        with db.read() as cur:
            cur.execute(f"SELECT range_end, digest FROM {db.name(CHAIN_TABLE)} WHERE log = {db.p}", (TRADING_TABLE,))
            digests = {int(end): bytes(d) for end, d in cur.fetchall()}
    result = AnchorResult(True, len(lines), 0)
    for n, raw in lines:
        try:
            anchor = orjson.loads(raw)
            position = int(anchor["position"])
            digest, sig = str(anchor["digest"]), bytes.fromhex(anchor["sig"])
            log = anchor.get("log", TRADING_TABLE)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            return _bad(result, n, None, "malformed", f"line {n} of {path} is not an anchor ({e})")
        if anchor.get("key") != expected_key:
            return _bad(result, n, position, "other_key", f"the anchor on line {n} (position {position}) was not "
                        "signed with this public key")
        try:
            key.verify(sig, _signed_bytes(anchor))
        except Exception:  # cryptography's InvalidSignature
            return _bad(result, n, position, "bad_signature", f"the anchor on line {n} (position {position}) has an "
                        "invalid signature: the anchor file was altered")
        if log != TRADING_TABLE:
            return _bad(result, n, position, "malformed", f"the anchor on line {n} is of log {log!r}")
        stored = digests.get(position)
        if stored is None:
            return _bad(result, n, position, "not_sealed",
                        f"the anchor on line {n} covers position {position}, but the chain has no sealed range "
                        f"ending there: the chain was rebuilt or the log lost events")
        if stored.hex() != digest:
            return _bad(result, n, position, "digest_mismatch",
                        f"the anchor on line {n} (signed at {anchor.get('at')}) recorded digest {digest[:16]}... at "
                        f"position {position}; the chain now has {stored.hex()[:16]}...: the log up to position "
                        f"{position} was rewritten and the chain re-sealed")
        result.checked += 1
        result.last_anchored_position = max(result.last_anchored_position, position)
    result.detail = (f"{result.checked} anchors match the chain (last anchored position "
                     f"{result.last_anchored_position})" if lines else "the anchor file holds no anchor")
    return result


def _bad(result: AnchorResult, line: int, position: int | None, problem: str, detail: str) -> AnchorResult:
    result.ok = False
    result.first_bad_line = line
    result.first_bad_position = position
    result.problem = problem
    result.detail = detail
    return result


__all__ = ["AnchorError", "AnchorResult", "chain_head", "export", "keygen", "read_anchors", "verify_anchors"]
