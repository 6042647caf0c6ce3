"""``stack up`` / ``stack down`` as a person runs them, in subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import redis
from confluent_kafka.admin import AdminClient
from stack_helpers import kill_quietly, pids_of_stack, start_cli_up
from typer.testing import CliRunner

from personalization_dev.cli.stack import app
from personalization_dev.stack import LocalStack, StackConfig, running_owner
from personalization_dev.testing.procs import wait_gone


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PERSONALIZATION_")}


def _check_services(exports: dict[str, str]) -> None:
    with psycopg.connect(exports["PERSONALIZATION_DATABASE_URL"], connect_timeout=5) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS survives_kill (v int)")
        conn.execute("INSERT INTO survives_kill VALUES (42)")
    r = redis.Redis.from_url(exports["PERSONALIZATION_REDIS_URL"])
    assert r.ping()
    r.close()
    admin = AdminClient({"bootstrap.servers": exports["PERSONALIZATION_KAFKA_BOOTSTRAP_SERVERS"]})
    assert admin.list_topics(timeout=10).brokers


def test_kill_9_of_stack_up_leaves_no_orphans_and_restarts(stack_root: Path, tmp_path: Path) -> None:
    proc, exports = start_cli_up(stack_root, tmp_path / "up.err", _env())
    pids: set[int] = set()
    try:
        _check_services(exports)
        pids = pids_of_stack(stack_root)
        # postmaster + its workers, redis-server, the broker.
        assert len(pids) >= 4, pids
        proc.kill()  # SIGKILL: no handler, no cleanup code of ours runs
        proc.wait(timeout=10)
        left = wait_gone(pids, timeout_s=30)
        assert left == set(), f"orphans after kill -9: {left}"
    finally:
        kill_quietly(pids | {proc.pid})
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()
    # The crashed run's directory is recovered: same data, servers start again.
    assert running_owner(stack_root) is None
    stack = LocalStack(StackConfig(root=stack_root))
    with stack as urls, psycopg.connect(urls.database_url) as conn:
        assert conn.execute("SELECT v FROM survives_kill").fetchall() == [(42,)]
        assert any("did not stop cleanly" in n for n in stack.notices)


def test_stack_down_from_another_shell_stops_it(stack_root: Path, tmp_path: Path) -> None:
    proc, _exports = start_cli_up(stack_root, tmp_path / "up.err", _env())
    pids: set[int] = set()
    try:
        pids = pids_of_stack(stack_root)
        down = subprocess.run(
            [sys.executable, "-m", "personalization_dev.cli.stack", "down", "--root", str(stack_root)],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=120,
        )
        assert down.returncode == 0, down.stderr
        assert "Stopped the local stack" in down.stderr
        assert proc.wait(timeout=30) == 0, (tmp_path / "up.err").read_text()
        assert wait_gone(pids) == set()
        assert "Local stack stopped." in (tmp_path / "up.err").read_text()
    finally:
        kill_quietly(pids | {proc.pid})
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()
    again = subprocess.run(
        [sys.executable, "-m", "personalization_dev.cli.stack", "down", "--root", str(stack_root)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert again.returncode == 0 and "No local stack is running" in again.stderr


def test_ctrl_c_stops_the_stack(stack_root: Path, tmp_path: Path) -> None:
    proc, _exports = start_cli_up(stack_root, tmp_path / "up.err", _env())
    pids: set[int] = set()
    try:
        pids = pids_of_stack(stack_root)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, (tmp_path / "up.err").read_text()
        assert wait_gone(pids) == set()
    finally:
        kill_quietly(pids | {proc.pid})
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()


def test_up_with_configured_urls_starts_nothing(stack_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONALIZATION_DATABASE_URL", "postgresql://x@127.0.0.1:1/x")
    result = CliRunner().invoke(app, ["up", "--root", str(stack_root)])
    assert result.exit_code == 0
    assert "PERSONALIZATION_DATABASE_URL" in result.output
    assert "no local stack is started" in result.output
    assert not stack_root.exists()


def test_up_reports_a_taken_port(stack_root: Path, clean_env: None) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = CliRunner().invoke(app, ["up", "--root", str(stack_root), "--kafka-port", str(port)])
    assert result.exit_code == 1
    assert f"port {port} for the Kafka broker is already in use" in result.output
    assert running_owner(stack_root) is None
