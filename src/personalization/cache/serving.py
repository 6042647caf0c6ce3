"""Redis side of the read path: preference snapshots, generations, flags, embeddings.

Invalidation protocol (generation check, not only a delete):

* a writer, after its transaction commits, replaces ``user:{id}:preferences_gen``
  with a fresh random token and deletes ``user:{id}:preferences`` in one MULTI;
* a reader that misses reads the token *before* reading PostgreSQL and fills the
  hash with a script that writes only if the token is unchanged.

A reader whose database read raced a write therefore either saw the committed row
or finds the token replaced and writes nothing.  Random tokens (not a counter) stay
safe when the token key expires and is recreated.  Every script touches only keys
of one user (same hash tag), so it is valid in Redis Cluster.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import redis
import redis.asyncio as aioredis

from personalization.cache import keys
from personalization.cache.client import lua_script, probe, wrap_exceptions


def new_generation() -> str:
    """A fresh generation token (64 random bits, hex)."""
    return secrets.token_hex(8)


def _s(v: bytes | str | None) -> str | None:
    return v.decode() if isinstance(v, bytes) else v


@dataclass(frozen=True)
class FlagState:
    """What Redis knows about one flag of one user, read in one round trip."""

    cached: str | None
    rules_version: int | None
    generation: str


@dataclass(frozen=True)
class RerankState:
    """Everything a rerank needs from Redis, read in one round trip."""

    embedding: bytes | None
    recent: list[str]
    preferences: dict[bytes, bytes]
    flag: FlagState
    content_version: str


EmbeddingMode = Literal["set", "del", "none"]


class ServingCache:
    """Typed access to the read path's keys; every call raises CacheUnavailable on Redis failure."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._r = client
        self._fill = client.register_script(lua_script("fill_preferences"))
        self._prewarm = client.register_script(lua_script("prewarm"))
        self._set_if_greater = client.register_script(lua_script("set_if_greater"))

    # ---- preferences ---------------------------------------------------------
    async def preferences(self, user_id: uuid.UUID | str) -> dict[bytes, bytes]:
        """The cached snapshot (empty on a miss)."""
        with wrap_exceptions():
            raw = await self._r.hgetall(keys.user_preferences(user_id))
        # The client is created without decode_responses: keys and values are bytes.
        return raw  # type: ignore[return-value]

    async def generation(self, user_id: uuid.UUID | str) -> str:
        """The user's current generation token ('' when none was ever set or it expired)."""
        with wrap_exceptions():
            v = await self._r.get(keys.user_preferences_gen(user_id))
        return _s(v) or ""

    async def fill_preferences(self, user_id: uuid.UUID | str, generation: str, fields: Mapping[str, str]) -> bool:
        """Write the snapshot if the generation is still ``generation``; True if written."""
        args: list[str | int] = [generation, keys.USER_PREFERENCES.ttl_s]
        for k, v in fields.items():
            args += [k, v]
        with wrap_exceptions():
            keys_ = [keys.user_preferences(user_id), keys.user_preferences_gen(user_id)]
            return bool(await self._fill(keys=keys_, args=args))

    async def invalidate(self, user_id: uuid.UUID | str) -> str:
        """New generation token and no snapshot, atomically; returns the new token."""
        token = new_generation()
        with wrap_exceptions():
            async with self._r.pipeline(transaction=True) as pipe:
                _queue_invalidation(pipe, user_id, token)
                await pipe.execute()
        return token

    async def prewarm(
        self,
        user_id: uuid.UUID | str,
        generation: str,
        fields: Mapping[str, str],
        embedding_mode: EmbeddingMode,
        embedding: bytes,
        flag_value: str,
    ) -> bool:
        """Load snapshot, embedding and the personalization flag in one script call."""
        args: list[str | int | bytes] = [
            generation,
            keys.USER_PREFERENCES.ttl_s,
            embedding_mode,
            embedding,
            keys.USER_EMBEDDING.ttl_s,
            flag_value,
            keys.FEATURE_FLAG.ttl_s,
        ]
        for k, v in fields.items():
            args += [k, v]
        keys_ = [
            keys.user_preferences(user_id),
            keys.user_preferences_gen(user_id),
            keys.user_embedding(user_id),
            keys.feature_flag(keys.PERSONALIZATION_FLAG, user_id),
        ]
        with wrap_exceptions():
            return bool(await self._prewarm(keys=keys_, args=args))

    # ---- flags ---------------------------------------------------------------
    async def flag_state(self, flag: str, user_id: uuid.UUID | str) -> FlagState:
        """Cached value, published rules version and the user's generation, in one round trip."""
        with wrap_exceptions():
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.get(keys.user_preferences_gen(user_id))
                pipe.get(keys.feature_flag(flag, user_id))
                pipe.get(keys.feature_flag_version(flag))
                gen, cached, version = await pipe.execute()
        return FlagState(_s(cached), _int(version), _s(gen) or "")

    async def set_flag(self, flag: str, user_id: uuid.UUID | str, value: str) -> None:
        with wrap_exceptions():
            await self._r.set(keys.feature_flag(flag, user_id), value, ex=keys.FEATURE_FLAG.ttl_s)

    async def rules_version(self, flag: str) -> int | None:
        with wrap_exceptions():
            return _int(await self._r.get(keys.feature_flag_version(flag)))

    async def publish_rules_version(self, flag: str, version: int) -> int:
        """Raise the published version to ``version`` (never lower it); returns the stored one."""
        with wrap_exceptions():
            stored = await self._set_if_greater(
                keys=[keys.feature_flag_version(flag)], args=[version, keys.FEATURE_FLAG_VERSION.ttl_s]
            )
        return int(stored)

    # ---- sessions, embeddings, rerank ----------------------------------------
    async def recent_content(self, session_id: uuid.UUID | str) -> list[str]:
        """The session's recent content ids, newest first."""
        with wrap_exceptions():
            raw = await self._r.lrange(keys.session_recent_content(session_id), 0, -1)
        return [x.decode() if isinstance(x, bytes) else str(x) for x in raw]

    async def rerank_state(self, user_id: uuid.UUID, session_id: uuid.UUID, flag: str) -> RerankState:
        """Embedding, recent content, snapshot, flag state and content version in one round trip."""
        with wrap_exceptions():
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.get(keys.user_embedding(user_id))
                pipe.lrange(keys.session_recent_content(session_id), 0, -1)
                # The generation is read before the snapshot: a snapshot is then at
                # least as new as the generation a flag value gets tagged with.
                pipe.get(keys.user_preferences_gen(user_id))
                pipe.hgetall(keys.user_preferences(user_id))
                pipe.get(keys.feature_flag(flag, user_id))
                pipe.get(keys.feature_flag_version(flag))
                pipe.get(keys.content_embeddings_version())
                emb, recent, gen, prefs, cached, version, cver = await pipe.execute()
        return RerankState(
            embedding=emb,
            recent=[x.decode() if isinstance(x, bytes) else str(x) for x in recent],
            preferences=prefs,
            flag=FlagState(_s(cached), _int(version), _s(gen) or ""),
            content_version=_s(cver) or "",
        )

    async def content_version(self) -> str:
        with wrap_exceptions():
            return _s(await self._r.get(keys.content_embeddings_version())) or ""

    async def bump_content_version(self) -> str:
        """Tell every serving process that content embeddings changed."""
        with wrap_exceptions():
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.incr(keys.content_embeddings_version())
                pipe.expire(keys.content_embeddings_version(), keys.CONTENT_EMBEDDINGS_VERSION.ttl_s)
                v, _ = await pipe.execute()
        return str(v)

    async def ping(self) -> bool:
        """True when Redis accepts a write (the health probe); CacheUnavailable otherwise."""
        await probe(self._r)
        return True


def _int(v: bytes | str | None) -> int | None:
    if v is None:
        return None
    try:
        return int(v)
    except ValueError:
        return None


def _queue_invalidation(pipe: redis.client.Pipeline | aioredis.client.Pipeline, user_id: uuid.UUID | str,
                        token: str) -> None:
    # The invalidation protocol, one definition for the API (async) and the CDC consumer (sync):
    # a new generation token and no snapshot, in one MULTI.
    pipe.set(keys.user_preferences_gen(user_id), token, ex=keys.USER_PREFERENCES_GEN.ttl_s)
    pipe.delete(keys.user_preferences(user_id))


def generation_invalidator(redis_url: str, timeout_s: float = 1.0) -> Callable[[uuid.UUID], None]:
    """A synchronous ``invalidate(user_id)`` for the CDC consumer (serving/invalidation.py).

    It applies the same protocol as the API path (new generation token, snapshot
    deleted), so a reader that raced a direct SQL write cannot fill a stale value,
    and cached flag values that depend on the user's traits are re-evaluated.  Redis
    errors leave as ``CacheUnavailable``.
    """
    client = redis.Redis.from_url(redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    def invalidate(user_id: uuid.UUID) -> None:
        with wrap_exceptions(), client.pipeline(transaction=True) as pipe:
            _queue_invalidation(pipe, user_id, new_generation())
            pipe.execute()

    return invalidate
