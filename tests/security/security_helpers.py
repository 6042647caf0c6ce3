"""Helpers of the security tests."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg

MakeKey = Callable[..., Awaitable[str]]


def event(user_id: uuid.UUID | None, session_id: uuid.UUID, content_id: str, signal: str = "read",
          minutes_ago: int = 5, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """One event body with a client event id (so Redis dedup keys are made)."""
    return {
        "client_event_id": str(uuid.uuid4()),
        "user_id": None if user_id is None else str(user_id),
        "session_id": str(session_id),
        "content_id": content_id,
        "content_type": "chapter",
        "signal_type": signal,
        "signal_weight": 0.75,
        "metadata": metadata if metadata is not None else {"screen": "reader", "note": "prayed for my mother"},
        "occurred_at": (datetime.now(UTC) - timedelta(minutes=minutes_ago)).isoformat(),
    }


async def populate_user(client: httpx.AsyncClient, privacy: str = "standard", events: int = 6,
                        sessions: int = 2) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """A user with a profile, two traits and events over ``sessions`` sessions, via the API."""
    uid = uuid.uuid4()
    r = await client.put(f"/v1/users/{uid}", json={"denomination": "baptist", "preferred_translation": "KJV",
                                                   "privacy_level": privacy})
    assert r.status_code == 201, r.text
    for t, v in (("tone", "gentle"), ("language", "en")):
        r = await client.post(f"/v1/users/{uid}/traits", json={"trait_type": t, "trait_value": v, "confidence": 0.9})
        assert r.status_code == 201, r.text
    sids = [uuid.uuid4() for _ in range(sessions)]
    signals = ("read", "bookmark", "view")
    evs = [event(uid, sids[i % sessions], f"PSA.{i + 1}", signals[(i // sessions) % 3], minutes_ago=i + 1)
           for i in range(events)]
    r = await client.post("/v1/events", json={"events": evs})
    assert r.status_code == 200, r.text
    return uid, sids


def rows_per_table(db_url: str, user_id: uuid.UUID) -> dict[str, int]:
    """Rows of ``user_id`` in every table with a uuid user_id column (the spec's and all others)."""
    out: dict[str, int] = {}
    with psycopg.connect(db_url) as conn:
        tables = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE a.attname = 'user_id' "
            "AND a.atttypid = 'uuid'::regtype AND c.relkind IN ('r', 'p', 'm') AND NOT c.relispartition "
            # Other sessions' temporary tables cannot be read (nor hold anything durable).
            "AND c.relpersistence <> 't' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        for schema, table in tables:
            row = conn.execute(
                psycopg.sql.SQL("SELECT count(*) FROM {}.{} WHERE user_id = %s").format(
                    psycopg.sql.Identifier(schema), psycopg.sql.Identifier(table)
                ),
                (user_id,),
            ).fetchone()
            assert row is not None
            out[f"{schema}.{table}"] = int(row[0])
    return out
