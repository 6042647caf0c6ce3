"""Vector math of the read path (pure: no I/O).

Encoding rule: every embedding (``user:{user_id}:embedding`` in Redis, the
``content_embeddings`` and ``user_embeddings`` tables) is a float32 little-endian
byte string of exactly ``4 * dim`` bytes.  Dimension rule: one deployment uses one
dimension (``settings.embedding.dim``, 384 by default) for users and content alike;
a vector of another length, or with NaN/inf, or all zeros, is rejected on import
and ignored (treated as missing) when read from a cache or another service's table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]
_LE_F32 = np.dtype("<f4")


class EmbeddingError(ValueError):
    """A vector that breaks the encoding or dimension rule."""


def decode(raw: bytes, dim: int) -> Vector:
    """Bytes to a float32 vector of ``dim`` values; EmbeddingError on a wrong length."""
    if len(raw) != 4 * dim:
        raise EmbeddingError(f"embedding has {len(raw) // 4} values ({len(raw)} bytes), expected {dim}")
    return np.frombuffer(raw, dtype=_LE_F32).astype(np.float32)


def encode(vec: npt.ArrayLike) -> bytes:
    """A vector as float32 little-endian bytes."""
    return np.ascontiguousarray(vec, dtype=_LE_F32).tobytes()


def check(vec: npt.ArrayLike, dim: int) -> Vector:
    """Validate one vector (length, finite, not all zero) and return it as float32."""
    arr = np.asarray(vec, dtype=np.float64)
    if arr.ndim != 1:
        raise EmbeddingError(f"embedding must be a flat list of numbers, got {arr.ndim} dimensions")
    if arr.shape[0] != dim:
        raise EmbeddingError(f"embedding has {arr.shape[0]} values, expected {dim}")
    if not np.isfinite(arr).all():
        raise EmbeddingError("embedding contains NaN or infinity")
    out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise EmbeddingError("embedding value out of float32 range")
    if not np.any(out):
        raise EmbeddingError("embedding is all zeros (it has no direction)")
    return out


def normalize(vec: Vector) -> Vector:
    """The vector scaled to unit L2 length (a zero vector stays zero)."""
    norm = float(np.linalg.norm(vec))
    if norm == 0.0 or not np.isfinite(norm):
        return vec.astype(np.float32)
    return (vec / norm).astype(np.float32)


def normalize_rows(mat: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Every row scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: npt.NDArray[np.float32] = (mat / norms).astype(np.float32)
    return out


def cosine_many(user: Vector, items: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Cosine similarity of ``user`` with each row of ``items`` (both already unit length)."""
    if items.shape[0] == 0:
        return np.zeros(0, dtype=np.float32)
    out: npt.NDArray[np.float32] = np.clip(items @ user, -1.0, 1.0).astype(np.float32)
    return out


def blend(prior: Sequence[float], similarity: Sequence[float], alpha: float) -> list[float]:
    """``alpha * similarity + (1 - alpha) * prior`` for each candidate."""
    return [alpha * s + (1.0 - alpha) * p for p, s in zip(prior, similarity, strict=True)]
