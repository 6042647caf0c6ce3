"""confluent-kafka behind the online learner: a consumer whose positions the caller keeps, and a
dead-letter producer.

The learner stores its positions in PostgreSQL with its state, so this consumer never
commits offsets to Kafka: on every assignment it asks the caller for the stored
positions and seeks there.  Messages leave as :class:`Incoming` named tuples.

Threads: a confluent-kafka client is not safe to drive from several threads, and
librdkafka calls the rebalance callbacks from inside ``poll()``/``consume()`` on the
calling thread.  Each object here is therefore created, polled and closed by one thread
(the learner's loop); nothing in it takes a lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from personalization.errors import PersonalizationError

__all__ = ["DeadLetterProducer", "DeliveryFailed", "Incoming", "PositionedConsumer", "RawBatch"]

Partition = tuple[str, int]
RawBatch = list[Any]
"""Polled messages not yet read into :class:`Incoming` (see :meth:`PositionedConsumer.records`)."""


class Incoming(NamedTuple):
    """One Kafka message as the batch sees it (a named tuple: one is built per message)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    # Message timestamp (ms; the producer's create time unless the topic says otherwise).
    timestamp_ms: int | None = None


class DeliveryFailed(PersonalizationError):
    """Kafka did not acknowledge every produced message in time."""


class PositionedConsumer:
    """A group member that seeks each assigned partition to a position the caller stores.

    ``positions(partitions)`` returns the stored next offset of each partition it knows;
    the others start at the beginning.  It runs inside the rebalance callback, so it may
    block (the learner waits there for PostgreSQL).
    """

    def __init__(self, config: dict[str, Any], log: logging.Logger) -> None:
        """``log``: the owner's logger (assignments and consumer errors are its story)."""
        self._consumer = Consumer(config)
        self._log = log

    def subscribe(
        self,
        topics: Sequence[str],
        positions: Callable[[list[Partition]], dict[Partition, int]],
        on_assigned: Callable[[], None] | None = None,
    ) -> None:
        """Subscribe; every assignment is sought to ``positions``, then ``on_assigned`` is called."""

        def assigned(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            stored = positions([(tp.topic, tp.partition) for tp in partitions])
            for tp in partitions:
                tp.offset = stored.get((tp.topic, tp.partition), OFFSET_BEGINNING)
            self._log.info("assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in partitions))
            consumer.assign(partitions)
            if on_assigned is not None:
                on_assigned()

        def revoked(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
            # Nothing to flush: batches are applied completely between two polls.
            self._log.info("revoked %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions))

        self._consumer.subscribe(list(topics), on_assign=assigned, on_revoke=revoked)

    def poll_batch(self, timeout_s: float, max_messages: int, wait_s: float) -> RawBatch:
        """Wait up to ``timeout_s`` for a message, then take what else is fetched within ``wait_s``.

        Under a backlog the batch grows to ``max_messages``; at a trickle it is what
        arrived, so freshness stays low.
        """
        # poll() returns as soon as one message is there (consume() would wait for the full
        # count or the timeout, adding the timeout to every event's latency at a trickle).
        first = self._consumer.poll(timeout_s)
        if first is None:
            return []
        raw = [first]
        deadline = time.monotonic() + wait_s
        while len(raw) < max_messages and time.monotonic() < deadline:
            more = self._consumer.consume(num_messages=min(max_messages - len(raw), 10_000), timeout=0)
            if not more:
                break
            raw.extend(more)
        return raw

    def records(self, raw: RawBatch) -> list[Incoming]:
        """The polled messages as :class:`Incoming` (consumer errors are logged and left out)."""
        messages: list[Incoming] = []
        for msg in raw:
            err = msg.error()
            if err is not None:
                if err.code() not in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                    self._log.warning("consumer error: %s", err)
                continue
            ts_type, ts = msg.timestamp()
            messages.append(
                Incoming(
                    msg.topic() or "",
                    msg.partition() or 0,
                    msg.offset() or 0,
                    msg.key(),
                    msg.value(),
                    ts if ts_type != TIMESTAMP_NOT_AVAILABLE else None,
                )
            )
        return messages

    def rewind(self, messages: Sequence[Incoming]) -> None:
        """Seek each still-assigned partition of ``messages`` back to its first message."""
        first: dict[Partition, int] = {}
        for m in messages:
            k = (m.topic, m.partition)
            first[k] = min(first.get(k, m.offset), m.offset)
        assigned = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        for (topic, partition), offset in first.items():
            if (topic, partition) in assigned:
                try:
                    self._consumer.seek(TopicPartition(topic, partition, offset))
                except Exception as exc:  # a partition revoked meanwhile: its new owner seeks itself
                    self._log.warning("seek %s[%d]@%d failed: %s", topic, partition, offset, exc)

    def close(self) -> None:
        """Leave the group."""
        self._consumer.close()


class DeadLetterProducer:
    """Produces unreadable messages to a dead-letter topic, with their source in headers."""

    def __init__(self, config: dict[str, Any], topic: str, flush_timeout_s: float = 15.0) -> None:
        self._config = config
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s
        self._producer: Producer | None = None

    def publish(self, items: Sequence[tuple[Incoming, str]]) -> None:
        """Produce ``(message, error)`` pairs and wait for the acknowledgement; DeliveryFailed if none."""
        if not items:
            return
        if self._producer is None:
            self._producer = Producer(self._config)
        failures: list[str] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failures.append(err.str())

        for m, error in items:
            self._producer.produce(
                self.topic,
                key=m.key,
                value=m.value,
                headers=[
                    ("source_topic", m.topic.encode()),
                    ("source_partition", str(m.partition).encode()),
                    ("source_offset", str(m.offset).encode()),
                    ("error", error.encode()[:1000]),
                ],
                on_delivery=delivered,
            )
        left = self._producer.flush(self.flush_timeout_s)
        if left or failures:
            raise DeliveryFailed(f"dead-letter topic did not acknowledge: {failures[:1] or 'timeout'}")

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what is still queued."""
        if self._producer is not None:
            self._producer.flush(timeout_s)
            self._producer = None
