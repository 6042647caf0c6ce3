"""No stale snapshot survives a write: generation check under concurrent writers and readers."""

from __future__ import annotations

import asyncio
import random
import uuid
from decimal import Decimal
from typing import Any

import httpx
import psycopg
import pytest
import redis
from serving_helpers import make_user

from personalization.cache import keys
from personalization.cache.serving import generation_invalidator
from personalization.composition import Platform
from personalization.core.models import ProfilePatch, TraitIn


async def test_raced_fill_is_rejected(platform: Platform, client: httpx.AsyncClient, sync_redis: redis.Redis) -> None:
    """A reader that read PostgreSQL before a write cannot put its value into the cache after it."""
    uid = await make_user(client, denomination="baptist")
    svc = platform.serving
    # Reader: takes the generation, then reads the database (old row) ...
    gen = await svc.cache.generation(uid)
    stale = await svc.store.preferences_snapshot(uid, Decimal("0.7"))
    assert stale is not None and stale["denomination"] == "baptist"
    # ... a write commits and invalidates ...
    await platform.profiles.patch(uid, ProfilePatch(denomination="methodist"))
    # ... and the reader's fill comes too late: refused.
    assert await svc.cache.fill_preferences(uid, gen, {"user_id": str(uid), "denomination": "baptist"}) is False
    assert not sync_redis.exists(keys.user_preferences(uid))
    assert (await svc.preferences(uid)).profile["denomination"] == "methodist"


async def test_concurrent_writers_and_readers(
    platform: Platform, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many readers and writers interleave; once writes stop, every read returns the last write."""
    users = [await make_user(client) for _ in range(4)]
    svc = platform.serving
    # Widen the race window: a reader's database read returns, then it dawdles before
    # filling the cache (as a busy process would).  The real query still runs.
    real_snapshot = svc.store.preferences_snapshot
    rng = random.Random(5)

    async def slow_snapshot(user_id: uuid.UUID, min_confidence: Decimal) -> dict[str, Any] | None:
        row = await real_snapshot(user_id, min_confidence)
        await asyncio.sleep(rng.uniform(0, 0.004))  # the dawdle itself: a slow reader is what is tested
        return row

    monkeypatch.setattr(svc.store, "preferences_snapshot", slow_snapshot)
    last: dict[uuid.UUID, int] = {}
    stop = asyncio.Event()
    stale_after_write: list[tuple[uuid.UUID, int, int]] = []

    async def writer(uid: uuid.UUID) -> None:
        for n in range(25):
            await platform.profiles.add_trait(
                uid, TraitIn(trait_type="counter", trait_value=n, confidence=Decimal("0.9"))
            )
            last[uid] = n
            # Read-your-write: right after the write returns, no reader may see an older value.
            got = (await svc.preferences(uid)).traits.get("counter")
            if got != n:
                stale_after_write.append((uid, n, got))
            await asyncio.sleep(0)  # a yield, not a wait: lets the readers interleave

    async def reader(uid: uuid.UUID) -> None:
        while not stop.is_set():
            await svc.preferences(uid)
            await asyncio.sleep(0)  # a yield, not a wait: lets the writers interleave

    readers = [asyncio.create_task(reader(u)) for u in users for _ in range(4)]
    await asyncio.gather(*(writer(u) for u in users))
    stop.set()
    await asyncio.gather(*readers)
    assert stale_after_write == []
    for uid in users:
        prefs = await svc.preferences(uid)
        assert prefs.source == "cache"
        assert prefs.traits["counter"] == last[uid] == 24


async def test_direct_sql_write_invalidated_by_cdc_invalidator(
    platform: Platform, client: httpx.AsyncClient, db_url: str, redis_url: str, sync_redis: redis.Redis
) -> None:
    """A write by another service (plain SQL) is invalidated through the CDC consumer's callback."""
    uid = await make_user(client, denomination="baptist")
    svc = platform.serving
    assert (await svc.preferences(uid)).profile["denomination"] == "baptist"
    gen = await svc.cache.generation(uid)
    with psycopg.connect(db_url) as conn:
        conn.execute("UPDATE user_profile SET denomination = 'anglican' WHERE user_id = %s", (uid,))
    # What `personalization cdc invalidate-cache` calls for each change event.
    generation_invalidator(redis_url)(uid)
    assert not sync_redis.exists(keys.user_preferences(uid))
    assert await svc.cache.generation(uid) != gen
    assert (await svc.preferences(uid)).profile["denomination"] == "anglican"
