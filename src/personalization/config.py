"""The settings tree: one typed :class:`Settings` with a section per concern.

(Over 500 lines, on purpose: it is the one owner of every setting, as Feast's ``RepoConfig``;
each section is a short declarative class, and splitting them over modules would hide the tree.)

Every process (API server, CDC relay, online learner, nightly job, CLI) reads this one tree,
so each value (the service URLs, the decay, the embedding dimension) is defined once::

    settings.database.url          PERSONALIZATION_DATABASE_URL
    settings.cdc.slot_name         PERSONALIZATION_CDC_SLOT_NAME
    settings.decay.signals         PERSONALIZATION_LEARNER_SIGNALS

The environment variables keep the flat names they always had: a section's variable is
``<section prefix><FIELD>`` (see each section's ``env_prefix``) unless a field names its own
with :func:`env`.  :func:`env_names` lists them all; an unknown ``PERSONALIZATION_*`` name is
ignored as before.  Values from the constructor win over the environment, section by
section and field by field (``Settings(database={"url": ...})`` keeps the other database
variables from the environment).

Defaults point at the services of a development machine (PostgreSQL and Redis on
loopback).  ``configured_service_urls`` tells whether the operator set any URL
explicitly, which decides whether ``demo``/``stack up`` start the embedded stack.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from personalization.core.decay import DAY_S, DEFAULT_SIGNALS, DecayConfig, SignalDecay
from personalization.core.signals import SignalTypes, check_names, signal_types

__all__ = [
    "DEFAULT_EMBEDDING_DIM",
    "ENV_PREFIX",
    "SERVICE_URL_VARS",
    "RecommendSettings",
    "Settings",
    "configured_service_urls",
    "describe_error",
    "env_names",
    "get_settings",
]

ENV_PREFIX = "PERSONALIZATION_"
SERVICE_URL_VARS = (
    "PERSONALIZATION_DATABASE_URL",
    "PERSONALIZATION_REDIS_URL",
    "PERSONALIZATION_KAFKA_BOOTSTRAP_SERVERS",
)

# The default of settings.embedding.dim (benchmarks that pick their own dimension start here).
DEFAULT_EMBEDDING_DIM = 384

SnapshotMode = Literal["no_data", "initial", "when_needed"]
RefreshMode = Literal["swap", "concurrently"]


def env(name: str, **kwargs: Any) -> Any:
    """A field whose variable is ``PERSONALIZATION_<name>`` rather than the section's rule."""
    return Field(json_schema_extra={"env": ENV_PREFIX + name}, **kwargs)


class Section(BaseModel):
    """A section of the tree; ``env_prefix`` + the upper-cased field name is the variable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    env_prefix: ClassVar[str] = ENV_PREFIX

    @classmethod
    def env_name(cls, field: str) -> str:
        """The environment variable of ``field``."""
        extra = cls.model_fields[field].json_schema_extra
        if isinstance(extra, dict) and isinstance(extra.get("env"), str):
            return str(extra["env"])
        return f"{cls.env_prefix}{field.upper()}"


class DatabaseSettings(Section):
    """PostgreSQL."""

    env_prefix: ClassVar[str] = ENV_PREFIX + "DB_"

    url: str = env("DATABASE_URL", default="postgresql://postgres@127.0.0.1:5432/personalization")
    connect_timeout_s: float = 5.0
    statement_timeout_ms: int = 30_000
    pool_min: int = 2
    pool_max: int = 10


class RedisSettings(Section):
    """Redis."""

    env_prefix: ClassVar[str] = ENV_PREFIX + "REDIS_"

    url: str = "redis://127.0.0.1:6379/0"
    # Bound of every Redis call of the API process (reads degrade to PostgreSQL).
    timeout_s: float = 0.25
    # Faults (issue 17; docs/faults.md).  /healthz says Redis is degraded while a Redis call
    # of the write or read path failed less than this long ago: a probe alone cannot see a
    # refused script (CROSSSLOT) or a clobbered key (WRONGTYPE).
    health_window_s: float = Field(default=5.0, ge=0)


class KafkaSettings(Section):
    """Kafka (the change stream's topics are named by kafka.names from ``topic_prefix``)."""

    env_prefix: ClassVar[str] = ENV_PREFIX + "KAFKA_"

    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = "personalization"
    # Bound of every Kafka call of the API process (erase tombstones).
    timeout_s: float = Field(default=5.0, gt=0)


class IngestSettings(Section):
    """Event ingestion limits and group commit (historical names without a section prefix)."""

    max_batch_events: int = Field(default=5000, ge=1)
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
    # The signal-type registry (core.signals; issue 17, docs/faults.md).  Types accepted (and
    # scored by the learner with the default decay unless decay.signals names them) besides
    # the built-in ones and the decay's configured ones, as JSON: '["prayed", "note_added"]'.
    signal_types_extra: Annotated[tuple[str, ...], AfterValidator(check_names)] = ()
    # Accept any well-formed signal type (the learner still scores only known ones).
    signal_types_open: bool = False


class HttpSettings(Section):
    """The API server."""

    env_prefix: ClassVar[str] = ENV_PREFIX + "HTTP_"

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # The API server freezes the objects alive after start-up (framework, schemas, pools)
    # out of the cyclic garbage collector's reach and collects young objects less often
    # (see api.app): ~15-20% less server CPU per ingested event.
    gc_tuning: bool = True
    max_body_bytes: int = env("MAX_BODY_BYTES", default=8 * 1024 * 1024, ge=1024)
    # Below the HTTP servers' own limits (h11: 16 KiB), so oversized headers get a JSON 431.
    max_header_bytes: int = env("MAX_HEADER_BYTES", default=8192, ge=1024)


class AuthSettings(Section):
    """API keys and rate limits (issue 6)."""

    env_prefix: ClassVar[str] = ENV_PREFIX + "AUTH_"

    # Development only: serve /v1 without API keys (announced at start-up).
    dev_mode: bool = False
    # Server secret of the keyed API-key hash (HMAC-SHA256); keys made without it are hashed with scrypt.
    api_key_secret: SecretStr | None = env("API_KEY_SECRET", default=None)
    # A verified key is re-read from PostgreSQL this often (revocation grace, last-used time).
    revalidate_s: float = Field(default=2.0, gt=0, le=60)
    # Per-key token bucket in each process (requests/s and burst); 0 disables.
    rate_limit_per_s: float = env("RATE_LIMIT_PER_S", default=2000.0, ge=0)
    rate_limit_burst: int = env("RATE_LIMIT_BURST", default=4000, ge=1)


class EraseSettings(Section):
    """The user-erase flow."""

    env_prefix: ClassVar[str] = ENV_PREFIX + "ERASE_"

    # Publish tombstones for the user's key on the CDC topics (off only where no Kafka exists).
    kafka_tombstones: bool = True


class WorkersSettings(Section):
    """The outbox workers (issue 17; docs/datarights.md): erase completion and invalidation replay.

    Historical names without a section prefix.
    """

    # Each API process runs the erasure worker and the invalidation replay as background
    # tasks (off: run them with `personalization workers run ...`).
    background: bool = env("BACKGROUND_WORKERS", default=True)
    # How often an idle erasure worker looks for pending parts (an erase in the process wakes it at once).
    erasure_poll_s: float = env("ERASURE_WORKER_POLL_S", default=1.0, gt=0, le=60)
    # Longest backoff between two attempts of a failed part (Kafka down: tombstones within this of its return).
    erasure_retry_max_s: float = Field(default=30.0, gt=0, le=3600)
    # How often the invalidation outbox is replayed (changes whose invalidation did not reach Redis).
    invalidation_replay_s: float = Field(default=1.0, gt=0, le=60)


class SignalDecaySetting(BaseModel):
    """One signal type's scale (signed) and half-life in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: float
    half_life_s: float = Field(gt=0)


class DecaySettings(Section):
    """The decay of signals (:mod:`personalization.core.decay`): the one place that reads it.

    The variables keep their historical ``PERSONALIZATION_LEARNER_`` names, but every consumer
    (online learner, recompute, nightly snapshot and so the feature export, data-rights export)
    receives :meth:`config` from here, so an operator's override reaches all of them.
    """

    env_prefix: ClassVar[str] = ENV_PREFIX + "LEARNER_"

    # Per-signal overrides of core.decay.DEFAULT_SIGNALS, e.g. {"skip": {"scale": -1, "half_life_s": 259200}}.
    signals: dict[str, SignalDecaySetting] = Field(default_factory=dict)
    # Half-life of the user embedding (seconds).
    embedding_half_life_s: float = Field(default=30 * DAY_S, gt=0)

    def config(self) -> DecayConfig:
        """The decay configuration: the project defaults with this deployment's overrides."""
        signals = dict(DEFAULT_SIGNALS)
        for name, s in self.signals.items():
            signals[name] = SignalDecay(s.scale, s.half_life_s)
        return DecayConfig(signals=signals, embedding_half_life_s=self.embedding_half_life_s)


class EmbeddingSettings(Section):
    """The one embedding dimension of the deployment (users and content alike)."""

    env_prefix: ClassVar[str] = ENV_PREFIX + "EMBEDDING_"

    dim: int = Field(default=DEFAULT_EMBEDDING_DIM, ge=1, le=8192)


class ServingSettings(Section):
    """Tunables of preferences, flags and reranking (historical names without a section prefix)."""

    # Traits below this confidence are left out of the preferences snapshot.
    preferences_min_confidence: Decimal = Field(default=Decimal("0.70"), ge=0, le=1)
    # Upper bound of candidates per rerank call.
    rerank_max_candidates: int = Field(default=500, ge=1, le=10_000)
    # final score = alpha * cosine(user, content) + (1 - alpha) * prior score.
    rerank_alpha: float = Field(default=0.5, ge=0, le=1)
    # While Redis is unreachable, probe it this often (seconds); reads go to PostgreSQL meanwhile.
    cache_retry_s: float = Field(default=1.0, gt=0)
    # In-process content vector cache (entries); dropped when an import bumps the content version.
    content_cache_size: int = Field(default=200_000, ge=0)
    # ... and also dropped after this many seconds, which bounds staleness when an
    # import could not reach Redis to announce itself.
    content_cache_max_age_s: float = Field(default=600.0, gt=0)
    # How long the content-type popularity from the rollups is reused (seconds).
    popularity_refresh_s: float = Field(default=300.0, ge=0)


class CdcSettings(Section):
    """The change-stream relay (``personalization cdc``)."""

    env_prefix: ClassVar[str] = ENV_PREFIX + "CDC_"

    # Replication slot and publication owned by the project; `cdc drop-slot` removes both.
    slot_name: str = Field(default="personalization_cdc", pattern=r"^[a-z0-9_]{1,63}$")
    publication_name: str = Field(default="personalization_cdc", pattern=r"^[a-z0-9_]{1,63}$")
    # Offsets live in PostgreSQL (table ``<slot>_offsets``) unless a file path is given.
    offsets_file: str | None = None
    # Slot creation waits for every open transaction in the cluster; give up after this.
    slot_create_timeout_s: float = Field(default=120.0, gt=0)
    # Also stream user_profile and user_traits (for cache invalidation and the learner).
    capture_profile: bool = True
    # no_data: the stream starts when the slot is created; initial: first emit every row.
    snapshot_mode: SnapshotMode = "no_data"
    # Debezium waits this long when the queue is empty; 10 ms keeps p99 latency low.
    poll_interval_ms: int = Field(default=10, ge=1)
    max_batch_size: int = Field(default=2048, ge=1)
    # Heartbeats let the slot advance while the captured tables are idle.
    heartbeat_interval_ms: int = Field(default=10_000, ge=0)
    jvm_max_heap: str = "512m"
    # Prometheus exposition of the relay (0 disables the HTTP server).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9465, ge=0, le=65535)
    # How often the retained-WAL gauge is refreshed.
    metrics_interval_s: float = Field(default=15.0, gt=0)
    # librdkafka gives up on a message after this; the relay then retries the rest.
    delivery_timeout_ms: int = Field(default=30_000, ge=1000)
    retry_backoff_max_s: float = Field(default=30.0, gt=0)
    engine_name: str = "personalization-cdc"

    @property
    def offsets_table(self) -> str:
        """Table of the JDBC offset store; one per slot because the store deletes all rows."""
        return f"{self.slot_name}_offsets"


class LearnerSettings(Section):
    """The online learner (``personalization learner``); its decay is :class:`DecaySettings`."""

    env_prefix: ClassVar[str] = ENV_PREFIX + "LEARNER_"

    # Owner of the learner state: stored offsets are keyed by it.  Run exactly one group per
    # database (two groups would both apply every event to the same state).
    group_id: str = Field(default="personalization-learner", min_length=1, max_length=200)
    # The Kafka consumer group used for partition assignment only (default: group_id).
    # Tests against the Tansu broker use a fresh one per run (see personalization_dev.broker).
    kafka_group_id: str | None = None
    session_timeout_ms: int = Field(default=6000, ge=1000)
    # Messages per poll batch (one PostgreSQL transaction each), and how long a batch may keep
    # collecting already-fetched messages after the first one (a backlog makes big batches).
    # A batch writes every user it touches once, so on a backlog bigger batches write less:
    # 100k drained ~25% faster than 50k (5000 users, 384 dims) for ~100 MB more memory.
    batch_max: int = Field(default=100_000, ge=1, le=200_000)
    batch_wait_s: float = Field(default=0.05, ge=0)
    poll_timeout_s: float = Field(default=0.1, gt=0)
    # Pause Python's cyclic garbage collector while a batch is read and applied (see
    # learner.consumer._gc_paused); it affects the whole process, so an application that
    # embeds the Learner in its own process may turn it off.
    gc_pause: bool = True
    # Also consume the user_profile topic: deletes and privacy changes drop state.
    follow_profiles: bool = True
    # Malformed or foreign messages go here (default kafka.names.learner_dlq_topic).
    dlq_topic: str | None = None
    # After a restart, embeddings changed this recently are written to Redis again (a crash
    # between a commit and its Redis write would otherwise leave the key stale until TTL).
    redis_resync_s: float = Field(default=600.0, ge=0)
    # Back-off while PostgreSQL or Redis is unavailable (seconds, doubled up to the max).
    retry_initial_s: float = Field(default=0.2, gt=0)
    retry_max_s: float = Field(default=10.0, gt=0)
    redis_timeout_s: float = Field(default=2.0, gt=0)
    # Fault-injection tests only: sleep this long inside each batch's transaction, so that a
    # kill -9 lands mid-batch.  Never set in production.
    debug_commit_delay_s: float = Field(default=0.0, ge=0, le=60)
    # Prometheus exposition (0 disables the HTTP server).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9466, ge=0, le=65535)


class NightlySettings(Section):
    """The nightly job, its scheduler and the feature export."""

    env_prefix: ClassVar[str] = ENV_PREFIX + "NIGHTLY_"

    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    # Snapshots with as_of older than (today - retention_days + 1) are dropped by each run.
    retention_days: int = Field(default=35, ge=1)
    # Session work_mem of the job's connections (the refresh diff and the hash aggregates).
    work_mem: str = "64MB"
    export_chunk_rows: int = Field(default=100_000, ge=1)
    # How far back the scheduler looks for a missed run at start-up.
    catch_up_days: int = Field(default=7, ge=0)
    # How user_signal_rollups is refreshed (nightly.job's docstring): 'swap' or 'concurrently'.
    refresh_mode: RefreshMode = "swap"
    # The swap's longest wait for the view's lock per attempt: the most a reader is held up.
    swap_lock_timeout_ms: int = Field(default=100, ge=1, le=60_000)
    swap_attempts: int = Field(default=25, ge=1)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {v!r}") from exc
        return v

    @property
    def tz(self) -> ZoneInfo:
        """The job's time zone."""
        return ZoneInfo(self.timezone)


class ExperimentsSettings(Section):
    """Experiments (issue 15): exposure recording and the results statement.

    First exposures of readers to flags are group-committed: the first read waits for a
    window shared by concurrent first reads, then one INSERT.
    """

    env_prefix: ClassVar[str] = ENV_PREFIX + "EXPERIMENTS_"

    record_exposures: bool = True
    exposure_window_ms: float = env("EXPOSURE_WINDOW_MS", default=2.0, ge=0, le=1000)
    exposure_max_rows: int = env("EXPOSURE_MAX_ROWS", default=2000, ge=1)
    # Group commits in flight at once (the next group fills while one commits).
    exposure_concurrency: int = env("EXPOSURE_CONCURRENCY", default=2, ge=1, le=16)
    # (flag, user, rules version) remembered in process as recorded (for reads without Redis).
    exposure_memory_size: int = env("EXPOSURE_MEMORY_SIZE", default=100_000, ge=0)
    # Shutdown keeps retrying pending exposures this long while PostgreSQL is unreachable.
    exposure_drain_timeout_s: float = env("EXPOSURE_DRAIN_TIMEOUT_S", default=10.0, ge=0)
    # work_mem of the results statement (one hash entry per exposed reader).
    results_work_mem: str = Field(default="256MB", pattern=r"^[0-9]+(kB|MB|GB)$")


class PlatformSettings(Section):
    """``personalization up`` (the supervisor) and ``personalization status`` (issue 19).

    The ``up`` options (``--only``, ``--workers``, ``--log-dir``, ...) override these.
    """

    env_prefix: ClassVar[str] = ENV_PREFIX + "PLATFORM_"

    # Where the supervisor keeps its state file and lock (``<data_dir>/platform/``), and
    # the embedded stack its data when it is started (the stack's own default is the same).
    data_dir: Path = env("DATA_DIR", default=Path(".personalization"))
    # Roles this node runs (``up --only``): empty means every registered component.
    # A comma-separated list (``api,learner``) like ``--only``, or a JSON array.
    roles: tuple[str, ...] = ()
    # API server worker processes and learner processes.
    api_workers: int = Field(default=1, ge=1, le=64)
    learners: int = Field(default=1, ge=1, le=64)
    # One log file per component here (``up --log-dir``) instead of the stream on stderr.
    log_dir: Path | None = None
    # Kafka consumer group of the cache-invalidation consumer (`cdc invalidate-cache --group-id`).
    invalidator_group: str = Field(default="personalization-cache-invalidation", min_length=1)
    # Restart back-off of a crashed child: doubled from the initial delay up to the max; a
    # child that stayed up this long is healthy again (its next crash waits the initial delay).
    restart_initial_s: float = Field(default=0.5, gt=0)
    restart_max_s: float = Field(default=30.0, gt=0)
    stable_after_s: float = Field(default=30.0, gt=0)
    # This many crashes in a row mark a child ``failing`` (it is still retried at the max delay).
    failing_after: int = Field(default=5, ge=1)
    # Bound of an orderly shutdown (SIGTERM to ``up``): every child is gone by then.
    stop_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    # How long the API server may take to answer /healthz after it was started.
    api_start_timeout_s: float = Field(default=120.0, gt=0)

    @field_validator("roles", mode="before")
    @classmethod
    def _split_roles(cls, value: object) -> object:
        # ``PERSONALIZATION_PLATFORM_ROLES=api,learner``: not JSON, so it arrives as the raw string.
        if isinstance(value, str):
            return tuple(r.strip() for r in value.split(",") if r.strip())
        return value

    @property
    def state_dir(self) -> Path:
        """The supervisor's own directory under the data directory (state file and lock)."""
        return self.data_dir / "platform"


class RecommendSettings(Section):
    """Recommendations (issue 16): candidate generation, ranking, training and model refresh.

    The source weights were chosen with ``personalization eval recommendations`` on
    simulated readers (docs/recommendations.md); every weight multiplies the source's
    scores after they are scaled to [0, 1] within the source.
    """

    env_prefix: ClassVar[str] = ENV_PREFIX + "RECOMMEND_"

    # ---- ranking --------------------------------------------------------------------
    weight_continue: float = Field(default=2.0, ge=0)
    weight_similar: float = Field(default=2.0, ge=0)
    weight_collaborative: float = Field(default=0.5, ge=0)
    weight_embedding: float = Field(default=0.2, ge=0)
    weight_trending: float = Field(default=0.05, ge=0)
    weight_onboarding: float = Field(default=0.6, ge=0)
    # 0: blend scores scaled by each source's best; k > 0: blend ranks, k / (k + rank).
    rank_fusion_k: float = Field(default=0.0, ge=0)
    # Candidates each source contributes before merging (per requested item).
    candidates_per_item: int = Field(default=5, ge=1, le=100)
    min_candidates: int = Field(default=50, ge=1, le=5000)
    # Diversity: at most this many items of one series, and at most this share of the
    # list put there by one source alone.
    max_per_series: int = Field(default=6, ge=1)
    max_source_share: float = Field(default=0.7, gt=0, le=1)

    # ---- reader history -------------------------------------------------------------
    # Most recent events read per request (personalization_events_user_time_idx).
    history_events: int = Field(default=500, ge=1, le=20_000)
    # Most recent positive passages used as seeds of item-to-item neighbours.
    seeds: int = Field(default=3, ge=1, le=50)
    # Signal types that count as consumed (excluded unless repeats are allowed).
    consumed_signal_types: tuple[str, ...] = ("view", "read", "complete", "bookmark", "share")
    skip_signal_types: tuple[str, ...] = ("skip",)
    # Next positions of a series offered by "continue reading".
    continue_next: int = Field(default=6, ge=1, le=20)

    # ---- trending -------------------------------------------------------------------
    trending_half_life_days: float = Field(default=3.0, gt=0)
    trending_window_days: int = Field(default=14, ge=1, le=365)
    trending_refresh_s: float = Field(default=60.0, ge=0)

    # ---- training (nightly) ---------------------------------------------------------
    cf_factors: int = Field(default=64, ge=2, le=512)
    cf_iterations: int = Field(default=15, ge=1, le=200)
    cf_regularization: float = Field(default=0.05, ge=0)
    # Confidence of ALS: 1 + alpha * decayed weight.
    cf_alpha: float = Field(default=20.0, gt=0)
    neighbours: int = Field(default=30, ge=1, le=200)
    # Shrinkage of co-engagement cosine (damps pairs seen by few readers).
    neighbour_shrink: float = Field(default=5.0, ge=0)
    # Most recent passages per reader fed to co-engagement (bounds its cost).
    neighbour_history: int = Field(default=200, ge=2)

    # ---- index ----------------------------------------------------------------------
    # Below this many vectors search is exact; above, an HNSW index (usearch) is built.
    ann_min_items: int = Field(default=20_000, ge=0)
    ann_connectivity: int = Field(default=16, ge=4, le=128)
    ann_expansion_add: int = Field(default=128, ge=8)
    ann_expansion_search: int = Field(default=128, ge=8)
    ann_threads: int = Field(default=0, ge=0, description="0: all cores")
    # How often a serving process checks PostgreSQL for a new catalogue or model version.
    refresh_s: float = Field(default=5.0, ge=0.1)
    # BLAS threads of a serving process (0: leave as configured).  A request's matrix-vector
    # products are small: OpenBLAS's thread pool only adds hand-offs, measured 6x slower on
    # two busy cores.
    blas_threads: int = Field(default=1, ge=0)


class _FlatEnvironment(PydanticBaseSettingsSource):
    """Reads the flat ``PERSONALIZATION_*`` variables into the tree's sections."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Not used: __call__ builds the whole nested dict at once.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        environ = {k.upper(): v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX)}
        out: dict[str, dict[str, Any]] = {}
        for section, model, name, info in _fields(self.settings_cls):
            var = model.env_name(name)
            if var in environ:
                raw = environ[var]
                out.setdefault(section, {})[name] = _decode(raw) if self.field_is_complex(info) else raw
        return out


def _decode(raw: str) -> Any:
    # Complex values (dicts, tuples) are JSON, as pydantic-settings reads them.
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _fields(root: type[BaseModel]) -> Iterator[tuple[str, type[Section], str, FieldInfo]]:
    for section, info in root.model_fields.items():
        model = info.annotation
        assert isinstance(model, type) and issubclass(model, Section), section
        for name, field_info in model.model_fields.items():
            yield section, model, name, field_info


class Settings(BaseSettings):
    """The settings tree; see the module docstring for how variables map to fields."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    database: DatabaseSettings = DatabaseSettings()
    redis: RedisSettings = RedisSettings()
    kafka: KafkaSettings = KafkaSettings()
    ingest: IngestSettings = IngestSettings()
    http: HttpSettings = HttpSettings()
    auth: AuthSettings = AuthSettings()
    erase: EraseSettings = EraseSettings()
    workers: WorkersSettings = WorkersSettings()
    decay: DecaySettings = DecaySettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    serving: ServingSettings = ServingSettings()
    cdc: CdcSettings = CdcSettings()
    learner: LearnerSettings = LearnerSettings()
    nightly: NightlySettings = NightlySettings()
    experiments: ExperimentsSettings = ExperimentsSettings()
    platform: PlatformSettings = PlatformSettings()
    recommend: RecommendSettings = RecommendSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Constructor values first, then the flat environment variables (nothing else)."""
        return init_settings, _FlatEnvironment(settings_cls)

    def signal_types(self) -> SignalTypes:
        """The signal-type registry: built-in types, the decay's configured ones and ``ingest``'s extra ones.

        Ingest accepts :meth:`SignalTypes.accepts`; the learner and recompute score ``known`` only.
        """
        return signal_types(extra=self.ingest.signal_types_extra, learner=self.decay.signals,
                            open_types=self.ingest.signal_types_open)

    def replace(self, **sections: dict[str, Any]) -> Settings:
        """A copy with some fields of some sections changed (validated): ``replace(cdc={"slot_name": ...})``."""
        data = self.model_dump()
        for name, values in sections.items():
            data[name] = {**data[name], **values}
        return Settings.model_validate(data)


def env_names() -> dict[str, str]:
    """Every environment variable the tree reads, mapped to its dotted setting (``cdc.slot_name``)."""
    return {model.env_name(name): f"{section}.{name}" for section, model, name, _ in _fields(Settings)}


def describe_error(exc: ValidationError) -> str:
    """One line naming the environment variable (or setting) of each invalid value."""
    names = {tuple(path.split(".")): var for var, path in env_names().items()}
    parts = []
    for e in exc.errors():
        loc = tuple(str(p) for p in e["loc"])
        parts.append(f"{names.get(loc[:2], '.'.join(loc))}: {e['msg']}")
    return "; ".join(parts)

def configured_service_urls() -> bool:
    """True when any service URL variable is set in the environment."""
    return any(os.environ.get(v) for v in SERVICE_URL_VARS)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
