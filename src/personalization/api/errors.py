"""The API's one error mapping: domain error -> HTTP status and JSON body.

Every error body has the project's shape ``{"detail": [{"loc", "msg", "type", "field"}]}``
where ``field`` is ``loc`` without its ``body``/``path``/``query`` prefix, so a client can
name the offending input.  Internals (SQL, driver messages, tracebacks) are logged here
and never sent.

=====================================  ======  ==============================================
Error                                  Status  Body
=====================================  ======  ==============================================
RequestValidationError (FastAPI)       400     malformed JSON (``json_invalid``)
RequestValidationError (FastAPI)       422     each invalid field
InvalidInput                           its     each FieldError (422, 413 or 409)
NotFound                               404     the path parameter (user_id, trait_id, flag, content_id)
                                               or the body field that missed
Conflict                               409     the conflicting field
AuthError (Unauthorized/Forbidden/...) 401..   the ``authorization`` header
StoreUnavailable                       503     "database unavailable, retry later"
CacheUnavailable                       503     "cache unavailable, retry later", Retry-After
NoPlatform (GET /healthz/platform)     503     no supervisor state: start ``personalization up``
StoreError                             500     "internal database error"
StarletteHTTPException                 its     the exception's detail (unknown route, 405)
any other Exception                    500     "internal error"
=====================================  ======  ==============================================
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import Counter
from starlette.exceptions import HTTPException as StarletteHTTPException

from personalization.api.responses import JSONBody
from personalization.errors import CacheUnavailable, Conflict, InvalidInput, NotFound, StoreError, StoreUnavailable
from personalization.platform.status import NoPlatform
from personalization.security.errors import AuthError

__all__ = ["AUTH_REFUSED", "error_response", "install_error_handlers"]

log = logging.getLogger("personalization.api")
security_log = logging.getLogger("personalization.security")
AUTH_REFUSED = Counter("personalization_auth_refused_total", "Requests refused by the API-key check", ["status"])

# NotFound on these names is about a path parameter; any other name is a body field.
_PATH_FIELDS = ("user_id", "trait_id", "flag", "content_id", "erasure_id")


def error_response(status: int, errors: list[dict[str, Any]], headers: dict[str, str] | None = None) -> JSONBody:
    """The error body for ``errors`` (``field`` filled in from ``loc`` where missing)."""
    for e in errors:
        e.setdefault("field", ".".join(str(p) for p in e.get("loc", []) if p not in ("body", "path", "query")))
    return JSONBody({"detail": errors}, status_code=status, headers=headers)


async def _on_validation(_: Request, exc: RequestValidationError) -> JSONBody:
    errs = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    status = 400 if any(e["type"] == "json_invalid" for e in errs) else 422
    return error_response(status, errs)


async def _on_invalid(_: Request, exc: InvalidInput) -> JSONBody:
    return error_response(exc.status, [e.as_dict() for e in exc.errors])


async def _on_not_found(_: Request, exc: NotFound) -> JSONBody:
    loc: list[Any] = ["body", *exc.field_name.replace("[", ".").replace("]", "").split(".")]
    if exc.field_name in _PATH_FIELDS:
        loc = ["path", exc.field_name]
    return error_response(404, [{"loc": loc, "msg": f"{exc.resource} not found", "type": "not_found"}])


async def _on_conflict(_: Request, exc: Conflict) -> JSONBody:
    return error_response(409, [{"loc": exc.loc, "msg": str(exc), "type": "conflict"}])


async def _on_auth_error(_: Request, exc: AuthError) -> JSONBody:
    AUTH_REFUSED.labels(str(exc.status)).inc()
    item = {"loc": ["header", "authorization"], "msg": str(exc), "type": exc.type, "field": "authorization"}
    return JSONBody({"detail": [item]}, status_code=exc.status, headers=exc.headers)


async def _on_store_down(_: Request, exc: StoreUnavailable) -> JSONBody:
    log.error("database unavailable: %s", exc)
    return error_response(503, [{"loc": [], "msg": "database unavailable, retry later", "type": "unavailable"}])


async def _on_cache_down(_: Request, exc: CacheUnavailable) -> JSONBody:
    # Only where Redis is part of the operation itself (erase deletes the user's keys in
    # its transaction, so nothing was changed); every other path degrades instead.
    log.error("Redis unavailable: %s", exc)
    return error_response(503, [{"loc": [], "msg": "cache unavailable, retry later", "type": "unavailable"}],
                          headers={"Retry-After": "5"})


async def _on_no_platform(_: Request, exc: NoPlatform) -> JSONBody:
    # This server runs without a supervisor (no state in its data directory).
    return error_response(503, [{"loc": [], "msg": str(exc), "type": "unavailable"}])


async def _on_store_error(_: Request, exc: StoreError) -> JSONBody:
    # Logged in full here; the client gets no internals.
    log.error("database error: %s", exc)
    return error_response(500, [{"loc": [], "msg": "internal database error", "type": "internal"}])


async def _on_http(_: Request, exc: StarletteHTTPException) -> JSONBody:
    return error_response(exc.status_code, [{"loc": [], "msg": str(exc.detail), "type": "http_error"}])


async def _on_unexpected(request: Request, exc: Exception) -> JSONBody:
    # Last resort: logged with its traceback here, never sent to the client.
    security_log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, [{"loc": [], "msg": "internal error", "type": "internal", "field": ""}])


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping above on ``app`` (Starlette picks the handler of the closest class)."""
    app.add_exception_handler(RequestValidationError, _on_validation)  # type: ignore[arg-type]
    app.add_exception_handler(InvalidInput, _on_invalid)  # type: ignore[arg-type]
    app.add_exception_handler(NotFound, _on_not_found)  # type: ignore[arg-type]
    app.add_exception_handler(Conflict, _on_conflict)  # type: ignore[arg-type]
    app.add_exception_handler(AuthError, _on_auth_error)  # type: ignore[arg-type]
    app.add_exception_handler(StoreUnavailable, _on_store_down)  # type: ignore[arg-type]
    app.add_exception_handler(CacheUnavailable, _on_cache_down)  # type: ignore[arg-type]
    app.add_exception_handler(NoPlatform, _on_no_platform)  # type: ignore[arg-type]
    app.add_exception_handler(StoreError, _on_store_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _on_http)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _on_unexpected)
