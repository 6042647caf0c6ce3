"""The stack directory's lock and state file, shared by ``stack up`` and ``stack down``.

The lock is an ``flock`` on ``stack.lock`` held for the whole life of the owning
process.  The kernel drops it when that process dies, however it dies, so a lock
that can be taken means no stack runs, whatever stale files lie around.  The
state file (``stack.json``) records the owner's pid, the URLs, and the identity of
every server it started, so ``stack down`` knows whom to signal and a later run
can recognise leftovers of a crashed one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from personalization_dev.stack._proc import ProcessIdentity, log_event
from personalization_dev.stack.errors import StackError

LOCK_NAME = "stack.lock"
STATE_NAME = "stack.json"


@dataclass
class StackState:
    """What ``stack.json`` holds."""

    pid: int
    started_at: float
    urls: dict[str, str] = field(default_factory=dict)
    children: dict[str, ProcessIdentity] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise for the state file."""
        return json.dumps(
            {
                "pid": self.pid,
                "started_at": self.started_at,
                "urls": self.urls,
                "children": {k: {"pid": v.pid, "start_ticks": v.start_ticks} for k, v in self.children.items()},
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> StackState:
        """Parse a state file; raises ValueError/KeyError/TypeError when malformed."""
        raw: dict[str, Any] = json.loads(text)
        return cls(
            pid=int(raw["pid"]),
            started_at=float(raw["started_at"]),
            urls={str(k): str(v) for k, v in raw.get("urls", {}).items()},
            children={
                str(k): ProcessIdentity(int(v["pid"]), int(v["start_ticks"]))
                for k, v in raw.get("children", {}).items()
            },
        )


def read_state(root: Path) -> StackState | None:
    """The state file's contents, or None if it is absent or unreadable.

    A malformed file (a crash mid-write is impossible since writes are atomic, but a
    hand edit is not) is treated as absent: it only ever guides cleanup.
    """
    try:
        return StackState.from_json((root / STATE_NAME).read_text())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        log_event("stack.state.unreadable", path=root / STATE_NAME, error=exc)
        return None


def write_state(root: Path, state: StackState) -> None:
    """Replace the state file atomically (write a sibling, fsync, rename)."""
    tmp = root / f".{STATE_NAME}.{os.getpid()}.tmp"
    with tmp.open("w") as f:
        f.write(state.to_json())
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(root / STATE_NAME)


def remove_state(root: Path) -> None:
    """Delete the state file (the lock file stays: deleting it would race a new owner)."""
    with contextlib.suppress(FileNotFoundError):
        (root / STATE_NAME).unlink()


class StackLock:
    """Exclusive ownership of one stack directory for the life of this process."""

    def __init__(self, root: Path) -> None:
        """Prepare the lock for ``root``; call ``acquire`` to take it."""
        self.root = root
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise StackError naming the running owner."""
        self.root.mkdir(parents=True, exist_ok=True)
        fh = (self.root / LOCK_NAME).open("a")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            state = read_state(self.root)
            owner = f" (pid {state.pid})" if state is not None else ""
            raise StackError(
                f"a local stack is already running from {self.root}{owner}. Use its URLs, "
                "stop it with `personalization stack down`, or pick another --root"
            ) from None
        self._fh = fh

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fh is not None

    def release(self) -> None:
        """Give the lock up (closing the file releases the flock)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _flock_holder(path: Path) -> int | None:
    """The pid holding an flock on ``path``, from /proc/locks (None if unknown)."""
    try:
        st = path.stat()
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"; "->" marks waiters.
        cols = line.split()
        if len(cols) >= 6 and cols[1] == "FLOCK" and cols[2] != "->" and cols[5] == dev:
            pid = int(cols[4])
            return pid or None  # 0: the holder is outside our pid namespace
    return None


def running_owner(root: Path) -> StackState | None:
    """The state of the stack running from ``root``, or None if none runs.

    Probes the lock without keeping it: if it can be taken, nobody holds it.  The
    owner's pid comes from the kernel's lock table where it can be read, so a state
    file left by a crashed run can never name the process that ``stack down`` signals.
    """
    lock_path = root / LOCK_NAME
    if not lock_path.exists():
        return None
    with lock_path.open("a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _flock_holder(lock_path)
            state = read_state(root)
            if state is None or (holder is not None and state.pid != holder):
                # Held, but the owner has not written its own state yet (it is starting).
                return StackState(pid=0, started_at=0.0)
            return state
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return None


def stop_running_stack(root: Path, *, timeout_s: float = 90.0) -> StackState | None:
    """Ask the stack running from ``root`` to stop, and wait until it has.

    Sends SIGTERM to the owner (``stack up`` turns it into an orderly shutdown) and
    waits for the lock to be released.  Returns the stopped stack's state, or None
    when no stack was running (stale state files are removed in that case).
    """
    deadline = time.monotonic() + timeout_s
    owner = running_owner(root)
    while owner is not None and owner.pid == 0 and time.monotonic() < deadline:
        time.sleep(0.2)  # the owner is still starting; its pid appears shortly
        owner = running_owner(root)
    if owner is None:
        remove_state(root)
        return None
    if owner.pid == 0:
        raise StackError(f"the stack in {root} holds its lock but never wrote its state")
    log_event("stack.down.signal", pid=owner.pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(owner.pid, signal.SIGTERM)
    while time.monotonic() < deadline:
        if running_owner(root) is None:
            return owner
        time.sleep(0.2)
    raise StackError(
        f"the stack (pid {owner.pid}) did not stop within {timeout_s:.0f} s; "
        f"kill it with `kill -9 {owner.pid}`: its servers stop with it"
    )
