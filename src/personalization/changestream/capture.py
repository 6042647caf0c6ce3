"""What the relay captures, derived from the settings tree (tables from kafka.names)."""

from __future__ import annotations

from personalization.config import Settings
from personalization.kafka import names

__all__ = ["captured_tables", "captured_topics", "tables"]


def tables(settings: Settings) -> tuple[str, ...]:
    """The captured tables (unqualified), events first: profiles and traits unless turned off."""
    return names.CAPTURED_TABLES if settings.cdc.capture_profile else (names.EVENTS_TABLE,)


def captured_tables(settings: Settings) -> list[str]:
    """Schema-qualified tables in the publication and Debezium's ``table.include.list``."""
    return [names.qualified_table(t) for t in tables(settings)]


def captured_topics(settings: Settings) -> list[str]:
    """The topics the relay produces to, one per captured table."""
    return names.cdc_topics(settings.kafka.topic_prefix, tables(settings))
