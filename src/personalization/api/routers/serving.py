"""The read path: preferences, login pre-warm, flags (and their rules), recent content, rerank."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from personalization.api.auth import require
from personalization.api.deps import platform
from personalization.api.responses import JSONBody
from personalization.core.flags import FlagRulesIn
from personalization.serving.service import RerankIn, ServingService

router = APIRouter(tags=["serving"])
# API key scopes (issue 6): serving reads need "read"; flag rules are "admin" and audited.
_read = [require("read")]


def _svc(request: Request) -> ServingService:
    return platform(request).serving


@router.get("/v1/users/{user_id}/preferences", dependencies=_read)
async def get_preferences(user_id: uuid.UUID, request: Request) -> JSONBody:
    """The preferences snapshot (Redis, or PostgreSQL on a miss, then cached)."""
    prefs = await _svc(request).preferences(user_id)
    return JSONBody(prefs.as_dict())


@router.post("/v1/users/{user_id}/login", dependencies=_read)
async def login(user_id: uuid.UUID, request: Request) -> JSONBody:
    """Pre-warm the user's preferences, embedding and personalization flag in Redis."""
    result = await _svc(request).login(user_id)
    return JSONBody(result.as_dict())


@router.get("/v1/users/{user_id}/flags/{flag}", dependencies=_read)
async def get_user_flag(user_id: uuid.UUID, flag: str, request: Request) -> JSONBody:
    """One flag for one user (cached under ``feature_flag:{flag}:{user_id}``)."""
    result = await _svc(request).flags.get(flag, user_id)
    return JSONBody(result.as_dict())


@router.get("/v1/flags/{flag}", dependencies=[require("admin")])
async def get_flag_rules(flag: str, request: Request) -> JSONBody:
    """The flag's rollout rules."""
    rules = await _svc(request).flags.rules(flag)
    return JSONBody(rules.model_dump(mode="json"))


@router.put("/v1/flags/{flag}", dependencies=[require("admin", audit_action="flag.rules.update")])
async def put_flag_rules(flag: str, body: FlagRulesIn, request: Request) -> JSONBody:
    """Create or replace the flag's rules; every user sees the change on their next read."""
    rules = await _svc(request).flags.put_rules(flag, body)
    return JSONBody(rules.model_dump(mode="json"))


@router.get("/v1/sessions/{session_id}/recent", dependencies=_read)
async def get_recent(session_id: uuid.UUID, request: Request) -> JSONBody:
    """The session's recent content ids, newest first."""
    result = await _svc(request).recent_content(session_id)
    return JSONBody(result.as_dict())


# The rerank body is parsed by pydantic-core straight from the bytes (one pass, no
# intermediate dicts), so its schema is declared for OpenAPI by hand from the model.
_RERANK_SCHEMA = RerankIn.model_json_schema(ref_template="#/components/schemas/{model}")


@router.post(
    "/v1/users/{user_id}/rerank",
    dependencies=_read,
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _RERANK_SCHEMA}}}},
)
async def rerank(user_id: uuid.UUID, request: Request) -> JSONBody:
    """Candidates in the user's order, the session's recent content removed; says which variant served."""
    try:
        body = RerankIn.model_validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(
            [{"loc": ("body", *e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        ) from None
    result = await _svc(request).rerank(user_id, body)
    return JSONBody(result.as_dict())

