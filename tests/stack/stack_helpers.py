"""Process inspection for the local-stack tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from personalization_dev.stack.state import read_state
from personalization_dev.testing.procs import alive, all_pids, cmdline, descendants


def pids_of_stack(root: Path) -> set[int]:
    """Every process that belongs to the stack running from ``root``.

    The servers recorded in the state file, their descendants (PostgreSQL
    backends), and the broker, found by its listener port in the command line.
    """
    state = read_state(root)
    assert state is not None, "no state file"
    found = {ident.pid for ident in state.children.values()}
    kafka = state.urls.get("PERSONALIZATION_KAFKA_BOOTSTRAP_SERVERS", "")
    for pid in all_pids():
        cmd = cmdline(pid)
        if kafka and cmd and "tansu" in cmd[0] and any(kafka in a for a in cmd):
            found.add(pid)
    return found | descendants(*found)


def start_cli_up(root: Path, log: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """Run ``stack up`` in a subprocess and wait for its export lines."""
    with log.open("w") as err:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "personalization_dev.cli.stack", "up", "--root", str(root)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=env,
        )
    assert proc.stdout is not None
    exports: dict[str, str] = {}
    deadline = time.monotonic() + 60
    while len(exports) < 3:
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout=10)
            raise AssertionError(f"stack up exited early:\n{log.read_text()}")
        if line.startswith("export "):
            name, _, value = line[len("export ") :].strip().partition("=")
            exports[name] = value
        assert time.monotonic() < deadline, "stack up did not print its URLs in time"
    return proc, exports


def kill_quietly(pids: set[int]) -> None:
    """Last-resort cleanup so a failed test leaves nothing behind."""
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
