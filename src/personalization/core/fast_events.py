"""The ingest fast path: validated events as canonical strings, not Python objects.

:class:`~personalization.core.models.EventIn` turns every event into UUID, Decimal
and datetime objects, and the write path then turns them back into text for
PostgreSQL and Redis.  Here a batch is checked by one pydantic-core call against a
schema that is a strict *subset* of ``EventIn`` plus the configured limits, and
each event comes out as one flat tuple of the canonical strings PostgreSQL parses
(:data:`ValidEvent`).  Whatever the fast schema does not accept (a non-canonical
UUID spelling, a Decimal with trailing zeros, a datetime object, any invalid
input) goes to the full ``EventIn`` validation instead, which gives the same
tuples for valid events and the exact per-field errors for invalid ones.  So the
fast path never decides that something is invalid, and never accepts what the
full validation would reject.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, Final

import orjson
from pydantic_core import CoreSchema, SchemaValidator, ValidationError
from pydantic_core import core_schema as cs

from personalization.core.models import TEXT_CEILING, EventIn, InputLimits, has_nul_escape

# One validated event:
# (index in its batch, client_event_id, user_id, session_id, content_id, content_type,
#  signal_type, signal_weight, metadata, occurred_at, occurred_at as epoch seconds, clean)
# UUIDs are canonical lowercase text, signal_weight a decimal literal with at most
# 3 places, metadata compact JSON (or None), occurred_at an ISO 8601 timestamp with an
# explicit offset.  ``clean`` is True when the three free-text fields are plain: no
# backslash, tab, newline or carriage return (the store then writes them unescaped).
ValidEvent = tuple[int, str | None, str | None, str | None, str, str, str, str, str | None, str, float, bool]

# Positions in a ValidEvent.
IDX: Final = 0
CLIENT_ID: Final = 1
USER_ID: Final = 2
SESSION_ID: Final = 3
CONTENT_ID: Final = 4
CONTENT_TYPE: Final = 5
SIGNAL_TYPE: Final = 6
WEIGHT: Final = 7
METADATA: Final = 8
OCCURRED_AT: Final = 9
TS: Final = 10
CLEAN: Final = 11

UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
# Non-empty, not only white space, and none of NUL, tab, newline, carriage return
# or backslash (the full validation accepts all but NUL; COPY would need escapes).
PLAIN_TEXT_PATTERN = r"^[^\x00\t\n\r\\]*[^\s\x00\\][^\x00\t\n\r\\]*$"
# NUMERIC(4,3): one integer digit, at most three places.  JSON numbers arrive as the
# shortest text of their double (as the full validation sees them: 0.5, not 0.50).
WEIGHT_PATTERN = r"^-?[0-9](?:\.[0-9]{1,3})?$"
# RFC 3339 with an explicit offset; the calendar is checked by datetime.fromisoformat.
# PostgreSQL refuses offsets of 16 hours or more (Python allows up to 23:59), so those
# take the full path, which writes UTC.
TIMESTAMP_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
    r"(?:Z|[+-](?:0[0-9]|1[0-5]):[0-5][0-9])$"
)
# 1970-01-02T00:00:00Z, the earliest occurred_at the full validation accepts.
EPOCH_FLOOR_S = 86400.0

_FIELDS = itemgetter(
    "client_event_id", "user_id", "session_id", "content_id", "content_type", "signal_type",
    "signal_weight", "metadata", "occurred_at",
)


def _batch_schema(text_max: int) -> CoreSchema:
    uuid_or_null = cs.with_default_schema(
        cs.nullable_schema(cs.str_schema(pattern=UUID_PATTERN, strict=True)), default=None
    )
    text = cs.str_schema(min_length=1, max_length=text_max, pattern=PLAIN_TEXT_PATTERN, strict=True)
    weight = cs.str_schema(pattern=WEIGHT_PATTERN, coerce_numbers_to_str=True)
    metadata = cs.with_default_schema(
        cs.nullable_schema(cs.dict_schema(cs.str_schema(strict=True), cs.any_schema(), strict=True)), default=None
    )
    event = cs.typed_dict_schema(
        {
            "client_event_id": cs.typed_dict_field(uuid_or_null, required=False),
            "user_id": cs.typed_dict_field(uuid_or_null, required=False),
            "session_id": cs.typed_dict_field(uuid_or_null, required=False),
            "content_id": cs.typed_dict_field(text),
            "content_type": cs.typed_dict_field(text),
            "signal_type": cs.typed_dict_field(text),
            "signal_weight": cs.typed_dict_field(weight),
            "metadata": cs.typed_dict_field(metadata, required=False),
            "occurred_at": cs.typed_dict_field(cs.str_schema(pattern=TIMESTAMP_PATTERN, strict=True)),
        },
        extra_behavior="forbid",
        strict=True,
    )
    return cs.list_schema(event, min_length=1, strict=True)


@functools.lru_cache(maxsize=8)
def _validator(text_max: int) -> SchemaValidator:
    return SchemaValidator(_batch_schema(text_max))


def fast_events(raw: Any, limits: InputLimits, *, now: float | None = None) -> list[ValidEvent] | None:
    """The events of a decoded ``events`` list, or None if the full validation must decide.

    ``raw`` is what a JSON decoder gives (lists, dicts, str, int, float).  None means
    only "not on the fast path": the event list may still be valid.
    """
    try:
        events: list[dict[str, Any]] = _validator(min(limits.max_text_length, TEXT_CEILING)).validate_python(raw)
    except ValidationError:
        return None
    latest = (datetime.now(UTC).timestamp() if now is None else now) + limits.max_future_skew_s
    meta_max = limits.max_metadata_bytes
    # An unknown signal type goes to the full validation, which names the known ones.
    known = None if limits.signal_types.open else limits.signal_types.known
    dumps = orjson.dumps
    parse_ts = datetime.fromisoformat
    fields = _FIELDS
    out: list[ValidEvent] = []
    append = out.append
    try:
        for i, d in enumerate(events):
            cid, uid, sid, content, ctype, stype, weight, meta, occurred = fields(d)
            if known is not None and stype not in known:
                return None
            if meta is not None:
                dumped = dumps(meta)
                if len(dumped) > meta_max or has_nul_escape(dumped):
                    return None
                meta = dumped.decode()
            ts = parse_ts(occurred).timestamp()
            if not EPOCH_FLOOR_S <= ts <= latest:
                return None
            append((i, cid, uid, sid, content, ctype, stype, weight, meta, occurred, ts, True))
    except (ValueError, TypeError, orjson.JSONEncodeError):  # a calendar error, unserialisable metadata
        return None
    return out


def _plain(*texts: str) -> bool:
    return not any("\\" in t or "\t" in t or "\n" in t or "\r" in t for t in texts)


def from_model(i: int, e: EventIn) -> ValidEvent:
    """The tuple of an event that passed the full validation and the limits."""
    meta_json = e.metadata_json()
    meta = None if meta_json is None else meta_json.decode()
    return (
        i,
        None if e.client_event_id is None else str(e.client_event_id),
        None if e.user_id is None else str(e.user_id),
        None if e.session_id is None else str(e.session_id),
        e.content_id,
        e.content_type,
        e.signal_type,
        format(e.signal_weight, "f"),
        meta,
        e.occurred_at.astimezone(UTC).isoformat(),  # any offset Python accepts, as PostgreSQL accepts it
        e.occurred_at.timestamp(),
        _plain(e.content_id, e.content_type, e.signal_type),
    )


def from_models(items: Iterable[tuple[int, EventIn]]) -> list[ValidEvent]:
    """:func:`from_model` for every (index, event)."""
    return [from_model(i, e) for i, e in items]
