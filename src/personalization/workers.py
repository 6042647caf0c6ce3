"""The outbox workers as components: inside every API process, or one per CLI command.

``erasures``: :class:`personalization.datarights.worker.ErasureWorker` (what erase
requests left: the rollups refresh, the Kafka tombstones, a second Redis delete).
``invalidations``: :class:`personalization.serving.outbox.InvalidationReplayer` (cache
invalidations that did not reach Redis).  Both claim their rows with ``FOR UPDATE SKIP
LOCKED``, so any number of processes run them side by side; a supervisor can run them as
separate components with ``personalization workers run erasures|invalidations``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, assert_never

from personalization.composition import Platform
from personalization.datarights.worker import ErasureWorker
from personalization.errors import PersonalizationError
from personalization.serving.outbox import InvalidationReplayer

__all__ = ["WorkerKind", "Workers", "background_workers", "erasure_worker", "invalidation_replayer"]

log = logging.getLogger("personalization.workers")
WorkerKind = Literal["erasures", "invalidations"]
# A stopping worker finishes its pass within this (a Kafka flush is bounded by kafka.timeout_s).
_STOP_GRACE_S = 10.0
# The start-up replay must not hold a process back for long when Redis is slow.
_STARTUP_REPLAY_S = 5.0


def erasure_worker(platform: Platform) -> ErasureWorker:
    """The erasure worker on the platform's pool and Redis client."""
    return ErasureWorker(platform.db, platform.redis, platform.settings)


def invalidation_replayer(platform: Platform) -> InvalidationReplayer:
    """The invalidation replay on the platform's pool and the read path's cache."""
    return InvalidationReplayer(platform.db, platform.serving.cache, platform.settings.workers.invalidation_replay_s)


@dataclass
class Workers:
    """The running workers of one process."""

    erasures: ErasureWorker | None = None
    invalidations: InvalidationReplayer | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def wake_erasures(self) -> None:
        """Nudge the erasure worker (an erase in this process recorded pending parts)."""
        if self.erasures is not None:
            self.erasures.wake()


def _start(kind: WorkerKind, platform: Platform, workers: Workers, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    match kind:
        case "erasures":
            workers.erasures = erasure_worker(platform)
            workers.tasks.append(loop.create_task(workers.erasures.run(stop), name="erasure-worker"))
        case "invalidations":
            workers.invalidations = invalidation_replayer(platform)
            workers.tasks.append(loop.create_task(workers.invalidations.run(stop), name="invalidation-replay"))
        case _:
            assert_never(kind)


@contextlib.asynccontextmanager
async def background_workers(platform: Platform, kinds: tuple[WorkerKind, ...] = ("erasures", "invalidations"),
                             ) -> AsyncIterator[Workers]:
    """Run the workers as tasks of the current loop for the block's duration.

    With ``invalidations`` the outbox is replayed once before the block starts (bounded),
    so a process restarted after a crash serves no snapshot older than a committed change.
    """
    workers = Workers()
    stop = asyncio.Event()
    if "invalidations" in kinds:
        try:
            await asyncio.wait_for(invalidation_replayer(platform).replay_once(), _STARTUP_REPLAY_S)
        except (PersonalizationError, TimeoutError) as exc:
            log.warning("start-up invalidation replay deferred to the background: %s", exc or "timeout")
    for kind in kinds:
        _start(kind, platform, workers, stop)
    try:
        yield workers
    finally:
        stop.set()
        done, pending = await asyncio.wait(workers.tasks, timeout=_STOP_GRACE_S) if workers.tasks else (set(), set())
        for task in pending:
            task.cancel()
        for task in (*done, *pending):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
