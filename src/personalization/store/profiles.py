"""PostgreSQL side of profiles and traits."""

from __future__ import annotations

import uuid
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from personalization.errors import NotFound
from personalization.store.db import Database, wrap_exceptions
from personalization.store.queries import q

PROFILE_COLUMNS = ("denomination", "spiritual_goal", "preferred_translation", "timezone", "privacy_level")
_RETURNING = (
    "user_id, created_at, updated_at, denomination, spiritual_goal, preferred_translation, timezone, privacy_level"
)


class ProfileStore:
    """Profile and trait rows."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def upsert(self, user_id: uuid.UUID, fields: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create or replace; returns the row and whether it was created."""
        params = {c: fields.get(c) for c in PROFILE_COLUMNS} | {"user_id": user_id}
        row = await self.db.fetch_one(q("upsert_profile"), params)
        assert row is not None
        created = bool(row.pop("created"))
        return row, created

    async def get(self, user_id: uuid.UUID) -> dict[str, Any]:
        row = await self.db.fetch_one(q("get_profile"), {"user_id": user_id})
        if row is None:
            raise NotFound("user", "user_id", str(user_id))
        return row

    async def patch(self, user_id: uuid.UUID, fields: dict[str, Any]) -> dict[str, Any]:
        """Set only the given columns (names come from PROFILE_COLUMNS, never from input)."""
        cols = [c for c in PROFILE_COLUMNS if c in fields]
        if not cols:
            return await self.get(user_id)
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(c), sql.Placeholder(c)) for c in cols
        )
        stmt = sql.SQL(
            "UPDATE user_profile SET {}, updated_at = now() WHERE user_id = %(user_id)s RETURNING {}"
        ).format(assignments, sql.SQL(_RETURNING))
        async with self.db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            with wrap_exceptions():
                await cur.execute(stmt, {c: fields[c] for c in cols} | {"user_id": user_id})
                row = await cur.fetchone()
        if row is None:
            raise NotFound("user", "user_id", str(user_id))
        return row

    async def delete(self, user_id: uuid.UUID) -> None:
        """Delete the profile (traits cascade, events keep their rows with user_id NULL)."""
        row = await self.db.fetch_one(q("delete_profile"), {"user_id": user_id})
        if row is None:
            raise NotFound("user", "user_id", str(user_id))

    async def exists(self, user_id: uuid.UUID) -> bool:
        return await self.db.fetch_one(q("user_exists"), {"user_id": user_id}) is not None

    async def list_traits(self, user_id: uuid.UUID) -> list[dict[str, Any]]:
        async with self.db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            with wrap_exceptions():
                await cur.execute(q("user_exists"), {"user_id": user_id})
                if await cur.fetchone() is None:
                    raise NotFound("user", "user_id", str(user_id))
                await cur.execute(q("list_traits"), {"user_id": user_id})
                return await cur.fetchall()

    async def add_trait(self, user_id: uuid.UUID, trait: dict[str, Any]) -> dict[str, Any]:
        params = _trait_params(user_id, uuid.uuid4(), trait)
        async with self.db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            with wrap_exceptions():
                await cur.execute(q("user_exists"), {"user_id": user_id})
                if await cur.fetchone() is None:
                    raise NotFound("user", "user_id", str(user_id))
                await cur.execute(q("insert_trait"), params)
                row = await cur.fetchone()
        assert row is not None
        return row

    async def replace_trait(
        self, user_id: uuid.UUID, trait_id: uuid.UUID, trait: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        params = _trait_params(user_id, trait_id, trait)
        async with self.db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            with wrap_exceptions():
                await cur.execute(q("user_exists"), {"user_id": user_id})
                if await cur.fetchone() is None:
                    raise NotFound("user", "user_id", str(user_id))
                await cur.execute(q("replace_trait"), params)
                row = await cur.fetchone()
        if row is None:
            # The id exists but belongs to another user: do not reveal it.
            raise NotFound("trait", "trait_id", str(trait_id))
        created = bool(row.pop("created"))
        return row, created

    async def delete_trait(self, user_id: uuid.UUID, trait_id: uuid.UUID) -> None:
        row = await self.db.fetch_one(q("delete_trait"), {"user_id": user_id, "trait_id": trait_id})
        if row is None:
            raise NotFound("trait", "trait_id", str(trait_id))


def _trait_params(user_id: uuid.UUID, trait_id: uuid.UUID, trait: dict[str, Any]) -> dict[str, Any]:
    return {
        "trait_id": trait_id,
        "user_id": user_id,
        "trait_type": trait["trait_type"],
        "trait_value": Jsonb(trait["trait_value"]),
        "confidence": trait["confidence"],
        "recorded_at": trait.get("recorded_at"),
    }
