"""Erase publishes a tombstone for the user's key on every CDC topic, in the key's partition."""

from __future__ import annotations

import uuid

import orjson
import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from security_helpers import MakeKey, rows_per_table

from personalization.composition import Platform
from personalization.config import Settings
from personalization.datarights.erase import Eraser, KafkaTombstones, cdc_key, cdc_topics
from personalization.kafka import names
from personalization.kafka.envelope import UserErased, parse_event_message
from personalization_dev.testing.http import AppClients
from personalization_dev.testing.kafka import consume, new_consumer


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

    tomb = KafkaTombstones(settings)
    try:
        report = await Eraser(platform.db, platform.redis, settings, tombstones=tomb).erase(victim, "test")
    finally:
        tomb.close()
    assert report.kafka_tombstones == 3 and report.outcome == "ok"
    assert set(rows_per_table(db_url, victim).values()) == {0}

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


async def test_kafka_down_is_503_partial_and_audited(
    platform: Platform, auth_settings: Settings, db_url: str, make_key: MakeKey, make_client: AppClients
) -> None:
    settings = auth_settings.replace(
        kafka={"bootstrap_servers": "127.0.0.1:1", "timeout_s": 1.0},
        erase={"kafka_tombstones": True},
    )
    uid = uuid.uuid4()
    with psycopg.connect(db_url) as conn:
        conn.execute("INSERT INTO user_profile (user_id) VALUES (%s)", (uid,))
    h = {"Authorization": f"Bearer {await make_key('admin')}"}
    c = await make_client(settings, platform)
    r = await c.delete(f"/v1/users/{uid}", params={"erase": "true"}, headers=h)
    assert r.status_code == 503 and r.headers["retry-after"]
    body = r.json()
    assert body["outcome"] == "partial" and "kafka" in body["errors"] and "Traceback" not in r.text
    assert "run the erase again" in body["detail"][0]["msg"]
    # PostgreSQL and Redis are erased already; the audit row says what is missing.
    assert set(rows_per_table(db_url, uid).values()) == {0}
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT outcome, details->'errors' ? 'kafka' FROM audit_log "
                           "WHERE action = 'user.erase'").fetchone()
    assert row == ("partial", True)


def test_the_learner_reads_the_tombstone_as_an_erase() -> None:
    uid = uuid.uuid4()
    assert parse_event_message(cdc_key(uid), None) == UserErased(uid)
