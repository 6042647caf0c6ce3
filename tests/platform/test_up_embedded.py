"""The issue's scenario: ``personalization up`` on a clean machine, as an operator runs it.

No service configured, so ``up`` starts the embedded stack (PostgreSQL, Redis, the broker),
then the API, the Debezium relay (JVM), the learner, the invalidator and the scheduler.
Events ingested through the API reach a reader's embedding in Redis; a SIGKILLed learner
is restarted (status shows the restart) and keeps learning; SIGTERM stops everything,
stack included, within the bound and ``up`` exits 0.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import redis
from platform_helpers import UpProcess, base_env, cli, component, wait_status

from personalization.cache import keys
from personalization_dev.testing.procs import alive, descendants, wait_gone

pytestmark = pytest.mark.slow

DIM = 8
STOP_BOUND_S = 60.0


@pytest.fixture
def world_dir() -> Iterator[Path]:
    # The embedded PostgreSQL runs as an unprivileged account when the tests run as root:
    # pytest's tmp_path (under a 0700 folder) would be out of its reach.
    base = Path(tempfile.mkdtemp(prefix="pup-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _content_file(path: Path, n: int) -> list[str]:
    ids = [f"kjv-test-{i}" for i in range(n)]
    with path.open("w") as fh:
        for i, cid in enumerate(ids):
            vector = [1.0 if j == i % DIM else 0.1 for j in range(DIM)]
            row = {"content_id": cid, "content_type": "passage", "title": cid, "embedding": vector}
            fh.write(json.dumps(row) + "\n")
    return ids


def _reader(client: httpx.Client, contents: list[str]) -> str:
    uid = str(uuid.uuid4())
    r = client.put(f"/v1/users/{uid}", json={"privacy_level": "standard", "timezone": "UTC"})
    assert r.status_code == 201, r.text
    now = datetime.now(UTC).isoformat()
    events = [{"user_id": uid, "session_id": str(uuid.uuid4()), "content_id": cid, "content_type": "passage",
               "signal_type": "read", "signal_weight": "1.0", "occurred_at": now} for cid in contents]
    r = client.post("/v1/events", json={"events": events})
    assert r.status_code == 200 and r.json()["accepted"] == len(events), r.text
    return uid


def _wait_embedding(r: redis.Redis, uid: str, up: UpProcess, timeout_s: float) -> bytes:
    deadline = time.monotonic() + timeout_s
    while (value := r.get(keys.user_embedding(uid))) is None:
        assert up.proc.poll() is None, up.tail()
        assert time.monotonic() < deadline, f"no embedding for {uid} in Redis within {timeout_s} s\n{up.tail()}"
        time.sleep(0.1)
    assert isinstance(value, bytes)
    return value


def test_up_runs_the_platform_restarts_a_killed_learner_and_stops_on_sigterm(world_dir: Path) -> None:
    data = world_dir / "data"
    env = base_env(PERSONALIZATION_DATA_DIR=str(data), PERSONALIZATION_EMBEDDING_DIM=str(DIM))
    up = UpProcess(["--port", "0", "--stop-timeout", str(STOP_BOUND_S)], env, world_dir / "up.log", world_dir)
    pids: set[int] = set()
    try:
        exports = up.wait_exports(240)
        assert {"PERSONALIZATION_DATABASE_URL", "PERSONALIZATION_REDIS_URL", "PERSONALIZATION_KAFKA_BOOTSTRAP_SERVERS",
                "PERSONALIZATION_API_URL", "PERSONALIZATION_DATA_DIR"} <= set(exports)
        shell = {**env, **exports}
        key = json.loads(subprocess.run(
            cli("keys", "create", "--name", "up-test", "--scopes", "ingest,profile:write,read", "--json"),
            env=shell, capture_output=True, text=True, timeout=120, check=True,
        ).stdout)["key"]
        contents = _content_file(world_dir / "content.jsonl", 6)
        subprocess.run(cli("content", "import", str(world_dir / "content.jsonl")), env=shell, capture_output=True,
                       timeout=120, check=True)
        # Every component up; the relay's slot exists once its JVM has started.
        report = wait_status(shell, lambda r: all(c["state"] == "up" for c in r["components"])
                             and component(r, "relay")["lag"].get("active") is True, 180, "relay streaming")
        assert [c["name"] for c in report["components"]] == ["api", "relay", "learner", "invalidator", "scheduler",
                                                             "erasures", "invalidations"]
        # The data-rights workers report their backlog: nothing pending on a fresh platform.
        assert component(report, "erasures")["lag"] == {"pending": 0}
        assert component(report, "invalidations")["lag"] == {"pending": 0}
        assert report["supervisor"]["embedded_stack"] is True

        red = redis.Redis.from_url(exports["PERSONALIZATION_REDIS_URL"])
        with httpx.Client(base_url=exports["PERSONALIZATION_API_URL"], timeout=30,
                          headers={"authorization": f"Bearer {key}"}) as client:
            first = _reader(client, contents[:3])
            assert len(_wait_embedding(red, first, up, 180)) == 4 * DIM

            learner = component(report, "learner")
            os.kill(learner["pid"], signal.SIGKILL)
            report = wait_status(shell, lambda r: component(r, "learner")["restarts"] == 1
                                 and component(r, "learner")["state"] == "up", 60, "learner restarted")
            restarted = component(report, "learner")
            assert restarted["pid"] != learner["pid"] and restarted["last_exit_code"] == -signal.SIGKILL
            assert all(c["restarts"] == 0 for c in report["components"] if c["name"] != "learner")
            # The new learner process learns too.
            second = _reader(client, contents[3:])
            assert len(_wait_embedding(red, second, up, 180)) == 4 * DIM
        red.close()

        pids = descendants(up.pid)
        # The five children, the stack's servers (PostgreSQL with its backends, Redis, the broker).
        assert len(pids) >= 8, pids
        began = time.monotonic()
        up.proc.send_signal(signal.SIGTERM)
        code = up.proc.wait(timeout=STOP_BOUND_S + 30)
        took = time.monotonic() - began
        assert code == 0, up.tail()
        assert took < STOP_BOUND_S + 30, took
        left = wait_gone(pids, timeout_s=5)
        assert left == set(), f"still running after up exited: {left}"
        assert not alive(up.pid)
        log = up.tail(200_000)
        # Ordered: the API stops before the relay, the relay before the learner.
        order = [ln for ln in log.splitlines() if '"component":"supervisor"' in ln and "stopped" in ln]
        names = [json.loads(ln)["child"] for ln in order if "child" in json.loads(ln)]
        assert names.index("api") < names.index("relay") < names.index("learner"), names
    finally:
        up.close()
        wait_gone(pids, timeout_s=10)
