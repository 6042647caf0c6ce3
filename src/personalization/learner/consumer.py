"""``personalization learner run``: the consumer-group member that keeps user state online.

Loop (one thread): ``consume`` a batch -> one PostgreSQL transaction that folds it into the
state and stores the partitions' next offsets and high-water positions -> commit -> write
Redis.  Kafka's own committed offsets are never used: on assignment every partition is
sought to the offset stored in PostgreSQL, so state and position can never disagree, a
crash at any point (kill -9 included) resumes right after the last committed batch, and a
rebalance neither loses nor double-applies anything (a member that lost a partition but
still finishes a batch is fenced by the offset-row lock and the offset check).

Faults: an unreadable message is logged with partition/offset, counted, produced to the
dead-letter topic (flushed before the commit) and skipped.  PostgreSQL or Redis down: the
batch is rolled back (nothing committed), the consumer seeks back to the batch's first
offsets, stops polling and probes with back-off until both answer.  A failure of the Redis
write after a commit is retried the same way before the next batch is read; after a
restart, embeddings changed in the last ``learner_redis_resync_s`` are written again.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)

from personalization.cache import keys
from personalization.cache.learner import EmbeddingCache
from personalization.config import Settings
from personalization.errors import CacheUnavailable, PersonalizationError, StoreError, StoreUnavailable
from personalization.kafka import names
from personalization.kafka.kafkalog import client_logging
from personalization.learner import metrics
from personalization.learner.batch import BatchResult, ContentCache, Incoming, apply_batch, record_outcomes
from personalization.learner.settings import dlq_topic, subscribed_topics
from personalization.store.learner import LearnerStore

__all__ = ["Learner", "LearnerConfigError"]

log = logging.getLogger(__name__)


class Learner:
    """One member of the learner group; :meth:`run` blocks until ``stop`` is set."""

    def __init__(
        self,
        settings: Settings,
        *,
        stop: threading.Event | None = None,
        on_committed: Callable[[BatchResult, float], None] | None = None,
    ) -> None:
        """``on_committed(result, redis_written_at)`` is called after each batch's Redis write."""
        self.settings = settings
        self.stop = stop or threading.Event()
        self.on_committed = on_committed
        self.decay = settings.decay.config()
        self.store = LearnerStore(settings.database.url)
        self.cache = EmbeddingCache(settings.redis.url, timeout_s=settings.learner.redis_timeout_s)
        self.content = ContentCache(settings.embedding.dim)
        self.batches = 0
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._rate_window: deque[tuple[float, int]] = deque(maxlen=50)
        self._version_client: Any = None

    # -- Kafka ---------------------------------------------------------------------------

    def _consumer_config(self) -> dict[str, Any]:
        s = self.settings
        return {
            "bootstrap.servers": s.kafka.bootstrap_servers,
            "group.id": s.learner.kafka_group_id or s.learner.group_id,
            # Positions live in PostgreSQL with the state; Kafka's commit is never used.
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": s.learner.session_timeout_ms,
            "heartbeat.interval.ms": max(100, s.learner.session_timeout_ms // 6),
            # The relay creates topics on first change; notice them quickly.
            "topic.metadata.refresh.interval.ms": 2000,
            # Short broker long-poll: bounds the added latency at a trickle.
            "fetch.wait.max.ms": 10,
            "client.id": f"personalization-learner-{uuid.uuid4().hex[:8]}",
            **client_logging("learner"),
        }

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Seek every assigned partition to the offset stored with the state."""
        by_topic: dict[str, list[int]] = {}
        for tp in partitions:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        stored: dict[tuple[str, int], int] = {}
        delay = self.settings.learner.retry_initial_s
        while True:
            try:
                with self.store.transaction() as tx:
                    for topic, parts in by_topic.items():
                        for p, off in tx.stored_offsets(self.settings.learner.group_id, topic, parts).items():
                            stored[(topic, p)] = off
                break
            except PersonalizationError as exc:
                # Without the stored offsets no position is safe: wait for PostgreSQL.
                log.warning("cannot read stored offsets (%s); retrying in %.1f s", exc, delay)
                metrics.RETRIES.labels("postgres").inc()
                if self.stop.wait(delay):
                    break
                delay = min(delay * 2, self.settings.learner.retry_max_s)
        for tp in partitions:
            tp.offset = stored.get((tp.topic, tp.partition), OFFSET_BEGINNING)
        log.info("assigned %s", ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in partitions))
        consumer.assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Nothing to flush: batches are applied completely between two consume() calls.
        log.info("revoked %s", ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions))

    def _dead_letter(self, result: BatchResult) -> None:
        """Produce the batch's unreadable messages to the DLQ and wait for the acknowledgement."""
        if not result.malformed:
            return
        if self._producer is None:
            self._producer = Producer(
                {
                    "bootstrap.servers": self.settings.kafka.bootstrap_servers,
                    "acks": "all",
                    "enable.idempotence": True,
                    "message.timeout.ms": 10_000,
                    **client_logging("learner"),
                }
            )
        failures: list[str] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failures.append(err.str())

        for bad in result.malformed:
            m = bad.message
            self._producer.produce(
                dlq_topic(self.settings),
                key=m.key,
                value=m.value,
                headers=[
                    ("source_topic", m.topic.encode()),
                    ("source_partition", str(m.partition).encode()),
                    ("source_offset", str(m.offset).encode()),
                    ("error", bad.error.encode()[:1000]),
                ],
                on_delivery=delivered,
            )
        left = self._producer.flush(15)
        if left or failures:
            raise DeadLetterUnavailable(f"dead-letter topic did not acknowledge: {failures[:1] or 'timeout'}")

    # -- Redis -----------------------------------------------------------------------------

    def _content_version(self) -> object:
        try:
            if self._version_client is None:
                import redis

                self._version_client = redis.Redis.from_url(
                    self.settings.redis.url, socket_timeout=self.settings.learner.redis_timeout_s
                )
            return self._version_client.get(keys.content_embeddings_version())
        except Exception:
            return None

    def _write_redis(self, result: BatchResult) -> None:
        writes = [(u, v) for u, v in result.redis_writes.items() if u not in result.redis_deletes]
        self.cache.apply(writes, result.redis_deletes)
        metrics.REDIS_DELETES.inc(len(result.redis_deletes))
        if writes:
            # The user may have been erased between our commit and this write; the erase
            # deletes PostgreSQL first and Redis after, so re-checking here closes the gap.
            with self.store.transaction() as tx:
                alive = tx.existing_users([u for u, _ in writes])
            gone = [u for u, _ in writes if u not in alive]
            if gone:
                self.cache.apply([], gone)

    def resync_redis(self) -> int:
        """Write recently changed embeddings to Redis again (after a restart); returns how many."""
        if self.settings.learner.redis_resync_s <= 0:
            return 0
        with self.store.transaction() as tx:
            rows = tx.recent_embeddings(self.settings.learner.redis_resync_s)
        for i in range(0, len(rows), 1000):
            self.cache.apply(rows[i : i + 1000], [])
        return len(rows)

    # -- loop ------------------------------------------------------------------------------

    def _wait_for_services(self, cause: str, exc: Exception) -> None:
        """Back off until PostgreSQL and Redis both answer (or stop is set)."""
        delay = self.settings.learner.retry_initial_s
        log.warning("%s unavailable (%s); pausing, nothing committed for the failed batch", cause, exc)
        while not self.stop.wait(delay):
            try:
                self.cache.ping()
                with self.store.transaction() as tx:
                    tx.existing_users([])
                log.info("services are back; resuming")
                return
            except PersonalizationError as again:
                log.debug("still unavailable: %s", again)
            delay = min(delay * 2, self.settings.learner.retry_max_s)

    def _rewind(self, consumer: Consumer, messages: list[Incoming]) -> None:
        """Seek each partition of a failed batch back to its first message."""
        first: dict[tuple[str, int], int] = {}
        for m in messages:
            k = (m.topic, m.partition)
            first[k] = min(first.get(k, m.offset), m.offset)
        assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        for (topic, partition), offset in first.items():
            if (topic, partition) in assigned:
                try:
                    consumer.seek(TopicPartition(topic, partition, offset))
                except Exception as exc:
                    log.warning("seek %s[%d]@%d failed: %s", topic, partition, offset, exc)

    def _process(self, messages: list[Incoming]) -> BatchResult:
        started = time.perf_counter()
        self.content.check_version(self._content_version())
        # Probe Redis first: when it is down nothing is committed (the write after the
        # commit would otherwise have to wait with the offsets already stored).
        self.cache.ping()
        with self.store.transaction() as tx:
            result = apply_batch(
                tx,
                messages,
                group_id=self.settings.learner.group_id,
                events_topic=names.events_topic(self.settings.kafka.topic_prefix),
                decay=self.decay,
                content=self.content,
            )
            # Dead letters are acknowledged before the commit: a crash in between sends
            # them again (at-least-once into the DLQ) but never loses one.
            self._dead_letter(result)
            if self.settings.learner.debug_commit_delay_s:
                time.sleep(self.settings.learner.debug_commit_delay_s)
        record_outcomes(result)
        self._flush_redis(result)
        written_at = time.time()
        self._observe(result, len(messages), written_at, time.perf_counter() - started)
        if self.on_committed is not None:
            self.on_committed(result, written_at)
        return result

    def _flush_redis(self, result: BatchResult) -> None:
        """Write the committed batch to Redis, waiting out an outage (offsets are already stored)."""
        while True:
            try:
                self._write_redis(result)
                return
            except PersonalizationError as exc:
                metrics.RETRIES.labels("redis_after_commit").inc()
                self._wait_for_services("Redis", exc)
                if self.stop.is_set():
                    return

    def _observe(self, result: BatchResult, n: int, written_at: float, seconds: float) -> None:
        metrics.BATCH_SIZE.observe(n)
        metrics.BATCH_SECONDS.observe(seconds)
        now = time.monotonic()
        self._rate_window.append((now, n))
        span = now - self._rate_window[0][0]
        if span > 0:
            metrics.EVENTS_PER_S.set(sum(c for _, c in list(self._rate_window)[1:]) / span)
        # One observation per user key written, from that user's oldest event in the batch
        # (the worst case of the batch for that key): a per-event observe() would cost more
        # than the rest of the bookkeeping at tens of thousands of events per batch.
        occurred = metrics.FRESHNESS.labels("occurred_at")
        committed = metrics.FRESHNESS.labels("commit")
        for part in result.applied_events:
            n_users = len(part.users)
            oldest_occ = np.full(n_users, np.inf)
            np.minimum.at(oldest_occ, part.user_index, part.occurred_us / 1e6)
            oldest_com = np.full(n_users, np.inf)
            # fmin ignores NaN (events without source.ts_ms).
            np.fmin.at(oldest_com, part.user_index, part.commit_ms / 1000.0)
            for t_occ in oldest_occ[np.isfinite(oldest_occ)].tolist():
                occurred.observe(max(0.0, written_at - t_occ))
            for t_com in oldest_com[np.isfinite(oldest_com)].tolist():
                committed.observe(max(0.0, written_at - t_com))

    def _check_schema(self) -> None:
        """Fail fast on a database that is missing or not migrated; an unreachable one is waited for."""
        try:
            with self.store.transaction() as tx:
                present = tx.schema_present()
        except StoreUnavailable as exc:
            if "does not exist" in str(exc):
                raise LearnerConfigError(f"{exc}. Run `personalization db upgrade` first.") from exc
            log.warning("PostgreSQL is unavailable at start (%s); waiting for it", exc)
            return
        if not present:
            raise LearnerConfigError("the learner's tables are missing: run `personalization db upgrade` first")

    def _poll_batch(self, consumer: Consumer) -> list[Message]:
        """Wait up to the poll timeout for a message, then take what else is already fetched.

        Under a backlog the batch grows to ``learner_batch_max`` (a user's many events then
        cost one row write); at a trickle it is what arrived, so freshness stays low.
        """
        s = self.settings
        # poll() returns as soon as one message is there (consume() would wait for the full
        # count or the timeout, adding the timeout to every event's latency at a trickle).
        first = consumer.poll(s.learner.poll_timeout_s)
        if first is None:
            return []
        raw = [first]
        deadline = time.monotonic() + s.learner.batch_wait_s
        while raw and len(raw) < s.learner.batch_max and time.monotonic() < deadline:
            more = consumer.consume(num_messages=min(s.learner.batch_max - len(raw), 10_000), timeout=0)
            if not more:
                break
            raw.extend(more)
        return raw

    def run(self, *, on_assigned: Callable[[], None] | None = None) -> int:
        """Consume until stopped; returns 0.

        The confluent-kafka Consumer (and the DLQ Producer) are created, polled and closed
        on this one thread only: the client is not safe to drive from several threads, and
        keeping consume(), the rebalance callbacks (which librdkafka calls from inside
        consume() on this thread), seek() and close() together also guarantees that no
        batch is half-applied while partitions move between members.
        """
        s = self.settings
        self._check_schema()
        try:
            resynced = self.resync_redis()
            if resynced:
                log.info("wrote %d recently changed embeddings to Redis again", resynced)
        except PersonalizationError as exc:
            log.warning("Redis resync skipped: %s", exc)
        consumer = Consumer(self._consumer_config())
        self._consumer = consumer

        def assigned(c: Consumer, parts: list[TopicPartition]) -> None:
            self._on_assign(c, parts)
            if on_assigned is not None:
                on_assigned()

        consumer.subscribe(subscribed_topics(s), on_assign=assigned, on_revoke=self._on_revoke)
        log.info("learner %s consuming %s", s.learner.group_id, ", ".join(subscribed_topics(s)))
        try:
            while not self.stop.is_set():
                raw = self._poll_batch(consumer)
                if not raw:
                    continue
                failed: PersonalizationError | None = None
                with _gc_paused(s.learner.gc_pause):
                    messages = _incoming(raw)
                    if not messages:
                        continue
                    try:
                        self._process(messages)
                        self.batches += 1
                    except PersonalizationError as exc:
                        failed = exc
                if failed is not None:
                    # Rolled back: nothing of this batch is stored, so re-reading it is safe.
                    cause = _cause(failed)
                    metrics.RETRIES.labels(cause.split()[0].lower()).inc()
                    self._rewind(consumer, messages)
                    self._wait_for_services(cause, failed)
        finally:
            consumer.close()
            if self._producer is not None:
                self._producer.flush(5)
            self.store.close()
            self.cache.close()
        return 0


def _incoming(raw: list[Message]) -> list[Incoming]:
    """The polled messages as the batch sees them (consumer errors are logged and left out)."""
    messages: list[Incoming] = []
    for msg in raw:
        err = msg.error()
        if err is not None:
            if err.code() not in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                log.warning("consumer error: %s", err)
            continue
        ts_type, ts = msg.timestamp()
        messages.append(
            Incoming(
                msg.topic() or "",
                msg.partition() or 0,
                msg.offset() or 0,
                msg.key(),
                msg.value(),
                ts if ts_type != TIMESTAMP_NOT_AVAILABLE else None,
            )
        )
    return messages


@contextlib.contextmanager
def _gc_paused(pause: bool) -> Iterator[None]:
    """Keep Python's cyclic garbage collector off while one batch is read and applied.

    A batch makes hundreds of thousands of container objects (message tuples, parsed rows,
    column tuples) that reference counting frees when the batch ends; with the collector on,
    every young-generation pass walks the live ones again and older passes walk them all.
    Measured with 100k-message batches (5000 users, 384 dims): a learner process drained
    ~20% faster with it off.  The few cycles a batch makes are collected when the collector
    runs again after it.
    """
    if not pause or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class LearnerConfigError(PersonalizationError):
    """The learner cannot run with this configuration (the message names the fix)."""


class DeadLetterUnavailable(PersonalizationError):
    """The dead-letter topic did not acknowledge; the batch is retried."""


def _cause(exc: PersonalizationError) -> str:
    if isinstance(exc, CacheUnavailable):
        return "Redis"
    if isinstance(exc, DeadLetterUnavailable):
        return "Kafka (dead-letter topic)"
    if isinstance(exc, StoreError):
        return "PostgreSQL"
    return f"batch ({type(exc).__name__})"
