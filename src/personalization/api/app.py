"""HTTP API (FastAPI).  Thin: the routers parse and call a use case; ``api/errors.py`` maps errors."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI

from personalization.api.auth import install_security
from personalization.api.errors import install_error_handlers
from personalization.api.middleware import BodyLimitMiddleware
from personalization.api.routers import datarights, events, experiments, keys, ops, profiles, recommend, serving
from personalization.api.routers import platform as platform_health
from personalization.composition import Platform, open_platform
from personalization.config import Settings, get_settings
from personalization.workers import background_workers

log = logging.getLogger("personalization.api")

# Allocations between two young-generation collections of the API server (default 700).
_GC_YOUNG_THRESHOLD = 20_000


def _tune_gc() -> None:
    # Everything made so far lives as long as the server: a full collection would walk it
    # all again and again.  Frozen objects are skipped (and never freed, nor meant to be).
    # A request of 500 events keeps a few thousand containers alive until its commit,
    # which a young collection every 700 allocations (the default) walks and promotes
    # several times over.
    gc.collect()
    gc.freeze()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def create_app(settings: Settings | None = None, platform: Platform | None = None) -> FastAPI:
    """Build the application; it opens its own Platform unless one is given."""
    cfg = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if platform is not None:
            app.state.platform = platform
            yield
            return
        async with open_platform(cfg) as p, contextlib.AsyncExitStack() as stack:
            app.state.platform = p
            if cfg.workers.background:
                # The outbox workers (erase completion, invalidation replay) in every API process.
                app.state.workers = await stack.enter_async_context(background_workers(p))
            if cfg.http.gc_tuning:
                _tune_gc()
            yield

    app = FastAPI(
        title="personalization",
        version="0.1.0",
        lifespan=lifespan,
        description="Signals, profiles and serving for a Bible and devotional app.",
    )
    if platform is not None:
        app.state.platform = platform
    app.add_middleware(BodyLimitMiddleware, max_bytes=cfg.http.max_body_bytes)
    # API keys on every /v1 route: scope dependencies, header guard, audit, dev-mode notice.
    install_security(app, cfg)
    install_error_handlers(app)
    for router in (
        ops.router,
        platform_health.router,
        profiles.router,
        events.router,
        serving.router,
        datarights.router,
        keys.router,
        experiments.router,
        recommend.router,
    ):
        app.include_router(router)
    return app
