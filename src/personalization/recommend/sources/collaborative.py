"""Collaborative filtering: the nightly ALS item factors, the reader folded in from their history."""

from __future__ import annotations

from personalization.recommend.sources.base import Candidate, Context, SourceName


class CollaborativeSource:
    """Items whose ALS factors best match the reader's (computed per request)."""

    name: SourceName = "collaborative"

    def candidates(self, ctx: Context, n: int) -> list[Candidate]:
        cf = ctx.models.cf
        if cf is None or ctx.history.empty:
            return []
        user = cf.fold_in(ctx.history.positive_items())
        if user is None:
            return []
        ids, scores = cf.index.search(user, n + min(len(ctx.excluded), 3 * n) + (3 * n if ctx.content_type else 0))
        out = [
            Candidate(int(p), float(s), "collaborative")
            for p, s in zip(ids, scores, strict=True)
            if s > 0 and ctx.allowed(int(p))
        ]
        return out[:n]
