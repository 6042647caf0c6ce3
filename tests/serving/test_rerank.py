"""Login pre-warm, recent content and reranking against real PostgreSQL and Redis."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx
import numpy as np
import psycopg
import pytest
import redis
from serving_helpers import DIM, insert_content, make_user, put_user_embedding, unit

from personalization.cache import keys
from personalization.core import embedding as emb


async def _post_events(client: httpx.AsyncClient, uid: uuid.UUID, sid: uuid.UUID, content: list[str]) -> None:
    now = datetime.now(UTC).isoformat()
    events = [
        {
            "user_id": str(uid),
            "session_id": str(sid),
            "content_id": c,
            "content_type": "passage",
            "signal_type": "view",
            "signal_weight": 1,
            "occurred_at": now,
        }
        for c in content
    ]
    r = await client.post("/v1/events", json={"events": events})
    assert r.status_code == 200, r.text


async def test_login_prewarms_in_one_call(
    client: httpx.AsyncClient, sync_redis: redis.Redis, user_embeddings_table: str, redis_url: str
) -> None:
    uid = await make_user(client)
    vec = unit(1) * 3.0  # the durable copy may be a raw (unnormalised) sum
    put_user_embedding(user_embeddings_table, uid, vec)
    r = await client.post(f"/v1/users/{uid}/login")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cache_warmed"] is True and body["embedding"]["cached"] is True
    assert body["flags"]["personalization"]["enabled"] is True
    with redis.Redis.from_url(redis_url) as raw_client:  # bytes, not decoded text
        cached = emb.decode(raw_client.get(keys.user_embedding(uid)) or b"", DIM)
    assert np.allclose(cached, emb.normalize(vec), atol=1e-6)
    assert 6 * 3600 - 5 < sync_redis.ttl(keys.user_embedding(uid)) <= 6 * 3600
    assert sync_redis.type(keys.user_preferences(uid)) == "hash"
    assert sync_redis.get(keys.feature_flag("personalization", uid)).startswith("1:rollout:")
    # The next reads are cache hits.
    assert (await client.get(f"/v1/users/{uid}/preferences")).json()["source"] == "cache"
    assert (await client.get(f"/v1/users/{uid}/flags/personalization")).json()["source"] == "cache"

    # A user whose privacy level forbids personalization: no embedding is cached.
    assert (await client.patch(f"/v1/users/{uid}", json={"privacy_level": "limited"})).status_code == 200
    body = (await client.post(f"/v1/users/{uid}/login")).json()
    assert body["embedding"]["cached"] is False
    assert not sync_redis.exists(keys.user_embedding(uid))

    r = await client.post(f"/v1/users/{uuid.uuid4()}/login")
    assert r.status_code == 404


async def test_recent_content_and_rerank(client: httpx.AsyncClient, db_url: str, redis_url: str) -> None:
    uid = await make_user(client)
    sid = uuid.uuid4()
    user_vec = unit(7)
    rng = np.random.default_rng(3)
    # c0 points the user's way, c4 the opposite; c1..c3 random.
    vectors = {f"c{i}": emb.normalize(rng.standard_normal(DIM).astype(np.float32)) for i in range(5)}
    vectors["c0"] = emb.normalize(user_vec + 0.1 * vectors["c0"])
    vectors["c4"] = -user_vec
    insert_content(db_url, {**vectors, "c5": None})
    await _post_events(client, uid, sid, ["c1", "seen-elsewhere"])

    r = await client.get(f"/v1/sessions/{sid}/recent")
    assert r.status_code == 200
    assert sorted(r.json()["content_ids"]) == ["c1", "seen-elsewhere"] and r.json()["source"] == "cache"

    cands = [{"content_id": f"c{i}", "score": 0.5} for i in (4, 1, 5, 3, 2, 0)]
    body = {"session_id": str(sid), "candidates": cands}
    # No user embedding yet: documented fallback (prior, then popularity, then input order).
    r = await client.post(f"/v1/users/{uid}/rerank", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["variant"] == "non_personalized" and out["reason"] == "no_embedding"
    assert out["excluded"] == ["c1"]
    assert [i["content_id"] for i in out["items"]] == ["c4", "c5", "c3", "c2", "c0"]

    sync = redis.Redis.from_url(redis_url)
    sync.set(keys.user_embedding(uid), emb.encode(user_vec), ex=keys.USER_EMBEDDING.ttl_s)
    out = (await client.post(f"/v1/users/{uid}/rerank", json=body)).json()
    assert out["variant"] == "personalized" and out["flag"]["enabled"] is True
    ids = [i["content_id"] for i in out["items"]]
    assert ids[0] == "c0" and ids[-1] == "c4" and "c1" not in ids
    by_id = {i["content_id"]: i for i in out["items"]}
    assert by_id["c0"]["similarity"] > 0.9 and by_id["c4"]["similarity"] == pytest.approx(-1.0, abs=1e-5)
    assert by_id["c5"]["similarity"] is None  # no content embedding: cosine counts as 0
    assert by_id["c0"]["score"] == pytest.approx(0.5 * by_id["c0"]["similarity"] + 0.25, abs=1e-6)

    # Rollout off: the non-personalized order, and the response says so.
    r = await client.put("/v1/flags/personalization", json={"enabled": True, "rollout_percent": 0})
    assert r.status_code == 200
    out = (await client.post(f"/v1/users/{uid}/rerank", json=body)).json()
    assert out["variant"] == "non_personalized" and out["reason"] == "flag_off"
    assert out["flag"] == {"enabled": False, "reason": "rollout", "version": 2}
    await client.put("/v1/flags/personalization", json={"enabled": True, "rollout_percent": 100})

    # Privacy: limited users never get the personalized order.
    await client.patch(f"/v1/users/{uid}", json={"privacy_level": "limited"})
    out = (await client.post(f"/v1/users/{uid}/rerank", json=body)).json()
    assert out["variant"] == "non_personalized" and out["reason"] == "privacy"

    # A cached embedding of another dimension is ignored, not used.
    await client.patch(f"/v1/users/{uid}", json={"privacy_level": "standard"})
    sync.set(keys.user_embedding(uid), emb.encode(unit(1, 16)))
    out = (await client.post(f"/v1/users/{uid}/rerank", json=body)).json()
    assert out["variant"] == "non_personalized" and out["reason"] == "embedding_dimension_mismatch"
    # ... and so is one with NaN in it.
    broken = user_vec.copy()
    broken[5] = np.nan
    sync.set(keys.user_embedding(uid), emb.encode(broken))
    out = (await client.post(f"/v1/users/{uid}/rerank", json=body)).json()
    assert out["variant"] == "non_personalized" and out["reason"] == "invalid_embedding"
    # A damaged cached snapshot is rebuilt from PostgreSQL rather than failing the call.
    sync.delete(keys.user_preferences(uid))
    sync.hset(keys.user_preferences(uid), "denomination", "x")
    assert (await client.post(f"/v1/users/{uid}/rerank", json=body)).status_code == 200
    prefs = (await client.get(f"/v1/users/{uid}/preferences")).json()
    assert prefs["profile"]["denomination"] == "baptist"
    sync.close()


async def test_fallback_order_uses_rollup_popularity(client: httpx.AsyncClient, db_url: str) -> None:
    uid = await make_user(client)
    insert_content(db_url, {"p1": None, "p2": None}, content_type="passage")
    insert_content(db_url, {"d1": None}, content_type="devotional")
    other = await make_user(client)
    now = datetime.now(UTC).isoformat()
    events = [
        {
            "user_id": str(other),
            "content_id": f"d{i}",
            "content_type": "devotional",
            "signal_type": "complete",
            "signal_weight": 1,
            "occurred_at": now,
        }
        for i in range(5)
    ] + [
        {
            "user_id": str(other),
            "content_id": "p9",
            "content_type": "passage",
            "signal_type": "complete",
            "signal_weight": 1,
            "occurred_at": now,
        }
    ]
    assert (await client.post("/v1/events", json={"events": events})).status_code == 200
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("REFRESH MATERIALIZED VIEW user_signal_rollups")
    body = {
        "session_id": str(uuid.uuid4()),
        "candidates": [
            {"content_id": "p1"},
            {"content_id": "unknown"},
            {"content_id": "d1"},
            {"content_id": "p2", "score": 0.1},
        ],
    }
    out = (await client.post(f"/v1/users/{uid}/rerank", json=body)).json()
    # Prior first (p2 has one), then devotional (more popular) over passage over unknown type.
    assert [i["content_id"] for i in out["items"]] == ["p2", "d1", "p1", "unknown"]


async def test_rerank_bad_input(client: httpx.AsyncClient, sync_redis: redis.Redis) -> None:
    uid = await make_user(client)
    sid = str(uuid.uuid4())
    cases = [
        ({"session_id": sid, "candidates": []}, 422, "candidates"),
        ({"session_id": "nope", "candidates": [{"content_id": "a"}]}, 422, "session_id"),
        ({"candidates": [{"content_id": "a"}]}, 422, "session_id"),
        ({"session_id": sid, "candidates": [{"content_id": "a"}, {"content_id": "a"}]}, 422, "candidates.1.content_id"),
        ({"session_id": sid, "candidates": [{"content_id": "a", "score": "NaN"}]}, 422, "candidates.0.score"),
        ({"session_id": sid, "candidates": [{"content_id": ""}]}, 422, "candidates.0.content_id"),
        ({"session_id": sid, "candidates": [{"content_id": f"x{i}"} for i in range(501)]}, 422, "candidates"),
    ]
    before = set(sync_redis.keys())
    for body, status, field in cases:
        r = await client.post(f"/v1/users/{uid}/rerank", json=body)
        assert r.status_code == status, (body, r.text)
        assert r.json()["detail"][0]["field"] == field, r.json()
    r = await client.post(
        f"/v1/users/{uuid.uuid4()}/rerank", json={"session_id": sid, "candidates": [{"content_id": "a"}]}
    )
    assert r.status_code == 404 and r.json()["detail"][0]["field"] == "user_id"
    r = await client.post("/v1/users/xyz/rerank", json={"session_id": sid, "candidates": [{"content_id": "a"}]})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "user_id"
    r = await client.get("/v1/sessions/xyz/recent")
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "session_id"
    assert set(sync_redis.keys()) == before
