"""Composition root: builds the stores, caches and use cases from one Settings object."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis

from personalization.cache.client import make_client, probe
from personalization.cache.events import EventCache
from personalization.cache.serving import ServingCache
from personalization.config import Settings
from personalization.errors import CacheUnavailable
from personalization.experiments.exposures import ExposureRecorder
from personalization.experiments.service import ExperimentService
from personalization.ingest.events import Ingestor
from personalization.ingest.profiles import ProfileService
from personalization.recommend.service import Recommender
from personalization.serving.service import ServingService
from personalization.store.db import Database
from personalization.store.experiments import ExperimentStore
from personalization.store.profiles import ProfileStore


@dataclass
class Platform:
    """Everything a process needs, wired together; open it with :func:`open_platform`."""

    settings: Settings
    db: Database
    redis: aioredis.Redis
    events_cache: EventCache
    ingestor: Ingestor
    profiles: ProfileService
    serving: ServingService
    experiments: ExperimentService
    exposures: ExposureRecorder | None
    recommender: Recommender

    async def cache_ok(self) -> bool:
        """True when Redis accepts a write within its timeout and no Redis call failed lately."""
        return await self.cache_error() is None

    async def cache_error(self) -> str | None:
        """Why Redis counts as degraded now (None when it does not): the probe's or a recent call's error."""
        try:
            await probe(self.redis)
        except CacheUnavailable as exc:
            return str(exc)
        window = self.settings.redis.health_window_s
        return self.events_cache.failures.within(window) or self.serving.guard.failed_within(window)


@contextlib.asynccontextmanager
async def open_platform(settings: Settings) -> AsyncIterator[Platform]:
    """Open pools and clients, yield the platform, drain and close on exit."""
    db = Database(settings)
    await db.open()
    redis = make_client(settings)
    events_cache = EventCache(redis)
    profiles = ProfileService(ProfileStore(db))

    xp = settings.experiments
    experiment_store = ExperimentStore(db, results_work_mem=xp.results_work_mem)
    exposures = (
        ExposureRecorder(
            experiment_store,
            window_ms=xp.exposure_window_ms,
            max_rows=xp.exposure_max_rows,
            concurrency=xp.exposure_concurrency,
            memory_size=xp.exposure_memory_size,
            drain_timeout_s=xp.exposure_drain_timeout_s,
        )
        if xp.record_exposures
        else None
    )
    # Generation-checked invalidation of the read path (see cache/serving.py).
    serving = ServingService(
        db,
        ServingCache(redis),
        settings.serving,
        embedding_dim=settings.embedding.dim,
        view_signal_types=settings.ingest.view_signal_types,
        exposures=exposures,
    )
    profiles.on_change(serving.invalidate)
    ingestor = Ingestor(db, events_cache, settings)
    # Recommendations reuse the read path's reader state (flags through FlagService, so its
    # exposure hook records them too; embedding; recent content).
    recommender = Recommender(db, serving, settings.recommend, decay=settings.decay.config(),
                              embedding_dim=settings.embedding.dim)
    platform = Platform(
        settings, db, redis, events_cache, ingestor, profiles, serving, ExperimentService(experiment_store), exposures,
        recommender,
    )
    try:
        yield platform
    finally:
        await serving.close()
        if exposures is not None:
            # Drained before the pool closes: every pending exposure gets its commit.
            await exposures.close()
        await ingestor.close()
        await redis.aclose()
        await db.close()
