"""Candidate sources, one module each, behind :class:`~personalization.recommend.sources.base.CandidateSource`."""

from personalization.recommend.sources.base import SOURCE_NAMES, Candidate, CandidateSource, Context, Models
from personalization.recommend.sources.collaborative import CollaborativeSource
from personalization.recommend.sources.continuing import ContinueSource
from personalization.recommend.sources.embedding import EmbeddingSource
from personalization.recommend.sources.neighbours import SimilarSource, neighbour_scores
from personalization.recommend.sources.onboarding import OnboardingSource
from personalization.recommend.sources.trending import TrendingSource

__all__ = [
    "SOURCE_NAMES",
    "Candidate",
    "CandidateSource",
    "CollaborativeSource",
    "Context",
    "ContinueSource",
    "EmbeddingSource",
    "Models",
    "OnboardingSource",
    "SimilarSource",
    "TrendingSource",
    "neighbour_scores",
]
