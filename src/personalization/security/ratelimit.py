"""Per-key rate limit: a token bucket per API key, kept in the process.

Each bucket refills at ``rate`` tokens per second up to ``burst``; a request takes one
token.  The limit holds per process: with ``N`` uvicorn workers a key can reach ``N`` times
the configured rate, so configure ``rate / N`` when a global bound is required.  In-process
buckets cost no round trip, which keeps the limit out of the serving latency budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """Token buckets keyed by API key id."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        """False when the configured rate is 0 (no limit)."""
        return self.rate > 0

    def acquire(self, key: str) -> float | None:
        """Take one token; None when granted, else the seconds until one is available."""
        if not self.enabled:
            return None
        now = self._clock()
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self._max_keys:
                # Bounded memory: a full table restarts every bucket full (errs towards allowing).
                self._buckets.clear()
            b = self._buckets[key] = _Bucket(self.burst, now)
        else:
            b.tokens = min(self.burst, b.tokens + (now - b.updated) * self.rate)
            b.updated = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return None
        return (1.0 - b.tokens) / self.rate


def retry_after_header(wait_s: float) -> str:
    """The Retry-After value (whole seconds, at least 1)."""
    return str(max(1, math.ceil(wait_s)))
