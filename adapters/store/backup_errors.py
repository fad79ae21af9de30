"""The errors of backups, restores and backup encryption (one module, so that the backup and its
encryption layer share them without importing each other)."""

from __future__ import annotations

from ...domain.errors import TradestateError


class BackupError(TradestateError):
    """A backup could not be written or restored."""


class BackupDamaged(BackupError):
    """The backup file is damaged, truncated, or not a tradestate backup, or a chain of backups
    has a bad or missing link (named in the message): nothing was restored."""


class RestoreRefused(BackupError):
    """The restore would replace an existing log without ``force``, or cannot be done: nothing changed."""


class BackupKeyError(BackupError):
    """No key, a key that is not 32 bytes, the wrong key, or an encrypted file that does not
    decrypt (tampered with or truncated: then also a :class:`BackupDamaged`)."""


class IncrementRefused(BackupError):
    """The live log does not continue the previous backup (restored, rewound or altered since):
    no increment was written; take a full backup."""
