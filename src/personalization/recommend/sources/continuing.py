"""Continue reading: the next positions of the series (books, reading plans) the reader is in."""

from __future__ import annotations

import numpy as np

from personalization.recommend.sources.base import Candidate, Context, SourceName


class ContinueSource:
    """For each series, most recently active first, the next unread positions after the furthest reached."""

    name: SourceName = "continue"

    def candidates(self, ctx: Context, n: int) -> list[Candidate]:
        catalog = ctx.models.catalog
        progress = sorted(ctx.history.series_progress.items(), key=lambda kv: -kv[1][1])
        out: list[Candidate] = []
        for rank, (series, (furthest, _)) in enumerate(progress):
            positions = catalog.series_positions.get(series)
            if positions is None:
                continue
            members = catalog.series_passages[series]
            start = int(np.searchsorted(positions, furthest, side="right"))
            taken = 0
            for p in members[start:].tolist():
                if taken >= ctx.continue_next:
                    break
                if p in ctx.history.consumed or not ctx.allowed(p):
                    continue
                # The next position of the latest series first; each step further counts less.
                out.append(Candidate(p, 1.0 / (1.0 + rank) * (0.8**taken), "continue"))
                taken += 1
            if len(out) >= n:
                break
        return out[:n]
