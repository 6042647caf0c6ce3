"""Erase tombstones: the erasure worker publishes one for the user's key on every CDC topic, in
the key's partition, and keeps retrying while the broker is down (the request does not wait)."""

from __future__ import annotations

import socket
import time
import uuid

import orjson
import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
from security_helpers import MakeKey, rows_per_table

from personalization.composition import Platform
from personalization.config import Settings
from personalization.datarights.erase import Eraser, KafkaTombstones, cdc_key, cdc_topics
from personalization.datarights.worker import ErasureWorker
from personalization.kafka import names
from personalization.kafka.envelope import UserErased, parse_event_message
from personalization.kafka.topics import cdc_topic_configs, ensure_topics
from personalization_dev.broker import LocalBroker
from personalization_dev.testing.http import AppClients
from personalization_dev.testing.kafka import consume, new_consumer
from personalization_dev.testing.waiting import async_wait_until


def test_cdc_key_is_kafka_connect_compact_json() -> None:
    uid = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert cdc_key(uid) == b'{"user_id":"12345678-1234-5678-1234-567812345678"}'


async def test_erase_sends_tombstones_to_the_users_partition(
    platform: Platform, auth_settings: Settings, db_url: str, kafka_bootstrap: str
) -> None:
    prefix = f"erase{uuid.uuid4().hex[:8]}"
    settings = auth_settings.replace(
        kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": prefix},
        erase={"kafka_tombstones": True},
    )
    topics = cdc_topics(settings)
    assert topics == names.cdc_topics(prefix)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    for f in admin.create_topics([NewTopic(t, num_partitions=3, replication_factor=1) for t in topics]).values():
        f.result(30)
    victim, other = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO user_profile (user_id) VALUES (%s)", (victim,))
    # Records as the relay writes them: JSON key, murmur2 partitioner.
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "partitioner": "murmur2_random"})
    for uid in (victim, other):
        producer.produce(topics[0], key=cdc_key(uid), value=orjson.dumps({"op": "c", "after": {"user_id": str(uid)}}))
    assert producer.flush(30) == 0

    report = await Eraser(platform.db, platform.redis, settings).erase(victim, "test")
    assert report.pending == ["kafka"] and report.outcome == "pending"
    assert set(rows_per_table(db_url, victim).values()) == {0}
    tomb = KafkaTombstones(settings)
    try:
        result = await ErasureWorker(platform.db, platform.redis, settings, tombstones=tomb).run_once()
    finally:
        tomb.close()
    assert result.done == {"kafka": 1} and result.completed == 1 and not result.failed

    consumer = new_consumer(kafka_bootstrap, *topics)
    try:
        messages = consume(consumer, 5, timeout_s=30)
    finally:
        consumer.close()
    mine = [m for m in messages if m.key() == cdc_key(victim)]
    data = [m for m in mine if m.value() is not None]
    tombstones = [m for m in mine if m.value() is None]
    assert len(data) == 1 and len(tombstones) == 3
    assert {m.topic() for m in tombstones} == set(topics)
    same_topic = next(m for m in tombstones if m.topic() == topics[0])
    assert same_topic.partition() == data[0].partition() and same_topic.offset() > data[0].offset()
    assert not [m for m in messages if m.key() == cdc_key(other) and m.value() is None]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_kafka_down_answers_at_once_and_tombstones_follow_when_the_broker_is_back(
    platform: Platform, auth_settings: Settings, db_url: str, make_key: MakeKey, make_client: AppClients
) -> None:
    port = _free_port()  # nobody listens here until the broker starts below
    settings = auth_settings.replace(
        kafka={"bootstrap_servers": f"127.0.0.1:{port}", "timeout_s": 1.0,
               "topic_prefix": f"down{uuid.uuid4().hex[:8]}"},
        erase={"kafka_tombstones": True},
        workers={"erasure_retry_max_s": 0.5},
    )
    uid = uuid.uuid4()
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO user_profile (user_id) VALUES (%s)", (uid,))
    h = {"Authorization": f"Bearer {await make_key('admin')}"}
    c = await make_client(settings, platform)
    started = time.monotonic()
    r = await c.delete(f"/v1/users/{uid}", params={"erase": "true"}, headers=h)
    # No 503 and no waiting for Kafka: the tombstones are recorded for the worker.
    assert r.status_code == 202 and time.monotonic() - started < 1.0, r.text
    body = r.json()
    assert body["pending"] == ["kafka"] and "Traceback" not in r.text
    assert set(rows_per_table(db_url, uid).values()) == {0}

    tomb = KafkaTombstones(settings)
    worker = ErasureWorker(platform.db, platform.redis, settings, tombstones=tomb)
    try:
        failed = await worker.run_once()
        assert "kafka" in failed.failed and failed.completed == 0
        status = (await c.get(body["status_url"], headers=h)).json()
        assert status["complete"] is False and status["parts"]["kafka"]["attempts"] == 1
        assert status["parts"]["kafka"]["last_error"] and status["parts"]["kafka"]["next_attempt_at"]
        with psycopg.connect(db_url) as conn:
            assert conn.execute("SELECT outcome FROM audit_log WHERE action = 'user.erase'").fetchone() == (
                "pending",)

        with LocalBroker(port=port) as bootstrap:
            ensure_topics(bootstrap, cdc_topics(settings))

            async def completed() -> int:
                return (await worker.run_once()).completed  # retried when the backoff has passed

            await async_wait_until(completed, 60, "the worker to send the tombstones to the broker back up",
                                   interval_s=0.2)
            status = (await c.get(body["status_url"], headers=h)).json()
            assert status["complete"] is True, status
            assert status["parts"]["kafka"]["state"] == "done" and status["parts"]["kafka"]["attempts"] >= 2
            consumer = new_consumer(bootstrap, *cdc_topics(settings))
            try:
                messages = consume(consumer, 3, timeout_s=30)
            finally:
                consumer.close()
    finally:
        tomb.close()
    assert sorted(m.topic() for m in messages if m.key() == cdc_key(uid) and m.value() is None) == sorted(
        cdc_topics(settings))
    # Completion is in the audit log; the outbox no longer holds the user id.
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT outcome, details ? 'completed_at' FROM audit_log "
                           "WHERE action = 'user.erase'").fetchone()
        assert row == ("ok", True)
        assert conn.execute("SELECT subject_id, redis_keys FROM erasures").fetchone() == (None, None)


def test_the_learner_reads_the_tombstone_as_an_erase() -> None:
    uid = uuid.uuid4()
    assert parse_event_message(cdc_key(uid), None) == UserErased(uid)


def test_cdc_topics_are_created_with_what_an_erase_relies_on(kafka_bootstrap: str) -> None:
    prefix = f"ret{uuid.uuid4().hex[:8]}"
    configs = cdc_topic_configs(prefix)
    assert sorted(ensure_topics(kafka_bootstrap, list(configs), configs=configs)) == sorted(configs)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    found = {r.name: f.result(30) for r, f in admin.describe_configs(
        [ConfigResource("topic", t) for t in configs]).items()}
    events, profile, traits = (found[names.cdc_topic(prefix, t)] for t in
                               ("personalization_events", "user_profile", "user_traits"))
    # Profile and trait records of an erased user go with compaction after the tombstone;
    # event records age out (compaction would break the learner's stream).
    assert profile["cleanup.policy"].value == traits["cleanup.policy"].value == "compact"
    assert profile["max.compaction.lag.ms"].value == str(24 * 3600 * 1000)
    assert events["cleanup.policy"].value == "delete"
    assert events["retention.ms"].value == str(7 * 24 * 3600 * 1000)
