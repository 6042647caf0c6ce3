"""PostgreSQL side of the security package: the ``api_keys`` and ``audit_log`` tables.

The hashing, scopes and validation of keys live in :mod:`personalization.security.keys`
and the audit's subject hashing and log line in :mod:`personalization.security.audit`;
here are only the rows, through the named queries of ``store/sql/security.sql``.
"""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from personalization.store.db import Database, wrap_exceptions
from personalization.store.queries import q

__all__ = ["ApiKeyRows", "AuditRows", "SyncConnection", "insert_api_key_sync", "insert_audit_in"]

_SQL = "security.sql"

SyncConnection = psycopg.Connection[Any]
"""A synchronous connection (benchmarks and tools create keys on one)."""


def _jsonb(details: dict[str, Any]) -> Jsonb:
    # default=str: details carry counts, names and timings; anything else is written as text.
    return Jsonb(details, dumps=lambda o: orjson.dumps(o, default=str).decode())


class ApiKeyRows:
    """Rows of ``api_keys`` (hashes, never keys)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(self, params: dict[str, Any]) -> dict[str, Any]:
        """Insert a key row; Conflict when a live key has the same name."""
        row = await self.db.fetch_one(q("insert_api_key", _SQL), params)
        assert row is not None
        return row

    async def get(self, key_id: str) -> dict[str, Any] | None:
        """The verification row of ``key_id``."""
        return await self.db.fetch_one(q("get_api_key", _SQL), {"key_id": key_id})

    async def touch(self, key_id: str) -> dict[str, Any] | None:
        """Record a use; the row's name, scopes and revocation time, or None when gone."""
        return await self.db.fetch_one(q("touch_api_key", _SQL), {"key_id": key_id})

    async def list(self, include_revoked: bool) -> list[dict[str, Any]]:
        """Every key row without hashes, oldest first."""
        return await self.db.fetch_all(q("list_api_keys", _SQL), {"include_revoked": include_revoked})

    async def revoke(self, key_id: str) -> dict[str, Any] | None:
        """Revoke (idempotent); the row, or None when no such key exists."""
        return await self.db.fetch_one(q("revoke_api_key", _SQL), {"key_id": key_id})


def insert_api_key_sync(conn: SyncConnection, params: dict[str, Any]) -> None:
    """Insert a key row on a synchronous connection and commit."""
    with wrap_exceptions():
        conn.execute(q("insert_api_key", _SQL), params)
        conn.commit()


async def insert_audit_in(conn: AsyncConnection[Any], row: dict[str, Any]) -> int:
    """Insert an audit row inside the caller's transaction; returns its id."""
    params = dict(row, details=_jsonb(row.get("details") or {}))
    async with conn.cursor(row_factory=dict_row) as cur:
        with wrap_exceptions():
            await cur.execute(q("insert_audit", _SQL), params)
            out = await cur.fetchone()
    assert out is not None
    return int(out["audit_id"])


class AuditRows:
    """Rows of ``audit_log``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert(self, row: dict[str, Any]) -> int:
        """Insert one row in its own transaction; returns its id."""
        async with self.db.connection() as conn:
            return await insert_audit_in(conn, row)

    async def update(self, audit_id: int, outcome: str, details: dict[str, Any]) -> None:
        """Set the final outcome and details of a row written earlier."""
        async with self.db.connection() as conn:
            with wrap_exceptions():
                await conn.execute(q("update_audit", _SQL),
                                   {"audit_id": audit_id, "outcome": outcome, "details": _jsonb(details)})

    async def recent(self, action: str | None, limit: int) -> list[dict[str, Any]]:
        """The newest rows, optionally of one action."""
        return await self.db.fetch_all(q("list_audit", _SQL), {"action": action, "limit": limit})
