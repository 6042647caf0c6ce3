"""Kafka topic names of the project: the one place that spells them (pure, no I/O).

Debezium names a table's change topic ``<topic.prefix>.<schema>.<table>``; the embedded
relay and a Kafka Connect deployment (deploy/kafka-connect/) both follow that rule, and
every producer, consumer, benchmark and test asks here for the result.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = [
    "CAPTURED_TABLES",
    "EVENTS_TABLE",
    "INVALIDATION_TABLES",
    "PROFILE_TABLE",
    "SCHEMA",
    "TRAITS_TABLE",
    "cdc_topic",
    "cdc_topics",
    "events_topic",
    "invalidation_topics",
    "learner_dlq_topic",
    "profile_topic",
    "qualified_table",
]

SCHEMA = "public"
EVENTS_TABLE = "personalization_events"
PROFILE_TABLE = "user_profile"
TRAITS_TABLE = "user_traits"
# Every table the change stream can carry, events first (the learner's main input).
CAPTURED_TABLES = (EVENTS_TABLE, PROFILE_TABLE, TRAITS_TABLE)
# The tables whose changes make a cached preference snapshot stale.
INVALIDATION_TABLES = (PROFILE_TABLE, TRAITS_TABLE)


def qualified_table(table: str) -> str:
    """``public.<table>``: how Debezium's ``table.include.list`` and the publication name it."""
    return f"{SCHEMA}.{table}"


def cdc_topic(prefix: str, table: str) -> str:
    """Debezium's change topic of ``table``: ``<prefix>.public.<table>``."""
    return f"{prefix}.{qualified_table(table)}"


def cdc_topics(prefix: str, tables: Iterable[str] = CAPTURED_TABLES) -> list[str]:
    """The change topics of ``tables`` (all captured tables by default), in that order."""
    return [cdc_topic(prefix, t) for t in tables]


def events_topic(prefix: str) -> str:
    """``<prefix>.public.personalization_events``."""
    return cdc_topic(prefix, EVENTS_TABLE)


def profile_topic(prefix: str) -> str:
    """``<prefix>.public.user_profile``."""
    return cdc_topic(prefix, PROFILE_TABLE)


def invalidation_topics(prefix: str) -> list[str]:
    """The change topics the cache-invalidation consumer reads (profile and traits)."""
    return cdc_topics(prefix, INVALIDATION_TABLES)


def learner_dlq_topic(prefix: str) -> str:
    """Where the learner parks unreadable messages unless PERSONALIZATION_LEARNER_DLQ_TOPIC is set."""
    return f"{prefix}.learner.dlq"
