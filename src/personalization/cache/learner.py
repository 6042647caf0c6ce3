"""Redis side of the online learner: ``user:{user_id}:embedding`` writes and deletes.

Synchronous redis-py, because the learner's consumer loop is a single thread.  Key and TTL
come from :mod:`personalization.cache.keys`.  Redis errors leave as ``CacheUnavailable``.
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

import redis

from personalization.cache import keys
from personalization.cache.client import wrap_exceptions


class EmbeddingCache:
    """Writes the learner's normalised user embeddings (float32 LE bytes) with the spec's TTL."""

    def __init__(self, redis_url: str, *, timeout_s: float = 2.0) -> None:
        """A client with bounded socket timeouts (a hung Redis must not hang the consumer)."""
        self._client = redis.Redis.from_url(redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    def ping(self) -> None:
        """Raise CacheUnavailable unless Redis answers."""
        with wrap_exceptions():
            self._client.ping()

    def apply(self, writes: Iterable[tuple[UUID, bytes]], deletes: Iterable[UUID]) -> None:
        """SET (with the 6 h TTL) every ``writes`` entry and DEL every ``deletes`` key, in one round trip."""
        ttl = keys.USER_EMBEDDING.ttl_s
        with wrap_exceptions():
            pipe = self._client.pipeline(transaction=False)
            n = 0
            for user_id, vector in writes:
                pipe.set(keys.user_embedding(user_id), vector, ex=ttl)
                n += 1
            for user_id in deletes:
                pipe.delete(keys.user_embedding(user_id))
                n += 1
            if n:
                pipe.execute()

    def close(self) -> None:
        """Release the connection pool."""
        self._client.close()
