"""``personalization learner recompute``: rebuild user state from personalization_events alone.

Each user is rebuilt in its own transaction that holds the profile row FOR UPDATE (so it
waits for, and is waited on by, online learner batches of that user) and saves the
snapshot its events were read in; the online learner then skips stream records already
counted.  Recomputing while the learner runs is therefore safe, and the result is the
definition the online state must match (the parity test checks it).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from personalization.cache.learner import EmbeddingCache
from personalization.config import Settings
from personalization.core.decay import DecayConfig
from personalization.core.privacy import policy_for
from personalization.errors import NotFound, PersonalizationError
from personalization.learner.model import add_to_embedding, add_to_score, content_unit_vector
from personalization.store.learner import EmbeddingRow, LearnerStore, LearnerTx, ScoreRow

__all__ = ["RecomputeReport", "rebuild_user", "recompute_users"]


@dataclass
class RecomputeReport:
    """Counts of one recomputation run."""

    users: int = 0
    events: int = 0
    embeddings: int = 0
    missing: int = 0
    redis_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        """The report as a JSON-ready dict."""
        return {
            "users": self.users,
            "events": self.events,
            "embeddings": self.embeddings,
            "missing": self.missing,
            "redis_errors": self.redis_errors,
        }


def recompute_users(
    settings: Settings,
    user_ids: Iterable[UUID] | None = None,
    *,
    progress: Callable[[int], None] | None = None,
) -> RecomputeReport:
    """Rebuild ``user_ids`` (all users when None); NotFound if a named user does not exist."""
    decay = settings.decay.config()
    known = settings.signal_types().known
    store = LearnerStore(settings.database.url)
    cache = EmbeddingCache(settings.redis.url, timeout_s=settings.learner.redis_timeout_s)
    report = RecomputeReport()
    explicit = user_ids is not None
    try:
        if user_ids is None:
            with store.transaction() as tx:
                ids = tx.all_user_ids()
        else:
            ids = list(user_ids)
        for user_id in ids:
            counted: list[int] = []
            with store.transaction() as tx:
                exists, level = tx.lock_user_for_rebuild(user_id)
                if not exists:
                    if explicit:
                        raise NotFound("user", "user_id", str(user_id))
                    report.missing += 1
                    continue
                vector = rebuild_user(tx, user_id, level, decay, settings.embedding.dim, on_events=counted.append,
                                      signal_types=known)
            report.users += 1
            report.events += sum(counted)
            try:
                if vector is None:
                    cache.apply([], [user_id])
                else:
                    cache.apply([(user_id, vector)], [])
                    report.embeddings += 1
            except PersonalizationError:  # Redis is a cache; PostgreSQL holds the result
                report.redis_errors += 1
            if progress is not None:
                progress(report.users)
    finally:
        store.close()
        cache.close()
    return report


def rebuild_user(
    tx: LearnerTx,
    user_id: UUID,
    level: str | None,
    decay: DecayConfig,
    dim: int,
    *,
    on_events: Callable[[int], None] | None = None,
    signal_types: frozenset[str] | None = None,
) -> bytes | None:
    """Replace ``user_id``'s state by a fold of its stored events; returns the new vector.

    The caller must hold the profile row FOR UPDATE (``lock_user_for_rebuild``), which waits
    for any learner batch that holds the user.  The snapshot the events were read in is
    saved, so the online learner skips stream records already counted here.
    """
    policy = policy_for(level)
    snapshot, rows = tx.user_events_with_snapshot(user_id)
    if on_events is not None:
        on_events(len(rows))
    if signal_types is not None:  # the online path skips the same types (apply_batch)
        rows = [r for r in rows if r["signal_type"] in signal_types]
    tx.delete_scores([user_id])
    tx.delete_embeddings([user_id])
    tx.save_rebuild(user_id, snapshot)
    if not rows or not policy.personalize:
        return None
    grouped: dict[tuple[str, str], list[tuple[float, datetime]]] = defaultdict(list)
    for r in rows:
        grouped[(r["content_type"], r["signal_type"])].append((float(r["signal_weight"]), r["occurred_at"]))
    score_rows = []
    for (ct, st), evs in grouped.items():
        cell = add_to_score(None, decay, st, evs)
        score_rows.append(ScoreRow(user_id, ct, st, cell.score, cell.ref_time, cell.event_count))
    tx.upsert_scores(score_rows)
    raw_vectors = tx.content_vectors(sorted({r["content_id"] for r in rows}))
    vectors = {cid: content_unit_vector(m, d, b, dim) for cid, (m, d, b) in raw_vectors.items()}
    state = add_to_embedding(
        None,
        decay,
        dim,
        ((r["signal_type"], float(r["signal_weight"]), r["occurred_at"], vectors.get(r["content_id"])) for r in rows),
    )
    vector = state.normalized()
    tx.upsert_embeddings(
        [
            EmbeddingRow(
                user_id,
                state.model,
                state.dim,
                state.raw_bytes(),
                state.ref_time,
                state.event_count,
                state.embedded_count,
                vector,
            )
        ]
    )
    return vector
