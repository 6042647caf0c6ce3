"""At-least-once delivery across kill -9, and recovery from a lost slot.

Rows are committed continuously while the relay is SIGKILLed twice at arbitrary moments;
after the last restart every committed row must be on the topic.  Duplicates are allowed
and counted (reported in the test output).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from personalization.cli.cdc import app as cdc_app
from personalization.kafka import names
from personalization_dev.relayproc import RelayProcess
from personalization_dev.testing.kafka import consume, new_consumer, relay_env
from personalization_dev.testing.waiting import wait_until


class Inserter(threading.Thread):
    """Commits small transactions of events until stopped."""

    def __init__(self, db_url: str) -> None:
        super().__init__(daemon=True)
        self.db_url = db_url
        self.stop = threading.Event()
        self.transactions = 0

    def run(self) -> None:
        with psycopg.connect(self.db_url) as conn:
            size = 1
            while not self.stop.is_set():
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO personalization_events (user_id, content_id, "
                        "content_type, signal_type, signal_weight, occurred_at) "
                        "VALUES (NULL, %s, 'verse', 'view', 0.100, now())",
                        [(f"crash-{self.transactions}-{i}",) for i in range(size)],
                    )
                self.transactions += 1
                size = size % 50 + 7  # mixes single-row and multi-row transactions
                time.sleep(0.003)  # pacing, not waiting: a steady stream of commits, not a flood


@pytest.fixture(scope="module")
def env(cdc_db_url: str, kafka_bootstrap: str) -> dict[str, str]:
    return relay_env(cdc_db_url, kafka_bootstrap, f"k{uuid.uuid4().hex[:8]}")


def _topic(env: dict[str, str]) -> str:
    return names.events_topic(env["PERSONALIZATION_KAFKA_TOPIC_PREFIX"])


def _max_event_id(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT coalesce(max(event_id), 0) FROM personalization_events").fetchone()
    return int(row[0]) if row else 0


def test_kill_9_loses_no_committed_row(env: dict[str, str]) -> None:
    db_url = env["PERSONALIZATION_DATABASE_URL"]
    inserter = Inserter(db_url)
    consumer = new_consumer(env["PERSONALIZATION_KAFKA_BOOTSTRAP_SERVERS"], _topic(env))
    counts: Counter[int] = Counter()

    def delivered() -> set[int]:
        """Every event id on the topic so far (each delivery counted)."""
        for message in consumer.consume(num_messages=1000, timeout=0.2):
            if message.error() is None:
                envelope: dict[str, Any] = json.loads(message.value())
                counts[int(envelope["after"]["event_id"])] += 1
        return set(counts)

    def deliver_after(after_id: int, relay: str, rows: int = 100) -> None:
        """Wait until ``rows`` rows committed after ``after_id`` are on the topic: only ``relay`` can send them."""
        wait_until(lambda: sum(i > after_id for i in delivered()) >= rows, 90,
                   lambda: f"{rows} rows committed after event {after_id} delivered by the {relay} relay")

    relays = [RelayProcess(env) for _ in range(3)]
    first, second, third = relays
    try:
        try:
            first.start()
            inserter.start()
            deliver_after(0, "first")
            first.kill()  # mid-stream: rows are being committed and delivered
            killed_at = _max_event_id(db_url)
            # Rows pile up in the slot while no relay runs.
            wait_until(lambda: _max_event_id(db_url) >= killed_at + 500, 30, "500 rows committed while no relay runs")
            second.start()
            deliver_after(killed_at, "second")
            second.kill()
            killed_at = _max_event_id(db_url)
            third.start()
            deliver_after(killed_at, "third")
        finally:
            inserter.stop.set()
            if inserter.ident is not None:  # started
                inserter.join()
        with psycopg.connect(db_url) as conn:
            committed = {int(r[0]) for r in conn.execute("SELECT event_id FROM personalization_events")}
        assert len(committed) > 500
        wait_until(lambda: committed <= delivered(), 120,
                   lambda: f"every committed row on the topic ({len(committed - set(counts))} missing, "
                   f"e.g. {sorted(committed - set(counts))[:5]})")
        # Keep reading until the topic is quiet, so that late duplicates are counted too.
        for message in consume(consumer, 0, timeout_s=10, idle_s=2):
            counts[int(json.loads(message.value())["after"]["event_id"])] += 1
        duplicates = sum(counts.values()) - len(counts)
        print(
            f"\ncommitted={len(committed)} delivered={sum(counts.values())} "
            f"duplicates={duplicates} transactions={inserter.transactions}"
        )
        assert set(counts) <= committed
        assert third.stop() == 0, third.output()[-3000:]
    finally:
        consumer.close()
        for relay in relays:
            relay.close()


def test_lost_slot_is_detected_and_recoverable(env: dict[str, str]) -> None:
    db_url = env["PERSONALIZATION_DATABASE_URL"]
    slot = env["PERSONALIZATION_CDC_SLOT_NAME"]
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    with RelayProcess(env) as relay:
        relay.spawn()
        assert relay.wait(60) == 2
        output = relay.output()
    assert "does not exist" in output and "personalization cdc reset-offsets --yes" in output

    result = CliRunner().invoke(cdc_app, ["reset-offsets", "--yes"], env=env)
    assert result.exit_code == 0, result.output

    insert = (
        "INSERT INTO personalization_events (content_id, content_type, signal_type, "
        "signal_weight, occurred_at) VALUES (%s, 'verse', 'view', 0.5, now()) RETURNING event_id"
    )
    with psycopg.connect(db_url, autocommit=True) as conn:
        # Committed after the slot was re-created but before the relay runs: the stream
        # starts at the slot, not at the relay's start.
        early = conn.execute(insert, ("before-start",)).fetchone()
    with RelayProcess(env) as relay:
        relay.start()
        with psycopg.connect(db_url, autocommit=True) as conn:
            late = conn.execute(insert, ("after-start",)).fetchone()
        assert early is not None and late is not None
        wanted = {early[0], late[0]}
        consumer = new_consumer(env["PERSONALIZATION_KAFKA_BOOTSTRAP_SERVERS"], _topic(env))
        try:
            seen: set[int] = set()

            def arrived() -> bool:
                for message in consume(consumer, 1, timeout_s=1):
                    seen.add(json.loads(message.value())["after"]["event_id"])
                return wanted <= seen

            # consume() blocks up to a second itself: no extra poll interval.
            wait_until(arrived, 60, lambda: f"rows {sorted(wanted - seen)} on the topic", interval_s=0)
        finally:
            consumer.close()
        assert relay.stop() == 0


def test_kafka_outage_delays_but_loses_nothing(cdc_db_url: str, tmp_path: Path) -> None:
    """The broker goes away mid-stream and comes back (empty, it is memory-only).

    This relay keeps its offsets in a file, which exercises the file store as well.
    """
    from personalization_dev.broker import LocalBroker

    broker = LocalBroker()
    bootstrap = broker.start()
    port = int(bootstrap.rsplit(":", 1)[1])
    env = relay_env(
        cdc_db_url,
        bootstrap,
        f"o{uuid.uuid4().hex[:8]}",
        PERSONALIZATION_CDC_DELIVERY_TIMEOUT_MS="3000",
        PERSONALIZATION_CDC_RETRY_BACKOFF_MAX_S="1",
        PERSONALIZATION_CDC_OFFSETS_FILE=str(tmp_path / "offsets.dat"),
    )
    insert = (
        "INSERT INTO personalization_events (content_id, content_type, signal_type, "
        "signal_weight, occurred_at) VALUES (%s, 'verse', 'view', 0.5, now()) RETURNING event_id"
    )
    relay = RelayProcess(env)
    try:
        relay.start()
        broker.stop()
        with psycopg.connect(cdc_db_url, autocommit=True) as conn:
            ids = {int(conn.execute(insert, (f"outage-{i}",)).fetchone()[0]) for i in range(20)}  # type: ignore[index]
        # Past the delivery timeout the relay says so and retries; it must not exit.
        relay.wait_for_output("Kafka delivery failed", 60)
        assert relay.wait_or_none() is None, relay.output()[-3000:]
        broker = LocalBroker(port=port)
        broker.start()
        consumer = new_consumer(bootstrap, _topic(env))
        try:
            seen: set[int] = set()

            def arrived() -> bool:
                for message in consume(consumer, 1, timeout_s=1):
                    seen.add(int(json.loads(message.value())["after"]["event_id"]))
                return ids <= seen

            wait_until(arrived, 60, lambda: f"the {len(ids - seen)} rows of the outage on the topic", interval_s=0)
        finally:
            consumer.close()
        assert relay.stop() == 0
        with psycopg.connect(cdc_db_url) as conn:
            stored = conn.execute("SELECT max(event_id) FROM personalization_events").fetchone()
        assert stored is not None
        assert (tmp_path / "offsets.dat").stat().st_size > 0
    finally:
        relay.close()
        broker.stop()


def test_connector_failure_exits_non_zero(cdc_db_url: str, kafka_bootstrap: str) -> None:
    """Debezium's run() returns normally on a failed connector; the relay must not exit 0."""
    env = relay_env(
        cdc_db_url,
        kafka_bootstrap,
        "bad prefix!",  # rejected by Debezium's own validation of topic.prefix
        PERSONALIZATION_CDC_SLOT_NAME=f"cdc_bad_{uuid.uuid4().hex[:8]}",
    )
    with RelayProcess(env) as relay:
        relay.spawn()
        code = relay.wait(180)
        output = relay.output()
    assert code == 1, output[-3000:]
    assert "Debezium stopped unexpectedly" in output
