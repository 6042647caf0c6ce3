"""Prometheus metrics of the change-stream relay."""

from __future__ import annotations

import logging
import threading

from prometheus_client import Counter, Gauge, Histogram

from personalization.changestream.pgadmin import connect, read_slot
from personalization.config import Settings
from personalization.errors import StoreError
from personalization.store.changestream import AdminConnection

__all__ = [
    "BATCH_SECONDS",
    "DELIVERY_FAILURES",
    "RECORDS_PRODUCED",
    "SLOT_ACTIVE",
    "SLOT_RETAINED_WAL",
    "WalMonitor",
]

log = logging.getLogger(__name__)

SLOT_RETAINED_WAL = Gauge(
    "personalization_cdc_slot_retained_wal_bytes",
    "WAL that PostgreSQL keeps for the relay's replication slot (current LSN - restart_lsn).",
    ["slot"],
)
SLOT_ACTIVE = Gauge(
    "personalization_cdc_slot_active",
    "1 when a client is streaming from the slot, 0 when not, -1 when the slot is missing.",
    ["slot"],
)
RECORDS_PRODUCED = Counter(
    "personalization_cdc_records_produced",
    "Change records acknowledged by Kafka.",
    ["topic"],
)
DELIVERY_FAILURES = Counter(
    "personalization_cdc_delivery_failures",
    "Kafka delivery failures (each one is retried; the batch is not committed until done).",
)
BATCH_SECONDS = Histogram(
    "personalization_cdc_batch_seconds",
    "Time from receiving a Debezium batch to Kafka acknowledging all of it.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class WalMonitor(threading.Thread):
    """Refreshes the slot gauges on its own connection every ``cdc_metrics_interval_s``.

    A separate thread and connection, because the relay's own work happens on the JVM's
    engine thread and must not wait for monitoring queries.
    """

    def __init__(self, settings: Settings, stop: threading.Event) -> None:
        """Prepare the monitor; call ``start()`` to run it."""
        super().__init__(name="cdc-wal-monitor", daemon=True)
        self._settings = settings
        self._stop = stop

    def refresh(self, conn: AdminConnection) -> None:
        """Read the slot once and update the gauges."""
        slot_name = self._settings.cdc.slot_name
        slot = read_slot(conn, slot_name)
        if slot is None:
            SLOT_ACTIVE.labels(slot_name).set(-1)
            SLOT_RETAINED_WAL.labels(slot_name).set(0)
            return
        SLOT_ACTIVE.labels(slot_name).set(1 if slot.active else 0)
        SLOT_RETAINED_WAL.labels(slot_name).set(slot.retained_wal_bytes or 0)

    def run(self) -> None:
        """Poll until stopped; connection errors are logged and retried next interval."""
        conn: AdminConnection | None = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = connect(self._settings)
                self.refresh(conn)
            except StoreError as exc:
                log.warning("cannot read replication slot for metrics: %s", exc)
                if conn is not None:
                    conn.close()
                conn = None
            self._stop.wait(self._settings.cdc.metrics_interval_s)
        if conn is not None:
            conn.close()
