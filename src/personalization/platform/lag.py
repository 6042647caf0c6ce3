"""Live lag of each component, read where the truth is (PostgreSQL, the broker, the API).

* ``cdc_slot`` (the relay): the replication slot's retained WAL, as PostgreSQL reports it.
* ``learner_group`` (the learners): the learner group's positions, stored in PostgreSQL
  with its state (``learner_offsets``), against the topic's end offsets on the broker.
* ``consumer_group`` (the invalidator): the group's offsets committed in Kafka against the
  end offsets of the profile and trait topics.
* ``nightly`` (the scheduler): the latest run and the age of the last successful one.
* ``pending_rows`` (a background worker): its backlog table's rows (an outbox), or a named
  count query over it, reported once that table exists (``detail``: ``pending_relation``,
  optionally ``pending_query``).
* ``http`` (the API): what its ``/healthz`` says.

Every probe is bounded by short timeouts; a probe that fails reports ``{"error": ...}``
instead of failing the report.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, assert_never

import httpx

from personalization.config import Settings
from personalization.errors import PersonalizationError
from personalization.kafka import names
from personalization.platform.components import LagKind
from personalization.platform.state import ChildRecord
from personalization.store.platform import PlatformStore, open_platform_store

_TIMEOUT_S = 3.0


@dataclass
class LagReader:
    """Reads lags for one report; shares one connection and caches per group.

    ``base`` gives what the supervisor's services do not (slot name, ...): by default the
    settings tree of the reading process's environment.
    """

    services: dict[str, str]
    base: Settings = field(default_factory=Settings)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _store: PlatformStore | None = None
    _cache: dict[tuple[str, ...], dict[str, Any]] = field(default_factory=dict)

    def __enter__(self) -> LagReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def settings(self) -> Settings:
        """The base settings pointing at the supervisor's services."""
        base, s = self.base, self.services
        return base.replace(
            database={"url": s.get("PERSONALIZATION_DATABASE_URL", base.database.url)},
            kafka={
                "bootstrap_servers": s.get("PERSONALIZATION_KAFKA_BOOTSTRAP_SERVERS", base.kafka.bootstrap_servers),
                "topic_prefix": s.get("PERSONALIZATION_KAFKA_TOPIC_PREFIX", base.kafka.topic_prefix),
            },
        )

    def store(self) -> PlatformStore:
        """The report's one PostgreSQL connection."""
        if self._store is None:
            self._store = self._stack.enter_context(open_platform_store(self.settings.database.url, _TIMEOUT_S))
        return self._store

    def read(self, record: ChildRecord) -> dict[str, Any]:
        """The lag of one child, or ``{"error": ...}``."""
        kind: LagKind = record.lag  # type: ignore[assignment]  # written by the supervisor from a LagKind
        try:
            return self._read(kind, record)
        except (PersonalizationError, OSError) as exc:
            return {"error": " ".join(str(exc).split())[:300] or type(exc).__name__}

    def _read(self, kind: LagKind, record: ChildRecord) -> dict[str, Any]:
        if kind == "none":
            return {}
        if kind == "http":
            return self._http(record)
        if kind == "cdc_slot":
            return self._cached(("slot",), self._slot)
        if kind == "learner_group":
            group = record.detail.get("learner_group", "personalization-learner")
            return self._cached(("learner", group), lambda: self._learner(group))
        if kind == "consumer_group":
            group = record.detail.get("kafka_group", "")
            return self._cached(("group", group), lambda: self._group(group))
        if kind == "nightly":
            return self._cached(("nightly",), self.store().nightly)
        if kind == "pending_rows":
            pending = self.store().pending_rows(record.detail["pending_relation"], record.detail.get("pending_query"))
            return {"pending": pending, **({"note": "table absent"} if pending is None else {})}
        assert_never(kind)

    def _cached(self, key: tuple[str, ...], read: Any) -> dict[str, Any]:
        if key not in self._cache:
            self._cache[key] = read()
        return self._cache[key]

    def _http(self, record: ChildRecord) -> dict[str, Any]:
        if not record.url or record.pid is None:
            return {}
        try:
            r = httpx.get(record.url + "/healthz", timeout=_TIMEOUT_S)
            body = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            return {"error": f"/healthz: {exc}"}
        return {"healthz": body.get("status") if isinstance(body, dict) else None}

    def _slot(self) -> dict[str, Any]:
        from personalization.changestream import pgadmin
        from personalization.store.db import wrap_exceptions

        settings = self.settings
        with wrap_exceptions(), pgadmin.connect(settings) as conn:
            slot = pgadmin.read_slot(conn, settings.cdc.slot_name)
        if slot is None:
            return {"slot": settings.cdc.slot_name, "exists": False}
        return {"slot": slot.name, "active": slot.active, "wal_status": slot.wal_status,
                "retained_wal_bytes": slot.retained_wal_bytes}

    def _learner(self, group: str) -> dict[str, Any]:
        from personalization.kafka.offsets import end_offsets

        kafka = self.settings.kafka
        topic = names.events_topic(kafka.topic_prefix)
        positions = self.store().learner_positions(group, topic)
        ends = end_offsets(kafka.bootstrap_servers, [topic], _TIMEOUT_S)
        return {"group": group, "topic": topic, **_sum_lag(ends, {(topic, p): o for p, o in positions.items()})}

    def _group(self, group: str) -> dict[str, Any]:
        from personalization.kafka.offsets import committed_offsets, end_offsets

        kafka = self.settings.kafka
        # What the invalidator reads (serving.invalidation subscribes to the same names).
        topics = names.invalidation_topics(kafka.topic_prefix)
        ends = end_offsets(kafka.bootstrap_servers, topics, _TIMEOUT_S)
        committed = committed_offsets(kafka.bootstrap_servers, group, list(ends), _TIMEOUT_S)
        return {"group": group, "topics": topics, **_sum_lag(ends, committed)}


def _sum_lag(ends: dict[tuple[str, int], int], positions: dict[tuple[str, int], int]) -> dict[str, int]:
    # A partition without a position has consumed nothing yet (its consumers start at 0).
    lag = sum(max(0, end - positions.get(tp, 0)) for tp, end in ends.items())
    return {"partitions": len(ends), "end_offset": sum(ends.values()),
            "committed_offset": sum(positions.get(tp, 0) for tp in ends), "messages_behind": lag}
