"""Helpers of the security tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

MakeKey = Callable[..., Awaitable[str]]
