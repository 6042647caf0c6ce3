"""Trending: time-decayed engagement of every reader (also the non-personalized list)."""

from __future__ import annotations

from personalization.recommend.sources.base import Candidate, Context, SourceName


class TrendingSource:
    """The most engaged-with passages lately, as computed by the last trending refresh."""

    name: SourceName = "trending"

    def candidates(self, ctx: Context, n: int) -> list[Candidate]:
        trending = ctx.models.trending
        out: list[Candidate] = []
        # In chunks: the whole order of a large catalogue is not needed for n items.
        step = max(4 * n, 256)
        for start in range(0, trending.order.size, step):
            for p in trending.order[start : start + step].tolist():
                if ctx.allowed(p):
                    out.append(Candidate(p, float(trending.scores[p]), "trending"))
                    if len(out) >= n:
                        return out
        return out
