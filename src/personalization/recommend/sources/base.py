"""The interface every candidate source implements, and the request context they share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from personalization.recommend.ann import VectorIndex
from personalization.recommend.catalog import Catalog
from personalization.recommend.history import ReaderHistory
from personalization.recommend.models import AlignedCF, AlignedNeighbours, Trending

SourceName = Literal["continue", "similar", "collaborative", "embedding", "trending", "onboarding"]
SOURCE_NAMES: tuple[SourceName, ...] = ("continue", "similar", "collaborative", "embedding", "trending", "onboarding")


@dataclass(frozen=True, slots=True)
class Candidate:
    """One passage proposed by a source; ``reason`` is what the response shows (``similar_to:<id>``...)."""

    item: int
    score: float
    reason: str


@dataclass
class Models:
    """Everything trained or indexed that the sources read, for one catalogue version."""

    catalog: Catalog
    embedding_index: VectorIndex | None  # over catalog.vectors
    cf: AlignedCF | None
    neighbours: AlignedNeighbours | None
    trending: Trending


@dataclass
class Context:
    """One request: the reader's history and profile, what is excluded, the filter."""

    models: Models
    history: ReaderHistory
    excluded: set[int] = field(default_factory=set)
    user_vector: npt.NDArray[np.float32] | None = None
    # (trait type, values, confidence) of the reader's onboarding traits and profile fields.
    traits: Sequence[tuple[str, Sequence[str], float]] = ()
    content_type: str | None = None
    # Seeds for item-to-item: (passage, content id), most relevant first.
    seeds: Sequence[tuple[int, str]] = ()
    seed_limit: int = 5
    continue_next: int = 2

    def allowed(self, p: int) -> bool:
        """Not excluded and of the requested content type."""
        if p in self.excluded:
            return False
        return self.content_type is None or self.models.catalog.passage_type[p] == self.content_type


class CandidateSource(Protocol):
    """A small module that proposes passages; merging and ranking happen in ``recommend.ranker``."""

    name: SourceName

    def candidates(self, ctx: Context, n: int) -> list[Candidate]:
        """Up to ``n`` allowed candidates, best first, scores comparable within the source."""
        ...
