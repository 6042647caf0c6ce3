"""A small at-least-once consumer loop over confluent-kafka for the project's side consumers.

The cache-invalidation consumer uses it: it subscribes, hands each polled batch of records
to a callback and commits the batch's offsets only after the callback asked for it, so a
crash repeats work rather than skipping it.  (The online learner keeps its offsets in
PostgreSQL and drives its own consumer.)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError

from personalization.kafka.kafkalog import client_logging

__all__ = ["Record", "consume_batches"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed message, copied out of the client's object."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


def consume_batches(
    bootstrap_servers: str,
    topics: Sequence[str],
    handle: Callable[[list[Record]], bool],
    *,
    stop: threading.Event,
    group_id: str,
    client_name: str,
    on_assigned: Callable[[], None] | None = None,
    extra_config: dict[str, Any] | None = None,
    batch_max: int = 500,
    poll_timeout_s: float = 0.5,
) -> None:
    """Poll ``topics`` until ``stop`` is set; ``handle`` each batch, commit when it returns True.

    A batch whose ``handle`` returns False is not committed (the caller is stopping before it
    finished; its records are read again on the next start).  Topics that do not exist yet
    are waited for quietly: the relay creates them on the first change.

    The confluent-kafka consumer is created, polled, committed and closed on the calling
    thread only: its client object is not safe to share between threads.
    """
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        # New topics (the relay creates them on first change) are picked up quickly.
        "topic.metadata.refresh.interval.ms": 5000,
        **client_logging(client_name),
    }
    config.update(extra_config or {})
    consumer = Consumer(config)

    def assigned(_consumer: Consumer, _partitions: list[Any]) -> None:
        if on_assigned is not None:
            on_assigned()

    consumer.subscribe(list(topics), on_assign=assigned)
    try:
        while not stop.is_set():
            records: list[Record] = []
            for message in consumer.consume(num_messages=batch_max, timeout=poll_timeout_s):
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                        log.warning("consumer error: %s", error)
                    continue
                records.append(Record(message.topic() or "", message.partition() or 0, message.offset() or 0,
                                      message.key(), message.value()))
            if records and handle(records):
                consumer.commit(asynchronous=False)
    finally:
        consumer.close()
