"""Redis side of ingestion: replay detection (``user:{id}:signals``) and session recents.

Each key family is updated by a few Lua calls per group commit, sent in one
pipeline (instead of one command per event).  The client here is a standalone Redis client, where one call
may name keys of any slot; a Redis Cluster deployment must split the keys by
hash slot (the ``{...}`` hash tags keep each user's keys together).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence

import orjson
import redis.asyncio as aioredis

from personalization import metrics
from personalization.cache import keys
from personalization.cache.client import RecentFailures, lua_script, wrap_exceptions

# Items per script call: one call runs atomically and blocks every other Redis
# client meanwhile, so a large group commit is split into calls of a few
# milliseconds each (sent in one pipeline, so still one round trip).
SCRIPT_ITEMS_MAX = 500


def _chunks(sizes: list[int], limit: int) -> list[slice]:
    """Consecutive slices of ``sizes`` whose totals stay at or under ``limit`` (at least one key each)."""
    out: list[slice] = []
    start = total = 0
    for i, n in enumerate(sizes):
        if i > start and total + n > limit:
            out.append(slice(start, i))
            start, total = i, 0
        total += n
    if start < len(sizes):
        out.append(slice(start, len(sizes)))
    return out


def _newest_distinct(views: Sequence[tuple[float, str]], cap: int) -> list[str]:
    """The newest ``cap`` distinct content ids of (occurred_at, content id) pairs, oldest first."""
    if len(views) == 1:
        return [views[0][1]]
    newest_first = list(dict.fromkeys(c for _, c in sorted(views, reverse=True)))
    return newest_first[:cap][::-1]


class EventCache:
    """The two key families the write path maintains."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._r = client
        self._claim = client.register_script(lua_script("claim_event_ids"))
        self._views = client.register_script(lua_script("record_views"))
        # For /healthz: the probe cannot see a refused script or a clobbered key.
        self.failures = RecentFailures()

    async def claim_event_ids(self, per_owner: Mapping[str, Sequence[int | str]]) -> list[bool]:
        """``ZADD NX`` each (occurred_at in whole epoch seconds, client event id) in its owner's signals set.

        ``per_owner`` maps a user id (canonical UUID text) to its pairs as one flat
        list ``[score, id, score, id, ...]`` with distinct ids; returns one flag per
        pair, owner by owner in the mapping's order: True where the id is new.
        The sets are kept inside their 48 h window: entries scored older than the
        window are trimmed and the key's TTL renewed by the same script.
        """
        floor = time.time() - keys.USER_SIGNALS.ttl_s
        payload = list(per_owner.values())
        names = [keys.user_signals(o) for o in per_owner]
        try:
            with wrap_exceptions():
                async with self._r.pipeline(transaction=False) as pipe:
                    for part in _chunks([len(p) // 2 for p in payload], SCRIPT_ITEMS_MAX):
                        await self._claim(
                            keys=names[part],
                            args=[floor, keys.USER_SIGNALS.ttl_s, orjson.dumps(payload[part])],
                            client=pipe,
                        )
                    flags = [f == 1 for res in await pipe.execute() for f in res]
        except Exception as exc:
            self.failures.note(str(exc) or type(exc).__name__)
            metrics.CACHE_ERRORS.labels("claim_event_ids").inc()
            metrics.CACHE_AVAILABLE.set(0)
            raise
        metrics.CACHE_AVAILABLE.set(1)
        if 2 * len(flags) != sum(len(p) for p in payload):
            raise RuntimeError(f"claim script answered {len(flags)} flags for {sum(map(len, payload)) // 2} ids")
        return flags

    async def release_event_ids(self, claimed: Mapping[str, Sequence[str]]) -> None:
        """Forget ids claimed by a batch whose commit failed, so a retry is stored."""
        with wrap_exceptions():
            async with self._r.pipeline(transaction=False) as pipe:
                for owner, members in claimed.items():
                    pipe.zrem(keys.user_signals(owner), *members)
                await pipe.execute()

    async def record_views(self, per_session: Mapping[str, Sequence[tuple[float, str]]]) -> None:
        """Push viewed content onto each session's list: newest first, distinct, capped, 24 h TTL.

        ``per_session`` maps a session id (canonical UUID text) to its views as
        (occurred_at epoch seconds, content id), in any order.
        """
        if not per_session:
            return
        spec = keys.SESSION_RECENT_CONTENT
        assert spec.cap is not None
        # Distinct and oldest first (a repeated id counts at its newest view), so that
        # the newest ends at the head; only the newest ``cap`` can survive the trim.
        payload = [_newest_distinct(v, spec.cap) for v in per_session.values()]
        names = [keys.session_recent_content(s) for s in per_session]
        try:
            with wrap_exceptions():
                async with self._r.pipeline(transaction=False) as pipe:
                    for part in _chunks([len(p) for p in payload], SCRIPT_ITEMS_MAX):
                        await self._views(
                            keys=names[part], args=[spec.cap, spec.ttl_s, orjson.dumps(payload[part])], client=pipe
                        )
                    await pipe.execute()
        except Exception as exc:
            self.failures.note(str(exc) or type(exc).__name__)
            metrics.CACHE_ERRORS.labels("record_views").inc()
            raise

    async def recent_content(self, session_id: uuid.UUID) -> list[str]:
        """The session's recent content ids, newest first."""
        with wrap_exceptions():
            raw = await self._r.lrange(keys.session_recent_content(session_id), 0, -1)
        return [x.decode() if isinstance(x, bytes) else str(x) for x in raw]
