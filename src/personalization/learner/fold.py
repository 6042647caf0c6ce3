"""The online learner's numpy fold: a batch's events into score cells and embedding sums, all users at once.

The formulas are those of :mod:`personalization.core.decay` and give the same results as
the per-user fold of :mod:`personalization.learner.model` (that ``learner recompute``
uses): stored values are rebased to the new reference time, then the batch's weighted
events are added, score cells via ``np.unique``/``bincount`` and embedding sums as blocks
of weighted unit vectors summed per user.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

import numpy as np
import numpy.typing as npt

from personalization.core.decay import DecayConfig
from personalization.learner.model import ContentVector, content_unit_vector
from personalization.store.learner import EmbeddingBatch, LearnerTx, ScoreBatch

__all__ = ["ContentCache", "codes", "decay_factor", "fold_embeddings", "fold_scores", "uuid_bytes"]

_INT = operator.attrgetter("int")


class ContentCache:
    """Content vectors by content id, refreshed when the import version changes or after ``max_age_s``.

    Only the online path caches; ``recompute`` always reads the table.
    """

    def __init__(self, dim: int, max_age_s: float = 30.0, max_entries: int = 500_000) -> None:
        """Cache unit vectors of ``dim`` values."""
        self.dim = dim
        self._max_age_s = max_age_s
        self._max_entries = max_entries
        self._entries: dict[str, ContentVector | None] = {}
        self._version: object = None
        self._filled_at = time.monotonic()

    def check_version(self, version: object) -> None:
        """Drop everything when the import version moved (or the cache is too old)."""
        if version != self._version or time.monotonic() - self._filled_at > self._max_age_s:
            self._entries.clear()
            self._version = version
            self._filled_at = time.monotonic()

    def get_many(self, tx: LearnerTx, content_ids: set[str]) -> dict[str, ContentVector | None]:
        """Vectors of ``content_ids`` (None for content without a usable one)."""
        missing = [c for c in content_ids if c not in self._entries]
        if missing:
            rows = tx.content_vectors(missing)
            if len(self._entries) + len(missing) > self._max_entries:
                self._entries.clear()
            for cid in missing:
                row = rows.get(cid)
                self._entries[cid] = None if row is None else content_unit_vector(row[0], row[1], row[2], self.dim)
        return {c: self._entries.get(c) for c in content_ids}


# Events per block of the embedding sum: blocks of 1024 x dim values stay in the CPU cache.
_CHUNK = 1024


def codes(values: Sequence[str]) -> tuple[list[str], npt.NDArray[np.int32]]:
    """Distinct values (first-seen order) and each value's position among them."""
    index = {v: i for i, v in enumerate(dict.fromkeys(values))}
    return list(index), np.fromiter(map(index.__getitem__, values), dtype=np.int32, count=len(values))


def uuid_bytes(users: Sequence[UUID]) -> npt.NDArray[np.void]:
    return np.frombuffer(b"".join(u.bytes for u in users), dtype="V16")


def decay_factor(
    dt_us: npt.NDArray[np.int64], half_life_s: npt.NDArray[np.float64] | float
) -> npt.NDArray[np.float64]:
    """``2 ** (-dt / half_life)`` with ``dt`` in microseconds (core.decay, vectorised)."""
    return np.exp2(-(dt_us.astype(np.float64) / 1e6) / half_life_s)


def fold_scores(
    tx: LearnerTx,
    su: npt.NDArray[np.int64],
    ct: npt.NDArray[np.int32],
    st: npt.NDArray[np.int32],
    t: npt.NDArray[np.int64],
    w: npt.NDArray[np.float64],
    half_life: npt.NDArray[np.float64],
    user_bytes: npt.NDArray[np.void],
    ct_names: list[str],
    st_names: list[str],
) -> None:
    """Score cells (user, content_type, signal_type): stored value rebased plus the batch's events."""
    n_ct, n_st = len(ct_names), len(st_names)
    cells, inv = np.unique((su * n_ct + ct) * n_st + st, return_inverse=True)
    inv = inv.astype(np.int64)
    n_cells = len(cells)
    cell_user = cells // (n_ct * n_st)
    cell_ct = ((cells // n_st) % n_ct).astype(np.int32)
    cell_st = (cells % n_st).astype(np.int32)
    latest = np.full(n_cells, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(latest, inv, t)

    pos, old_score, old_ref, old_count = tx.batch_cell_scores(
        user_bytes[cell_user], cell_ct + 1, cell_st + 1, ct_names, st_names
    )
    existed = np.zeros(n_cells, dtype=bool)
    existed[pos] = True
    prev_score = np.zeros(n_cells, dtype=np.float64)
    prev_ref = latest.copy()
    prev_count = np.zeros(n_cells, dtype=np.int64)
    prev_score[pos], prev_ref[pos], prev_count[pos] = old_score, old_ref, old_count

    ref = np.maximum(prev_ref, latest)
    cell_half_life = half_life[cell_st]
    score = prev_score * decay_factor(ref - prev_ref, cell_half_life)
    score += np.bincount(inv, weights=w * decay_factor(ref[inv] - t, half_life[st]), minlength=n_cells)
    tx.write_score_batch(
        ScoreBatch(
            users=user_bytes[cell_user],
            content_type=cell_ct + 1,
            signal_type=cell_st + 1,
            score=score,
            ref_us=ref,
            event_count=prev_count + np.bincount(inv, minlength=n_cells),
            existed=existed,
            content_types=ct_names,
            signal_types=st_names,
        )
    )


def fold_embeddings(
    tx: LearnerTx,
    su: npt.NDArray[np.int64],
    t: npt.NDArray[np.int64],
    w: npt.NDArray[np.float64],
    content_ids: Sequence[str],
    state_users: list[UUID],
    user_bytes: npt.NDArray[np.void],
    decay: DecayConfig,
    content: ContentCache,
) -> list[bytes | None]:
    """Embedding sums: stored sum rebased plus the batch's weighted unit vectors; returns Redis values."""
    dim = content.dim
    n_users = len(state_users)
    prev = _stored_embeddings(tx, state_users, user_bytes, dim)
    row_exists, has_state, raw = prev.row_exists, prev.has_state, prev.raw
    prev_ref, prev_count, prev_embedded, prev_model = prev.ref_us, prev.event_count, prev.embedded_count, prev.models
    cvec = _content_matrix(tx, content, content_ids)
    cidx, matrix, has_vec, model_names, content_model = (cvec.index, cvec.matrix, cvec.has_vector, cvec.model_names,
                                                         cvec.model)

    latest = np.full(n_users, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(latest, su, t)
    ref = np.where(has_state, np.maximum(prev_ref, latest), latest)
    half_life = decay.embedding_half_life_s
    raw *= np.where(has_state, decay_factor(ref - prev_ref, half_life), 1.0)[:, None]
    coef = w * decay_factor(ref[su] - t, half_life)
    embedded_events = np.flatnonzero(has_vec[cidx])
    # Sum coef * unit vector per user in bounded blocks of events (sorted by user).
    order = embedded_events[np.argsort(su[embedded_events], kind="stable")]
    for start in range(0, len(order), _CHUNK):
        part = order[start : start + _CHUNK]
        block = matrix.take(cidx[part], axis=0)
        block *= coef[part, None]
        owner = su[part]
        starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        raw[owner[starts]] += np.add.reduceat(block, starts, axis=0)

    # The model of each user's last event with a vector (in batch order), else the stored one.
    last = np.full(n_users, -1, dtype=np.int64)
    np.maximum.at(last, su[embedded_events], embedded_events)
    for name in prev_model:
        if name is not None:
            model_names.setdefault(name, len(model_names) + 1)
    model = np.array([0 if m is None else model_names[m] for m in prev_model], dtype=np.int32)
    moved = last >= 0
    model[moved] = content_model[cidx[last[moved]]]

    norms = np.linalg.norm(raw, axis=1)
    valid = (norms != 0.0) & np.isfinite(norms)
    unit = np.zeros((n_users, dim), dtype="<f4")
    np.divide(raw, norms[:, None], out=unit, where=valid[:, None], casting="unsafe")
    tx.write_embedding_batch(
        EmbeddingBatch(
            users=user_bytes,
            model=model,
            dim=dim,
            raw=raw,
            ref_us=ref,
            event_count=np.where(has_state, prev_count, 0) + np.bincount(su, minlength=n_users),
            embedded_count=np.where(has_state, prev_embedded, 0)
            + np.bincount(su[embedded_events], minlength=n_users),
            has_embedding=valid,
            embedding=unit,
            existed=row_exists,
            models=list(model_names),
        )
    )
    return [unit[i].tobytes() if valid[i] else None for i in range(n_users)]


@dataclass(slots=True)
class _StoredEmbeddings:
    """The stored embedding state of the batch's users, one row per user (zeros where none)."""

    row_exists: npt.NDArray[np.bool_]
    has_state: npt.NDArray[np.bool_]
    raw: npt.NDArray[np.float64]
    ref_us: npt.NDArray[np.int64]
    event_count: npt.NDArray[np.int64]
    embedded_count: npt.NDArray[np.int64]
    models: list[str | None]


def _stored_embeddings(
    tx: LearnerTx, state_users: list[UUID], user_bytes: npt.NDArray[np.void], dim: int
) -> _StoredEmbeddings:
    n_users = len(state_users)
    out = _StoredEmbeddings(
        row_exists=np.zeros(n_users, dtype=bool),
        has_state=np.zeros(n_users, dtype=bool),
        raw=np.zeros((n_users, dim), dtype=np.float64),
        ref_us=np.zeros(n_users, dtype=np.int64),
        event_count=np.zeros(n_users, dtype=np.int64),
        embedded_count=np.zeros(n_users, dtype=np.int64),
        models=[None] * n_users,
    )
    stored = tx.load_embedding_batch(sorted(state_users, key=_INT), dim)
    if len(stored.users):
        position = {b: k for k, b in enumerate(user_bytes.tolist())}
        rows = np.fromiter(map(position.__getitem__, stored.users.tolist()), dtype=np.int64, count=len(stored.users))
        out.row_exists[rows] = True
        use = stored.same_dim  # another dimension: start over, as the per-user fold does
        at = rows[use]
        out.has_state[at] = True
        out.raw[at] = stored.raw[use]
        out.ref_us[at] = stored.ref_us[use]
        out.event_count[at] = stored.event_count[use]
        out.embedded_count[at] = stored.embedded_count[use]
        for r, j in zip(at.tolist(), np.flatnonzero(use).tolist(), strict=True):
            out.models[r] = stored.models[j]
    return out


@dataclass(slots=True)
class _ContentMatrix:
    """The batch's distinct content ids as rows of unit vectors, and each event's row."""

    index: npt.NDArray[np.int32]
    matrix: npt.NDArray[np.float64]
    has_vector: npt.NDArray[np.bool_]
    model_names: dict[str, int]
    model: npt.NDArray[np.int32]


def _content_matrix(tx: LearnerTx, content: ContentCache, content_ids: Sequence[str]) -> _ContentMatrix:
    cids, cidx = codes(content_ids)
    vectors = content.get_many(tx, set(cids))
    matrix = np.zeros((len(cids), content.dim), dtype=np.float64)
    has_vec = np.zeros(len(cids), dtype=bool)
    # Model names get codes from 1 (0: no model); stored models are added by the caller.
    model_names: dict[str, int] = {}
    content_model = np.zeros(len(cids), dtype=np.int32)
    for i, cid in enumerate(cids):
        vec = vectors.get(cid)
        if vec is not None:
            matrix[i] = vec.unit
            has_vec[i] = True
            content_model[i] = model_names.setdefault(vec.model, len(model_names) + 1)
    return _ContentMatrix(cidx, matrix, has_vec, model_names, content_model)
