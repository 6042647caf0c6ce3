"""Redis side of ingestion: replay detection (``user:{id}:signals``) and session recents.

Each key family is updated by a small Lua script per key (one call per user or
session instead of one command per event), and every script touches exactly one
key, so the calls stay valid in Redis Cluster.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Iterable
from importlib import resources

import orjson
import redis.asyncio as aioredis

from personalization import metrics
from personalization.cache import keys
from personalization.cache.client import wrap_exceptions


def _lua(name: str) -> str:
    return (resources.files("personalization.cache") / "lua" / f"{name}.lua").read_text()


class EventCache:
    """The two key families the write path maintains."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._r = client
        self._claim = client.register_script(_lua("claim_event_ids"))
        self._views = client.register_script(_lua("record_views"))

    async def claim_event_ids(self, items: list[tuple[uuid.UUID, str, float]]) -> list[bool]:
        """``ZADD NX`` each (user, client event id, occurred_at); True where the id is new.

        The sets are kept inside their 48 h window: entries scored older than the
        window are trimmed and the key's TTL renewed by the same script.
        """
        floor = time.time() - keys.USER_SIGNALS.ttl_s
        per: dict[uuid.UUID, list[int]] = defaultdict(list)
        for n, (owner, _, _) in enumerate(items):
            per[owner].append(n)
        out = [False] * len(items)
        try:
            with wrap_exceptions():
                async with self._r.pipeline(transaction=False) as pipe:
                    order = list(per.items())
                    for owner, idxs in order:
                        batch = orjson.dumps([(items[n][2], items[n][1]) for n in idxs])
                        await self._claim(
                            keys=[keys.user_signals(owner)], args=[floor, keys.USER_SIGNALS.ttl_s, batch], client=pipe
                        )
                    res = await pipe.execute()
        except Exception:
            metrics.CACHE_ERRORS.labels("claim_event_ids").inc()
            metrics.CACHE_AVAILABLE.set(0)
            raise
        metrics.CACHE_AVAILABLE.set(1)
        for (_, idxs), flags in zip(order, res, strict=True):
            for n, f in zip(idxs, flags, strict=True):
                out[n] = bool(f)
        return out

    async def release_event_ids(self, claimed: dict[uuid.UUID, list[str]]) -> None:
        """Forget ids claimed by a batch whose commit failed, so a retry is stored."""
        with wrap_exceptions():
            async with self._r.pipeline(transaction=False) as pipe:
                for owner, members in claimed.items():
                    pipe.zrem(keys.user_signals(owner), *members)
                await pipe.execute()

    async def record_views(self, views: Iterable[tuple[uuid.UUID, str, float]]) -> None:
        """Push viewed content onto each session's list: newest first, distinct, capped, 24 h TTL."""
        per: dict[uuid.UUID, list[tuple[float, str]]] = defaultdict(list)
        for session, content, ts in views:
            per[session].append((ts, content))
        spec = keys.SESSION_RECENT_CONTENT
        assert spec.cap is not None
        try:
            with wrap_exceptions():
                async with self._r.pipeline(transaction=False) as pipe:
                    for session, items in per.items():
                        # Oldest first, so that the newest ends at the head; only the
                        # newest ``cap`` can survive the trim anyway.
                        contents = [c for _, c in sorted(items)][-spec.cap :]
                        await self._views(
                            keys=[keys.session_recent_content(session)],
                            args=[spec.cap, spec.ttl_s, orjson.dumps(contents)],
                            client=pipe,
                        )
                    await pipe.execute()
        except Exception:
            metrics.CACHE_ERRORS.labels("record_views").inc()
            raise

    async def recent_content(self, session_id: uuid.UUID) -> list[str]:
        """The session's recent content ids, newest first."""
        with wrap_exceptions():
            raw = await self._r.lrange(keys.session_recent_content(session_id), 0, -1)
        return [x.decode() if isinstance(x, bytes) else str(x) for x in raw]
