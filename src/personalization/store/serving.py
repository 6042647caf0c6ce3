"""PostgreSQL side of the read path: snapshots, flag rules, content vectors, imports."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from personalization.store.db import Database, wrap_exceptions
from personalization.store.queries import q

_SQL = "serving.sql"


def _q(name: str) -> str:
    return q(name, _SQL)


class ServingStore:
    """Reads (and the few writes) of the serving path."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._user_embeddings_present = False

    async def preferences_snapshot(self, user_id: uuid.UUID, min_confidence: Decimal) -> dict[str, Any] | None:
        """Profile columns plus ``traits`` ({type: value}); None for an unknown user."""
        return await self.db.fetch_one(
            _q("preferences_snapshot"), {"user_id": user_id, "min_confidence": min_confidence}
        )

    async def user_embedding(self, user_id: uuid.UUID) -> tuple[int, bytes] | None:
        """(dim, bytes) of the durable user embedding, or None (also while its table does not exist yet)."""
        if not self._user_embeddings_present:
            row = await self.db.fetch_one(_q("user_embeddings_table"), {})
            if not (row and row["present"]):
                return None
            # Tables are not dropped in normal operation: remember it once seen.
            self._user_embeddings_present = True
        row = await self.db.fetch_one(_q("user_embedding"), {"user_id": user_id})
        if row is None or row["embedding"] is None:
            return None
        return int(row["dim"]), bytes(row["embedding"])

    async def get_flag(self, flag: str) -> dict[str, Any] | None:
        """The flag's row with its overrides ({user_id text: bool}), or None."""
        return await self.db.fetch_one(_q("get_flag"), {"flag": flag})

    async def flag_version(self, flag: str) -> int | None:
        row = await self.db.fetch_one(_q("flag_version"), {"flag": flag})
        return None if row is None else int(row["version"])

    async def missing_users(self, user_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
        """Those of ``user_ids`` that have no profile."""
        if not user_ids:
            return []
        rows = await self.db.fetch_all(_q("missing_users"), {"user_ids": list(user_ids)})
        return [r["u"] for r in rows]

    async def put_flag(self, flag: str, rules: dict[str, Any], overrides: dict[uuid.UUID, bool]) -> int:
        """Replace the rule set and overrides in one transaction; returns the new version."""
        params = {
            "flag": flag,
            "enabled": rules["enabled"],
            "rollout_percent": Decimal(str(round(rules["rollout_percent"], 2))),
            "conditions": Jsonb(rules["conditions"]),
            "salt": rules.get("salt"),
            "description": rules.get("description"),
        }
        async with self.db.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            with wrap_exceptions():
                await cur.execute(_q("upsert_flag"), params)
                row = await cur.fetchone()
                await cur.execute(_q("delete_flag_overrides"), {"flag": flag})
                if overrides:
                    await cur.execute(
                        _q("insert_flag_overrides"),
                        {"flag": flag, "user_ids": list(overrides), "enabled": list(overrides.values())},
                    )
        assert row is not None
        return int(row["version"])

    async def content_vectors(self, ids: Sequence[str], dim: int) -> list[dict[str, Any]]:
        """Per id: ``embedding`` bytes (or None) and ``content_type`` (or None)."""
        return await self.db.fetch_all(_q("content_vectors"), {"ids": list(ids), "dim": dim})

    async def content_type_popularity(self) -> dict[str, float]:
        rows = await self.db.fetch_all(_q("content_type_popularity"), {})
        return {r["content_type"]: float(r["weight"] or 0.0) for r in rows}

    async def session_recent_content(self, session_id: uuid.UUID, view_types: Sequence[str], cap: int) -> list[str]:
        rows = await self.db.fetch_all(
            _q("session_recent_content"), {"session_id": session_id, "view_types": list(view_types), "cap": cap}
        )
        return [r["content_id"] for r in rows]

    async def import_content(self, rows: Sequence[tuple[str, str, int, bytes, str | None, str | None]]) -> int:
        """Upsert (content_id, model, dim, embedding, content_type, title) rows in one transaction.

        Rows go through a COPY into a temporary table and one set-based upsert, so an
        import of a million vectors is a single round of statements, and a failure
        anywhere leaves the tables as they were.
        """
        async with self.db.connection() as conn:
            with wrap_exceptions():
                await conn.execute(
                    "CREATE TEMP TABLE content_import (content_id TEXT, model TEXT, dim INTEGER, embedding BYTEA,"
                    " content_type TEXT, title TEXT) ON COMMIT DROP"
                )
                async with (
                    conn.cursor() as cur,
                    cur.copy(
                        "COPY content_import (content_id, model, dim, embedding, content_type, title) FROM STDIN"
                    ) as cp,
                ):
                    for r in rows:
                        await cp.write_row(r)
                await conn.execute(_q("upsert_content_embeddings"))
                await conn.execute(_q("upsert_content_items"))
        return len(rows)
