"""A reader's recent events, folded into what the sources need (pure: no I/O).

Weights follow :mod:`personalization.core.decay` (one definition for the learner, the
nightly job and here): each event counts ``scale(signal) * |weight| * 2 ** (-age / half_life)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from personalization.core.decay import DecayConfig
from personalization.recommend.catalog import Catalog


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """One stored event of the reader (``at``: epoch seconds)."""

    content_id: str
    signal_type: str
    signal_weight: float
    at: float


@dataclass
class ReaderHistory:
    """Per passage: decayed weight, consumption, skips, recency; translation use; series progress."""

    weights: dict[int, float] = field(default_factory=dict)
    consumed: set[int] = field(default_factory=set)
    skipped: set[int] = field(default_factory=set)
    # Positive passages, most recent first: (passage, content id of the latest event, time).
    recent_positive: list[tuple[int, str, float]] = field(default_factory=list)
    translations: Counter[str] = field(default_factory=Counter)
    # series -> (furthest position reached, time of the latest event in the series)
    series_progress: dict[str, tuple[int, float]] = field(default_factory=dict)
    unknown_content: set[str] = field(default_factory=set)
    events: int = 0

    @property
    def empty(self) -> bool:
        return not self.weights

    def positive_items(self) -> dict[int, float]:
        """Passages with a positive decayed weight."""
        return {p: w for p, w in self.weights.items() if w > 0}

    def translation_order(self) -> list[str]:
        """Translations the reader uses, most used first."""
        return [t for t, _ in self.translations.most_common()]


def fold_history(
    events: Iterable[HistoryEvent],
    catalog: Catalog,
    decay: DecayConfig,
    now: float,
    *,
    consumed_types: Iterable[str],
    skip_types: Iterable[str],
) -> ReaderHistory:
    """Fold events (any order) into a :class:`ReaderHistory` as of ``now``."""
    consumed_set, skip_set = frozenset(consumed_types), frozenset(skip_types)
    h = ReaderHistory()
    latest: dict[int, tuple[float, str]] = {}
    for ev in events:
        h.events += 1
        p = catalog.passage_of_content(ev.content_id)
        if p is None:
            h.unknown_content.add(ev.content_id)
            continue
        d = decay.for_signal(ev.signal_type)
        w = d.scale * abs(ev.signal_weight) * 2.0 ** (-(now - ev.at) / d.half_life_s)
        h.weights[p] = h.weights.get(p, 0.0) + w
        if ev.signal_type in skip_set:
            h.skipped.add(p)
            continue
        if ev.signal_type in consumed_set:
            h.consumed.add(p)
        c = catalog.content_index[ev.content_id]
        t = catalog.translation[c]
        if t is not None:
            h.translations[t] += 1
        if d.scale > 0:
            prev = latest.get(p)
            if prev is None or ev.at > prev[0]:
                latest[p] = (ev.at, ev.content_id)
            series = catalog.passage_series[p]
            pos = catalog.passage_position[p]
            if series is not None and pos is not None:
                old = h.series_progress.get(series)
                h.series_progress[series] = (max(pos, old[0]) if old else pos, max(ev.at, old[1]) if old else ev.at)
    h.recent_positive = sorted(((p, cid, at) for p, (at, cid) in latest.items()), key=lambda x: -x[2])
    # A passage read after being skipped is no longer "skipped".
    h.skipped -= {p for p in h.skipped if h.weights.get(p, 0.0) > 0}
    return h
