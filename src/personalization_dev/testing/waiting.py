"""Waiting on a condition in a test, never on the clock.

A test that sleeps "long enough" for another thread, process or server is slow on a fast
machine and flaky on a loaded one.  These helpers poll a predicate that reads the awaited
state itself (rows in PostgreSQL, a consumer offset, a counter, a Redis key, a process
state, a log line) and, when it does not hold in time, fail with a message naming what
was awaited and the last value seen::

    wait_until(lambda: count_rows(db) >= 3, 30, "three rows in personalization_events")
    await async_wait_until(lambda: client.get("/healthz"), 5, "a health answer")

Both return the predicate's first truthy value, so a predicate can hand back what it found.
"""

from __future__ import annotations

import asyncio
import inspect
import reprlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

__all__ = ["WaitTimeout", "async_wait_until", "wait_until"]

T = TypeVar("T")

Describe = str | Callable[[], str]

_short = reprlib.Repr()
_short.maxstring = 200
_short.maxother = 200


class WaitTimeout(AssertionError):
    """An awaited condition did not hold in time.

    An ``AssertionError``: to pytest, a condition that never came is a failed expectation
    of the test, reported as such (not as an error in the test's machinery).
    """


def _failure(describe: Describe, timeout_s: float, last: object) -> WaitTimeout:
    what = describe() if callable(describe) else describe
    return WaitTimeout(f"timed out after {timeout_s:g} s waiting for {what} (last value: {_short.repr(last)})")


def wait_until(
    predicate: Callable[[], T],
    timeout_s: float,
    describe: Describe,
    *,
    interval_s: float = 0.05,
) -> T:
    """Call ``predicate`` until it returns a truthy value, and return that value.

    ``describe`` says what is awaited ("the relay attached to its slot"); a callable is
    evaluated only on failure, so it can report the state at that moment.  The predicate
    is always called at least once, and once more at the deadline.  Raises
    :class:`WaitTimeout` when ``timeout_s`` passes first.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _failure(describe, timeout_s, value)
        # The poll interval: the awaited state changes in another thread, process or server.
        time.sleep(interval_s)


async def async_wait_until(
    predicate: Callable[[], Awaitable[T] | T],
    timeout_s: float,
    describe: Describe,
    *,
    interval_s: float = 0.05,
) -> T:
    """:func:`wait_until` for a test running in an event loop.

    ``predicate`` may be a plain function or return an awaitable (an ``async def``); the
    loop keeps running the code under test between two calls.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        got = predicate()
        value = cast(T, await got) if inspect.isawaitable(got) else got
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _failure(describe, timeout_s, value)
        # The poll interval; the event loop runs the tasks under test meanwhile.
        await asyncio.sleep(interval_s)
