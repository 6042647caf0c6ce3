"""Nearest content to the reader's learned embedding (the online learner's ``user:{id}:embedding``)."""

from __future__ import annotations

from personalization.recommend.sources.base import Candidate, Context, SourceName


class EmbeddingSource:
    """ANN search of the passage vectors with the reader's unit embedding."""

    name: SourceName = "embedding"

    def candidates(self, ctx: Context, n: int) -> list[Candidate]:
        index = ctx.models.embedding_index
        if ctx.user_vector is None or index is None:
            return []
        # Ask for more than n: excluded and filtered passages are dropped afterwards.
        extra = min(len(ctx.excluded), 3 * n) + (3 * n if ctx.content_type else 0)
        ids, scores = index.search(ctx.user_vector, n + extra)
        out = [
            Candidate(int(p), float(s), "embedding") for p, s in zip(ids, scores, strict=True) if ctx.allowed(int(p))
        ]
        return out[:n]
