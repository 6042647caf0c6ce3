"""The HNSW index against exact search (recall@10 >= 0.95), and the exact fallback."""

from __future__ import annotations

import numpy as np

from personalization.core import embedding as emb
from personalization.recommend.ann import IndexParams, VectorIndex, exact_top


def _clustered(n: int, dim: int, seed: int = 3) -> np.ndarray:
    # Content embeddings are clustered (topics), not uniform noise.
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((40, dim))
    mix = rng.dirichlet(np.full(40, 0.2), n)
    return emb.normalize_rows((mix @ topics + 0.2 * rng.standard_normal((n, dim))).astype(np.float32))


def test_hnsw_recall_at_10_against_exact() -> None:
    vectors = _clustered(12_000, 384)
    index = VectorIndex(vectors, params=IndexParams(min_items=0))
    assert index.kind == "hnsw" and index.memory_bytes > 0
    rng = np.random.default_rng(9)
    queries = emb.normalize_rows(vectors[rng.integers(0, len(vectors), (200, 3))].sum(axis=1))
    hits = 0
    for q in queries:
        approx, _ = index.search(q, 10)
        exact, _ = exact_top(vectors, q, 10)
        hits += len(set(approx.tolist()) & set(exact.tolist()))
    recall = hits / (10 * len(queries))
    assert recall >= 0.95, recall


def test_exact_below_threshold_skips_invalid_rows() -> None:
    vectors = _clustered(500, 32)
    valid = np.ones(500, dtype=bool)
    valid[:250] = False
    index = VectorIndex(vectors, valid, IndexParams(min_items=10_000))
    assert index.kind == "exact" and index.memory_bytes == 0
    ids, scores = index.search(vectors[0], 20)
    assert len(ids) == 20 and (ids >= 250).all()
    assert np.all(np.diff(scores) <= 1e-6)


def test_hnsw_scores_are_exact_inner_products() -> None:
    vectors = _clustered(3_000, 64)
    index = VectorIndex(vectors, params=IndexParams(min_items=0))
    ids, scores = index.search(vectors[7], 5)
    assert ids[0] == 7
    np.testing.assert_allclose(scores, vectors[ids] @ vectors[7], rtol=1e-5)
