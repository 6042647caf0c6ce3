"""The demo's one error type."""

from __future__ import annotations


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""
