"""The erasure worker: completes what erase requests left in the outbox (``store/erasures.py``).

Three independent loops, so a broker that is down never delays the rollups:

* ``rollups``: every pending rollups part at that moment is claimed (one refresher across
  all processes, an advisory lock) and completed by *one* ``REFRESH MATERIALIZED VIEW
  CONCURRENTLY``, skipped when the view no longer holds any of the users (a nightly swap
  since the erase rebuilt it without them).  Erasures arriving during a refresh are taken
  by the next one, so a part waits at most about two refresh durations.
* ``kafka``: tombstones for the claimed users' keys on the CDC topics, in one flush; on
  failure the parts back off exponentially (``erasure_retry_max_s`` at most) and are
  retried until the broker acknowledges them.
* ``redis``: the second delete of the user's keys, normally done by the request itself; a
  process killed between the commit and that delete leaves it here.

Each loop runs a pass when woken (an erase in this process) or every
``erasure_worker_poll_s``.  Claims use ``FOR UPDATE SKIP LOCKED``, so the worker of every
API process and ``personalization workers run erasures`` cooperate without coordination.
The last part of an erasure completes it: the user id kept for the tombstones is dropped
and the erase's audit row gets outcome ``ok`` (and a log line).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from prometheus_client import Counter, Gauge, Histogram

from personalization.cache.client import AsyncRedis
from personalization.cache.datarights import delete_user_keys
from personalization.config import Settings
from personalization.datarights.erase import KafkaTombstones
from personalization.errors import CacheUnavailable, PersonalizationError
from personalization.security import audit
from personalization.store.db import Database
from personalization.store.erasures import Completed, ErasureOutbox, Part, PartClaim

__all__ = ["ErasureWorker", "PassResult"]

log = logging.getLogger("personalization.datarights.worker")
PARTS_DONE = Counter("personalization_erasure_parts_done_total", "Erasure parts completed by the worker", ["part"])
PART_FAILURES = Counter("personalization_erasure_part_failures_total", "Failed attempts of erasure parts", ["part"])
COMPLETED = Counter("personalization_erasures_completed_total", "Erasures whose last part was completed")
REFRESHES = Counter("personalization_erasure_rollup_refreshes_total", "Rollup refreshes run for erasures")
PENDING = Gauge("personalization_erasures_pending", "Erasures not complete yet (as of the last pass)")
COMPLETION_SECONDS = Histogram("personalization_erasure_completion_seconds",
                               "From the erase request to the erasure's completion",
                               buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 600, 3600))

# Parts claimed per pass (the rollups pass takes every pending one: one refresh serves them all).
_BATCH = {"redis": 200, "kafka": 500, "rollups": 100_000}
# The request deletes its keys a second time itself; only older parts are the worker's.
_REDIS_MIN_AGE_S = 5.0
# After a wake-up the rollups loop waits until no erase arrived for _GATHER_S (at most
# _GATHER_MAX_S), so one refresh covers a whole burst instead of its first few erasures.
_GATHER_S = 0.3
_GATHER_MAX_S = 2.0


@dataclass
class PassResult:
    """What one pass did."""

    done: dict[str, int] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    completed: int = 0
    refreshed: bool = False
    full: bool = False


class ErasureWorker:
    """Completes pending erasure parts; run :meth:`run` as a task, or :meth:`run_once` in a loop."""

    def __init__(self, db: Database, redis: AsyncRedis, settings: Settings,
                 tombstones: KafkaTombstones | None = None) -> None:
        self.outbox = ErasureOutbox(db)
        self.redis = redis
        self.settings = settings
        self.tombstones = tombstones if tombstones is not None else (
            KafkaTombstones(settings) if settings.erase.kafka_tombstones else None)
        self._wakes: dict[Part, asyncio.Event] = {p: asyncio.Event() for p in ("redis", "rollups", "kafka")}

    def wake(self) -> None:
        """Start a pass of every loop now (called by an erase in this process, on its event loop)."""
        for event in self._wakes.values():
            event.set()

    async def run_once(self) -> PassResult:
        """One pass of each part, in order: redis, rollups, kafka."""
        result = PassResult()
        for part in ("redis", "rollups", "kafka"):
            await self._pass(part, result)
        PENDING.set(await self.outbox.pending())
        return result

    async def run(self, stop: asyncio.Event) -> None:
        """Run the three loops until ``stop`` is set; errors are logged and retried at the next poll."""
        loops = [self._loop(part, stop) for part in ("redis", "rollups", "kafka")]
        try:
            await asyncio.gather(*loops)
        finally:
            if self.tombstones is not None:
                await asyncio.to_thread(self.tombstones.close)

    async def _loop(self, part: Part, stop: asyncio.Event) -> None:
        wake = self._wakes[part]
        while not stop.is_set():
            result = PassResult()
            try:
                await self._pass(part, result)
                if part == "rollups":
                    PENDING.set(await self.outbox.pending())
            except PersonalizationError as exc:
                log.warning("erasure worker %s pass failed, retrying: %s", part, exc)
            except Exception:  # never let the loop die silently: the next poll tries again
                log.exception("erasure worker %s pass failed", part)
            if result.full:
                continue
            await _wait_any(wake, stop, self.settings.workers.erasure_poll_s)
            if wake.is_set() and part == "rollups":
                await _gather(wake, stop)
            wake.clear()

    async def _pass(self, part: Part, result: PassResult) -> None:
        steps: dict[Part, Callable[[PassResult], Awaitable[None]]] = {
            "redis": self._redis, "rollups": self._rollups, "kafka": self._kafka}
        await steps[part](result)

    async def _redis(self, result: PassResult) -> None:
        async with self.outbox.claiming("redis", limit=_BATCH["redis"], min_age_s=_REDIS_MIN_AGE_S) as claim:
            if not claim.claimed:
                return
            try:
                for c in claim.claimed:
                    await delete_user_keys(self.redis, c.redis_keys)
            except CacheUnavailable as exc:
                await self._failed(claim, "redis", str(exc), result)
                return
            self._finished("redis", len(claim.claimed), await claim.done(), result)
            result.full = len(claim.claimed) >= _BATCH["redis"]

    async def _rollups(self, result: PassResult) -> None:
        async with self.outbox.claiming("rollups", limit=_BATCH["rollups"]) as claim:
            if not claim.claimed:
                return
            if await claim.rollups_hold_any():
                started = time.perf_counter()
                await claim.refresh_rollups()
                REFRESHES.inc()
                result.refreshed = True
                log.info("rollups refreshed for %d erasure(s) in %.2fs", len(claim.claimed),
                         time.perf_counter() - started)
            self._finished("rollups", len(claim.claimed), await claim.done(), result)

    async def _kafka(self, result: PassResult) -> None:
        if self.tombstones is None:
            return  # tombstones switched off after these erasures were recorded: they stay pending
        tombstones = self.tombstones
        async with self.outbox.claiming("kafka", limit=_BATCH["kafka"]) as claim:
            subjects = [c.subject_id for c in claim.claimed if c.subject_id is not None]
            if not claim.claimed:
                return
            try:
                await asyncio.to_thread(tombstones.publish, *subjects)
            except CacheUnavailable as exc:  # the producer's translation of every Kafka failure
                await self._failed(claim, "kafka", str(exc), result)
                return
            self._finished("kafka", len(claim.claimed), await claim.done(), result)
            result.full = len(claim.claimed) >= _BATCH["kafka"]

    async def _failed(self, claim: PartClaim, part: Part, error: str, result: PassResult) -> None:
        await claim.retry_later(error, self.settings.workers.erasure_retry_max_s)
        PART_FAILURES.labels(part).inc()
        result.failed[part] = error
        log.warning("erasure %s part failed for %d erasure(s), retrying with backoff: %s",
                    part, len(claim.claimed), error)

    @staticmethod
    def _finished(part: Part, n: int, completed: list[Completed], result: PassResult) -> None:
        PARTS_DONE.labels(part).inc(n)
        result.done[part] = result.done.get(part, 0) + n
        result.completed += len(completed)
        for c in completed:
            COMPLETED.inc()
            COMPLETION_SECONDS.observe((c.completed_at - c.requested_at).total_seconds())
            audit.log_line(c.audit_id, c.actor, "user.erase", c.subject_hash, None, "ok", c.audit_details)


async def _gather(wake: asyncio.Event, stop: asyncio.Event) -> None:
    deadline = time.monotonic() + _GATHER_MAX_S
    while not stop.is_set():
        wake.clear()
        left = min(_GATHER_S, deadline - time.monotonic())
        if left <= 0:
            return
        await _wait_any(wake, stop, left)
        if not wake.is_set():
            return


async def _wait_any(event: asyncio.Event, stop: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await w
