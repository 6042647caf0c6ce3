"""A private ``redis-server`` for fault tests: started on a spare loopback port, stopped by pid.

The tests of Redis error replies (out of memory, read-only replica, MASTERDOWN, BUSY,
LOADING, cluster redirections) change the server's configuration, so they cannot share
the machine's Redis.  :class:`RedisServer` runs the ``redis-server`` binary found on PATH
with persistence off and the DEBUG command on (LOADING is produced with ``DEBUG RELOAD``),
and :func:`redis_server` is the pytest fixture that stops it in its finaliser.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from personalization_dev.testing.waiting import wait_until

__all__ = ["RedisServer", "free_port", "redis_server"]


def free_port(highest: int = 55_535) -> int:
    """A loopback TCP port nothing listens on right now, as is the port 10,000 above it.

    A cluster node also listens on its port + 10,000 (the cluster bus), so ports stay at
    or under 55,535, and the bus port must be free too.
    """
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(20_000, highest)
        try:
            for p in (port, port + 10_000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free loopback port found")


class RedisServer:
    """One ``redis-server`` child on 127.0.0.1 (optionally a cluster-enabled node)."""

    def __init__(self, root: Path, *, cluster: bool = False) -> None:
        self.root = root
        self.cluster = cluster
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, timeout_s: float = 5.0) -> redis.Redis:
        """A plain synchronous client (the caller closes it)."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout_s)

    def start(self, timeout_s: float = 10.0) -> None:
        """Spawn the server and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        self.port = free_port()
        data = self.root / f"redis-{self.port}"
        data.mkdir(parents=True, exist_ok=True)
        args = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(data), "--save", "",
                "--appendonly", "no", "--enable-debug-command", "yes", "--protected-mode", "no"]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-require-full-coverage", "no"]
        log = (data / "redis.log").open("wb")
        self.proc = proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def answers() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}: "
                                   f"{(data / 'redis.log').read_text()[-500:]}")
            try:
                with contextlib.closing(self.client(timeout_s=0.5)) as c:
                    return bool(c.ping())
            except redis.RedisError:
                return False

        try:
            wait_until(answers, timeout_s, f"redis-server on port {self.port} to answer PING", interval_s=0.02)
        except BaseException:
            self.stop()  # a server that never answered is not left running behind the failure
            raise

    def stop(self) -> None:
        """Terminate the server by its pid (SIGKILL if it does not exit within 5 s); idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private, started ``redis-server`` (stopped by pid when the test ends)."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
