"""Input and output models of the public API (pure: no I/O).

Field names are the specification's column names.  Limits that operators may tune
(text length, metadata size, clock skew) arrive through the pydantic validation
context as an :class:`InputLimits`, so one model serves every configuration.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Final
from zoneinfo import available_timezones

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)
from pydantic_core import PydanticCustomError

from personalization.core.privacy import PrivacyLevel
from personalization.core.signals import BUILTIN, UNKNOWN_SIGNAL_TYPE, SignalTypes

# Hard ceilings (the configurable limits can only be lower).
TEXT_CEILING = 1024
# Non-empty, not only white space and free of NUL characters, which PostgreSQL's
# TEXT cannot hold (checked by pydantic-core's regex engine).
TEXT_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"
Text = Annotated[str, StringConstraints(min_length=1, max_length=TEXT_CEILING, pattern=TEXT_PATTERN)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=256)]

# NUMERIC(4,3): at most 4 digits, 3 after the point, so |w| <= 9.999.  One message names
# the whole accepted range (pydantic's digit counts would say "no more than 1 digit before
# the decimal point" for 99); the fast path's WEIGHT_PATTERN accepts the same values.
WEIGHT_MIN: Final = Decimal("-9.999")
WEIGHT_MAX: Final = Decimal("9.999")
WEIGHT_RANGE_MESSAGE: Final = "must be between -9.999 and 9.999 with at most 3 decimal places (NUMERIC(4,3))"
_WEIGHT_STEP: Final = Decimal("0.001")


def _weight_in_range(v: Decimal) -> Decimal:
    # The range first: quantize() of a huge exponent would overflow the context.
    if not WEIGHT_MIN <= v <= WEIGHT_MAX or v.quantize(_WEIGHT_STEP) != v:
        raise PydanticCustomError("signal_weight_range", WEIGHT_RANGE_MESSAGE)
    return v


SignalWeight = Annotated[
    Decimal,
    Field(allow_inf_nan=False, description=f"signal weight: {WEIGHT_RANGE_MESSAGE}",
          json_schema_extra={"minimum": float(WEIGHT_MIN), "maximum": float(WEIGHT_MAX)}),
    AfterValidator(_weight_in_range),
]
# NUMERIC(3,2) constrained to the [0, 1] the API promises.
Confidence = Annotated[Decimal, Field(max_digits=3, decimal_places=2, ge=0, le=1, allow_inf_nan=False)]

_TIMEZONES = frozenset(available_timezones())
_EPOCH_FLOOR = datetime(1970, 1, 2, tzinfo=UTC)


@dataclass(frozen=True)
class InputLimits:
    """Operator-tunable bounds applied during validation."""

    max_text_length: int = 256
    max_metadata_bytes: int = 4096
    max_future_skew_s: float = 300.0
    # Which signal types are accepted (core.signals): the built-in ones unless configured.
    signal_types: SignalTypes = BUILTIN


DEFAULT_LIMITS = InputLimits()


class ProfileFields(BaseModel):
    """The mutable fields of ``user_profile``."""

    model_config = ConfigDict(extra="forbid")

    denomination: ShortText | None = None
    spiritual_goal: ShortText | None = None
    preferred_translation: ShortText | None = None
    timezone: ShortText | None = None
    privacy_level: PrivacyLevel | None = None

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, v: str | None) -> str | None:
        if v is not None and v not in _TIMEZONES:
            raise ValueError("must be an IANA time zone name such as 'America/Chicago'")
        return v


class ProfileIn(ProfileFields):
    """Body of ``PUT /v1/users/{user_id}`` (create or replace)."""


class ProfilePatch(ProfileFields):
    """Body of ``PATCH /v1/users/{user_id}``: only the fields present are changed."""


class Profile(BaseModel):
    """A stored ``user_profile`` row."""

    user_id: uuid.UUID
    created_at: datetime
    updated_at: datetime
    denomination: str | None
    spiritual_goal: str | None
    preferred_translation: str | None
    timezone: str | None
    privacy_level: str | None


class TraitIn(BaseModel):
    """Body of ``POST /v1/users/{id}/traits`` and ``PUT .../traits/{trait_id}``."""

    model_config = ConfigDict(extra="forbid")

    trait_type: ShortText
    trait_value: Any = Field(..., description="Any JSON value")
    confidence: Confidence = Decimal("0.80")
    recorded_at: AwareDatetime | None = None

    @field_validator("trait_value")
    @classmethod
    def _json_value(cls, v: Any) -> Any:
        if v is None:
            raise ValueError("trait_value is required (JSON null is not a trait)")
        try:
            raw = orjson.dumps(v)
        except TypeError as exc:  # pragma: no cover - JSON input is always serialisable
            raise ValueError(f"not JSON: {exc}") from exc
        if len(raw) > 16384:
            raise ValueError("trait_value is larger than 16384 bytes of JSON")
        return v


class Trait(BaseModel):
    """A stored ``user_traits`` row."""

    trait_id: uuid.UUID
    user_id: uuid.UUID
    trait_type: str
    trait_value: Any
    confidence: Decimal
    recorded_at: datetime


class EventIn(BaseModel):
    """One behavioural event (the specification's columns plus a client event id).

    ``client_event_id`` makes a retry idempotent: a replay of the same id within
    48 hours is dropped and reported as a duplicate.  Type checks run inside
    pydantic-core; the operator-tunable limits (text length, metadata size, clock
    skew) are checked for a whole batch at once by :func:`check_event_limits`,
    which is much cheaper than a Python validator per field per event.
    """

    model_config = ConfigDict(extra="forbid")

    client_event_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None
    content_id: Text
    content_type: Text
    signal_type: Text
    signal_weight: SignalWeight
    metadata: dict[str, Any] | None = None
    occurred_at: AwareDatetime

    def metadata_json(self) -> bytes | None:
        """The metadata as compact JSON bytes."""
        return None if self.metadata is None else _dump_metadata(self.metadata)


def check_event_limits(events: list[EventIn], limits: InputLimits) -> dict[int, list[tuple[str, str, str]]]:
    """Apply the configured limits to validated events.

    Returns ``{index: [(field, message, type), ...]}`` for the events that break one.
    """
    bad: dict[int, list[tuple[str, str, str]]] = {}
    text_max = limits.max_text_length
    latest = datetime.now(UTC) + timedelta(seconds=limits.max_future_skew_s)
    meta_max = limits.max_metadata_bytes
    types = limits.signal_types
    for i, e in enumerate(events):
        if not types.accepts(e.signal_type):
            bad.setdefault(i, []).append(("signal_type", types.unknown_message(e.signal_type), UNKNOWN_SIGNAL_TYPE))
        if len(e.content_id) > text_max or len(e.content_type) > text_max or len(e.signal_type) > text_max:
            for name in ("content_id", "content_type", "signal_type"):
                if len(getattr(e, name)) > text_max:
                    bad.setdefault(i, []).append((name, f"longer than {text_max} characters", "string_too_long"))
        if e.occurred_at > latest:
            bad.setdefault(i, []).append(
                ("occurred_at", f"is more than {limits.max_future_skew_s:g} s in the future", "value_error")
            )
        elif e.occurred_at < _EPOCH_FLOOR:
            bad.setdefault(i, []).append(("occurred_at", "is before 1970", "value_error"))
        if e.metadata is not None:
            try:
                dumped = _dump_metadata(e.metadata)
                size = len(dumped)
            except ValueError as exc:
                bad.setdefault(i, []).append(("metadata", str(exc), "value_error"))
                continue
            if size > meta_max:
                bad.setdefault(i, []).append(
                    ("metadata", f"{size} bytes of JSON, over the limit of {meta_max}", "too_large")
                )
            elif has_nul_escape(dumped):
                bad.setdefault(i, []).append(("metadata", NUL_JSON_MESSAGE, "value_error"))
    return bad


NUL_JSON_MESSAGE = "must not contain the NUL character (\\u0000)"
# JSONB cannot hold the NUL character; orjson writes it as ``\u0000``.  The escape
# counts only after an even number of backslashes (``\\u0000`` is the text "\u0000").
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def has_nul_escape(json_text: bytes) -> bool:
    """True if compact JSON from orjson encodes a NUL character."""
    return b"\\u0000" in json_text and _NUL_ESCAPE.search(json_text) is not None


def _dump_metadata(meta: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(meta)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise ValueError(f"metadata is not JSON-serialisable: {exc}") from exc


class EventBatch(BaseModel):
    """Body of ``POST /v1/events``."""

    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(min_length=1)
