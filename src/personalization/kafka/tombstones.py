"""A producer of Kafka tombstones (``(key, null)`` records) for compacted topics.

The erase uses it to make compacted consumers of the CDC topics drop a user's key.  It
produces with the CDC relay's partitioner (``murmur2_random``, Kafka Connect's), so a
tombstone lands in the partition of the records it cancels.  Kafka errors leave as
``CacheUnavailable`` (the erase reports them and can be run again).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaException, Producer

from personalization.errors import CacheUnavailable
from personalization.kafka.kafkalog import client_logging

__all__ = ["TombstoneProducer"]


class TombstoneProducer:
    """An idempotent producer, created on first use and kept (a long-lived API process reuses it)."""

    def __init__(self, bootstrap_servers: str, timeout_s: float, client_id: str = "personalization-erase") -> None:
        self.bootstrap_servers = bootstrap_servers
        self.timeout_s = timeout_s
        self.client_id = client_id
        self._producer: Producer | None = None

    def _get(self) -> Producer:
        if self._producer is None:
            timeout_ms = int(self.timeout_s * 1000)
            self._producer = Producer(
                {
                    "bootstrap.servers": self.bootstrap_servers,
                    "acks": "all",
                    "enable.idempotence": True,
                    # The relay's partitioner: the tombstone must land in the partition of the key.
                    "partitioner": "murmur2_random",
                    "message.timeout.ms": timeout_ms,
                    "socket.timeout.ms": max(1000, timeout_ms),
                    "client.id": self.client_id,
                    **client_logging("erase"),
                }
            )
        return self._producer

    def connect(self) -> None:
        """Open the connection now (fetches the cluster's metadata)."""
        self._get().list_topics(timeout=self.timeout_s)

    def publish(self, topics: Sequence[str], *keys: bytes) -> int:
        """Send and flush a tombstone for each key on each of ``topics`` that exists; returns how many.

        Blocking, bounded by ``timeout_s``; CacheUnavailable when Kafka is unreachable or
        does not acknowledge every tombstone.
        """
        p = self._get()
        try:
            meta = p.list_topics(timeout=self.timeout_s)
        except KafkaException as exc:
            raise CacheUnavailable(f"Kafka unreachable: {exc}") from exc
        present = [t for t in topics if t in meta.topics and meta.topics[t].error is None]
        failures: list[str] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        for topic in present:
            for key in keys:
                p.produce(topic, key=key, value=None, on_delivery=on_delivery)
        left = p.flush(self.timeout_s)
        if left or failures:
            raise CacheUnavailable(f"Kafka did not acknowledge {left or len(failures)} tombstone(s): "
                                   f"{'; '.join(failures[:3]) or 'timeout'}")
        return len(present) * len(keys)

    def close(self) -> None:
        """Flush and drop the producer."""
        if self._producer is not None:
            self._producer.flush(self.timeout_s)
            self._producer = None
