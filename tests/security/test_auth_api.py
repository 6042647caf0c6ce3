"""API keys on the real app: every /v1 route, scopes, bad keys, revocation, limits, dev mode."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import httpx
import psycopg
import pytest
from security_helpers import MakeKey

from personalization.api.app import create_app
from personalization.api.auth import unprotected_v1_routes, v1_route_scopes
from personalization.composition import Platform
from personalization.config import Settings
from personalization.security.keys import SCOPES
from personalization_dev.testing.http import AppClients
from personalization_dev.testing.waiting import async_wait_until

# The scope of every /v1 route.  A new route must be added here (the first test fails
# otherwise), which makes its scope a reviewed decision.
EXPECTED: dict[tuple[str, str], str] = {
    ("PUT", "/v1/users/{user_id}"): "profile:write",
    ("GET", "/v1/users/{user_id}"): "read",
    ("PATCH", "/v1/users/{user_id}"): "profile:write",
    ("DELETE", "/v1/users/{user_id}"): "profile:write",
    ("GET", "/v1/users/{user_id}/traits"): "read",
    ("POST", "/v1/users/{user_id}/traits"): "profile:write",
    ("PUT", "/v1/users/{user_id}/traits/{trait_id}"): "profile:write",
    ("DELETE", "/v1/users/{user_id}/traits/{trait_id}"): "profile:write",
    ("POST", "/v1/events"): "ingest",
    ("GET", "/v1/users/{user_id}/preferences"): "read",
    ("POST", "/v1/users/{user_id}/login"): "read",
    ("GET", "/v1/users/{user_id}/flags/{flag}"): "read",
    ("GET", "/v1/flags/{flag}"): "admin",
    ("PUT", "/v1/flags/{flag}"): "admin",
    ("GET", "/v1/sessions/{session_id}/recent"): "read",
    ("POST", "/v1/users/{user_id}/rerank"): "read",
    ("GET", "/v1/users/{user_id}/export"): "admin",
    ("GET", "/v1/erasures/{erasure_id}"): "admin",
    ("POST", "/v1/keys"): "admin",
    ("GET", "/v1/keys"): "admin",
    ("DELETE", "/v1/keys/{key_id}"): "admin",
    ("GET", "/v1/audit"): "admin",
    ("PUT", "/v1/metrics/{name}"): "admin",
    ("GET", "/v1/metrics"): "read",
    ("GET", "/v1/metrics/{name}"): "read",
    ("DELETE", "/v1/metrics/{name}"): "admin",
    ("GET", "/v1/experiments/{flag}"): "read",
    ("GET", "/v1/experiments/{flag}/results"): "read",
    ("GET", "/v1/users/{user_id}/recommendations"): "read",
    ("GET", "/v1/sessions/{session_id}/recommendations"): "read",
    ("GET", "/v1/content/{content_id}/similar"): "read",
    ("GET", "/v1/content/popular"): "read",
}


def _concrete(path: str) -> str:
    values = {"key_id": "0123456789abcdef", "flag": "personalization"}
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m[1], str(uuid.uuid4())), path)


def _assert_auth_error(r: httpx.Response, status: int, type_: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    detail = r.json()["detail"]
    assert detail[0]["type"] == type_
    assert detail[0]["field"] == "authorization"
    # No internals and no statement about any user.
    assert "Traceback" not in r.text and "user" not in detail[0]["msg"].lower()


def test_every_v1_route_has_a_reviewed_scope(auth_settings: Settings, platform: Platform) -> None:
    app = create_app(auth_settings, platform=platform)
    assert unprotected_v1_routes(app) == []
    documented = v1_route_scopes(app)
    # DELETE /v1/users/{id} picks its scope per request: profile:write, or admin with erase=true.
    assert documented.pop(("DELETE", "/v1/users/{user_id}")) == []
    assert documented == {k: [v] for k, v in EXPECTED.items() if k != ("DELETE", "/v1/users/{user_id}")}


async def test_no_key_is_401_and_wrong_scope_is_403_on_every_route(
    auth_client: httpx.AsyncClient, make_key: MakeKey
) -> None:
    for (method, path), scope in EXPECTED.items():
        url = _concrete(path)
        r = await auth_client.request(method, url, json={})
        _assert_auth_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
        others = [s for s in SCOPES if s != scope]
        key = await make_key(*others)
        r = await auth_client.request(method, url, json={}, headers={"Authorization": f"Bearer {key}"})
        _assert_auth_error(r, 403, "forbidden")
        assert scope in r.json()["detail"][0]["msg"]
        right = await make_key(scope)
        r = await auth_client.request(method, url, json={}, headers={"Authorization": f"Bearer {right}"})
        assert r.status_code not in (401, 403), (method, path, r.text)


async def test_401_comes_before_validation_and_existence(auth_client: httpx.AsyncClient,
                                                         open_client: httpx.AsyncClient) -> None:
    uid = uuid.uuid4()
    assert (await open_client.put(f"/v1/users/{uid}", json={})).status_code == 201
    existing = await auth_client.get(f"/v1/users/{uid}")
    missing = await auth_client.get(f"/v1/users/{uuid.uuid4()}")
    malformed = await auth_client.get("/v1/users/not-a-uuid")
    assert existing.status_code == missing.status_code == malformed.status_code == 401
    assert existing.json() == missing.json() == malformed.json()


async def test_health_and_metrics_stay_open(auth_client: httpx.AsyncClient) -> None:
    assert (await auth_client.get("/healthz")).status_code == 200
    assert (await auth_client.get("/v1/keys")).status_code == 401
    r = await auth_client.get("/metrics")
    assert r.status_code == 200 and 'personalization_auth_refused_total{status="401"}' in r.text


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-key",
        "Bearer pzk_0123456789abcdef_" + "A" * 43,  # well-formed, unknown id
        "Bearer ' OR '1'='1' --",
        "Bearer pzk_0123456789abcdef_" + "A" * 42 + "'; DROP TABLE api_keys; --",
        "Bearer " + "x" * 400,
        "bearer pzk_zzzzzzzzzzzzzzzz_" + "A" * 43,
    ],
)
async def test_malformed_and_unknown_keys_are_401(auth_client: httpx.AsyncClient, db_url: str, header: str) -> None:
    r = await auth_client.post("/v1/events", json={"events": []}, headers={"Authorization": header})
    _assert_auth_error(r, 401, "unauthorized")
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM api_keys").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM personalization_events").fetchone() == (0,)


async def test_non_ascii_authorization_header_is_401(auth_client: httpx.AsyncClient) -> None:
    header = "Bearer pzk_\xe9\xff".encode("latin-1")
    r = await auth_client.get(f"/v1/users/{uuid.uuid4()}", headers={"Authorization": header})
    _assert_auth_error(r, 401, "unauthorized")


async def test_right_id_wrong_secret_is_401(auth_client: httpx.AsyncClient, make_key: MakeKey) -> None:
    key = await make_key("read")
    forged = key[:-5] + ("AAAAA" if not key.endswith("AAAAA") else "BBBBB")
    r = await auth_client.get(f"/v1/users/{uuid.uuid4()}", headers={"Authorization": f"Bearer {forged}"})
    _assert_auth_error(r, 401, "unauthorized")
    ok = await auth_client.get(f"/v1/users/{uuid.uuid4()}", headers={"Authorization": f"Bearer {key}"})
    assert ok.status_code == 404


async def test_nothing_is_written_without_the_right_key(
    auth_client: httpx.AsyncClient, make_key: MakeKey, db_url: str
) -> None:
    reader = await make_key("read")
    uid = uuid.uuid4()
    event = {"user_id": None, "session_id": str(uuid.uuid4()), "content_id": "JHN.3", "content_type": "chapter",
             "signal_type": "view", "signal_weight": 0.5, "occurred_at": "2026-01-01T00:00:00Z"}
    for headers in ({}, {"Authorization": f"Bearer {reader}"}):
        assert (await auth_client.put(f"/v1/users/{uid}", json={}, headers=headers)).status_code in (401, 403)
        assert (await auth_client.post("/v1/events", json={"events": [event]}, headers=headers)).status_code in (
            401, 403)
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM user_profile").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM personalization_events").fetchone() == (0,)


async def test_revoked_key_is_refused_within_the_revalidation_period(
    auth_client: httpx.AsyncClient, admin_headers: dict[str, str], make_key: MakeKey, auth_settings: Settings
) -> None:
    key = await make_key("read", name="to-revoke")
    h = {"Authorization": f"Bearer {key}"}
    assert (await auth_client.get(f"/v1/users/{uuid.uuid4()}", headers=h)).status_code == 404  # cached as valid
    keys = (await auth_client.get("/v1/keys", headers=admin_headers)).json()
    key_id = next(k["key_id"] for k in keys if k["name"] == "to-revoke")
    assert keys[[k["key_id"] for k in keys].index(key_id)]["last_used_at"] is not None
    r = await auth_client.delete(f"/v1/keys/{key_id}", headers=admin_headers)
    assert r.status_code == 200 and r.json()["revoked_at"]

    async def refused() -> list[httpx.Response]:
        # Until its cached verification is due again the key still works (404: no such user).
        r = await auth_client.get(f"/v1/users/{uuid.uuid4()}", headers=h)
        return [r] if r.status_code != 404 else []

    (r,) = await async_wait_until(refused, auth_settings.auth.revalidate_s + 0.1,
                                  f"the revoked key to be refused within {auth_settings.auth.revalidate_s} s")
    _assert_auth_error(r, 401, "unauthorized")
    # Revoking again is idempotent; an unknown or malformed id is a 4xx naming the field.
    assert (await auth_client.delete(f"/v1/keys/{key_id}", headers=admin_headers)).status_code == 200
    r = await auth_client.delete("/v1/keys/ffffffffffffffff", headers=admin_headers)
    assert r.status_code == 404
    r = await auth_client.delete("/v1/keys/1%27%20OR%201=1", headers=admin_headers)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "key_id"


async def test_keys_api_creates_lists_and_audits(
    auth_client: httpx.AsyncClient, admin_headers: dict[str, str], db_url: str
) -> None:
    r = await auth_client.post("/v1/keys", json={"name": "ingest-svc", "scopes": ["ingest"]}, headers=admin_headers)
    assert r.status_code == 201, r.text
    body = r.json()
    key, key_id = body["key"], body["key_id"]
    assert body["scopes"] == ["ingest"] and key.startswith(f"pzk_{key_id}_")
    listed = (await auth_client.get("/v1/keys", headers=admin_headers)).json()
    assert all("key" not in k and "key_hash" not in k for k in listed)
    secret = key.rsplit("_", 1)[-1] if key.count("_") == 2 else key[len(f"pzk_{key_id}_"):]
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT hash_scheme, key_hash, api_keys::text FROM api_keys WHERE key_id = %s",
                           (key_id,)).fetchone()
        audit = conn.execute("SELECT actor, action, target, details::text FROM audit_log WHERE target = %s",
                             (key_id,)).fetchall()
    assert row is not None and row[0] == "hmac-sha256"
    assert secret not in row[2] and secret.encode() not in bytes(row[1])
    assert [a[1] for a in audit] == ["key.create"]
    assert audit[0][0].startswith("key:") and secret not in audit[0][3]
    # Bad names and scopes: 4xx naming the field, nothing stored.
    for bad in ({"name": "x'; DROP TABLE api_keys; --", "scopes": ["read"]}, {"name": "ok", "scopes": ["root"]},
                {"name": "ok", "scopes": []}, {"name": "a\r\nX-Injected: 1", "scopes": ["read"]},
                {"name": "ingest-svc", "scopes": ["read"]}):
        r = await auth_client.post("/v1/keys", json=bad, headers=admin_headers)
        assert 400 <= r.status_code < 500 and "Traceback" not in r.text, r.text
        assert r.json()["detail"][0]["field"] in ("name", "scopes"), r.text
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM api_keys").fetchone() == (2,)  # admin + ingest-svc


async def test_flag_rule_change_is_audited(auth_client: httpx.AsyncClient, admin_headers: dict[str, str],
                                           db_url: str) -> None:
    r = await auth_client.put("/v1/flags/new-home", json={"enabled": True, "rollout_percent": 25},
                              headers=admin_headers)
    assert r.status_code == 200, r.text
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT actor, target, outcome, details->>'route' FROM audit_log "
                            "WHERE action = 'flag.rules.update'").fetchall()
    assert rows == [("key:" + rows[0][0].split(":")[1] + ":test-admin", "new-home", "ok", "/v1/flags/{flag}")]


async def test_oversized_headers_are_431_json(auth_client: httpx.AsyncClient, admin_headers: dict[str, str]) -> None:
    r = await auth_client.get("/v1/keys", headers=admin_headers | {"X-Padding": "a" * 9000})
    assert r.status_code == 431
    assert r.json()["detail"][0]["type"] == "too_large"


async def test_rate_limit_is_429_with_retry_after(platform: Platform, auth_settings: Settings,
                                                  make_key: MakeKey, make_client: AppClients) -> None:
    limited = auth_settings.replace(auth={"rate_limit_per_s": 0.5, "rate_limit_burst": 3})
    key = await make_key("read")
    other = await make_key("read")
    c = await make_client(limited, platform)
    statuses = [(await c.get(f"/v1/users/{uuid.uuid4()}", headers={"Authorization": f"Bearer {key}"}))
                for _ in range(4)]
    assert [r.status_code for r in statuses] == [404, 404, 404, 429]
    last = statuses[-1]
    _assert_auth_error(last, 429, "rate_limited")
    assert int(last.headers["retry-after"]) >= 1
    # The bucket is per key.
    r = await c.get(f"/v1/users/{uuid.uuid4()}", headers={"Authorization": f"Bearer {other}"})
    assert r.status_code == 404


async def test_dev_mode_is_explicit_and_announced(
    platform: Platform, auth_settings: Settings, capsys: pytest.CaptureFixture[str], make_client: AppClients
) -> None:
    dev = auth_settings.replace(auth={"dev_mode": True})
    c = await make_client(dev, platform)
    assert "DEVELOPMENT MODE" in capsys.readouterr().err
    assert (await c.get(f"/v1/users/{uuid.uuid4()}")).status_code == 404
    create_app(auth_settings, platform=platform)
    assert "DEVELOPMENT MODE" not in capsys.readouterr().err
    assert Settings().auth.dev_mode is False or "PERSONALIZATION_AUTH_DEV_MODE" in __import__("os").environ


async def test_scrypt_keys_without_server_secret(platform: Platform, auth_settings: Settings,
                                                 make_client: AppClients) -> None:
    from personalization.security.keys import KeyStore

    no_secret = auth_settings.replace(auth={"api_key_secret": None})
    key, info = await KeyStore(platform.db, no_secret).create("scrypt-key", ["read"], "test")
    row = await platform.db.fetch_one("SELECT hash_scheme, salt FROM api_keys WHERE key_id = %(k)s", {"k": info.key_id})
    assert row is not None and row["hash_scheme"] == "scrypt" and row["salt"]
    c = await make_client(no_secret, platform)
    h = {"Authorization": f"Bearer {key}"}
    results: list[Any] = await asyncio.gather(*(c.get(f"/v1/users/{uuid.uuid4()}", headers=h) for _ in range(5)))
    assert [r.status_code for r in results] == [404] * 5
    bad = key[:-1] + ("A" if key[-1] != "A" else "B")
    r = await c.get(f"/v1/users/{uuid.uuid4()}", headers={"Authorization": f"Bearer {bad}"})
    assert r.status_code == 401


async def test_unexpected_errors_are_json_without_internals(platform: Platform, auth_settings: Settings,
                                                             make_key: MakeKey) -> None:
    from personalization.api.auth import require

    app = create_app(auth_settings, platform=platform)

    @app.get("/v1/test-boom", dependencies=[require("read")])
    async def boom() -> None:
        raise RuntimeError("secret internals: password=hunter2")

    key = await make_key("read")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        r = await c.get("/v1/test-boom", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 500 and r.json()["detail"][0]["type"] == "internal"
    assert "hunter2" not in r.text and "Traceback" not in r.text


async def test_audit_writes_a_structured_log_line(auth_client: httpx.AsyncClient, admin_headers: dict[str, str],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="personalization.audit")
    r = await auth_client.post("/v1/keys", json={"name": "logged", "scopes": ["read"]}, headers=admin_headers)
    assert r.status_code == 201
    lines = [rec for rec in caplog.records if rec.name == "personalization.audit"]
    assert len(lines) == 1
    rec = lines[0]
    assert rec.__dict__["audit_action"] == "key.create" and rec.__dict__["target"] == r.json()["key_id"]
    assert rec.__dict__["actor"].startswith("key:") and r.json()["key"] not in rec.getMessage()
    from personalization.logging_setup import JsonFormatter

    line = JsonFormatter().format(rec)
    assert '"audit_action":"key.create"' in line and r.json()["key"].rsplit("_", 1)[-1] not in line
