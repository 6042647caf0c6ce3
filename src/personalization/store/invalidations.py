"""PostgreSQL side of the invalidation outbox (``cache_invalidations``; migration 0801).

A profile or trait write records the invalidation in its own transaction
(:func:`record_invalidation_in`, called by ``store/profiles.py``), so a committed change
always has one; the writer clears it once Redis took it (:func:`clear_invalidation`), and
the replay claims whatever is left with ``FOR UPDATE SKIP LOCKED`` (several processes
cooperate) and deletes what it applied in the same transaction.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from personalization.store.db import Database, wrap_exceptions
from personalization.store.queries import q

__all__ = ["InvalidationClaim", "InvalidationOutbox", "record_invalidation_in"]

_SQL = "invalidations.sql"


async def record_invalidation_in(conn: AsyncConnection[Any], user_id: uuid.UUID) -> int:
    """Insert the invalidation of ``user_id`` in the caller's (the change's) transaction; returns its id."""
    async with conn.cursor() as cur:
        await cur.execute(q("record_invalidation", _SQL), {"user_id": user_id})
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


class InvalidationClaim:
    """Outbox rows claimed in one open transaction."""

    def __init__(self, conn: AsyncConnection[Any], rows: list[tuple[int, uuid.UUID]]) -> None:
        self._conn = conn
        self.rows = rows

    async def delete(self, ids: list[int]) -> None:
        """Delete the rows that were applied (committed with the block)."""
        if ids:
            with wrap_exceptions():
                await self._conn.execute(q("delete_invalidations", _SQL), {"ids": ids})


class InvalidationOutbox:
    """The writers' and the replay's access to ``cache_invalidations``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def clear(self, invalidation_id: int) -> None:
        """The writer's own invalidation reached Redis: the row is not needed any more."""
        async with self.db.connection() as conn:
            with wrap_exceptions():
                await conn.execute(q("clear_invalidation", _SQL), {"invalidation_id": invalidation_id})

    @contextlib.asynccontextmanager
    async def claiming(self, limit: int) -> AsyncIterator[InvalidationClaim]:
        """Claim up to ``limit`` of the oldest rows; deletions in the block commit with it."""
        async with self.db.connection() as conn:
            with wrap_exceptions():
                async with conn.cursor(row_factory=dict_row) as cur:
                    await cur.execute(q("claim_invalidations", _SQL), {"limit": limit})
                    rows = [(int(r["invalidation_id"]), r["user_id"]) for r in await cur.fetchall()]
                yield InvalidationClaim(conn, rows)

    async def pending(self) -> int:
        """Rows not applied yet."""
        row = await self.db.fetch_one(q("pending_invalidations", _SQL), {})
        return int(row["pending"]) if row else 0
