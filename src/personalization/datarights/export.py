"""Export everything held about one user as one JSON document, streamed.

The document (``format: personalization-export/1``) has, in this order: the profile and
its privacy level and policy, the traits, every event (streamed from a server-side
cursor, so a user with millions of events costs constant memory), the decayed score per
(content_type, signal_type) at export time (the project's one decay definition, computed
while the events stream), the user's rollup rows, the rows of every other table with a
``user_id`` column (learner state, feature-store snapshots, flag overrides, ...), and the
cached values in Redis (every key with the user's hash tag and the recent-content lists of
the user's sessions).  PostgreSQL parts are read in one REPEATABLE READ transaction, so
they are one consistent snapshot.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import redis.asyncio as aioredis
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from personalization.cache import keys
from personalization.cache.client import wrap_exceptions as redis_errors
from personalization.core.decay import DecayConfig, event_score
from personalization.core.privacy import policy_for
from personalization.errors import CacheUnavailable, NotFound
from personalization.security import audit
from personalization.store.db import Database, wrap_exceptions
from personalization.store.queries import q

log = logging.getLogger("personalization.datarights.export")
_SQL = "security.sql"
FORMAT = "personalization-export/1"
_CHUNK_BYTES = 64 * 1024
_CURSOR_ROWS = 2000


def _default(o: Any) -> Any:
    if isinstance(o, Decimal):
        # Exact, and as the API writes the same values (trait confidence "0.80").
        return str(o)
    if isinstance(o, bytes | memoryview):
        return {"base64": base64.b64encode(bytes(o)).decode()}
    return str(o)


def _dumps(o: Any) -> bytes:
    return orjson.dumps(o, default=_default)


def _text(b: bytes | str) -> str | dict[str, str]:
    if isinstance(b, str):
        return b
    try:
        return b.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(b).decode()}


async def _dump_key(redis: aioredis.Redis, key: bytes) -> dict[str, Any] | None:
    raw_kind = await redis.type(key)
    kind = raw_kind.decode() if isinstance(raw_kind, bytes) else str(raw_kind)
    value: Any
    if kind == "none":
        return None
    if kind == "string":
        raw = await redis.get(key)
        value = None if raw is None else _text(raw)
    elif kind == "hash":
        value = {str(_text(k)): _text(v) for k, v in (await redis.hgetall(key)).items()}
    elif kind == "list":
        value = [_text(v) for v in await redis.lrange(key, 0, -1)]
    elif kind == "set":
        value = sorted(str(_text(v)) for v in await redis.smembers(key))
    elif kind == "zset":
        pairs: list[Any] = await redis.zrange(key, 0, -1, withscores=True)
        value = [[_text(m), score] for m, score in pairs]
    else:
        value = f"<{kind} not exported>"
    return {"key": key.decode(), "type": kind, "ttl_s": int(await redis.ttl(key)), "value": value}


async def cached_values(redis: aioredis.Redis, user_id: uuid.UUID, sessions: set[uuid.UUID]) -> list[dict[str, Any]]:
    """Every Redis key of the user (hash tag) and of the user's sessions, with type, TTL and value."""
    out: list[dict[str, Any]] = []
    with redis_errors():
        found: list[bytes] = [k async for k in redis.scan_iter(match=keys.user_tag_pattern(user_id), count=1000)]
        found += [keys.session_recent_content(s).encode() for s in sorted(sessions, key=str)]
        for k in sorted(set(found)):
            item = await _dump_key(redis, k)
            if item is not None:
                out.append(item)
    return out


async def _other_tables(conn: AsyncConnection[Any], user_id: uuid.UUID) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q("user_tables", _SQL))
        tables = [(r["schema_name"], r["table_name"]) for r in await cur.fetchall()]
        for schema, table in tables:
            stmt = sql.SQL("SELECT * FROM {}.{} WHERE user_id = %(user_id)s").format(
                sql.Identifier(schema), sql.Identifier(table)
            )
            await cur.execute(stmt, {"user_id": user_id})
            rows = await cur.fetchall()
            if rows:
                out[f"{schema}.{table}"] = rows
    return out


class Exporter:
    """The export use case: check the user exists, then stream the document."""

    def __init__(self, db: Database, redis: aioredis.Redis, decay: DecayConfig) -> None:
        self.db = db
        self.redis = redis
        self.decay = decay

    async def check(self, user_id: uuid.UUID) -> None:
        """NotFound unless the user has a profile (before any byte is streamed)."""
        if await self.db.fetch_one(q("export_profile", _SQL), {"user_id": user_id}) is None:
            raise NotFound("user", "user_id", str(user_id))

    async def stream(self, user_id: uuid.UUID, actor: str) -> AsyncIterator[bytes]:
        """The JSON document in chunks; writes the audit row when the last chunk is produced."""
        started = time.perf_counter()
        counts: dict[str, Any] = {"events": 0, "traits": 0, "tables": 0, "cache_keys": 0}
        outcome = "incomplete"
        try:
            async for chunk in self._document(user_id, counts):
                yield chunk
            outcome = "ok"
        finally:
            counts["duration_s"] = round(time.perf_counter() - started, 4)
            try:
                await audit.record(self.db, actor=actor, action="user.export", subject=user_id,
                                   outcome=outcome, details=counts)
            except Exception:  # the document is out; a failed audit write must still be visible
                log.exception("could not write the audit row of an export")

    async def _document(self, user_id: uuid.UUID, counts: dict[str, Any]) -> AsyncIterator[bytes]:
        now = datetime.now(UTC)
        params = {"user_id": user_id}
        sessions: set[uuid.UUID] = set()
        scores: dict[tuple[str, str], float] = {}
        async with self.db.connection() as conn:
            with wrap_exceptions():
                # Per transaction only: the pooled connection keeps its defaults for the next user.
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                async with conn.cursor(row_factory=dict_row) as cur:
                    await cur.execute(q("export_profile", _SQL), params)
                    profile = await cur.fetchone()
                    await cur.execute(q("export_traits", _SQL), params)
                    traits = await cur.fetchall()
                counts["traits"] = len(traits)
                level = profile["privacy_level"] if profile else None
                head = {
                    "format": FORMAT,
                    "generated_at": now.isoformat(),
                    "user_id": str(user_id),
                    "profile": profile,
                    "privacy": {"level": level, "policy": asdict(policy_for(level))},
                    "traits": traits,
                }
                buf = bytearray(_dumps(head)[:-1])
                buf += b',"events":['
                first = True
                async with conn.cursor(name=f"export_{uuid.uuid4().hex}", row_factory=dict_row) as ev:
                    ev.itersize = _CURSOR_ROWS
                    await ev.execute(q("export_events", _SQL), params)
                    async for row in ev:
                        if not first:
                            buf += b","
                        first = False
                        buf += _dumps(row)
                        counts["events"] += 1
                        if row["session_id"] is not None:
                            sessions.add(row["session_id"])
                        k = (row["content_type"], row["signal_type"])
                        scores[k] = scores.get(k, 0.0) + event_score(
                            self.decay, row["signal_type"], float(row["signal_weight"]), row["occurred_at"], now
                        )
                        if len(buf) >= _CHUNK_BYTES:
                            yield bytes(buf)
                            buf.clear()
                async with conn.cursor(row_factory=dict_row) as cur:
                    await cur.execute(q("export_rollups", _SQL), params)
                    rollups = await cur.fetchall()
                others = await _other_tables(conn, user_id)
        counts["tables"] = len(others)
        try:
            cache: Any = await cached_values(self.redis, user_id, sessions)
            counts["cache_keys"] = len(cache)
        except CacheUnavailable as exc:
            cache = {"error": f"Redis unavailable: {exc}"}
        decayed = [
            {"content_type": ct, "signal_type": st, "score": s}
            for (ct, st), s in sorted(scores.items())
        ]
        tail = {
            "events_count": counts["events"],
            "decayed_scores": {"at": now.isoformat(), "scores": decayed},
            "rollups": rollups,
            "other_tables": others,
            "cache": cache,
        }
        buf += b"],"
        buf += _dumps(tail)[1:]
        yield bytes(buf)
