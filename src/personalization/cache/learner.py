"""Redis side of the online learner: ``user:{user_id}:embedding`` writes and deletes.

Synchronous redis-py, because the learner's consumer loop is a single thread.  Key and TTL
come from :mod:`personalization.cache.keys`.  Redis errors leave as ``CacheUnavailable``.
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

import redis

from personalization.cache import keys
from personalization.cache.client import lua_script, wrap_exceptions

# Keys per Lua call / DEL command: bounds how long one call holds Redis (about a millisecond).
CHUNK = 1000


class EmbeddingCache:
    """Writes the learner's normalised user embeddings (float32 LE bytes) with the spec's TTL."""

    def __init__(self, redis_url: str, *, timeout_s: float = 2.0) -> None:
        """A client with bounded socket timeouts (a hung Redis must not hang the consumer)."""
        self._client = redis.Redis.from_url(redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._set_many = self._client.register_script(lua_script("set_embeddings"))

    def ping(self) -> None:
        """Raise CacheUnavailable unless Redis accepts a write (a read-only or full Redis answers PING)."""
        with wrap_exceptions():
            self._client.set(keys.health_probe(), b"1", ex=keys.HEALTH_PROBE.ttl_s)

    def content_version(self) -> bytes | None:
        """The content embeddings' version stamp, or None when unset or Redis does not answer.

        A Redis failure is not raised here: the learner's probe right after this call
        reports it, and a None stamp only makes the learner reload its content vectors.
        """
        try:
            raw = self._client.get(keys.content_embeddings_version())
        except redis.exceptions.RedisError:
            return None
        return raw if isinstance(raw, bytes) else None

    def apply(self, writes: Iterable[tuple[UUID, bytes]], deletes: Iterable[UUID]) -> None:
        """SET (with the 6 h TTL) every ``writes`` entry and DEL every ``deletes`` key, in one round trip.

        Thousands of keys per batch: the SETs go as Lua calls of ``CHUNK`` keys each and the
        deletes as DEL commands of ``CHUNK`` keys, all in one pipeline (a command per key
        costs the client far more than Redis).  Standalone Redis: one call may name keys of
        any slot (see ``set_embeddings.lua``).
        """
        ttl = keys.USER_EMBEDDING.ttl_s
        items = list(writes)
        gone = [keys.user_embedding(u) for u in deletes]
        if not items and not gone:
            return
        with wrap_exceptions():
            pipe = self._client.pipeline(transaction=False)
            for i in range(0, len(items), CHUNK):
                part = items[i : i + CHUNK]
                self._set_many(
                    keys=[keys.user_embedding(u) for u, _ in part],
                    args=[ttl, *(v for _, v in part)],
                    client=pipe,
                )
            for i in range(0, len(gone), CHUNK):
                pipe.delete(*gone[i : i + CHUNK])
            pipe.execute()

    def close(self) -> None:
        """Release the connection pool."""
        self._client.close()
