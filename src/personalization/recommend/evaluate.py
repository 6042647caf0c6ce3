"""Offline evaluation: a time-based split of the stored events, this recommender against baselines.

The events of readers whose privacy level permits personalization are split at a cut-off
(``holdout_days`` before the last event, or the time leaving ``holdout_fraction`` of the
events after it).  Everything is trained on the older part only, as of the cut-off: CF
factors, co-engagement neighbours, trending, and each reader's embedding (the online
learner's formula, :mod:`personalization.learner.model`).  A test reader is one with a
positive event after the cut-off on a passage they had not consumed before it; the
relevant set is those passages.  Every method recommends ``k`` passages per test reader,
never one the reader consumed before the cut-off:

* ``recommender``: this recommender (:func:`engine.recommend`, all sources blended);
* ``popularity``: most engaged-with passages before the cut-off;
* ``implicit_als``, ``implicit_bpr``, ``implicit_item_cosine``: the ``implicit`` library's
  ALS, BPR and item-item cosine on the same training matrix;
* ``only_<source>``: each source alone, to show what the blend adds.

Metrics: ndcg@k (binary relevance), recall@k (relevant found / relevant, capped at k),
coverage (distinct passages recommended / catalogue passages).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from personalization.config import RecommendSettings
from personalization.core import embedding as emb
from personalization.core.decay import DAY_S, DecayConfig
from personalization.errors import FieldError, InvalidInput
from personalization.learner.model import ContentVector, add_to_embedding
from personalization.recommend.ann import IndexParams, VectorIndex
from personalization.recommend.catalog import Catalog
from personalization.recommend.engine import MODE_SOURCES, policy_from, profile_traits, recommend
from personalization.recommend.history import HistoryEvent, ReaderHistory, fold_history
from personalization.recommend.loader import catalog_from_rows
from personalization.recommend.models import Trending
from personalization.recommend.nightly import load_events
from personalization.recommend.sources import Context, Models
from personalization.recommend.sources.base import SOURCE_NAMES, SourceName
from personalization.recommend.training import (
    EventColumns,
    co_engagement,
    interaction_matrix,
    passage_codes,
    train_cf,
    trending_scores,
)
from personalization.store.db import Database
from personalization.store.recommend import RecommendStore

I64 = npt.NDArray[np.int64]


@dataclass
class MethodScore:
    """One method's figures."""

    ndcg: float
    recall: float
    coverage: float
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return {"ndcg": round(self.ndcg, 4), "recall": round(self.recall, 4), "coverage": round(self.coverage, 4),
                "seconds": round(self.seconds, 2)}


@dataclass
class EvalReport:
    """The split and every method's figures."""

    k: int
    cutoff: datetime
    train_events: int
    test_readers: int
    passages: int
    methods: dict[str, MethodScore] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"k": self.k, "cutoff": self.cutoff.isoformat(), "train_events": self.train_events,
                "test_readers": self.test_readers, "passages": self.passages,
                "methods": {m: s.as_dict() for m, s in self.methods.items()}}


def metrics(recs: Sequence[Sequence[int]], truth: Sequence[set[int]], k: int, catalog_size: int) -> tuple[
        float, float, float]:
    """(mean ndcg@k, mean recall@k, coverage) of ranked lists against relevant sets."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ndcg = recall = 0.0
    seen: set[int] = set()
    for rec, rel in zip(recs, truth, strict=True):
        top = list(rec)[:k]
        seen.update(top)
        hits = [1.0 if p in rel else 0.0 for p in top]
        dcg = float(np.dot(hits, discounts[: len(hits)])) if hits else 0.0
        ideal = float(discounts[: min(len(rel), k)].sum())
        ndcg += dcg / ideal if ideal > 0 else 0.0
        recall += sum(hits) / min(len(rel), k) if rel else 0.0
    n = max(len(truth), 1)
    return ndcg / n, recall / n, len(seen) / max(catalog_size, 1)


def choose_cutoff(at: npt.NDArray[np.float64], holdout_days: float | None, holdout_fraction: float | None) -> float:
    """The split time (epoch seconds)."""
    if at.size == 0:
        raise InvalidInput([FieldError(["events"], "no stored events of readers to evaluate on")])
    if holdout_days is not None:
        return float(at.max()) - holdout_days * DAY_S
    frac = holdout_fraction if holdout_fraction is not None else 0.2
    return float(np.quantile(at, 1.0 - frac))


def _user_vectors(catalog: Catalog, events: EventColumns, items: I64, users: Sequence[int], decay: DecayConfig,
                  dim: int) -> dict[int, npt.NDArray[np.float32]]:
    """Each test reader's learner embedding from their training events (the learner's own fold)."""
    by_user: dict[int, list[int]] = {}
    wanted = set(users)
    for i, u in enumerate(events.user.tolist()):
        if u in wanted and items[i] >= 0:
            by_user.setdefault(u, []).append(i)
    out: dict[int, npt.NDArray[np.float32]] = {}
    for u, idx in by_user.items():
        batch = []
        for i in idx:
            c = catalog.content_index[events.content_ids[i]]
            p = int(catalog.passage_of[c])
            vec = ContentVector("eval", catalog.vectors[p].astype(np.float64)) if catalog.has_vector[p] else None
            batch.append((events.signal_types[i], float(events.weights[i]),
                          datetime.fromtimestamp(float(events.at[i]), UTC), vec))
        state = add_to_embedding(None, decay, dim, batch)
        raw = state.normalized()
        if raw is not None:
            out[u] = emb.decode(raw, dim)
    return out


@dataclass
class Split:
    """Training part, test readers and their relevant passages."""

    catalog: Catalog
    train: EventColumns
    n_users: int
    cutoff: float
    test_users: list[int]
    truth: list[set[int]]


def split_events(catalog: Catalog, events: EventColumns, n_users: int, cutoff: float, settings: RecommendSettings,
                 max_readers: int, decay: DecayConfig, seed: int = 7) -> Split:
    """Older part for training; test readers with new positive passages after the cut-off."""
    train = events.select(events.at < cutoff)
    test = events.select(events.at >= cutoff)
    consumed = set(settings.consumed_signal_types)
    train_items = passage_codes(train, catalog)
    before: dict[int, set[int]] = {}
    for u, p, t in zip(train.user.tolist(), train_items.tolist(), train.signal_types, strict=True):
        if p >= 0 and t in consumed:
            before.setdefault(u, set()).add(p)
    test_items = passage_codes(test, catalog)
    rel: dict[int, set[int]] = {}
    for u, p, t in zip(test.user.tolist(), test_items.tolist(), test.signal_types, strict=True):
        if p >= 0 and t in consumed and decay.for_signal(t).scale > 0 and p not in before.get(u, set()):
            rel.setdefault(u, set()).add(p)
    users = sorted(u for u in rel if u in before)
    if len(users) > max_readers:
        rng = np.random.default_rng(seed)
        users = sorted(rng.choice(users, size=max_readers, replace=False).tolist())
    return Split(catalog, train, n_users, cutoff, users, [rel[u] for u in users])


def _implicit_baselines(matrix: sp.csr_matrix, users: list[int], k: int, settings: RecommendSettings) -> dict[
        str, Callable[[], list[list[int]]]]:
    from implicit.bpr import BayesianPersonalizedRanking
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.nearest_neighbours import CosineRecommender
    from threadpoolctl import threadpool_limits

    conf = matrix.copy()
    conf.data = 1.0 + settings.cf_alpha * conf.data
    binary = matrix.copy()
    binary.data[:] = 1.0
    ids = np.array(users, dtype=np.int64)

    def run(make: Callable[[], Any], train_on: sp.csr_matrix) -> list[list[int]]:
        with threadpool_limits(1, "blas"):
            model = make()
            model.fit(train_on, show_progress=False)
            recs, _ = model.recommend(ids, train_on[ids], N=k, filter_already_liked_items=True)
        return [[int(p) for p in row if p >= 0] for row in np.asarray(recs)]

    return {
        "implicit_als": lambda: run(lambda: AlternatingLeastSquares(
            factors=settings.cf_factors, regularization=settings.cf_regularization,
            iterations=settings.cf_iterations, random_state=7, calculate_training_loss=False), conf),
        "implicit_bpr": lambda: run(lambda: BayesianPersonalizedRanking(
            factors=settings.cf_factors, iterations=100, random_state=7), binary),
        "implicit_item_cosine": lambda: run(lambda: CosineRecommender(K=settings.neighbours), conf),
    }


def evaluate_split(split: Split, settings: RecommendSettings, k: int, *, decay: DecayConfig,
                   profiles: dict[int, tuple[dict[str, str | None], list[tuple[str, object, float]]]] | None = None,
                   single_sources: bool = True, on_step: Callable[[str], None] | None = None) -> dict[
                       str, MethodScore]:
    """Every method on one split (module docstring)."""
    step = on_step or (lambda _: None)
    catalog, now = split.catalog, split.cutoff
    step("training on the older events")
    matrix = interaction_matrix(split.train, catalog, split.n_users, decay, now)
    t0 = time.perf_counter()
    index_args = IndexParams.of(settings)
    cf_model = train_cf(matrix, catalog, settings)
    cf = cf_model.aligned(catalog, index_args) if cf_model is not None else None
    neighbours = co_engagement(matrix, catalog, settings).aligned(catalog) if matrix.nnz else None
    trending = Trending.from_scores(trending_scores(split.train, catalog, decay, now,
                                                    half_life_days=settings.trending_half_life_days,
                                                    window_days=settings.trending_window_days))
    models = Models(catalog, VectorIndex(catalog.vectors, catalog.has_vector, index_args), cf, neighbours,
                    trending)
    train_s = time.perf_counter() - t0
    items = passage_codes(split.train, catalog)
    vectors = _user_vectors(catalog, split.train, items, split.test_users, decay, catalog.vectors.shape[1])
    by_user: dict[int, list[HistoryEvent]] = {}
    wanted = set(split.test_users)
    for i, u in enumerate(split.train.user.tolist()):
        if u in wanted:
            by_user.setdefault(u, []).append(HistoryEvent(split.train.content_ids[i], split.train.signal_types[i],
                                                          float(split.train.weights[i]), float(split.train.at[i])))
    histories: dict[int, ReaderHistory] = {
        u: fold_history(evs[-settings.history_events:], catalog, decay, now,
                        consumed_types=settings.consumed_signal_types, skip_types=settings.skip_signal_types)
        for u, evs in by_user.items()}
    policy = policy_from(settings)

    def ours(sources: Sequence[SourceName]) -> list[list[int]]:
        out = []
        for u in split.test_users:
            h = histories.get(u, ReaderHistory())
            prof, traits = (profiles or {}).get(u, ({}, []))
            ctx = Context(models, h, set(h.consumed) | h.skipped, user_vector=vectors.get(u),
                          traits=profile_traits(prof, traits), seeds=[(p, c) for p, c, _ in h.recent_positive],
                          seed_limit=settings.seeds, continue_next=settings.continue_next)
            ranked = recommend(ctx, sources, policy, settings, k, [])
            out.append([int(catalog.passage_of[catalog.content_index[r.content_id]]) for r in ranked])
        return out

    def popularity() -> list[list[int]]:
        pop = np.asarray(matrix.astype(bool).sum(axis=0)).ravel()
        order = np.argsort(-pop, kind="stable")
        out = []
        for u in split.test_users:
            seen = histories.get(u, ReaderHistory()).consumed
            out.append([int(p) for p in order[: k + len(seen)] if p not in seen][:k])
        return out

    methods: dict[str, Callable[[], list[list[int]]]] = {
        "recommender": lambda: ours(MODE_SOURCES["personalized"]),
        "popularity": popularity,
        **_implicit_baselines(matrix, split.test_users, k, settings),
    }
    if single_sources:
        for source in SOURCE_NAMES:
            methods[f"only_{source}"] = lambda source=source: ours((source,))  # type: ignore[misc]
    scores: dict[str, MethodScore] = {}
    for name, fn in methods.items():
        step(f"recommending: {name}")
        t0 = time.perf_counter()
        recs = fn()
        n, r, c = metrics(recs, split.truth, k, catalog.size)
        extra = train_s if name == "recommender" else 0.0
        scores[name] = MethodScore(n, r, c, time.perf_counter() - t0 + extra)
    return scores


async def evaluate(db: Database, settings: RecommendSettings, *, dim: int, decay: DecayConfig, k: int = 10,
                   holdout_days: float | None = None, holdout_fraction: float | None = None,
                   max_readers: int = 5000,
                   on_step: Callable[[str], None] | None = None) -> EvalReport:
    """Load the stored catalogue and events, split by time and score every method."""
    if holdout_days is not None and holdout_fraction is not None:
        raise InvalidInput([FieldError(["holdout_days"], "give --holdout-days or --holdout-fraction, not both")])
    if holdout_days is not None and not (0 < holdout_days < 3650):
        raise InvalidInput([FieldError(["holdout_days"], "must be between 0 and 3650 days")])
    if holdout_fraction is not None and not (0 < holdout_fraction < 1):
        raise InvalidInput([FieldError(["holdout_fraction"], "must be between 0 and 1 (exclusive)")])
    if not 1 <= k <= 100:
        raise InvalidInput([FieldError(["k"], "must be between 1 and 100")])
    step = on_step or (lambda _: None)
    store = RecommendStore(db)
    step("loading catalogue and events")
    catalog = catalog_from_rows(await store.catalog(dim), dim)
    events, user_ids = await load_events(store, datetime.max.replace(tzinfo=UTC))
    cutoff = choose_cutoff(events.at, holdout_days, holdout_fraction)
    split = split_events(catalog, events, len(user_ids), cutoff, settings, max_readers, decay)
    if not split.test_users:
        raise InvalidInput([FieldError(["holdout"], "no reader has new items after the cut-off: choose another split")])
    rows = await store.profiles([uuid.UUID(str(user_ids[u])) for u in split.test_users], 0.0)
    code = {str(u): i for i, u in enumerate(user_ids)}
    profiles: dict[int, tuple[dict[str, str | None], list[tuple[str, object, float]]]] = {}
    for r in rows:
        prof = {"spiritual_goal": r["spiritual_goal"], "denomination": r["denomination"]}
        traits = [(t["type"], t["value"], float(t["confidence"])) for t in r["traits"]]
        profiles[code[str(r["user_id"])]] = (prof, traits)
    scores = evaluate_split(split, settings, k, decay=decay, profiles=profiles, on_step=step)
    report = EvalReport(k, datetime.fromtimestamp(cutoff, UTC), len(split.train), len(split.test_users),
                        catalog.size, scores)
    return report


def goal_met(report: EvalReport) -> dict[str, bool]:
    """The issue's goals: ndcg at least the best implicit method's, and at least 2x popularity."""
    m = report.methods
    ours = m["recommender"].ndcg
    best = max(m[n].ndcg for n in ("implicit_als", "implicit_bpr", "implicit_item_cosine") if n in m)
    return {"beats_implicit": ours >= best, "twice_popularity": ours >= 2 * m["popularity"].ndcg and
            not math.isclose(ours, 0.0)}
