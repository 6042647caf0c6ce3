"""Erase one user everywhere the project keeps data (right to be forgotten), never half-done.

In the request, in one PostgreSQL transaction: lock the profile (ingest of the user waits),
note the user's sessions and the flag names (they name the user's Redis keys: no SCAN),
delete the user's events (the spec's ``ON DELETE SET NULL`` would otherwise keep them as
anonymous rows, and the CDC stream would re-publish them as updates), the feature-store
rows (under the nightly swap's erasure lock), every other table with a ``user_id`` uuid
column (found in the catalogue, so a new table cannot be forgotten), traits and profile;
write the audit row and record the erasure and its parts in the outbox
(``store/erasures.py``); delete the user's Redis keys.  A Redis failure there rolls the
whole transaction back (afterwards the session ids, known only from the events, would be
lost).  After the commit the keys are deleted once more (a reader may have re-cached from
the not yet committed rows in between).

What cannot finish inside the request is completed by the erasure worker
(:mod:`personalization.datarights.worker`), from the outbox: ``rollups`` (the spec's
materialized view, which only a refresh changes: one refresh for every erasure pending at
that moment) and ``kafka`` (tombstones for the user's key on the CDC topics, retried with
backoff until the broker acknowledges them).  The request answers with the erasure's id
and each part's state (202 while a part is pending); ``GET /v1/erasures/{id}`` shows the
progress, and the audit row gets outcome ``ok`` when the last part is done.

Deletes on personalization_events reach the CDC topic as ``op: "d"`` records keyed
``{"user_id": null}`` that carry only ``event_id`` (default replica identity): they
reveal nothing about the user.  The erase is idempotent: running it again finds nothing
in PostgreSQL, deletes any stray key and sends the tombstones again.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import Counter, Histogram

from personalization.cache.client import AsyncRedis
from personalization.cache.datarights import delete_user_keys, user_key_names
from personalization.config import Settings
from personalization.errors import PersonalizationError
from personalization.kafka.tombstones import TombstoneProducer
from personalization.security import audit
from personalization.store.datarights import DataRightsStore
from personalization.store.db import Database
from personalization.store.erasures import ErasureOutbox, Part, PartState

__all__ = ["EraseReport", "Eraser", "KafkaTombstones", "cdc_key", "cdc_topics", "delete_user_keys",
           "user_key_names"]

log = logging.getLogger("personalization.datarights.erase")
ERASES = Counter("personalization_user_erasures_total", "User erasures by outcome at the request's end",
                 ["outcome"])
ERASE_SECONDS = Histogram("personalization_user_erase_seconds", "Duration of one erase request",
                          buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))


@dataclass
class EraseReport:
    """What one erase request removed and what is left to the worker (counts only: no personal data)."""

    subject_hash: str
    erasure_id: uuid.UUID = field(default_factory=uuid.uuid4)
    removed: dict[str, int] = field(default_factory=dict)
    sessions: int = 0
    redis_keys: int = 0
    parts: dict[Part, PartState] = field(default_factory=dict)
    duration_s: float = 0.0
    audit_id: int | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    @property
    def pending(self) -> list[Part]:
        """The parts the erasure worker still has to complete."""
        return [p for p, s in self.parts.items() if s == "pending"]

    @property
    def outcome(self) -> str:
        """``ok`` when everything is erased, ``pending`` while the worker has parts to complete."""
        return "pending" if self.pending else "ok"

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (API, CLI and audit details)."""
        return {
            "erasure_id": str(self.erasure_id),
            "erased": not self.pending,
            "outcome": self.outcome,
            "subject_hash": self.subject_hash,
            "removed": dict(self.removed),
            "sessions": self.sessions,
            "redis_keys": self.redis_keys,
            "parts": dict(self.parts),
            "pending": self.pending,
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

    def publish(self, *user_ids: uuid.UUID) -> int:
        """Send and flush the users' tombstones (blocking, bounded by ``kafka.timeout_s``); returns how many."""
        return self._producer.publish(self.topics, *(cdc_key(u) for u in user_ids))

    def close(self) -> None:
        """Flush and drop the producer."""
        self._producer.close()


class Eraser:
    """The erase use case (the request's part; the worker completes the rest)."""

    def __init__(self, db: Database, redis: AsyncRedis, settings: Settings,
                 wake: Callable[[], None] | None = None) -> None:
        self.db = db
        self.store = DataRightsStore(db)
        self.outbox = ErasureOutbox(db)
        self.redis = redis
        self.settings = settings
        # Nudges this process's erasure worker, so a pending part starts at once, not at its next poll.
        self._wake = wake

    async def erase(self, user_id: uuid.UUID, actor: str) -> EraseReport:
        """Erase ``user_id`` in PostgreSQL and Redis and record the rest; the report says what is pending."""
        started = time.perf_counter()
        report = EraseReport(subject_hash=audit.subject_hash(user_id))
        async with self.store.erasing(user_id) as tx:
            had_profile = await tx.lock_profile()
            sessions = await tx.sessions()
            names = user_key_names(user_id, sessions, await tx.flag_names())
            # Read before the deletes; the view changes only with a refresh.
            in_rollups = await tx.in_rollups()
            report.removed["personalization_events"] = await tx.delete_events()
            # The nightly job's feature-store rows, with its swap lock; the catalogue sweep
            # after it removes whatever other table holds the user.
            report.removed.update(await tx.delete_features())
            report.removed.update(await tx.delete_other_tables())
            report.removed["user_traits"] = await tx.delete_traits()
            removed_profile = await tx.delete_profile()
            report.removed["user_profile"] = removed_profile if had_profile else 0
            report.sessions = len(sessions)
            report.parts = {
                "postgres": "done",
                "redis": "pending",
                "rollups": "pending" if in_rollups else "not_needed",
                "kafka": "pending" if self.settings.erase.kafka_tombstones else "not_needed",
            }
            report.audit_id = await audit.record_in(
                tx, actor=actor, action="user.erase", subject=user_id, outcome="pending",
                details={"erasure_id": str(report.erasure_id), "removed": report.removed,
                         "sessions": report.sessions, "parts": dict(report.parts)})
            await tx.record_erasure(erasure_id=report.erasure_id, subject_hash=report.subject_hash,
                                    redis_keys=names, actor=actor, audit_id=report.audit_id, parts=report.parts)
            # Still inside the transaction: a Redis failure rolls the PostgreSQL part back.
            mark = time.perf_counter()
            report.redis_keys = await delete_user_keys(self.redis, names)
            report.timings_s["redis"] = time.perf_counter() - mark
        report.timings_s["postgres"] = time.perf_counter() - started - report.timings_s["redis"]
        await self._after_commit(names, report, actor)
        report.duration_s = time.perf_counter() - started
        ERASES.labels(report.outcome).inc()
        ERASE_SECONDS.observe(report.duration_s)
        if report.pending and self._wake is not None:
            self._wake()
        return report

    async def _after_commit(self, names: list[str], report: EraseReport, actor: str) -> None:
        # Again after the commit (a reader may have re-cached from the uncommitted rows); when
        # this fails the outbox keeps the redis part and the worker deletes them.
        mark = time.perf_counter()
        # Everything here runs after the commit: a failure leaves the part pending for the
        # worker and must not turn the committed erase into an error answer.
        try:
            report.redis_keys += await delete_user_keys(self.redis, names)
            completed = await self.outbox.complete_part(report.erasure_id, "redis")
        except PersonalizationError as exc:
            log.warning("second Redis delete of erasure %s left to the worker: %s", report.erasure_id, exc)
        else:
            if completed is not None:
                report.parts["redis"] = "done"
            for done in completed or []:
                audit.log_line(done.audit_id, done.actor, "user.erase", done.subject_hash, None, "ok",
                               done.audit_details)
        report.timings_s["redis"] += time.perf_counter() - mark
