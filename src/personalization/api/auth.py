"""API authentication for FastAPI: ``require(scope)`` and :func:`install_security`.

Every ``/v1`` route declares its scope with ``dependencies=[require("read")]`` (or takes the
principal as a parameter, ``principal: Principal = require("admin")``).  The dependency runs
before the path, query and body are validated, so a caller without a valid key learns
nothing about users (a 401 comes before any 404 or 422).  ``/healthz`` and ``/metrics`` have
no dependency and stay open.

:func:`install_security` adds a header-size guard (431 JSON for oversized headers), the
audit of routes declared with ``require(scope, audit=...)``, and announces development mode
(no keys) at start-up; the 401/403/429 bodies are mapped in :mod:`personalization.api.errors`
with every other error.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from personalization.config import Settings
from personalization.security import audit
from personalization.security.authenticator import DEV_PRINCIPAL, Authenticator, Principal
from personalization.security.errors import Forbidden
from personalization.security.keys import KeyStore

log = logging.getLogger("personalization.security")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Documents the scheme in OpenAPI; the header itself is read by the Authenticator.
_SCHEME = "APIKey"
_bearer = HTTPBearer(auto_error=False, scheme_name=_SCHEME, description="Authorization: Bearer pzk_<id>_<secret>")
_AUDIT_STATE = "pz_audit"


def authenticator_of(request: Request) -> Authenticator:
    """The app's Authenticator, made on first use from the platform's database."""
    app_state = request.app.state
    auth: Authenticator | None = getattr(app_state, "authenticator", None)
    if auth is None:
        settings: Settings = app_state.auth_settings
        auth = Authenticator(KeyStore(app_state.platform.db, settings), settings)
        app_state.authenticator = auth
    return auth


def _dev_mode(request: Request) -> bool:
    return bool(request.app.state.auth_settings.auth.dev_mode)


def require(scope: str | None, *, audit_action: str | None = None) -> Any:
    """A dependency: a valid key (401 otherwise) carrying ``scope`` (403 otherwise).

    ``scope=None`` only authenticates (for routes that pick the scope from the request,
    see :func:`check_scope`).  With ``audit_action``, a successful call of the route is
    written to the audit log (actor, action, route, outcome) after the response.
    """

    async def dependency(
        request: Request, _creds: HTTPAuthorizationCredentials | None = Depends(_bearer)
    ) -> Principal:
        if _dev_mode(request):
            principal = DEV_PRINCIPAL
        else:
            principal = await authenticator_of(request).authenticate(request.headers.get("authorization"), scope)
        request.state.principal = principal
        if audit_action is not None:
            request.scope.setdefault("state", {})[_AUDIT_STATE] = (audit_action, principal.actor)
        return principal

    # Security(..., scopes=) puts the scope into the OpenAPI requirement of the operation.
    return Security(dependency, scopes=[scope] if scope else [])


def check_scope(principal: Principal, scope: str) -> None:
    """Raise Forbidden (403) unless the principal carries ``scope``."""
    if not principal.has(scope):
        raise Forbidden(f"this API key lacks the {scope!r} scope")


class SecurityMiddleware:
    """Pure ASGI: refuses oversized headers (431) and writes the audit rows of audited routes."""

    def __init__(self, app: ASGIApp, max_header_bytes: int) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = sum(len(k) + len(v) + 4 for k, v in scope.get("headers", ()))
        if size > self.max_header_bytes:
            body = orjson.dumps({"detail": [{
                "loc": ["header"], "msg": f"request headers over {self.max_header_bytes} bytes",
                "type": "too_large", "field": "header",
            }]})
            await send({"type": "http.response.start", "status": 431,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        state = scope.setdefault("state", {})
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            pending = state.get(_AUDIT_STATE) if isinstance(state, dict) else None
            if pending is not None:
                await self._audit(scope, pending, status[0])

    async def _audit(self, scope: Scope, pending: tuple[str, str], status: int) -> None:
        action, actor = pending
        route = scope.get("route")
        path = getattr(route, "path", None) or scope.get("path", "")
        target = "/".join(str(v) for v in (scope.get("path_params") or {}).values()) or None
        try:
            platform = scope["app"].state.platform
            await audit.record(platform.db, actor=actor, action=action, target=target,
                               outcome="ok" if status < 400 else f"http_{status}",
                               details={"method": scope.get("method"), "route": path, "status": status})
        except Exception:  # the response is out; never turn an audit failure into a crash
            log.exception("could not write the audit row of %s", action)


def install_security(app: FastAPI, settings: Settings) -> None:
    """Add the security handlers and middleware to ``app``; announce development mode."""

    app.state.auth_settings = settings
    app.add_middleware(SecurityMiddleware, max_header_bytes=settings.http.max_header_bytes)
    if settings.auth.dev_mode:
        msg = ("DEVELOPMENT MODE: API keys are NOT checked; every /v1 route is open "
               "(PERSONALIZATION_AUTH_DEV_MODE=true). Never run this in production.")
        log.warning(msg, extra={"auth_dev_mode": True})
        print(f"WARNING: {msg}", file=sys.stderr, flush=True)


def v1_route_scopes(app: FastAPI) -> dict[tuple[str, str], list[str] | None]:
    """``{(METHOD, path): scopes}`` of every /v1 operation from the OpenAPI document.

    ``None`` marks an operation without the API-key requirement (there should be none);
    ``[]`` an operation that only authenticates and picks its scope per request.
    """
    out: dict[tuple[str, str], list[str] | None] = {}
    for path, ops in app.openapi().get("paths", {}).items():
        if not path.startswith("/v1"):
            continue
        for method, op in ops.items():
            reqs = [r for r in op.get("security", []) if _SCHEME in r]
            out[(method.upper(), path)] = sorted({s for r in reqs for s in r[_SCHEME]}) if reqs else None
    return out


def unprotected_v1_routes(app: FastAPI) -> list[str]:
    """``METHOD path`` of every /v1 operation without a :func:`require` dependency (should be empty)."""
    return [f"{m} {p}" for (m, p), scopes in v1_route_scopes(app).items() if scopes is None]
