"""PostgreSQL side of ingestion: profile locks and the COPY of event rows.

Rows are sent in COPY's text format, built from the canonical strings the
validation produced (:data:`~personalization.core.fast_events.ValidEvent`):
one string per row instead of one binary dump per value.  PostgreSQL parses
the UUID, NUMERIC, JSONB and TIMESTAMPTZ fields itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from psycopg import AsyncConnection

from personalization.core.fast_events import (
    CLEAN,
    CONTENT_ID,
    CONTENT_TYPE,
    OCCURRED_AT,
    SIGNAL_TYPE,
    USER_ID,
    WEIGHT,
    ValidEvent,
)
from personalization.store.queries import q

COLUMNS = "user_id, session_id, content_id, content_type, signal_type, signal_weight, metadata, occurred_at"
COPY_EVENTS = f"COPY personalization_events ({COLUMNS}) FROM STDIN"
# The binary COPY types of the same columns (the ingest benchmark's bare-COPY baseline).
COPY_TYPES = ["uuid", "uuid", "text", "text", "text", "numeric", "jsonb", "timestamptz"]
NULL = "\\N"  # COPY text format's NULL
# Rows per write to the COPY stream (bounds the size of one buffer).
COPY_CHUNK_ROWS = 2000


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_escape(text: str) -> str:
    """``text`` as a field of COPY's text format (backslash, tab, newline, CR escaped)."""
    return text.translate(_COPY_ESCAPES)


def copy_json(text: str) -> str:
    """Compact JSON as a field of COPY's text format.

    JSON text from orjson holds no raw tab, newline or carriage return (they are escaped
    inside strings), so only its backslashes need doubling.
    """
    return text.replace("\\", "\\\\") if "\\" in text else text


def copy_line(e: ValidEvent, session_id: str | None, metadata: str | None) -> str:
    """One row of ``personalization_events`` in COPY text format (no trailing newline).

    ``session_id`` and ``metadata`` (compact JSON) are passed separately because the
    privacy level may strip them.
    """
    if e[CLEAN]:
        content, ctype, stype = e[CONTENT_ID], e[CONTENT_TYPE], e[SIGNAL_TYPE]
    else:
        content, ctype, stype = copy_escape(e[CONTENT_ID]), copy_escape(e[CONTENT_TYPE]), copy_escape(e[SIGNAL_TYPE])
    meta = NULL if metadata is None else copy_json(metadata)
    return (
        f"{e[USER_ID] or NULL}\t{session_id or NULL}\t{content}\t{ctype}\t{stype}\t{e[WEIGHT]}"
        f"\t{meta}\t{e[OCCURRED_AT]}"
    )


async def lock_users(conn: AsyncConnection[Any], user_ids: Iterable[str]) -> dict[str, str | None]:
    """Lock the profiles against delete until commit; returns user_id -> privacy_level of those that exist.

    Ids are canonical UUID text and come back as such.
    """
    ids = ",".join(user_ids)
    if not ids:
        return {}
    cur = await conn.execute(q("lock_users_for_ingest"), {"user_ids": ids})
    return {row[0]: row[1] for row in await cur.fetchall()}


async def copy_event_lines(conn: AsyncConnection[Any], lines: Sequence[str]) -> None:
    """Write rows built by :func:`copy_line` with one COPY inside the caller's transaction."""
    async with conn.cursor().copy(COPY_EVENTS) as copy:
        for start in range(0, len(lines), COPY_CHUNK_ROWS):
            # A str is encoded by psycopg in the connection's client encoding.
            await copy.write("\n".join(lines[start : start + COPY_CHUNK_ROWS]) + "\n")
