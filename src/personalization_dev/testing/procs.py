"""Process-tree inspection for tests of supervisors (``personalization up``): who runs, who is gone."""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["alive", "descendants", "parent_of", "wait_gone"]


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def parent_of(pid: int) -> int | None:
    """Parent pid, or None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw[raw.rfind(")") + 2 :].split()[1])


def descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (children, grandchildren, ...)."""
    out: set[int] = set()
    frontier = {pid}
    while frontier:
        children = {p for p in _pids() if parent_of(p) in frontier} - out
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
    deadline = time.monotonic() + timeout_s
    left = {p for p in pids if alive(p)}
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = {p for p in left if alive(p)}
    return left
