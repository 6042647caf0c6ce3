"""HTTP routes of recommendations (issue 16), all behind the ``read`` scope.  Thin: parse, call, render.

``/healthz/recommendations`` is in :mod:`personalization.api.routers.ops`; errors are mapped in
``api/errors.py`` (an unknown ``content_id`` is a 404 naming the path parameter).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from personalization.api.auth import require
from personalization.api.deps import platform
from personalization.api.responses import JSONBody
from personalization.recommend.service import MAX_LIMIT, MAX_WINDOW_DAYS, Recommender

router = APIRouter(tags=["recommendations"], dependencies=[require("read")])

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="items to return")]
ContentType = Annotated[str | None, Query(min_length=1, max_length=64, description="only this content type")]
_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown user or content"},
    422: {"description": "invalid parameter"},
}


def _rec(request: Request) -> Recommender:
    return platform(request).recommender


@router.get("/v1/users/{user_id}/recommendations", responses=_RESPONSES)
async def user_recommendations(
    user_id: uuid.UUID,
    request: Request,
    limit: Limit = 10,
    session_id: Annotated[uuid.UUID | None, Query(description="exclude this session's recent content")] = None,
    content_type: ContentType = None,
    allow_repeats: Annotated[bool, Query(description="also recommend what the reader already consumed")] = False,
) -> JSONBody:
    """What this reader should see next: ``items`` with ``reasons`` naming the sources; ``variant`` says
    whether the list is personalized (privacy level and the ``personalization`` flag)."""
    result = await _rec(request).for_user(user_id, limit, session_id=session_id, content_type=content_type,
                                          allow_repeats=allow_repeats)
    return JSONBody(result.as_dict())


@router.get("/v1/sessions/{session_id}/recommendations", responses=_RESPONSES)
async def session_recommendations(
    session_id: uuid.UUID, request: Request, limit: Limit = 10, content_type: ContentType = None
) -> JSONBody:
    """For an anonymous reader, from the session's recent content."""
    result = await _rec(request).for_session(session_id, limit, content_type=content_type)
    return JSONBody(result.as_dict())


@router.get("/v1/content/popular", responses=_RESPONSES)
async def popular(
    request: Request,
    limit: Limit = 10,
    content_type: ContentType = None,
    window_days: Annotated[int | None, Query(ge=1, le=MAX_WINDOW_DAYS, description="engagement window")] = None,
) -> JSONBody:
    """Time-decayed engagement of every reader."""
    result = await _rec(request).popular(limit, content_type=content_type, window_days=window_days)
    return JSONBody(result.as_dict())


@router.get("/v1/content/{content_id}/similar", responses=_RESPONSES)
async def similar(
    request: Request,
    content_id: Annotated[str, Path(min_length=1, max_length=256)],
    limit: Limit = 10,
) -> JSONBody:
    """Content like this one (co-engagement and embeddings); never itself nor another translation of it."""
    result = await _rec(request).similar(content_id, limit)
    return JSONBody(result.as_dict())

