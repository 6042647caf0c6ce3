"""Settings of the read path (environment prefix ``PERSONALIZATION_``, like :class:`Settings`)."""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServingSettings(BaseSettings):
    """Tunables of preferences, flags and reranking; every field maps to ``PERSONALIZATION_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="PERSONALIZATION_", extra="ignore")

    # The one embedding dimension of the deployment (users and content alike).
    embedding_dim: int = Field(default=384, ge=1, le=8192)
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
