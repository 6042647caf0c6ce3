"""Redis side of the data-rights use cases: every key of one user, deleted or dumped.

A user's keys are the named families of :mod:`personalization.cache.keys` (embedding,
preferences and its generation token, signals, one cached result per feature flag) plus
the recent-content lists of the user's sessions, which carry no user id and so can only be
named from the session ids (read from the user's events before they are deleted).  Every
key is named, never searched for: a SCAN would walk the whole keyspace (seconds at
millions of keys) on every erase and export.  A key family added to ``cache/keys.py``
that holds per-user data must be added to :func:`user_key_names` (a test checks that every
pattern with a ``{user_id}`` or ``{session_id}`` slot is covered).  Redis errors leave as
``CacheUnavailable``.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import redis.asyncio as aioredis

from personalization.cache import keys
from personalization.cache.client import wrap_exceptions

__all__ = ["cached_values", "delete_user_keys", "user_key_names"]

# Keys per UNLINK: bounds one command's size.
_UNLINK_BATCH = 500


def user_key_names(user_id: uuid.UUID, sessions: Iterable[uuid.UUID], flags: Iterable[str]) -> list[str]:
    """Every Redis key of the user, of each of ``flags`` for the user, and of the ``sessions``."""
    names = [
        keys.user_embedding(user_id),
        keys.user_preferences(user_id),
        keys.user_preferences_gen(user_id),
        keys.user_signals(user_id),
    ]
    names += [keys.feature_flag(f, user_id) for f in sorted({keys.PERSONALIZATION_FLAG, *flags})]
    names += [keys.session_recent_content(s) for s in sorted(set(sessions), key=str)]
    return names


async def delete_user_keys(redis: aioredis.Redis, names: Sequence[str]) -> int:
    """UNLINK the named keys (in bounded batches); returns how many existed."""
    count = 0
    with wrap_exceptions():
        for i in range(0, len(names), _UNLINK_BATCH):
            count += int(await redis.unlink(*names[i : i + _UNLINK_BATCH]))
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


async def cached_values(redis: aioredis.Redis, names: Sequence[str]) -> list[dict[str, Any]]:
    """The named keys that exist (see :func:`user_key_names`), with type, TTL and value."""
    out: list[dict[str, Any]] = []
    with wrap_exceptions():
        for k in sorted(set(names)):
            item = await _dump_key(redis, k.encode())
            if item is not None:
                out.append(item)
    return out
