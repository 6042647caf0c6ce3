"""Child-process plumbing shared by the local servers.

Every server is launched here so that all of them get the same guarantees:

* a new process group, so a Ctrl-C typed at the terminal reaches only the
  ``stack up`` process, which then stops the servers in order (PostgreSQL must not
  receive SIGINT at the same moment the broker and Redis do);
* a Linux parent-death signal (``prctl(PR_SET_PDEATHSIG)``), so that a ``kill -9``
  of the parent still stops every child: the packages' own start helpers daemonize
  and leave orphans behind, which is why the binaries are launched directly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from personalization.platform import parentdeath
from personalization_dev.stack.errors import StackError

# One logger for the whole package, so a handler on it sees every stack event.
logger = logging.getLogger("personalization_dev.stack")

def log_event(event: str, **fields: object) -> None:
    """Log one structured event: the message is the event name, the fields go in
    ``extra`` (the project's JSON formatter emits them as keys)."""
    extra = {k: v if isinstance(v, int | float | bool) or v is None else str(v) for k, v in fields.items()}
    logger.info(event, extra=extra)


def spawn(
    argv: Sequence[str],
    *,
    log: IO[bytes],
    death_signal: int,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as a child that dies with this process.

    ``death_signal`` is what the child receives when this process (strictly: the
    thread calling ``spawn``) exits; pick the server's "shut down cleanly" signal so
    data is flushed even after a ``kill -9`` of the parent. ``user`` switches to an
    unprivileged account first (Python changes uid before running preexec_fn, and
    the kernel clears the parent-death setting on uid changes, so the order matters
    and is the right one here).
    """
    if parentdeath.PRCTL is None:
        raise StackError("cannot set the Linux parent-death signal (libc prctl not found); the local stack needs Linux")
    group: int | None = None
    extra_groups: list[int] | None = None
    if user is not None:
        # Drop root's primary and supplementary groups too: with only the uid changed
        # the server would keep gid 0, and with it root's group access to files.
        group = pwd.getpwnam(user).pw_gid
        extra_groups = []
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        user=user,
        group=group,
        extra_groups=extra_groups,
        process_group=0,
        preexec_fn=parentdeath.preexec(death_signal),
        close_fds=True,
    )


def stop_process(
    proc: subprocess.Popen[bytes],
    *,
    name: str,
    first_signal: int,
    timeout_s: float,
    escalate: Sequence[tuple[int, float]] = ((signal.SIGKILL, 5.0),),
) -> int | None:
    """Stop a child: ``first_signal``, wait, then each escalation signal in turn."""
    if proc.poll() is not None:
        return proc.returncode
    steps = [(first_signal, timeout_s), *escalate]
    for sig, wait_s in steps:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            code = proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            log_event("stack.child.escalate", server=name, pid=proc.pid, signal=sig)
            continue
        log_event("stack.child.stopped", server=name, pid=proc.pid, code=code)
        return code
    return proc.poll()


@dataclass(frozen=True)
class ProcessIdentity:
    """A pid plus its kernel start time, which together survive pid reuse."""

    pid: int
    start_ticks: int

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        """The identity of a live process, or None if it is gone."""
        ticks = process_start_ticks(pid)
        return None if ticks is None else cls(pid, ticks)

    def alive(self) -> bool:
        """True when this very process (not a reuse of its pid) still runs."""
        return process_start_ticks(self.pid) == self.start_ticks


def process_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time since boot), or None if no such pid."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after it.
    rest = raw[raw.rfind(")") + 2 :].split()
    # rest[0] is field 3 (state); a zombie has exited and counts as gone.
    if rest[0] in ("Z", "X"):
        return None
    return int(rest[19])


def process_cmdline(pid: int) -> list[str]:
    """The argv of a process, or [] if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


def terminate_identity(ident: ProcessIdentity, *, name: str, sig: int, timeout_s: float) -> None:
    """Stop a process we did not spawn in this run (a leftover of a crashed one)."""
    if not ident.alive():
        return
    log_event("stack.stale.stop", server=name, pid=ident.pid, signal=sig)
    with contextlib.suppress(ProcessLookupError):
        os.kill(ident.pid, sig)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not ident.alive():
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(ident.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while ident.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if ident.alive():
        raise StackError(
            f"a {name} process left by an earlier run (pid {ident.pid}) does not stop; "
            f"stop it by hand (kill -9 {ident.pid}) and retry"
        )


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on (or holds) ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR so a port in TIME_WAIT from our own previous run counts as free,
        # matching what the servers themselves do when they bind.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def read_from(path: Path, offset: int) -> str:
    """What a log file gained since ``offset`` (its last 4000 characters)."""
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")[-4000:]
