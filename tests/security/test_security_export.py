"""Export: one streamed JSON document with everything held about a user, per privacy level; audited."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import redis
from security_helpers import MakeKey, populate_user

from personalization.cache import keys
from personalization.composition import Platform
from personalization.core.decay import DEFAULT_DECAY, event_score
from personalization.datarights.export import Exporter


async def _export(client: httpx.AsyncClient, uid: uuid.UUID, headers: dict[str, str]) -> dict[str, Any]:
    r = await client.get(f"/v1/users/{uid}/export", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    doc: dict[str, Any] = orjson.loads(r.content)
    return doc


@pytest.mark.parametrize("level", ["standard", "limited", "private"])
async def test_export_per_privacy_level(
    level: str, open_client: httpx.AsyncClient, auth_client: httpx.AsyncClient, admin_headers: dict[str, str],
    sync_redis: redis.Redis, db_url: str,
) -> None:
    uid, sessions = await populate_user(open_client, privacy=level, events=6, sessions=2)
    assert (await open_client.get(f"/v1/users/{uid}/preferences")).status_code == 200
    doc = await _export(auth_client, uid, admin_headers)
    assert doc["format"] == "personalization-export/1" and doc["user_id"] == str(uid)
    assert doc["profile"]["privacy_level"] == level and doc["privacy"]["level"] == level
    assert sorted(t["trait_type"] for t in doc["traits"]) == ["language", "tone"]
    # Exact decimals, written as the API writes them.
    api_traits = (await open_client.get(f"/v1/users/{uid}/traits")).json()
    listed = api_traits["traits"] if isinstance(api_traits, dict) else api_traits
    assert {t["confidence"] for t in doc["traits"]} == {t["confidence"] for t in listed} == {"0.90"}
    cached = {c["key"]: c for c in doc["cache"]}
    assert keys.user_preferences(uid) in cached  # profile snapshot: every level
    events = doc["events"]
    if level == "private":
        # Ingest stores no behavioural events of a private user: nothing to export, nothing cached.
        assert events == [] and doc["events_count"] == 0 and doc["decayed_scores"]["scores"] == []
        assert not any(keys.session_recent_content(s) in cached for s in sessions)
        return
    assert len(events) == doc["events_count"] == 6
    if level == "standard":
        assert all(e["metadata"] == {"screen": "reader", "note": "prayed for my mother"} for e in events)
        assert {e["session_id"] for e in events} == {str(s) for s in sessions}
        assert all(keys.session_recent_content(s) in cached for s in sessions if sync_redis.exists(
            keys.session_recent_content(s)))
    else:  # limited: metadata and session are stripped on ingest, no session lists
        assert all(e["metadata"] is None and e["session_id"] is None for e in events)
        assert not any(keys.session_recent_content(s) in cached for s in sessions)
    # Decayed scores: the project's one decay definition over exactly the exported events.
    at = datetime.fromisoformat(doc["decayed_scores"]["at"])
    expect: dict[tuple[str, str], float] = {}
    for e in events:
        k = (e["content_type"], e["signal_type"])
        expect[k] = expect.get(k, 0.0) + event_score(DEFAULT_DECAY, e["signal_type"], e["signal_weight"],
                                                     datetime.fromisoformat(e["occurred_at"]), at)
    got = {(s["content_type"], s["signal_type"]): s["score"] for s in doc["decayed_scores"]["scores"]}
    assert got.keys() == expect.keys()
    assert all(math.isclose(got[k], expect[k], rel_tol=1e-9) for k in expect)
    with psycopg.connect(db_url) as conn:
        audit = conn.execute("SELECT outcome, details->>'events', audit_log::text FROM audit_log "
                             "WHERE action = 'user.export'").fetchall()
    assert [(a[0], a[1]) for a in audit] == [("ok", "6")]
    assert str(uid) not in audit[0][2] and "prayed" not in audit[0][2]


async def test_export_streams_a_large_user(
    platform: Platform, open_client: httpx.AsyncClient, auth_client: httpx.AsyncClient,
    admin_headers: dict[str, str], db_url: str,
) -> None:
    uid, _ = await populate_user(open_client, events=1, sessions=1)
    n = 20_000
    t0 = datetime.now(UTC) - timedelta(days=3)
    with psycopg.connect(db_url) as conn, conn.cursor() as cur, cur.copy(
        "COPY personalization_events (user_id, session_id, content_id, content_type, signal_type, signal_weight, "
        "occurred_at) FROM STDIN"
    ) as cp:
        for i in range(n):
            cp.write_row((uid, None, f"GEN.{i % 50}.{i}", "verse", "view", "0.250", t0 + timedelta(seconds=i)))
    # The use case yields the document in pieces (httpx's ASGI transport would buffer them).
    exporter = Exporter(platform.db, platform.redis, platform.settings.decay.config())
    chunks = [c async for c in exporter.stream(uid, "test")]
    assert len(chunks) > 5 and max(map(len, chunks)) < 200_000
    assert orjson.loads(b"".join(chunks))["events_count"] == n + 1
    doc = await _export(auth_client, uid, admin_headers)
    assert doc["events_count"] == n + 1 and len(doc["events"]) == n + 1
    assert doc["events"][0]["occurred_at"] <= doc["events"][-1]["occurred_at"]


async def test_export_refusals(open_client: httpx.AsyncClient, auth_client: httpx.AsyncClient, make_key: MakeKey,
                               admin_headers: dict[str, str], db_url: str) -> None:
    uid, _ = await populate_user(open_client)
    reader = {"Authorization": f"Bearer {await make_key('read', 'profile:write', 'ingest')}"}
    assert (await auth_client.get(f"/v1/users/{uid}/export")).status_code == 401
    assert (await auth_client.get(f"/v1/users/{uid}/export", headers=reader)).status_code == 403
    r = await auth_client.get(f"/v1/users/{uuid.uuid4()}/export", headers=admin_headers)
    assert r.status_code == 404 and r.json()["detail"][0]["field"] == "user_id"
    r = await auth_client.get("/v1/users/1%20OR%201=1/export", headers=admin_headers)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "user_id"
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log WHERE action = 'user.export'").fetchone() == (0,)
