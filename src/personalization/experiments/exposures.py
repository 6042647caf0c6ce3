"""Recording first exposures durably without a PostgreSQL round trip per read.

The read path calls :meth:`ExposureRecorder.record` only for a reader it does not know
as exposed: the cached flag value in Redis carries an "exposure durable" mark (see
serving/flags.py), so a steady-state read that hits the cache costs nothing here.  A
first (or re-evaluated) read waits for a *group commit*: every caller that arrives while
the first one waits ``window_ms`` (a few ms, shared) joins one ``INSERT ... ON CONFLICT
DO NOTHING``; the callers are released after the commit, so a read that returned a variant
is acknowledged only once its exposure is in PostgreSQL (a process killed at any moment
loses no acknowledged exposure).  Up to ``concurrency`` groups commit at once.

When PostgreSQL fails the batch is put back at the head of the queue and retried with
back-off; its callers are released with ``False`` (the read is still served and the flag
value is cached without the mark, so the next read of the reader records again).  Closing
drains what is pending, retrying until ``drain_timeout_s``.  An in-process LRU remembers
recent exposures so a process that cannot use Redis does not insert per read (``use_memory``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from prometheus_client import Counter, Histogram

from personalization.core.experiments import Exposure
from personalization.store.experiments import ExperimentStore

log = logging.getLogger(__name__)

EXPOSURES_RECORDED = Counter("personalization_exposures_flushed_total", "Exposures sent to PostgreSQL (first or not)")
EXPOSURE_FLUSH_FAILURES = Counter("personalization_exposure_flush_failures_total", "Failed exposure group commits")
EXPOSURE_FLUSH_SECONDS = Histogram(
    "personalization_exposure_flush_seconds",
    "Duration of one exposure group commit",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
EXPOSURES_LOST = Counter("personalization_exposures_lost_total", "Exposures dropped at shutdown after retries")

_Key = tuple[str, str, int]  # (flag, user id, rules version)


@dataclass
class _Pending:
    exposure: Exposure
    future: asyncio.Future[bool] | None


class _Seen:
    """A bounded LRU of (flag, user, version) known to be durable."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._d: OrderedDict[_Key, None] = OrderedDict()

    def __contains__(self, key: _Key) -> bool:
        if key in self._d:
            self._d.move_to_end(key)
            return True
        return False

    def add(self, key: _Key) -> None:
        if self.size <= 0:
            return
        self._d[key] = None
        self._d.move_to_end(key)
        while len(self._d) > self.size:
            self._d.popitem(last=False)


def _key(e: Exposure) -> _Key:
    return (e.flag, str(e.user_id), e.rules_version)


class ExposureRecorder:
    """Group-commits exposures; ``record`` returns once the exposure is durable."""

    def __init__(
        self,
        store: ExperimentStore,
        *,
        window_ms: float = 2.0,
        max_rows: int = 2000,
        concurrency: int = 2,
        memory_size: int = 100_000,
        retry_max_s: float = 5.0,
        drain_timeout_s: float = 10.0,
    ) -> None:
        self.store = store
        self.window_s = window_ms / 1000.0
        self.max_rows = max_rows
        self.concurrency = concurrency
        self.retry_max_s = retry_max_s
        self.drain_timeout_s = drain_timeout_s
        self._seen = _Seen(memory_size)
        self._pending: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failures = 0

    @property
    def pending(self) -> int:
        """Exposures waiting for their group commit (or its retry)."""
        return len(self._pending)

    async def record(self, exposure: Exposure, *, use_memory: bool = False) -> bool:
        """Queue the exposure and wait for its commit; True if durable, False if PostgreSQL failed.

        With ``use_memory`` an exposure recorded by this process lately returns at once.  It is
        not the default: a reader deleted and re-created under the same id must be recorded
        again, which the cached flag value (its generation) tells and the memory cannot.
        """
        if use_memory and _key(exposure) in self._seen:
            return True
        loop = asyncio.get_running_loop()
        if self._closing:
            # Shutting down: nothing new is accepted into a queue that is being drained.
            return False
        if self._task is None:
            self._task = loop.create_task(self._run(), name="exposure-group-commit")
        fut: asyncio.Future[bool] = loop.create_future()
        self._pending.append(_Pending(exposure, fut))
        self._wakeup.set()
        return await fut

    async def close(self) -> None:
        """Flush everything pending (retrying until ``drain_timeout_s``), then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._pending:
            EXPOSURES_LOST.inc(len(self._pending))
            log.error("%d exposures could not be recorded before shutdown", len(self._pending))
            for p in self._pending:
                if p.future is not None and not p.future.done():
                    p.future.set_result(False)
            self._pending.clear()

    async def _run(self) -> None:
        # Up to ``concurrency`` group commits in flight: while one waits for PostgreSQL's
        # commit, the next group fills and goes, so a first read waits about one window plus
        # one commit, not a queue of them.
        slots = asyncio.Semaphore(self.concurrency)
        inflight: set[asyncio.Task[None]] = set()
        drain_deadline: float | None = None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._closing and drain_deadline is None:
                drain_deadline = time.monotonic() + self.drain_timeout_s
            if not self._pending or (drain_deadline is not None and time.monotonic() >= drain_deadline):
                if self._closing:
                    await asyncio.gather(*inflight, return_exceptions=True)
                    if not self._pending or time.monotonic() >= (drain_deadline or 0.0):
                        return
                    self._wakeup.set()
                continue
            if self.window_s > 0 and len(self._pending) < self.max_rows and not self._closing and not self._failures:
                # Let concurrent first reads join this group.
                deadline = time.monotonic() + self.window_s
                while len(self._pending) < self.max_rows and (left := deadline - time.monotonic()) > 0:
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), left)
            await slots.acquire()
            group = [self._pending.popleft() for _ in range(min(self.max_rows, len(self._pending)))]
            if not group:
                slots.release()
                continue
            task = asyncio.create_task(self._flush_or_requeue(group, drain_deadline))
            inflight.add(task)

            def _done(t: asyncio.Task[None]) -> None:
                inflight.discard(t)
                slots.release()
                self._wakeup.set()

            task.add_done_callback(_done)
            if self._pending:
                self._wakeup.set()

    async def _flush_or_requeue(self, group: list[_Pending], drain_deadline: float | None) -> None:
        if await self._flush(group):
            return
        self._pending.extendleft(reversed(group))
        # The back-off holds the slot, so a failing PostgreSQL is not retried in a spin.
        delay = min(self.retry_max_s, 0.05 * 2 ** min(self._failures, 10))
        if drain_deadline is not None:
            delay = min(delay, max(0.0, drain_deadline - time.monotonic()))
        await asyncio.sleep(delay)

    async def _flush(self, group: list[_Pending]) -> bool:
        started = time.perf_counter()
        # The earliest evaluation of a (flag, user, version) in the group is its exposure.
        first: dict[_Key, Exposure] = {}
        for p in group:
            k = _key(p.exposure)
            seen = first.get(k)
            if seen is None or p.exposure.exposed_at < seen.exposed_at:
                first[k] = p.exposure
        try:
            await self.store.insert_exposures(list(first.values()))
        except Exception as exc:  # every failure is retried; callers hear False
            self._failures += 1
            EXPOSURE_FLUSH_FAILURES.inc()
            log.warning("exposure group commit of %d failed (attempt %d): %s", len(first), self._failures, exc)
            for p in group:
                if p.future is not None and not p.future.done():
                    p.future.set_result(False)
                # Retried without a waiting caller: the read has been answered already.
                p.future = None
            return False
        self._failures = 0
        EXPOSURES_RECORDED.inc(len(first))
        EXPOSURE_FLUSH_SECONDS.observe(time.perf_counter() - started)
        for k in first:
            self._seen.add(k)
        for p in group:
            if p.future is not None and not p.future.done():
                p.future.set_result(True)
        return True
