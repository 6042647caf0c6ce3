"""Composition root: builds the stores, caches and use cases from one Settings object."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis

from personalization.cache import keys
from personalization.cache.client import make_client, wrap_exceptions
from personalization.cache.events import EventCache
from personalization.config import Settings
from personalization.errors import CacheUnavailable
from personalization.ingest import Ingestor
from personalization.profiles import ProfileService
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

    async def cache_ok(self) -> bool:
        """True when Redis answers a PING within its timeout."""
        try:
            with wrap_exceptions():
                return bool(await self.redis.ping())
        except CacheUnavailable:
            return False


async def _drop_preferences(redis: aioredis.Redis, user_id: object) -> None:
    with wrap_exceptions():
        await redis.delete(keys.user_preferences(str(user_id)))


@contextlib.asynccontextmanager
async def open_platform(settings: Settings) -> AsyncIterator[Platform]:
    """Open pools and clients, yield the platform, drain and close on exit."""
    db = Database(settings)
    await db.open()
    redis = make_client(settings)
    events_cache = EventCache(redis)
    profiles = ProfileService(ProfileStore(db))

    async def invalidate(user_id: object) -> None:
        await _drop_preferences(redis, user_id)

    profiles.on_change(invalidate)
    ingestor = Ingestor(db, events_cache, settings)
    platform = Platform(settings, db, redis, events_cache, ingestor, profiles)
    try:
        yield platform
    finally:
        await ingestor.close()
        await redis.aclose()
        await db.close()
