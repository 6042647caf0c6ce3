"""Degradation: a circuit breaker in front of Redis for the read path.

The first Redis failure (connection refused, or no answer within
``settings.redis.timeout_s``) opens the breaker: from then on reads skip Redis and
go straight to PostgreSQL (no request waits for a timeout again), and cache writes
that could not be made (invalidations, flag version publications) are queued.  A
background probe PINGs Redis every ``cache_retry_s``; once it answers, the queued
invalidations are replayed *before* the breaker closes, so no stale snapshot is
served after recovery.  The state is exported as the gauge
``personalization_serving_cache_degraded`` and in ``GET /healthz/serving``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

from prometheus_client import Counter, Gauge

from personalization import metrics
from personalization.cache.serving import ServingCache
from personalization.errors import CacheUnavailable

log = logging.getLogger(__name__)

DEGRADED = Gauge("personalization_serving_cache_degraded", "1 while the read path serves without Redis")
FALLBACKS = Counter("personalization_serving_fallback_total", "Read-path operations answered from PostgreSQL", ["op"])
RECOVERIES = Counter("personalization_serving_cache_recoveries_total", "Times the read path got Redis back")


class CacheGuard:
    """Tracks whether Redis is usable and brings it back by itself."""

    def __init__(self, cache: ServingCache, retry_s: float) -> None:
        self.cache = cache
        self.retry_s = retry_s
        self.up = True
        self.down_since: float | None = None
        self.last_error: str | None = None
        self._failed_at: float | None = None
        self.pending_users: set[uuid.UUID] = set()
        self.pending_flags: dict[str, int] = {}
        self._probe: asyncio.Task[None] | None = None
        DEGRADED.set(0)

    def trip(self, op: str, exc: BaseException | None = None) -> None:
        """Record a failed Redis call and open the breaker (idempotent)."""
        metrics.CACHE_ERRORS.labels(op).inc()
        FALLBACKS.labels(op).inc()
        self._failed_at = time.monotonic()
        if exc is not None:
            self.last_error = str(exc) or type(exc).__name__
        if not self.up:
            return
        self.up = False
        self.down_since = time.time()
        DEGRADED.set(1)
        metrics.CACHE_AVAILABLE.set(0)
        log.warning("Redis unavailable (%s): serving from PostgreSQL until it answers again", self.last_error)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._recover(), name="serving-cache-probe")

    def failed_within(self, window_s: float) -> str | None:
        """The last error if a read-path Redis call failed less than ``window_s`` ago (else None).

        The breaker may close again at once when the failure was one key's (WRONGTYPE) or a
        script's: health still reports it for the window.
        """
        if self._failed_at is None or time.monotonic() - self._failed_at >= window_s:
            return None
        return self.last_error or "Redis call failed"

    def fallback(self, op: str) -> None:
        """Count a read answered from PostgreSQL because the breaker is open."""
        FALLBACKS.labels(op).inc()

    def defer_invalidation(self, user_id: uuid.UUID) -> None:
        self.pending_users.add(user_id)

    def defer_flag_version(self, flag: str, version: int) -> None:
        self.pending_flags[flag] = max(version, self.pending_flags.get(flag, 0))

    async def _replay(self) -> None:
        for user_id in list(self.pending_users):
            await self.cache.invalidate(user_id)
            self.pending_users.discard(user_id)
        for flag, version in list(self.pending_flags.items()):
            await self.cache.publish_rules_version(flag, version)
            self.pending_flags.pop(flag, None)

    async def _recover(self) -> None:
        while not self.up:
            await asyncio.sleep(self.retry_s)
            try:
                await self.cache.ping()
                # Loop until empty: writes keep queueing while the breaker is open,
                # and there is no await between the last check and closing it.
                while self.pending_users or self.pending_flags:
                    await self._replay()
            except CacheUnavailable as exc:
                self.last_error = str(exc) or type(exc).__name__
                continue
            except Exception as exc:  # e.g. a Redis error reply: keep probing, never die silently
                log.exception("Redis recovery attempt failed")
                self.last_error = str(exc) or type(exc).__name__
                continue
            self.up = True
            self.down_since = None
            DEGRADED.set(0)
            metrics.CACHE_AVAILABLE.set(1)
            RECOVERIES.inc()
            log.warning("Redis is back: read path uses the cache again")

    def status(self) -> dict[str, Any]:
        return {
            "redis": "up" if self.up else "degraded",
            "degraded_since": self.down_since,
            "last_error": self.last_error,
            "pending_invalidations": len(self.pending_users) + len(self.pending_flags),
        }

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
