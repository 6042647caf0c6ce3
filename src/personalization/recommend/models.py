"""Trained artefacts the sources read: collaborative factors, item neighbours, trending (pure: no I/O).

Artefacts are trained on passage keys (``Catalog.passages``) and stored with those keys,
so a model trained before a catalogue change still applies: :meth:`CFModel.aligned` and
:meth:`Neighbours.aligned` map it onto the current catalogue (passages it never saw get
no factors and no neighbours until the next training).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from personalization.recommend.ann import IndexParams, VectorIndex
from personalization.recommend.catalog import Catalog

F32 = npt.NDArray[np.float32]
I32 = npt.NDArray[np.int32]


def _keys_array(keys: list[str]) -> npt.NDArray[np.str_]:
    return np.array(keys, dtype=np.str_) if keys else np.zeros(0, dtype="<U1")


def _load(blob: bytes) -> dict[str, npt.NDArray[np.generic]]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _dump(**arrays: npt.NDArray[np.generic]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


@dataclass
class CFModel:
    """Item factors of an implicit-feedback ALS model, with what folding a reader in needs.

    A reader's factors are computed per request from their history (ALS's closed form,
    as ``implicit``'s ``recalculate_user``), so a new bookmark moves the collaborative
    candidates at once, without waiting for the nightly training.
    """

    keys: list[str]
    item_factors: F32
    regularization: float
    alpha: float

    def to_bytes(self) -> bytes:
        return _dump(keys=_keys_array(self.keys), item_factors=self.item_factors,
                     params=np.array([self.regularization, self.alpha], dtype=np.float64))

    @staticmethod
    def from_bytes(blob: bytes) -> CFModel:
        z = _load(blob)
        reg, alpha = (float(x) for x in z["params"])
        return CFModel([str(k) for k in z["keys"]], z["item_factors"].astype(np.float32), reg, alpha)

    def aligned(self, catalog: Catalog, params: IndexParams) -> AlignedCF:
        """The factors on the current catalogue's passage indices."""
        f = self.item_factors.shape[1] if self.item_factors.ndim == 2 else 0
        mat = np.zeros((catalog.size, f), dtype=np.float32)
        valid = np.zeros(catalog.size, dtype=bool)
        for i, key in enumerate(self.keys):
            p = catalog.passage_index.get(key)
            if p is not None:
                mat[p] = self.item_factors[i]
                valid[p] = True
        return AlignedCF(mat, valid, self.regularization, self.alpha, VectorIndex(mat, valid, params))


@dataclass
class AlignedCF:
    """CF factors indexed by catalogue passage."""

    factors: F32
    valid: npt.NDArray[np.bool_]
    regularization: float
    alpha: float
    index: VectorIndex

    def __post_init__(self) -> None:
        f = self.factors[self.valid].astype(np.float64)
        self._yty = f.T @ f

    def fold_in(self, weights: dict[int, float]) -> F32 | None:
        """The reader's factors from their positive decayed weights (None without usable items)."""
        items = [p for p, w in weights.items() if w > 0 and self.valid[p]]
        if not items:
            return None
        y = self.factors[items].astype(np.float64)
        conf = 1.0 + self.alpha * np.array([weights[p] for p in items], dtype=np.float64)
        a = self._yty + self.regularization * np.eye(y.shape[1]) + (y.T * (conf - 1.0)) @ y
        b = y.T @ conf
        try:
            u = np.linalg.solve(a, b)
        except np.linalg.LinAlgError:
            return None
        return u.astype(np.float32)


@dataclass
class Neighbours:
    """Co-engagement neighbours per item: ``ids[i, :]`` (indices into ``keys``, -1 padded) and ``scores``."""

    keys: list[str]
    ids: I32
    scores: F32

    def to_bytes(self) -> bytes:
        return _dump(keys=_keys_array(self.keys), ids=self.ids, scores=self.scores)

    @staticmethod
    def from_bytes(blob: bytes) -> Neighbours:
        z = _load(blob)
        return Neighbours([str(k) for k in z["keys"]], z["ids"].astype(np.int32), z["scores"].astype(np.float32))

    def aligned(self, catalog: Catalog) -> AlignedNeighbours:
        """Neighbour lists on the current catalogue's passage indices."""
        to_p = np.array([catalog.passage_index.get(k, -1) for k in self.keys], dtype=np.int32)
        k = self.ids.shape[1] if self.ids.ndim == 2 else 0
        ids = np.full((catalog.size, k), -1, dtype=np.int32)
        scores = np.zeros((catalog.size, k), dtype=np.float32)
        for i, p in enumerate(to_p):
            if p < 0:
                continue
            row = self.ids[i]
            mapped = np.where(row >= 0, to_p[np.maximum(row, 0)], -1)
            ids[p] = mapped
            scores[p] = np.where(mapped >= 0, self.scores[i], 0.0)
        return AlignedNeighbours(ids, scores)


@dataclass
class AlignedNeighbours:
    """Neighbours by catalogue passage index."""

    ids: I32
    scores: F32

    def of(self, p: int) -> list[tuple[int, float]]:
        if p >= self.ids.shape[0]:
            return []
        return [(int(i), float(s)) for i, s in zip(self.ids[p], self.scores[p], strict=True) if i >= 0 and s > 0]


@dataclass
class Trending:
    """Time-decayed engagement per catalogue passage, with the order precomputed."""

    scores: F32
    order: npt.NDArray[np.int64]

    @staticmethod
    def from_scores(scores: F32) -> Trending:
        order = np.argsort(-scores, kind="stable")
        order = order[scores[order] > 0]
        return Trending(scores, order.astype(np.int64))

    @staticmethod
    def empty(size: int) -> Trending:
        return Trending(np.zeros(size, dtype=np.float32), np.zeros(0, dtype=np.int64))
