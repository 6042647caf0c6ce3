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
import importlib
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from prometheus_client import Counter, Histogram
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row

from personalization.cache import keys
from personalization.cache.client import wrap_exceptions as redis_errors
from personalization.config import Settings
from personalization.errors import CacheUnavailable, PersonalizationError
from personalization.kafka.kafkalog import client_logging
from personalization.security import audit
from personalization.store.db import Database, wrap_exceptions
from personalization.store.queries import q

log = logging.getLogger("personalization.datarights.erase")
ERASES = Counter("personalization_user_erasures_total", "User erasures by outcome", ["outcome"])
ERASE_SECONDS = Histogram("personalization_user_erase_seconds", "Duration of one user erasure",
                          buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
_SQL = "security.sql"
_SCAN_COUNT = 1000


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
        self._producer: Any = None

    def _make(self) -> Any:
        from confluent_kafka import Producer

        timeout_ms = int(self.settings.kafka.timeout_s * 1000)
        return Producer(
            {
                "bootstrap.servers": self.settings.kafka.bootstrap_servers,
                "acks": "all",
                "enable.idempotence": True,
                # The relay's partitioner: the tombstone must land in the partition of the key.
                "partitioner": "murmur2_random",
                "message.timeout.ms": timeout_ms,
                "socket.timeout.ms": max(1000, timeout_ms),
                "client.id": "personalization-erase",
                **client_logging("erase"),
            }
        )

    def connect(self) -> None:
        """Open the producer's connection now (a long-lived API process has it open already)."""
        if self._producer is None:
            self._producer = self._make()
        self._producer.list_topics(timeout=self.settings.kafka.timeout_s)

    def publish(self, user_id: uuid.UUID) -> int:
        """Send and flush the tombstones (blocking, bounded by ``kafka_timeout_s``); returns how many."""
        from confluent_kafka import KafkaException

        if self._producer is None:
            self._producer = self._make()
        p = self._producer
        timeout = self.settings.kafka.timeout_s
        try:
            meta = p.list_topics(timeout=timeout)
        except KafkaException as exc:
            raise CacheUnavailable(f"Kafka unreachable: {exc}") from exc
        present = [t for t in self.topics if t in meta.topics and meta.topics[t].error is None]
        failures: list[str] = []

        def on_delivery(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        key = cdc_key(user_id)
        for topic in present:
            p.produce(topic, key=key, value=None, on_delivery=on_delivery)
        left = p.flush(timeout)
        if left or failures:
            raise CacheUnavailable(f"Kafka did not acknowledge {left or len(failures)} tombstone(s): "
                                   f"{'; '.join(failures[:3]) or 'timeout'}")
        return len(present)

    def close(self) -> None:
        """Flush and drop the producer."""
        if self._producer is not None:
            self._producer.flush(self.settings.kafka.timeout_s)
            self._producer = None


def user_key_names(user_id: uuid.UUID, sessions: Iterable[uuid.UUID]) -> list[str]:
    """Every Redis key of the user and the sessions that can be named without a scan."""
    names = [
        keys.user_embedding(user_id),
        keys.user_preferences(user_id),
        keys.user_signals(user_id),
        keys.feature_flag(keys.PERSONALIZATION_FLAG, user_id),
    ]
    names += [keys.session_recent_content(s) for s in sessions]
    return names


async def delete_user_keys(redis: aioredis.Redis, user_id: uuid.UUID, sessions: list[uuid.UUID],
                           *, scan: bool = True) -> int:
    """Delete the user's and the sessions' keys; returns how many existed.

    Named keys go first; then (``scan``) one SCAN for the user's hash tag catches the
    families that carry a name in the key (every feature flag) and any family added later.
    The SCAN walks the whole keyspace, so the erase runs it once, after the commit.
    """
    count = 0
    with redis_errors():
        names = user_key_names(user_id, sessions)
        for i in range(0, len(names), 500):
            count += int(await redis.unlink(*names[i : i + 500]))
        if not scan:
            return count
        batch: list[bytes] = []
        async for k in redis.scan_iter(match=keys.user_tag_pattern(user_id), count=_SCAN_COUNT):
            batch.append(k)
            if len(batch) >= 500:
                count += int(await redis.unlink(*batch))
                batch = []
        if batch:
            count += int(await redis.unlink(*batch))
    return count


async def _delete_from(conn: AsyncConnection[Any], schema: str, table: str, user_id: uuid.UUID) -> int:
    stmt = sql.SQL("DELETE FROM {}.{} WHERE user_id = %(user_id)s").format(sql.Identifier(schema),
                                                                          sql.Identifier(table))
    async with conn.cursor() as cur:
        await cur.execute(stmt, {"user_id": user_id})
        return max(cur.rowcount, 0)


async def _delete_other_tables(conn: AsyncConnection[Any], user_id: uuid.UUID) -> dict[str, int]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(q("user_tables", _SQL))
        tables = [(r["schema_name"], r["table_name"]) for r in await cur.fetchall()]
    removed: dict[str, int] = {}
    # Tables may reference each other; a delete blocked by a foreign key is retried after
    # the others (each attempt in a savepoint), so no dependency order has to be known.
    todo = tables
    for _ in range(len(tables) + 1):
        blocked = []
        for schema, table in todo:
            try:
                async with conn.transaction():
                    n = await _delete_from(conn, schema, table, user_id)
            except Exception as exc:  # a driver error: retried below, re-raised if stuck
                blocked.append((schema, table, exc))
                continue
            removed[f"{schema}.{table}"] = removed.get(f"{schema}.{table}", 0) + n
        if not blocked:
            break
        if len(blocked) == len(todo):
            raise blocked[0][2]
        todo = [(s, t) for s, t, _ in blocked]
    return removed


async def _call_nightly_hook(conn: AsyncConnection[Any], user_id: uuid.UUID) -> dict[str, int]:
    # The nightly job owns the feature-store layout; when it offers a hook, it runs in the
    # erase transaction.  The catalogue sweep below removes whatever it leaves.
    try:
        nightly = importlib.import_module("personalization.store.nightly")
    except ImportError:
        return {}
    hook = getattr(nightly, "erase_user_features", None)
    if hook is None:
        return {}
    result = hook(conn, user_id)
    if asyncio.iscoroutine(result):
        result = await result
    if isinstance(result, dict):
        return {f"feature_store:{k}": int(v) for k, v in result.items()}
    if isinstance(result, int):
        return {"feature_store": result}
    return {}


class Eraser:
    """The erase use case."""

    def __init__(self, db: Database, redis: aioredis.Redis, settings: Settings,
                 tombstones: KafkaTombstones | None = None) -> None:
        self.db = db
        self.redis = redis
        self.settings = settings
        self.tombstones = tombstones if tombstones is not None else (
            KafkaTombstones(settings) if settings.erase.kafka_tombstones else None
        )

    async def erase(self, user_id: uuid.UUID, actor: str) -> EraseReport:
        """Remove everything about ``user_id``; raises EraseIncomplete when a post-commit step failed."""
        started = time.perf_counter()
        report = EraseReport(subject_hash=audit.subject_hash(user_id))
        params = {"user_id": user_id}
        async with self.db.connection() as conn:
            with wrap_exceptions():
                async with conn.cursor(row_factory=dict_row) as cur:
                    await cur.execute(q("lock_profile_for_erase", _SQL), params)
                    profile = await cur.fetchone()
                    await cur.execute(q("user_sessions", _SQL), params)
                    sessions = [r["session_id"] for r in await cur.fetchall()]
                    await cur.execute(q("delete_user_events", _SQL), params)
                    report.removed["personalization_events"] = max(cur.rowcount, 0)
                report.removed.update(await _call_nightly_hook(conn, user_id))
                report.removed.update(await _delete_other_tables(conn, user_id))
                async with conn.cursor() as cur:
                    await cur.execute(q("delete_user_traits", _SQL), params)
                    report.removed["user_traits"] = max(cur.rowcount, 0)
                    await cur.execute(q("delete_user_profile", _SQL), params)
                    report.removed["user_profile"] = max(cur.rowcount, 0) if profile is not None else 0
                report.sessions = len(sessions)
                report.audit_id = await audit.record_in(conn, actor=actor, action="user.erase", subject=user_id,
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
        row = await self.db.fetch_one(q("user_in_rollups", _SQL), {"user_id": user_id})
        if not row or not row["present"]:
            return False
        async with self.db.connection() as conn:
            with wrap_exceptions():
                await conn.execute(q("refresh_rollups", _SQL))
        return True


def _audit_details(report: EraseReport) -> dict[str, Any]:
    d = report.as_dict()
    d.pop("subject_hash", None)
    d.pop("audit_id", None)
    return d
