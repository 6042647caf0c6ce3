"""Redis access: one async client with bounded timeouts and the driver-error boundary."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import resources

import redis.asyncio as aioredis
import redis.exceptions

from personalization.config import Settings
from personalization.errors import CacheUnavailable

AsyncRedis = aioredis.Redis
"""The async client type, for use cases that hold one without importing redis-py."""


@contextlib.contextmanager
def wrap_exceptions() -> Iterator[None]:
    """Translate redis-py connection and timeout errors into CacheUnavailable."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise CacheUnavailable(str(exc) or type(exc).__name__) from exc
    except redis.exceptions.BusyLoadingError as exc:  # pragma: no cover - startup race
        raise CacheUnavailable(str(exc)) from exc


def lua_script(name: str) -> str:
    """The source of ``cache/lua/<name>.lua`` (registered by the module that runs it)."""
    return (resources.files("personalization.cache") / "lua" / f"{name}.lua").read_text()


def make_client(settings: Settings) -> aioredis.Redis:
    """An async client; every call is bounded by ``redis_timeout_s`` so a slow Redis degrades, not blocks."""
    return aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=30,
        max_connections=64,
    )
