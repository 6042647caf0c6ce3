"""Process-tree inspection for tests of supervisors (``personalization up``, ``stack up``): who runs, who is gone."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from personalization_dev.testing.waiting import WaitTimeout, wait_until

__all__ = ["alive", "all_pids", "cmdline", "descendants", "parent_of", "wait_gone"]


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


def descendants(*roots: int) -> set[int]:
    """Every live descendant of the ``roots`` (children, grandchildren, ...)."""
    out: set[int] = set()
    frontier = set(roots)
    while frontier:
        children = {p for p in all_pids() if parent_of(p) in frontier} - out
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


def wait_gone(pids: set[int], timeout_s: float = 30.0) -> set[int]:
    """Wait until none of ``pids`` runs; returns those still alive at the deadline."""
    with contextlib.suppress(WaitTimeout):  # the caller asserts on what is left, naming it
        wait_until(lambda: not any(alive(p) for p in pids), timeout_s, f"processes {sorted(pids)} to end",
                   interval_s=0.05)
    return {p for p in pids if alive(p)}
