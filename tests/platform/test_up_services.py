"""``personalization up`` on configured services (the test PostgreSQL, Redis and broker), no JVM.

A worker-node subset (``--only``) with a two-worker API: the status document and
``GET /healthz/platform``, then a SIGKILL of the supervisor leaves no process behind
(uvicorn's worker processes included).  Bad input exits 2 before anything starts.
"""

from __future__ import annotations

import socket
import subprocess
import uuid
from pathlib import Path

import httpx
from platform_helpers import UpProcess, base_env, cli, component, status

from personalization_dev.testing.procs import descendants, wait_gone


def test_up_subset_on_configured_services_and_kill_9_of_the_supervisor_leaves_no_child(
    db_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    token = uuid.uuid4().hex[:8]
    env = base_env(
        PERSONALIZATION_DATABASE_URL=db_url,
        PERSONALIZATION_REDIS_URL=redis_url,
        PERSONALIZATION_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        PERSONALIZATION_KAFKA_TOPIC_PREFIX=f"up{token}",
        PERSONALIZATION_LEARNER_GROUP_ID=f"learner-{token}",
        PERSONALIZATION_PLATFORM_INVALIDATOR_GROUP=f"inval-{token}",
        PERSONALIZATION_DATA_DIR=str(tmp_path / "data"),
        PERSONALIZATION_AUTH_DEV_MODE="true",
    )
    up = UpProcess(["--only", "api,learner,invalidator,scheduler,erasures", "--workers", "2", "--port", "0"],
                   env, tmp_path / "up.log", tmp_path)
    pids: set[int] = set()
    try:
        exports = up.wait_exports(120)
        # Configured services are not re-exported; the API and the state directory are.
        assert set(exports) == {"PERSONALIZATION_API_URL", "PERSONALIZATION_DATA_DIR"}
        api = exports["PERSONALIZATION_API_URL"]

        code, report = status(env)
        assert code == 0, report
        assert [c["name"] for c in report["components"]] == ["api", "learner", "invalidator", "scheduler", "erasures"]
        assert component(report, "erasures")["lag"] == {"pending": 0}
        assert all(c["state"] == "up" and c["restarts"] == 0 and c["pid"] for c in report["components"])
        assert component(report, "api")["url"] == api
        assert component(report, "api")["lag"] == {"healthz": "ok"}
        learner_lag = component(report, "learner")["lag"]
        assert learner_lag["group"] == f"learner-{token}" and learner_lag["partitions"] == 4, learner_lag
        assert "messages_behind" in component(report, "invalidator")["lag"]
        assert "last_success_age_s" in component(report, "scheduler")["lag"]
        assert report["supervisor"]["embedded_stack"] is False

        r = httpx.get(f"{api}/healthz/platform", timeout=30)
        assert r.status_code == 200, r.text
        assert [c["name"] for c in r.json()["components"]] == ["api", "learner", "invalidator", "scheduler",
                                                               "erasures"]

        # A second `up` on the same data directory refuses (exit 3) and leaves the first alone.
        again = subprocess.run(cli("up", "--port", "0"), env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 3, again.stderr
        assert again.stderr.startswith("error: the platform is already running from") and again.stdout == ""
        assert status(env)[0] == 0

        pids = descendants(up.pid)
        # 4 children, the API's two uvicorn workers (and multiprocessing's helper).
        assert len(pids) >= 6, pids
        up.proc.kill()  # SIGKILL: none of the supervisor's code runs
        up.proc.wait(timeout=10)
        left = wait_gone(pids, timeout_s=30)
        assert left == set(), f"orphans after kill -9 of the supervisor: {left}\n{up.tail()}"

        # The state file outlives it; status tells the supervisor is gone.
        code, report = status(env)
        assert code == 1
        assert report["supervisor"]["state"] == "down"
        assert {c["state"] for c in report["components"]} == {"down"}
        assert all(c["pid"] is None for c in report["components"])
    finally:
        up.close()
        wait_gone(pids, timeout_s=10)


def test_bad_input_exits_2_with_one_line_and_starts_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = base_env(PERSONALIZATION_DATA_DIR=str(data), PERSONALIZATION_DATABASE_URL="postgresql://nobody@127.0.0.1:1/x")
    r = subprocess.run(cli("up", "--only", "api,bogus"), env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: --only: unknown role 'bogus' "
        "(known: api, relay, learner, invalidator, scheduler, erasures, invalidations)"
    ]
    assert r.stdout == ""
    assert not (data / "platform" / "state.json").exists()

    env_bad = {**env, "PERSONALIZATION_PLATFORM_LEARNERS": "0"}
    r = subprocess.run(cli("up"), env=env_bad, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("error: invalid settings: PERSONALIZATION_PLATFORM_LEARNERS: "), r.stderr

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(cli("up", "--only", "api", "--port", str(port)), env=env, capture_output=True, text=True,
                           timeout=60)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: port {port} on 127.0.0.1 is already in use; stop what holds it, or choose another with --port "
        "(0: a free one) or PERSONALIZATION_HTTP_PORT"
    ]

    env_roles = {**env, "PERSONALIZATION_PLATFORM_ROLES": "learner,nope"}
    r = subprocess.run(cli("up"), env=env_roles, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("error: PERSONALIZATION_PLATFORM_ROLES: unknown role 'nope'")

    r = subprocess.run(cli("status"), env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 4
    assert r.stderr.strip().splitlines() == [
        f"error: no platform state in {(data / 'platform').resolve()}: start it with `personalization up`"
    ]
