"""Configuration from the environment (prefix ``PERSONALIZATION_``).

Defaults point at the services of a development machine (PostgreSQL and Redis on
loopback).  ``configured_service_urls`` tells whether the operator set any URL
explicitly, which decides whether ``demo``/``stack up`` start the embedded stack.
"""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICE_URL_VARS = (
    "PERSONALIZATION_DATABASE_URL",
    "PERSONALIZATION_REDIS_URL",
    "PERSONALIZATION_KAFKA_BOOTSTRAP_SERVERS",
)


class Settings(BaseSettings):
    """All runtime settings; every field maps to ``PERSONALIZATION_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="PERSONALIZATION_", extra="ignore")

    database_url: str = "postgresql://postgres@127.0.0.1:5432/personalization"
    redis_url: str = "redis://127.0.0.1:6379/0"
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic_prefix: str = "personalization"

    # Outbound call timeouts (seconds).
    db_connect_timeout_s: float = 5.0
    db_statement_timeout_ms: int = 30_000
    redis_timeout_s: float = 0.25
    db_pool_min: int = 2
    db_pool_max: int = 10

    # Ingest limits and group commit.
    max_batch_events: int = Field(default=5000, ge=1)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    max_metadata_bytes: int = Field(default=4096, ge=2)
    max_text_length: int = Field(default=256, ge=1)
    max_future_skew_s: float = Field(default=300.0, ge=0)
    group_commit_max_rows: int = Field(default=20_000, ge=1)
    group_commit_window_ms: float = Field(default=2.0, ge=0)
    # Signal types whose content counts as "viewed" for session recent content.
    view_signal_types: tuple[str, ...] = ("view", "read", "complete")

    # HTTP server.
    http_host: str = "127.0.0.1"
    http_port: int = 8000


def configured_service_urls() -> bool:
    """True when any service URL variable is set in the environment."""
    return any(os.environ.get(v) for v in SERVICE_URL_VARS)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
