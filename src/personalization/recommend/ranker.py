"""Merging and ranking: the one place where candidates of every source meet.

Like Gorse's recommender merge, each source proposes its own candidates; here they are
blended by score rather than interleaved:

1. within a source, scores are scaled to [0, 1] (divided by the source's best), so a
   source's weight (``RecommendSettings.weight_*``) is its whole say;
2. an item's score is the weighted sum over the sources that proposed it, so agreement
   between sources lifts an item, and ``reasons`` lists those sources, strongest first;
3. excluded passages never pass (the sources already skip them; checked again here);
4. diversity: at most ``max_per_series`` items of one series, and at most
   ``max_source_share`` of the list owed to one source alone; when the caps would leave
   the list short, the best capped items fill it at the end (so a list's scores descend
   except where those fill-ins follow);
5. each passage is shown in one translation: the reader's preferred one when the
   catalogue has it, else the one they use most (:meth:`Catalog.pick_translation`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from personalization.recommend.catalog import Catalog
from personalization.recommend.sources.base import Candidate, SourceName


@dataclass(frozen=True, slots=True)
class RankedItem:
    """One recommendation: the content id shown, its blended score, and why it is there."""

    content_id: str
    score: float
    reasons: list[str]


@dataclass(frozen=True)
class RankPolicy:
    """Weights per source and the diversity caps."""

    weights: Mapping[SourceName, float]
    max_per_series: int
    max_source_share: float
    # 0: scores scaled by the source's best; k > 0: by rank, k / (k + rank) (reciprocal rank fusion).
    rank_k: float = 0.0


def merge(by_source: Mapping[SourceName, Sequence[Candidate]], weights: Mapping[SourceName, float],
          excluded: set[int], rank_k: float = 0.0) -> list[tuple[int, float, list[tuple[float, str, SourceName]]]]:
    """(passage, score, [(contribution, reason, source)...]), best first."""
    score: dict[int, float] = {}
    parts: dict[int, list[tuple[float, str, SourceName]]] = {}
    for source, cands in by_source.items():
        w = weights.get(source, 0.0)
        if w <= 0 or not cands:
            continue
        top = max(c.score for c in cands)
        if not (top > 0 and math.isfinite(top)):
            continue
        for r, c in enumerate(cands):
            if c.item in excluded or c.score <= 0:
                continue
            contribution = w * (rank_k / (rank_k + r) if rank_k > 0 else c.score / top)
            score[c.item] = score.get(c.item, 0.0) + contribution
            parts.setdefault(c.item, []).append((contribution, c.reason, source))
    # Ties: the passage index (catalogue order) keeps the order repeatable.
    ranked = sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))
    # Each item's parts stay in source order here; rank() sorts those of the items it looks at.
    return [(p, s, parts[p]) for p, s in ranked]


def rank(
    by_source: Mapping[SourceName, Sequence[Candidate]],
    policy: RankPolicy,
    catalog: Catalog,
    limit: int,
    excluded: set[int],
    translations: Sequence[str],
) -> list[RankedItem]:
    """The final list of at most ``limit`` items (module docstring for the rules)."""
    merged = merge(by_source, policy.weights, excluded, policy.rank_k)
    source_cap = max(1, math.ceil(policy.max_source_share * limit))
    per_series: dict[str, int] = {}
    per_source: dict[SourceName, int] = {}
    chosen: list[int] = []
    spill: list[int] = []
    for i, (p, _, parts) in enumerate(merged):
        if len(chosen) >= limit:
            break
        parts.sort(key=lambda t: -t[0])
        series = catalog.passage_series[p]
        # "Owed to one source alone": only that source proposed it.
        alone = parts[0][2] if len({src for _, _, src in parts}) == 1 else None
        if (series is not None and per_series.get(series, 0) >= policy.max_per_series) or (
            alone is not None and per_source.get(alone, 0) >= source_cap
        ):
            spill.append(i)
            continue
        chosen.append(i)
        if series is not None:
            per_series[series] = per_series.get(series, 0) + 1
        if alone is not None:
            per_source[alone] = per_source.get(alone, 0) + 1
    if len(chosen) < limit:
        # Capped items only fill what is left, after every item within the caps.
        chosen = chosen + spill[: limit - len(chosen)]
    out: list[RankedItem] = []
    for i in chosen:
        p, s, parts = merged[i]
        parts.sort(key=lambda t: -t[0])
        reasons: list[str] = []
        for _, reason, _ in parts:
            if reason not in reasons:
                reasons.append(reason)
        out.append(RankedItem(catalog.content_ids[catalog.pick_translation(p, translations)], round(s, 6), reasons))
    return out
