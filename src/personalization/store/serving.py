"""PostgreSQL side of the read path: snapshots, flag rules, content vectors, content imports, catalogue version."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from personalization.errors import FieldError, InvalidInput
from personalization.store.db import Database, wrap_exceptions
from personalization.store.queries import q

_SQL = "serving.sql"

# Column types of the import's staging table, in COPY order.
_IMPORT_TYPES = [
    "integer", "text", "text", "integer", "bytea", "boolean", "text", "text", "text", "text", "text", "text",
    "integer", "text[]", "jsonb",
]


class ContentImportRow(NamedTuple):
    """One row of a content import; None catalogue values mean "not given"."""

    row_no: int
    content_id: str
    model: str | None
    dim: int | None
    embedding: bytes | None
    has_catalog: bool
    content_type: str | None
    title: str | None
    body: str | None
    passage_id: str | None
    translation: str | None
    series: str | None
    position: int | None
    tags: list[str] | None
    metadata: dict[str, Any] | None


@dataclass(frozen=True)
class ImportOutcome:
    """What an import wrote: rows, of which embeddings and catalogue rows, and the new catalogue version."""

    rows: int
    embeddings: int
    catalog_rows: int
    catalog_version: int


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

    async def import_content(self, rows: Sequence[ContentImportRow], unit: str = "row") -> ImportOutcome:
        """Upsert content embeddings and catalogue rows in one transaction, then raise the catalogue version.

        Rows go through a COPY into a temporary table and set-based statements, so an
        import of a million rows is a single round of statements.  Before the commit the
        final state is checked: a new item must have a content_type, and a passage holds
        at most one item per translation; a breach raises :class:`InvalidInput` naming the
        row (``unit`` and ``row_no``) and the whole import is rolled back, as is any other
        failure.
        """
        version: dict[str, Any] | None = None
        async with self.db.connection() as conn:
            with wrap_exceptions():
                await conn.execute(_q("lock_content_import"))
                await conn.execute(_q("create_content_import"))
                async with conn.cursor() as cur, cur.copy(_q("copy_content_import")) as cp:
                    cp.set_types(_IMPORT_TYPES)
                    for r in rows:
                        await cp.write_row(
                            (*r[:13], r.tags, None if r.metadata is None else Jsonb(r.metadata))
                        )
                await conn.execute(_q("upsert_content_embeddings"))
                await conn.execute(_q("update_content_items"))
                await conn.execute(_q("insert_content_items"))
                async with conn.cursor(row_factory=dict_row) as cur:
                    await cur.execute(_q("content_import_untyped"))
                    untyped = await cur.fetchone()
                    await cur.execute(_q("content_import_translation_clash"))
                    clash = await cur.fetchone()
                    if untyped is None and clash is None:
                        await cur.execute(_q("bump_catalog_version"))
                        version = await cur.fetchone()
            # Raised here, inside the transaction's block, so it rolls back.
            if untyped is not None:
                raise InvalidInput([FieldError(["content_type"], (
                    f"{unit} {untyped['row_no']}: content_type is required: {untyped['content_id']!r} is not in"
                    " the catalogue yet"
                ))])
            if clash is not None:
                raise InvalidInput([FieldError(["passage_id"], (
                    f"{unit} {clash['row_no']}: passage {clash['passage_id']} in {clash['translation']} would be both"
                    f" {clash['content_id']!r} and {clash['other']!r}: one item per passage and translation"
                ))])
        assert version is not None
        return ImportOutcome(
            rows=len(rows),
            embeddings=sum(1 for r in rows if r.embedding is not None),
            catalog_rows=sum(1 for r in rows if r.has_catalog),
            catalog_version=int(version["version"]),
        )

    async def catalog_version(self) -> int:
        """The durable catalogue version: raised by every successful content import (0 before the first)."""
        return await catalog_version(self.db)


async def catalog_version(db: Database) -> int:
    """The durable catalogue version, one primary-key read.

    Every successful ``content import`` raises it in its own transaction, so a process
    holding an index built from the catalogue rebuilds when the value it built from
    differs from this one.
    """
    row = await db.fetch_one(_q("catalog_version"), {})
    return 0 if row is None else int(row["version"])
