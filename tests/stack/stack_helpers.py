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
from personalization_dev.testing.waiting import WaitTimeout, wait_until


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
    return found | descendants(found)


def all_pids() -> list[int]:
    """Pids of every live process."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def cmdline(pid: int) -> list[str]:
    """argv of ``pid`` or [] if gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


def parent_of(pid: int) -> int | None:
    """Parent pid, or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw[raw.rfind(")") + 2 :].split()[1])


def descendants(pids: set[int]) -> set[int]:
    """All live descendants of ``pids``."""
    out: set[int] = set()
    frontier = set(pids)
    while frontier:
        children = {p for p in all_pids() if parent_of(p) in frontier}
        children -= out
        out |= children
        frontier = children
    return out


def alive(pid: int) -> bool:
    """True for a live, non-zombie process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw[raw.rfind(")") + 2] not in "ZX"


def wait_gone(pids: set[int], timeout_s: float = 20.0) -> set[int]:
    """Wait until none of ``pids`` runs; returns those still alive at the deadline."""
    with contextlib.suppress(WaitTimeout):  # the caller asserts on what is left, naming it
        wait_until(lambda: not any(alive(p) for p in pids), timeout_s, f"processes {sorted(pids)} to end",
                   interval_s=0.1)
    return {p for p in pids if alive(p)}


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
