"""Data rights: ``GET /v1/users/{user_id}/export``, the erase behind ``DELETE /v1/users/{user_id}?erase=true``
and ``GET /v1/erasures/{erasure_id}``.

The erase is reached through the profile route (:mod:`personalization.api.routers.profiles`
hands over to :func:`erase_user`).  It answers 200 when everything is erased, 202 with the
erasure's id and a ``Location`` while the erasure worker still has parts to complete.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from personalization.api.auth import check_scope, require
from personalization.api.deps import platform, settings
from personalization.api.responses import JSONBody
from personalization.datarights.erase import Eraser
from personalization.datarights.export import Exporter
from personalization.datarights.status import erasure_status
from personalization.errors import NotFound
from personalization.security.authenticator import Principal

router = APIRouter(tags=["data rights"])


async def erase_user(request: Request, user_id: uuid.UUID, principal: Principal) -> JSONBody:
    """``DELETE /v1/users/{user_id}?erase=true``: admin only; 200 when complete, 202 while parts are pending."""
    check_scope(principal, "admin")
    p = platform(request)
    workers = getattr(request.app.state, "workers", None)
    eraser = Eraser(p.db, p.redis, settings(request), wake=workers.wake_erasures if workers is not None else None)
    report = await eraser.erase(user_id, principal.actor)
    body = report.as_dict()
    location = f"/v1/erasures/{report.erasure_id}"
    body["status_url"] = location
    if report.pending:
        return JSONBody(body, status_code=202, headers={"Location": location})
    return JSONBody(body)


@router.get("/v1/erasures/{erasure_id}",
            responses={200: {"description": "The erasure and the state of each part"},
                       404: {"description": "No erasure with this id"}})
async def get_erasure(erasure_id: uuid.UUID, request: Request, principal: Principal = require("admin")) -> Any:
    """One erasure: ``complete`` and each part's state (``postgres``, ``redis``, ``rollups``, ``kafka``) (admin)."""
    status = await erasure_status(platform(request).db, erasure_id)
    if status is None:
        raise NotFound("erasure", "erasure_id", str(erasure_id))
    return JSONBody(status)


@router.get("/v1/users/{user_id}/export",
            responses={200: {"content": {"application/json": {}},
                             "description": "Everything held about the user (one JSON document, streamed)"}})
async def export_user(user_id: uuid.UUID, request: Request, principal: Principal = require("admin")) -> Any:
    """Everything held about the user as one JSON document, streamed (admin)."""
    p = platform(request)
    exporter = Exporter(p.db, p.redis, p.settings.decay.config())
    await exporter.check(user_id)
    return StreamingResponse(
        exporter.stream(user_id, principal.actor),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="user-{user_id}.json"'},
    )
