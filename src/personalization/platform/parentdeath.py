"""Children that die with their parent: the Linux parent-death signal, armed safely.

Every child process of the project (the supervisor's components under ``personalization
up``, the API server's worker processes, and in the development tooling the local stack
servers, the Kafka broker, the relay and learner of tests and the demo) is started with
:func:`preexec` or arms itself with :func:`arm_current`, so a ``kill -9`` of the parent
never leaves orphans.  This is the project's one implementation; the development
tooling uses it too.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

# From <linux/prctl.h>; not exposed by the standard library.
_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    # Resolved once in the parent: the child of a fork must not load libraries
    # (dlopen takes locks another thread may have held at fork time).  CDLL(None)
    # is the running program, which has libc's symbols, without asking ldconfig.
    try:
        fn: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None
    return fn


PRCTL = _load_prctl()


def preexec(sig: int, *, required: bool = True) -> Callable[[], None]:
    """A ``preexec_fn`` that arms ``sig`` as the child's parent-death signal.

    Build it in the parent, right before ``Popen`` (it captures the parent's pid).  With
    ``required`` the child refuses to start (exit 126) where the signal cannot be armed.
    """
    parent_pid = os.getpid()
    prctl = PRCTL

    def _arm() -> None:
        if prctl is None or prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            if required:
                os._exit(126)
            return
        # The parent may have died between fork and prctl, in which case the signal
        # will never come: check once by hand.
        if os.getppid() != parent_pid:
            os._exit(126)

    return _arm


def arm_current(sig: int, expected_parent: int | None = None) -> bool:
    """Arm ``sig`` as the parent-death signal of the running process itself.

    For a process that its parent started without :func:`preexec` (the API server's
    worker processes, which uvicorn starts through multiprocessing).  Returns False where
    the signal cannot be armed (not Linux).  When the parent is already gone (the parent
    pid is no longer ``expected_parent``, or the process was re-parented to init), the
    signal will never come, so the process sends it to itself.
    """
    if PRCTL is None or PRCTL(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        return False
    parent = os.getppid()
    if (expected_parent is not None and parent != expected_parent) or parent == 1:
        os.kill(os.getpid(), sig)
    return True
