"""Children that die with their parent: the Linux parent-death signal, armed safely.

Every child process of the project (local stack servers, the Kafka broker, the CDC
relay, the learner and the demo's API) is started with :func:`preexec`, so a
``kill -9`` of the parent never leaves orphans.
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
