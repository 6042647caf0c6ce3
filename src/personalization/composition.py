"""Composition root: builds the stores, caches and use cases from one Settings object."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis

from personalization.cache.client import make_client, wrap_exceptions
from personalization.cache.events import EventCache
from personalization.cache.serving import ServingCache
from personalization.config import Settings
from personalization.errors import CacheUnavailable
from personalization.ingest.events import Ingestor
from personalization.ingest.profiles import ProfileService
from personalization.recommend.service import Recommender
from personalization.recommend.settings import RecommendSettings
from personalization.serving.service import ServingService
from personalization.store.db import Database
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
    recommender: Recommender

    async def cache_ok(self) -> bool:
        """True when Redis answers a PING within its timeout."""
        try:
            with wrap_exceptions():
                return bool(await self.redis.ping())
        except CacheUnavailable:
            return False


@contextlib.asynccontextmanager
async def open_platform(settings: Settings) -> AsyncIterator[Platform]:
    """Open pools and clients, yield the platform, drain and close on exit."""
    db = Database(settings)
    await db.open()
    redis = make_client(settings)
    events_cache = EventCache(redis)
    profiles = ProfileService(ProfileStore(db))

    # Generation-checked invalidation of the read path (see cache/serving.py).
    serving = ServingService(db, ServingCache(redis), view_signal_types=settings.view_signal_types)
    profiles.on_change(serving.invalidate)
    ingestor = Ingestor(db, events_cache, settings)
    # Recommendations reuse the read path's reader state (flags, embedding, recent content).
    recommender = Recommender(db, serving, RecommendSettings())
    platform = Platform(settings, db, redis, events_cache, ingestor, profiles, serving, recommender)
    try:
        yield platform
    finally:
        await serving.close()
        await ingestor.close()
        await redis.aclose()
        await db.close()
