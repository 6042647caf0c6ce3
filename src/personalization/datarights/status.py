"""The state of one erasure, as ``GET /v1/erasures/{id}`` and ``personalization users erasure`` show it."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from personalization.store.db import Database
from personalization.store.erasures import ErasureOutbox

__all__ = ["erasure_status"]


def _iso(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


async def erasure_status(db: Database, erasure_id: uuid.UUID) -> dict[str, Any] | None:
    """``{erasure_id, subject_hash, complete, requested_at, completed_at, pending, parts}``, or None."""
    row = await ErasureOutbox(db).get(erasure_id)
    if row is None:
        return None
    parts: dict[str, dict[str, Any]] = row["parts"]
    return {
        "erasure_id": str(row["erasure_id"]),
        "subject_hash": row["subject_hash"],
        "complete": row["completed_at"] is not None,
        "requested_at": _iso(row["requested_at"]),
        "completed_at": _iso(row["completed_at"]),
        "pending": sorted(p for p, s in parts.items() if s["state"] == "pending"),
        "parts": parts,
        "audit_id": row["audit_id"],
    }
