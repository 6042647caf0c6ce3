"""Create the project's Kafka topics up front (clusters often disable auto-creation).

What Kafka keeps of an erased user is decided here, by the CDC topics' configuration
(docs/datarights.md explains it):

* ``<prefix>.public.user_profile`` and ``.user_traits``: compacted.  The erase's tombstone
  for the user's key makes compaction drop every earlier record of that key;
  ``max.compaction.lag.ms`` bounds how long a record may wait for compaction (1 day) and
  ``delete.retention.ms`` how long the tombstone itself stays for consumers (1 day).
* ``<prefix>.public.personalization_events``: deleted by age (``retention.ms``, 7 days),
  not compacted: compaction would keep only each user's last event and break the online
  learner's stream.  An erased user's event records are gone when their segment ages out;
  until then the tombstone tells consumers (the learner) to drop the user.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from personalization.kafka import names
from personalization.kafka.kafkalog import client_logging

_DAY_MS = 24 * 3600 * 1000
# Segments roll at least daily so compaction and retention can act on them (an active
# segment is never compacted or deleted).
_SEGMENT_MS = str(_DAY_MS)
COMPACTED_TOPIC_CONFIG: Mapping[str, str] = {
    "cleanup.policy": "compact",
    "max.compaction.lag.ms": str(_DAY_MS),
    "delete.retention.ms": str(_DAY_MS),
    "segment.ms": _SEGMENT_MS,
}
EVENTS_TOPIC_CONFIG: Mapping[str, str] = {
    "cleanup.policy": "delete",
    "retention.ms": str(7 * _DAY_MS),
    "segment.ms": _SEGMENT_MS,
}


def cdc_topic_configs(topic_prefix: str) -> dict[str, Mapping[str, str]]:
    """The configuration of each CDC topic: compacted profile/trait topics, age-bounded events."""
    return {
        names.events_topic(topic_prefix): EVENTS_TOPIC_CONFIG,
        names.cdc_topic(topic_prefix, "user_profile"): COMPACTED_TOPIC_CONFIG,
        names.cdc_topic(topic_prefix, "user_traits"): COMPACTED_TOPIC_CONFIG,
    }


def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int = 4, timeout_s: float = 30.0,
                  configs: Mapping[str, Mapping[str, str]] | None = None) -> list[str]:
    """Create the missing ones among ``topics`` (with ``configs[topic]`` if given); returns the names created now.

    Topics that exist keep their configuration (change it with the cluster's tools).
    """
    # Through Python logging: librdkafka's own stderr lines would break a caller's log format
    # (`personalization up` writes one JSON line per log record there).
    admin = AdminClient({"bootstrap.servers": bootstrap, **client_logging("admin")})
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    missing = [t for t in topics if t not in existing]
    if not missing:
        return []
    cfg = configs or {}
    futures = admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1,
                                            config=dict(cfg.get(t, {}))) for t in missing])
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
