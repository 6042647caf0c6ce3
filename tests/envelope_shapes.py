"""Debezium change messages of the three captured tables, in both shapes a deployment sends.

* ``plain``: the relay's (and Kafka Connect's with ``schemas.enable=false``) bare envelope;
* ``connect``: Kafka Connect's JsonConverter with its default ``schemas.enable=true``, which
  wraps key and value as ``{"schema": {...}, "payload": {...}}``.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

import orjson

Shape = Literal["plain", "connect"]
SHAPES: tuple[Shape, ...] = ("plain", "connect")

_ROW_FIELDS: dict[str, list[tuple[str, str, str | None]]] = {
    # (field, Connect type, Connect logical name)
    "personalization_events": [
        ("event_id", "int64", None), ("user_id", "string", "io.debezium.data.Uuid"),
        ("session_id", "string", "io.debezium.data.Uuid"), ("content_id", "string", None),
        ("content_type", "string", None), ("signal_type", "string", None), ("signal_weight", "string", None),
        ("metadata", "string", "io.debezium.data.Json"), ("occurred_at", "string", "io.debezium.time.ZonedTimestamp"),
    ],
    "user_profile": [
        ("user_id", "string", "io.debezium.data.Uuid"), ("created_at", "string", "io.debezium.time.ZonedTimestamp"),
        ("updated_at", "string", "io.debezium.time.ZonedTimestamp"), ("denomination", "string", None),
        ("spiritual_goal", "string", None), ("preferred_translation", "string", None), ("timezone", "string", None),
        ("privacy_level", "string", None),
    ],
    "user_traits": [
        ("trait_id", "string", "io.debezium.data.Uuid"), ("user_id", "string", "io.debezium.data.Uuid"),
        ("trait_type", "string", None), ("trait_value", "string", "io.debezium.data.Json"),
        ("confidence", "string", None), ("recorded_at", "string", "io.debezium.time.ZonedTimestamp"),
    ],
}


def _field(name: str, kind: str, logical: str | None, optional: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind, "optional": optional, "field": name}
    if logical:
        out |= {"name": logical, "version": 1}
    return out


def _row_schema(prefix: str, table: str, field: str) -> dict[str, Any]:
    return {"type": "struct", "optional": True, "name": f"{prefix}.public.{table}.Value", "field": field,
            "fields": [_field(*f) for f in _ROW_FIELDS[table]]}


def _value_schema(prefix: str, table: str) -> dict[str, Any]:
    source = {"type": "struct", "optional": False, "name": "io.debezium.connector.postgresql.Source",
              "field": "source", "fields": [_field("table", "string", None, False), _field("lsn", "int64", None),
                                            _field("sequence", "string", None), _field("txId", "int64", None),
                                            _field("ts_ms", "int64", None, False)]}
    return {"type": "struct", "optional": False, "name": f"{prefix}.public.{table}.Envelope", "version": 2,
            "fields": [_row_schema(prefix, table, "before"), _row_schema(prefix, table, "after"), source,
                       _field("op", "string", None, False), _field("ts_ms", "int64", None)]}


def change(table: str, op: str, *, before: dict[str, Any] | None = None, after: dict[str, Any] | None = None,
           lsn: int = 1000, shape: Shape = "plain", prefix: str = "personalization") -> bytes:
    """A change message value of ``table``."""
    source = {"version": "3.0.0.Final", "connector": "postgresql", "name": prefix, "db": "personalization",
              "schema": "public", "table": table, "lsn": lsn, "sequence": f'["{lsn - 8}","{lsn}"]', "txId": 771,
              "ts_ms": 1_700_000_000_000, "snapshot": "false"}
    doc: dict[str, Any] = {"before": before, "after": after, "source": source, "op": op, "ts_ms": 1_700_000_000_100}
    if shape == "connect":
        doc = {"schema": _value_schema(prefix, table), "payload": doc}
    return orjson.dumps(doc)


def key(user_id: uuid.UUID | None, *, shape: Shape = "plain", table: str = "user_profile",
        prefix: str = "personalization") -> bytes:
    """The message key ``{"user_id": ...}``."""
    doc: dict[str, Any] = {"user_id": None if user_id is None else str(user_id)}
    if shape == "connect":
        doc = {"schema": {"type": "struct", "optional": False, "name": f"{prefix}.public.{table}.Key",
                          "fields": [_field("user_id", "string", "io.debezium.data.Uuid")]}, "payload": doc}
    return orjson.dumps(doc)


def event_row(user_id: uuid.UUID, event_id: int = 7) -> dict[str, Any]:
    return {"event_id": event_id, "user_id": str(user_id), "session_id": None, "content_id": "JHN.3",
            "content_type": "passage", "signal_type": "read", "signal_weight": "0.750", "metadata": None,
            "occurred_at": "2026-01-02T03:04:05.000006Z"}


def profile_row(user_id: uuid.UUID, privacy: str = "standard") -> dict[str, Any]:
    return {"user_id": str(user_id), "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-02T00:00:00Z",
            "denomination": "anglican", "spiritual_goal": None, "preferred_translation": "KJV",
            "timezone": "UTC", "privacy_level": privacy}


def trait_row(user_id: uuid.UUID) -> dict[str, Any]:
    return {"trait_id": str(uuid.uuid4()), "user_id": str(user_id), "trait_type": "tone",
            "trait_value": '"gentle"', "confidence": "0.95", "recorded_at": "2026-01-02T00:00:00Z"}
