"""A ``python -m <module> ...`` child process that dies with its parent, output captured.

The CDC relay (a JVM that cannot be restarted inside one Python process), the learner
and the demo's API server run as children of tests, benchmarks and the demo; crash tests
SIGKILL them.  This is the one implementation of starting, watching and stopping them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from personalization_dev.broker import die_with_parent

__all__ = ["ChildExited", "CliChild", "pythonpath"]


class ChildExited(RuntimeError):
    """The child exited (or did not say what was awaited) in time."""


def pythonpath() -> str:
    """PYTHONPATH for a child: the package's own source root first.

    A checkout run without an installed package (PYTHONPATH=src) then runs the same code
    in the child.
    """
    import personalization

    root = str(Path(personalization.__file__).resolve().parent.parent)
    existing = os.environ.get("PYTHONPATH")
    return root if not existing else f"{root}{os.pathsep}{existing}"


class CliChild:
    """``python -m module *args`` with ``env`` over the inherited environment."""

    def __init__(
        self,
        module: str,
        args: Sequence[str],
        env: Mapping[str, str],
        *,
        cwd: str | None = None,
        name: str = "child",
        log_path: Path | None = None,
    ) -> None:
        """The output goes to ``log_path`` when given, else to a temporary file."""
        self.name = name
        self._argv = [sys.executable, "-m", module, *args]
        self._env = {**os.environ, **env, "PYTHONPATH": pythonpath()}
        self._cwd = cwd
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

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
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self._log_path, "w+b")  # noqa: SIM115 - closed in close()
        else:
            self._log = tempfile.TemporaryFile(prefix=f"{self.name}-")  # noqa: SIM115 - closed in close()
        self._proc = subprocess.Popen(
            self._argv,
            env=self._env,
            cwd=self._cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # A child must not outlive a test run, benchmark or demo that is killed.
            preexec_fn=die_with_parent(),
        )

    def output(self) -> str:
        """Everything the child wrote so far (stdout and stderr)."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of the output."""
        return "\n".join(self.output().splitlines()[-lines:])

    def wait_for_output(self, text: str, timeout_s: float = 60.0, error: type[Exception] = ChildExited) -> float:
        """Wait until ``text`` appears in the output; returns the seconds waited."""
        began = time.monotonic()
        while text not in self.output():
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise error(f"{self.name} exited with {self._proc.returncode}:\n{self.output()[-4000:]}")
            if time.monotonic() - began > timeout_s:
                raise error(f"no {text!r} from {self.name} in {timeout_s} s:\n{self.output()[-4000:]}")
            time.sleep(0.05)
        return time.monotonic() - began

    def wait(self, timeout_s: float) -> int:
        """Wait for the child to exit and return its exit code."""
        assert self._proc is not None
        return self._proc.wait(timeout=timeout_s)

    def wait_or_none(self) -> int | None:
        """The exit code if the child has exited, else None."""
        assert self._proc is not None
        return self._proc.poll()

    def kill(self) -> None:
        """SIGKILL (a crash: nothing is flushed or committed)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
            self._proc.wait(timeout=30)

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM and wait for a clean exit (SIGKILL after ``timeout_s``); returns the exit code."""
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
        """Stop the child if needed and release its output file."""
        self.stop()
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
