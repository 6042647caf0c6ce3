"""Operations routes, open (no API key): ``/healthz``, ``/healthz/serving``, ``/healthz/recommendations`` and
``/metrics``.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from personalization.api.deps import platform
from personalization.api.responses import JSONBody

log = logging.getLogger("personalization.api")
router = APIRouter(tags=["ops"])


@router.get("/healthz")
async def healthz(request: Request) -> JSONBody:
    """``ok``, ``degraded`` (Redis down or refusing: reads fall back to PostgreSQL) or ``down`` (503)."""
    p = platform(request)
    db_ok = await p.db.ping()
    # Error replies (out of memory, read-only, ...) count as well as an unreachable Redis.
    cache_error = await p.cache_error()
    status = "ok" if db_ok and cache_error is None else ("degraded" if db_ok else "down")
    if cache_error is not None:
        # The reason stays in the log: this route is open and must not show internals.
        log.warning("health: Redis degraded: %s", cache_error)
    return JSONBody({"status": status, "postgres": db_ok, "redis": cache_error is None},
                    status_code=200 if db_ok else 503)


@router.get("/metrics")
async def metrics_endpoint() -> Response:
    """Prometheus exposition of the process's metrics."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz/serving")
async def serving_health(request: Request) -> JSONBody:
    """Read-path health: ``degraded`` while Redis is unavailable and reads come from PostgreSQL."""
    return JSONBody(platform(request).serving.health())


@router.get("/healthz/recommendations")
async def recommendations_health(request: Request) -> JSONBody:
    """What this process serves with: catalogue size, index kind and memory, model versions."""
    return JSONBody(platform(request).recommender.status())
