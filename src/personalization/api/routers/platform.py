"""``GET /healthz/platform``: the supervisor's components with their state and live lag.

The same document as ``personalization status --json``.  200 when every component is up
under a running supervisor, 503 otherwise (and when this server runs without one: no
state in the data directory, error body in the project's shape).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from personalization.api.errors import error_response
from personalization.api.responses import JSONBody
from personalization.platform.settings import PlatformSettings
from personalization.platform.status import NoPlatform, healthy, platform_status

router = APIRouter(tags=["ops"])


@router.get("/healthz/platform")
async def platform_health() -> JSONBody:
    """Each component: name, state, pid, restarts, url (the API), lag (relay WAL, learner lag, ...)."""
    directory = PlatformSettings().platform_dir.resolve()
    try:
        # The probes are blocking, bounded calls (PostgreSQL, the broker): off the event loop.
        report = await asyncio.to_thread(platform_status, directory)
    except NoPlatform as exc:
        return error_response(503, [{"loc": [], "msg": str(exc), "type": "unavailable"}])
    return JSONBody(report, status_code=200 if healthy(report) else 503)
