"""Invalidate cached preference snapshots from user_profile / user_traits change events.

Writes that bypass the API (a migration script, psql, the erase flow) still change the
tables, so the relay's profile and trait topics are the one place every change shows up.
Messages are read by the project's one Debezium reader (:mod:`personalization.kafka.envelope`,
which also unwraps Kafka Connect's ``{"schema", "payload"}``), the Kafka client loop is
:func:`personalization.kafka.consumer.consume_batches`, and the invalidation is a callback:
``personalization cdc invalidate-cache`` passes
:func:`personalization.cache.serving.generation_invalidator`, the API's own protocol (new
generation token, snapshot deleted), so a reader racing a direct SQL write cannot fill a
stale value.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from uuid import UUID

from personalization.errors import CacheUnavailable
from personalization.kafka import names
from personalization.kafka.envelope import Ignored, MalformedMessage, parse_row_change
from personalization.kafka.side_consumer import Record, consume_batches

__all__ = ["run_invalidation_consumer", "users_to_invalidate"]

log = logging.getLogger(__name__)

# While Redis is unreachable the batch is retried (not committed) with this back-off.
_RETRY_INITIAL_S = 0.2
_RETRY_MAX_S = 5.0


def users_to_invalidate(value: bytes | None) -> set[UUID]:
    """The users whose snapshot one profile or trait change message makes stale.

    The row images name the users (the message key adds nothing).  A truncate invalidates
    nothing here and is logged (the TTL bounds the staleness).  MalformedMessage if the
    message is not a readable change of user_profile or user_traits.
    """
    change = parse_row_change(value, names.INVALIDATION_TABLES)
    if isinstance(change, Ignored):
        return set()
    if change.op == "t":
        log.warning("table %s was truncated; cached preferences expire by TTL only", change.table)
    return set(change.users)


def _invalidate_all(users: Iterable[UUID], invalidate: Callable[[UUID], None], stop: threading.Event) -> bool:
    """Invalidate every user, retrying while Redis is unavailable; False if stopped first."""
    pending = list(dict.fromkeys(users))
    delay = _RETRY_INITIAL_S
    while pending:
        try:
            invalidate(pending[0])
        except CacheUnavailable as exc:
            log.warning("cache unavailable, retrying invalidation in %.1f s: %s", delay, exc)
            if stop.wait(delay):
                return False
            delay = min(delay * 2, _RETRY_MAX_S)
            continue
        pending.pop(0)
        delay = _RETRY_INITIAL_S
    return True


def run_invalidation_consumer(
    bootstrap_servers: str,
    topic_prefix: str,
    invalidate: Callable[[UUID], None],
    *,
    stop: threading.Event,
    group_id: str | None = None,
    on_assigned: Callable[[], None] | None = None,
    extra_config: dict[str, object] | None = None,
) -> None:
    """Call ``invalidate`` for every user touched by a profile or trait change, until stopped.

    Offsets are committed after the callbacks of a polled batch returned, so a crash
    repeats invalidations (harmless) rather than skipping them.  Runs on the calling
    thread (the Kafka client is driven from that one thread only).
    """

    def handle(records: list[Record]) -> bool:
        users: list[UUID] = []
        for record in records:
            try:
                users.extend(users_to_invalidate(record.value))
            except MalformedMessage as exc:
                # It names no user this consumer could trust; the TTL bounds any staleness.
                log.error("skipping unreadable change event at %s[%d]@%d: %s",
                          record.topic, record.partition, record.offset, exc)
        return _invalidate_all(users, invalidate, stop)

    consume_batches(
        bootstrap_servers,
        names.invalidation_topics(topic_prefix),
        handle,
        stop=stop,
        group_id=group_id or f"personalization-cache-{uuid.uuid4()}",
        client_name="invalidation",
        on_assigned=on_assigned,
        extra_config=dict(extra_config or {}),
    )
