"""Training on stored events (pure: arrays in, artefacts out; no I/O).

* Interactions: per (reader, passage) the decayed weight of every event (``core.decay``,
  as the learner weighs them) at the training time; only positive sums count as
  engagement.
* Collaborative filtering: ``implicit``'s ALS on confidences ``1 + alpha * weight``.
* Co-engagement neighbours: cosine between passages' reader columns with shrinkage
  (``dot / (|a| |b| + shrink)``), each reader limited to their ``neighbour_history`` most
  weighted passages, computed in column blocks so memory stays bounded.
* Trending: ``scale(signal) * |weight| * 2 ** (-age / trending_half_life)`` summed per
  passage over the window.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from personalization.config import RecommendSettings
from personalization.core.decay import DAY_S, DecayConfig
from personalization.recommend.catalog import Catalog
from personalization.recommend.models import CFModel, Neighbours

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


@dataclass
class EventColumns:
    """Events as columns: reader index, content id, signal type, signal weight, epoch seconds."""

    user: I64
    content_ids: list[str]
    signal_types: list[str]
    weights: F64
    at: F64

    def __len__(self) -> int:
        return len(self.content_ids)

    def select(self, mask: npt.NDArray[np.bool_]) -> EventColumns:
        idx = np.nonzero(mask)[0]
        return EventColumns(self.user[idx], [self.content_ids[i] for i in idx],
                            [self.signal_types[i] for i in idx], self.weights[idx], self.at[idx])


def decayed_weights(events: EventColumns, decay: DecayConfig, now: float,
                    half_life_s: float | None = None) -> F64:
    """Each event's ``scale * |weight| * 2 ** (-(now - t) / half_life)`` (per-signal half-life by default)."""
    types = sorted(set(events.signal_types))
    code = {t: i for i, t in enumerate(types)}
    codes = np.fromiter((code[t] for t in events.signal_types), dtype=np.int64, count=len(events))
    scale = np.array([decay.for_signal(t).scale for t in types], dtype=np.float64)
    hl = np.array([half_life_s or decay.for_signal(t).half_life_s for t in types], dtype=np.float64)
    if len(events) == 0:
        return np.zeros(0, dtype=np.float64)
    out: F64 = scale[codes] * np.abs(events.weights) * np.exp2(-(now - events.at) / hl[codes])
    return out


def passage_codes(events: EventColumns, catalog: Catalog) -> I64:
    """Passage index of each event (-1 for content outside the catalogue)."""
    get = catalog.content_index.get
    po = catalog.passage_of
    return np.fromiter(((int(po[i]) if (i := get(c)) is not None else -1) for c in events.content_ids),
                       dtype=np.int64, count=len(events))


def interaction_matrix(events: EventColumns, catalog: Catalog, n_users: int, decay: DecayConfig,
                       now: float) -> sp.csr_matrix:
    """Readers x passages of summed decayed weights, positive sums only."""
    items = passage_codes(events, catalog)
    w = decayed_weights(events, decay, now)
    keep = items >= 0
    m = sp.coo_matrix((w[keep], (events.user[keep], items[keep])), shape=(n_users, catalog.size)).tocsr()
    m.sum_duplicates()
    m.data[m.data < 0] = 0.0
    m.eliminate_zeros()
    return m.astype(np.float32)


def train_cf(matrix: sp.csr_matrix, catalog: Catalog, settings: RecommendSettings, *,
             seed: int = 7) -> CFModel | None:
    """ALS item factors (None when there is nothing to learn from)."""
    if matrix.nnz == 0:
        return None
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    conf = matrix.copy()
    conf.data = 1.0 + settings.cf_alpha * conf.data
    # ALS parallelises over readers itself; BLAS threads inside it only contend (implicit checks for it).
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=settings.cf_factors, regularization=settings.cf_regularization,
            iterations=settings.cf_iterations, calculate_training_loss=False, random_state=seed,
            num_threads=os.cpu_count() or 1,
        )
        model.fit(conf, show_progress=False)
    return CFModel(list(catalog.passages), np.asarray(model.item_factors, dtype=np.float32),
                   settings.cf_regularization, settings.cf_alpha)


def _top_history(matrix: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """Each reader's ``keep`` most weighted passages (bounds co-engagement's quadratic cost)."""
    m = matrix.tocsr(copy=True)
    for u in range(m.shape[0]):
        lo, hi = m.indptr[u], m.indptr[u + 1]
        if hi - lo > keep:
            row = m.data[lo:hi]
            cut = np.partition(row, hi - lo - keep)[hi - lo - keep]
            row[row < cut] = 0.0
    m.eliminate_zeros()
    return m


def co_engagement(matrix: sp.csr_matrix, catalog: Catalog, settings: RecommendSettings,
                  block: int = 2048) -> Neighbours:
    """Top ``settings.neighbours`` passages per passage by shrunk cosine of their reader columns."""
    k = settings.neighbours
    x = _top_history(matrix, settings.neighbour_history)
    # Binary-ish engagement: log-scaled weights so one heavy reader does not dominate a pair.
    x.data = np.log1p(x.data).astype(np.float32)
    xc = x.tocsc()
    norms = np.sqrt(np.asarray(xc.multiply(xc).sum(axis=0)).ravel()).astype(np.float32)
    xt = xc.T.tocsr()
    n = catalog.size
    ids = np.full((n, k), -1, dtype=np.int32)
    scores = np.zeros((n, k), dtype=np.float32)
    for start in range(0, n, block):
        stop = min(n, start + block)
        sims = (xt[start:stop] @ xc).tocsr()  # items in block x all items (co-engagement dots)
        for r in range(stop - start):
            i = start + r
            lo, hi = sims.indptr[r], sims.indptr[r + 1]
            if lo == hi:
                continue
            cols = sims.indices[lo:hi]
            vals = sims.data[lo:hi] / (norms[i] * norms[cols] + settings.neighbour_shrink)
            vals[cols == i] = 0.0
            take = min(k, vals.size)
            top = np.argpartition(-vals, take - 1)[:take] if take < vals.size else np.arange(vals.size)
            top = top[np.argsort(-vals[top], kind="stable")]
            top = top[vals[top] > 0]
            ids[i, : top.size] = cols[top]
            scores[i, : top.size] = vals[top]
    return Neighbours(list(catalog.passages), ids, scores)


def trending_scores(events: EventColumns, catalog: Catalog, decay: DecayConfig, now: float, *,
                    half_life_days: float, window_days: float, content_type: str | None = None) -> F32:
    """Time-decayed engagement per passage over the window (negative signals subtract, floor 0)."""
    mask = (events.at >= now - window_days * DAY_S) & (events.at <= now)
    recent = events.select(mask)
    items = passage_codes(recent, catalog)
    w = decayed_weights(recent, decay, now, half_life_days * DAY_S)
    keep = items >= 0
    out = np.bincount(items[keep], weights=w[keep], minlength=catalog.size).astype(np.float32)
    if content_type is not None:
        types = np.array([t == content_type for t in catalog.passage_type], dtype=bool)
        out[~types] = 0.0
    np.maximum(out, 0.0, out=out)
    return out


def reader_codes(user_ids: Sequence[object]) -> tuple[I64, list[object]]:
    """Dense reader indices for a column of user ids, and the ids in index order."""
    index: dict[object, int] = {}
    codes = np.fromiter((index.setdefault(u, len(index)) for u in user_ids), dtype=np.int64, count=len(user_ids))
    return codes, list(index)
