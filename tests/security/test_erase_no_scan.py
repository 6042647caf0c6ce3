"""Erase and export name every Redis key of the user: no SCAN, and no key family forgotten."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import httpx
import redis
from security_helpers import populate_user

from personalization.cache import keys
from personalization.cache.datarights import user_key_names


def test_every_per_user_key_family_is_named() -> None:
    uid, session = uuid.uuid4(), uuid.uuid4()
    names = set(user_key_names(uid, [session], ["new-home"]))
    specs = [v for v in vars(keys).values() if isinstance(v, keys.KeySpec)]
    per_user = [s for s in specs if "{user_id}" in s.pattern or "{session_id}" in s.pattern]
    assert len(per_user) >= 6
    for spec in per_user:
        flags = ["new-home", keys.PERSONALIZATION_FLAG] if "{flag}" in spec.pattern else [""]
        for flag in flags:
            name = spec.pattern.format(user_id=uid, session_id=session, flag=flag)
            assert name in names, f"{spec.pattern} is not erased/exported by user_key_names"


class _Monitor:
    """Every command the Redis server receives for one logical db, while the block runs."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.db = int(url.rsplit("/", 1)[1])
        self.commands: list[str] = []
        self.token = f"monitor-stop-{uuid.uuid4().hex}"
        self.ready = threading.Event()

    def _run(self) -> None:
        with self.client.monitor() as m:
            self.ready.set()
            while True:
                cmd = m.next_command()
                if cmd["db"] != self.db:
                    continue
                self.commands.append(cmd["command"])
                if self.token in cmd["command"]:
                    return

    def __enter__(self) -> _Monitor:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.echo(self.token)
        self.thread.join(10)
        self.client.close()


def _scans(commands: list[str]) -> Iterator[str]:
    return (c for c in commands if c.split(" ", 1)[0].upper() in ("SCAN", "KEYS"))


async def test_erase_and_export_never_scan(open_client: httpx.AsyncClient, auth_client: httpx.AsyncClient,
                                           admin_headers: dict[str, str], redis_url: str,
                                           sync_redis: redis.Redis) -> None:
    uid, sessions = await populate_user(open_client, events=8, sessions=2)
    assert (await open_client.get(f"/v1/users/{uid}/preferences")).status_code == 200
    assert (await open_client.put("/v1/flags/new-home", json={"enabled": True, "rollout_percent": 100})
            ).status_code == 200
    assert (await open_client.get(f"/v1/users/{uid}/flags/new-home")).status_code == 200
    assert sync_redis.exists(keys.feature_flag("new-home", uid))
    with _Monitor(redis_url) as mon:
        r = await auth_client.get(f"/v1/users/{uid}/export", headers=admin_headers)
        assert r.status_code == 200
        cached = {c["key"] for c in r.json()["cache"]}
        assert keys.feature_flag("new-home", uid) in cached and keys.user_preferences(uid) in cached
        assert all(keys.session_recent_content(s) in cached for s in sessions)
        r = await auth_client.delete(f"/v1/users/{uid}", params={"erase": "true"}, headers=admin_headers)
        assert r.status_code in (200, 202), r.text
    assert mon.commands, "the monitor saw nothing"
    assert list(_scans(mon.commands)) == []
    assert not sync_redis.exists(keys.feature_flag("new-home", uid), keys.user_preferences(uid),
                                 *(keys.session_recent_content(s) for s in sessions))
