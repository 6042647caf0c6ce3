"""Invalidate cached preference snapshots from user_profile / user_traits change events.

Writes that bypass the API (a migration script, psql, the erase flow) still change the
tables, so the relay's profile and trait topics are the one place every change shows up.
The consumer takes the invalidation as a callback so that the read path can plug in its
own (for example one that also bumps a version); :func:`redis_invalidator` is the plain
default that deletes ``user:{<uuid>}:preferences``.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Literal, assert_never
from uuid import UUID

from confluent_kafka import Consumer, KafkaError, Message

from personalization.kafka.kafkalog import client_logging

__all__ = [
    "DebeziumOp",
    "invalidation_topics",
    "parse_op",
    "preferences_key",
    "redis_invalidator",
    "run_invalidation_consumer",
    "users_to_invalidate",
]

log = logging.getLogger(__name__)

# Debezium's envelope ops: create, update, delete, read (snapshot), truncate, message.
DebeziumOp = Literal["c", "u", "d", "r", "t", "m"]
_OPS: dict[str, DebeziumOp] = {"c": "c", "u": "u", "d": "d", "r": "r", "t": "t", "m": "m"}


def preferences_key(user_id: UUID) -> str:
    """The Redis key of a user's preference snapshot; the braces are literal (hash tag)."""
    return f"user:{{{user_id}}}:preferences"


def invalidation_topics(topic_prefix: str) -> list[str]:
    """The relay's topics whose changes make a preference snapshot stale."""
    return [f"{topic_prefix}.public.user_profile", f"{topic_prefix}.public.user_traits"]


def parse_op(value: object) -> DebeziumOp:
    """Narrow an envelope's ``op`` field; unknown values raise ValueError."""
    if not isinstance(value, str) or value not in _OPS:
        raise ValueError(f"unknown Debezium op {value!r}")
    return _OPS[value]


def _user_ids(*rows: object) -> Iterator[UUID]:
    for row in rows:
        if isinstance(row, dict) and row.get("user_id"):
            yield UUID(str(row["user_id"]))


def users_to_invalidate(envelope: dict[str, Any]) -> set[UUID]:
    """The users whose snapshot a Debezium change envelope makes stale.

    Both images count: an update that moves a trait to another user changes both users'
    snapshots.  Truncates name no rows, so they invalidate nothing here; the caller is
    told through the log (the TTL bounds the staleness).
    """
    op = parse_op(envelope.get("op"))
    match op:
        case "c" | "r":
            return set(_user_ids(envelope.get("after")))
        case "u" | "d":
            return set(_user_ids(envelope.get("before"), envelope.get("after")))
        case "t":
            log.warning(
                "table %s was truncated; cached preferences expire by TTL only",
                (envelope.get("source") or {}).get("table"),
            )
            return set()
        case "m":
            return set()
        case _:
            assert_never(op)


def redis_invalidator(redis_url: str) -> Callable[[UUID], None]:
    """An ``invalidate(user_id)`` that deletes the user's preference snapshot in Redis."""
    import redis

    client = redis.Redis.from_url(redis_url)

    def invalidate(user_id: UUID) -> None:
        client.delete(preferences_key(user_id))

    return invalidate


def _handle(message: Message, invalidate: Callable[[UUID], None]) -> None:
    value = message.value()
    if value is None:  # tombstone: the delete event before it already invalidated
        return
    try:
        envelope = json.loads(value)
        users = users_to_invalidate(envelope)
    except (ValueError, TypeError) as exc:
        log.error("skipping unreadable change event at %s: %s", message.offset(), exc)
        return
    for user_id in users:
        invalidate(user_id)


def run_invalidation_consumer(
    bootstrap_servers: str,
    topic_prefix: str,
    invalidate: Callable[[UUID], None],
    *,
    stop: threading.Event,
    group_id: str | None = None,
    on_assigned: Callable[[], None] | None = None,
    extra_config: dict[str, Any] | None = None,
) -> None:
    """Call ``invalidate`` for every user touched by a profile or trait change, until stopped.

    Offsets are committed after the callbacks of a polled batch returned, so a crash
    repeats invalidations (harmless) rather than skipping them.  The consumer lives and
    is polled on the calling thread only, since confluent-kafka consumers are not safe to
    share between threads.
    """
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "group.id": group_id or f"personalization-cache-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        # New topics (the relay creates them on first change) are picked up quickly.
        "topic.metadata.refresh.interval.ms": 5000,
        **client_logging("invalidation"),
    }
    config.update(extra_config or {})
    consumer = Consumer(config)

    def assigned(_consumer: Consumer, _partitions: list[Any]) -> None:
        if on_assigned is not None:
            on_assigned()

    consumer.subscribe(invalidation_topics(topic_prefix), on_assign=assigned)
    try:
        while not stop.is_set():
            messages = consumer.consume(num_messages=500, timeout=0.5)
            handled = 0
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                        log.warning("consumer error: %s", error)
                    continue
                _handle(message, invalidate)
                handled += 1
            if handled:
                consumer.commit(asynchronous=False)
    finally:
        consumer.close()
