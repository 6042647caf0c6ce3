"""The cost of one API-key check on the request path, measured in process.

End-to-end p99 comparisons (``auth_overhead_p99_pct`` of the ingest and serve benchmarks)
are noisy on a shared machine; this gives the check's own cost next to them: the cached
path (SHA-256 of the token, a dict lookup, the rate-limit bucket) with the periodic
revalidation against PostgreSQL included, as it runs in the server.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from personalization.config import Settings
from personalization.security.authenticator import Authenticator
from personalization.security.keys import KeyStore
from personalization.store.db import Database


async def _measure(settings: Settings, key: str, checks: int) -> dict[str, float]:
    db = Database(settings, min_size=1, max_size=2)
    await db.open()
    try:
        auth = Authenticator(KeyStore(db, settings), settings.replace(auth={"rate_limit_per_s": 0}))
        header = f"Bearer {key}"
        await auth.authenticate(header, "ingest")  # first check: the hash and the row read
        samples = []
        for _ in range(checks):
            t = time.perf_counter()
            await auth.authenticate(header, "ingest")
            samples.append((time.perf_counter() - t) * 1e6)
        samples.sort()
        return {
            "auth_check_p50_us": round(statistics.median(samples), 2),
            "auth_check_p99_us": round(samples[min(len(samples) - 1, round(0.99 * (len(samples) - 1)))], 2),
        }
    finally:
        await db.close()


def measure_auth_check(settings: Settings, key: str, checks: int = 20_000) -> dict[str, float]:
    """p50/p99 in microseconds of ``checks`` successive checks of ``key``."""
    return asyncio.run(_measure(settings, key, checks))
