"""PostgreSQL side of the data-rights use cases: one user's erase and export.

The erase runs in one transaction that the use case holds open (it deletes the user's
Redis keys before the commit, so a Redis failure rolls everything back, and records what
is left for the erasure worker in the outbox of ``store/erasures.py``): :meth:`DataRightsStore.erasing`
yields an :class:`EraseTransaction` whose steps the use case calls in its order.  The
export reads in one REPEATABLE READ, READ ONLY transaction (:meth:`DataRightsStore.exporting`),
so every part of the document is the same snapshot; the events come from a server-side
cursor, so a user with millions of events costs constant memory.

Tables found in the catalogue (``user_tables``: every table with a uuid ``user_id``
column) are addressed with quoted identifiers, never with text from input.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from personalization.store.db import Database, wrap_exceptions
from personalization.store.erasures import Part, PartState, flag_names_in, record_erasure_in
from personalization.store.nightly import erase_user_features
from personalization.store.queries import q
from personalization.store.security import insert_audit_in

__all__ = ["DataRightsStore", "EraseTransaction", "ExportSnapshot"]

_SQL = "security.sql"
# Rows per round trip of the export's event cursor.
_CURSOR_ROWS = 2000


async def _user_tables(conn: AsyncConnection[Any]) -> list[tuple[str, str]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q("user_tables", _SQL))
        return [(r["schema_name"], r["table_name"]) for r in await cur.fetchall()]


class EraseTransaction:
    """The steps of one user's erase, inside one open transaction (committed when the block ends)."""

    def __init__(self, conn: AsyncConnection[Any], user_id: uuid.UUID) -> None:
        self._conn = conn
        self._params = {"user_id": user_id}
        self.user_id = user_id

    async def lock_profile(self) -> bool:
        """Lock the profile row (ingest of the user waits until the commit); True if it exists."""
        async with self._conn.cursor() as cur:
            await cur.execute(q("lock_profile_for_erase", _SQL), self._params)
            return await cur.fetchone() is not None

    async def sessions(self) -> list[uuid.UUID]:
        """The user's session ids (known only from the events, so read before they go)."""
        async with self._conn.cursor() as cur:
            await cur.execute(q("user_sessions", _SQL), self._params)
            return [r[0] for r in await cur.fetchall()]

    async def _delete(self, name: str) -> int:
        async with self._conn.cursor() as cur:
            await cur.execute(q(name, _SQL), self._params)
            return max(cur.rowcount, 0)

    async def delete_events(self) -> int:
        """Delete the user's events (``ON DELETE SET NULL`` would keep them as anonymous rows)."""
        return await self._delete("delete_user_events")

    async def delete_features(self) -> dict[str, int]:
        """The feature-store rows, with the snapshot swap's lock (see ``erase_user_features``)."""
        return {"feature_store": await erase_user_features(self._conn, self.user_id)}

    async def delete_other_tables(self) -> dict[str, int]:
        """Delete from every other table with a ``user_id`` column; rows removed per table."""
        tables = await _user_tables(self._conn)
        removed: dict[str, int] = {}
        # Tables may reference each other; a delete blocked by a foreign key is retried after
        # the others (each attempt in a savepoint), so no dependency order has to be known.
        todo = tables
        for _ in range(len(tables) + 1):
            blocked = []
            for schema, table in todo:
                try:
                    async with self._conn.transaction():
                        n = await self._delete_from(schema, table)
                except Exception as exc:  # a driver error: retried below, re-raised if stuck
                    blocked.append((schema, table, exc))
                    continue
                removed[f"{schema}.{table}"] = removed.get(f"{schema}.{table}", 0) + n
            if not blocked:
                break
            if len(blocked) == len(todo):
                raise blocked[0][2]
            todo = [(s, t) for s, t, _ in blocked]
        return removed

    async def _delete_from(self, schema: str, table: str) -> int:
        stmt = sql.SQL("DELETE FROM {}.{} WHERE user_id = %(user_id)s").format(sql.Identifier(schema),
                                                                              sql.Identifier(table))
        async with self._conn.cursor() as cur:
            await cur.execute(stmt, self._params)
            return max(cur.rowcount, 0)

    async def delete_traits(self) -> int:
        """Delete the user's traits."""
        return await self._delete("delete_user_traits")

    async def delete_profile(self) -> int:
        """Delete the profile row."""
        return await self._delete("delete_user_profile")

    async def flag_names(self) -> list[str]:
        """Every flag name (the user's cached flag results are named with them)."""
        return await flag_names_in(self._conn)

    async def in_rollups(self) -> bool:
        """True when ``user_signal_rollups`` holds the user (only a refresh can change that)."""
        async with self._conn.cursor() as cur:
            await cur.execute(q("user_in_rollups", _SQL), self._params)
            row = await cur.fetchone()
            return bool(row and row[0])

    async def record_erasure(self, *, erasure_id: uuid.UUID, subject_hash: str, redis_keys: Sequence[str],
                             actor: str, audit_id: int | None, parts: dict[Part, PartState]) -> None:
        """The erasure and its parts in the outbox, in this transaction (see ``store/erasures.py``)."""
        await record_erasure_in(self._conn, erasure_id=erasure_id, subject_hash=subject_hash,
                                subject_id=self.user_id, redis_keys=redis_keys, actor=actor, audit_id=audit_id,
                                parts=parts)

    async def insert_audit(self, row: dict[str, Any]) -> int:
        """The audit row, in this transaction (see :func:`personalization.security.audit.record_in`)."""
        return await insert_audit_in(self._conn, row)


class ExportSnapshot:
    """Reads of one user's rows in one consistent, read-only snapshot."""

    def __init__(self, conn: AsyncConnection[Any], user_id: uuid.UUID) -> None:
        self._conn = conn
        self._params = {"user_id": user_id}

    async def _all(self, name: str) -> list[dict[str, Any]]:
        async with self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(q(name, _SQL), self._params)
            return await cur.fetchall()

    async def profile(self) -> dict[str, Any] | None:
        """The profile row."""
        rows = await self._all("export_profile")
        return rows[0] if rows else None

    async def traits(self) -> list[dict[str, Any]]:
        """The trait rows, oldest first."""
        return await self._all("export_traits")

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Every event row, oldest first, from a server-side cursor."""
        async with self._conn.cursor(name=f"export_{uuid.uuid4().hex}", row_factory=dict_row) as cur:
            cur.itersize = _CURSOR_ROWS
            with wrap_exceptions():
                await cur.execute(q("export_events", _SQL), self._params)
                async for row in cur:
                    yield row

    async def rollups(self) -> list[dict[str, Any]]:
        """The user's ``user_signal_rollups`` rows."""
        return await self._all("export_rollups")

    async def flag_names(self) -> list[str]:
        """Every flag name (the user's cached flag results are named with them)."""
        return await flag_names_in(self._conn)

    async def other_tables(self) -> dict[str, list[dict[str, Any]]]:
        """The rows of every other table with a ``user_id`` column, by ``schema.table``."""
        out: dict[str, list[dict[str, Any]]] = {}
        for schema, table in await _user_tables(self._conn):
            stmt = sql.SQL("SELECT * FROM {}.{} WHERE user_id = %(user_id)s").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            async with self._conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(stmt, self._params)
                rows = await cur.fetchall()
            if rows:
                out[f"{schema}.{table}"] = rows
        return out


class DataRightsStore:
    """The erase's and the export's access to PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @contextlib.asynccontextmanager
    async def erasing(self, user_id: uuid.UUID) -> AsyncIterator[EraseTransaction]:
        """One transaction for the erase steps; committed when the block exits without an error."""
        async with self.db.connection() as conn:
            with wrap_exceptions():
                yield EraseTransaction(conn, user_id)

    @contextlib.asynccontextmanager
    async def exporting(self, user_id: uuid.UUID) -> AsyncIterator[ExportSnapshot]:
        """One REPEATABLE READ, READ ONLY transaction for the export's reads."""
        async with self.db.connection() as conn:
            with wrap_exceptions():
                # Per transaction only: the pooled connection keeps its defaults for the next user.
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                yield ExportSnapshot(conn, user_id)

    async def profile_exists(self, user_id: uuid.UUID) -> bool:
        """True when the user has a profile."""
        return await self.db.fetch_one(q("export_profile", _SQL), {"user_id": user_id}) is not None
