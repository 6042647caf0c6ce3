"""Debezium-format messages for rows already in personalization_events (benchmark and tests).

The throughput benchmark and the parity tests need a topic with many events (and with
deliberate replays and reordering) faster and more controllably than the JVM relay
produces them.  These helpers write exactly what the relay writes for an insert — the
same key (``{"user_id": "<uuid>"}``, compact JSON), the same murmur2 partitioner, the same
envelope fields (``before``/``after``/``source``/``op``/``ts_ms``, decimals as strings,
``source.sequence`` = ``[last commit LSN, LSN]``) — for rows that really exist in the
database, so ``learner recompute`` sees the same events.  The freshness benchmark uses the
real relay instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
from confluent_kafka import Producer

__all__ = ["SyntheticRow", "envelope", "key_for", "produce", "producer"]


@dataclass(frozen=True, slots=True)
class SyntheticRow:
    """A personalization_events row and the stream position to give it."""

    event_id: int
    user_id: UUID | None
    content_id: str
    content_type: str
    signal_type: str
    signal_weight: Decimal
    occurred_at: datetime
    commit_lsn: int
    lsn: int
    tx_id: int
    commit_ts_ms: int


def key_for(user_id: UUID | None) -> bytes:
    """The relay's message key (Kafka Connect's compact JSON of message.key.columns)."""
    return orjson.dumps({"user_id": None if user_id is None else str(user_id)})


def _iso(ts: datetime) -> str:
    return ts.isoformat(timespec="microseconds").replace("+00:00", "Z")


def envelope(row: SyntheticRow, *, topic_prefix: str = "personalization") -> bytes:
    """The relay's value for an insert of ``row``."""
    doc: dict[str, Any] = {
        "before": None,
        "after": {
            "event_id": row.event_id,
            "user_id": None if row.user_id is None else str(row.user_id),
            "session_id": None,
            "content_id": row.content_id,
            "content_type": row.content_type,
            "signal_type": row.signal_type,
            "signal_weight": str(row.signal_weight),
            "metadata": None,
            "occurred_at": _iso(row.occurred_at),
        },
        "source": {
            "version": "3.6.3.Final",
            "connector": "postgresql",
            "name": topic_prefix,
            "ts_ms": row.commit_ts_ms,
            "snapshot": "false",
            "db": "personalization",
            "sequence": orjson.dumps([str(row.commit_lsn), str(row.lsn)]).decode(),
            "schema": "public",
            "table": "personalization_events",
            "txId": row.tx_id,
            "lsn": row.lsn,
            "xmin": None,
        },
        "transaction": None,
        "op": "c",
        "ts_ms": row.commit_ts_ms,
    }
    return orjson.dumps(doc)


def producer(bootstrap: str) -> Producer:
    """A producer configured like the relay's (murmur2 partitioner, idempotent)."""
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 500_000,
        }
    )


def produce(
    prod: Producer,
    topic: str,
    rows: Iterable[SyntheticRow],
    *,
    topic_prefix: str = "personalization",
    raw: Sequence[tuple[bytes | None, bytes | None]] = (),
) -> dict[int, int]:
    """Produce ``rows`` (then ``raw`` (key, value) pairs) to ``topic`` and flush.

    Returns ``{partition: next offset}`` of what was acknowledged (the end of the topic
    as far as these messages go; Tansu's own high watermarks are not reliable).
    """
    ends: dict[int, int] = {}
    failures: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            failures.append(str(err))
        else:
            ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    def send(key: bytes | None, value: bytes | None) -> None:
        while True:
            try:
                prod.produce(topic, key=key, value=value, on_delivery=delivered)
                return
            except BufferError:
                prod.poll(0.05)

    for row in rows:
        send(key_for(row.user_id), envelope(row, topic_prefix=topic_prefix))
    for key, value in raw:
        send(key, value)
    left = prod.flush(60)
    if left or failures:
        raise RuntimeError(f"{left or len(failures)} messages not acknowledged by the broker: {failures[:1]}")
    return ends
