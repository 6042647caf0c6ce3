"""Export everything held about one user as one JSON document, streamed.

The document (``format: personalization-export/1``) has, in this order: the profile and
its privacy level and policy, the traits, every event (streamed from a server-side
cursor, so a user with millions of events costs constant memory), the decayed score per
(content_type, signal_type) at export time (the project's one decay definition, computed
while the events stream), the user's rollup rows, the rows of every other table with a
``user_id`` column (learner state, feature-store snapshots, flag overrides, ...), and the
cached values in Redis (every named key of the user, including each flag's cached result,
and the recent-content lists of the user's sessions, which the events name: no SCAN).
PostgreSQL parts are read in one REPEATABLE READ transaction, so they are one consistent
snapshot.
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

from personalization.cache.client import AsyncRedis
from personalization.cache.datarights import cached_values, user_key_names
from personalization.core.decay import DecayConfig, event_score
from personalization.core.privacy import policy_for
from personalization.errors import CacheUnavailable, NotFound
from personalization.security import audit
from personalization.store.datarights import DataRightsStore
from personalization.store.db import Database

__all__ = ["FORMAT", "Exporter", "cached_values"]

log = logging.getLogger("personalization.datarights.export")
FORMAT = "personalization-export/1"
_CHUNK_BYTES = 64 * 1024


def _default(o: Any) -> Any:
    if isinstance(o, Decimal):
        # Exact, and as the API writes the same values (trait confidence "0.80").
        return str(o)
    if isinstance(o, bytes | memoryview):
        return {"base64": base64.b64encode(bytes(o)).decode()}
    return str(o)


def _dumps(o: Any) -> bytes:
    return orjson.dumps(o, default=_default)


class Exporter:
    """The export use case: check the user exists, then stream the document."""

    def __init__(self, db: Database, redis: AsyncRedis, decay: DecayConfig) -> None:
        self.db = db
        self.store = DataRightsStore(db)
        self.redis = redis
        self.decay = decay

    async def check(self, user_id: uuid.UUID) -> None:
        """NotFound unless the user has a profile (before any byte is streamed)."""
        if not await self.store.profile_exists(user_id):
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
        sessions: set[uuid.UUID] = set()
        scores: dict[tuple[str, str], float] = {}
        async with self.store.exporting(user_id) as snap:
            profile = await snap.profile()
            traits = await snap.traits()
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
            async for row in snap.events():
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
            rollups = await snap.rollups()
            others = await snap.other_tables()
            flags = await snap.flag_names()
        counts["tables"] = len(others)
        try:
            cache: Any = await cached_values(self.redis, user_key_names(user_id, sessions, flags))
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
