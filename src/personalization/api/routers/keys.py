"""API keys and the audit log: ``/v1/keys`` and ``/v1/audit`` (admin, audited)."""

from __future__ import annotations

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field

from personalization.api.auth import require
from personalization.api.deps import platform, settings
from personalization.api.responses import JSONBody
from personalization.security import audit
from personalization.security.authenticator import Principal
from personalization.security.keys import KeyStore

router = APIRouter(tags=["keys"])


class KeyIn(BaseModel):
    """A key to create."""

    name: str = Field(min_length=1, max_length=100)
    scopes: list[str] = Field(min_length=1, max_length=8)


def _keys(request: Request) -> KeyStore:
    return KeyStore(platform(request).db, settings(request))


@router.post("/v1/keys", status_code=201)
async def create_key(body: KeyIn, request: Request, principal: Principal = require("admin")) -> JSONBody:
    """Create an API key; the key is in this response only."""
    store = _keys(request)
    key, info = await store.create(body.name, body.scopes, principal.actor)
    await audit.record(store.db, actor=principal.actor, action="key.create", target=info.key_id,
                       details={"name": info.name, "scopes": list(info.scopes)})
    return JSONBody({"key": key, **info.as_dict()}, status_code=201)


@router.get("/v1/keys")
async def list_keys(request: Request, include_revoked: bool = Query(False), _p: Principal = require("admin")
                    ) -> JSONBody:
    """Every key's id, name, scopes, times (never the key)."""
    return JSONBody([k.as_dict() for k in await _keys(request).list(include_revoked)])


@router.delete("/v1/keys/{key_id}")
async def revoke_key(request: Request, key_id: str = Path(pattern=r"^[0-9a-f]{16}$"),
                     principal: Principal = require("admin")) -> JSONBody:
    """Revoke a key (idempotent); every process refuses it within ``auth_revalidate_s``."""
    store = _keys(request)
    info = await store.revoke(key_id)
    await audit.record(store.db, actor=principal.actor, action="key.revoke", target=info.key_id,
                       details={"name": info.name})
    return JSONBody(info.as_dict())


@router.get("/v1/audit")
async def audit_log(request: Request, action: str | None = Query(None, max_length=64, pattern=r"^[a-z._]+$"),
                    limit: int = Query(100, ge=1, le=1000), _p: Principal = require("admin")) -> JSONBody:
    """The newest audit rows."""
    return JSONBody(await audit.recent(platform(request).db, action, limit))
