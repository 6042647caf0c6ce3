"""Settings of the recommender (env prefix ``PERSONALIZATION_RECOMMEND_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from personalization.recommend.ann import IndexParams


class RecommendSettings(BaseSettings):
    """Tunables of candidate generation, ranking, training and model refresh.

    The source weights were chosen with ``personalization eval recommendations`` on
    simulated readers (docs/recommendations.md); every weight multiplies the source's
    scores after they are scaled to [0, 1] within the source.
    """

    model_config = SettingsConfigDict(env_prefix="PERSONALIZATION_RECOMMEND_", extra="ignore")

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

    def index_params(self) -> IndexParams:
        """The ANN parameters of these settings."""
        return IndexParams(self.ann_min_items, self.ann_connectivity, self.ann_expansion_add,
                           self.ann_expansion_search, self.ann_threads)
