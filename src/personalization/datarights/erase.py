"""Erase one user everywhere the project keeps data (right to be forgotten).

Order matters and is chosen so that nothing about the user survives and nothing
re-appears:

1. In one PostgreSQL transaction: lock the profile (ingest of the user waits), note the
   user's sessions, delete the user's events (the spec's ``ON DELETE SET NULL`` would
   otherwise keep them as anonymous rows, and the CDC stream would re-publish them as
   updates), then every other table with a ``user_id`` uuid column (learner state,
   feature-store snapshots, flag overrides, and any table added later: they are found in
   the catalogue, so a new table cannot be forgotten), then traits and the profile.  The
   user's Redis keys are deleted before the commit: when Redis is unreachable the whole
   transaction rolls back and the erase fails with nothing changed, because afterwards the
   session ids (known only from the events) would be lost.
2. After the commit: the Redis keys again, now with a SCAN for every key carrying the
   user's hash tag (a reader may have re-cached in between; flags have names), a
   Kafka tombstone for the user's key on each CDC topic (compacted consumers drop the
   key), and a concurrent refresh of ``user_signal_rollups`` when it still holds the user.
3. The audit row (written ``pending`` inside the transaction) gets the outcome and counts.

Deletes on personalization_events reach the CDC topic as ``op: "d"`` records keyed
``{"user_id": null}`` that carry only ``event_id`` (default replica identity): they
reveal nothing about the user.  The erase is idempotent: running it again finds nothing
in PostgreSQL, deletes any stray key and sends the tombstones again.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import Counter, Histogram

from personalization.cache.client import AsyncRedis
from personalization.cache.datarights import delete_user_keys, user_key_names
from personalization.config import Settings
from personalization.errors import CacheUnavailable, PersonalizationError
from personalization.kafka.tombstones import TombstoneProducer
from personalization.security import audit
from personalization.store.datarights import DataRightsStore
from personalization.store.db import Database

__all__ = ["EraseIncomplete", "EraseReport", "Eraser", "KafkaTombstones", "cdc_key", "cdc_topics",
           "delete_user_keys", "user_key_names"]

log = logging.getLogger("personalization.datarights.erase")
ERASES = Counter("personalization_user_erasures_total", "User erasures by outcome", ["outcome"])
ERASE_SECONDS = Histogram("personalization_user_erase_seconds", "Duration of one user erasure",
                          buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))


class EraseIncomplete(PersonalizationError):
    """PostgreSQL and Redis were erased but a later step (Kafka, rollups) failed; run the erase again."""

    def __init__(self, report: EraseReport) -> None:
        self.report = report
        super().__init__("erase incomplete: " + "; ".join(f"{k}: {v}" for k, v in report.errors.items()))


@dataclass
class EraseReport:
    """What one erase removed (counts only: no personal data)."""

    subject_hash: str
    removed: dict[str, int] = field(default_factory=dict)
    sessions: int = 0
    redis_keys: int = 0
    kafka_tombstones: int = 0
    rollups_refreshed: bool = False
    errors: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0
    audit_id: int | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def outcome(self) -> str:
        """``ok``, or ``partial`` when a step after the commit failed."""
        return "partial" if self.errors else "ok"

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (API, CLI and audit details)."""
        return {
            "erased": not self.errors,
            "outcome": self.outcome,
            "subject_hash": self.subject_hash,
            "removed": dict(self.removed),
            "sessions": self.sessions,
            "redis_keys": self.redis_keys,
            "kafka_tombstones": self.kafka_tombstones,
            "rollups_refreshed": self.rollups_refreshed,
            "errors": dict(self.errors),
            "duration_s": round(self.duration_s, 4),
            "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
            "audit_id": self.audit_id,
        }


def cdc_topics(settings: Settings) -> list[str]:
    """The CDC topics keyed by user id (kafka.names: ``<prefix>.public.<table>``)."""
    from personalization.changestream.capture import captured_topics

    return captured_topics(settings)


def cdc_key(user_id: uuid.UUID) -> bytes:
    """The Kafka key the CDC relay gives the user's records: Kafka Connect's compact JSON."""
    return orjson.dumps({"user_id": str(user_id)})


class KafkaTombstones:
    """Publishes ``(key, null)`` records for a user on the CDC topics that exist."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = cdc_topics(settings)
        self._producer = TombstoneProducer(settings.kafka.bootstrap_servers, settings.kafka.timeout_s)

    def connect(self) -> None:
        """Open the producer's connection now (a long-lived API process has it open already)."""
        self._producer.connect()

    def publish(self, user_id: uuid.UUID) -> int:
        """Send and flush the tombstones (blocking, bounded by ``kafka_timeout_s``); returns how many."""
        return self._producer.publish(self.topics, cdc_key(user_id))

    def close(self) -> None:
        """Flush and drop the producer."""
        self._producer.close()


class Eraser:
    """The erase use case."""

    def __init__(self, db: Database, redis: AsyncRedis, settings: Settings,
                 tombstones: KafkaTombstones | None = None) -> None:
        self.db = db
        self.store = DataRightsStore(db)
        self.redis = redis
        self.settings = settings
        self.tombstones = tombstones if tombstones is not None else (
            KafkaTombstones(settings) if settings.erase.kafka_tombstones else None
        )

    async def erase(self, user_id: uuid.UUID, actor: str) -> EraseReport:
        """Remove everything about ``user_id``; raises EraseIncomplete when a post-commit step failed."""
        started = time.perf_counter()
        report = EraseReport(subject_hash=audit.subject_hash(user_id))
        async with self.store.erasing(user_id) as tx:
            had_profile = await tx.lock_profile()
            sessions = await tx.sessions()
            report.removed["personalization_events"] = await tx.delete_events()
            # The nightly job's feature-store rows, with its swap lock; the catalogue sweep
            # after it removes whatever other table holds the user.
            report.removed.update(await tx.delete_features())
            report.removed.update(await tx.delete_other_tables())
            report.removed["user_traits"] = await tx.delete_traits()
            removed_profile = await tx.delete_profile()
            report.removed["user_profile"] = removed_profile if had_profile else 0
            report.sessions = len(sessions)
            report.audit_id = await audit.record_in(tx, actor=actor, action="user.erase", subject=user_id,
                                                    outcome="pending", details={"removed": report.removed})
            # Still inside the transaction: a Redis failure rolls the PostgreSQL part back.
            mark = time.perf_counter()
            report.redis_keys = await delete_user_keys(self.redis, user_id, sessions, scan=False)
            report.timings_s["redis"] = time.perf_counter() - mark
        report.timings_s["postgres"] = time.perf_counter() - started - report.timings_s["redis"]
        await self._after_commit(user_id, sessions, report)
        report.duration_s = time.perf_counter() - started
        ERASES.labels(report.outcome).inc()
        ERASE_SECONDS.observe(report.duration_s)
        await audit.finish(self.db, report.audit_id, actor=actor, action="user.erase", subject=user_id, target=None,
                           outcome=report.outcome, details=_audit_details(report))
        if report.errors:
            raise EraseIncomplete(report)
        return report

    async def _after_commit(self, user_id: uuid.UUID, sessions: list[uuid.UUID], report: EraseReport) -> None:
        mark = time.perf_counter()
        try:
            report.redis_keys += await delete_user_keys(self.redis, user_id, sessions)
        except CacheUnavailable as exc:
            report.errors["redis"] = str(exc)
        report.timings_s["redis"] += time.perf_counter() - mark
        if self.tombstones is not None:
            mark = time.perf_counter()
            try:
                report.kafka_tombstones = await asyncio.to_thread(self.tombstones.publish, user_id)
            except Exception as exc:  # any Kafka failure leaves the erase to be re-run
                report.errors["kafka"] = str(exc) or type(exc).__name__
            report.timings_s["kafka"] = time.perf_counter() - mark
        mark = time.perf_counter()
        try:
            report.rollups_refreshed = await self._refresh_rollups(user_id)
        except PersonalizationError as exc:
            report.errors["rollups"] = str(exc)
        report.timings_s["rollups"] = time.perf_counter() - mark

    async def _refresh_rollups(self, user_id: uuid.UUID) -> bool:
        if not await self.store.user_in_rollups(user_id):
            return False
        await self.store.refresh_rollups()
        return True


def _audit_details(report: EraseReport) -> dict[str, Any]:
    d = report.as_dict()
    d.pop("subject_hash", None)
    d.pop("audit_id", None)
    return d
