"""Configuration from the environment (prefix ``PERSONALIZATION_``).

Defaults point at the services of a development machine (PostgreSQL and Redis on
loopback).  ``configured_service_urls`` tells whether the operator set any URL
explicitly, which decides whether ``demo``/``stack up`` start the embedded stack.
"""

from __future__ import annotations

import os
from functools import lru_cache

from pydantic import Field, SecretStr
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
    group_commit_concurrency: int = Field(default=2, ge=1, le=16)
    # A backlog over this many rows is shared among idle flushers (parallel COPYs).
    group_commit_split_rows: int = Field(default=1000, ge=1)
    # Signal types whose content counts as "viewed" for session recent content.
    view_signal_types: tuple[str, ...] = ("view", "read", "complete")

    # HTTP server.
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=1, le=65535)
    # The API server freezes the objects alive after start-up (framework, schemas, pools)
    # out of the cyclic garbage collector's reach and collects young objects less often
    # (see api.app): ~15-20% less server CPU per ingested event.
    http_gc_tuning: bool = True

    # Security (issue 6).  Development only: serve /v1 without API keys (announced at start-up).
    auth_dev_mode: bool = False
    # Server secret of the keyed API-key hash (HMAC-SHA256); keys made without it are hashed with scrypt.
    api_key_secret: SecretStr | None = None
    # A verified key is re-read from PostgreSQL this often (revocation grace, last-used time).
    auth_revalidate_s: float = Field(default=2.0, gt=0, le=60)
    # Per-key token bucket in each process (requests/s and burst); 0 disables.
    rate_limit_per_s: float = Field(default=2000.0, ge=0)
    rate_limit_burst: int = Field(default=4000, ge=1)
    # Below the HTTP servers' own limits (h11: 16 KiB), so oversized headers get a JSON 431.
    max_header_bytes: int = Field(default=8192, ge=1024)
    # Bound of every Kafka call of the API process (erase tombstones).
    kafka_timeout_s: float = Field(default=5.0, gt=0)
    # Erase publishes tombstones for the user's key on the CDC topics (off only where no Kafka exists).
    erase_kafka_tombstones: bool = True
    # Outbox workers (issue 17): each API process runs the erasure worker and the invalidation
    # replay as background tasks (off: run them with `personalization workers run ...`).
    background_workers: bool = True
    # How often an idle erasure worker looks for pending parts (an erase in the process wakes it at once).
    erasure_worker_poll_s: float = Field(default=1.0, gt=0, le=60)
    # Longest backoff between two attempts of a failed part (Kafka down: tombstones within this of its return).
    erasure_retry_max_s: float = Field(default=30.0, gt=0, le=3600)
    # How often the invalidation outbox is replayed (changes whose invalidation did not reach Redis).
    invalidation_replay_s: float = Field(default=1.0, gt=0, le=60)


def configured_service_urls() -> bool:
    """True when any service URL variable is set in the environment."""
    return any(os.environ.get(v) for v in SERVICE_URL_VARS)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
