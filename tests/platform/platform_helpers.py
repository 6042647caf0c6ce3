"""Running ``personalization up`` as an operator does, in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from personalization_dev.childproc import pythonpath


def cli(*args: str) -> list[str]:
    """``python -m personalization.cli *args`` with this interpreter."""
    return [sys.executable, "-m", "personalization.cli", *args]


def base_env(**extra: str) -> dict[str, str]:
    """The inherited environment without any PERSONALIZATION_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONALIZATION_")}
    env["PYTHONPATH"] = pythonpath()
    # No fixed metrics ports: several test runs share the machine.
    env.update({"PERSONALIZATION_CDC_METRICS_PORT": "0", "PERSONALIZATION_LEARNER_METRICS_PORT": "0"})
    env.update(extra)
    return env


class UpProcess:
    """``personalization up`` with its exports read from stdout and its log in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path) -> None:
        """Start it; call :meth:`wait_exports` next."""
        self.env = env
        self.log = log
        with log.open("wb") as err:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                cli("up", *args), stdout=subprocess.PIPE, stderr=err, env=env, cwd=cwd, text=True
            )

    @property
    def pid(self) -> int:
        """The supervisor's pid."""
        return self.proc.pid

    def wait_exports(self, timeout_s: float) -> dict[str, str]:
        """The ``export`` lines, once ``up`` has printed them (every child started, the API answering)."""
        assert self.proc.stdout is not None
        exports: dict[str, str] = {}
        deadline = time.monotonic() + timeout_s
        while "PERSONALIZATION_API_URL" not in exports:
            # readline blocks; the supervisor prints every line at once when ready.
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait(timeout=30)
                raise AssertionError(f"up exited with {self.proc.returncode}:\n{self.tail()}")
            if line.startswith("export "):
                name, _, value = line[len("export ") :].strip().partition("=")
                exports[name] = value.strip("'")
            assert time.monotonic() < deadline, f"no exports within {timeout_s} s:\n{self.tail()}"
        return exports

    def tail(self, chars: int = 6000) -> str:
        """The end of the supervisor's log."""
        return self.log.read_text(errors="replace")[-chars:]

    def close(self) -> None:
        """Last-resort cleanup (SIGKILL: the children die with it)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def status(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """``personalization status --json``: exit code and document."""
    r = subprocess.run(cli("status", "--json"), env=env, capture_output=True, text=True, timeout=60)
    assert r.stdout, r.stderr
    return r.returncode, json.loads(r.stdout)


def component(report: dict[str, Any], name: str) -> dict[str, Any]:
    """One component of a status document."""
    return next(c for c in report["components"] if c["name"] == name)


def wait_status(env: dict[str, str], check: Any, timeout_s: float, what: str) -> dict[str, Any]:
    """Poll ``status --json`` until ``check(report)`` holds."""
    deadline = time.monotonic() + timeout_s
    while True:
        _code, report = status(env)
        if check(report):
            return report
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s: {json.dumps(report)[:3000]}"
        time.sleep(0.2)
