"""Redis side of the data-rights use cases: every key of one user, deleted or dumped.

A user's keys are the named families of :mod:`personalization.cache.keys` (embedding,
preferences, signals, flags) plus the recent-content lists of the user's sessions, which
carry no user id and so can only be named from the session ids.  One SCAN for the user's
hash tag finds the families that carry a name in the key (every feature flag) and any
family added later.  Redis errors leave as ``CacheUnavailable``.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis

from personalization.cache import keys
from personalization.cache.client import wrap_exceptions

__all__ = ["cached_values", "delete_user_keys", "user_key_names"]

_SCAN_COUNT = 1000
# Keys per UNLINK: bounds one command's size.
_UNLINK_BATCH = 500


def user_key_names(user_id: uuid.UUID, sessions: Iterable[uuid.UUID]) -> list[str]:
    """Every Redis key of the user and the sessions that can be named without a scan."""
    names = [
        keys.user_embedding(user_id),
        keys.user_preferences(user_id),
        keys.user_signals(user_id),
        keys.feature_flag(keys.PERSONALIZATION_FLAG, user_id),
    ]
    names += [keys.session_recent_content(s) for s in sessions]
    return names


async def delete_user_keys(redis: aioredis.Redis, user_id: uuid.UUID, sessions: list[uuid.UUID],
                           *, scan: bool = True) -> int:
    """Delete the user's and the sessions' keys; returns how many existed.

    Named keys go first; then (``scan``) one SCAN for the user's hash tag.  The SCAN walks
    the whole keyspace, so the erase runs it once, after the commit.
    """
    count = 0
    with wrap_exceptions():
        names = user_key_names(user_id, sessions)
        for i in range(0, len(names), _UNLINK_BATCH):
            count += int(await redis.unlink(*names[i : i + _UNLINK_BATCH]))
        if not scan:
            return count
        batch: list[bytes] = []
        async for k in redis.scan_iter(match=keys.user_tag_pattern(user_id), count=_SCAN_COUNT):
            batch.append(k)
            if len(batch) >= _UNLINK_BATCH:
                count += int(await redis.unlink(*batch))
                batch = []
        if batch:
            count += int(await redis.unlink(*batch))
    return count


def _text(b: bytes | str) -> str | dict[str, str]:
    if isinstance(b, str):
        return b
    try:
        return b.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(b).decode()}


async def _dump_key(redis: aioredis.Redis, key: bytes) -> dict[str, Any] | None:
    raw_kind = await redis.type(key)
    kind = raw_kind.decode() if isinstance(raw_kind, bytes) else str(raw_kind)
    value: Any
    if kind == "none":
        return None
    if kind == "string":
        raw = await redis.get(key)
        value = None if raw is None else _text(raw)
    elif kind == "hash":
        value = {str(_text(k)): _text(v) for k, v in (await redis.hgetall(key)).items()}
    elif kind == "list":
        value = [_text(v) for v in await redis.lrange(key, 0, -1)]
    elif kind == "set":
        value = sorted(str(_text(v)) for v in await redis.smembers(key))
    elif kind == "zset":
        pairs: list[Any] = await redis.zrange(key, 0, -1, withscores=True)
        value = [[_text(m), score] for m, score in pairs]
    else:
        value = f"<{kind} not exported>"
    return {"key": key.decode(), "type": kind, "ttl_s": int(await redis.ttl(key)), "value": value}


async def cached_values(redis: aioredis.Redis, user_id: uuid.UUID, sessions: set[uuid.UUID]) -> list[dict[str, Any]]:
    """Every Redis key of the user (hash tag) and of the user's sessions, with type, TTL and value."""
    out: list[dict[str, Any]] = []
    with wrap_exceptions():
        found: list[bytes] = [k async for k in redis.scan_iter(match=keys.user_tag_pattern(user_id),
                                                                 count=_SCAN_COUNT)]
        found += [keys.session_recent_content(s).encode() for s in sorted(sessions, key=str)]
        for k in sorted(set(found)):
            item = await _dump_key(redis, k)
            if item is not None:
                out.append(item)
    return out
