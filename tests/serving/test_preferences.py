"""Preferences snapshot: read-through cache, trait selection rule, bad input."""

from __future__ import annotations

import uuid

import httpx
import redis
from serving_helpers import add_trait, make_user

from personalization.cache import keys


async def test_snapshot_read_through_and_trait_rule(client: httpx.AsyncClient, sync_redis: redis.Redis) -> None:
    uid = await make_user(client, timezone="America/Chicago")
    # Two languages: the newer wins even though the older one is more confident.
    await add_trait(
        client, uid, trait_type="language", trait_value="en", confidence="0.95", recorded_at="2026-01-01T00:00:00Z"
    )
    await add_trait(
        client, uid, trait_type="language", trait_value="es", confidence="0.75", recorded_at="2026-02-01T00:00:00Z"
    )
    # Same time: the more confident one wins.
    await add_trait(
        client, uid, trait_type="tone", trait_value="gentle", confidence="0.80", recorded_at="2026-02-01T00:00:00Z"
    )
    await add_trait(
        client, uid, trait_type="tone", trait_value="direct", confidence="0.90", recorded_at="2026-02-01T00:00:00Z"
    )
    # Below the 0.70 threshold: left out entirely.
    await add_trait(client, uid, trait_type="content_format", trait_value="audio", confidence="0.50")
    await add_trait(
        client,
        uid,
        trait_type="notification_windows",
        trait_value=[{"start": "06:00", "end": "07:00"}],
        confidence="0.90",
    )

    key = keys.user_preferences(uid)
    assert not sync_redis.exists(key)
    r = await client.get(f"/v1/users/{uid}/preferences")
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["source"] == "database"
    assert first["traits"] == {
        "language": "es",
        "tone": "direct",
        "notification_windows": [{"start": "06:00", "end": "07:00"}],
    }
    assert first["profile"]["denomination"] == "baptist"
    assert first["profile"]["timezone"] == "America/Chicago"
    assert first["profile"]["spiritual_goal"] is None

    # The fill put the hash under the spec's key with the spec's 7 d TTL.
    assert sync_redis.type(key) == "hash"
    assert 7 * 86400 - 5 < sync_redis.ttl(key) <= 7 * 86400
    assert sync_redis.hget(key, "trait.language") == '"es"'

    r = await client.get(f"/v1/users/{uid}/preferences")
    second = r.json()
    assert second["source"] == "cache"
    assert {k: v for k, v in second.items() if k != "source"} == {k: v for k, v in first.items() if k != "source"}


async def test_write_invalidates(client: httpx.AsyncClient, sync_redis: redis.Redis) -> None:
    uid = await make_user(client)
    assert (await client.get(f"/v1/users/{uid}/preferences")).json()["traits"] == {}
    gen_before = sync_redis.get(keys.user_preferences_gen(uid))
    await add_trait(client, uid, trait_type="language", trait_value="fr", confidence="0.9")
    assert not sync_redis.exists(keys.user_preferences(uid))
    assert sync_redis.get(keys.user_preferences_gen(uid)) != gen_before
    body = (await client.get(f"/v1/users/{uid}/preferences")).json()
    assert body["traits"] == {"language": "fr"} and body["source"] == "database"

    r = await client.patch(f"/v1/users/{uid}", json={"denomination": "methodist"})
    assert r.status_code == 200
    assert (await client.get(f"/v1/users/{uid}/preferences")).json()["profile"]["denomination"] == "methodist"

    assert (await client.delete(f"/v1/users/{uid}")).status_code == 204
    r = await client.get(f"/v1/users/{uid}/preferences")
    assert r.status_code == 404
    assert not sync_redis.exists(keys.user_preferences(uid))


async def test_bad_input(client: httpx.AsyncClient, sync_redis: redis.Redis) -> None:
    r = await client.get(f"/v1/users/{uuid.uuid4()}/preferences")
    assert r.status_code == 404
    assert r.json()["detail"][0]["field"] == "user_id"
    r = await client.get("/v1/users/not-a-uuid/preferences")
    assert r.status_code == 422
    assert r.json()["detail"][0]["field"] == "user_id"
    assert sync_redis.dbsize() == 0
