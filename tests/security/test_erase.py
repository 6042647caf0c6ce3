"""Erase a user everywhere: PostgreSQL (every table), Redis (every family), rollups, audit; idempotent."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path

import httpx
import orjson
import psycopg
import pytest
import redis
from security_helpers import MakeKey, populate_user, rows_per_table
from typer.testing import CliRunner

from personalization.cache import keys
from personalization.cli.main import app as cli_app
from personalization.composition import Platform
from personalization.config import Settings
from personalization.datarights.erase import Eraser
from personalization.datarights.worker import ErasureWorker
from personalization.errors import CacheUnavailable
from personalization_dev.testing.waiting import async_wait_until


def _extra_tables(db_url: str) -> None:
    # Tables another part of the project might add later: one with a foreign key to the
    # profile (no cascade, so the erase must delete it first), one in another schema
    # without any key, partitioned.  The erase finds them in the catalogue.
    with psycopg.connect(db_url) as conn:
        conn.execute("CREATE TABLE later_state (user_id uuid NOT NULL REFERENCES user_profile(user_id), v int)")
        conn.execute("CREATE SCHEMA IF NOT EXISTS extra")
        conn.execute("CREATE TABLE extra.snapshots (user_id uuid, as_of date NOT NULL) PARTITION BY RANGE (as_of)")
        conn.execute("CREATE TABLE extra.snapshots_2026 PARTITION OF extra.snapshots "
                     "FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')")


def _fill_extra(db_url: str, uid: uuid.UUID) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO later_state VALUES (%s, 1), (%s, 2)", (uid, uid))
        conn.execute("INSERT INTO extra.snapshots VALUES (%s, '2026-03-01'), (%s, '2026-04-01')", (uid, uid))
        conn.execute("REFRESH MATERIALIZED VIEW user_signal_rollups")


def _user_keys(r: redis.Redis, uid: uuid.UUID, sessions: list[uuid.UUID]) -> list[str]:
    found = sorted(k for k in r.scan_iter(match=keys.user_tag_pattern(uid)))
    found += [keys.session_recent_content(s) for s in sessions if r.exists(keys.session_recent_content(s))]
    return found


async def test_erase_removes_the_user_everywhere_and_only_them(
    open_client: httpx.AsyncClient, auth_client: httpx.AsyncClient, admin_headers: dict[str, str], db_url: str,
    sync_redis: redis.Redis, platform: Platform, auth_settings: Settings,
) -> None:
    _extra_tables(db_url)
    victim, v_sessions = await populate_user(open_client, events=12, sessions=3)
    other, o_sessions = await populate_user(open_client, events=5, sessions=1)
    for uid in (victim, other):
        _fill_extra(db_url, uid)
        assert (await open_client.get(f"/v1/users/{uid}/preferences")).status_code == 200
        assert (await open_client.get(f"/v1/users/{uid}/flags/personalization")).status_code == 200
        sync_redis.set(keys.user_embedding(uid), b"\x00\x00\x80?")
        sync_redis.set(keys.feature_flag("new-home", uid), "1")
    r = await open_client.put("/v1/flags/new-home", json={"enabled": True, "rollout_percent": 0,
                                                           "overrides": {str(victim): True, str(other): True}})
    assert r.status_code == 200, r.text
    before_victim = rows_per_table(db_url, victim)
    before_other = rows_per_table(db_url, other)
    assert before_victim["public.personalization_events"] == 12
    assert before_victim["public.user_signal_rollups"] > 0 and before_victim["public.feature_flag_overrides"] == 1
    assert before_victim["public.later_state"] == 2 and before_victim["extra.snapshots"] == 2
    victim_keys = _user_keys(sync_redis, victim, v_sessions)
    assert len(victim_keys) >= 6, victim_keys  # signals, preferences, 2 flags, embedding, session lists
    assert all(sync_redis.exists(keys.session_recent_content(s)) for s in v_sessions)

    r = await auth_client.delete(f"/v1/users/{victim}", params={"erase": "true"}, headers=admin_headers)
    # Everything but the rollups view is erased in the request; the view waits for the worker.
    assert r.status_code == 202, r.text
    report = r.json()
    assert report["erased"] is False and report["outcome"] == "pending" and report["pending"] == ["rollups"]
    assert report["parts"] == {"postgres": "done", "redis": "done", "rollups": "pending", "kafka": "not_needed"}
    assert r.headers["location"] == f"/v1/erasures/{report['erasure_id']}" == report["status_url"]
    assert report["removed"]["personalization_events"] == 12
    assert report["removed"]["user_traits"] == 2 and report["removed"]["user_profile"] == 1
    assert report["removed"]["public.later_state"] == 2 and report["removed"]["extra.snapshots"] == 2
    assert report["sessions"] == 3 and report["redis_keys"] == len(victim_keys)
    status = (await auth_client.get(report["status_url"], headers=admin_headers)).json()
    assert status["complete"] is False and status["pending"] == ["rollups"]
    assert rows_per_table(db_url, victim)["public.user_signal_rollups"] > 0
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT outcome FROM audit_log WHERE action = 'user.erase'").fetchone() == ("pending",)

    # The worker (every API process runs one) completes it with one refresh.
    result = await ErasureWorker(platform.db, platform.redis, auth_settings).run_once()
    assert result.done == {"rollups": 1} and result.refreshed and result.completed == 1
    status = (await auth_client.get(report["status_url"], headers=admin_headers)).json()
    assert status["complete"] is True and status["pending"] == [] and status["completed_at"]
    assert {k: v["state"] for k, v in status["parts"].items()} == {
        "postgres": "done", "redis": "done", "rollups": "done", "kafka": "not_needed"}

    # Every store, afterwards: nothing of the victim, the other user untouched.
    assert set(rows_per_table(db_url, victim).values()) == {0}
    assert rows_per_table(db_url, other) == before_other
    assert _user_keys(sync_redis, victim, v_sessions) == []
    assert len(_user_keys(sync_redis, other, o_sessions)) >= 5
    with psycopg.connect(db_url) as conn:
        # No anonymised leftovers: the victim's content ids are nowhere in the events.
        assert conn.execute("SELECT count(*) FROM personalization_events WHERE user_id IS NULL").fetchone() == (0,)
        audit = conn.execute("SELECT actor, action, subject_hash, outcome, details::text, audit_log::text "
                             "FROM audit_log WHERE action = 'user.erase'").fetchall()
    assert len(audit) == 1
    actor, _, subject, outcome, details, whole = audit[0]
    # The audit row records the completion.
    assert actor.startswith("key:") and outcome == "ok" and '"completed_at"' in details
    assert subject == hashlib.sha256(str(victim).encode()).hexdigest()
    # No personal data in the audit row: not the id, not a session, not what was read.
    for secret in (str(victim), *map(str, v_sessions), "PSA.", "prayed", "baptist"):
        assert secret not in whole
    assert '"personalization_events": 12' in details

    # Idempotent: a second erase succeeds at once (the view no longer holds the user),
    # removes nothing, and is audited too.
    r = await auth_client.delete(f"/v1/users/{victim}", params={"erase": "true"}, headers=admin_headers)
    assert r.status_code == 200, r.text
    again = r.json()
    assert again["erased"] is True and set(again["removed"].values()) == {0} and again["redis_keys"] == 0
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log WHERE action = 'user.erase'").fetchone() == (2,)


async def test_erase_needs_admin_and_plain_delete_needs_profile_write(
    open_client: httpx.AsyncClient, auth_client: httpx.AsyncClient, make_key: MakeKey, db_url: str
) -> None:
    uid, _ = await populate_user(open_client)
    writer = {"Authorization": f"Bearer {await make_key('profile:write', 'read', 'ingest')}"}
    admin_only = {"Authorization": f"Bearer {await make_key('admin')}"}
    r = await auth_client.delete(f"/v1/users/{uid}", params={"erase": "true"}, headers=writer)
    assert r.status_code == 403 and "admin" in r.json()["detail"][0]["msg"]
    r = await auth_client.delete(f"/v1/users/{uid}", headers=admin_only)
    assert r.status_code == 403 and "profile:write" in r.json()["detail"][0]["msg"]
    assert rows_per_table(db_url, uid)["public.personalization_events"] == 6
    for bad in ("not-a-uuid", "1%27%3B%20DROP%20TABLE%20user_profile%3B--", "00000000-0000-0000-0000-00000000000g"):
        r = await auth_client.delete(f"/v1/users/{bad}", params={"erase": "true"}, headers=admin_only)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "user_id", r.text
    r = await auth_client.delete(f"/v1/users/{uid}", params={"erase": "maybe"}, headers=admin_only)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "erase"
    assert rows_per_table(db_url, uid)["public.user_profile"] == 1


async def test_erase_with_redis_down_changes_nothing(
    open_client: httpx.AsyncClient, platform: Platform, auth_settings: Settings, db_url: str
) -> None:
    import redis.asyncio as aioredis

    uid, _ = await populate_user(open_client)
    before = rows_per_table(db_url, uid)
    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=0.2, socket_connect_timeout=0.2)
    try:
        with pytest.raises(CacheUnavailable):
            await Eraser(platform.db, dead, auth_settings).erase(uid, "test")
    finally:
        await dead.aclose()
    # The PostgreSQL part rolled back: the session ids needed for Redis are not lost.
    assert rows_per_table(db_url, uid) == before
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log").fetchone() == (0,)


def _insert_user(db_url: str, events: int) -> uuid.UUID:
    uid = uuid.uuid4()
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO user_profile (user_id) VALUES (%s)", (uid,))
        conn.execute("INSERT INTO user_traits (trait_id, user_id, trait_type, trait_value) VALUES (%s, %s, 'tone', "
                     "'\"gentle\"')", (uuid.uuid4(), uid))
        for i in range(events):
            conn.execute("INSERT INTO personalization_events (user_id, session_id, content_id, content_type, "
                         "signal_type, signal_weight, occurred_at) VALUES (%s, %s, %s, 'chapter', 'read', 0.5, now())",
                         (uid, uuid.uuid4(), f"JHN.{i}"))
    return uid


def test_cli_users_erase(db_url: str, redis_url: str, sync_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    uid = _insert_user(db_url, 6)
    with psycopg.connect(db_url) as conn:
        conn.execute("REFRESH MATERIALIZED VIEW user_signal_rollups")  # the CLI completes the refresh itself
    sync_redis.set(keys.user_embedding(uid), b"\x00")
    monkeypatch.setenv("PERSONALIZATION_DATABASE_URL", db_url)
    monkeypatch.setenv("PERSONALIZATION_REDIS_URL", redis_url)
    monkeypatch.setenv("PERSONALIZATION_ERASE_KAFKA_TOMBSTONES", "false")
    from personalization.config import get_settings

    get_settings.cache_clear()
    try:
        runner = CliRunner()
        # Without --yes it asks; "no" (or no answer) erases nothing.
        res = runner.invoke(cli_app, ["users", "erase", str(uid)], input="n\n")
        assert res.exit_code == 2 and "not confirmed" in res.output and "--yes" in res.output
        assert rows_per_table(db_url, uid)["public.user_profile"] == 1
        res = runner.invoke(cli_app, ["users", "erase", str(uid)], input="")
        assert res.exit_code == 2 and rows_per_table(db_url, uid)["public.user_profile"] == 1
        res = runner.invoke(cli_app, ["users", "erase", str(uid), "--yes", "--json"])
        assert res.exit_code == 0, res.output
        assert '"personalization_events":6' in res.stdout and '"redis_keys":1' in res.stdout
        assert set(rows_per_table(db_url, uid).values()) == {0}
        assert sync_redis.exists(keys.user_embedding(uid)) == 0
        report = orjson.loads(res.stdout)
        assert report["outcome"] == "ok" and report["pending"] == [] and report["parts"]["rollups"] == "done"
        res = runner.invoke(cli_app, ["users", "erasure", report["erasure_id"]])
        assert res.exit_code == 0 and orjson.loads(res.stdout)["complete"] is True
        res = runner.invoke(cli_app, ["users", "erase", "x'; DROP TABLE user_profile; --", "--yes"])
        assert res.exit_code == 2 and "user_id: not a UUID" in res.output
        assert len(res.output.strip().splitlines()) == 1
    finally:
        get_settings.cache_clear()
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT actor FROM audit_log WHERE action = 'user.erase'").fetchone()
    assert row is not None and row[0].startswith("cli:")


def test_cli_users_export(db_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uid = _insert_user(db_url, 4)
    monkeypatch.setenv("PERSONALIZATION_DATABASE_URL", db_url)
    monkeypatch.setenv("PERSONALIZATION_REDIS_URL", redis_url)
    from personalization.config import get_settings

    get_settings.cache_clear()
    try:
        runner = CliRunner()
        out = tmp_path / "user.json"
        res = runner.invoke(cli_app, ["users", "export", str(uid), "--out", str(out)])
        assert res.exit_code == 0, res.output
        doc = orjson.loads(out.read_bytes())
        assert doc["user_id"] == str(uid) and doc["events_count"] == 4 and len(doc["traits"]) == 1
        res = runner.invoke(cli_app, ["users", "export", str(uuid.uuid4())])
        assert res.exit_code == 2 and "user not found" in res.output
    finally:
        get_settings.cache_clear()


async def test_erase_racing_ingest_leaves_nothing(platform: Platform, auth_settings: Settings, db_url: str,
                                                  sync_redis: redis.Redis) -> None:
    from security_helpers import event

    uid = _insert_user(db_url, 0)
    session = uuid.uuid4()
    stop = asyncio.Event()
    accepted = 0
    attempts = 0

    async def writer() -> None:
        nonlocal accepted, attempts
        while not stop.is_set():
            r = await platform.ingestor.ingest([event(uid, session, f"PSA.{i}") for i in range(50)])
            accepted += r.accepted
            attempts += 1
            await asyncio.sleep(0)  # a yield, not a wait: lets the erase interleave with the batches

    task = asyncio.create_task(writer())
    # The erase starts while batches are being committed, and the writer keeps trying after it.
    await async_wait_until(lambda: accepted >= 200, 30, lambda: f"four committed batches (accepted {accepted})")
    report = await Eraser(platform.db, platform.redis, auth_settings).erase(uid, "test")
    after_erase = attempts
    await async_wait_until(lambda: attempts >= after_erase + 5, 30, "five ingest attempts after the erase")
    stop.set()
    await task
    assert report.removed["personalization_events"] == accepted > 0  # every committed event, none after
    assert set(rows_per_table(db_url, uid).values()) == {0}
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM personalization_events").fetchone() == (0,)
    assert _user_keys(sync_redis, uid, [session]) == []
