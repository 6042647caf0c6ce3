"""The one exception type the local stack raises for problems an operator can fix."""

from __future__ import annotations

from personalization.errors import PersonalizationError

INSTALL_HINT = "pip install -e '.[all]'"


class StackError(PersonalizationError):
    """A local-stack failure with a message that names the fix.

    Every fault the stack can diagnose (a port in use, a missing package, a full
    disk, a stack already running, stale state it cannot clear safely) surfaces as
    this type so the CLI can print the message alone, without a traceback.
    """
