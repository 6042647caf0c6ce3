"""Replay of the invalidation outbox: cache invalidations survive Redis outages and crashes.

Every profile or trait change records its invalidation in ``cache_invalidations`` in its
own transaction (``store/profiles.py``).  The process that made the change clears the row
once Redis took the invalidation; otherwise (Redis unreachable, or the process killed
before it got there) the row stays, and this replay, which runs in every API process and
as ``personalization workers run invalidations``, applies it: a new generation token and
no snapshot for each user (``ServingCache.invalidate``), then deletes the rows it applied,
in the claim's transaction.  Rows are claimed with ``FOR UPDATE SKIP LOCKED``, so several
processes share the work.  An API process replays once before it serves its first
request, so a process restarted after a crash never serves a snapshot older than a
committed change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from prometheus_client import Counter, Gauge

from personalization.cache.serving import ServingCache
from personalization.errors import CacheUnavailable, PersonalizationError
from personalization.store.db import Database
from personalization.store.invalidations import InvalidationOutbox

__all__ = ["InvalidationReplayer"]

log = logging.getLogger("personalization.serving.outbox")
REPLAYED = Counter("personalization_invalidations_replayed_total", "Outbox invalidations applied by the replay")
PENDING = Gauge("personalization_invalidations_pending", "Outbox invalidations not applied yet (last replay)")

# Rows per claim.
_BATCH = 500


class InvalidationReplayer:
    """Applies the outbox's invalidations to Redis and deletes them."""

    def __init__(self, db: Database, cache: ServingCache, interval_s: float) -> None:
        self.outbox = InvalidationOutbox(db)
        self.cache = cache
        self.interval_s = interval_s

    async def replay_once(self) -> int:
        """Apply every row there is (batch by batch); returns how many.  CacheUnavailable when Redis fails."""
        total = 0
        while True:
            failure: CacheUnavailable | None = None
            async with self.outbox.claiming(_BATCH) as claim:
                applied: list[int] = []
                done_users: set[uuid.UUID] = set()
                try:
                    for invalidation_id, user_id in claim.rows:
                        if user_id not in done_users:
                            await self.cache.invalidate(user_id)
                            done_users.add(user_id)
                        applied.append(invalidation_id)
                except CacheUnavailable as exc:
                    failure = exc
                # What reached Redis is deleted (committed) even when a later one failed.
                await claim.delete(applied)
            total += len(applied)
            REPLAYED.inc(len(applied))
            if failure is not None:
                raise failure
            if len(claim.rows) < _BATCH:
                return total

    async def run(self, stop: asyncio.Event) -> None:
        """Replay every ``interval_s`` until ``stop`` is set (Redis or PostgreSQL failures: next round)."""
        while not stop.is_set():
            try:
                n = await self.replay_once()
                if n:
                    log.info("replayed %d cache invalidation(s) from the outbox", n)
                PENDING.set(await self.outbox.pending())
            except (CacheUnavailable, PersonalizationError) as exc:
                log.debug("invalidation replay deferred: %s", exc)
            except Exception:  # never let the loop die silently
                log.exception("invalidation replay failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
