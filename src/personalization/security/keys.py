"""API keys: format, scopes, hashing and the PostgreSQL store.

A key looks like ``pzk_<key_id>_<secret>``: ``key_id`` (16 hex digits) is a random,
non-secret lookup handle, ``secret`` is 32 random bytes (base64url, 43 characters).
Only a hash of the secret is stored:

* ``hmac-sha256``: HMAC-SHA256 keyed with the server secret
  (``PERSONALIZATION_API_KEY_SECRET``): a stolen table is useless without the secret;
* ``scrypt``: when no server secret is configured, a slow salted hash (``hashlib.scrypt``,
  N=2^14, r=8) so a stolen table cannot be brute-forced cheaply.

The scheme is stored per key, so keys made before a server secret was configured keep
working.  The full key is returned once, by :meth:`KeyStore.create`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from personalization.config import Settings
from personalization.errors import Conflict, FieldError, InvalidInput, NotFound
from personalization.store.db import Database
from personalization.store.security import ApiKeyRows, SyncConnection, insert_api_key_sync

SCOPES: Final = ("ingest", "profile:write", "read", "admin")
"""``ingest`` writes events; ``profile:write`` writes profiles and traits; ``read`` serves
preferences, flags, recent content, reranking and profile reads; ``admin`` manages flag
rules and keys, erases and exports users."""

KEY_PREFIX: Final = "pzk"
_KEY_RE: Final = re.compile(r"^pzk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_KEY_ID_RE: Final = re.compile(r"^[0-9a-f]{16}$")
# Names are labels for operators: printable, no control characters, bounded.
_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:@/-]{0,99}$")

SCRYPT_N: Final = 2**14
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1


@dataclass(frozen=True)
class ParsedKey:
    """A syntactically valid key split into its lookup id and secret."""

    key_id: str
    secret: str


@dataclass(frozen=True)
class KeyInfo:
    """What is stored about a key (never the key itself)."""

    key_id: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    created_by: str
    last_used_at: datetime | None
    revoked_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the CLI and the admin API."""
        return {
            "key_id": self.key_id,
            "name": self.name,
            "scopes": list(self.scopes),
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


@dataclass(frozen=True)
class StoredKey:
    """The row used to verify a presented key."""

    key_id: str
    name: str
    scopes: tuple[str, ...]
    hash_scheme: str
    key_hash: bytes
    salt: bytes | None
    revoked_at: datetime | None


def parse_key(token: str) -> ParsedKey | None:
    """Split a presented key, or None when it is not of the key format."""
    m = _KEY_RE.match(token)
    return ParsedKey(m[1], m[2]) if m else None


def validate_scopes(scopes: list[str] | tuple[str, ...], loc: str = "scopes") -> tuple[str, ...]:
    """Deduplicated, known scopes in canonical order, or InvalidInput naming the field."""
    cleaned = [s.strip() for s in scopes if s.strip()]
    if not cleaned:
        raise InvalidInput([FieldError([loc], f"at least one scope is required (one of {', '.join(SCOPES)})")])
    unknown = sorted({s for s in cleaned if s not in SCOPES})
    if unknown:
        msg = f"unknown scope {', '.join(map(repr, unknown))}; known scopes: {', '.join(SCOPES)}"
        raise InvalidInput([FieldError([loc], msg, "enum")])
    return tuple(s for s in SCOPES if s in cleaned)


def validate_name(name: str, loc: str = "name") -> str:
    """A key name: 1-100 printable characters starting with a letter or digit."""
    if not _NAME_RE.match(name):
        msg = "name must be 1-100 characters: letters, digits, space and . _ : @ / - (starting with a letter or digit)"
        raise InvalidInput([FieldError([loc], msg)])
    return name


def validate_key_id(key_id: str, loc: str = "key_id") -> str:
    """A key id: 16 lowercase hex digits."""
    if not _KEY_ID_RE.match(key_id):
        raise InvalidInput([FieldError([loc], "key_id must be 16 lowercase hex digits")])
    return key_id


def _scrypt(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 1024 * 1024,
                          dklen=32)


def _hmac(secret: str, server_secret: str) -> bytes:
    return hmac.new(server_secret.encode(), secret.encode(), hashlib.sha256).digest()


def hash_secret(secret: str, server_secret: str | None) -> tuple[str, bytes, bytes | None]:
    """``(scheme, hash, salt)`` of a new key's secret."""
    if server_secret:
        return "hmac-sha256", _hmac(secret, server_secret), None
    salt = secrets.token_bytes(16)
    return "scrypt", _scrypt(secret, salt), salt


def verify_secret(stored: StoredKey, secret: str, server_secret: str | None) -> bool:
    """True when ``secret`` hashes to the stored hash under the row's scheme (constant time)."""
    if stored.hash_scheme == "hmac-sha256":
        if not server_secret:
            # Made with a server secret that this process does not have: cannot verify.
            return False
        return hmac.compare_digest(_hmac(secret, server_secret), stored.key_hash)
    if stored.hash_scheme == "scrypt" and stored.salt is not None:
        return hmac.compare_digest(_scrypt(secret, stored.salt), stored.key_hash)
    return False


def needs_slow_verify(stored: StoredKey) -> bool:
    """True when verifying this key costs tens of milliseconds (run it off the event loop)."""
    return stored.hash_scheme == "scrypt"


def server_secret_of(settings: Settings) -> str | None:
    """The configured server secret, if any."""
    return settings.auth.api_key_secret.get_secret_value() if settings.auth.api_key_secret else None


def new_key(settings: Settings, name: str, scopes: list[str] | tuple[str, ...],
            created_by: str) -> tuple[str, dict[str, Any]]:
    """A new key after validating its name and scopes: ``(full key, the row to store)``."""
    name = validate_name(name)
    canonical = validate_scopes(scopes)
    key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
    scheme, digest, salt = hash_secret(secret, server_secret_of(settings))
    row = {"key_id": key_id, "name": name, "scopes": list(canonical), "hash_scheme": scheme, "key_hash": digest,
           "salt": salt, "created_by": created_by}
    return f"{KEY_PREFIX}_{key_id}_{secret}", row


def create_key_sync(conn: SyncConnection, settings: Settings, name: str, scopes: list[str],
                    created_by: str) -> str:
    """Create a key on a synchronous connection (benchmarks, tools); commits; returns the full key."""
    full, row = new_key(settings, name, scopes, created_by)
    insert_api_key_sync(conn, row)
    return full


def _info(row: dict[str, Any]) -> KeyInfo:
    return KeyInfo(
        key_id=row["key_id"],
        name=row["name"],
        scopes=tuple(row["scopes"]),
        created_at=row["created_at"],
        created_by=row["created_by"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


class KeyStore:
    """API keys in PostgreSQL (table ``api_keys``)."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.rows = ApiKeyRows(db)

    async def create(self, name: str, scopes: list[str] | tuple[str, ...], created_by: str) -> tuple[str, KeyInfo]:
        """Make a key; returns the full key (shown once) and what is stored about it."""
        full, params = new_key(self.settings, name, scopes, created_by)
        try:
            row = await self.rows.insert(params)
        except Conflict as exc:
            raise InvalidInput([FieldError(["name"], f"a live key named {params['name']!r} already exists",
                                           "conflict")], 409) from exc
        return full, _info(row)

    async def get(self, key_id: str) -> StoredKey | None:
        """The verification row of ``key_id``, or None."""
        row = await self.rows.get(key_id)
        if row is None:
            return None
        return StoredKey(
            key_id=row["key_id"],
            name=row["name"],
            scopes=tuple(row["scopes"]),
            hash_scheme=row["hash_scheme"],
            key_hash=bytes(row["key_hash"]),
            salt=None if row["salt"] is None else bytes(row["salt"]),
            revoked_at=row["revoked_at"],
        )

    async def touch(self, key_id: str) -> tuple[str, tuple[str, ...], datetime | None] | None:
        """Record a use; returns ``(name, scopes, revoked_at)`` or None when the key is gone."""
        row = await self.rows.touch(key_id)
        if row is None:
            return None
        return row["name"], tuple(row["scopes"]), row["revoked_at"]

    async def list(self, include_revoked: bool = False) -> list[KeyInfo]:
        """Every key (without hashes), oldest first."""
        rows = await self.rows.list(include_revoked)
        return [_info(r) for r in rows]

    async def revoke(self, key_id: str) -> KeyInfo:
        """Revoke a key (idempotent); NotFound when no such key exists."""
        validate_key_id(key_id)
        row = await self.rows.revoke(key_id)
        if row is None:
            raise NotFound("api key", "key_id", key_id)
        return _info(row)
