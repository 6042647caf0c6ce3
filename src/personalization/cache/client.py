"""Redis access: one async client with bounded timeouts and the driver-error boundary.

Every error redis-py raises is translated into :class:`CacheUnavailable` here, not only
connection errors and timeouts: a Redis that *answers* with an error (out of memory under
``noeviction``, ``READONLY`` from an old primary after a failover, ``MASTERDOWN``,
``LOADING``, ``BUSY`` while a script runs, ``MOVED``/``CROSSSLOT`` from a cluster node
behind this standalone client, ``NOSCRIPT`` or a failing script, ``WRONGTYPE`` on a key
another program clobbered) is as unusable for that call as one that does not answer, and
the callers' degradation (events committed without dedup, reads from PostgreSQL,
invalidations queued) must apply to all of them.  Such a reply leaves the connection
usable, so nothing is reconnected.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from importlib import resources

import redis.asyncio as aioredis
import redis.exceptions

from personalization.cache import keys
from personalization.config import Settings
from personalization.errors import CacheUnavailable

AsyncRedis = aioredis.Redis
"""The async client type, for use cases that hold one without importing redis-py."""


class RecentFailures:
    """When an owner's last Redis call failed, and why (for ``/healthz``).

    A probe alone cannot see every refusal: a server that accepts the probe's write may
    still refuse a script (CROSSSLOT) or one clobbered key (WRONGTYPE).  The write path's
    adapter keeps one (per platform, not per process).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at: float | None = None
        self._error: str | None = None

    def note(self, error: str) -> None:
        """Record a failed call now."""
        with self._lock:
            self._at, self._error = time.monotonic(), error

    def within(self, window_s: float) -> str | None:
        """The last error if a call failed less than ``window_s`` ago, else None."""
        with self._lock:
            if self._at is None or time.monotonic() - self._at >= window_s:
                return None
            return self._error


def describe(exc: redis.exceptions.RedisError) -> str:
    """One line naming the failure: the class (redis-py drops the reply's code) and the text."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextlib.contextmanager
def wrap_exceptions() -> Iterator[None]:
    """Translate every redis-py error (unreachable, timed out, or an error reply) into CacheUnavailable."""
    try:
        yield
    except redis.exceptions.RedisError as exc:
        raise CacheUnavailable(describe(exc)) from exc


async def probe(client: aioredis.Redis) -> None:
    """Raise CacheUnavailable unless Redis accepts a write now (a PING would pass a read-only one)."""
    with wrap_exceptions():
        await client.set(keys.health_probe(), b"1", ex=keys.HEALTH_PROBE.ttl_s)


def lua_script(name: str) -> str:
    """The source of ``cache/lua/<name>.lua`` (registered by the module that runs it)."""
    return (resources.files("personalization.cache") / "lua" / f"{name}.lua").read_text()


def make_client(settings: Settings) -> aioredis.Redis:
    """An async client; every call is bounded by ``redis_timeout_s`` so a slow Redis degrades, not blocks."""
    return aioredis.Redis.from_url(
        settings.redis.url,
        socket_timeout=settings.redis.timeout_s,
        socket_connect_timeout=settings.redis.timeout_s,
        health_check_interval=30,
        max_connections=64,
    )
