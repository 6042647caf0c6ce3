"""Item to item: neighbours of the reader's latest passages (co-engagement, nightly; content embeddings, live)."""

from __future__ import annotations

from personalization.recommend.sources.base import Candidate, Context, SourceName

# Weight of embedding similarity next to co-engagement (both cosines).
EMBEDDING_SHARE = 0.5
# Each older seed counts this much less than the one before.
SEED_DECAY = 0.8


def neighbour_scores(ctx: Context, seed: int, k: int) -> dict[int, float]:
    """Similarity of passages to ``seed``: co-engagement cosine plus a share of embedding cosine."""
    out: dict[int, float] = {}
    nb = ctx.models.neighbours
    if nb is not None:
        for p, s in nb.of(seed):
            out[p] = out.get(p, 0.0) + s
    index = ctx.models.embedding_index
    catalog = ctx.models.catalog
    if index is not None and catalog.has_vector[seed]:
        ids, scores = index.search(catalog.vectors[seed], k + 1)
        for p, s in zip(ids.tolist(), scores.tolist(), strict=True):
            if p != seed and s > 0:
                out[p] = out.get(p, 0.0) + EMBEDDING_SHARE * s
    out.pop(seed, None)
    return out


class SimilarSource:
    """Passages like the ones the reader (or session) engaged with last; reason ``similar_to:<content_id>``."""

    name: SourceName = "similar"

    def candidates(self, ctx: Context, n: int) -> list[Candidate]:
        best: dict[int, tuple[float, str]] = {}
        factor = 1.0
        for seed, label in ctx.seeds[: ctx.seed_limit]:
            for p, s in neighbour_scores(ctx, seed, n).items():
                if not ctx.allowed(p):
                    continue
                score = factor * s
                prev = best.get(p)
                if prev is None:
                    best[p] = (score, label)
                else:
                    # Several seeds agreeing make an item stronger; the reason names the strongest.
                    best[p] = (prev[0] + score, prev[1] if prev[0] >= score else label)
            factor *= SEED_DECAY
        ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:n]
        return [Candidate(p, s, f"similar_to:{label}") for p, (s, label) in ranked]
