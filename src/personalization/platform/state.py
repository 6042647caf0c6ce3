"""The supervisor's state file and lock, read by ``personalization status`` in another shell.

``<data_dir>/platform/state.json`` is replaced atomically (write, fsync, rename) on every
change of a child (start, exit, restart, stop), so a reader never sees half a file.  The
supervisor holds an ``flock`` on ``platform.lock`` for its whole life: the kernel drops it
when the supervisor dies, however it dies, so a lock that can be taken means no supervisor
runs from that directory, whatever a stale state file says.  The file holds the service
URLs the children use (status reads the lag through them), so it is private to its owner.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

STATE_NAME = "state.json"
LOCK_NAME = "platform.lock"

ChildState = Literal["starting", "up", "backoff", "failing", "failed", "stopping", "stopped"]
"""``backoff``: crashed, restarting after a delay; ``failing``: crashed this many times in a
row (still retried); ``failed``: gave up (a configuration error, exit code 2)."""


@dataclass
class ChildRecord:
    """One child as the supervisor last saw it."""

    name: str
    role: str
    state: ChildState
    pid: int | None = None
    restarts: int = 0
    started_at: float | None = None
    last_exit_code: int | None = None
    last_exit_at: float | None = None
    next_start_at: float | None = None
    url: str | None = None
    lag: str = "none"
    detail: dict[str, str] = field(default_factory=dict)
    last_output: list[str] = field(default_factory=list)


@dataclass
class PlatformState:
    """What ``state.json`` holds."""

    pid: int
    started_at: float
    state: Literal["starting", "running", "stopping", "stopped"]
    roles: list[str]
    services: dict[str, str]
    embedded_stack: bool
    api_url: str | None
    children: list[ChildRecord]

    def to_json(self) -> str:
        """Serialise for the state file."""
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> PlatformState:
        """Parse a state file; raises ValueError/KeyError/TypeError when malformed."""
        raw: dict[str, Any] = json.loads(text)
        children = [ChildRecord(**c) for c in raw.pop("children")]
        return cls(children=children, **raw)


def read_state(directory: Path) -> PlatformState | None:
    """The state file of ``directory``, or None when there is none (or it is unreadable)."""
    try:
        return PlatformState.from_json((directory / STATE_NAME).read_text())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        return None


def write_state(directory: Path, state: PlatformState) -> None:
    """Replace the state file atomically; only its owner can read it (it holds the URLs)."""
    tmp = directory / f".{STATE_NAME}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(state.to_json())
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(directory / STATE_NAME)


class AlreadyRunning(RuntimeError):
    """Another supervisor holds the directory's lock."""


class PlatformLock:
    """Exclusive ownership of one platform directory for the life of this process."""

    def __init__(self, directory: Path) -> None:
        """Prepare the lock; ``acquire`` takes it."""
        self.directory = directory
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise AlreadyRunning naming the owner."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fh = (self.directory / LOCK_NAME).open("a")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            state = read_state(self.directory)
            owner = f" (pid {state.pid})" if state is not None else ""
            raise AlreadyRunning(
                f"the platform is already running from {self.directory}{owner}; stop it first "
                "(SIGTERM to that pid) or use another data directory (--data-dir)"
            ) from None
        self._fh = fh

    def release(self) -> None:
        """Give the lock up."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def supervisor_running(directory: Path) -> bool:
    """Whether a supervisor holds the lock of ``directory`` right now."""
    path = directory / LOCK_NAME
    if not path.exists():
        return False
    with path.open("a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        with contextlib.suppress(OSError):
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return False
