"""The relay's Kafka side: each Debezium batch produced and acknowledged before Debezium commits it.

See :mod:`personalization.changestream.relay` for the topics, keys and format, and for the
at-least-once argument this handler's "return only once acknowledged" makes.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from pydbzengine import BasePythonChangeHandler

from personalization.changestream.metrics import BATCH_SECONDS, DELIVERY_FAILURES, RECORDS_PRODUCED
from personalization.config import Settings
from personalization.kafka.kafkalog import client_logging

__all__ = ["KafkaRelayHandler", "RelayStopping", "producer_config"]

log = logging.getLogger("personalization.changestream.relay")

# Errors that retrying cannot fix; everything else (broker down, timeouts) is retried.
_PERMANENT_ERRORS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError._INVALID_ARG,
    }
)


class RelayStopping(RuntimeError):
    """Raised inside the handler when shutdown interrupts undelivered retries.

    Raising (instead of returning) keeps Debezium from committing the batch's offset.
    """


def producer_config(settings: Settings) -> dict[str, Any]:
    """confluent-kafka producer settings of the relay."""
    return {
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        "acks": "all",
        # Idempotence keeps librdkafka's internal retries in order and free of duplicates.
        "enable.idempotence": True,
        # Java's default partitioner for keyed records: same partition as Kafka Connect.
        "partitioner": "murmur2_random",
        "linger.ms": 2,
        "message.timeout.ms": settings.cdc.delivery_timeout_ms,
        "client.id": settings.cdc.engine_name,
        **client_logging("cdc"),
    }


class _DeliveryReport:
    """Delivery results of one produce round, indexed by position in the batch."""

    def __init__(self) -> None:
        self.failed: list[tuple[int, KafkaError]] = []

    def on_delivery(self, index: int, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failed.append((index, err))
        else:
            RECORDS_PRODUCED.labels(msg.topic() or "").inc()


@dataclass
class _Pending:
    topic: str
    key: bytes | None
    value: bytes | None


class KafkaRelayHandler(BasePythonChangeHandler):
    """Produces each Debezium batch to Kafka and returns only once all of it is acknowledged.

    Threading: ``handleJsonBatch`` runs on Debezium's engine thread, and the producer is
    used only there (plus ``close`` after that thread ended): confluent-kafka's Producer
    is not safe to drive from several threads at once, and serving delivery callbacks in
    ``flush`` on the same thread keeps the per-batch bookkeeping free of races.  The lock
    makes that single-caller assumption explicit should Debezium ever call concurrently.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        producer_factory: Callable[[dict[str, Any]], Producer] = Producer,
    ) -> None:
        """Prepare the handler; the producer is created on first use on the engine thread."""
        super().__init__()
        self._settings = settings
        self._producer_factory = producer_factory
        self._producer: Producer | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.batches = 0

    def request_stop(self) -> None:
        """Ask a batch stuck in delivery retries to give up (its offset stays uncommitted)."""
        self._stopping.set()

    def handleJsonBatch(self, records: Sequence[Any]) -> None:
        """Deliver ``records`` (Debezium ChangeEvent proxies) to Kafka, or raise."""
        with self._lock:
            started = time.perf_counter()
            batch = [self._convert(record) for record in records]
            if batch:
                self._deliver(batch)
            self.batches += 1
            BATCH_SECONDS.observe(time.perf_counter() - started)

    @staticmethod
    def _convert(record: Any) -> _Pending:
        key = record.key()
        value = record.value()
        return _Pending(
            topic=str(record.destination()),
            key=None if key is None else str(key).encode(),
            value=None if value is None else str(value).encode(),
        )

    def _producer_for_thread(self) -> Producer:
        if self._producer is None:
            self._producer = self._producer_factory(producer_config(self._settings))
        return self._producer

    def _deliver(self, batch: list[_Pending]) -> None:
        """Produce ``batch``; on failures re-send from the first failed record onwards.

        Re-sending the whole suffix (not only the failed records) keeps each key's records
        in commit order for the consumer, at the price of duplicates after a failure.
        """
        producer = self._producer_for_thread()
        pending = batch
        backoff = 0.5
        while True:
            report = _DeliveryReport()
            for index, item in enumerate(pending):
                self._produce(producer, item, functools.partial(report.on_delivery, index))
            # flush() returns only when every message is delivered or has failed, which
            # message.timeout.ms bounds; what is left after that is treated as failed.
            remaining = producer.flush()
            failed = report.failed
            if not failed and remaining == 0:
                return
            if not failed:
                failed.append((0, KafkaError(KafkaError._MSG_TIMED_OUT)))
            first_index, first_error = min(failed, key=lambda f: f[0])
            DELIVERY_FAILURES.inc(len(failed))
            if first_error.code() in _PERMANENT_ERRORS:
                raise RuntimeError(f"Kafka rejected a change record permanently: {first_error.str()}")
            if first_error.fatal():
                # The idempotent producer's state is broken (for example the broker lost its
                # producer state in a restart); only a new producer can continue.  The whole
                # remaining batch is re-sent, so order per key holds, with duplicates.
                log.error("Kafka producer failed fatally (%s); creating a new one", first_error.str())
                self._producer = None
                producer = self._producer_for_thread()
            if self._stopping.is_set():
                raise RelayStopping("stopping with undelivered records; they will be re-read")
            log.warning(
                "Kafka delivery failed for %d of %d records (%s); retrying in %.1f s. "
                "Changes wait in the replication slot meanwhile.",
                len(failed),
                len(pending),
                first_error.str(),
                backoff,
            )
            if self._stopping.wait(backoff):
                raise RelayStopping("stopping with undelivered records; they will be re-read")
            backoff = min(backoff * 2, self._settings.cdc.retry_backoff_max_s)
            pending = pending[first_index:]

    @staticmethod
    def _produce(
        producer: Producer,
        item: _Pending,
        on_delivery: Callable[[KafkaError | None, Message], None],
    ) -> None:
        while True:
            try:
                producer.produce(item.topic, value=item.value, key=item.key, on_delivery=on_delivery)
                return
            except BufferError:
                # The local queue is full: serve delivery reports to make room.
                producer.poll(0.1)

    def close(self) -> None:
        """Flush what is left; call only after the engine thread has ended."""
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None
