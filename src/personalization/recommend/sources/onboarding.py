"""Onboarding: for readers with little history, content whose tags match their traits and profile."""

from __future__ import annotations

from personalization.recommend.catalog import tag_key
from personalization.recommend.sources.base import Candidate, Context, SourceName

# Readers with at least this many positive passages are served by their history instead.
MAX_HISTORY = 5


class OnboardingSource:
    """Tags equal to a trait value (``peace``) or to ``type:value`` (``spiritual_goal:peace``)."""

    name: SourceName = "onboarding"

    def candidates(self, ctx: Context, n: int) -> list[Candidate]:
        if len(ctx.history.positive_items()) >= MAX_HISTORY or not ctx.traits:
            return []
        catalog = ctx.models.catalog
        trending = ctx.models.trending.scores
        top = float(trending.max()) if trending.size else 0.0
        score: dict[int, float] = {}
        why: dict[int, tuple[float, str]] = {}
        for trait_type, values, confidence in ctx.traits:
            for value in values:
                for tag in (tag_key(value), tag_key(f"{trait_type}:{value}")):
                    members = catalog.tag_passages.get(tag)
                    if members is None:
                        continue
                    for p in members.tolist():
                        score[p] = score.get(p, 0.0) + confidence
                        if p not in why or why[p][0] < confidence:
                            why[p] = (confidence, trait_type)
        # Among equal matches, the more engaged-with first.
        ranked = sorted(
            (p for p in score if ctx.allowed(p)),
            key=lambda p: -(score[p] + (0.1 * float(trending[p]) / top if top > 0 else 0.0)),
        )
        return [Candidate(p, score[p], f"onboarding:{why[p][1]}") for p in ranked[:n]]
