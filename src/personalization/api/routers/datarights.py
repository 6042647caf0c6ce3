"""Data rights: ``GET /v1/users/{user_id}/export`` and the erase behind ``DELETE /v1/users/{user_id}?erase=true``.

The erase is reached through the profile route (:mod:`personalization.api.routers.profiles`
hands over to :func:`erase_user`); an incomplete erase becomes a 503 in :mod:`personalization.api.errors`.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from personalization.api.auth import check_scope, require
from personalization.api.deps import platform, settings
from personalization.api.responses import JSONBody
from personalization.datarights.erase import Eraser, KafkaTombstones
from personalization.datarights.export import Exporter
from personalization.security.authenticator import Principal

router = APIRouter(tags=["data rights"])


def _eraser(request: Request) -> Eraser:
    p = platform(request)
    cfg = settings(request)
    tomb: KafkaTombstones | None = getattr(request.app.state, "kafka_tombstones", None)
    if tomb is None and cfg.erase.kafka_tombstones:
        # One producer per app: its connection is reused by later erases.
        tomb = request.app.state.kafka_tombstones = KafkaTombstones(cfg)
    return Eraser(p.db, p.redis, cfg, tombstones=tomb)


async def erase_user(request: Request, user_id: uuid.UUID, principal: Principal) -> JSONBody:
    """``DELETE /v1/users/{user_id}?erase=true``: admin only; 200 with counts, 503 when incomplete."""
    check_scope(principal, "admin")
    report = await _eraser(request).erase(user_id, principal.actor)
    return JSONBody(report.as_dict())


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
