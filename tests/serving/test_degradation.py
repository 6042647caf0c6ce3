"""Redis down or slow: reads fall back to PostgreSQL, writes succeed, health says so, recovery is automatic."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import REGISTRY
from serving_helpers import RedisProxy, make_user

from personalization.composition import Platform, open_platform
from personalization.config import Settings
from personalization_dev.testing.http import AppClients
from personalization_dev.testing.waiting import async_wait_until


@pytest.fixture
async def proxied(
    settings: Settings, redis_url: str, monkeypatch: pytest.MonkeyPatch, make_client: AppClients
) -> AsyncIterator[tuple[RedisProxy, Platform, httpx.AsyncClient]]:
    proxy = RedisProxy()
    await proxy.start()
    db_index = redis_url.rsplit("/", 1)[1]
    monkeypatch.setenv("PERSONALIZATION_CACHE_RETRY_S", "0.1")
    cfg = settings.replace(redis={"url": f"redis://127.0.0.1:{proxy.port}/{db_index}"}, auth={"dev_mode": True})
    async with open_platform(cfg) as platform:
        yield proxy, platform, await make_client(cfg, platform)
    await proxy.stop()


def _degraded_gauge() -> float | None:
    return REGISTRY.get_sample_value("personalization_serving_cache_degraded")


async def _wait_health(client: httpx.AsyncClient, status: str, timeout_s: float = 5.0) -> None:
    async def reached() -> bool:
        return bool((await client.get("/healthz/serving")).json()["status"] == status)

    await async_wait_until(reached, timeout_s, f"/healthz/serving to say {status!r}")


async def test_down_then_back(proxied: tuple[RedisProxy, Platform, httpx.AsyncClient]) -> None:
    proxy, _platform, client = proxied
    uid = await make_user(client, denomination="baptist")
    assert (await client.get(f"/v1/users/{uid}/preferences")).json()["source"] == "database"
    assert (await client.get(f"/v1/users/{uid}/preferences")).json()["source"] == "cache"
    assert (await client.get("/healthz/serving")).json()["status"] == "ok"

    await proxy.stop()
    t0 = time.monotonic()
    r = await client.get(f"/v1/users/{uid}/preferences")
    assert r.status_code == 200 and r.json()["source"] == "database"
    # The write still succeeds; its invalidation is queued for when Redis is back.
    r = await client.patch(f"/v1/users/{uid}", json={"denomination": "methodist"})
    assert r.status_code == 200
    body = (await client.get(f"/v1/users/{uid}/preferences")).json()
    assert body["profile"]["denomination"] == "methodist" and body["source"] == "database"
    flag = (await client.get(f"/v1/users/{uid}/flags/personalization")).json()
    assert flag["enabled"] is True and flag["source"] == "evaluated"
    out = await client.post(
        f"/v1/users/{uid}/rerank", json={"session_id": str(uuid.uuid4()), "candidates": [{"content_id": "a"}]}
    )
    assert out.status_code == 200 and out.json()["variant"] == "non_personalized"
    assert (await client.get(f"/v1/sessions/{uuid.uuid4()}/recent")).json()["source"] == "database"
    login = (await client.post(f"/v1/users/{uid}/login")).json()
    assert login["cache_warmed"] is False and login["preferences"]["profile"]["denomination"] == "methodist"
    assert time.monotonic() - t0 < 3.0  # one bounded timeout at most, then no waiting
    health = (await client.get("/healthz/serving")).json()
    assert health["status"] == "degraded" and health["pending_invalidations"] >= 1
    assert _degraded_gauge() == 1.0
    assert (await client.get("/metrics")).text.count("personalization_serving_cache_degraded 1.0") == 1

    await proxy.start()
    await _wait_health(client, "ok")
    assert _degraded_gauge() == 0.0
    # The snapshot cached before the outage was dropped by the replayed invalidation.
    body = (await client.get(f"/v1/users/{uid}/preferences")).json()
    assert body["profile"]["denomination"] == "methodist" and body["source"] == "database"
    assert (await client.get(f"/v1/users/{uid}/preferences")).json()["source"] == "cache"


async def test_slow_redis_is_bounded(proxied: tuple[RedisProxy, Platform, httpx.AsyncClient]) -> None:
    proxy, _platform, client = proxied
    uid = await make_user(client)
    await client.get(f"/v1/users/{uid}/preferences")
    proxy.delay_s = 1.0  # well over the 0.25 s client timeout
    t0 = time.monotonic()
    r = await client.get(f"/v1/users/{uid}/preferences")
    assert r.status_code == 200 and r.json()["source"] == "database"
    assert time.monotonic() - t0 < 0.9
    assert (await client.get("/healthz/serving")).json()["status"] == "degraded"
    proxy.delay_s = 0.0
    await _wait_health(client, "ok")
    assert (await client.get(f"/v1/users/{uid}/preferences")).status_code == 200
