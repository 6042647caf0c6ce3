"""Redis answering an error (not timing out) degrades exactly like an outage (issue 17, failure 2).

Each test runs its own real ``redis-server`` and makes it answer one kind of error for
real: out of memory (``maxmemory 1`` + ``noeviction``), a read-only replica (``REPLICAOF``
a port nothing listens on), MASTERDOWN (a replica that serves no stale data), BUSY (a
script that does not end), LOADING (``DEBUG RELOAD`` with a per-key load delay), keys
clobbered with the wrong type, scripts flushed and refused by an ACL, and a cluster node
behind a standalone client (CROSSSLOT, MOVED).  Events are still committed (the response
says dedup unavailable), reads are served from PostgreSQL, nothing answers 500, the HTTP
connection is kept, and ``/healthz`` says degraded; when the fault is cleared everything comes back by itself.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from personalization.cache import keys
from personalization.composition import open_platform
from personalization.config import Settings
from personalization_dev.testing.http import AppClients
from personalization_dev.testing.redis_server import RedisServer, free_port
from personalization_dev.testing.waiting import async_wait_until, wait_until

KINDS = ["oom", "readonly", "masterdown", "busy", "loading", "wrongtype", "noscript", "crossslot", "moved"]
# Misconfigurations that exist from the start and are not cleared by the test.
CLUSTER_KINDS = {"crossslot", "moved"}


# redis-py turns the error codes it knows into classes (and drops the code from the text).
_CODES: dict[str, type[redis.RedisError]] = {
    "MOVED": redis.exceptions.MovedError,
    "READONLY": redis.exceptions.ReadOnlyError,
    "MASTERDOWN": redis.exceptions.MasterDownError,
    "LOADING": redis.exceptions.BusyLoadingError,
}


def _replies_error(c: redis.Redis, code: str, *command: Any) -> bool:
    try:
        c.execute_command(*command)
    except redis.RedisError as exc:
        known = _CODES.get(code)
        return isinstance(exc, known) if known is not None else str(exc).startswith(code)
    return False


class Fault:
    """Puts one real error reply into a private redis-server and takes it out again."""

    def __init__(self, kind: str, server: RedisServer, root: Path) -> None:
        self.kind = kind
        self.server = server
        self.root = root
        self.admin = server.client()
        self.others: list[RedisServer] = []
        self.blocked: threading.Thread | None = None
        self.user: uuid.UUID | None = None

    def prepare(self) -> None:
        """Before the platform starts: the cluster misconfigurations exist from the beginning."""
        if self.kind == "crossslot":
            self.admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            wait_until(lambda: b"cluster_state:ok" in self.admin.execute_command("CLUSTER", "INFO"), 10, "cluster ok",
                       interval_s=0.02)
        elif self.kind == "moved":
            owner = RedisServer(self.root, cluster=True)
            owner.start()
            self.others.append(owner)
            with contextlib.closing(owner.client()) as oc:
                oc.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            self.admin.execute_command("CLUSTER", "MEET", "127.0.0.1", owner.port)
            wait_until(lambda: _replies_error(self.admin, "MOVED", "GET", "probe"), 10, "the node to redirect",
                       interval_s=0.02)

    def inject(self, user: uuid.UUID) -> None:
        """Make the server answer the error from now on."""
        a = self.admin
        if self.kind == "oom":
            a.config_set("maxmemory-policy", "noeviction")
            a.config_set("maxmemory", "1")
        elif self.kind in ("readonly", "masterdown"):
            if self.kind == "masterdown":
                a.config_set("replica-serve-stale-data", "no")
            a.execute_command("REPLICAOF", "127.0.0.1", free_port())
            # A write is refused READONLY first; a read shows MASTERDOWN.
            command = ("SET", "probe", "1") if self.kind == "readonly" else ("GET", "probe")
            refusal = "READONLY" if self.kind == "readonly" else "MASTERDOWN"
            wait_until(lambda: _replies_error(a, refusal, *command), 10, f"the replica to refuse {refusal}",
                       interval_s=0.02)
        elif self.kind == "busy":
            a.config_set("busy-reply-threshold", "10")
            script = self.server.client(timeout_s=120)

            def run() -> None:
                with contextlib.suppress(redis.RedisError), contextlib.closing(script):
                    script.eval("while true do end", 0)

            self.blocked = threading.Thread(target=run, daemon=True)
            self.blocked.start()
            with contextlib.closing(self.server.client()) as probe:
                wait_until(lambda: _replies_error(probe, "BUSY", "PING"), 10, "BUSY replies", interval_s=0.02)
        elif self.kind == "loading":
            a.config_set("loading-process-events-interval-bytes", "1024")
            a.execute_command("DEBUG", "POPULATE", 20_000, "filler", 200)
            a.config_set("key-load-delay", "5000")  # 20,000 keys x 5 ms: loading lasts until cleared
            reload = self.server.client(timeout_s=300)

            def run() -> None:
                with contextlib.suppress(redis.RedisError), contextlib.closing(reload):
                    reload.execute_command("DEBUG", "RELOAD")

            self.blocked = threading.Thread(target=run, daemon=True)
            self.blocked.start()
            with contextlib.closing(self.server.client()) as probe:
                wait_until(lambda: _replies_error(probe, "LOADING", "GET", "x"), 10, "LOADING replies", interval_s=0.02)
        elif self.kind == "noscript":
            # The scripts are flushed and an ACL forbids loading or running them: NOSCRIPT,
            # then NOPERM on the reload.
            a.execute_command("SCRIPT", "FLUSH")
            a.execute_command("ACL", "SETUSER", "default", "-@scripting")
        elif self.kind == "wrongtype":
            # Another program clobbered the user's keys with values of the wrong type.
            a.delete(keys.user_signals(user), keys.user_preferences(user), keys.user_preferences_gen(user))
            a.set(keys.user_signals(user), "not a sorted set")
            a.set(keys.user_preferences(user), "not a hash")
            a.rpush(keys.user_preferences_gen(user), "not a string")
            a.set(keys.feature_flag(keys.PERSONALIZATION_FLAG, user), "x")
            a.rpush(keys.feature_flag_version(keys.PERSONALIZATION_FLAG), "not a number")
            self.user = user

    def clear(self) -> None:
        """Take the fault out (the cluster misconfigurations stay)."""
        a = self.admin
        if self.kind == "oom":
            a.config_set("maxmemory", "0")
        elif self.kind in ("readonly", "masterdown"):
            a.execute_command("REPLICAOF", "NO", "ONE")
        elif self.kind == "busy":
            a.execute_command("SCRIPT", "KILL")
        elif self.kind == "loading":
            a.config_set("key-load-delay", "0")
            wait_until(lambda: not _replies_error(a, "LOADING", "GET", "x"), 60, "the load to end", interval_s=0.02)
        elif self.kind == "noscript":
            a.execute_command("ACL", "SETUSER", "default", "+@all")
        elif self.kind == "wrongtype" and self.user is not None:
            a.delete(keys.user_signals(self.user), keys.user_preferences(self.user),
                     keys.user_preferences_gen(self.user), keys.feature_flag(keys.PERSONALIZATION_FLAG, self.user),
                     keys.feature_flag_version(keys.PERSONALIZATION_FLAG))
        if self.blocked is not None:
            self.blocked.join(30)

    def close(self) -> None:
        with contextlib.suppress(redis.RedisError):
            if self.kind == "busy" and self.blocked is not None and self.blocked.is_alive():
                self.admin.execute_command("SCRIPT", "KILL")
            if self.kind == "loading":
                self.admin.config_set("key-load-delay", "0")
        self.admin.close()
        for other in self.others:
            other.stop()


@pytest.fixture(params=KINDS)
def fault(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fault]:
    server = RedisServer(tmp_path, cluster=request.param in CLUSTER_KINDS)
    server.start()
    f = Fault(request.param, server, tmp_path)
    try:
        f.prepare()
        yield f
    finally:
        f.close()
        server.stop()


@pytest.fixture
async def client(fault: Fault, db_url: str, make_client: AppClients) -> AsyncIterator[httpx.AsyncClient]:
    """The app on its own platform, wired to the fault's private redis-server."""
    cfg = Settings(database={"url": db_url}, redis={"url": fault.server.url, "health_window_s": 1.0},
                   auth={"dev_mode": True}, ingest={"group_commit_window_ms": 1.0}, serving={"cache_retry_s": 0.1})
    async with open_platform(cfg) as platform:
        yield await make_client(cfg, platform)


def _events(users: list[uuid.UUID], n: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [{"client_event_id": str(uuid.uuid4()), "user_id": str(users[i % len(users)]),
             "session_id": str(uuid.uuid4()), "content_id": f"PSA.{i + 1}", "content_type": "chapter",
             "signal_type": "read", "signal_weight": 0.5, "occurred_at": (now - timedelta(minutes=i)).isoformat()}
            for i in range(n)]


async def _wait_status(client: httpx.AsyncClient, route: str, status: str, timeout_s: float = 20.0) -> None:
    last: Any = None

    async def reached() -> bool:
        nonlocal last
        last = (await client.get(route)).json()
        return bool(last["status"] == status)

    await async_wait_until(reached, timeout_s, lambda: f"{route} to say {status!r} (last answer: {last})")


async def test_error_replies_degrade_like_an_outage(fault: Fault, client: httpx.AsyncClient, db_url: str) -> None:
    users = [uuid.uuid4(), uuid.uuid4()]
    for uid in users:
        r = await client.put(f"/v1/users/{uid}", json={"denomination": "baptist", "preferred_translation": "KJV"})
        assert r.status_code == 201, r.text
        r = await client.post(f"/v1/users/{uid}/traits", json={"trait_type": "tone", "trait_value": "gentle",
                                                              "confidence": 0.9})
        assert r.status_code == 201, r.text
        assert (await client.get(f"/v1/users/{uid}/preferences")).status_code == 200
    fault.inject(users[0])

    # Writes: committed, dedup reported unavailable, no 500.
    r = await client.post("/v1/events", json={"events": _events(users, 6)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 6 and body["dedup"] == "unavailable", body
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM personalization_events").fetchone()
    assert row == (6,)
    r = await client.patch(f"/v1/users/{users[0]}", json={"denomination": "methodist"})
    assert r.status_code == 200, r.text

    # Reads: served from PostgreSQL, fresh.
    r = await client.get(f"/v1/users/{users[0]}/preferences")
    assert r.status_code == 200, r.text
    prefs = r.json()
    assert prefs["profile"]["denomination"] == "methodist" and prefs["source"] == "database"
    assert "gentle" in str(prefs["traits"]), prefs
    r = await client.get(f"/v1/users/{users[0]}/flags/personalization")
    assert r.status_code == 200 and r.json()["enabled"] is True, r.text
    r = await client.post(f"/v1/users/{users[0]}/rerank",
                          json={"session_id": str(uuid.uuid4()), "candidates": [{"content_id": "a", "score": 1}]})
    assert r.status_code == 200, r.text
    r = await client.get(f"/v1/sessions/{uuid.uuid4()}/recent")
    assert r.status_code == 200, r.text
    r = await client.post(f"/v1/users/{users[0]}/login")
    assert r.status_code == 200 and r.json()["preferences"]["profile"]["denomination"] == "methodist", r.text

    health = (await client.get("/healthz")).json()
    assert health["status"] == "degraded" and health["redis"] is False, health
    # The read path's breaker opens on a server-wide refusal; a clobbered key or refused
    # scripts leave the server answering the probe, so the breaker may close again at once.
    if fault.kind not in ("wrongtype", "noscript", "crossslot"):
        await _wait_status(client, "/healthz/serving", "degraded")

    if fault.kind in CLUSTER_KINDS:
        return
    fault.clear()
    await _wait_status(client, "/healthz", "ok")
    await _wait_status(client, "/healthz/serving", "ok")
    r = await client.post("/v1/events", json={"events": _events(users, 2)})
    assert r.status_code == 200 and r.json()["dedup"] == "ok", r.text
    body = (await client.get(f"/v1/users/{users[0]}/preferences")).json()
    assert body["profile"]["denomination"] == "methodist"
    assert (await client.get(f"/v1/users/{users[0]}/preferences")).json()["source"] == "cache"


async def test_erase_while_redis_refuses_writes_is_503_and_changes_nothing(
    tmp_path: Path, db_url: str, make_client: AppClients
) -> None:
    # Erase deletes the user's Redis keys inside its transaction: a refusing Redis rolls it
    # back, and the client is told to retry (503), not "internal error".
    server = RedisServer(tmp_path)
    server.start()
    try:
        cfg = Settings(database={"url": db_url}, redis={"url": server.url}, auth={"dev_mode": True},
                       erase={"kafka_tombstones": False})
        async with open_platform(cfg) as platform:
            c = await make_client(cfg, platform)
            uid = uuid.uuid4()
            assert (await c.put(f"/v1/users/{uid}", json={"denomination": "baptist"})).status_code == 201
            assert (await c.post("/v1/events", json={"events": _events([uid], 3)})).status_code == 200
            with contextlib.closing(server.client()) as admin:
                admin.execute_command("REPLICAOF", "127.0.0.1", free_port())
                wait_until(lambda: _replies_error(admin, "READONLY", "SET", "probe", "1"), 10, "READONLY replies",
                       interval_s=0.02)
            r = await c.delete(f"/v1/users/{uid}", params={"erase": "true"})
            assert r.status_code == 503, r.text
            assert r.json()["detail"][0]["type"] == "unavailable" and "Retry-After" in r.headers
            assert (await c.get(f"/v1/users/{uid}")).status_code == 200
    finally:
        server.stop()
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM personalization_events WHERE user_id = %s", (uid,)).fetchone()
    assert row == (3,)
