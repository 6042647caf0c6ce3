"""The learner's per-user state and how events change it (pure: no I/O).

Both the online consumer and ``learner recompute`` fold events with these functions, so
their results agree by construction.  Formulas: ``personalization.core.decay``.

* A score cell (user, content_type, signal_type) is ``(score, ref_time, event_count)``:
  the decayed score at ``ref_time``, the latest ``occurred_at`` counted.
* An embedding is ``(raw_sum, ref_time, event_count, embedded_count, model, dim)``: the
  decayed weighted sum (float64) of unit content vectors at ``ref_time``.

Adding events moves ``ref_time`` to ``max(ref_time, occurred_at...)`` and rebases the old
value; every contribution is then ``w * 2 ** (-(ref - t_i) / half_life)``.  Sums and maxima
do not depend on order, so any permutation of the same events gives the same state (up
to float rounding, far below the parity tolerance).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from personalization.core import embedding as emb
from personalization.core.decay import DecayConfig, decayed, rebase

__all__ = [
    "ContentVector",
    "EmbeddingState",
    "ScoreCell",
    "add_to_embedding",
    "add_to_score",
    "content_unit_vector",
]

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class ScoreCell:
    """Decayed score of one (user, content_type, signal_type) at ``ref_time``."""

    score: float
    ref_time: datetime
    event_count: int

    def at(self, cfg: DecayConfig, signal_type: str, when: datetime) -> float:
        """The score evaluated at ``when``."""
        return rebase(self.score, self.ref_time, when, cfg.for_signal(signal_type).half_life_s)


@dataclass(frozen=True, slots=True)
class ContentVector:
    """A content embedding ready to add: unit length, float64."""

    model: str
    unit: F64


@dataclass(slots=True)
class EmbeddingState:
    """A user's running embedding sum."""

    dim: int
    model: str | None
    raw: F64
    ref_time: datetime
    event_count: int
    embedded_count: int

    def normalized(self) -> bytes | None:
        """The L2-normalised vector as float32 little-endian bytes; None for a zero sum."""
        norm = float(np.linalg.norm(self.raw))
        if norm == 0.0 or not np.isfinite(norm):
            return None
        return emb.encode(self.raw / norm)

    def raw_bytes(self) -> bytes:
        """The raw sum as float64 little-endian bytes (the durable form)."""
        return np.ascontiguousarray(self.raw, dtype="<f8").tobytes()

    @staticmethod
    def raw_from_bytes(raw: bytes, dim: int) -> F64:
        """Inverse of :meth:`raw_bytes`."""
        if len(raw) != 8 * dim:
            raise emb.EmbeddingError(f"raw sum has {len(raw)} bytes, expected {8 * dim}")
        return np.frombuffer(raw, dtype="<f8").astype(np.float64)


def content_unit_vector(model: str, dim: int, raw: bytes, expected_dim: int) -> ContentVector | None:
    """A stored content embedding as a unit vector, or None when unusable (wrong dim, zero, NaN)."""
    if dim != expected_dim or len(raw) != 4 * dim:
        return None
    vec = np.frombuffer(raw, dtype="<f4").astype(np.float64)
    norm = float(np.linalg.norm(vec))
    if norm == 0.0 or not np.isfinite(norm):
        return None
    return ContentVector(model, vec / norm)


def add_to_score(
    cell: ScoreCell | None,
    cfg: DecayConfig,
    signal_type: str,
    events: Sequence[tuple[float, datetime]],
) -> ScoreCell:
    """``cell`` plus ``events`` = [(signal_weight, occurred_at)] of one signal type."""
    half_life = cfg.for_signal(signal_type).half_life_s
    latest = max(t for _, t in events)
    if cell is None:
        ref, value, count = latest, 0.0, 0
    else:
        ref = max(cell.ref_time, latest)
        value, count = rebase(cell.score, cell.ref_time, ref, half_life), cell.event_count
    for weight, t in events:
        value += decayed(cfg.weight(signal_type, weight), t, ref, half_life)
    return ScoreCell(value, ref, count + len(events))


def add_to_embedding(
    state: EmbeddingState | None,
    cfg: DecayConfig,
    dim: int,
    events: Iterable[tuple[str, float, datetime, ContentVector | None]],
) -> EmbeddingState:
    """``state`` plus ``events`` = [(signal_type, signal_weight, occurred_at, content vector)].

    Events whose content has no usable vector are counted but do not move the sum.
    """
    items = list(events)
    latest = max(t for _, _, t, _ in items)
    half_life = cfg.embedding_half_life_s
    if state is None:
        state = EmbeddingState(dim, None, np.zeros(dim, dtype=np.float64), latest, 0, 0)
    ref = max(state.ref_time, latest)
    raw = state.raw * rebase(1.0, state.ref_time, ref, half_life) if ref != state.ref_time else state.raw.copy()
    model = state.model
    embedded = state.embedded_count
    for signal_type, weight, t, vec in items:
        if vec is None:
            continue
        raw += decayed(cfg.weight(signal_type, weight), t, ref, half_life) * vec.unit
        model = vec.model
        embedded += 1
    return EmbeddingState(dim, model, raw, ref, state.event_count + len(items), embedded)
