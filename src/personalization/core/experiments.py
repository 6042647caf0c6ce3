"""Experiments on feature flags: exposures and metric definitions (pure: no I/O).

An *exposure* is the first time a reader was evaluated for a flag within one phase of
its rules: which arm (``on``/``off``, as the flag reports it), why (only ``rollout``
is randomised), under which rules version, and when.  A *metric* says which of the
reader's events count, and how, in ``[first exposure, first exposure + window_days)``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from personalization.core.flags import FLAG_NAME_PATTERN
from personalization.core.privacy import policy_for

Variant = Literal["on", "off"]
Aggregation = Literal["count", "sum_weight", "any"]
METRIC_NAME_PATTERN = FLAG_NAME_PATTERN
MAX_WINDOW_DAYS = 365
# The reason of the evaluation whose assignment is random (the bucket), the only
# exposures an experiment compares; see core.flags.evaluate for the others.
RANDOMISED_REASON = "rollout"

SignalName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^\S+$")]


@dataclass(frozen=True)
class Exposure:
    """One evaluation of a flag for a reader, to be recorded if it is the first of its phase."""

    flag: str
    user_id: uuid.UUID
    variant: Variant
    reason: str
    rules_version: int
    exposed_at: datetime


class ExposureSink(Protocol):
    """Where the read path hands exposures (implemented by experiments.exposures)."""

    async def record(self, exposure: Exposure, *, use_memory: bool = False) -> bool:
        """Return True once the exposure is durable, False if it could not be made so.

        ``use_memory``: an exposure the process recorded recently may be taken as durable
        without a statement (for reads that have no cached value to tell, Redis being down).
        """
        ...


def exposure_time(privacy_level: str | None, at: datetime) -> datetime:
    """The first-exposure time stored for a reader of ``privacy_level``.

    Readers whose level stores no behavioural events (``private``) are still assigned and
    counted, but no precise moment of their use of the app is kept: the time is truncated
    to the start of its UTC day.  Their metric values are 0 whatever the window (no events
    are stored for them), so the truncation changes no result.
    """
    if policy_for(privacy_level).store_events:
        return at
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


class MetricIn(BaseModel):
    """Body of ``PUT /v1/metrics/{name}``."""

    model_config = ConfigDict(extra="forbid")

    signal_types: list[SignalName] = Field(min_length=1, max_length=32)
    content_types: list[SignalName] | None = Field(default=None, min_length=1, max_length=64)
    aggregation: Aggregation = "count"
    window_days: int = Field(default=7, ge=1, le=MAX_WINDOW_DAYS)
    description: Annotated[str, StringConstraints(max_length=1024)] | None = None


class Metric(MetricIn):
    """A stored metric definition."""

    name: str
    created_at: datetime | None = None
    updated_at: datetime | None = None
