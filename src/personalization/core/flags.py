"""Feature flag rules and their evaluation (pure: no I/O).

Evaluation order, first match wins:

1. ``enabled`` is false: off for everyone (kill switch; overrides do not beat it).
2. A per-user override: its value.
3. Targeting: every condition must hold (AND); a user who fails one is off.
4. Percentage rollout: the user's bucket (0..9999) is below ``rollout_percent * 100``.

Bucketing is deterministic: SHA-256 of ``"{salt}:{user_id}"`` (salt defaults to the
flag name; the canonical lower-case hyphenated UUID), the first 8 bytes read
big-endian, modulo 10 000.  It depends on nothing but those strings, so every
process, restart and language that follows the rule puts a user in the same bucket,
and raising the percentage only ever adds users.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

BUCKETS = 10_000
FLAG_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
FlagName = Annotated[str, StringConstraints(pattern=FLAG_NAME_PATTERN)]

# Profile columns a condition may name; traits are named ``trait.<trait_type>``.
PROFILE_ATTRIBUTES = frozenset({"denomination", "spiritual_goal", "preferred_translation", "timezone", "privacy_level"})
TRAIT_PREFIX = "trait."
MAX_OVERRIDES = 10_000

Scalar = str | int | float | bool


def bucket(salt: str, user_id: uuid.UUID) -> int:
    """The user's bucket in ``[0, BUCKETS)`` for a salt (stable across processes)."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


class Condition(BaseModel):
    """One targeting condition: the attribute's value is (or is not) one of ``values``."""

    model_config = ConfigDict(extra="forbid")

    attribute: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    op: Literal["in", "not_in"] = "in"
    values: list[Scalar] = Field(min_length=1, max_length=1000)

    @field_validator("attribute")
    @classmethod
    def _known_attribute(cls, v: str) -> str:
        if v in PROFILE_ATTRIBUTES:
            return v
        if v.startswith(TRAIT_PREFIX) and len(v) > len(TRAIT_PREFIX):
            return v
        raise ValueError(f"must be one of {sorted(PROFILE_ATTRIBUTES)} or 'trait.<trait_type>'")


class FlagRulesIn(BaseModel):
    """Body of ``PUT /v1/flags/{flag}``: the whole rule set of one flag (replaces the previous one)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool
    rollout_percent: float = Field(ge=0, le=100, allow_inf_nan=False)
    conditions: list[Condition] = Field(default_factory=list, max_length=50)
    overrides: dict[uuid.UUID, bool] = Field(default_factory=dict, max_length=MAX_OVERRIDES)
    salt: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = None
    description: Annotated[str, StringConstraints(max_length=1024)] | None = None


class FlagRules(FlagRulesIn):
    """A stored rule set; ``version`` grows by one with every change."""

    flag: str
    version: int
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Decision:
    """The outcome of evaluating one flag for one user."""

    on: bool
    reason: Literal["disabled", "override", "not_targeted", "rollout"]


def _matches(cond: Condition, attrs: Mapping[str, Any]) -> bool:
    value = attrs.get(cond.attribute)
    # A list-valued trait matches when any of its elements is listed.
    present = any(v in cond.values for v in value) if isinstance(value, list) else value in cond.values
    return present if cond.op == "in" else not present


def evaluate(rules: FlagRulesIn, flag: str, user_id: uuid.UUID, attrs: Mapping[str, Any]) -> Decision:
    """Evaluate ``rules`` for a user whose attributes (profile columns, ``trait.<type>``) are ``attrs``."""
    if not rules.enabled:
        return Decision(False, "disabled")
    override = rules.overrides.get(user_id)
    if override is not None:
        return Decision(override, "override")
    if not all(_matches(c, attrs) for c in rules.conditions):
        return Decision(False, "not_targeted")
    threshold = round(rules.rollout_percent * BUCKETS / 100)
    return Decision(bucket(rules.salt or flag, user_id) < threshold, "rollout")
