"""The shared condition wait of the tests: returns what it found, fails naming what it awaited."""

from __future__ import annotations

import asyncio
import threading

import pytest

from personalization_dev.testing.waiting import WaitTimeout, async_wait_until, wait_until


def test_returns_the_first_truthy_value_once_another_thread_sets_it() -> None:
    found: list[int] = []
    ready = threading.Event()

    def produce() -> None:
        ready.wait(5)
        found.append(42)

    thread = threading.Thread(target=produce)
    thread.start()
    ready.set()
    assert wait_until(lambda: found and found[0], 5, "the producer's value") == 42
    thread.join()


def test_timeout_names_what_was_awaited_and_the_last_value() -> None:
    calls: list[int] = []

    def never() -> int:
        calls.append(1)
        return 0

    with pytest.raises(WaitTimeout, match=r"timed out after 0\.1 s waiting for rows in t \(last value: 0\)"):
        wait_until(never, 0.1, lambda: "rows in t", interval_s=0.01)
    assert len(calls) >= 2  # polled, and once more at the deadline


async def test_async_predicates_run_while_the_loop_runs_the_code_under_test() -> None:
    state = {"n": 0}

    async def bump() -> None:
        for _ in range(3):
            await asyncio.sleep(0)  # yields to the waiting test between two steps
            state["n"] += 1

    task = asyncio.create_task(bump())

    async def three() -> bool:
        return state["n"] == 3

    assert await async_wait_until(three, 5, "three steps", interval_s=0.001) is True
    assert await async_wait_until(lambda: state["n"], 5, "a sync predicate") == 3
    await task
    with pytest.raises(WaitTimeout, match="waiting for nothing"):
        await async_wait_until(lambda: None, 0.05, "nothing", interval_s=0.01)
