"""One recommendation from a context: run the sources, merge and rank (pure: no I/O).

Serving (:mod:`personalization.recommend.service`) and evaluation
(:mod:`personalization.recommend.evaluate`) both call :func:`recommend`, so what is
measured is what is served.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from personalization.config import RecommendSettings
from personalization.recommend.catalog import tag_key
from personalization.recommend.ranker import RankedItem, RankPolicy, rank
from personalization.recommend.sources import (
    CandidateSource,
    CollaborativeSource,
    Context,
    ContinueSource,
    EmbeddingSource,
    OnboardingSource,
    SimilarSource,
    TrendingSource,
)
from personalization.recommend.sources.base import SourceName

SOURCES: Mapping[SourceName, CandidateSource] = {
    "continue": ContinueSource(),
    "similar": SimilarSource(),
    "collaborative": CollaborativeSource(),
    "embedding": EmbeddingSource(),
    "trending": TrendingSource(),
    "onboarding": OnboardingSource(),
}

Mode = Literal["personalized", "non_personalized", "trending_only", "session"]
MODE_SOURCES: Mapping[Mode, tuple[SourceName, ...]] = {
    "personalized": ("continue", "similar", "collaborative", "embedding", "trending", "onboarding"),
    # Readers outside the flag: what everybody gets, plus picking up where they left off.
    "non_personalized": ("continue", "trending"),
    # Privacy levels that forbid personalization: nothing derived from the reader.
    "trending_only": ("trending",),
    # Anonymous readers: the session's recent content is all there is.
    "session": ("continue", "similar", "trending"),
}


def policy_from(settings: RecommendSettings) -> RankPolicy:
    """The ranking policy of the settings."""
    return RankPolicy(
        weights={
            "continue": settings.weight_continue,
            "similar": settings.weight_similar,
            "collaborative": settings.weight_collaborative,
            "embedding": settings.weight_embedding,
            "trending": settings.weight_trending,
            "onboarding": settings.weight_onboarding,
        },
        max_per_series=settings.max_per_series,
        max_source_share=settings.max_source_share,
        rank_k=settings.rank_fusion_k,
    )


def recommend(ctx: Context, sources: Sequence[SourceName], policy: RankPolicy, settings: RecommendSettings,
              limit: int, translations: Sequence[str]) -> list[RankedItem]:
    """Candidates of ``sources`` for ``ctx``, merged and ranked into at most ``limit`` items."""
    n = max(settings.min_candidates, settings.candidates_per_item * limit)
    by_source = {name: SOURCES[name].candidates(ctx, n) for name in sources}
    return rank(by_source, policy, ctx.models.catalog, limit, ctx.excluded, translations)


def trait_values(value: object) -> list[str]:
    """The strings of a trait value (JSON: a string, a list of strings, or an object's values)."""
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int | float):
        return [str(value)]
    if isinstance(value, list):
        return [s for v in value for s in trait_values(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in trait_values(v)]
    return []


def profile_traits(profile: Mapping[str, str | None], traits: Iterable[tuple[str, object, float]]
                   ) -> list[tuple[str, list[str], float]]:
    """Onboarding matches: ``spiritual_goal`` and ``denomination`` (confidence 1) and each trait's values."""
    out: list[tuple[str, list[str], float]] = []
    for name in ("spiritual_goal", "denomination"):
        v = profile.get(name)
        if v:
            out.append((name, [v], 1.0))
    for trait_type, value, confidence in traits:
        values = [v for v in trait_values(value) if tag_key(v)]
        if values:
            out.append((trait_type, values, float(confidence)))
    return out
