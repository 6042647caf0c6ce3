"""Validation of ingest request bodies: the fast path for whole valid batches, ``EventIn`` for the rest.

Envelope problems reject the request; per-event problems reject the request when it is
atomic and otherwise come back as :class:`RejectedEvent` with the event's index, so the
valid events of the batch go on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from personalization import metrics
from personalization.config import Settings
from personalization.core.fast_events import ValidEvent, fast_events, from_models
from personalization.core.models import EventIn, InputLimits, check_event_limits
from personalization.errors import FieldError, InvalidInput

__all__ = ["RejectedEvent", "limits_from", "parse_events", "parse_events_json"]

_EVENT = TypeAdapter(EventIn)
_EVENTS = TypeAdapter(list[EventIn])


@dataclass
class RejectedEvent:
    """An event of a batch that was not stored, with why."""

    index: int
    errors: list[FieldError]

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "errors": [e.as_dict() for e in self.errors]}


def _pydantic_errors(errs: Iterable[ErrorDetails], prefix: list[str | int]) -> list[FieldError]:
    return [FieldError(loc=[*prefix, *e["loc"]], msg=e["msg"], type=e["type"]) for e in errs]


def limits_from(settings: Settings) -> InputLimits:
    """The validation limits configured in ``settings``."""
    return InputLimits(
        max_text_length=settings.ingest.max_text_length,
        max_metadata_bytes=settings.ingest.max_metadata_bytes,
        max_future_skew_s=settings.ingest.max_future_skew_s,
        signal_types=settings.signal_types(),
    )


def parse_events(
    payload: Any, *, limits: InputLimits, max_events: int, atomic: bool
) -> tuple[list[ValidEvent], list[RejectedEvent]]:
    """Validate a decoded ``{"events": [...]}`` body.

    Envelope problems (not an object, missing/extra keys, empty or oversized list)
    reject the whole request.  Per-event problems reject the whole request when
    ``atomic``; otherwise they are returned with the event's index and the valid
    events go on.  A batch the fast path accepts as a whole skips ``EventIn``.
    """
    if not isinstance(payload, dict):
        raise InvalidInput([FieldError(["body"], "must be a JSON object with an 'events' list", "type_error")])
    extra = sorted(set(payload) - {"events"})
    if extra:
        raise InvalidInput([FieldError(["body", k], "unknown field", "extra_forbidden") for k in extra])
    raw = payload.get("events")
    if not isinstance(raw, list):
        raise InvalidInput([FieldError(["body", "events"], "must be a list of events", "list_type")])
    if not raw:
        raise InvalidInput([FieldError(["body", "events"], "must contain at least one event", "too_short")])
    if len(raw) > max_events:
        raise InvalidInput(
            [FieldError(["body", "events"], f"{len(raw)} events exceed the batch limit of {max_events}", "too_long")],
            status=413,
        )
    fast = fast_events(raw, limits)
    if fast is not None:
        return fast, []
    return _parse_events_full(raw, limits=limits, atomic=atomic)


def _parse_events_full(
    raw: list[Any], *, limits: InputLimits, atomic: bool
) -> tuple[list[ValidEvent], list[RejectedEvent]]:
    """Validate every event with ``EventIn`` (exact errors for each bad one)."""
    try:
        parsed = _EVENTS.validate_python(raw)
        items: list[tuple[int, EventIn]] = list(enumerate(parsed))
        rejected: list[RejectedEvent] = []
    except ValidationError as exc:
        if atomic:
            raise InvalidInput(_pydantic_errors(exc.errors(include_input=False), ["body", "events"])) from None
        # Item by item, only when something is invalid.
        items, rejected = [], []
        for i, item in enumerate(raw):
            try:
                items.append((i, _EVENT.validate_python(item)))
            except ValidationError as exc_i:
                errs = _pydantic_errors(exc_i.errors(include_input=False), ["body", "events", i])
                rejected.append(RejectedEvent(i, errs))
    bad = check_event_limits([e for _, e in items], limits)
    if bad:
        limit_rejects = [
            RejectedEvent(items[n][0], [FieldError(["body", "events", items[n][0], f], m, t) for f, m, t in errs])
            for n, errs in bad.items()
        ]
        if atomic:
            raise InvalidInput([err for r in limit_rejects for err in r.errors])
        items = [it for n, it in enumerate(items) if n not in bad]
        rejected = sorted([*rejected, *limit_rejects], key=lambda r: r.index)
    if rejected:
        metrics.EVENTS_REJECTED.labels("validation").inc(len(rejected))
    return from_models(items), rejected


def parse_events_json(body: bytes, *, limits: InputLimits, max_events: int, atomic: bool) -> tuple[
    list[ValidEvent], list[RejectedEvent]
]:
    """Decode and validate a raw JSON request body (NaN/Infinity literals are malformed JSON)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput([FieldError(["body"], f"malformed JSON: {exc}", "json_invalid")], status=400) from None
    return parse_events(payload, limits=limits, max_events=max_events, atomic=atomic)
