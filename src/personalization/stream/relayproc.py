"""Run ``personalization cdc run`` as a child process (tests, benchmark, local stack).

The relay hosts a JVM, which cannot be restarted inside one Python process, and crash
tests need to SIGKILL it, so callers that are not the relay itself run it as a child.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

from personalization.stream.broker import die_with_parent

__all__ = ["RelayProcess", "RelayStartError"]

_STARTED_MARK = "relay started in"


class RelayStartError(RuntimeError):
    """The relay exited or did not start its connector task in time."""


def _pythonpath() -> str:
    # The package's own source root first, so a checkout without an installed package
    # (PYTHONPATH=src) runs the same code in the child.
    import personalization

    root = str(Path(personalization.__file__).resolve().parent.parent)
    existing = os.environ.get("PYTHONPATH")
    return root if not existing else f"{root}{os.pathsep}{existing}"


class RelayProcess:
    """A relay child process configured through ``PERSONALIZATION_*`` variables."""

    def __init__(self, env: Mapping[str, str], *, args: tuple[str, ...] = (), cwd: str | None = None) -> None:
        """``env`` overrides the inherited environment; ``args`` go after ``cdc run``."""
        self._env = {**os.environ, **env, "PYTHONPATH": _pythonpath()}
        self._args = args
        self._cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.started_after_s: float | None = None

    @property
    def cwd(self) -> str | None:
        """The child's working directory (None: inherited)."""
        return self._cwd

    @property
    def pid(self) -> int:
        """The child's process id."""
        assert self._proc is not None
        return self._proc.pid

    def spawn(self) -> None:
        """Start the child without waiting for it."""
        self._log = tempfile.TemporaryFile(prefix="cdc-relay-")  # noqa: SIM115 - closed in close()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "personalization.cli.cdc", "run", *self._args],
            env=self._env,
            cwd=self._cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # The relay must not outlive a test run or benchmark that is killed.
            preexec_fn=die_with_parent,
        )

    def start(self, timeout_s: float = 240.0) -> float:
        """Spawn and wait for the connector task to start; returns the seconds it took."""
        began = time.monotonic()
        self.spawn()
        assert self._proc is not None
        while _STARTED_MARK not in self.output():
            if self._proc.poll() is not None:
                raise RelayStartError(f"relay exited with {self._proc.returncode}:\n{self.output()[-4000:]}")
            if time.monotonic() - began > timeout_s:
                raise RelayStartError(f"relay did not start in {timeout_s} s:\n{self.output()}")
            time.sleep(0.05)
        self.started_after_s = time.monotonic() - began
        return self.started_after_s

    def output(self) -> str:
        """Everything the relay logged so far (stdout and stderr)."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def wait(self, timeout_s: float) -> int:
        """Wait for the child to exit and return its exit code."""
        assert self._proc is not None
        return self._proc.wait(timeout=timeout_s)

    def wait_or_none(self) -> int | None:
        """The exit code if the child has exited, else None."""
        assert self._proc is not None
        return self._proc.poll()

    def kill(self) -> None:
        """SIGKILL the relay (a crash: nothing is flushed or committed)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(timeout=30)

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM and wait for a clean exit (SIGKILL after ``timeout_s``)."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self._proc.returncode

    def close(self) -> None:
        """Stop the child if needed and release the log file."""
        self.stop()
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None

    def __enter__(self) -> RelayProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
