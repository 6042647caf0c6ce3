"""HTTP API (FastAPI).  Thin: parse, call a use case, map errors to status codes."""

from __future__ import annotations

import contextlib
import gc
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from personalization.api import recommend_routes, security_routes, serving_routes
from personalization.api.auth import check_scope, install_security, require
from personalization.api.middleware import BodyLimitMiddleware
from personalization.api.responses import JSONBody
from personalization.composition import Platform, open_platform
from personalization.config import Settings, get_settings
from personalization.core.models import EventBatch, Profile, ProfileIn, ProfilePatch, Trait, TraitIn
from personalization.errors import Conflict, FieldError, InvalidInput, NotFound, StoreError, StoreUnavailable
from personalization.security.authenticator import Principal

log = logging.getLogger("personalization.api")


def _error(status: int, errors: list[dict[str, Any]]) -> JSONBody:
    for e in errors:
        e.setdefault("field", ".".join(str(p) for p in e.get("loc", []) if p not in ("body", "path", "query")))
    return JSONBody({"detail": errors}, status_code=status)


# The events route reads the raw body (pydantic-core parses it in one pass), so
# its schema is declared for OpenAPI by hand from the same model.
_EVENT_BATCH_SCHEMA = EventBatch.model_json_schema(ref_template="#/components/schemas/{model}")


# Allocations between two young-generation collections of the API server (default 700).
_GC_YOUNG_THRESHOLD = 20_000


def create_app(settings: Settings | None = None, platform: Platform | None = None) -> FastAPI:
    """Build the application; it opens its own Platform unless one is given."""
    cfg = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if platform is not None:
            app.state.platform = platform
            yield
            return
        async with open_platform(cfg) as p:
            app.state.platform = p
            if cfg.http_gc_tuning:
                # Everything made so far lives as long as the server: a full collection
                # would walk it all again and again.  Frozen objects are skipped (and never
                # freed, nor meant to be).  A request of 500 events keeps a few thousand
                # containers alive until its commit, which a young collection every 700
                # allocations (the default) walks and promotes several times over.
                gc.collect()
                gc.freeze()
                gc.set_threshold(_GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
            yield

    app = FastAPI(
        title="personalization",
        version="0.1.0",
        lifespan=lifespan,
        description="Signals, profiles and serving for a Bible and devotional app.",
    )

    if platform is not None:
        app.state.platform = platform
    app.add_middleware(BodyLimitMiddleware, max_bytes=cfg.max_body_bytes)
    # API keys on every /v1 route (issue 6): handlers, header guard, audit, dev-mode notice.
    install_security(app, cfg)

    def plat(request: Request) -> Platform:
        p: Platform = request.app.state.platform
        return p

    @app.exception_handler(RequestValidationError)
    async def on_validation(_: Request, exc: RequestValidationError) -> JSONBody:
        errs = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        status = 400 if any(e["type"] == "json_invalid" for e in errs) else 422
        return _error(status, errs)

    @app.exception_handler(InvalidInput)
    async def on_invalid(_: Request, exc: InvalidInput) -> JSONBody:
        return _error(exc.status, [e.as_dict() for e in exc.errors])

    @app.exception_handler(NotFound)
    async def on_not_found(_: Request, exc: NotFound) -> JSONBody:
        loc: list[Any] = ["body", *exc.field_name.replace("[", ".").replace("]", "").split(".")]
        if exc.field_name in ("user_id", "trait_id", "flag"):
            loc = ["path", exc.field_name]
        return _error(404, [{"loc": loc, "msg": f"{exc.resource} not found", "type": "not_found"}])

    @app.exception_handler(Conflict)
    async def on_conflict(_: Request, exc: Conflict) -> JSONBody:
        return _error(409, [{"loc": exc.loc, "msg": str(exc), "type": "conflict"}])

    @app.exception_handler(StoreUnavailable)
    async def on_store_down(_: Request, exc: StoreUnavailable) -> JSONBody:
        log.error("database unavailable: %s", exc)
        return _error(503, [{"loc": [], "msg": "database unavailable, retry later", "type": "unavailable"}])

    @app.exception_handler(StoreError)
    async def on_store_error(_: Request, exc: StoreError) -> JSONBody:
        # Logged in full here; the client gets no internals.
        log.error("database error: %s", exc)
        return _error(500, [{"loc": [], "msg": "internal database error", "type": "internal"}])

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_: Request, exc: StarletteHTTPException) -> JSONBody:
        return _error(exc.status_code, [{"loc": [], "msg": str(exc.detail), "type": "http_error"}])

    @app.get("/healthz", tags=["ops"])
    async def healthz(request: Request) -> JSONBody:
        p = plat(request)
        db_ok = await p.db.ping()
        cache_ok = await p.cache_ok()
        status = "ok" if db_ok and cache_ok else ("degraded" if db_ok else "down")
        return JSONBody(
            {"status": status, "postgres": db_ok, "redis": cache_ok}, status_code=200 if db_ok else 503
        )

    @app.get("/metrics", tags=["ops"])
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # Scopes of the /v1 routes (issue 6); the dependency runs before path and body validation.
    can_read, can_write = [require("read")], [require("profile:write")]

    # ---- profiles -------------------------------------------------------
    @app.put("/v1/users/{user_id}", response_model=Profile, tags=["profiles"], dependencies=can_write)
    async def put_user(user_id: uuid.UUID, body: ProfileIn, request: Request, response: Response) -> Profile:
        profile, created = await plat(request).profiles.upsert(user_id, body)
        response.status_code = 201 if created else 200
        return profile

    @app.get("/v1/users/{user_id}", response_model=Profile, tags=["profiles"], dependencies=can_read)
    async def get_user(user_id: uuid.UUID, request: Request) -> Profile:
        return await plat(request).profiles.get(user_id)

    @app.patch("/v1/users/{user_id}", response_model=Profile, tags=["profiles"], dependencies=can_write)
    async def patch_user(user_id: uuid.UUID, body: ProfilePatch, request: Request) -> Profile:
        return await plat(request).profiles.patch(user_id, body)

    @app.delete("/v1/users/{user_id}", status_code=204, tags=["profiles"])
    async def delete_user(
        user_id: uuid.UUID,
        request: Request,
        erase: bool = Query(False, description="erase the user everywhere (admin scope); 200 with counts"),
        principal: Principal = require(None),
    ) -> Response:
        if erase:
            return await security_routes.erase_user(request, user_id, principal)
        check_scope(principal, "profile:write")
        await plat(request).profiles.delete(user_id)
        return Response(status_code=204)

    # ---- traits ---------------------------------------------------------
    @app.get("/v1/users/{user_id}/traits", response_model=list[Trait], tags=["traits"], dependencies=can_read)
    async def list_traits(user_id: uuid.UUID, request: Request) -> list[Trait]:
        return await plat(request).profiles.list_traits(user_id)

    @app.post(
        "/v1/users/{user_id}/traits", response_model=Trait, status_code=201, tags=["traits"], dependencies=can_write
    )
    async def add_trait(user_id: uuid.UUID, body: TraitIn, request: Request) -> Trait:
        return await plat(request).profiles.add_trait(user_id, body)

    @app.put("/v1/users/{user_id}/traits/{trait_id}", response_model=Trait, tags=["traits"], dependencies=can_write)
    async def put_trait(
        user_id: uuid.UUID, trait_id: uuid.UUID, body: TraitIn, request: Request, response: Response
    ) -> Trait:
        trait, created = await plat(request).profiles.replace_trait(user_id, trait_id, body)
        response.status_code = 201 if created else 200
        return trait

    @app.delete("/v1/users/{user_id}/traits/{trait_id}", status_code=204, tags=["traits"], dependencies=can_write)
    async def delete_trait(user_id: uuid.UUID, trait_id: uuid.UUID, request: Request) -> Response:
        await plat(request).profiles.delete_trait(user_id, trait_id)
        return Response(status_code=204)

    # ---- events ---------------------------------------------------------
    @app.post(
        "/v1/events",
        tags=["events"],
        dependencies=[require("ingest")],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _EVENT_BATCH_SCHEMA}},
            }
        },
        responses={
            200: {"description": "Per-event outcome: accepted count, duplicates, suppressed, rejected"},
            404: {"description": "atomic=true and an event names an unknown user"},
            413: {"description": "body or batch over its limit"},
            422: {"description": "invalid batch (or any invalid event with atomic=true)"},
        },
    )
    async def post_events(
        request: Request,
        atomic: bool = Query(False, description="all-or-nothing: any bad event rejects the batch"),
    ) -> JSONBody:
        """Ingest 1..N events; returns after commit.  The body is parsed by pydantic-core directly."""
        body = await request.body()
        if len(body) > cfg.max_body_bytes:
            too_large = FieldError(["body"], f"request body over {cfg.max_body_bytes} bytes", "too_large")
            raise InvalidInput([too_large], 413)
        result = await plat(request).ingestor.ingest_json(body, atomic=atomic)
        return JSONBody(result.as_dict())

    # ---- read path (preferences, login, flags, recent, rerank) -------------
    app.include_router(serving_routes.router)
    app.include_router(serving_routes.ops_router)
    app.include_router(security_routes.router)
    app.include_router(recommend_routes.router)
    app.include_router(recommend_routes.ops_router)

    return app
