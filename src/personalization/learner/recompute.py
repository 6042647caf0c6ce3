"""``personalization learner recompute``: rebuild user state from personalization_events alone.

Each user is rebuilt in its own transaction that holds the profile row FOR UPDATE (so it
waits for, and is waited on by, online learner batches of that user) and saves the
snapshot its events were read in; the online learner then skips stream records already
counted.  Recomputing while the learner runs is therefore safe, and the result is the
definition the online state must match (the parity test checks it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from uuid import UUID

from personalization.cache.learner import EmbeddingCache
from personalization.config import Settings
from personalization.errors import NotFound, PersonalizationError
from personalization.learner.batch import rebuild_user
from personalization.store.learner import LearnerStore

__all__ = ["RecomputeReport", "recompute_users"]


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
                vector = rebuild_user(tx, user_id, level, decay, settings.embedding.dim, on_events=counted.append)
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
