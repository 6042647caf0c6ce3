"""The rows and column batches the online learner reads and writes (see :mod:`personalization.store.learner`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import numpy as np
import numpy.typing as npt

__all__ = ["EmbeddingBatch", "EmbeddingRow", "OffsetRow", "ScoreBatch", "ScoreRow", "StoredEmbeddings"]


@dataclass(frozen=True, slots=True)
class OffsetRow:
    """Stored position of one partition."""

    partition: int
    next_offset: int
    high_water: tuple[int, int, int] | None


@dataclass(frozen=True, slots=True)
class ScoreRow:
    """One stored score cell."""

    user_id: UUID
    content_type: str
    signal_type: str
    score: float
    ref_time: datetime
    event_count: int


@dataclass(frozen=True, slots=True)
class EmbeddingRow:
    """One stored user embedding (``embedding`` = normalised float32 bytes or None)."""

    user_id: UUID
    model: str | None
    dim: int
    raw_sum: bytes
    ref_time: datetime
    event_count: int
    embedded_count: int
    embedding: bytes | None


@dataclass(frozen=True, slots=True)
class ScoreBatch:
    """New values of a batch's score cells, one array element per cell.

    ``users`` holds 16-byte user ids; ``content_type``/``signal_type`` are 1-based
    positions in ``content_types``/``signal_types``; ``ref_us`` is microseconds since the
    epoch; ``existed`` says whether the cell was stored when the batch read it.
    """

    users: npt.NDArray[np.void]
    content_type: npt.NDArray[np.int32]
    signal_type: npt.NDArray[np.int32]
    score: npt.NDArray[np.float64]
    ref_us: npt.NDArray[np.int64]
    event_count: npt.NDArray[np.int64]
    existed: npt.NDArray[np.bool_]
    content_types: list[str]
    signal_types: list[str]


@dataclass(frozen=True, slots=True)
class EmbeddingBatch:
    """New embedding rows of a batch, one array element (or matrix row) per user.

    ``model`` is a 1-based position in ``models`` (0: no model yet); ``raw`` is the float64
    sum (n, dim); ``embedding`` the normalised float32 vectors (n, dim), meaningful where
    ``has_embedding``.
    """

    users: npt.NDArray[np.void]
    model: npt.NDArray[np.int32]
    dim: int
    raw: npt.NDArray[np.float64]
    ref_us: npt.NDArray[np.int64]
    event_count: npt.NDArray[np.int64]
    embedded_count: npt.NDArray[np.int64]
    has_embedding: npt.NDArray[np.bool_]
    embedding: npt.NDArray[np.float32]
    existed: npt.NDArray[np.bool_]
    models: list[str]


@dataclass(frozen=True, slots=True)
class StoredEmbeddings:
    """Stored embedding rows of a batch's users, one array element (or matrix row) per row.

    ``raw`` rows are meaningful where ``same_dim`` (the row has the expected dimension).
    """

    users: npt.NDArray[np.void]
    models: list[str | None]
    same_dim: npt.NDArray[np.bool_]
    raw: npt.NDArray[np.float64]
    ref_us: npt.NDArray[np.int64]
    event_count: npt.NDArray[np.int64]
    embedded_count: npt.NDArray[np.int64]

    @staticmethod
    def empty(dim: int) -> StoredEmbeddings:
        """No stored rows."""
        none = np.zeros(0, dtype=np.int64)
        return StoredEmbeddings(
            np.zeros(0, dtype="V16"), [], none.astype(bool), np.zeros((0, dim)), none, none, none
        )
