"""Consumer lag from the broker: partitions' end offsets and a group's committed offsets.

Read without joining the group (a consumer that never subscribes only asks the group
coordinator), so a status report never triggers a rebalance of the group it inspects.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from confluent_kafka import Consumer, KafkaException, TopicPartition

from personalization.errors import PersonalizationError


class KafkaUnavailable(PersonalizationError):
    """The broker did not answer (in time)."""


def _consumer(bootstrap: str, group: str | None) -> Consumer:
    return Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group or f"personalization-status-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "socket.timeout.ms": 3000,
        # No librdkafka lines on the status command's stderr while the broker is down.
        "log_level": 0,
    })


def end_offsets(bootstrap: str, topics: Sequence[str], timeout_s: float = 3.0) -> dict[tuple[str, int], int]:
    """``{(topic, partition): high watermark}`` of every partition of ``topics`` that exists."""
    consumer = _consumer(bootstrap, None)
    try:
        out: dict[tuple[str, int], int] = {}
        meta = consumer.list_topics(timeout=timeout_s)
        for topic in topics:
            info = meta.topics.get(topic)
            if info is None or info.error is not None:
                continue
            for partition in info.partitions:
                _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
                out[(topic, partition)] = int(high)
        return out
    except KafkaException as exc:
        raise KafkaUnavailable(str(exc)) from exc
    finally:
        consumer.close()


def committed_offsets(
    bootstrap: str, group: str, partitions: Sequence[tuple[str, int]], timeout_s: float = 3.0
) -> dict[tuple[str, int], int]:
    """``{(topic, partition): committed offset}`` of ``group`` (partitions without one left out)."""
    consumer = _consumer(bootstrap, group)
    try:
        got = consumer.committed([TopicPartition(t, p) for t, p in partitions], timeout=timeout_s)
        return {(tp.topic, tp.partition): int(tp.offset) for tp in got if tp.offset >= 0}
    except KafkaException as exc:
        raise KafkaUnavailable(str(exc)) from exc
    finally:
        consumer.close()
