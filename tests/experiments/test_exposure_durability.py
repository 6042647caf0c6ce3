"""Exposures are never lost: a killed API process, a graceful shutdown, a failing PostgreSQL."""

from __future__ import annotations

import asyncio
import socket
import uuid
from datetime import UTC, datetime

import httpx
import psycopg
import pytest
from experiment_helpers import count_exposures, exposures, make_readers

from personalization.config import Settings
from personalization.core.experiments import Exposure
from personalization.experiments.exposures import ExposureRecorder
from personalization.store.db import Database
from personalization.store.experiments import ExperimentStore
from personalization_dev.childproc import CliChild
from personalization_dev.testing.waiting import wait_until

FLAG = "reading-plan"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server(db_url: str, redis_url: str) -> tuple[CliChild, str]:
    port = _free_port()
    env = {
        "PERSONALIZATION_DATABASE_URL": db_url,
        "PERSONALIZATION_REDIS_URL": redis_url,
        "PERSONALIZATION_AUTH_DEV_MODE": "true",
        # A wider window than the default so that many reads share each group commit.
        "PERSONALIZATION_EXPOSURE_WINDOW_MS": "20",
    }
    args = ["personalization.api.app:create_app", "--factory", "--host", "127.0.0.1", "--port", str(port),
            "--no-access-log", "--log-level", "warning"]
    child = CliChild("uvicorn", args, env, name="api")
    child.spawn()
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if child.wait_or_none() is not None:
            raise RuntimeError(f"API server exited before answering:\n{child.tail()}")
        try:
            return httpx.get(base + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(answers, 60, lambda: f"the API server to answer /healthz:\n{child.tail()}", interval_s=0.1)
    except BaseException:
        child.close()
        raise
    return child, base


async def _read_until_stopped(
    base: str, readers: list[uuid.UUID], acked: dict[uuid.UUID, str], stop_after: int, stop: asyncio.Event,
) -> int:
    """Concurrent first reads (flag, login, rerank in turn); returns how many failed."""
    queue = list(readers)
    failures = 0

    async def worker(c: httpx.AsyncClient, n: int) -> None:
        nonlocal failures
        while queue:
            u = queue.pop()
            kind = (n + len(queue)) % 3
            try:
                if kind == 0:
                    r = await c.get(f"/v1/users/{u}/flags/{FLAG}")
                    variant = r.json()["variant"] if r.status_code == 200 else None
                elif kind == 1:
                    r = await c.post(f"/v1/users/{u}/login")
                    variant = r.json()["flags"]["personalization"]["variant"] if r.status_code == 200 else None
                else:
                    body = {"session_id": str(uuid.uuid4()), "candidates": [{"content_id": "JHN.3"}]}
                    r = await c.post(f"/v1/users/{u}/rerank", json=body)
                    variant = ("on" if r.json()["flag"]["enabled"] else "off") if r.status_code == 200 else None
            except httpx.HTTPError:
                failures += 1
                if stop.is_set():
                    return
                continue
            if variant is not None:
                acked[u] = ("personalization:" if kind else f"{FLAG}:") + variant
                if len(acked) >= stop_after:
                    stop.set()

    # A real server over TCP, not the in-process client: the test kills or stops its process.
    async with httpx.AsyncClient(base_url=base, timeout=10) as c:
        await asyncio.gather(*(worker(c, n) for n in range(16)))
    return failures


def _check_acked(db_url: str, acked: dict[uuid.UUID, str]) -> None:
    got = {f: exposures(db_url, f) for f in (FLAG, "personalization")}
    missing = []
    for u, tagged in acked.items():
        flag, variant = tagged.split(":")
        row = got[flag].get(u)
        if row is None or row[1] != variant:
            missing.append((u, tagged, row))
    assert not missing, f"{len(missing)} acknowledged reads without their exposure: {missing[:3]}"


@pytest.mark.parametrize("how", ["kill", "terminate"])
async def test_every_acknowledged_read_has_its_exposure(db_url: str, redis_url: str, how: str) -> None:
    readers = make_readers(db_url, 1500)
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "INSERT INTO feature_flags (flag, enabled, rollout_percent) VALUES (%s, true, 50)", (FLAG,)
        )
    child, base = _server(db_url, redis_url)
    try:
        acked: dict[uuid.UUID, str] = {}
        stop = asyncio.Event()

        async def stopper() -> None:
            await stop.wait()
            # Mid-stream: 16 reads are in flight, some waiting for their group commit.
            if how == "kill":
                child.kill()
            else:
                await asyncio.to_thread(child.stop, 30)

        stopping = asyncio.create_task(stopper())
        failures = await _read_until_stopped(base, readers, acked, 400, stop)
        await stopping
    finally:
        child.close()
    assert stop.is_set() and len(acked) < len(readers)
    if how == "kill":
        assert failures > 0  # reads were cut off by the kill
    _check_acked(db_url, acked)


async def test_close_drains_and_failures_are_retried(settings: Settings, db_url: str) -> None:
    readers = make_readers(db_url, 50)
    db = Database(settings.replace(database={"statement_timeout_ms": 300}))
    await db.open()
    recorder = ExposureRecorder(ExperimentStore(db), window_ms=1.0, retry_max_s=0.1, drain_timeout_s=20)
    now = datetime.now(UTC)

    def exposure(u: uuid.UUID) -> Exposure:
        return Exposure("personalization", u, "on", "rollout", 1, now)

    try:
        assert await recorder.record(exposure(readers[0])) is True
        assert await recorder.record(exposure(readers[0]), use_memory=True) is True  # remembered: no statement
        # PostgreSQL refuses for a while (the table is locked past the statement timeout):
        # the callers hear False, the exposures stay queued and are retried.
        with psycopg.connect(db_url) as locker:
            locker.execute("LOCK TABLE experiment_exposures IN ACCESS EXCLUSIVE MODE")
            results = await asyncio.gather(*(recorder.record(exposure(u)) for u in readers[1:25]))
            assert results == [False] * 24
            assert recorder.pending == 24
        # Queued without waiting, then a graceful close: everything pending is written.
        tasks = [asyncio.create_task(recorder.record(exposure(u))) for u in readers[25:]]
        await asyncio.sleep(0)  # a yield, not a wait: lets the tasks queue their exposures before the close
        await recorder.close()
        await asyncio.gather(*tasks)
    finally:
        await db.close()
    assert count_exposures(db_url) == 50
