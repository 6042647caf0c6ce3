"""The preferences snapshot: its shape and its encoding as the ``user:{user_id}:preferences`` hash.

Hash fields: ``user_id``, ``updated_at`` (ISO 8601) and every non-NULL profile
column under its own name; each selected trait as ``trait.<trait_type>`` holding
the trait value as JSON.  Trait selection (in SQL, see ``serving.sql``): traits
with ``confidence >= preferences_min_confidence``; per trait type the newest
(``recorded_at``) wins, ties go to the higher confidence, then the smaller trait id.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson

PROFILE_FIELDS = ("denomination", "spiritual_goal", "preferred_translation", "timezone", "privacy_level")
TRAIT_PREFIX = "trait."

Source = Literal["cache", "database"]


@dataclass(frozen=True)
class Preferences:
    """One user's snapshot: profile columns and one value per high-confidence trait type."""

    user_id: uuid.UUID
    profile: dict[str, str | None]
    traits: dict[str, Any]
    updated_at: str | None = None
    source: Source = "database"
    _attrs: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def privacy_level(self) -> str | None:
        return self.profile.get("privacy_level")

    def attributes(self) -> dict[str, Any]:
        """Profile columns and ``trait.<type>`` values, as flag targeting names them."""
        if not self._attrs:
            self._attrs.update(self.profile)
            self._attrs.update({TRAIT_PREFIX + k: v for k, v in self.traits.items()})
        return self._attrs

    def as_dict(self) -> dict[str, Any]:
        return {
            "user_id": str(self.user_id),
            "profile": self.profile,
            "traits": self.traits,
            "updated_at": self.updated_at,
            "source": self.source,
        }


def from_row(row: Mapping[str, Any]) -> Preferences:
    """A snapshot from the ``preferences_snapshot`` query."""
    updated = row.get("updated_at")
    return Preferences(
        user_id=row["user_id"],
        profile={f: row.get(f) for f in PROFILE_FIELDS},
        traits=dict(row.get("traits") or {}),
        updated_at=updated.isoformat() if isinstance(updated, datetime) else updated,
        source="database",
    )


def to_hash(p: Preferences) -> dict[str, str]:
    """The Redis hash fields of a snapshot (NULL columns are left out; the hash is never empty)."""
    out = {"user_id": str(p.user_id)}
    if p.updated_at is not None:
        out["updated_at"] = p.updated_at
    for k, v in p.profile.items():
        if v is not None:
            out[k] = v
    for k, tv in p.traits.items():
        out[TRAIT_PREFIX + k] = orjson.dumps(tv).decode()
    return out


def from_hash(raw: Mapping[bytes, bytes]) -> Preferences:
    """A snapshot from a non-empty ``HGETALL`` reply."""
    profile: dict[str, str | None] = dict.fromkeys(PROFILE_FIELDS)
    traits: dict[str, Any] = {}
    user_id = updated = None
    for kb, vb in raw.items():
        k = kb.decode()
        if k.startswith(TRAIT_PREFIX):
            traits[k[len(TRAIT_PREFIX) :]] = orjson.loads(vb)
        elif k == "user_id":
            user_id = uuid.UUID(vb.decode())
        elif k == "updated_at":
            updated = vb.decode()
        elif k in profile:
            profile[k] = vb.decode()
    if user_id is None:
        raise ValueError("cached preferences without user_id")
    return Preferences(user_id=user_id, profile=profile, traits=traits, updated_at=updated, source="cache")
