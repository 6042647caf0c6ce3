"""PostgreSQL side of profiles and traits.

Every write also records the user's cache invalidation in its own transaction (the
invalidation outbox, ``store/invalidations.py``) and returns a :class:`Change` naming it,
so the caller can clear it once Redis took it; a crash in between leaves it to the replay.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from personalization.errors import NotFound
from personalization.store.db import Database, wrap_exceptions
from personalization.store.invalidations import record_invalidation_in
from personalization.store.queries import q

PROFILE_COLUMNS = ("denomination", "spiritual_goal", "preferred_translation", "timezone", "privacy_level")
_RETURNING = (
    "user_id, created_at, updated_at, denomination, spiritual_goal, preferred_translation, timezone, privacy_level"
)


@dataclass(frozen=True)
class Change:
    """A committed write: its row (none for deletes), whether it created it, and its outbox row."""

    row: dict[str, Any]
    created: bool
    invalidation_id: int


class ProfileStore:
    """Profile and trait rows."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def _write(self, user_id: uuid.UUID, stmt: Any, params: dict[str, Any],
                     missing: tuple[str, str] | None = None, *, check_user: bool = False) -> Change:
        # One transaction: the statement, then the user's invalidation in the outbox.  A
        # statement that returns no row is a NotFound of ``missing`` (and writes nothing).
        async with self.db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            with wrap_exceptions():
                if check_user:
                    await cur.execute(q("user_exists"), {"user_id": user_id})
                    if await cur.fetchone() is None:
                        raise NotFound("user", "user_id", str(user_id))
                await cur.execute(stmt, params)
                row = await cur.fetchone()
                if row is None:
                    resource, field = missing or ("user", "user_id")
                    raise NotFound(resource, field, str(params.get(field, user_id)))
                invalidation_id = await record_invalidation_in(conn, user_id)
        created = bool(row.pop("created", False))
        return Change(row, created, invalidation_id)

    async def upsert(self, user_id: uuid.UUID, fields: dict[str, Any]) -> Change:
        """Create or replace; the change says whether it was created."""
        params = {c: fields.get(c) for c in PROFILE_COLUMNS} | {"user_id": user_id}
        return await self._write(user_id, q("upsert_profile"), params)

    async def get(self, user_id: uuid.UUID) -> dict[str, Any]:
        row = await self.db.fetch_one(q("get_profile"), {"user_id": user_id})
        if row is None:
            raise NotFound("user", "user_id", str(user_id))
        return row

    async def patch(self, user_id: uuid.UUID, fields: dict[str, Any]) -> Change | dict[str, Any]:
        """Set only the given columns (names come from PROFILE_COLUMNS, never from input).

        Nothing to set: the unchanged row (no write, no invalidation).
        """
        cols = [c for c in PROFILE_COLUMNS if c in fields]
        if not cols:
            return await self.get(user_id)
        assignments = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(c), sql.Placeholder(c)) for c in cols
        )
        stmt = sql.SQL(
            "UPDATE user_profile SET {}, updated_at = now() WHERE user_id = %(user_id)s RETURNING {}"
        ).format(assignments, sql.SQL(_RETURNING))
        return await self._write(user_id, stmt, {c: fields[c] for c in cols} | {"user_id": user_id})

    async def delete(self, user_id: uuid.UUID) -> Change:
        """Delete the profile (traits cascade, events keep their rows with user_id NULL)."""
        return await self._write(user_id, q("delete_profile"), {"user_id": user_id})

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

    async def add_trait(self, user_id: uuid.UUID, trait: dict[str, Any]) -> Change:
        """Insert a trait of an existing user."""
        params = _trait_params(user_id, uuid.uuid4(), trait)
        return await self._write(user_id, q("insert_trait"), params, check_user=True)

    async def replace_trait(self, user_id: uuid.UUID, trait_id: uuid.UUID, trait: dict[str, Any]) -> Change:
        """Create or replace a trait; an id of another user's trait is a NotFound (not revealed)."""
        params = _trait_params(user_id, trait_id, trait)
        return await self._write(user_id, q("replace_trait"), params, ("trait", "trait_id"), check_user=True)

    async def delete_trait(self, user_id: uuid.UUID, trait_id: uuid.UUID) -> Change:
        """Delete one trait of the user."""
        return await self._write(user_id, q("delete_trait"), {"user_id": user_id, "trait_id": trait_id},
                                 ("trait", "trait_id"))


def _trait_params(user_id: uuid.UUID, trait_id: uuid.UUID, trait: dict[str, Any]) -> dict[str, Any]:
    return {
        "trait_id": trait_id,
        "user_id": user_id,
        "trait_type": trait["trait_type"],
        "trait_value": Jsonb(trait["trait_value"]),
        "confidence": trait["confidence"],
        "recorded_at": trait.get("recorded_at"),
    }
