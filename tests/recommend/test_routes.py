"""The four recommendation routes over the real PostgreSQL and Redis (simulated catalogue and readers)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import psycopg
import pytest

from personalization.api.app import create_app
from personalization.api.auth import v1_route_scopes
from personalization.composition import Platform, open_platform
from personalization.config import Settings
from personalization_dev import recsim
from personalization_dev.testing.http import AppClients

ROUTES = [
    ("GET", "/v1/users/{user_id}/recommendations"),
    ("GET", "/v1/sessions/{session_id}/recommendations"),
    ("GET", "/v1/content/{content_id}/similar"),
    ("GET", "/v1/content/popular"),
]
REASON_PREFIXES = ("continue", "similar_to:", "collaborative", "embedding", "trending", "onboarding:")


def _passage(sim: recsim.SimData) -> dict[str, str]:
    return {it.content_id: it.passage_id or it.content_id for it in sim.items}


def _busiest(sim: recsim.SimData) -> recsim.SimReader:
    counts = Counter(e[0] for e in sim.events)
    top = counts.most_common(1)[0][0]
    return next(r for r in sim.readers if r.user_id == top)


def _consumed(sim: recsim.SimData, user: uuid.UUID) -> set[str]:
    passage = _passage(sim)
    return {passage[e[2]] for e in sim.events if e[0] == user and e[4] in ("view", "read", "bookmark")}


async def _event(client: httpx.AsyncClient, user: uuid.UUID | None, session: uuid.UUID, content_id: str,
                 signal: str, content_type: str = "chapter") -> None:
    ev = {"user_id": str(user) if user else None, "session_id": str(session), "content_id": content_id,
          "content_type": content_type, "signal_type": signal, "signal_weight": 1.0,
          "occurred_at": datetime.now(UTC).isoformat()}
    r = await client.post("/v1/events", json={"events": [ev]})
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text


async def test_user_recommendations(rec_client: httpx.AsyncClient, sim_db: recsim.SimData) -> None:
    reader = _busiest(sim_db)
    r = await rec_client.get(f"/v1/users/{reader.user_id}/recommendations", params={"limit": 10})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == str(reader.user_id) and body["variant"] == "personalized"
    items = body["items"]
    assert len(items) == 10
    assert all(it["reasons"] and all(x.startswith(REASON_PREFIXES) for x in it["reasons"]) for it in items)
    assert all(it["score"] > 0 for it in items)
    passage = _passage(sim_db)
    shown = [passage[it["content_id"]] for it in items]
    assert len(set(shown)) == len(shown), "two translations of one passage"
    assert not set(shown) & _consumed(sim_db, reader.user_id)
    # Chapters exist in both translations: the reader's preferred one is shown.
    chapters = [it["content_id"] for it in items if not it["content_id"].startswith("dev-")]
    assert chapters and all(c.startswith(reader.preferred_translation + ":") for c in chapters)
    # Sources are blended: more than one kind of reason across the list.
    kinds = {x.split(":")[0] for it in items for x in it["reasons"]}
    assert len(kinds) >= 2, kinds


async def test_repeats_and_content_type(rec_client: httpx.AsyncClient, sim_db: recsim.SimData) -> None:
    reader = _busiest(sim_db)
    url = f"/v1/users/{reader.user_id}/recommendations"
    r = await rec_client.get(url, params={"limit": 30, "allow_repeats": "true"})
    passage = _passage(sim_db)
    assert {passage[it["content_id"]] for it in r.json()["items"]} & _consumed(sim_db, reader.user_id)
    r = await rec_client.get(url, params={"limit": 5, "content_type": "devotional"})
    assert r.status_code == 200 and r.json()["items"]
    assert all(it["content_id"].startswith("dev-") for it in r.json()["items"])


@pytest.mark.parametrize("limit", ["0", "101", "ten"])
async def test_bad_limit_is_422_naming_the_field(rec_client: httpx.AsyncClient, sim_db: recsim.SimData,
                                                 limit: str) -> None:
    for url in (f"/v1/users/{sim_db.readers[0].user_id}/recommendations",
                f"/v1/sessions/{uuid.uuid4()}/recommendations",
                "/v1/content/popular", f"/v1/content/{sim_db.items[0].content_id}/similar"):
        r = await rec_client.get(url, params={"limit": limit})
        assert r.status_code == 422, (url, r.text)
        assert r.json()["detail"][0]["field"] == "limit"


async def test_unknown_user_and_content_are_404(rec_client: httpx.AsyncClient) -> None:
    r = await rec_client.get(f"/v1/users/{uuid.uuid4()}/recommendations")
    assert r.status_code == 404 and r.json()["detail"][0]["field"] == "user_id"
    r = await rec_client.get("/v1/content/NOPE:JHN.99/similar")
    assert r.status_code == 404
    assert r.json()["detail"][0]["loc"] == ["path", "content_id"]
    r = await rec_client.get("/v1/content/popular", params={"window_days": 0})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "window_days"


async def test_similar_never_itself_nor_another_translation(rec_client: httpx.AsyncClient,
                                                           sim_db: recsim.SimData) -> None:
    item = next(it for it in sim_db.items if it.translation == "WEB")
    r = await rec_client.get(f"/v1/content/{item.content_id}/similar", params={"limit": 8})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert len(items) == 8
    passage = _passage(sim_db)
    assert all(passage[it["content_id"]] != item.passage_id for it in items)
    assert all(it["reasons"] == [f"similar_to:{item.content_id}"] for it in items)
    # Shown in the translation of the item asked about.
    assert all(it["content_id"].startswith("WEB:") or it["content_id"].startswith("dev-") for it in items)


async def test_popular(rec_client: httpx.AsyncClient) -> None:
    r = await rec_client.get("/v1/content/popular", params={"limit": 5})
    items = r.json()["items"]
    assert r.status_code == 200 and len(items) == 5
    assert [it["score"] for it in items] == sorted((it["score"] for it in items), reverse=True)
    r = await rec_client.get("/v1/content/popular", params={"limit": 5, "content_type": "devotional",
                                                            "window_days": 30})
    assert r.json()["items"] and all(it["content_id"].startswith("dev-") for it in r.json()["items"])


async def test_session_recent_content_is_excluded(rec_client: httpx.AsyncClient, sim_db: recsim.SimData) -> None:
    reader = _busiest(sim_db)
    url = f"/v1/users/{reader.user_id}/recommendations"
    top = (await rec_client.get(url, params={"limit": 3})).json()["items"][0]["content_id"]
    session = uuid.uuid4()
    # An anonymous view in that session (the reader has not consumed it themselves).
    await _event(rec_client, None, session, top, "view")
    with_session = (await rec_client.get(url, params={"limit": 3, "session_id": str(session)})).json()
    assert top not in [it["content_id"] for it in with_session["items"]]
    # Anonymous reader: recommendations from the session's recent content.
    r = await rec_client.get(f"/v1/sessions/{session}/recommendations", params={"limit": 5})
    body = r.json()
    assert r.status_code == 200 and body["variant"] == "session" and len(body["items"]) == 5
    assert top not in [it["content_id"] for it in body["items"]]
    assert any(x.startswith(("similar_to:", "continue")) for it in body["items"] for x in it["reasons"])


async def test_new_bookmark_changes_the_next_recommendations(rec_client: httpx.AsyncClient,
                                                             sim_db: recsim.SimData) -> None:
    reader = _busiest(sim_db)
    url = f"/v1/users/{reader.user_id}/recommendations"
    before = (await rec_client.get(url, params={"limit": 10})).json()["items"]
    consumed = _consumed(sim_db, reader.user_id)
    fresh = next(it for it in sim_db.items if it.translation == reader.preferred_translation
                 and it.passage_id not in consumed and it.position == 2)
    await _event(rec_client, reader.user_id, uuid.uuid4(), fresh.content_id, "bookmark")
    after = (await rec_client.get(url, params={"limit": 10})).json()["items"]
    assert after != before
    reasons = {x for it in after for x in it["reasons"]}
    assert f"similar_to:{fresh.content_id}" in reasons or "continue" in reasons
    # The next chapter of the bookmarked one is offered ("continue reading").
    assert any(it["content_id"] == f"{reader.preferred_translation}:{fresh.series}.3" for it in after), after


async def test_flag_off_and_privacy_get_the_non_personalized_list(rec_client: httpx.AsyncClient,
                                                                  sim_db: recsim.SimData) -> None:
    reader = _busiest(sim_db)
    url = f"/v1/users/{reader.user_id}/recommendations"
    r = await rec_client.put("/v1/flags/personalization", json={
        "enabled": True, "rollout_percent": 100, "conditions": [], "overrides": {str(reader.user_id): False}})
    assert r.status_code == 200, r.text
    body = (await rec_client.get(url, params={"limit": 10})).json()
    assert body["variant"] == "non_personalized" and body["reason"] == "flag_off"
    assert {x for it in body["items"] for x in it["reasons"]} <= {"continue", "trending"}
    r = await rec_client.patch(f"/v1/users/{reader.user_id}", json={"privacy_level": "limited"})
    assert r.status_code == 200, r.text
    body = (await rec_client.get(url, params={"limit": 10})).json()
    assert body["variant"] == "non_personalized" and body["reason"] == "privacy"
    assert {x for it in body["items"] for x in it["reasons"]} == {"trending"}


async def test_recommendations_record_the_flag_exposure(rec_client: httpx.AsyncClient, sim_db: recsim.SimData,
                                                       db_url: str) -> None:
    # The personalization flag is evaluated through FlagService, so experiments see the
    # reader's exposure as they do for rerank and flag reads; it is durable before the answer.
    reader, other = _busiest(sim_db), sim_db.readers[0]
    assert other.user_id != reader.user_id
    r = await rec_client.put("/v1/flags/personalization", json={
        "enabled": True, "rollout_percent": 100, "conditions": [], "overrides": {str(other.user_id): False}})
    assert r.status_code == 200, r.text
    for user in (reader.user_id, other.user_id):
        r = await rec_client.get(f"/v1/users/{user}/recommendations", params={"limit": 3})
        assert r.status_code == 200, r.text
    with psycopg.connect(db_url) as conn:
        rows = dict(conn.execute(
            "SELECT user_id, variant FROM experiment_exposures WHERE flag = 'personalization'").fetchall())
    assert rows == {reader.user_id: "on", other.user_id: "off"}, rows


async def test_onboarding_for_a_reader_without_history(rec_client: httpx.AsyncClient) -> None:
    uid = uuid.uuid4()
    r = await rec_client.put(f"/v1/users/{uid}", json={"spiritual_goal": "grief", "preferred_translation": "WEB"})
    assert r.status_code == 201, r.text
    body = (await rec_client.get(f"/v1/users/{uid}/recommendations", params={"limit": 5})).json()
    assert body["variant"] == "personalized"
    assert any("onboarding:spiritual_goal" in it["reasons"] for it in body["items"]), body


def test_routes_in_openapi_behind_read_scope(rec_platform: Platform, settings: Settings) -> None:
    scopes = v1_route_scopes(create_app(settings, platform=rec_platform))
    for route in ROUTES:
        assert scopes[route] == ["read"], route


@pytest.fixture
async def no_redis_client(settings: Settings, sim_db: recsim.SimData, make_client: AppClients
                          ) -> AsyncIterator[httpx.AsyncClient]:
    from personalization.recommend.nightly import train

    # Nothing listens on port 1: every Redis call fails at once.
    cfg = settings.replace(redis={"url": "redis://127.0.0.1:1/0"}, auth={"dev_mode": True})
    async with open_platform(cfg) as p:
        await train(p.db, p.recommender.settings, dim=p.settings.embedding.dim, decay=p.recommender.decay)
        yield await make_client(cfg, p)


async def test_redis_down_falls_back_to_postgresql(no_redis_client: httpx.AsyncClient,
                                                   sim_db: recsim.SimData) -> None:
    reader = _busiest(sim_db)
    r = await no_redis_client.get(f"/v1/users/{reader.user_id}/recommendations", params={"limit": 10})
    assert r.status_code == 200, r.text
    assert r.json()["variant"] == "personalized" and len(r.json()["items"]) == 10
    r = await no_redis_client.get(f"/v1/sessions/{uuid.uuid4()}/recommendations")
    assert r.status_code == 200


async def test_empty_catalogue_answers_empty_lists(client: httpx.AsyncClient) -> None:
    uid = uuid.uuid4()
    assert (await client.put(f"/v1/users/{uid}", json={"preferred_translation": "KJV"})).status_code == 201
    for url in (f"/v1/users/{uid}/recommendations", f"/v1/sessions/{uuid.uuid4()}/recommendations",
                "/v1/content/popular"):
        r = await client.get(url)
        assert r.status_code == 200 and r.json()["items"] == [], (url, r.text)
