"""Create the project's Kafka topics up front (clusters often disable auto-creation)."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from personalization.kafka.kafkalog import client_logging


def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int = 4, timeout_s: float = 30.0) -> list[str]:
    """Create the missing ones among ``topics``; returns the names created now."""
    # Through Python logging: librdkafka's own stderr lines would break a caller's log format
    # (`personalization up` writes one JSON line per log record there).
    admin = AdminClient({"bootstrap.servers": bootstrap, **client_logging("admin")})
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [t for t in topics if t not in existing]
    if not missing:
        return []
    futures = admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing])
    created = []
    for name, fut in futures.items():
        try:
            fut.result(timeout_s)
            created.append(name)
        except KafkaException as exc:
            # Another process may have created it between list and create.
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    return created
