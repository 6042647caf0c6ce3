"""The project's one reader of Debezium change messages (pure: no I/O).

The online learner (events and profiles) and the cache-invalidation consumer (profiles and
traits) read every message through this module.  The relay
(``personalization.changestream.relay``) publishes Debezium's JSON envelope without the
Connect schema: ``{"before", "after", "source", "op", "ts_ms"}``, NUMERIC as exact decimal
strings, TIMESTAMPTZ as ISO-8601 strings, key ``{"user_id": "<uuid>" | null}``.  An
envelope wrapped as ``{"schema": ..., "payload": ...}`` (a Kafka Connect worker whose JSON
converter keeps its default ``schemas.enable=true``) is unwrapped, key and value alike, so
a stock Kafka Connect deployment works too.

Stream position and duplicates
------------------------------
The relay is at-least-once: after a crash or a failed delivery it sends records again
(new offsets, same rows).  ``event_id`` cannot order them: it is a BIGSERIAL taken at
insert time, so a transaction that took id 10 can commit after one that took id 11, and
the stream (commit order) then carries 11 before 10.  ``source.lsn`` alone has the same
flaw (it is the change's own WAL position, not its commit's).  Debezium's
``source.sequence`` = ``[last commit LSN, change LSN]`` is made for this: the first value
grows with every commit in stream order and the second orders the changes of one
transaction, so ``(sequence[0], lsn, event_id)`` increases strictly along the stream and
a re-sent record repeats its original position.  The learner keeps, per partition, only
the highest position applied (constant space) and drops anything at or below it.  A
record without ``sequence[0]`` (the very first transaction a new slot streams) uses its
own LSN there.  ``event_id`` only breaks ties (snapshot records share one LSN).

Known limit: the rule assumes that, within a partition, the first copy of every record
arrives in stream order.  The relay keeps that order (idempotent producer; after a failed
delivery it re-sends the whole suffix of the batch), except in one corner: if librdkafka
times out an *in-flight* request while later requests of the same partition succeed, a
later record lands before the earlier one's re-send, and the earlier one is then dropped
here as a duplicate (counted as ``duplicate``).  ``learner recompute --user`` repairs such a
user; a bounded window of applied event ids per partition would close the gap at the
price of a write per event.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, assert_never
from uuid import UUID

import msgspec
import orjson

__all__ = [
    "DebeziumOp",
    "EventRecord",
    "FastInsert",
    "Ignored",
    "MalformedMessage",
    "Position",
    "ProfileChange",
    "RowChange",
    "UserErased",
    "parse_event_message",
    "parse_op",
    "parse_profile_message",
    "parse_row_change",
    "read_envelope",
    "read_insert_fast",
]

# Debezium's envelope ops: create, update, delete, read (snapshot), truncate, message.
DebeziumOp = Literal["c", "u", "d", "r", "t", "m"]
_OPS: dict[str, DebeziumOp] = {"c": "c", "u": "u", "d": "d", "r": "r", "t": "t", "m": "m"}

# (commit LSN of the previous transaction, change LSN, event_id): see the module docstring.
Position = tuple[int, int, int]


class MalformedMessage(ValueError):
    """A message that is not a readable Debezium change of the expected table."""


# Not frozen: a frozen dataclass's __init__ costs about twice as much, and one record is
# built per message on the hot path.
@dataclass(slots=True)
class EventRecord:
    """One inserted personalization_events row as the stream carries it."""

    event_id: int
    user_id: UUID
    content_id: str
    content_type: str
    signal_type: str
    signal_weight: float
    occurred_at: datetime
    position: Position
    # source.ts_ms: commit time of the row's transaction (ms since the epoch).
    commit_ts_ms: int | None
    # source.txId: the 32-bit transaction id (recomputation snapshots are checked against it).
    tx_id: int | None
    # The Kafka message timestamp (set by the consumer, not part of the envelope).
    kafka_ts_ms: int | None = None


@dataclass(frozen=True, slots=True)
class UserErased:
    """A tombstone (null value) for a user's key: the erase flow removed the user."""

    user_id: UUID


@dataclass(frozen=True, slots=True)
class ProfileChange:
    """A user_profile change: deleted, or its current privacy level."""

    user_id: UUID
    deleted: bool
    privacy_level: str | None


@dataclass(frozen=True, slots=True)
class Ignored:
    """A well-formed change the learner does not apply (counted by ``reason``)."""

    reason: Literal["anonymous", "update", "delete", "truncate", "message", "tombstone"]


def _json(raw: bytes | None, what: str) -> Any:
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage(f"{what} is not JSON: {exc}") from exc


def parse_op(value: object) -> DebeziumOp:
    """Narrow an envelope's ``op`` field; MalformedMessage for anything else."""
    if not isinstance(value, str) or value not in _OPS:
        raise MalformedMessage(f"unknown Debezium op {value!r}")
    return _OPS[value]


def _unwrap(doc: Any) -> Any:
    # Kafka Connect's JsonConverter with schemas.enable=true: {"schema": {...}, "payload": {...}}.
    if isinstance(doc, dict) and "payload" in doc and "schema" in doc:
        return doc["payload"]
    return doc


def read_envelope(value: bytes) -> dict[str, Any]:
    """The change envelope in a message value, unwrapped from ``{"schema", "payload"}`` if so sent.

    MalformedMessage unless it is JSON with a known ``op`` and a ``source`` object.
    """
    doc = _unwrap(_json(value, "value"))
    if not isinstance(doc, dict) or "op" not in doc or "source" not in doc:
        raise MalformedMessage("value is not a Debezium change envelope (no op/source)")
    parse_op(doc["op"])
    if not isinstance(doc["source"], dict):
        raise MalformedMessage("source is not an object")
    return doc



def _table(env: dict[str, Any], expected: str) -> None:
    table = env["source"].get("table")
    if env["op"] != "m" and table != expected:
        raise MalformedMessage(f"change of table {table!r}, expected {expected}")


def _key_user(key: bytes | None) -> UUID | None:
    doc = _unwrap(_json(key, "key"))
    if not isinstance(doc, dict) or "user_id" not in doc:
        raise MalformedMessage('key is not {"user_id": ...}')
    return _uuid(doc["user_id"], "key.user_id") if doc["user_id"] is not None else None


_UUIDS: dict[str, UUID] = {}


def _uuid(value: Any, field: str) -> UUID:
    # The same users recur in every batch: parsing each id once saves a visible share of
    # the per-message cost.  Bounded: cleared when it grows past a million ids.
    if isinstance(value, str):
        hit = _UUIDS.get(value)
        if hit is not None:
            return hit
    try:
        parsed = UUID(str(value))
    except ValueError as exc:
        raise MalformedMessage(f"{field} is not a UUID: {value!r}") from exc
    if isinstance(value, str):
        if len(_UUIDS) > 1_000_000:
            _UUIDS.clear()
        _UUIDS[value] = parsed
    return parsed


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise MalformedMessage(f"{field} is not an integer: {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise MalformedMessage(f"{field} is not an integer: {value!r}") from exc


def _text(row: dict[str, Any], field: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value:
        raise MalformedMessage(f"after.{field} must be a non-empty string, got {value!r}")
    return value


def _position(source: dict[str, Any], event_id: int) -> Position:
    lsn = _int(source.get("lsn"), "source.lsn")
    commit = None
    seq = source.get("sequence")
    if isinstance(seq, str):
        # '["<commit lsn>","<lsn>"]' or '[null,"<lsn>"]': split by hand (hot path).
        first = seq[1 : seq.find(",")] if seq.startswith("[") and "," in seq else None
        if first is None:
            raise MalformedMessage(f"source.sequence is not a two-element array: {seq!r}")
        if first != "null":
            commit = _int(first.strip('"'), "source.sequence[0]")
    elif isinstance(seq, list) and len(seq) == 2 and seq[0] is not None:
        commit = _int(seq[0], "source.sequence[0]")
    return (lsn if commit is None else commit, lsn, event_id)


def _timestamp(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise MalformedMessage(f"{field} is not an ISO-8601 string: {value!r}")
    try:
        ts = datetime.fromisoformat(value)
    except ValueError as exc:
        raise MalformedMessage(f"{field} is not an ISO-8601 timestamp: {value!r}") from exc
    if ts.tzinfo is None:
        raise MalformedMessage(f"{field} has no time zone: {value!r}")
    return ts


def parse_event_message(key: bytes | None, value: bytes | None) -> EventRecord | UserErased | Ignored:
    """Read one message of ``<prefix>.public.personalization_events``; MalformedMessage if unreadable."""
    if value is None:
        user = _key_user(key)
        return Ignored("tombstone") if user is None else UserErased(user)
    env = read_envelope(value)
    op = env["op"]
    if op == "t":
        return Ignored("truncate")
    if op == "m":
        return Ignored("message")
    _table(env, "personalization_events")
    # Updates and deletes are not applied: events are append-only in the specification, an
    # update arrives without its old image (default replica identity) so its old
    # contribution is unknown, and the user-erase flow removes the user's state itself.
    # `personalization learner recompute --user` rebuilds a user after such an edit.
    if op == "u":
        return Ignored("update")
    if op == "d":
        return Ignored("delete")
    row = env.get("after")
    if not isinstance(row, dict):
        raise MalformedMessage("after is missing on an insert")
    event_id = _int(row.get("event_id"), "after.event_id")
    if row.get("user_id") is None:
        return Ignored("anonymous")
    user_id = _uuid(row["user_id"], "after.user_id")
    weight_raw = row.get("signal_weight")
    try:
        weight = float(weight_raw) if isinstance(weight_raw, str | int | float) else math.nan
    except ValueError:
        weight = math.nan
    if isinstance(weight_raw, bool) or not math.isfinite(weight):
        raise MalformedMessage(f"after.signal_weight is not a decimal: {weight_raw!r}")
    source = env["source"]
    ts_ms = source.get("ts_ms")
    tx = source.get("txId")
    return EventRecord(
        event_id=event_id,
        user_id=user_id,
        content_id=_text(row, "content_id"),
        content_type=_text(row, "content_type"),
        signal_type=_text(row, "signal_type"),
        signal_weight=weight,
        occurred_at=_timestamp(row.get("occurred_at"), "after.occurred_at"),
        position=_position(source, event_id),
        commit_ts_ms=ts_ms if isinstance(ts_ms, int) and not isinstance(ts_ms, bool) else None,
        tx_id=tx if isinstance(tx, int) and not isinstance(tx, bool) else None,
    )


def parse_profile_message(key: bytes | None, value: bytes | None) -> ProfileChange | Ignored:
    """Read one message of ``<prefix>.public.user_profile``; MalformedMessage if unreadable."""
    if value is None:
        user = _key_user(key)
        return Ignored("tombstone") if user is None else ProfileChange(user, deleted=True, privacy_level=None)
    env = read_envelope(value)
    op = env["op"]
    if op == "t":
        return Ignored("truncate")
    if op == "m":
        return Ignored("message")
    _table(env, "user_profile")
    if op == "d":
        # Under the default replica identity only the key columns of ``before`` are real.
        before = env.get("before")
        if not isinstance(before, dict) or before.get("user_id") is None:
            raise MalformedMessage("before.user_id is missing on a delete")
        return ProfileChange(_uuid(before["user_id"], "before.user_id"), deleted=True, privacy_level=None)
    after = env.get("after")
    if not isinstance(after, dict) or after.get("user_id") is None:
        raise MalformedMessage("after.user_id is missing")
    level = after.get("privacy_level")
    if level is not None and not isinstance(level, str):
        raise MalformedMessage(f"after.privacy_level is not text: {level!r}")
    return ProfileChange(_uuid(after["user_id"], "after.user_id"), deleted=False, privacy_level=level)


@dataclass(frozen=True, slots=True)
class RowChange:
    """A change of a user-keyed table (user_profile, user_traits) and the users it touches."""

    op: DebeziumOp
    table: str | None
    users: frozenset[UUID]


def _row_users(**images: object) -> Iterator[UUID]:
    for name, row in images.items():
        if isinstance(row, dict) and row.get("user_id") is not None:
            yield _uuid(row["user_id"], f"{name}.user_id")


def parse_row_change(value: bytes | None, tables: Collection[str]) -> RowChange | Ignored:
    """Read one message of a user-keyed table among ``tables``; MalformedMessage if unreadable.

    Both images count: an update that moves a trait to another user touches both users.
    Truncates and logical-decoding messages name no rows (``users`` is empty).  A tombstone
    (null value) is ignored: the delete event before it already named the user.
    """
    if value is None:
        return Ignored("tombstone")
    env = read_envelope(value)
    op = parse_op(env["op"])
    table = env["source"].get("table")
    if op != "m" and table not in tables:
        raise MalformedMessage(f"change of table {table!r}, expected one of {sorted(tables)}")
    match op:
        case "c" | "r":
            users = frozenset(_row_users(after=env.get("after")))
        case "u" | "d":
            users = frozenset(_row_users(before=env.get("before"), after=env.get("after")))
        case "t" | "m":
            users = frozenset()
        case _:
            assert_never(op)
    return RowChange(op, table if isinstance(table, str) else None, users)


# -- fast path ------------------------------------------------------------------------------
#
# Almost every message of the events topic is a plain insert.  ``read_insert_fast`` decodes
# such a message with msgspec straight into the few fields the learner uses (the rest of the
# envelope is validated as JSON and skipped, no dicts are built), then applies exactly the
# checks of ``parse_event_message``.  It only ever answers for the common, well-formed case;
# for anything else (another op, a wrapped or odd envelope, a value the strict types below
# do not take, bad JSON) it returns None and the caller uses ``parse_event_message``, which
# stays the one definition of what is read, ignored or malformed.  The strict types make
# that safe: a field is typed here only where ``parse_event_message`` requires that type,
# and integers are limited to int64 (orjson reads those as integers), so every message this
# path accepts reads the same through both.

_I64 = Annotated[int, msgspec.Meta(ge=-(1 << 63), le=(1 << 63) - 1)]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)


class _After(msgspec.Struct):
    event_id: _I64
    user_id: str
    content_id: str
    content_type: str
    signal_type: str
    signal_weight: str | _I64 | float
    occurred_at: str


class _Source(msgspec.Struct):
    lsn: _I64
    table: str | None = None
    sequence: str | None = None
    ts_ms: _I64 | None = None
    txId: _I64 | None = None  # Debezium's field name


class _Insert(msgspec.Struct):
    op: str
    source: _Source
    after: _After | None = None
    # A Connect-wrapped envelope ({"schema", "payload"}) is left to the slow path.
    schema: msgspec.Raw = msgspec.Raw(b"")
    payload: msgspec.Raw = msgspec.Raw(b"")


_INSERT_DECODER = msgspec.json.Decoder(_Insert)

# (user_id, content_id, content_type, signal_type, signal_weight, occurred_at as microseconds
# since the epoch, position, commit_ts_ms, tx_id)
FastInsert = tuple[UUID, str, str, str, float, int, Position, int | None, int | None]


def read_insert_fast(value: bytes) -> FastInsert | None:
    """The insert in ``value`` as a plain tuple, or None: then ask ``parse_event_message``."""
    try:
        env = _INSERT_DECODER.decode(value)
    except (msgspec.MsgspecError, ValueError, RecursionError):
        # Not JSON, not this shape, or nested deeper than msgspec goes (orjson allows more).
        return None
    if env.schema or env.payload:
        return None
    op = env.op
    after = env.after
    source = env.source
    if (op != "c" and op != "r") or after is None or source.table != "personalization_events":
        return None
    weight_raw = after.signal_weight
    try:
        weight = float(weight_raw)
    except ValueError:
        return None
    if not math.isfinite(weight) or not after.content_id or not after.content_type or not after.signal_type:
        return None
    user_id = _UUIDS.get(after.user_id)
    try:
        occurred = datetime.fromisoformat(after.occurred_at)
        if user_id is None:
            user_id = _uuid(after.user_id, "after.user_id")
    except (ValueError, MalformedMessage):
        return None
    if occurred.tzinfo is None:
        return None
    lsn = source.lsn
    seq = source.sequence
    commit = lsn
    if seq is not None:
        if not seq.startswith("[") or "," not in seq:
            return None
        first = seq[1 : seq.find(",")]
        if first != "null":
            try:
                commit = int(first.strip('"'))
            except ValueError:
                return None
    return (
        user_id,
        after.content_id,
        after.content_type,
        after.signal_type,
        weight,
        (occurred - EPOCH) // ONE_US,
        (commit, lsn, after.event_id),
        source.ts_ms,
        source.txId,
    )
