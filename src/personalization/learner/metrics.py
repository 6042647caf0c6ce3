"""Prometheus metrics of the online learner (served by ``learner run --metrics-port``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Every message read, by what became of it: applied, duplicate (relay re-send), stale
# (offset already committed, e.g. by a member that owned the partition before), rebuilt
# (already counted by a recomputation), unknown_user (deleted meanwhile), malformed,
# profile, or ignored_<reason> (anonymous, update, delete, truncate, tombstone...).
MESSAGES = Counter("personalization_learner_messages_total", "Messages read by outcome", ["outcome"])
EVENTS_APPLIED = Counter("personalization_learner_events_applied_total", "Events folded into user state")
EVENTS_PER_S = Gauge("personalization_learner_events_per_second", "Messages processed per second (last batches)")
BATCH_SIZE = Histogram(
    "personalization_learner_batch_size",
    "Messages per poll batch (one PostgreSQL transaction)",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
BATCH_SECONDS = Histogram(
    "personalization_learner_batch_seconds",
    "Wall time of one batch (transaction and Redis write)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
_FRESH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
FRESHNESS = Histogram(
    "personalization_learner_freshness_seconds",
    "From the event's occurred_at, or its commit in PostgreSQL, to the Redis write of its user",
    ["since"],
    buckets=_FRESH_BUCKETS,
)
MALFORMED = Counter("personalization_learner_malformed_total", "Unreadable messages sent to the dead-letter topic")
RETRIES = Counter("personalization_learner_retries_total", "Batches retried after a failure", ["cause"])
REDIS_DELETES = Counter("personalization_learner_redis_deletes_total", "Embedding keys deleted (privacy, erase)")
