"""PostgreSQL side of the erase outbox (``erasures``, ``erasure_parts``; migration 0800).

An erase records, in its own transaction, the parts it could not finish inside the request
(:func:`record_erasure_in`).  The erasure worker claims due parts with ``FOR UPDATE SKIP
LOCKED`` (several processes cooperate, none waits for another), does the work, and marks
them done in the same transaction; the last part of an erasure completes it, drops the user
id it kept, and sets the audit row's outcome (:meth:`PartClaim.done`).  The rollups part has
one refresher at a time across processes (a transaction-level advisory lock).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from personalization.store.db import Database, wrap_exceptions
from personalization.store.queries import q

__all__ = ["ClaimedPart", "Completed", "ErasureOutbox", "Part", "PartClaim", "PartState", "flag_names_in",
           "record_erasure_in"]

_SQL = "erasures.sql"
Part = Literal["postgres", "redis", "rollups", "kafka"]
PartState = Literal["pending", "done", "not_needed"]
# Advisory lock key (bigint) of the rollups refresher; beside the nightly job's keys.
ROLLUPS_LOCK_KEY = 0x7A6E_6967_6874_0011
# The refresh's own statement timeout (see rollups_refresh_timeout).
_REFRESH_TIMEOUT = "15min"


@dataclass(frozen=True)
class ClaimedPart:
    """A pending part this worker holds (locked until its transaction ends)."""

    erasure_id: uuid.UUID
    subject_id: uuid.UUID | None
    redis_keys: list[str]
    attempts: int


@dataclass(frozen=True)
class Completed:
    """An erasure whose last part was just completed."""

    erasure_id: uuid.UUID
    audit_id: int | None
    actor: str
    subject_hash: str
    requested_at: datetime
    completed_at: datetime
    audit_details: dict[str, Any]


async def _rows(conn: AsyncConnection[Any], name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q(name, _SQL), params)
        return await cur.fetchall() if cur.description else []


async def flag_names_in(conn: AsyncConnection[Any]) -> list[str]:
    """Every flag name (their per-user cached results are named with them), in the caller's transaction."""
    return [r["flag"] for r in await _rows(conn, "user_flag_names", {})]


async def record_erasure_in(conn: AsyncConnection[Any], *, erasure_id: uuid.UUID, subject_hash: str,
                            subject_id: uuid.UUID, redis_keys: Sequence[str], actor: str, audit_id: int | None,
                            parts: dict[Part, PartState]) -> None:
    """Insert the erasure and its parts in the caller's (the erase's) transaction."""
    await _rows(conn, "insert_erasure", {"erasure_id": erasure_id, "subject_hash": subject_hash,
                                         "subject_id": subject_id, "redis_keys": list(redis_keys),
                                         "actor": actor, "audit_id": audit_id})
    await _rows(conn, "insert_erasure_parts", {"erasure_id": erasure_id, "parts": list(parts),
                                               "states": list(parts.values())})


async def _complete(conn: AsyncConnection[Any], ids: list[uuid.UUID], part: Part) -> list[Completed]:
    await _rows(conn, "lock_erasures", {"ids": ids})
    await _rows(conn, "mark_parts_done", {"ids": ids, "part": part})
    rows = await _rows(conn, "complete_erasures", {"ids": ids})
    return [Completed(r["erasure_id"], r["audit_id"], r["actor"], r["subject_hash"], r["requested_at"],
                      r["completed_at"], r["audit_details"] or {}) for r in rows]


class PartClaim:
    """Parts of one kind claimed in one open transaction; mark them done or retry them later."""

    def __init__(self, conn: AsyncConnection[Any], part: Part, claimed: list[ClaimedPart]) -> None:
        self._conn = conn
        self.part = part
        self.claimed = claimed
        self.completed: list[Completed] = []

    @property
    def ids(self) -> list[uuid.UUID]:
        """The claimed erasures' ids."""
        return [c.erasure_id for c in self.claimed]

    async def done(self) -> list[Completed]:
        """Mark every claimed part done; returns the erasures this completed (committed with the block)."""
        with wrap_exceptions():
            self.completed = await _complete(self._conn, self.ids, self.part) if self.claimed else []
        return self.completed

    async def retry_later(self, error: str, max_backoff_s: float) -> None:
        """Record a failed attempt; the parts come due again after an exponential backoff."""
        with wrap_exceptions():
            await _rows(self._conn, "retry_parts_later", {"ids": self.ids, "part": self.part, "error": error[:500],
                                                          "max_backoff_s": max_backoff_s})

    async def rollups_hold_any(self) -> bool:
        """True when ``user_signal_rollups`` still holds one of the claimed users."""
        subjects = [c.subject_id for c in self.claimed if c.subject_id is not None]
        with wrap_exceptions():
            rows = await _rows(self._conn, "rollups_hold_any", {"ids": subjects})
        return bool(rows and rows[0]["present"])

    async def refresh_rollups(self) -> None:
        """``REFRESH MATERIALIZED VIEW CONCURRENTLY user_signal_rollups`` in this transaction.

        Its snapshot is taken after the claim, so it cannot see any claimed erasure's rows.
        """
        with wrap_exceptions():
            await _rows(self._conn, "rollups_refresh_timeout", {"timeout": _REFRESH_TIMEOUT})
            await _rows(self._conn, "refresh_rollups", {})


class ErasureOutbox:
    """The worker's and the status route's access to the erase outbox."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @contextlib.asynccontextmanager
    async def claiming(self, part: Part, *, limit: int, min_age_s: float = 0.0) -> AsyncIterator[PartClaim]:
        """Claim up to ``limit`` due pending parts of ``part``; the block's work commits with them.

        For ``rollups`` the claim takes every pending part, and only while holding the
        refresher lock: another process refreshing at the moment makes the claim empty.
        """
        async with self.db.connection() as conn:
            with wrap_exceptions():
                claimed: list[ClaimedPart] = []
                locked = True
                if part == "rollups":
                    rows = await _rows(conn, "try_rollups_lock", {"key": ROLLUPS_LOCK_KEY})
                    locked = bool(rows[0]["locked"])
                if locked:
                    rows = await _rows(conn, "claim_parts", {"part": part, "limit": limit, "min_age_s": min_age_s})
                    claimed = [ClaimedPart(r["erasure_id"], r["subject_id"], list(r["redis_keys"] or []),
                                           r["attempts"]) for r in rows]
                yield PartClaim(conn, part, claimed)

    async def complete_part(self, erasure_id: uuid.UUID, part: Part) -> list[Completed] | None:
        """Mark one part of one erasure done (the request's own second Redis delete).

        None when the part is not pending or a worker holds it at the moment (the worker
        does the same work and completes it); else the erasures this completed.
        """
        async with self.db.connection() as conn:
            with wrap_exceptions():
                if not await _rows(conn, "claim_one_part", {"erasure_id": erasure_id, "part": part}):
                    return None
                return await _complete(conn, [erasure_id], part)

    async def get(self, erasure_id: uuid.UUID) -> dict[str, Any] | None:
        """The erasure and each part's state, or None."""
        return await self.db.fetch_one(q("get_erasure", _SQL), {"erasure_id": erasure_id})

    async def pending(self) -> int:
        """How many erasures are not complete yet."""
        row = await self.db.fetch_one(q("pending_erasures", _SQL), {})
        return int(row["pending"]) if row else 0
