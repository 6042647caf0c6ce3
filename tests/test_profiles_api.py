"""Profiles and traits over HTTP against real PostgreSQL."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psycopg
import pytest


def _count(db_url: str, table: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # table names are constants here
        assert row is not None
        return int(row[0])


async def test_profile_lifecycle(client: httpx.AsyncClient, db_url: str) -> None:
    uid = uuid.uuid4()
    body = {
        "denomination": "baptist",
        "spiritual_goal": "consistency",
        "preferred_translation": "KJV",
        "timezone": "America/Chicago",
    }
    r = await client.put(f"/v1/users/{uid}", json=body)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["privacy_level"] == "standard"
    assert created["denomination"] == "baptist"

    r = await client.put(f"/v1/users/{uid}", json=body | {"denomination": "methodist"})
    assert r.status_code == 200
    assert r.json()["created_at"] == created["created_at"]
    assert r.json()["denomination"] == "methodist"

    r = await client.patch(f"/v1/users/{uid}", json={"privacy_level": "limited", "timezone": None})
    assert r.status_code == 200
    got = r.json()
    assert got["privacy_level"] == "limited" and got["timezone"] is None and got["denomination"] == "methodist"
    assert got["updated_at"] >= created["updated_at"]

    r = await client.get(f"/v1/users/{uid}")
    assert r.status_code == 200 and r.json()["privacy_level"] == "limited"

    assert (await client.delete(f"/v1/users/{uid}")).status_code == 204
    assert (await client.get(f"/v1/users/{uid}")).status_code == 404
    assert (await client.delete(f"/v1/users/{uid}")).status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"privacy_level": "public"}, "privacy_level"),
        ({"denomination": ""}, "denomination"),
        ({"denomination": "x" * 257}, "denomination"),
        ({"favourite_colour": "blue"}, "favourite_colour"),
        ({"denomination": 7}, "denomination"),
    ],
)
async def test_profile_bad_input_names_field_and_writes_nothing(
    client: httpx.AsyncClient, db_url: str, body: dict[str, Any], field: str
) -> None:
    r = await client.put(f"/v1/users/{uuid.uuid4()}", json=body)
    assert r.status_code == 422, r.text
    assert field in {e["field"] for e in r.json()["detail"]}
    assert _count(db_url, "user_profile") == 0


async def test_malformed_ids_and_json(client: httpx.AsyncClient, db_url: str) -> None:
    r = await client.get("/v1/users/not-a-uuid")
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["path", "user_id"]
    r = await client.put(
        f"/v1/users/{uuid.uuid4()}", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code in (400, 422)
    assert r.json()["detail"]
    assert _count(db_url, "user_profile") == 0


async def test_traits_crud_any_json_and_cascade(client: httpx.AsyncClient, db_url: str) -> None:
    uid = uuid.uuid4()
    await client.put(f"/v1/users/{uid}", json={})
    values: list[Any] = ["visual", {"start": "06:00", "end": "07:30"}, [1, 2, 3], 4.5, True]
    ids = []
    for v in values:
        r = await client.post(f"/v1/users/{uid}/traits", json={"trait_type": "t", "trait_value": v, "confidence": 0.9})
        assert r.status_code == 201, r.text
        assert r.json()["trait_value"] == v
        ids.append(r.json()["trait_id"])
    r = await client.get(f"/v1/users/{uid}/traits")
    assert sorted(t["trait_id"] for t in r.json()) == sorted(ids)

    # PUT replaces under the same id, and creates under a new one.
    r = await client.put(f"/v1/users/{uid}/traits/{ids[0]}", json={"trait_type": "tone", "trait_value": "gentle"})
    assert r.status_code == 200 and r.json()["trait_type"] == "tone" and r.json()["confidence"] == "0.80"
    new_id = uuid.uuid4()
    r = await client.put(f"/v1/users/{uid}/traits/{new_id}", json={"trait_type": "language", "trait_value": "en"})
    assert r.status_code == 201

    # Another user cannot overwrite or delete it, and learns nothing about it.
    other = uuid.uuid4()
    await client.put(f"/v1/users/{other}", json={})
    r = await client.put(f"/v1/users/{other}/traits/{new_id}", json={"trait_type": "x", "trait_value": 1})
    assert r.status_code == 404
    assert (await client.delete(f"/v1/users/{other}/traits/{new_id}")).status_code == 404

    assert (await client.delete(f"/v1/users/{uid}/traits/{ids[1]}")).status_code == 204
    assert _count(db_url, "user_traits") == len(values) + 1 - 1
    assert (await client.delete(f"/v1/users/{uid}")).status_code == 204
    assert _count(db_url, "user_traits") == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"trait_type": "t", "trait_value": "v", "confidence": 1.01}, "confidence"),
        ({"trait_type": "t", "trait_value": "v", "confidence": -0.1}, "confidence"),
        ({"trait_type": "t", "trait_value": "v", "confidence": "NaN"}, "confidence"),
        ({"trait_type": "t", "trait_value": "v", "confidence": 0.555}, "confidence"),
        ({"trait_type": "", "trait_value": "v"}, "trait_type"),
        ({"trait_type": "t"}, "trait_value"),
        ({"trait_type": "t", "trait_value": None}, "trait_value"),
        ({"trait_type": "t", "trait_value": 1, "extra": 1}, "extra"),
    ],
)
async def test_trait_bad_input(client: httpx.AsyncClient, db_url: str, body: dict[str, Any], field: str) -> None:
    uid = uuid.uuid4()
    await client.put(f"/v1/users/{uid}", json={})
    r = await client.post(f"/v1/users/{uid}/traits", json=body)
    assert r.status_code == 422, r.text
    assert field in {e["field"] for e in r.json()["detail"]}
    assert _count(db_url, "user_traits") == 0


async def test_trait_for_unknown_user_is_404(client: httpx.AsyncClient, db_url: str) -> None:
    uid = uuid.uuid4()
    r = await client.post(f"/v1/users/{uid}/traits", json={"trait_type": "t", "trait_value": 1})
    assert r.status_code == 404
    assert r.json()["detail"][0]["field"] == "user_id"
    assert (await client.get(f"/v1/users/{uid}/traits")).status_code == 404
    assert _count(db_url, "user_traits") == 0


async def test_healthz_and_openapi(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "postgres": True, "redis": True}
    spec = (await client.get("/openapi.json")).json()
    for path in (
        "/v1/users/{user_id}",
        "/v1/users/{user_id}/traits",
        "/v1/users/{user_id}/traits/{trait_id}",
        "/v1/events",
    ):
        assert path in spec["paths"]
    assert "requestBody" in spec["paths"]["/v1/events"]["post"]
