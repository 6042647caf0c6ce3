"""Cache invalidations survive Redis outages and crashes: the invalidation outbox.

Every profile or trait change writes its invalidation into ``cache_invalidations`` in its
own transaction; a process that cannot reach Redis keeps it there, and the replay of any
process (the restarted API's first thing) applies it.
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
import redis.asyncio as aioredis

from personalization.cache import keys
from personalization.cache.serving import ServingCache
from personalization.composition import Platform
from personalization.errors import CacheUnavailable
from personalization.serving.outbox import InvalidationReplayer
from personalization_dev.childproc import CliChild
from personalization_dev.stack.redis import LocalRedis
from personalization_dev.testing.waiting import wait_until


def _outbox(db_url: str, uid: uuid.UUID) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM cache_invalidations WHERE user_id = %s", (uid,)).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_change_that_reached_redis_leaves_nothing_and_one_that_did_not_is_replayed(
    client: httpx.AsyncClient, platform: Platform, db_url: str, sync_redis: redis.Redis
) -> None:
    uid = uuid.uuid4()
    assert (await client.put(f"/v1/users/{uid}", json={"denomination": "baptist"})).status_code == 201
    assert _outbox(db_url, uid) == 0  # applied at once, cleared
    assert (await client.get(f"/v1/users/{uid}/preferences")).json()["profile"]["denomination"] == "baptist"
    assert sync_redis.exists(keys.user_preferences(uid))

    # The read path's breaker open (Redis unreachable): the change is committed with its row.
    platform.serving.guard.trip("test", RuntimeError("Redis paused"))
    r = await client.patch(f"/v1/users/{uid}", json={"denomination": "methodist"})
    assert r.status_code == 200 and _outbox(db_url, uid) == 1
    assert sync_redis.hget(keys.user_preferences(uid), "denomination") == "baptist"  # stale in Redis

    # A replay with no Redis leaves the row; one with Redis applies and deletes it.
    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=0.2, socket_connect_timeout=0.2)
    try:
        with pytest.raises(CacheUnavailable):
            await InvalidationReplayer(platform.db, ServingCache(dead), 1.0).replay_once()
    finally:
        await dead.aclose()
    assert _outbox(db_url, uid) == 1
    assert await InvalidationReplayer(platform.db, platform.serving.cache, 1.0).replay_once() == 1
    assert _outbox(db_url, uid) == 0 and not sync_redis.exists(keys.user_preferences(uid))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _api(db_url: str, redis_url: str, port: int, tmp_path: Path, name: str) -> CliChild:
    env = {
        "PERSONALIZATION_DATABASE_URL": db_url,
        "PERSONALIZATION_REDIS_URL": redis_url,
        "PERSONALIZATION_AUTH_DEV_MODE": "true",
        "PERSONALIZATION_ERASE_KAFKA_TOMBSTONES": "false",
        "PERSONALIZATION_REDIS_TIMEOUT_S": "0.25",
    }
    child = CliChild("personalization.cli", ["serve", "--host", "127.0.0.1", "--port", str(port)], env,
                     name=name, log_path=tmp_path / f"{name}.log")
    child.spawn()

    def up() -> bool:
        code = child.wait_or_none()
        assert code is None, f"API exited with {code}:\n{child.tail()}"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 60, lambda: f"the API to answer /healthz:\n{child.tail()}", interval_s=0.1)
    return child


def test_sigkill_with_redis_paused_then_restart_serves_fresh_preferences(db_url: str, tmp_path: Path) -> None:
    server = LocalRedis(tmp_path / "redis", tmp_path / "redis.log")
    redis_url = server.start()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    uid = uuid.uuid4()
    admin = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        api = _api(db_url, redis_url, port, tmp_path, "api-1")
        with api:
            assert httpx.put(f"{base}/v1/users/{uid}", json={"denomination": "baptist"}).status_code == 201
            assert httpx.get(f"{base}/v1/users/{uid}/preferences").json()["profile"]["denomination"] == "baptist"
            # Redis paused for writes: the invalidation hangs until the client gives up (0.25 s).
            admin.execute_command("CLIENT", "PAUSE", "120000", "WRITE")
            r = httpx.patch(f"{base}/v1/users/{uid}", json={"denomination": "methodist"}, timeout=30)
            assert r.status_code == 200, r.text
            assert _outbox(db_url, uid) == 1  # committed with the change, not in memory only
            api.kill()  # SIGKILL: the process's in-memory queue of invalidations is gone
        admin.execute_command("CLIENT", "UNPAUSE")
        # The stale snapshot is still cached: only the outbox knows it must go.
        assert admin.hget(keys.user_preferences(uid), "denomination") == "baptist"
        with _api(db_url, redis_url, port, tmp_path, "api-2"):
            prefs = httpx.get(f"{base}/v1/users/{uid}/preferences").json()
            assert prefs["profile"]["denomination"] == "methodist", prefs
            assert _outbox(db_url, uid) == 0
    finally:
        admin.close()
        server.stop()
