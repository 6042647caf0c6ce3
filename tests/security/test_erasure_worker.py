"""The erasure worker: one refresh for every pending erasure, woken in-process, crash leftovers."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import psycopg
import pytest
import redis
from typer.testing import CliRunner

from personalization.cache import keys
from personalization.cli.main import app as cli_app
from personalization.composition import Platform
from personalization.config import Settings
from personalization.datarights.erase import Eraser
from personalization.datarights.worker import REFRESHES, ErasureWorker
from personalization.security import audit
from personalization.workers import background_workers
from personalization_dev.testing.http import AppClients
from personalization_dev.testing.waiting import async_wait_until


def _users_in_rollups(db_url: str, n: int) -> list[uuid.UUID]:
    users = [uuid.uuid4() for _ in range(n)]
    with psycopg.connect(db_url) as conn:
        for u in users:
            conn.execute("INSERT INTO user_profile (user_id) VALUES (%s)", (u,))
            conn.execute("INSERT INTO personalization_events (user_id, session_id, content_id, content_type, "
                         "signal_type, signal_weight, occurred_at) VALUES (%s, %s, 'JHN.3', 'chapter', 'read', 0.5, "
                         "now())", (u, uuid.uuid4()))
        conn.execute("REFRESH MATERIALIZED VIEW user_signal_rollups")
    return users


def _in_rollups(db_url: str, users: list[uuid.UUID]) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(DISTINCT user_id) FROM user_signal_rollups WHERE user_id = ANY(%s)",
                           (users,)).fetchone()
    assert row is not None
    return int(row[0])


async def test_concurrent_erasures_share_one_refresh(platform: Platform, auth_settings: Settings,
                                                     db_url: str) -> None:
    users = _users_in_rollups(db_url, 6)
    eraser = Eraser(platform.db, platform.redis, auth_settings)
    reports = await asyncio.gather(*(eraser.erase(u, "test") for u in users))
    assert all(r.pending == ["rollups"] for r in reports)
    assert _in_rollups(db_url, users) == 6  # the view changes only with a refresh
    before = REFRESHES._value.get()
    result = await ErasureWorker(platform.db, platform.redis, auth_settings).run_once()
    assert result.done == {"rollups": 6} and result.completed == 6 and result.refreshed
    assert REFRESHES._value.get() == before + 1
    assert _in_rollups(db_url, users) == 0
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM erasures WHERE completed_at IS NULL").fetchone() == (0,)
        assert conn.execute("SELECT array_agg(DISTINCT outcome) FROM audit_log "
                            "WHERE action = 'user.erase'").fetchone() == (["ok"],)


async def test_no_refresh_when_the_view_was_rebuilt_since(platform: Platform, auth_settings: Settings,
                                                          db_url: str) -> None:
    users = _users_in_rollups(db_url, 2)
    for u in users:
        await Eraser(platform.db, platform.redis, auth_settings).erase(u, "test")
    with psycopg.connect(db_url) as conn:  # what a nightly run's swap does in effect
        conn.execute("REFRESH MATERIALIZED VIEW user_signal_rollups")
    result = await ErasureWorker(platform.db, platform.redis, auth_settings).run_once()
    assert result.done == {"rollups": 2} and result.completed == 2 and not result.refreshed


async def test_the_api_process_worker_completes_an_erase_on_its_own(
    platform: Platform, auth_settings: Settings, db_url: str, admin_headers: dict[str, str],
    make_client: AppClients
) -> None:
    (uid,) = _users_in_rollups(db_url, 1)
    async with background_workers(platform, ("erasures",)) as workers:
        # The workers on the app's state: what the lifespan does in a served process.
        c = await make_client(auth_settings, platform, app_state={"workers": workers})
        r = await c.delete(f"/v1/users/{uid}", params={"erase": "true"}, headers=admin_headers)
        assert r.status_code == 202, r.text

        async def complete() -> dict[str, object] | None:
            status: dict[str, object] = (await c.get(r.headers["location"], headers=admin_headers)).json()
            return status if status["complete"] else None

        await async_wait_until(complete, 30, "the API process's erasure worker to complete the erase")
    assert _in_rollups(db_url, [uid]) == 0


async def test_keys_left_by_a_process_killed_after_the_commit_are_deleted(
    platform: Platform, auth_settings: Settings, db_url: str, sync_redis: redis.Redis
) -> None:
    uid, session = uuid.uuid4(), uuid.uuid4()
    names = [keys.user_preferences(uid), keys.session_recent_content(session)]
    # What an erase killed between its commit and its second Redis delete leaves behind
    # (a reader re-cached the snapshot in between).
    eid = uuid.uuid4()
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO erasures (erasure_id, subject_hash, subject_id, redis_keys, actor, requested_at) "
                     "VALUES (%s, %s, %s, %s, 'test', now() - interval '1 minute')",
                     (eid, audit.subject_hash(uid), uid, names))
        conn.execute("INSERT INTO erasure_parts (erasure_id, part, state) VALUES (%s, 'postgres', 'done'), "
                     "(%s, 'redis', 'pending'), (%s, 'rollups', 'not_needed'), (%s, 'kafka', 'not_needed')",
                     (eid, eid, eid, eid))
    sync_redis.hset(names[0], "denomination", "baptist")
    sync_redis.lpush(names[1], "PSA.1")
    result = await ErasureWorker(platform.db, platform.redis, auth_settings).run_once()
    assert result.done == {"redis": 1} and result.completed == 1
    assert sync_redis.exists(*names) == 0
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT subject_id, redis_keys, completed_at IS NOT NULL FROM erasures").fetchone() == (
            None, None, True)


def test_workers_run_once_from_the_cli(db_url: str, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    (uid,) = _users_in_rollups(db_url, 1)
    monkeypatch.setenv("PERSONALIZATION_DATABASE_URL", db_url)
    monkeypatch.setenv("PERSONALIZATION_REDIS_URL", redis_url)
    monkeypatch.setenv("PERSONALIZATION_ERASE_KAFKA_TOMBSTONES", "false")
    from personalization.config import get_settings

    get_settings.cache_clear()
    try:
        runner = CliRunner()
        # --wait-s 0: the erase leaves the refresh to a worker and says so (exit 3).
        res = runner.invoke(cli_app, ["users", "erase", str(uid), "--yes", "--wait-s", "0", "--json"])
        assert res.exit_code == 3, res.output
        report = orjson.loads(res.stdout)
        assert report["pending"] == ["rollups"] and "workers run erasures" in res.stderr
        res = runner.invoke(cli_app, ["workers", "run", "erasures", "--once"])
        assert res.exit_code == 0, res.output
        assert orjson.loads(res.stdout)["completed"] == 1
        res = runner.invoke(cli_app, ["users", "erasure", report["erasure_id"]])
        assert res.exit_code == 0 and orjson.loads(res.stdout)["complete"] is True
        res = runner.invoke(cli_app, ["workers", "run", "invalidations", "--once"])
        assert res.exit_code == 0 and orjson.loads(res.stdout) == {"worker": "invalidations", "replayed": 0}
        res = runner.invoke(cli_app, ["workers", "run", "everything"])
        assert res.exit_code == 2
        res = runner.invoke(cli_app, ["users", "erasure", str(uuid.uuid4())])
        assert res.exit_code == 2 and "erasure not found" in res.stderr
    finally:
        get_settings.cache_clear()
