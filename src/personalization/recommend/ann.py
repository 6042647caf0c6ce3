"""Nearest-neighbour search over unit vectors: an HNSW index (usearch) with exact search as fallback.

usearch was chosen after measuring it against faiss-cpu (HNSW) and hnswlib at 100k x 384
(``personalization bench ann``, docs/recommendations.md): the same recall at the same
parameters, query times within a fraction of a millisecond of each other, build times that
swapped ranks between runs on the shared machine, and half-precision storage that makes its
index the smallest.  Only :meth:`VectorIndex._build` and :meth:`VectorIndex.search` know
the library.  Below
``ann_min_items`` vectors (and whenever the library is missing or a build fails) search is
an exact matrix product, which is then both fast and perfect.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from personalization.config import RecommendSettings

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Kind = Literal["hnsw", "exact"]


def exact_top(vectors: F32, query: F32, k: int, valid: npt.NDArray[np.bool_] | None = None) -> tuple[I64, F32]:
    """Indices and inner products of the ``k`` best rows of ``vectors`` for ``query``, best first."""
    n = vectors.shape[0]
    if n == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    scores = vectors @ query
    if valid is not None:
        scores = np.where(valid, scores, -np.inf).astype(np.float32)
    k = min(k, n)
    top = np.argpartition(-scores, k - 1)[:k] if k < n else np.arange(n)
    order = top[np.argsort(-scores[top], kind="stable")]
    keep = np.isfinite(scores[order])
    return order[keep].astype(np.int64), scores[order][keep].astype(np.float32)


@dataclass(frozen=True)
class IndexParams:
    """When to build an HNSW index and how (usearch's parameters)."""

    min_items: int = 20_000
    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 128
    threads: int = 0
    dtype: str = "f16"

    @classmethod
    def of(cls, settings: RecommendSettings) -> IndexParams:
        """The ANN parameters of the recommend settings section."""
        return cls(settings.ann_min_items, settings.ann_connectivity, settings.ann_expansion_add,
                   settings.ann_expansion_search, settings.ann_threads)


class VectorIndex:
    """Inner-product search over the rows of ``vectors`` (rows with ``valid`` False are never returned)."""

    def __init__(
        self,
        vectors: F32,
        valid: npt.NDArray[np.bool_] | None = None,
        params: IndexParams | None = None,
    ) -> None:
        params = params or IndexParams()
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.valid = valid if valid is not None else np.ones(self.vectors.shape[0], dtype=bool)
        self.kind: Kind = "exact"
        self.build_s = 0.0
        self._index: Any = None
        count = int(self.valid.sum())
        if count >= max(params.min_items, 1):
            t0 = time.perf_counter()
            try:
                self._index = self._build(params)
                self.kind = "hnsw"
            except Exception:  # a failed build must not take serving down: exact search still works
                log.exception("ANN build failed; falling back to exact search")
                self._index = None
            self.build_s = time.perf_counter() - t0

    def _build(self, params: IndexParams) -> Any:
        from usearch.index import Index

        index = Index(
            ndim=self.vectors.shape[1], metric="ip", dtype=params.dtype, connectivity=params.connectivity,
            expansion_add=params.expansion_add, expansion_search=params.expansion_search,
        )
        keys = np.nonzero(self.valid)[0].astype(np.uint64)
        index.add(keys, self.vectors[keys], threads=params.threads or (os.cpu_count() or 1), log=False)
        return index

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the index structure (the float32 matrix kept for exact search not included)."""
        if self._index is None:
            return 0
        return int(self._index.memory_usage)

    def search(self, query: F32, k: int) -> tuple[I64, F32]:
        """Best ``k`` row indices and inner products, best first."""
        if self._index is None:
            return exact_top(self.vectors, query, k, self.valid)
        k = min(k, int(self.valid.sum()))
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        matches = self._index.search(np.ascontiguousarray(query, dtype=np.float32), k, exact=False)
        keys = np.asarray(matches.keys, dtype=np.int64)
        # usearch reports the inner-product *distance* 1 - ip; rescore exactly from the matrix.
        scores = (self.vectors[keys] @ query).astype(np.float32)
        order = np.argsort(-scores, kind="stable")
        return keys[order], scores[order]

    def search_exact(self, query: F32, k: int) -> tuple[I64, F32]:
        """The exact answer (for benchmarks and recall checks)."""
        return exact_top(self.vectors, query, k, self.valid)
