"""Encrypted backups: a chain restores with its key; a wrong key, no key, a tampered byte, a
truncated or reordered file are refused clearly; keys load from files and the environment and
are never written into the backup."""

from __future__ import annotations

import base64
import os

import pytest
from tests.store.test_backup_chain import _chain, _summary, _target, _trade, url  # noqa: F401 - the fixture

from tradestate.adapters.store import backup as bk
from tradestate.adapters.store import backup_crypto as crypto
from tradestate.adapters.store import digest, open_store

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))


def test_an_encrypted_chain_restores_with_its_key(url, tmp_path):
    files, head, _h1 = _chain(url, tmp_path, key=KEY)
    for f in files:
        raw = f.read_bytes()
        assert raw.startswith(crypto.MAGIC) and b"manifest" not in raw and b"acct-1" not in raw
        assert KEY not in raw and KEY.hex().encode() not in raw
        assert crypto.encrypted_key_id(f) == crypto.key_id(KEY)
    manifest = bk.read_manifest(files[2], key=KEY)
    assert manifest.encrypted and manifest.key_id == crypto.key_id(KEY) and manifest.sequence == 2
    assert bk.verify_chain(files, key=KEY).encrypted
    assert bk.find_chain(tmp_path, key=KEY) == files
    target = _target(url, tmp_path)
    result = bk.restore(target, files, key=KEY)
    assert result.logs["ts_events"]["head"] == head
    assert _summary(target) == _summary(url)
    with open_store(target, create=False) as store:
        assert digest.verify(store).ok


def test_wrong_key_no_key_tampered_truncated(sqlite_url, tmp_path, monkeypatch):
    monkeypatch.setattr(crypto, "CHUNK", 4096)  # small chunks: several of them in a small file
    _trade(sqlite_url, 30, "a")
    path = tmp_path / "b.tsb"
    with open_store(sqlite_url, create=False) as store:
        bk.backup(store, path, key=KEY)
    kid, other = crypto.key_id(KEY), crypto.key_id(OTHER)
    with pytest.raises(bk.BackupKeyError, match=f"key id {kid}, but the key given has id {other}: wrong key"):
        bk.read_manifest(path, key=OTHER)
    with pytest.raises(bk.BackupKeyError, match=f"is encrypted \\(key id {kid}\\): give the key"):
        bk.restore(f"sqlite:///{tmp_path}/t.db", path)
    with pytest.raises(bk.BackupKeyError, match="wrong key"), open_store(sqlite_url, create=False) as store:
        bk.backup(store, tmp_path / "i.tsb", previous=path, key=OTHER)
    raw = path.read_bytes()
    assert len(raw) > 3 * (crypto.CHUNK + crypto.TAG)  # several chunks: the cases below differ

    def refused(data: bytes, match: str) -> None:
        bad = tmp_path / "bad.tsb"
        bad.write_bytes(data)
        with pytest.raises(bk.BackupDamaged, match=match):
            bk.restore(f"sqlite:///{tmp_path}/t.db", bad, key=KEY)
        with pytest.raises(bk.BackupKeyError):
            bk.verify_chain([bad], key=KEY)
        assert not (tmp_path / "t.db").exists()

    h, c = crypto.HEADER_BYTES, 4096 + crypto.TAG
    flipped = bytearray(raw)
    flipped[h + c + 100] ^= 1
    refused(bytes(flipped), "chunk 1 fails authentication: the file was tampered with")
    refused(raw[: h + 2 * c], "truncated")  # cut at a chunk boundary
    refused(raw[:-7], "truncated|fails authentication")  # cut inside the last chunk
    swapped = raw[:h] + raw[h + c: h + 2 * c] + raw[h: h + c] + raw[h + 2 * c:]
    refused(swapped, "chunk 0 fails authentication")
    refused(raw + b"x" * 20, "after the last encrypted chunk|fails authentication")
    header = bytearray(raw)
    header[len(crypto.MAGIC) + 1 + 16] ^= 1  # the nonce prefix: bound by the associated data
    refused(bytes(header), "chunk 0 fails authentication")
    assert bk.restore(f"sqlite:///{tmp_path}/t.db", path, key=KEY).ok


def test_load_key(tmp_path, monkeypatch):
    assert bk.load_key() is None
    (tmp_path / "raw").write_bytes(KEY)
    (tmp_path / "hex").write_text(KEY.hex() + "\n")
    (tmp_path / "b64").write_text(base64.b64encode(KEY).decode())
    for name in ("raw", "hex", "b64"):
        assert bk.load_key(key_file=tmp_path / name) == KEY
    monkeypatch.setenv("TS_TEST_BACKUP_KEY", KEY.hex())
    assert bk.load_key(key_env="TS_TEST_BACKUP_KEY") == KEY
    monkeypatch.setenv("TS_TEST_BACKUP_KEY", "c2hvcnQ=")
    with pytest.raises(bk.BackupKeyError, match="not a backup key"):
        bk.load_key(key_env="TS_TEST_BACKUP_KEY")
    monkeypatch.delenv("TS_TEST_BACKUP_KEY")
    with pytest.raises(bk.BackupKeyError, match="TS_TEST_BACKUP_KEY .* is not set"):
        bk.load_key(key_env="TS_TEST_BACKUP_KEY")
    with pytest.raises(bk.BackupKeyError, match="cannot read"):
        bk.load_key(key_file=tmp_path / "missing")
    with pytest.raises(bk.BackupKeyError, match="either"):
        bk.load_key(key_file=tmp_path / "raw", key_env="X")
    kid = crypto.keygen(tmp_path / "new.key")
    assert os.stat(tmp_path / "new.key").st_mode & 0o777 == 0o600
    assert crypto.key_id(bk.load_key(key_file=tmp_path / "new.key")) == kid
    with pytest.raises(bk.BackupError, match="never overwritten"):
        crypto.keygen(tmp_path / "new.key")
