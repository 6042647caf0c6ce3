"""Settings of the change-stream relay (environment prefix ``PERSONALIZATION_``).

The relay reads the same variables as :class:`personalization.config.Settings` for the
shared services, plus its own ``PERSONALIZATION_CDC_*`` knobs, so it can run as its own
process without the application's settings object.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from personalization.kafka import names

SnapshotMode = Literal["no_data", "initial", "when_needed"]


class CdcSettings(BaseSettings):
    """Configuration of ``personalization cdc``; each field maps to ``PERSONALIZATION_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="PERSONALIZATION_", extra="ignore")

    database_url: str = "postgresql://postgres@127.0.0.1:5432/personalization"
    redis_url: str = "redis://127.0.0.1:6379/0"
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic_prefix: str = "personalization"

    # Replication slot and publication owned by the project; `cdc drop-slot` removes both.
    cdc_slot_name: str = Field(default="personalization_cdc", pattern=r"^[a-z0-9_]{1,63}$")
    cdc_publication_name: str = Field(default="personalization_cdc", pattern=r"^[a-z0-9_]{1,63}$")
    # Offsets live in PostgreSQL (table ``<slot>_offsets``) unless a file path is given.
    cdc_offsets_file: str | None = None
    # Slot creation waits for every open transaction in the cluster; give up after this.
    cdc_slot_create_timeout_s: float = Field(default=120.0, gt=0)
    # Also stream user_profile and user_traits (for cache invalidation).
    cdc_capture_profile: bool = True
    # no_data: the stream starts when the slot is created; initial: first emit every row.
    cdc_snapshot_mode: SnapshotMode = "no_data"
    # Debezium waits this long when the queue is empty; 10 ms keeps p99 latency low.
    cdc_poll_interval_ms: int = Field(default=10, ge=1)
    cdc_max_batch_size: int = Field(default=2048, ge=1)
    # Heartbeats let the slot advance while the captured tables are idle.
    cdc_heartbeat_interval_ms: int = Field(default=10_000, ge=0)
    cdc_jvm_max_heap: str = "512m"
    # Prometheus exposition of the relay (0 disables the HTTP server).
    cdc_metrics_host: str = "127.0.0.1"
    cdc_metrics_port: int = Field(default=9465, ge=0, le=65535)
    # How often the retained-WAL gauge is refreshed.
    cdc_metrics_interval_s: float = Field(default=15.0, gt=0)
    # librdkafka gives up on a message after this; the relay then retries the rest.
    cdc_delivery_timeout_ms: int = Field(default=30_000, ge=1000)
    cdc_retry_backoff_max_s: float = Field(default=30.0, gt=0)
    cdc_engine_name: str = "personalization-cdc"

    @property
    def offsets_table(self) -> str:
        """Table of the JDBC offset store; one per slot because the store deletes all rows."""
        return f"{self.cdc_slot_name}_offsets"

    @property
    def events_topic(self) -> str:
        """Debezium's topic name: ``<prefix>.public.personalization_events``."""
        return names.events_topic(self.kafka_topic_prefix)

    @property
    def tables(self) -> tuple[str, ...]:
        """The captured tables (unqualified), events first."""
        return names.CAPTURED_TABLES if self.cdc_capture_profile else (names.EVENTS_TABLE,)

    @property
    def captured_tables(self) -> list[str]:
        """Schema-qualified tables in the publication."""
        return [names.qualified_table(t) for t in self.tables]

    @property
    def captured_topics(self) -> list[str]:
        """The topics the relay produces to (one per captured table)."""
        return names.cdc_topics(self.kafka_topic_prefix, self.tables)
