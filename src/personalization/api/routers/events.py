"""``POST /v1/events``: ingest a batch of reader events."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request

from personalization.api.auth import require
from personalization.api.deps import platform, settings
from personalization.api.responses import JSONBody
from personalization.core.models import EventBatch
from personalization.errors import FieldError, InvalidInput

router = APIRouter(tags=["events"])

# The route reads the raw body (pydantic-core parses it in one pass), so its schema is
# declared for OpenAPI by hand from the same model.
_EVENT_BATCH_SCHEMA = EventBatch.model_json_schema(ref_template="#/components/schemas/{model}")


@router.post(
    "/v1/events",
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
        422: {"description": "invalid batch, no event of it valid, or any invalid event with atomic=true"},
    },
)
async def post_events(
    request: Request,
    atomic: bool = Query(False, description="all-or-nothing: any bad event rejects the batch"),
) -> JSONBody:
    """Ingest 1..N events; returns after commit.  The body is parsed by pydantic-core directly."""
    body = await request.body()
    max_bytes = settings(request).http.max_body_bytes
    if len(body) > max_bytes:
        raise InvalidInput([FieldError(["body"], f"request body over {max_bytes} bytes", "too_large")], 413)
    result = await platform(request).ingestor.ingest_json(body, atomic=atomic)
    return JSONBody(result.as_dict())
