"""``GET /healthz/platform``: the supervisor's components with their state and live lag.

The same document as ``personalization status --json``.  200 when every component is up
under a running supervisor, 503 otherwise (and when this server runs without one: no
state in the data directory: ``NoPlatform``, mapped by :mod:`personalization.api.errors`).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from personalization.api.deps import settings
from personalization.api.responses import JSONBody
from personalization.platform.status import healthy, platform_status

router = APIRouter(tags=["ops"])


@router.get("/healthz/platform")
async def platform_health(request: Request) -> JSONBody:
    """Each component: name, state, pid, restarts, url (the API), lag (relay WAL, learner lag, ...)."""
    cfg = settings(request)
    # The data directory of the app's settings (a child of `up` gets PERSONALIZATION_DATA_DIR).
    directory = cfg.platform.state_dir.resolve()
    # The probes are blocking, bounded calls (PostgreSQL, the broker): off the event loop.
    # No state in the data directory raises NoPlatform: 503 through api.errors.
    report = await asyncio.to_thread(platform_status, directory, cfg)
    return JSONBody(report, status_code=200 if healthy(report) else 503)
