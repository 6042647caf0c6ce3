"""PostgreSQL side of ingestion: profile locks and the binary COPY of event rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from personalization.store.queries import q

COPY_EVENTS = (
    "COPY personalization_events (user_id, session_id, content_id, content_type, signal_type,"
    " signal_weight, metadata, occurred_at) FROM STDIN (FORMAT BINARY)"
)
COPY_TYPES = ["uuid", "uuid", "text", "text", "text", "numeric", "jsonb", "timestamptz"]


class EventRow(NamedTuple):
    """One row of ``personalization_events`` as written (event_id comes from the sequence)."""

    user_id: uuid.UUID | None
    session_id: uuid.UUID | None
    content_id: str
    content_type: str
    signal_type: str
    signal_weight: Decimal
    metadata: bytes | None  # compact JSON, already validated and size-checked
    occurred_at: datetime


def _raw_json(b: Any) -> Any:
    # The metadata arrives as JSON bytes; pass them through instead of re-encoding.
    return b


async def lock_users(conn: AsyncConnection[Any], user_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, str | None]:
    """Lock the profiles against delete until commit; returns user_id -> privacy_level of those that exist."""
    ids = list(user_ids)
    if not ids:
        return {}
    cur = await conn.execute(q("lock_users_for_ingest"), {"user_ids": ids})
    return {row[0]: row[1] for row in await cur.fetchall()}


async def copy_events(conn: AsyncConnection[Any], rows: Iterable[EventRow]) -> None:
    """Write the rows with one binary COPY inside the caller's transaction."""
    async with conn.cursor().copy(COPY_EVENTS) as copy:
        copy.set_types(COPY_TYPES)
        for r in rows:
            await copy.write_row(
                (
                    r.user_id,
                    r.session_id,
                    r.content_id,
                    r.content_type,
                    r.signal_type,
                    r.signal_weight,
                    None if r.metadata is None else Jsonb(r.metadata, dumps=_raw_json),
                    r.occurred_at,
                )
            )
