"""Admin routes of the security issue: API keys, the audit log, user export, and the erase handler.

The erase itself is reached through ``DELETE /v1/users/{user_id}?erase=true`` (the profile
route in ``api/app.py`` hands over to :func:`erase_user`).
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from personalization.api.auth import check_scope, require
from personalization.api.responses import JSONBody
from personalization.composition import Platform
from personalization.datarights.erase import EraseIncomplete, Eraser, KafkaTombstones
from personalization.datarights.export import Exporter
from personalization.security import audit
from personalization.security.authenticator import Principal
from personalization.security.keys import KeyStore

router = APIRouter()


class KeyIn(BaseModel):
    """A key to create."""

    name: str = Field(min_length=1, max_length=100)
    scopes: list[str] = Field(min_length=1, max_length=8)


def _platform(request: Request) -> Platform:
    p: Platform = request.app.state.platform
    return p


def _keys(request: Request) -> KeyStore:
    return KeyStore(_platform(request).db, request.app.state.auth_settings)


def _eraser(request: Request) -> Eraser:
    p = _platform(request)
    settings = request.app.state.auth_settings
    tomb: KafkaTombstones | None = getattr(request.app.state, "kafka_tombstones", None)
    if tomb is None and settings.erase.kafka_tombstones:
        # One producer per app: its connection is reused by later erases.
        tomb = request.app.state.kafka_tombstones = KafkaTombstones(settings)
    return Eraser(p.db, p.redis, settings, tombstones=tomb)


async def erase_user(request: Request, user_id: uuid.UUID, principal: Principal) -> JSONBody:
    """``DELETE /v1/users/{user_id}?erase=true``: admin only; 200 with counts, 503 when incomplete."""
    check_scope(principal, "admin")
    try:
        report = await _eraser(request).erase(user_id, principal.actor)
    except EraseIncomplete as exc:
        body = exc.report.as_dict()
        body["detail"] = [{"loc": [], "msg": str(exc) + " (run the erase again)", "type": "unavailable",
                           "field": ""}]
        return JSONBody(body, status_code=503, headers={"Retry-After": "5"})
    return JSONBody(report.as_dict())


@router.get("/v1/users/{user_id}/export", tags=["data rights"],
            responses={200: {"content": {"application/json": {}},
                             "description": "Everything held about the user (one JSON document, streamed)"}})
async def export_user(user_id: uuid.UUID, request: Request, principal: Principal = require("admin")) -> Any:
    """Everything held about the user as one JSON document, streamed (admin)."""
    p = _platform(request)
    exporter = Exporter(p.db, p.redis, p.settings.decay.config())
    await exporter.check(user_id)
    return StreamingResponse(
        exporter.stream(user_id, principal.actor),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="user-{user_id}.json"'},
    )


@router.post("/v1/keys", status_code=201, tags=["keys"])
async def create_key(body: KeyIn, request: Request, principal: Principal = require("admin")) -> JSONBody:
    """Create an API key; the key is in this response only."""
    store = _keys(request)
    key, info = await store.create(body.name, body.scopes, principal.actor)
    await audit.record(store.db, actor=principal.actor, action="key.create", target=info.key_id,
                       details={"name": info.name, "scopes": list(info.scopes)})
    return JSONBody({"key": key, **info.as_dict()}, status_code=201)


@router.get("/v1/keys", tags=["keys"])
async def list_keys(request: Request, include_revoked: bool = Query(False), _p: Principal = require("admin")
                    ) -> JSONBody:
    """Every key's id, name, scopes, times (never the key)."""
    return JSONBody([k.as_dict() for k in await _keys(request).list(include_revoked)])


@router.delete("/v1/keys/{key_id}", tags=["keys"])
async def revoke_key(request: Request, key_id: str = Path(pattern=r"^[0-9a-f]{16}$"),
                     principal: Principal = require("admin")) -> JSONBody:
    """Revoke a key (idempotent); every process refuses it within ``auth_revalidate_s``."""
    store = _keys(request)
    info = await store.revoke(key_id)
    await audit.record(store.db, actor=principal.actor, action="key.revoke", target=info.key_id,
                       details={"name": info.name})
    return JSONBody(info.as_dict())


@router.get("/v1/audit", tags=["keys"])
async def audit_log(request: Request, action: str | None = Query(None, max_length=64, pattern=r"^[a-z._]+$"),
                    limit: int = Query(100, ge=1, le=1000), _p: Principal = require("admin")) -> JSONBody:
    """The newest audit rows."""
    return JSONBody(await audit.recent(_platform(request).db, action, limit))
