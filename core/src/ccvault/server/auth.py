"""API keys: each bound to one tenant and a set of scopes, stored hashed in a SQLite file.

A token looks like ``ccv_<key id>_<secret>``: the key id (12 hex characters) finds the row,
the secret (32 random bytes, URL-safe base64) is checked against its SHA-256 with a
constant-time comparison. Only the hash is stored; the token is shown once, at creation.
A high-entropy random secret needs no slow hash (nothing to brute-force), so every request
pays one SHA-256 and one primary-key lookup.

The file (``[server] api_keys_path``, default ``.ccvault/api-keys.db``) is created with mode
0600. The server reads it on every request, so a key created or revoked with
``ccvault apikey`` takes effect at once, without a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from ccvault import errors

__all__ = [
    "SCOPES",
    "ApiKey",
    "ApiKeyStore",
    "parse_scopes",
]

#: read: every read; write: every write; pii:read: PII values unmasked and export;
#: admin: erasure (purge, hard delete) and operator sweeps.
SCOPES: tuple[str, ...] = ("read", "write", "pii:read", "admin")

_TOKEN = re.compile(r"^ccv_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    scopes TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    revoked_at TEXT
)
"""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One key as stored (never the token itself)."""

    key_id: str
    tenant_id: UUID
    scopes: frozenset[str]
    name: str
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def parse_scopes(value: str | Iterable[str]) -> frozenset[str]:
    """``"read,write"`` (or an iterable of names) as a set of known scopes."""
    names = value.split(",") if isinstance(value, str) else list(value)
    scopes = frozenset(name.strip() for name in names if name.strip())
    unknown = sorted(scopes - set(SCOPES))
    if unknown:
        raise errors.ValidationError(f"unknown scope(s) {unknown}; known: {list(SCOPES)}")
    if not scopes:
        raise errors.ValidationError(f"at least one scope is needed; known: {list(SCOPES)}")
    return scopes


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _row(row: tuple[str, str, str, str, str, str | None]) -> ApiKey:
    key_id, tenant, scopes, name, created, revoked = row
    return ApiKey(
        key_id=key_id,
        tenant_id=UUID(tenant),
        scopes=frozenset(s for s in scopes.split(",") if s),
        name=name,
        created_at=datetime.fromisoformat(created),
        revoked_at=datetime.fromisoformat(revoked) if revoked else None,
    )


class ApiKeyStore:
    """The key file. Thread-safe; each call is one short SQLite transaction."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            if str(self.path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # create the file 0600 before SQLite opens it, so it is never world-readable
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                os.close(fd)
                os.chmod(self.path, 0o600)
            try:
                conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                conn.execute("PRAGMA busy_timeout = 5000")
                conn.execute(_SCHEMA)
            except sqlite3.DatabaseError as exc:
                raise errors.ConfigurationError(
                    f"server.api_keys_path: {self.path} is not a usable key file ({exc})"
                ) from None
            self._conn = conn
        return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def create(
        self, tenant_id: UUID, scopes: str | Iterable[str], *, name: str = ""
    ) -> tuple[ApiKey, str]:
        """A new key and its token (shown once; only its hash is kept)."""
        checked = parse_scopes(scopes)
        if len(name) > 100 or any(ord(ch) < 32 for ch in name):
            raise errors.ValidationError("name must be at most 100 printable characters")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        key = ApiKey(key_id, tenant_id, checked, name, now)
        with self._lock:
            self._connect().execute(
                "INSERT INTO api_keys (key_id, secret_sha256, tenant_id, scopes, name, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    key_id,
                    _hash(secret),
                    str(tenant_id),
                    ",".join(sorted(checked)),
                    name,
                    now.isoformat(),
                ),
            )
        return key, f"ccv_{key_id}_{secret}"

    def list(self) -> list[ApiKey]:
        with self._lock:
            rows = self._connect().execute(
                "SELECT key_id, tenant_id, scopes, name, created_at, revoked_at FROM api_keys"
                " ORDER BY created_at, key_id"
            )
            return [_row(row) for row in rows.fetchall()]

    def revoke(self, key_id: str) -> bool:
        """Revoke a key for good; False when no such key exists or it was already revoked."""
        with self._lock:
            cursor = self._connect().execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
                (datetime.now(UTC).isoformat(), key_id),
            )
            return cursor.rowcount > 0

    def authenticate(self, token: str) -> ApiKey | None:
        """The live key this token belongs to, or None (malformed, unknown, wrong, revoked)."""
        match = _TOKEN.match(token)
        if match is None:
            return None
        key_id, secret = match.groups()
        with self._lock:
            found = (
                self._connect()
                .execute(
                    "SELECT key_id, tenant_id, scopes, name, created_at, revoked_at, secret_sha256"
                    " FROM api_keys WHERE key_id = ?",
                    (key_id,),
                )
                .fetchone()
            )
        if found is None:
            # compare anyway, so an unknown id costs the same as a wrong secret
            hmac.compare_digest(_hash(secret), "0" * 64)
            return None
        if not hmac.compare_digest(_hash(secret), found[6]):
            return None
        key = _row(found[:6])
        return None if key.revoked else key
