"""Settings of the online learner (environment prefix ``PERSONALIZATION_``).

Like the CDC relay, the learner runs as its own process and reads the shared service
URLs plus its own ``PERSONALIZATION_LEARNER_*`` knobs.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from personalization.config import DecaySettings
from personalization.core.decay import DecayConfig
from personalization.kafka import names


class LearnerSettings(BaseSettings):
    """Configuration of ``personalization learner``; each field maps to ``PERSONALIZATION_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="PERSONALIZATION_", extra="ignore")

    database_url: str = "postgresql://postgres@127.0.0.1:5432/personalization"
    redis_url: str = "redis://127.0.0.1:6379/0"
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_topic_prefix: str = "personalization"

    # Owner of the learner state: stored offsets are keyed by it.  Run exactly one group per
    # database (two groups would both apply every event to the same state).
    learner_group_id: str = Field(default="personalization-learner", min_length=1, max_length=200)
    # The Kafka consumer group used for partition assignment only (default: learner_group_id).
    # Tests against the Tansu broker use a fresh one per run (see stream.broker).
    learner_kafka_group_id: str | None = None
    learner_session_timeout_ms: int = Field(default=6000, ge=1000)
    # Messages per poll batch (one PostgreSQL transaction each), and how long a batch may keep
    # collecting already-fetched messages after the first one (a backlog makes big batches).
    # A batch writes every user it touches once, so on a backlog bigger batches write less:
    # 100k drained ~25% faster than 50k (5000 users, 384 dims) for ~100 MB more memory.
    learner_batch_max: int = Field(default=100_000, ge=1, le=200_000)
    learner_batch_wait_s: float = Field(default=0.05, ge=0)
    learner_poll_timeout_s: float = Field(default=0.1, gt=0)
    # Pause Python's cyclic garbage collector while a batch is read and applied (see
    # learner.consumer._gc_paused); it affects the whole process, so an application that
    # embeds the Learner in its own process may turn it off.
    learner_gc_pause: bool = True
    # Also consume <prefix>.public.user_profile: deletes and privacy changes drop state.
    learner_follow_profiles: bool = True
    # Malformed or foreign messages go here (default <prefix>.learner.dlq).
    learner_dlq_topic: str | None = None
    # The one embedding dimension (content vectors of another length are counted, not used).
    embedding_dim: int = Field(default=384, ge=1, le=8192)
    # PERSONALIZATION_LEARNER_SIGNALS and _EMBEDDING_HALF_LIFE_S: read by config.DecaySettings,
    # the one owner of the decay that the nightly job and the exports use as well.
    decay_settings: DecaySettings = Field(default_factory=DecaySettings)
    # After a restart, embeddings changed this recently are written to Redis again (a crash
    # between a commit and its Redis write would otherwise leave the key stale until TTL).
    learner_redis_resync_s: float = Field(default=600.0, ge=0)
    # Back-off while PostgreSQL or Redis is unavailable (seconds, doubled up to the max).
    learner_retry_initial_s: float = Field(default=0.2, gt=0)
    learner_retry_max_s: float = Field(default=10.0, gt=0)
    learner_redis_timeout_s: float = Field(default=2.0, gt=0)
    # Fault-injection tests only: sleep this long inside each batch's transaction, so that a
    # kill -9 lands mid-batch.  Never set in production.
    learner_debug_commit_delay_s: float = Field(default=0.0, ge=0, le=60)
    # Prometheus exposition (0 disables the HTTP server).
    learner_metrics_host: str = "127.0.0.1"
    learner_metrics_port: int = Field(default=9466, ge=0, le=65535)

    @property
    def events_topic(self) -> str:
        """Debezium's topic of personalization_events."""
        return names.events_topic(self.kafka_topic_prefix)

    @property
    def profiles_topic(self) -> str:
        """Debezium's topic of user_profile."""
        return names.profile_topic(self.kafka_topic_prefix)

    @property
    def dlq_topic(self) -> str:
        """Where unreadable messages are parked."""
        return self.learner_dlq_topic or names.learner_dlq_topic(self.kafka_topic_prefix)

    @property
    def topics(self) -> list[str]:
        """Topics the learner subscribes to."""
        return [self.events_topic, *([self.profiles_topic] if self.learner_follow_profiles else [])]

    def decay(self) -> DecayConfig:
        """The decay configuration (:meth:`personalization.config.DecaySettings.config`)."""
        return self.decay_settings.config()
