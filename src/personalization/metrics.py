"""Prometheus metrics of the whole process (exposed at ``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS_INGESTED = Counter("personalization_events_ingested_total", "Events committed to PostgreSQL")
EVENTS_DUPLICATE = Counter("personalization_events_duplicate_total", "Events dropped as replays")
EVENTS_REJECTED = Counter("personalization_events_rejected_total", "Events rejected by validation", ["reason"])
EVENTS_SUPPRESSED = Counter("personalization_events_suppressed_total", "Events not stored by privacy level")
GROUP_COMMIT_ROWS = Histogram(
    "personalization_group_commit_rows",
    "Rows per group commit",
    buckets=(1, 10, 50, 100, 500, 1000, 5000, 10000, 50000),
)
GROUP_COMMIT_SECONDS = Histogram(
    "personalization_group_commit_seconds",
    "Duration of one group commit (dedup + COPY + commit)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
CACHE_ERRORS = Counter("personalization_cache_errors_total", "Redis calls that failed or timed out", ["op"])
CACHE_AVAILABLE = Gauge("personalization_cache_available", "1 when the last Redis call succeeded")
